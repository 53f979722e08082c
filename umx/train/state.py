"""The state of a training run, in one dataclass that the checkpoint carries whole.

A checkpoint holds model, optimizer and scheduler (open-unmix's keys) plus `RunState`
under `"umx"`: where the run stands (epoch, step, the epoch's losses so far, its io
counters and seconds), the histories `<target>.json` shows, and early stopping. All of it
is plain data (numbers, strings, lists, dicts), so the checkpoint loads with
`weights_only=True`, and a resumed run continues the very history an uninterrupted one
would write.

A checkpoint is input like any file (docs/security.md): `RunState.from_payloads` parses the
payloads once into these dataclasses, checking every field's type and range, and then
`RunState.check` holds them against what the resuming run can hold (`Bounds`: its targets,
the epoch's batches and steps). A field no run could have written raises `StateError`
naming it; the loader adds the file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from . import plan
from .config import TrainConfig

MAX_WHOLE = 2**62  # every count fits 64 bits (seeds, tensors, sums) with room to add
MOST_WORKERS = int(next(f for f in dataclasses.fields(TrainConfig)
                        if f.name == "nb_workers").metadata["option"].high)  # --nb-workers' range


class StateError(ValueError):
    """A field of a run state that no run could have written: its dotted name (`position.step`)
    and the problem; `target` says whose checkpoint it came from, where that is known."""

    def __init__(self, name: str, problem: str, target: str | None = None):
        self.name, self.problem, self.target = name, problem, target
        super().__init__(f"{name} {problem}")


# --- typed fields --------------------------------------------------------------------------

def _mapping(value: Any, name: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise StateError(name, f"must be a mapping of names, not {type(value).__name__}")
    return value


def _whole(value: Any, name: str, low: int = 0) -> int:
    """A whole number >= `low` (never a bool or a float), small enough for any count."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_WHOLE:
        raise StateError(name, f"must be an integer >= {low}, not {shown(value)}")
    return value


def _real(value: Any, name: str, low: float | None = None, finite: bool = True) -> float:
    """A number (int or float, never a bool); finite unless told otherwise, and >= `low`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or (finite and not math.isfinite(value)) \
            or (low is not None and not value >= low):
        what = "a finite number" if finite else "a number"
        raise StateError(name, f"must be {what}{f' >= {low:g}' if low is not None else ''}, not {shown(value)}")
    return float(value) if isinstance(value, float) else value


def _optional_real(value: Any, name: str) -> float | None:
    return None if value is None else _real(value, name)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) > 200:
        raise StateError(name, f"must be a short string, not {shown(value)}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise StateError(name, f"must be true or false, not {shown(value)}")
    return value


def _list(value: Any, name: str, item: Callable[[Any, str], Any]) -> list:
    if not isinstance(value, list):
        raise StateError(name, f"must be a list, not {type(value).__name__}")
    return [item(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _any_real(value: Any, name: str) -> float:
    """A recorded validation value: NaN and infinities are possible (they stop the target)."""
    return _real(value, name, finite=False)


def _counters(value: Any, name: str) -> dict:
    """Loader counters (`ShardReader.take_metrics`): counts and seconds, or the names of bad shards."""
    out = {}
    for k, v in _mapping(value, name).items():
        out[k] = _list(v, f"{name}.{k}", _text) if isinstance(v, list) else _real(v, f"{name}.{k}", low=0)
    return out


def shown(value: Any) -> str:
    """A bad value as a message quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- the state -----------------------------------------------------------------------------

@dataclass
class Progress:
    """Where the run stands: the next step to take."""

    epoch: int = 1
    step: int = 0  # > 0: resume inside `epoch`, after this many steps of each rank
    losses: list[list[float]] = field(default_factory=list)  # the epoch's step losses so far, every rank's (rows: LossLog)
    seconds: float = 0.0  # the epoch's training time so far
    io: dict = field(default_factory=dict)  # the epoch's loader counters so far
    consumed: int = 0  # the epoch's global batches taken so far (streams: the global plan)
    world: int = 0  # the ranks and loader workers that took them (0: not recorded, before elastic resume)
    workers: int = 0

    def within(self, epoch: int) -> "Progress":
        """What is known of `epoch` already (nothing unless the run stopped inside it)."""
        return self if self.epoch == epoch else Progress(epoch)

    @classmethod
    def from_dict(cls, d: Any) -> "Progress":
        """A checkpoint's `position`, every field typed (a checkpoint is input like any file)."""
        d = _mapping(d, "position")
        counts = {name: _whole(d.get(name, 0), f"position.{name}") for name in ("step", "consumed", "world", "workers")}
        epoch = _whole(d.get("epoch", 1), "position.epoch", low=1)
        losses = _list(d.get("losses", []), "position.losses", _loss_row)
        if len({len(r) for r in losses}) > 1:
            raise StateError("position.losses", "must be rows of one width (each target's loss, then the objective)")
        return cls(epoch, losses=losses, seconds=_real(d.get("seconds", 0.0), "position.seconds", low=0),
                   io=_counters(d.get("io", {}), "position.io"), **counts)

    def check(self, bounds: "Bounds", width: int) -> None:
        """Hold the position against the run: an epoch's start knows nothing; inside an epoch, the
        steps, the global batches consumed and the loss rows (`width` values each: the targets still
        training, then the objective) must be ones this run's epoch can have."""
        if self.step == 0:
            if self.losses or self.consumed:
                raise StateError("position.losses" if self.losses else "position.consumed",
                                 "must be empty at an epoch's start (position.step 0)")
            return
        if self.losses and len(self.losses[0]) != width:
            raise StateError("position.losses", f"rows hold {len(self.losses[0])} values, but this run trains "
                             f"{width - 1} target(s) inside epoch {self.epoch}: rows of {width} (each target's "
                             "loss, then the objective); a checkpoint of other targets?")
        if self.world == 0 and (self.consumed or self.workers):  # written before elastic resume
            raise StateError("position.consumed" if self.consumed else "position.workers",
                             "must be 0 where position.world is 0 (not recorded)")
        if bounds.samples is not None:
            self._fits(bounds)
        if self.world == 0 and (len(self.losses) < self.step or len(self.losses) % self.step):
            raise StateError("position.losses", f"must hold a row per step of each rank ({self.step} steps), "
                             f"not {len(self.losses)}")
        if self.world and len(self.losses) != self.consumed:
            raise StateError("position.losses", f"must hold one row per global batch consumed "
                             f"({self.consumed}), not {len(self.losses)}")

    def _fits(self, bounds: "Bounds") -> None:
        """Steps and batches inside an epoch of this run's stream: the global plan counts global
        batches (any topology takes the rest), the pool plan steps of the topology that took them."""
        batches = plan.global_batches(bounds.samples, bounds.batch_size)
        if bounds.elastic:
            if not self.world and self.step * bounds.world >= batches:
                raise StateError("position.step", f"is {self.step}, but an epoch of this run has "
                                 f"{plan.steps_left(batches, 0, bounds.world)} steps per rank")
            if self.world and not self.step <= self.consumed < batches:
                raise StateError("position.consumed", f"is {self.consumed} after {self.step} steps, but an epoch "
                                 f"of this run has {batches} global batches (--batch-size or the samples per "
                                 "epoch changed?)")
            return
        world, workers = (self.world, self.workers) if self.world else (bounds.world, bounds.workers)
        if workers > MOST_WORKERS:  # (and plan.rank_batches counts per worker)
            raise StateError("position.workers", f"must be at most {MOST_WORKERS}, not {workers}")
        steps = sum(plan.rank_batches(bounds.samples, world, max(1, workers), bounds.batch_size))
        if self.step >= steps:
            raise StateError("position.step", f"is {self.step}, but an epoch of this run has {steps} steps per "
                             f"rank on {world} rank(s) × {workers} worker(s)")
        if self.world and self.consumed != self.step * self.world:
            raise StateError("position.consumed", f"must be position.step × position.world "
                             f"({self.step * self.world}), not {self.consumed}")


def _loss_row(value: Any, name: str) -> list[float]:
    """One step's losses: each target's, then the objective, all finite (a step whose loss was not
    finite stops the run before any checkpoint). A single-target checkpoint of before joint
    training has one loss per step, the objective itself."""
    if isinstance(value, list):
        if len(value) < 2:
            raise StateError(name, "must hold each target's loss, then the objective")
        return [_real(v, f"{name}[{i}]") for i, v in enumerate(value)]
    value = _real(value, name)
    return [value, value]


@dataclass
class History:
    """The per-epoch histories of `<target>.json` (open-unmix's keys, then umx's)."""

    train_loss_history: list[float] = field(default_factory=list)
    valid_loss_history: list[float] = field(default_factory=list)
    train_time_history: list[float] = field(default_factory=list)
    lr_history: list[float] = field(default_factory=list)
    loader_history: list[dict] = field(default_factory=list)
    # a joint objective (--loss multidomain, --bridge): what best epoch and early stopping follow
    objective_train_history: list[float] = field(default_factory=list)
    objective_valid_history: list[float] = field(default_factory=list)
    # --eval-every: the separated validation tracks' cSDR and uSDR (dB; None where not evaluated)
    valid_sdr_history: list[float | None] = field(default_factory=list)
    valid_usdr_history: list[float | None] = field(default_factory=list)
    # --ema: each moving average's validation loss, and which weights were chosen each epoch
    ema_valid_loss_history: dict[str, list[float]] = field(default_factory=dict)
    weights_history: list[str] = field(default_factory=list)
    best_weights: str = "raw"  # the weights in <target>.pth
    best_epoch: int = 0
    epochs_trained: int = 0

    @classmethod
    def from_dict(cls, d: Any, name: str = "history") -> "History":
        """The histories of a payload or of `<target>.json` (other keys, such as its `args`, are not
        histories), every field typed; a missing one is empty."""
        d = _mapping(d, name)
        h = cls()
        for f in dataclasses.fields(cls):
            if f.name in d:
                setattr(h, f.name, _HISTORY[f.name](d[f.name], f"{name}.{f.name}" if name else f.name))
        return h


# how each history field is read: training values are finite (a non-finite training loss stops the
# run); a validation value may be NaN or infinite (it stops the target, and is recorded)
_HISTORY: dict[str, Callable[[Any, str], Any]] = {
    "train_loss_history": lambda v, n: _list(v, n, _real),
    "valid_loss_history": lambda v, n: _list(v, n, _any_real),
    "train_time_history": lambda v, n: _list(v, n, lambda x, m: _real(x, m, low=0)),
    "lr_history": lambda v, n: _list(v, n, lambda x, m: _real(x, m, low=0)),
    "loader_history": lambda v, n: _list(v, n, _counters),
    "objective_train_history": lambda v, n: _list(v, n, _real),
    "objective_valid_history": lambda v, n: _list(v, n, _any_real),
    "valid_sdr_history": lambda v, n: _list(v, n, _optional_real),
    "valid_usdr_history": lambda v, n: _list(v, n, _optional_real),
    "ema_valid_loss_history": lambda v, n: {k: _list(x, f"{n}.{k}", _any_real) for k, x in _mapping(v, n).items()},
    "weights_history": lambda v, n: _list(v, n, _text),
    "best_weights": _text,
    "best_epoch": _whole,
    "epochs_trained": _whole,
}


@dataclass
class Epoch:
    """One finished epoch of one target, as its history records it."""

    train_loss: float
    valid_loss: float
    seconds: float
    lr: float
    io: dict
    objective: tuple[float, float] | None = None  # (train, valid) of a joint objective
    sdr: tuple[float | None, float | None] | None = None  # (cSDR, uSDR) with --eval-every ((None, None): not this epoch)
    averages: dict[str, float] | None = None  # --ema: label → validation loss
    chosen: str = "raw"  # the weights chosen this epoch


@dataclass
class TargetState:
    """One target's early stopping and histories. `best_loss` is the validation value that
    "best" and early stopping follow (lower is better): the target's own loss, a joint
    objective's, or with --select-by sdr the negative cSDR."""

    history: History = field(default_factory=History)
    best_loss: float | None = None  # early stopping: the lowest validation value so far (always finite)
    num_bad_epochs: int = 0
    stopped: bool = False  # stopped early: its network no longer updates

    def stop_early(self, loss: float, patience: int) -> bool:
        """open-unmix's early stopping: stop after `patience` epochs without a lower loss; a loss
        that is not finite stops at once (the first one too: it would never be beaten)."""
        if not math.isfinite(loss):
            self.stopped = True
            return True
        if self.best_loss is None:
            self.best_loss = loss
            return False
        if loss < self.best_loss or patience == 0:
            self.best_loss, self.num_bad_epochs = loss, 0
        else:
            self.num_bad_epochs += 1
        self.stopped = self.num_bad_epochs >= patience
        return self.stopped

    def end_epoch(self, epoch: int, e: Epoch, selected: float | None) -> bool:
        """Record a finished epoch; whether it is the best so far (by `selected`, the value early
        stopping was given; None: not a selection epoch)."""
        h = self.history
        h.train_loss_history.append(e.train_loss)
        h.valid_loss_history.append(e.valid_loss)
        h.train_time_history.append(e.seconds)
        h.lr_history.append(e.lr)
        h.loader_history.append(e.io)
        if e.objective is not None:
            h.objective_train_history.append(e.objective[0])
            h.objective_valid_history.append(e.objective[1])
        if e.sdr is not None:
            h.valid_sdr_history.append(e.sdr[0])
            h.valid_usdr_history.append(e.sdr[1])
        if e.averages is not None:
            for name, value in e.averages.items():
                h.ema_valid_loss_history.setdefault(name, []).append(value)
            h.weights_history.append(e.chosen)
        h.epochs_trained = epoch
        is_best = selected is not None and selected == self.best_loss
        if is_best:
            h.best_epoch, h.best_weights = epoch, e.chosen
        return is_best

    def to_dict(self) -> dict:
        return {"history": dataclasses.asdict(self.history), "best_loss": self.best_loss,
                "num_bad_epochs": self.num_bad_epochs, "stopped": self.stopped}

    @classmethod
    def from_dict(cls, d: Any, history: str = "history") -> "TargetState":
        """A payload's target state (or with `history=""` a `<target>.json`), every field typed."""
        d = _mapping(d, "(payload)")
        for key in ("best_loss", "num_bad_epochs", *((history,) if history else ())):
            if key not in d:
                raise StateError(key, "is missing")
        return cls(History.from_dict(d[history] if history else d, history),
                   _optional_real(d["best_loss"], "best_loss"), _whole(d["num_bad_epochs"], "num_bad_epochs"),
                   _flag(d.get("stopped", False), "stopped"))

    def check(self, epoch: int) -> None:
        """Hold the target's counts against the run's position (`epoch`: the next to train): a target
        still training has trained every epoch before it, a stopped one at most those."""
        h, done = self.history, epoch - 1
        if h.epochs_trained > done or (not self.stopped and h.epochs_trained != done):
            raise StateError("history.epochs_trained", f"is {h.epochs_trained}, but the run stands at epoch "
                             f"{epoch}: a target {'stopped early' if self.stopped else 'still training'} has "
                             f"trained {'at most' if self.stopped else 'exactly'} {done}")
        if h.best_epoch > h.epochs_trained:
            raise StateError("history.best_epoch", f"is {h.best_epoch}, after the {h.epochs_trained} epochs trained")
        most = max(h.epochs_trained, len(h.valid_loss_history))  # (open-unmix repeats an epoch when it resumes)
        if self.num_bad_epochs > most:
            raise StateError("num_bad_epochs", f"is {self.num_bad_epochs}, more than the {most} epochs trained")

    def results(self, args: dict) -> dict:
        """`<target>.json`: the run's arguments, early stopping and histories."""
        return {"args": args, "best_loss": self.best_loss, "num_bad_epochs": self.num_bad_epochs,
                "stopped": self.stopped, **dataclasses.asdict(self.history)}


@dataclass(frozen=True)
class Bounds:
    """What the resuming run can hold, which a checkpoint's run state must fit: its targets, and
    where known (from its data stream) the epoch's samples and batch size, the topology and the
    sampling plan."""

    targets: tuple[str, ...]
    samples: int | None = None  # samples per epoch (None: not known here; the data's bounds are not held)
    batch_size: int = 1
    world: int = 1  # this run's ranks and loader workers
    workers: int = 0
    elastic: bool = True  # the global plan (streams.TrainStream.elastic)


@dataclass
class RunState:
    """Where the run stands, and every target's state."""

    progress: Progress = field(default_factory=Progress)
    targets: dict[str, TargetState] = field(default_factory=dict)
    run: dict = field(default_factory=dict)  # what makes the run this run (build.run_fingerprint): --resume auto

    def target(self, name: str) -> TargetState:
        return self.targets.setdefault(name, TargetState())

    def active(self, names: list[str]) -> list[str]:
        """The targets (of `names`, in that order) that have not stopped."""
        return [n for n in names if not self.target(n).stopped]

    def payload(self, name: str) -> dict:
        """`<name>.chkpnt`'s `"umx"` payload: the run's position and that target's state."""
        return {**self.target(name).to_dict(), "position": dataclasses.asdict(self.progress),
                "targets": list(self.targets), "run": self.run}

    def check(self, bounds: Bounds) -> None:
        """Hold the state against the run resuming it (StateError naming the field and the target)."""
        for name in bounds.targets:
            _whose(name, lambda n=name: self.target(n).check(self.progress.epoch))
        self.progress.check(bounds, len(self.active(list(bounds.targets))) + 1)

    @classmethod
    def from_payloads(cls, payloads: dict[str, Any], bounds: Bounds | None = None) -> "RunState":
        """The state of a run from each target's checkpoint payload: every field typed, the run's
        position and record the same in each, all of it held against `bounds` where given."""
        parsed = {name: _whose(name, lambda p=p, n=name: _parse_payload(p, n)) for name, p in payloads.items()}
        (first, (progress, run, _)), *others = parsed.items()
        for name, (p, r, _) in others:
            if p != progress:
                raise StateError("position", f"differs from {first}'s: not one step of one run", name)
            if r != run:
                raise StateError("run", f"differs from {first}'s: not one run", name)
        state = cls(progress, {name: t for name, (_, _, t) in parsed.items()}, run)
        state.check(bounds or Bounds(tuple(payloads)))
        return state

    @classmethod
    def from_results(cls, name: str, results: Any, bounds: Bounds | None = None) -> "RunState":
        """The state of an open-unmix run (its checkpoint has no `"umx"` payload): from `<target>.json`."""
        target = _whose(name, lambda: TargetState.from_dict(results, history=""))
        if "epochs_trained" not in results:
            raise StateError("epochs_trained", "is missing", name)
        state = cls(Progress(target.history.epochs_trained + 1), {name: target})
        state.check(bounds or Bounds((name,)))
        return state


def _parse_payload(payload: Any, name: str) -> tuple[Progress, dict, TargetState]:
    """One `"umx"` payload: position, run record, the target's state."""
    payload = _mapping(payload, "(payload)")
    if "position" not in payload:
        raise StateError("position", "is missing")
    targets = _list(payload.get("targets", [name]), "targets", _text)
    if name not in targets:
        raise StateError("targets", f"are {targets}: this file is no checkpoint of '{name}'")
    return Progress.from_dict(payload["position"]), _run_record(payload.get("run")), TargetState.from_dict(payload)


def _run_record(value: Any) -> dict:
    """What made the run that run (build.run_fingerprint): the shard set's digest and the options."""
    if value is None:
        return {}
    run = _mapping(value, "run")
    if "train" in run:
        _text(run["train"], "run.train")
    if "options" in run:
        _mapping(run["options"], "run.options")
    if "world_size" in run:
        _whole(run["world_size"], "run.world_size", low=1)
    return dict(run)


def _whose(target: str, parse: Callable[[], Any]) -> Any:
    """`parse()`, its StateError told which target's file it read."""
    try:
        return parse()
    except StateError as e:
        if e.target is None:
            e.target = target
        raise
