"""`--arch tinymask`: the smallest architecture that is nothing like open-unmix, to prove umx's model
seam (umx.models.protocol) from outside umx.

One network for all targets, on waveforms: two 1-D convolutions give a sigmoid mask per target and
channel, applied to the mixture. No input statistics, one optimisation unit (one AdamW, one plateau
scheduler, one early stopping), its own loss (L1 on waveforms), and chunked whole-track inference
(windowed overlap-add). Its model directory is `separator.json` (naming the architecture, the
targets, the rate and the options) and `tinymask.pth`, both checked before anything is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from umx.errors import UmxError
from umx.models.chunked import ChunkedSeparation
from umx.models.directory import ARCHITECTURE_KEY, SEPARATOR_JSON, read_json
from umx.models.optimisers import adam, plateau
from umx.models.protocol import ModelSpec, OptimiserSettings, SeparationOptions, UnitOptimiser
from umx.models.weights import MAX_ELEMENT_BYTES, PICKLE_SLACK, check_stored, read_weights, save_torch
from umx.names import safe_name
from umx.option_table import check_values, option
from umx.shards.storage import write_json

NAME = "tinymask"
UNIT = "tinymask"  # its one optimisation unit: tinymask.pth, tinymask.chkpnt, tinymask.json
WEIGHTS = f"{UNIT}.pth"
GROUP = f"arch:{NAME}"


@dataclass(frozen=True)
class TinyMaskOptions:
    tiny_channels: int = option(8, "hidden channels of the two convolutions", GROUP, low=1, high=256)
    tiny_kernel: int = option(9, "kernel size (odd)", GROUP, low=1, high=255)
    tiny_dropout: float = option(0.1, "dropout between the convolutions", GROUP, low=0, high=1, high_open=True)
    tiny_chunk: float = option(0.5, "inference: chunk length in s", GROUP, low=0.01, high=60)
    tiny_overlap: int = option(2, "inference: chunks overlapping each sample", GROUP, low=1, high=16)
    tiny_batch: int = option(4, "inference: chunks per batch", GROUP, low=1, high=256)


class TinyMask(nn.Module):
    """`[batch, channels, time]` → `[batch, targets, channels, time]`: the mixture times a mask."""

    def __init__(self, targets: Sequence[str], nb_channels: int, options: TinyMaskOptions):
        super().__init__()
        self.targets, self.nb_channels = tuple(targets), nb_channels
        k = options.tiny_kernel
        self.inner = nn.Conv1d(nb_channels, options.tiny_channels, k, padding=k // 2)
        self.dropout = nn.Dropout(options.tiny_dropout)
        self.outer = nn.Conv1d(options.tiny_channels, nb_channels * len(self.targets), k, padding=k // 2)

    def forward(self, mixture: Tensor) -> Tensor:
        batch, channels, time = mixture.shape
        hidden = self.dropout(torch.tanh(self.inner(mixture)))
        masks = torch.sigmoid(self.outer(hidden)).reshape(batch, len(self.targets), channels, time)
        return masks * mixture[:, None]


class TinyMaskModel(nn.Module):
    """The Trainable: one unit holding the one network."""

    def __init__(self, network: TinyMask):
        super().__init__()
        self.units = nn.ModuleDict({UNIT: network})
        self.unit_targets = {UNIT: network.targets}

    def forward(self, mixture: Tensor, seed: int | None = None) -> Tensor:
        if seed is not None:
            torch.manual_seed(seed)
        return self.units[UNIT](mixture)

    def subset(self, units: Sequence[str]) -> "TinyMaskModel":
        return self  # one unit: the run's whole model, or nothing left to train

    def make_capturable(self) -> None:
        pass  # F.dropout draws from the philox generator already


class L1:
    """Mean absolute error on waveforms over every target: one unit, so the row is (it, it)."""

    joint = True

    def __call__(self, estimates: Tensor, references: Tensor, mixture: Tensor) -> Tensor:
        loss = F.l1_loss(estimates.float(), references)
        return torch.stack([loss, loss])


def whole_track(network: TinyMask, sample_rate: int, options: TinyMaskOptions, residual: bool | str
                ) -> ChunkedSeparation:
    """Whole-track inference: windowed overlap-add of the network over chunks (umx.models.chunked)."""
    chunk = max(options.tiny_kernel, int(options.tiny_chunk * sample_rate))
    return ChunkedSeparation(network, list(network.targets), sample_rate, chunk, options.tiny_overlap,
                             options.tiny_batch, residual)


class TinyMaskArchitecture:
    name = NAME
    options = TinyMaskOptions
    options_in_config = False

    def units(self, targets, options):
        return {UNIT: tuple(targets)}

    def check(self, options: TinyMaskOptions, spec: ModelSpec, eval_separation: str) -> None:
        if options.tiny_kernel % 2 == 0:
            raise UmxError(f"--tiny-kernel {options.tiny_kernel}: must be odd (the output keeps the input's length)")

    def min_samples(self, options: TinyMaskOptions) -> int:
        return options.tiny_kernel

    def statistics(self, options):
        return None

    def build(self, spec: ModelSpec, options: TinyMaskOptions, statistics) -> TinyMaskModel:
        return TinyMaskModel(TinyMask(spec.targets, spec.nb_channels, options))

    def fine_tune(self, model_dir: Path, spec: ModelSpec, options: TinyMaskOptions) -> TinyMaskModel:
        described = _read_directory(model_dir)
        if described.spec.targets != spec.targets or described.spec.nb_channels != spec.nb_channels:
            raise UmxError(f"--model {model_dir}: separates {', '.join(described.spec.targets)} with "
                           f"{described.spec.nb_channels} channel(s), not this run's {', '.join(spec.targets)} with "
                           f"{spec.nb_channels}")
        network = _load_network(model_dir, described)
        return TinyMaskModel(network).train()

    def objective(self, model, options):
        return L1()

    def optimisers(self, model: TinyMaskModel, options, settings: OptimiserSettings) -> dict[str, UnitOptimiser]:
        optimizer = adam(model.units[UNIT], settings, adamw=True)
        return {UNIT: UnitOptimiser(optimizer, plateau(optimizer, settings))}

    def scoring(self, model: TinyMaskModel, units, spec: ModelSpec, options: TinyMaskOptions, residual: bool,
                how: str):
        separation = whole_track(model.units[UNIT], spec.sample_rate, options, residual)
        return lambda mixture, loss_estimates: separation(mixture)[0]

    def write_directory(self, folder: Path, spec: ModelSpec, options: TinyMaskOptions) -> None:
        write_json(folder / SEPARATOR_JSON, {ARCHITECTURE_KEY: NAME, "targets": list(spec.targets),
                                             "sample_rate": spec.sample_rate, "nb_channels": spec.nb_channels,
                                             "options": dataclasses.asdict(options)})

    def write_weights(self, folder: Path, options, weights: dict, best: Sequence[str]) -> None:
        if best:
            save_torch(weights[UNIT], folder / WEIGHTS)

    def separation(self, model_dir: Path, targets, how: SeparationOptions, device: torch.device):
        described = _read_directory(model_dir)
        if targets and list(targets) != list(described.spec.targets):
            raise UmxError(f"{model_dir}: one network separates {', '.join(described.spec.targets)} together, "
                           f"not {', '.join(targets)}")
        network = _load_network(model_dir, described).to(device).eval()
        for p in network.parameters():
            p.requires_grad = False
        return whole_track(network, described.spec.sample_rate, described.options, how.residual)

    def directory_targets(self, model_dir: Path) -> list[str]:
        return list(_read_directory(model_dir).spec.targets)


@dataclass(frozen=True)
class Described:
    spec: ModelSpec
    options: TinyMaskOptions
    path: Path


def _read_directory(model_dir: Path) -> Described:
    """separator.json, every value checked: a model directory comes from elsewhere."""
    path = Path(model_dir) / SEPARATOR_JSON
    conf = read_json(path, f"is {model_dir} a {NAME} model directory?")
    targets = conf.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise UmxError(f"{path}: targets must be a list of target names")
    for t in targets:
        safe_name(t, "target", str(path))
    rate, channels = conf.get("sample_rate"), conf.get("nb_channels")
    if not isinstance(rate, int) or isinstance(rate, bool) or not 1000 <= rate <= 384000:
        raise UmxError(f"{path}: sample_rate must be a whole number in [1000, 384000], got {rate!r:.40}")
    if channels not in (1, 2) or isinstance(channels, bool):
        raise UmxError(f"{path}: nb_channels must be 1 or 2, got {channels!r:.40}")
    raw = conf.get("options")
    known = {f.name for f in dataclasses.fields(TinyMaskOptions)}
    if not isinstance(raw, dict) or set(raw) - known:
        raise UmxError(f"{path}: options must be an object of {', '.join(sorted(known))}")
    try:
        options = TinyMaskOptions(**raw)
        check_values(options, flag_prefix=f"{path}: options.")
    except TypeError as e:
        raise UmxError(f"{path}: options: {e}") from None
    return Described(ModelSpec(tuple(targets), rate, channels), options, path)


def _load_network(model_dir: Path, described: Described) -> TinyMask:
    """The weights, bounded by the network the JSON describes before torch reads them."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in TinyMask(described.spec.targets, described.spec.nb_channels,
                                                  described.options).state_dict().items()}
    path = Path(model_dir) / WEIGHTS
    if not path.is_file():
        raise UmxError(f"{path}: not found")
    limit = sum(s.numel() for s in shapes.values()) * MAX_ELEMENT_BYTES + PICKLE_SLACK
    state = read_weights(path, limit, described.path.name)
    if not isinstance(state, dict) or {k: getattr(v, "shape", None) for k, v in state.items()} != shapes:
        raise UmxError(f"{path}: does not hold the network {described.path.name} describes")
    check_stored([state], path)
    network = TinyMask(described.spec.targets, described.spec.nb_channels, described.options)
    network.load_state_dict(state)
    return network


ARCHITECTURE = TinyMaskArchitecture()
