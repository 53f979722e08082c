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
    step: int = 0  # > 0: resume inside `epoch`, after this many steps
    losses: list[float] = field(default_factory=list)  # the epoch's step losses so far
    seconds: float = 0.0  # the epoch's training time so far
    io: dict = field(default_factory=dict)  # the epoch's loader counters so far

    def within(self, epoch: int) -> "Progress":
        """What is known of `epoch` already (nothing unless the run stopped inside it)."""
        return self if self.epoch == epoch else Progress(epoch)


@dataclass
class History:
    """The per-epoch histories of `<target>.json` (open-unmix's keys)."""

    train_loss_history: list[float] = field(default_factory=list)
    valid_loss_history: list[float] = field(default_factory=list)
    train_time_history: list[float] = field(default_factory=list)
    lr_history: list[float] = field(default_factory=list)
    loader_history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    epochs_trained: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class RunState:
    progress: Progress = field(default_factory=Progress)
    history: History = field(default_factory=History)
    best_loss: float | None = None  # early stopping: the lowest validation loss so far
    num_bad_epochs: int = 0

    def stop_early(self, loss: float, patience: int) -> bool:
        """open-unmix's early stopping: stop after `patience` epochs without a lower loss."""
        if self.best_loss is None:
            self.best_loss = loss
            return False
        if math.isnan(loss):
            return True
        if loss < self.best_loss or patience == 0:
            self.best_loss, self.num_bad_epochs = loss, 0
        else:
            self.num_bad_epochs += 1
        return self.num_bad_epochs >= patience

    def end_epoch(self, epoch: int, train_loss: float, valid_loss: float, seconds: float, lr: float,
                  io: dict) -> bool:
        """Record a finished epoch; whether it is the best so far."""
        h = self.history
        h.train_loss_history.append(train_loss)
        h.valid_loss_history.append(valid_loss)
        h.train_time_history.append(seconds)
        h.lr_history.append(lr)
        h.loader_history.append(io)
        h.epochs_trained = epoch
        is_best = valid_loss == self.best_loss
        if is_best:
            h.best_epoch = epoch
        self.progress = Progress(epoch + 1)
        return is_best

    def to_dict(self) -> dict:
        """The checkpoint's `"umx"` payload."""
        return {"history": dataclasses.asdict(self.history), "best_loss": self.best_loss,
                "num_bad_epochs": self.num_bad_epochs, "position": dataclasses.asdict(self.progress)}

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        position = {k: v for k, v in d["position"].items() if k in {f.name for f in dataclasses.fields(Progress)}}
        return cls(Progress(**position), History.from_dict(d["history"]), d["best_loss"], d["num_bad_epochs"])

    @classmethod
    def from_results(cls, results: dict) -> "RunState":
        """The state of an open-unmix run (its checkpoint has no `"umx"` payload): from `<target>.json`."""
        return cls(Progress(results["epochs_trained"] + 1), History.from_dict(results), results["best_loss"],
                   results["num_bad_epochs"])

    def results(self, args: dict) -> dict:
        """`<target>.json`: the run's arguments, early stopping and histories."""
        return {"args": args, "best_loss": self.best_loss, "num_bad_epochs": self.num_bad_epochs,
                **dataclasses.asdict(self.history)}
