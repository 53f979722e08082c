"""The model seam: what an architecture gives the rest of umx, and all the rest of umx may ask of it.

The trainer, both steps (eager and the CUDA graph), EMA, checkpoints, validation, `--eval-every`,
umx-separate, umx-eval and umx-bench talk to a model through these protocols only. Which
architecture a run or a model directory has is looked up by name in one place (`registry.py`);
nothing asks a model what it is.

Shapes and domains:

- a `Trainable` takes a mixture waveform batch `[batch, channels, time]` (float, the crops the
  data side mixed on the device) and returns its estimates in its own domain (open-unmix: one
  magnitude spectrogram per target; a waveform model: `[batch, targets, channels, time]`);
- its `Objective` takes those estimates, the references `[batch, targets, channels, time]` and the
  mixture, and returns one row on the device: one loss term per optimisation unit, then the
  objective minimised (the step never waits for the host);
- a `Separation` takes a whole track `[batch, channels, time]` and returns `[batch, sources,
  channels, time]` (the targets, then a residual where asked), bounded in memory on long tracks.

An optimisation unit is what has its own optimizer, plateau scheduler, early stopping, moving
averages and checkpoint file: open-unmix's units are its targets (one network each), a network
of all stems is one unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import defaults
from .weights import Range

NITER = Range(0, 100)  # Wiener EM iterations: time grows with them
WIENER_WIN_LEN = Range(0, 2**16)  # frames filtered together (0: the whole track)


@dataclass(frozen=True)
class ModelSpec:
    """What the data decides about any model: the targets it separates, in order, the audio's rate
    and the channels it takes (1: a mono model of stereo audio). `crop_samples`: the length of the
    crops a run trains it on (after augmentations that change the length); None for whole tracks
    and outside training (a model directory's model)."""

    targets: tuple[str, ...]
    sample_rate: int
    nb_channels: int
    crop_samples: int | None = None


@dataclass(frozen=True)
class StatisticsNeed:
    """The input statistics an architecture is built with: per-bin mean and std of the training
    split's magnitude spectrogram for this STFT (prep computes them, the manifest keeps them)."""

    nfft: int
    nhop: int


@dataclass(frozen=True)
class Statistics:
    mean: np.ndarray
    std: np.ndarray


@dataclass(frozen=True)
class OptimiserSettings:
    """The run's optimisation options (umx-train's own), given to the architecture's optimizers."""

    lr: float
    weight_decay: float
    lr_decay_gamma: float
    lr_decay_patience: int
    graph: bool  # for the CUDA-graph step: fused, capturable, the lr a device tensor
    device: torch.device


@dataclass
class UnitOptimiser:
    """One unit's optimizer and the plateau scheduler the validation loss steps."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau


@dataclass(frozen=True)
class SeparationOptions:
    """How a whole track is separated (umx-separate, umx-eval). `residual`: also the mixture minus
    the targets (a string names it). The Wiener options concern spectrogram-mask architectures
    that filter their estimates (open-unmix); the others take no filter."""

    residual: bool | str = False
    niter: int = defaults.NITER
    wiener_win_len: int | None = defaults.WIENER_WIN_LEN
    softmask: bool = False


class Objective(Protocol):
    """What the step minimises."""

    joint: bool  # the units share one objective: one best epoch and one early stop for all

    def __call__(self, estimates: Any, references: Tensor, mixture: Tensor) -> Tensor:
        """→ `[units + 1]`: each unit's loss term, then the objective."""


class Trainable(Protocol):
    """What the trainer trains: an `nn.Module` whose `units` are its separately optimised networks."""

    units: nn.ModuleDict
    unit_targets: dict[str, tuple[str, ...]]  # the targets each unit estimates

    def __call__(self, mixture: Tensor, seed: int | None = None) -> Any:
        """Estimates of a mixture batch. `seed`: reseed the default generator before each unit's
        draws (dropout), so each draws what a run of it alone would; None inside a CUDA graph."""

    def subset(self, units: Sequence[str]) -> "Trainable":
        """The same networks (shared, not copied) of some units only: those still training."""

    def make_capturable(self) -> None:
        """Draw only from torch's philox generator from now on (a CUDA graph reseeds it at replay)."""

    def train(self, mode: bool = True) -> Any: ...
    def eval(self) -> Any: ...


class Separation(Protocol):
    """Whole-track inference, as umx-separate runs it."""

    target_names: list[str]  # the sources of `__call__`'s sources axis
    sample_rate: int

    def __call__(self, audio: Tensor) -> Tensor:
        """`[batch, channels, time]` → `[batch, sources, channels, time]`."""


class TrackScoring(Protocol):
    """Separating a validation track inside the validation pass (`--eval-every`)."""

    def __call__(self, mixture: Tensor, loss_estimates: Any) -> Tensor:
        """One mixture `[1, channels, time]` and the loss pass's estimates of it → `[sources,
        channels, time]` (the targets, then the residual where there is one)."""


class Architecture(Protocol):
    """A separation model umx trains, separates with and evaluates.

    `options` is the architecture's own option group, a dataclass whose fields carry umx's option
    metadata (`umx.option_table.option`): the one option table generates their command-line
    flags. `options_in_config`: its fields are umx-train's own (open-unmix's train.py options,
    which the specification makes umx-train's), so they are taken from there."""

    name: str
    options: type
    options_in_config: bool

    def units(self, targets: Sequence[str], options: Any) -> dict[str, tuple[str, ...]]:
        """The optimisation units of a run of `targets`: unit → the targets it estimates. Known
        before anything is built (the checkpoint files are named after them)."""

    def check(self, options: Any, spec: ModelSpec, eval_separation: str) -> None:
        """Refuse options this architecture cannot train with (`eval_separation`: --eval-separation),
        in one line naming the option."""

    def min_samples(self, options: Any) -> int:
        """The shortest audio the model takes (a crop or a whole validation track)."""

    def statistics(self, options: Any) -> StatisticsNeed | None:
        """The input statistics a fresh model is built with; None: it needs none."""

    def build(self, spec: ModelSpec, options: Any, statistics: Statistics | None) -> Trainable:
        """A fresh model (its weights from torch's default generator, which the trainer seeds)."""

    def fine_tune(self, model_dir: Path, spec: ModelSpec, options: Any) -> Trainable:
        """A model to train on from a model directory's weights (`--model`), refused in one line
        where it does not fit `spec` and `options`."""

    def objective(self, model: Trainable, options: Any) -> Objective: ...

    def optimisers(self, model: Trainable, options: Any, settings: OptimiserSettings) -> dict[str, UnitOptimiser]:
        """One optimizer and plateau scheduler per unit."""

    def scoring(self, model: Trainable, units: Sequence[str], spec: ModelSpec, options: Any, residual: bool,
                how: str) -> TrackScoring:
        """`--eval-every`'s separation of a validation track by the networks of `units` as they are
        (not copied); `how`: --eval-separation (fast may reuse the loss pass's estimates)."""

    def write_directory(self, folder: Path, spec: ModelSpec, options: Any) -> None:
        """The model directory's description (`separator.json`, naming the architecture), written
        when a run starts."""

    def write_weights(self, folder: Path, options: Any, weights: dict[str, dict[str, Tensor]],
                      best: Sequence[str]) -> None:
        """The best weights of the units `best` (`weights`: every unit's chosen state dict)."""

    def separation(self, model_dir: Path, targets: Sequence[str] | None, how: SeparationOptions,
                   device: torch.device) -> Separation:
        """A model directory's whole-track separation, every file of it checked before a network is
        built (docs/security.md)."""

    def directory_targets(self, model_dir: Path) -> list[str]:
        """The targets a model directory separates."""
