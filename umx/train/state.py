"""The state of a training run, in one dataclass that the checkpoint carries whole.

A checkpoint holds model, optimizer and scheduler (open-unmix's keys) plus `RunState`
under `"umx"`: where the run stands (epoch, step, the epoch's losses so far, its io
counters and seconds), the histories `<target>.json` shows, and early stopping. All of it
is plain data (numbers, strings, lists, dicts), so the checkpoint loads with
`weights_only=True`, and a resumed run continues the very history an uninterrupted one
would write.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


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
    def from_dict(cls, d: dict) -> "Progress":
        known = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        for name in ("epoch", "step", "consumed", "world", "workers"):  # a checkpoint is input like any file
            value = known.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"position.{name} must be an integer >= 0, not {value!r}")
        # a single-target checkpoint of before joint training: one loss per step, the objective itself
        known["losses"] = [r if isinstance(r, list) else [r, r] for r in known.get("losses", [])]
        return cls(**known)


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
    def from_dict(cls, d: dict) -> "History":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


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
    best_loss: float | None = None  # early stopping: the lowest validation value so far
    num_bad_epochs: int = 0
    stopped: bool = False  # stopped early: its network no longer updates

    def stop_early(self, loss: float, patience: int) -> bool:
        """open-unmix's early stopping: stop after `patience` epochs without a lower loss."""
        if self.best_loss is None:
            self.best_loss = loss
            return False
        if math.isnan(loss):
            self.stopped = True
            return True
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
    def from_dict(cls, d: dict) -> "TargetState":
        return cls(History.from_dict(d["history"]), d["best_loss"], d["num_bad_epochs"], bool(d.get("stopped", False)))

    def results(self, args: dict) -> dict:
        """`<target>.json`: the run's arguments, early stopping and histories."""
        return {"args": args, "best_loss": self.best_loss, "num_bad_epochs": self.num_bad_epochs,
                "stopped": self.stopped, **dataclasses.asdict(self.history)}


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

    @classmethod
    def from_payloads(cls, payloads: dict[str, dict]) -> "RunState":
        """The state of a run from each target's checkpoint payload."""
        first = next(iter(payloads.values()))
        return cls(Progress.from_dict(first["position"]),
                   {name: TargetState.from_dict(p) for name, p in payloads.items()}, dict(first.get("run") or {}))

    @classmethod
    def from_results(cls, name: str, results: dict) -> "RunState":
        """The state of an open-unmix run (its checkpoint has no `"umx"` payload): from `<target>.json`."""
        return cls(Progress(results["epochs_trained"] + 1),
                   {name: TargetState(History.from_dict(results), results["best_loss"], results["num_bad_epochs"])})
