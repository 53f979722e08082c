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
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import click

from .cli_util import command, option, run_command
from .errors import UmxError


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


def read_history(model_dir: str | Path, target: str) -> dict:
    from .train.outputs import read_json

    path = Path(model_dir).expanduser() / f"{target}.json"
    results = read_json(path, f"is {path.parent} the output folder of a '{target}' run?")
    if not isinstance(results, dict) or "train_loss_history" not in results:
        raise UmxError(f"{path}: has no train_loss_history (not a training results file)")
    return results


def draw_history(results: dict, target: str):
    """The loss-curve figure (a matplotlib Figure on an Agg canvas) of a `<target>.json` object."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [float(x) for x in results.get("train_loss_history", [])]
    valid = [float(x) for x in results.get("valid_loss_history", [])]
    lrs = [float(x) for x in results.get("lr_history", [])]
    best = results.get("best_epoch")
    initial_lr = (results.get("args") or {}).get("lr")

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
    drops = lr_drops(lrs, initial_lr)
    for k, epoch in enumerate(drops):
        ax.axvline(epoch + 0.5, color="tab:gray", linestyle=":", linewidth=1,
                   label="LR reduced" if k == 0 else None)
        ax.annotate(f"lr {lrs[epoch - 1]:.2g}", xy=(epoch + 0.5, 0.0), xycoords=("data", "axes fraction"),
                    xytext=(-8, 4), textcoords="offset points", fontsize=7, color="tab:gray", rotation=90,
                    ha="center", va="bottom")
    if isinstance(best, int) and 1 <= best <= len(valid):
        ax.axvline(best, color="tab:green", linestyle="--", linewidth=1)
        ax.plot([best], [valid[best - 1]], marker="*", markersize=14, color="tab:green", linestyle="none",
                label=f"best epoch {best} ({valid[best - 1]:.4g})")
    sdr = [(i + 1, float(v)) for i, v in enumerate(results.get("valid_sdr_history") or []) if v is not None]
    usdr = [(i + 1, float(v)) for i, v in enumerate(results.get("valid_usdr_history") or []) if v is not None]
    if sdr or usdr:  # --eval-every: separation quality on a second axis
        ax2 = ax.twinx()
        for points, color, label in ((sdr, "tab:purple", "validation cSDR"), (usdr, "tab:brown", "validation uSDR")):
            if points:
                ax2.plot(*zip(*points), color=color, marker="o", markersize=3, linewidth=1, label=label)
        ax2.set_ylabel("SDR (dB)")
        ax2.legend(loc="center right", fontsize=8)
    args = results.get("args") or {}
    ax.set_title(f"{target}: {len(train)} epochs" + (f", {args['dataset']}" if args.get("dataset") else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MSE of magnitude spectrograms)")
    ax.grid(True, alpha=0.3)
    if train or valid:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def draw_targets(histories: dict[str, dict]):
    """One figure of a joint run: every target's train (dashed) and validation curve, and the
    joint objective's where the run had one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    values = []
    for k, (target, results) in enumerate(histories.items()):
        color = f"C{k}"
        for key, style, label in (("train_loss_history", "--", "train"), ("valid_loss_history", "-", "validation")):
            curve = [float(x) for x in results.get(key, [])]
            values += curve
            if curve:
                ax.plot(range(1, len(curve) + 1), curve, linestyle=style, color=color, label=f"{target} {label}")
        best = results.get("best_epoch")
        valid = results.get("valid_loss_history", [])
        if isinstance(best, int) and 1 <= best <= len(valid):
            ax.plot([best], [valid[best - 1]], marker="*", markersize=10, color=color, linestyle="none")
    objective = next((r.get("objective_valid_history") for r in histories.values()
                      if r.get("objective_valid_history")), None)
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
    fig = draw_history(read_history(folder, target), target)
    out = folder / f"{target}_loss.png"
    with atomic_writer(out) as f:
        fig.savefig(f, format="png")
    return out


@command("umx-plot", epilog="\b\nExample:\n  umx-plot open-unmix --target vocals",
         help="Draw the loss curves of a training run as PNG: OUTPUT_DIR/<target>_loss.png, for a model "
              "directory written by umx-train (or open-unmix).")
@click.argument("output", metavar="OUTPUT_DIR")
@option("--target", help="target to draw (default: every <target>.json with a loss history)")
def cli(output: str, target: str | None) -> int:
    folder = Path(output).expanduser()
    if target:
        targets = [target]
    else:
        if not folder.is_dir():
            raise UmxError(f"{folder}: directory not found")
        targets = []
        for path in sorted(folder.glob("*.json")):
            try:
                if "train_loss_history" in json.loads(path.read_text()):
                    targets.append(path.stem)
            except (json.JSONDecodeError, TypeError):
                continue
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
