"""Loss curves of a training run: `<model_dir>/<target>_loss.png`.

`plot_history(model_dir, target)` draws the train and validation loss per epoch
from `<target>.json` (umx's or open-unmix's), the validation SDR of `--eval-every`
on a second axis, marks the best epoch and every
learning-rate reduction (from umx's `lr_history`), and replaces the PNG
atomically, so it can be called after every epoch while someone looks at it.
`plot_targets` draws every target of a joint run in one `targets_loss.png` (the joint
objective on a second axis). `umx-plot OUTPUT_DIR [--target T]` redraws them.

matplotlib's object API with the Agg canvas: no pyplot, no global backend
switch, safe in a training process without a display.

A model directory may come from anyone: its JSON is read through the model layer's
bounded reader (models.directory.read_json: 64 MiB, nesting, encoding) and checked into a
`History` (lists of numbers, whole numbers, strings) before anything is drawn, and
target names pass `safe_name` before they name a file.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import click

from .cli_util import command, option, run_command
from .errors import UmxError
from .names import safe_name
from .models.directory import read_json

MAX_EPOCHS = 100_000  # longer histories than any run (open-unmix's default is 1000 epochs): refused
MAX_LR_MARKS = 200  # learning-rate reductions marked on a plot; more would only blacken it


def lr_drops(lr_history: Sequence[float], initial_lr: float | None = None) -> list[int]:
    """1-based epochs after which the learning rate was reduced.

    `lr_history[i]` is the rate after epoch i + 1's scheduler step, so a value
    lower than the one before it (or than `initial_lr`, for the first epoch)
    marks a reduction at the end of that epoch.
    """
    drops = []
    previous = initial_lr
    for i, lr in enumerate(lr_history):
        if previous is not None and lr < previous:
            drops.append(i + 1)
        previous = lr
    return drops


class HistoryError(UmxError):
    """A `<target>.json` whose histories are not what a training run writes (names the file and key)."""


def _numbers(results: dict, key: str, where: str) -> list[float]:
    """`results[key]` as floats, a missing key as no epochs; None and non-finite values as NaN (a gap)."""
    values = results.get(key)
    if values is None:
        return []
    if not isinstance(values, list):
        raise HistoryError(f"{where}: '{key}' must be a list of numbers, not {type(values).__name__}")
    if len(values) > MAX_EPOCHS:
        raise HistoryError(f"{where}: '{key}' has {len(values)} epochs, more than {MAX_EPOCHS}")
    out = []
    for i, v in enumerate(values):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise HistoryError(f"{where}: '{key}'[{i}] must be a number, not {type(v).__name__}")
        out.append(_float(v))
    return out


def _float(value: int | float | None) -> float:
    """A finite float, or NaN (None, infinities, and whole numbers beyond a float's range)."""
    try:
        x = math.nan if value is None else float(value)
    except OverflowError:
        return math.nan
    return x if math.isfinite(x) else math.nan


def _optional(value, kinds: tuple[type, ...], key: str, where: str):
    """`value` if it is None or of `kinds` (a bool is no number here), else one line naming the key."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
        raise HistoryError(f"{where}: '{key}' must be {' or '.join(k.__name__ for k in kinds)}, "
                           f"not {type(value).__name__}")
    return value


@dataclass
class History:
    """What the plots draw from a `<target>.json` (umx's or open-unmix's), every value checked."""

    train: list[float]
    valid: list[float]
    lr: list[float]
    best_epoch: int | None
    initial_lr: float | None
    dataset: str | None
    valid_sdr: list[float]
    valid_usdr: list[float]
    objective_valid: list[float]

    @classmethod
    def from_results(cls, results: dict, where: str) -> "History":
        """The histories of a results object, or HistoryError naming `where` and the key."""
        if not isinstance(results, dict) or "train_loss_history" not in results:
            raise HistoryError(f"{where}: has no train_loss_history (not a training results file)")
        args = _optional(results.get("args"), (dict,), "args", where) or {}
        lr = _optional(args.get("lr"), (int, float), "args.lr", where)
        return cls(train=_numbers(results, "train_loss_history", where),
                   valid=_numbers(results, "valid_loss_history", where),
                   lr=_numbers(results, "lr_history", where),
                   best_epoch=_optional(results.get("best_epoch"), (int,), "best_epoch", where),
                   initial_lr=None if lr is None else _float(lr),
                   dataset=_optional(args.get("dataset"), (str,), "args.dataset", where),
                   valid_sdr=_numbers(results, "valid_sdr_history", where),
                   valid_usdr=_numbers(results, "valid_usdr_history", where),
                   objective_valid=_numbers(results, "objective_valid_history", where))

    def best(self) -> int | None:
        """The best epoch where it has a validation loss to mark, else None."""
        return self.best_epoch if self.best_epoch is not None and 1 <= self.best_epoch <= len(self.valid) else None


def read_history(model_dir: str | Path, target: str) -> History:
    """`<model_dir>/<target>.json`'s histories: the target name checked before it names a file,
    the file read by the model layer's bounded reader, every value checked."""
    target = safe_name(target, "target name", "--target")
    path = Path(model_dir).expanduser() / f"{target}.json"
    return History.from_results(read_json(path, f"is {path.parent} the output folder of a '{target}' run?"),
                                str(path))


def draw_history(results: dict, target: str):
    """The loss-curve figure (a matplotlib Figure on an Agg canvas) of a `<target>.json` object."""
    return draw_curves(History.from_results(results, f"{target}.json"), target)


def draw_curves(history: History, target: str):
    """The loss-curve figure of one target's checked histories."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train, valid, lrs = history.train, history.valid, history.lr
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot(range(1, len(train) + 1), train, color="tab:blue", marker="." if len(train) < 50 else None,
                label="train loss")
    if valid:
        ax.plot(range(1, len(valid) + 1), valid, color="tab:orange", marker="." if len(valid) < 50 else None,
                label="validation loss")
    values = [v for v in train + valid if v == v]  # no NaN
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    drops = lr_drops(lrs, history.initial_lr)
    for k, epoch in enumerate(drops[:MAX_LR_MARKS]):
        ax.axvline(epoch + 0.5, color="tab:gray", linestyle=":", linewidth=1,
                   label=(f"LR reduced (first {MAX_LR_MARKS} of {len(drops)})" if len(drops) > MAX_LR_MARKS
                          else "LR reduced") if k == 0 else None)
        ax.annotate(f"lr {lrs[epoch - 1]:.2g}", xy=(epoch + 0.5, 0.0), xycoords=("data", "axes fraction"),
                    xytext=(-8, 4), textcoords="offset points", fontsize=7, color="tab:gray", rotation=90,
                    ha="center", va="bottom")
    best = history.best()
    if best is not None:
        ax.axvline(best, color="tab:green", linestyle="--", linewidth=1)
        ax.plot([best], [valid[best - 1]], marker="*", markersize=14, color="tab:green", linestyle="none",
                label=f"best epoch {best} ({valid[best - 1]:.4g})")
    sdr = [(i + 1, v) for i, v in enumerate(history.valid_sdr) if v == v]  # NaN: not evaluated that epoch
    usdr = [(i + 1, v) for i, v in enumerate(history.valid_usdr) if v == v]
    if sdr or usdr:  # --eval-every: separation quality on a second axis
        ax2 = ax.twinx()
        for points, color, label in ((sdr, "tab:purple", "validation cSDR"), (usdr, "tab:brown", "validation uSDR")):
            if points:
                ax2.plot(*zip(*points), color=color, marker="o", markersize=3, linewidth=1, label=label)
        ax2.set_ylabel("SDR (dB)")
        ax2.legend(loc="center right", fontsize=8)
    ax.set_title(f"{target}: {len(train)} epochs" + (f", {history.dataset}" if history.dataset else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MSE of magnitude spectrograms)")
    ax.grid(True, alpha=0.3)
    if train or valid:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def draw_targets(histories: dict[str, History]):
    """One figure of a joint run: every target's train (dashed) and validation curve, and the
    joint objective's where the run had one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    values = []
    for k, (target, history) in enumerate(histories.items()):
        color = f"C{k}"
        for curve, style, label in ((history.train, "--", "train"), (history.valid, "-", "validation")):
            values += curve
            if curve:
                ax.plot(range(1, len(curve) + 1), curve, linestyle=style, color=color, label=f"{target} {label}")
        best = history.best()
        if best is not None:
            ax.plot([best], [history.valid[best - 1]], marker="*", markersize=10, color=color, linestyle="none")
    objective = next((h.objective_valid for h in histories.values() if h.objective_valid), None)
    if objective:
        ax2 = ax.twinx()
        ax2.plot(range(1, len(objective) + 1), objective, color="black", linewidth=1, label="joint objective (valid)")
        ax2.set_ylabel("joint objective")
        ax2.legend(loc="upper center", fontsize=8)
    values = [v for v in values if v == v]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_title(f"{', '.join(histories)}: joint training")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MSE of magnitude spectrograms)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return fig


def plot_targets(model_dir: str | Path, targets: Sequence[str]) -> Path:
    """Draw `<model_dir>/targets_loss.png`: one curve per target of a joint run."""
    from .shards.storage import atomic_writer

    folder = Path(model_dir).expanduser()
    fig = draw_targets({t: read_history(folder, t) for t in targets})
    out = folder / "targets_loss.png"
    with atomic_writer(out) as f:
        fig.savefig(f, format="png")
    return out


def plot_history(model_dir: str | Path, target: str) -> Path:
    """Draw `<model_dir>/<target>_loss.png` from `<target>.json`; returns its path."""
    from .shards.storage import atomic_writer

    folder = Path(model_dir).expanduser()
    fig = draw_curves(read_history(folder, target), target)
    out = folder / f"{target}_loss.png"
    with atomic_writer(out) as f:
        fig.savefig(f, format="png")
    return out


def _has_history(path: Path) -> bool:
    """Whether `path` is a target's results: other JSON, and files that are not JSON objects, are passed
    over; a results file whose histories are damaged is kept, to be refused naming what is wrong."""
    try:
        safe_name(path.stem, "target name", str(path))
        return "train_loss_history" in read_json(path, "a target's results")
    except UmxError:
        return False


@command("umx-plot", epilog="\b\nExample:\n  umx-plot open-unmix --target vocals",
         help="Draw the loss curves of a training run as PNG: OUTPUT_DIR/<target>_loss.png, for a model "
              "directory written by umx-train (or open-unmix).")
@click.argument("output", metavar="OUTPUT_DIR")
@option("--target", help="target to draw (default: every <target>.json with a loss history)")
def cli(output: str, target: str | None) -> int:
    folder = Path(output).expanduser()
    if target:
        targets = [safe_name(target, "target name", "--target")]
    else:
        if not folder.is_dir():
            raise UmxError(f"{folder}: directory not found")
        targets = [p.stem for p in sorted(folder.glob("*.json")) if _has_history(p)]
        if not targets:
            raise UmxError(f"{folder}: no <target>.json with a loss history here")
    for target in targets:
        print(plot_history(folder, target))
    if len(targets) > 1:  # a joint run, or targets trained apart: their curves side by side
        print(plot_targets(folder, targets))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(cli, argv, "umx-plot")


if __name__ == "__main__":
    sys.exit(main())
