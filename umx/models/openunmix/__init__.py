"""Open-Unmix as one architecture of the model seam (`models.protocol.Architecture`), bit for bit the
recipe umx has always trained.

One `OpenUnmix` network per target, each its own optimisation unit (Adam, plateau scheduler, early
stopping, `<target>.pth`), on the magnitude spectrogram of a non-centred STFT, with the input
statistics of the training split; X-UMX's bridges and multi-domain loss join them (`--bridge`,
`--loss multidomain`). Whole tracks separate with a centred STFT and multichannel Wiener EM
(`separator.Separator`). Its options are umx-train's own fields (the specification's train.py
options), so `options_in_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import UmxError
from .. import defaults
from ..protocol import (ModelSpec, OptimiserSettings, SeparationOptions, Statistics, StatisticsNeed, TrackScoring,
                        UnitOptimiser)
from .files import check_stft, load_target
from .losses import LOSSES, make_objective
from .network import Joint, OpenUnmix, Spectrogram, bandwidth_to_max_bin

NAME = "openunmix"


@dataclass(frozen=True)
class OpenUnmixOptions:
    """Open-Unmix's model and loss options (umx-train's `--nfft`, `--hidden-size`, …)."""

    nfft: int = defaults.NFFT
    nhop: int = defaults.NHOP
    hidden_size: int = 512
    unidirectional: bool = False
    bandwidth: int = 16000
    loss: str = LOSSES[0]
    mix_coef: float = 10.0
    combination: bool = False
    bridge: bool = False

    @property
    def joint(self) -> bool:
        """Whether the targets share one objective (then one best epoch and one early stop for all)."""
        return self.loss != "independent" or self.bridge


class OpenUnmixModel(nn.Module):
    """The networks of a run on a mixture waveform: the spectrogram front end, then every target's
    OpenUnmix (`Joint`: plain, or bridged as X-UMX)."""

    def __init__(self, encoder: Spectrogram, joint: Joint):
        super().__init__()
        self.encoder, self.joint = encoder, joint

    @property
    def units(self) -> nn.ModuleDict:
        return self.joint.models

    @property
    def unit_targets(self) -> dict[str, tuple[str, ...]]:
        return {t: (t,) for t in self.joint.models}

    def forward(self, mixture: Tensor, seed: int | None = None) -> tuple[Tensor, ...]:
        return self.joint(self.encoder(mixture), seed)

    def subset(self, units: Sequence[str]) -> "OpenUnmixModel":
        return OpenUnmixModel(self.encoder, self.joint.subset(list(units)))

    def make_capturable(self) -> None:
        for network in self.joint.models.values():
            network.graph_safe_dropout = True


class OpenUnmixArchitecture:
    """`--arch openunmix` (the default)."""

    name = NAME
    options = OpenUnmixOptions
    options_in_config = True

    def units(self, targets: Sequence[str], options: OpenUnmixOptions) -> dict[str, tuple[str, ...]]:
        return {t: (t,) for t in targets}

    def check(self, options: OpenUnmixOptions, spec: ModelSpec, eval_separation: str) -> None:
        check_stft(options.nfft, options.nhop, f"--nfft {options.nfft} --nhop {options.nhop}")
        if eval_separation == "fast" and (options.nfft // 2) % options.nhop:
            raise UmxError(f"--eval-separation fast needs --nhop to divide --nfft / 2 (the loss pass's frames are "
                           f"then centred frames), got --nfft {options.nfft} --nhop {options.nhop}: use exact")
        if options.bridge and len(spec.targets) < 2:
            raise UmxError("--bridge joins the networks of several targets: give two at least with --targets")
        if options.combination and (options.loss != "multidomain" or len(spec.targets) < 3):
            raise UmxError("--combination scores sums of 2 … N-1 targets: it needs --loss multidomain and "
                           "three targets at least")

    def min_samples(self, options: OpenUnmixOptions) -> int:
        return options.nfft

    def statistics(self, options: OpenUnmixOptions) -> StatisticsNeed:
        return StatisticsNeed(options.nfft, options.nhop)

    def build(self, spec: ModelSpec, options: OpenUnmixOptions, statistics: Statistics | None) -> OpenUnmixModel:
        """One OpenUnmix per target, joined; each starts from the generator state the first one saw,
        so it is the network a run of that target alone would start from."""
        mean = std = None
        if statistics is not None:
            mean, std = np.asarray(statistics.mean), np.asarray(statistics.std)
        rng = torch.random.get_rng_state()
        models = {}
        for target in spec.targets:
            torch.random.set_rng_state(rng)
            models[target] = OpenUnmix(
                nb_bins=options.nfft // 2 + 1, nb_channels=spec.nb_channels, hidden_size=options.hidden_size,
                unidirectional=options.unidirectional, input_mean=mean, input_scale=std,
                max_bin=bandwidth_to_max_bin(spec.sample_rate, options.nfft, options.bandwidth))
        return self._joined(models, spec, options)

    def fine_tune(self, model_dir: Path, spec: ModelSpec, options: OpenUnmixOptions) -> OpenUnmixModel:
        """Every target's network from `<target>.pth` of `model_dir` (umx's or open-unmix's)."""
        models = {}
        for target in spec.targets:
            model = load_target(model_dir, target)
            channels = model.fc3.out_features // model.nb_output_bins
            if (model.nb_output_bins, channels) != (options.nfft // 2 + 1, spec.nb_channels):
                raise UmxError(f"--model {model_dir}: its '{target}' model has {model.nb_output_bins} frequency "
                               f"bins and {channels} channel(s), but this run has --nfft {options.nfft} "
                               f"({options.nfft // 2 + 1} bins) and --nb-channels {spec.nb_channels}")
            models[target] = model.train()
        return self._joined(models, spec, options)

    @staticmethod
    def _joined(models: dict[str, OpenUnmix], spec: ModelSpec, options: OpenUnmixOptions) -> OpenUnmixModel:
        encoder = Spectrogram(options.nfft, options.nhop, mono=spec.nb_channels == 1)
        return OpenUnmixModel(encoder, Joint(models, options.bridge))

    def objective(self, model: OpenUnmixModel, options: OpenUnmixOptions):
        return make_objective(options.loss, model.encoder, options.mix_coef, options.combination)

    def optimisers(self, model: OpenUnmixModel, options: OpenUnmixOptions,
                   settings: OptimiserSettings) -> dict[str, UnitOptimiser]:
        """open-unmix's: Adam and ReduceLROnPlateau(cooldown=10) per target's network."""
        from ..optimisers import adam, plateau

        out = {}
        for unit, network in model.units.items():
            optimizer = adam(network, settings)
            out[unit] = UnitOptimiser(optimizer, plateau(optimizer, settings))
        return out

    def scoring(self, model: OpenUnmixModel, units: Sequence[str], spec: ModelSpec, options: OpenUnmixOptions,
                residual: bool, how: str) -> TrackScoring:
        from .validation import scoring

        return scoring(model.subset(units), spec, options.nfft, options.nhop, residual, how)

    def write_directory(self, folder: Path, spec: ModelSpec, options: OpenUnmixOptions) -> None:
        from .files import write_separator_json

        write_separator_json(folder, options.nfft, options.nhop, spec.sample_rate, spec.nb_channels,
                             list(spec.targets) if options.bridge else None)

    def write_weights(self, folder: Path, options: OpenUnmixOptions, weights: dict[str, dict[str, Tensor]],
                      best: Sequence[str]) -> None:
        """`<target>.pth` of each best target, as open-unmix writes them; a bridged model is one network
        of all targets: every target's weights in one `xumx.pth` (never a `<target>.pth`)."""
        from ..directory import BRIDGED_WEIGHTS
        from ..weights import save_torch

        if options.bridge:
            if best:
                save_torch(weights, folder / BRIDGED_WEIGHTS)
            return
        for unit in best:
            save_torch(weights[unit], folder / f"{unit}.pth")

    def separation(self, model_dir: Path, targets: Sequence[str] | None, how: SeparationOptions,
                   device: torch.device):
        from .separator import Separator

        return Separator.from_dir(model_dir, targets, niter=how.niter, residual=how.residual,
                                  wiener_win_len=how.wiener_win_len, device=device, softmask=how.softmask)

    def directory_targets(self, model_dir: Path) -> list[str]:
        from .separator import available_targets

        return available_targets(model_dir)


ARCHITECTURE = OpenUnmixArchitecture()
