"""BS-RoFormer and Mel-Band RoFormer (`--arch bs_roformer`, `--arch mel_band_roformer`) on the model
seam: the network from the maintained `bs-roformer` package, trained as MSST trains it.

One network estimates every target from the stereo mixture waveform: one optimisation unit (one
Adam or AdamW, one plateau scheduler, one early stopping), MSST's loss (`loss.py`: L1 on the
waveforms plus the multi-resolution STFT loss), whole tracks separated by MSST's windowed
overlap-add (`models.chunked`). Its model directory: `separator.json` (the architecture, its
targets, rate and options) and `<arch>.pth` (a plain state dict), both checked before anything is
built. `msst.py` reads MSST's checkpoints (to fine-tune) and config files.

The package is imported only when a RoFormer is built or loaded (it pulls librosa and numba: seconds).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from ...errors import UmxError
from ...option_table import options_from_json
from ...shards.storage import write_json
from ..chunked import ChunkedSeparation
from ..directory import ARCHITECTURE_KEY, SEPARATOR_JSON, read_json, read_targets_and_rate
from ..optimisers import adam, plateau
from ..protocol import ModelSpec, OptimiserSettings, SeparationOptions, UnitOptimiser
from ..weights import read_state, save_torch
from .loss import MultiResolutionLoss
from .options import BSRoformerOptions, MelBandRoformerOptions


def build_network(kind: str, spec: ModelSpec, options: Any) -> nn.Module:
    """The package's network for `options` (MSST's architecture: see options.py)."""
    from bs_roformer import BSRoformer, MelBandRoformer

    common = dict(dim=options.dim, depth=options.depth, stereo=True, num_stems=len(spec.targets),
                  time_transformer_depth=options.time_transformer_depth,
                  freq_transformer_depth=options.freq_transformer_depth, dim_head=options.dim_head,
                  heads=options.heads, attn_dropout=options.attn_dropout, ff_dropout=options.ff_dropout,
                  flash_attn=options.flash_attn, stft_n_fft=options.stft_n_fft,
                  stft_hop_length=options.stft_hop_length, stft_win_length=options.stft_win_length,
                  stft_normalized=options.stft_normalized, zero_dc=options.zero_dc,
                  mask_estimator_depth=options.mask_estimator_depth,
                  num_residual_streams=options.num_residual_streams,
                  multi_stft_resolution_loss_weight=options.multi_stft_resolution_loss_weight,
                  multi_stft_resolutions_window_sizes=tuple(options.multi_stft_resolutions_window_sizes),
                  multi_stft_hop_size=options.multi_stft_hop_size,
                  multi_stft_normalized=options.multi_stft_normalized)
    with warnings.catch_warnings():  # the package's constructor counts bins with a window-less STFT
        warnings.filterwarnings("ignore", message="A window was not provided")
        if kind == "bs_roformer":
            network = BSRoformer(**common, freqs_per_bands=tuple(options.freqs_per_bands))
        else:
            network = MelBandRoformer(**common, num_bands=options.num_bands, sample_rate=spec.sample_rate,
                                      linear_transformer_depth=0, add_value_residual=False,
                                      match_input_audio_length=True)
    if options.use_torch_checkpoint:
        for block in network.layers:  # each block: its (linear,) time and frequency transformers
            for transformer in block:
                if transformer is not None:
                    checkpointed(transformer)
    return network


def checkpointed(module: nn.Module) -> None:
    """`module` recomputes its activations in the backward pass (torch.utils.checkpoint, the RNG
    state kept: the same dropout) instead of keeping them: MSST's use_torch_checkpoint, for memory.
    Its parameters and their names stay its own."""
    forward = module.forward

    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = run


class RoformerModel(nn.Module):
    """The Trainable: one unit, the network, on `[batch, 2, time]` → `[batch, targets, 2, time]`. The
    input is padded to a whole number of STFT hops and the output cut back (MSST's chunks are whole
    hops; umx's crops need not be)."""

    def __init__(self, unit: str, network: nn.Module, targets: Sequence[str], hop: int):
        super().__init__()
        self.units = nn.ModuleDict({unit: network})
        self.unit_targets = {unit: tuple(targets)}
        self.unit, self.hop = unit, hop

    @property
    def network(self) -> nn.Module:
        return self.units[self.unit]

    def forward(self, mixture: Tensor, seed: int | None = None) -> Tensor:
        if seed is not None:
            torch.manual_seed(seed)
        return separate_chunks(self.network, mixture, self.hop, len(self.unit_targets[self.unit]))

    def subset(self, units: Sequence[str]) -> "RoformerModel":
        return self  # one unit

    def make_capturable(self) -> None:
        pass  # dropout is F.dropout's: philox draws on CUDA


def separate_chunks(network: nn.Module, mixture: Tensor, hop: int, n_targets: int) -> Tensor:
    """`[batch, channels, time]` → `[batch, targets, channels, time]` through the network."""
    length = mixture.shape[-1]
    pad = -length % hop
    out = network(F.pad(mixture, (0, pad)) if pad else mixture)
    if n_targets == 1:  # the package squeezes one stem away
        out = out[:, None]
    if out.shape[-1] < length:
        out = F.pad(out, (0, length - out.shape[-1]))
    return out[..., :length]


def whole_track(model: RoformerModel, sample_rate: int, options: Any, residual: bool | str) -> ChunkedSeparation:
    """MSST's windowed overlap-add of the network over whole tracks (models.chunked)."""
    n = len(model.unit_targets[model.unit])
    return ChunkedSeparation(lambda chunks: separate_chunks(model.network, chunks, model.hop, n),
                             list(model.unit_targets[model.unit]), sample_rate, options.chunk_size,
                             options.num_overlap, options.inference_batch_size, residual)


class RoformerArchitecture:
    """`--arch bs_roformer` | `--arch mel_band_roformer`."""

    options_in_config = False

    def __init__(self, name: str, options: type):
        self.name, self.options = name, options

    def units(self, targets: Sequence[str], options: Any) -> dict[str, tuple[str, ...]]:
        return {self.name: tuple(targets)}

    def check(self, options: Any, spec: ModelSpec, eval_separation: str) -> None:
        if spec.nb_channels != 2:
            raise UmxError(f"--arch {self.name}: stereo only (--nb-channels 2), as MSST trains it")
        if options.stft_win_length > options.stft_n_fft:
            raise UmxError(f"--stft-win-length {options.stft_win_length} is longer than --stft-n-fft "
                           f"{options.stft_n_fft}")
        if self.name == "bs_roformer" and sum(options.freqs_per_bands) != options.stft_n_fft // 2 + 1:
            raise UmxError(f"--freqs-per-bands adds up to {sum(options.freqs_per_bands)} bins, but --stft-n-fft "
                           f"{options.stft_n_fft} gives {options.stft_n_fft // 2 + 1}")
        if options.dim_head * options.heads > 2**16:
            raise UmxError(f"--dim-head {options.dim_head} × --heads {options.heads}: too wide")

    def min_samples(self, options: Any) -> int:
        return options.stft_n_fft

    def statistics(self, options: Any) -> None:
        return None

    def build(self, spec: ModelSpec, options: Any, statistics: Any) -> RoformerModel:
        return RoformerModel(self.name, build_network(self.name, spec, options), spec.targets,
                             options.stft_hop_length)

    def fine_tune(self, model_dir: Path, spec: ModelSpec, options: Any) -> RoformerModel:
        """From one of umx's model directories, or from a checkpoint MSST wrote (a file)."""
        if model_dir.is_file():
            from .msst import load_msst_checkpoint

            model = self.build(spec, options, None)
            load_msst_checkpoint(model_dir, model.network, self.name)
            return model
        described = self.describe(model_dir)
        if described.spec.targets != spec.targets:
            raise UmxError(f"--model {model_dir}: separates {', '.join(described.spec.targets)}, not this run's "
                           f"{', '.join(spec.targets)}")
        if described.options != options:
            changed = [f.name for f in dataclasses.fields(options)
                       if getattr(options, f.name) != getattr(described.options, f.name)]
            raise UmxError(f"--model {model_dir}: its options differ from this run's ({', '.join(changed[:6])})")
        return self._load(model_dir, described).train()

    def objective(self, model: RoformerModel, options: Any) -> MultiResolutionLoss:
        return MultiResolutionLoss(options.multi_stft_resolutions_window_sizes, options.multi_stft_hop_size,
                                   options.stft_n_fft, options.multi_stft_resolution_loss_weight,
                                   options.multi_stft_normalized)

    def optimisers(self, model: RoformerModel, options: Any, settings: OptimiserSettings) -> dict[str, UnitOptimiser]:
        """MSST's: one Adam (or AdamW: --optimizer) over the network, its lr following the validation."""
        optimizer = adam(model.network, settings, adamw=options.optimizer == "adamw")
        return {self.name: UnitOptimiser(optimizer, plateau(optimizer, settings))}

    def scoring(self, model: RoformerModel, units: Sequence[str], spec: ModelSpec, options: Any, residual: bool,
                how: str):
        separation = whole_track(model, spec.sample_rate, options, residual)
        return lambda mixture, loss_estimates: separation(mixture)[0]

    def write_directory(self, folder: Path, spec: ModelSpec, options: Any) -> None:
        write_json(folder / SEPARATOR_JSON, {ARCHITECTURE_KEY: self.name, "targets": list(spec.targets),
                                             "sample_rate": spec.sample_rate, "nb_channels": spec.nb_channels,
                                             "options": _plain(options)})

    def write_weights(self, folder: Path, options: Any, weights: dict, best: Sequence[str]) -> None:
        if best:
            save_torch(weights[self.name], folder / f"{self.name}.pth")

    def separation(self, model_dir: Path, targets: Sequence[str] | None, how: SeparationOptions,
                   device: torch.device) -> ChunkedSeparation:
        described = self.describe(model_dir)
        if targets and list(targets) != list(described.spec.targets):
            raise UmxError(f"{model_dir}: one network separates {', '.join(described.spec.targets)} together, "
                           f"not {', '.join(targets)}")
        model = self._load(model_dir, described).to(device).eval()
        for p in model.parameters():
            p.requires_grad = False
        return whole_track(model, described.spec.sample_rate, described.options, how.residual)

    def directory_targets(self, model_dir: Path) -> list[str]:
        return list(self.describe(model_dir).spec.targets)

    # --- the model directory: nothing in it trusted ------------------------------------------------
    def describe(self, model_dir: Path) -> "Described":
        """separator.json, every value checked."""
        path = Path(model_dir) / SEPARATOR_JSON
        conf = read_json(path, f"is {model_dir} a {self.name} model directory?")
        targets, rate = read_targets_and_rate(conf, path)
        if conf.get("nb_channels") != 2:
            raise UmxError(f"{path}: nb_channels must be 2, got {conf.get('nb_channels')!r:.40}")
        options = options_from_json(self.options, conf.get("options"), f"{path}: options")
        spec = ModelSpec(targets, rate, 2)
        self.check(options, spec, "exact")
        return Described(spec, options, path)

    def _load(self, model_dir: Path, described: "Described") -> RoformerModel:
        """The weights, bounded by the network the JSON describes (built on the meta device) before
        torch reads them, then loaded strictly."""
        with torch.device("meta"):
            network = build_network(self.name, described.spec, described.options)
        state = read_state(Path(model_dir) / f"{self.name}.pth", network, described.path.name,
                           f"a {self.name} model directory")
        model = self.build(described.spec, described.options, None)
        model.network.load_state_dict(state)
        return model


@dataclass(frozen=True)
class Described:
    spec: ModelSpec
    options: Any
    path: Path


def _plain(options: Any) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}


BS_ROFORMER = RoformerArchitecture("bs_roformer", BSRoformerOptions)
MEL_BAND_ROFORMER = RoformerArchitecture("mel_band_roformer", MelBandRoformerOptions)
