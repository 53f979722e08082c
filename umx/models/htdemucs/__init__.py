"""HTDemucs (`--arch htdemucs`) on the model seam: the network of the maintained `demucs` package
(`demucs.htdemucs.HTDemucs`), trained as Demucs trains it, separated by Demucs' own `apply_model`.

One network estimates every target's waveform from the mixture waveform: one optimisation unit (one
Adam or AdamW, its transformer in a parameter group of its own as Demucs' `get_optimizer` makes it),
Demucs' loss (`loss.py`: L1, or MSE, per source on the waveforms, weighted per source). Whole tracks,
the validation pass and `--eval-every` go through `demucs.apply.apply_model` (windows of the model's
`segment`, overlap, the triangular blend and the shift trick), which umx does not rewrite.

Its model directory: `separator.json` (the architecture, targets, rate, channels, the model's window
as an exact fraction, options), `htdemucs.pth` (a plain state dict), both checked before anything is
built. `package.py` reads Demucs' own model packages (`.th`) without running their pickles, to
fine-tune from them (`--model FILE.th`).

Only `demucs.htdemucs` and `demucs.apply` are imported, and only when a model is built or loaded;
neither needs torchaudio or Demucs' training extras.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import UmxError
from ...option_table import options_from_json
from ...shards.storage import write_json
from ..directory import ARCHITECTURE_KEY, SEPARATOR_JSON, read_json, read_targets_and_rate
from ..optimisers import adam, plateau
from ..protocol import ModelSpec, OptimiserSettings, SeparationOptions, UnitOptimiser
from ..weights import MAX_ELEMENT_BYTES, PICKLE_SLACK, read_state, save_torch
from .loss import WaveformLoss
from .options import HTDemucsOptions

NAME = "htdemucs"
WEIGHTS = f"{NAME}.pth"
SEGMENT_KEY = "segment"  # separator.json: the model's window, [numerator, denominator] seconds
MAX_SEGMENT = 3600  # seconds
SHIFT_SEED = 0  # apply_model draws its shifts from Python's `random`: umx seeds it, so a separation repeats
# HTDemucs' constructor arguments umx's options hold under another name (the rest: the same name)
RENAMED = {"stft_n_fft": "nfft"}
NONE_AS = {"channels_time": 0, "multi_freqs": (), "t_lr": 0.0}  # the constructor's None, as the option holds it
NOT_CONSTRUCTOR = ("segment", "waveform_loss", "source_weights", "optimizer", "shifts", "overlap",
                   "transition_power")
# constructor arguments that shape no weight: a fine-tuned package may differ in them (said on stderr)
NOT_SHAPING = ("wiener_iters", "end_iters", "wiener_residual", "freq_emb", "emb_scale", "emb_smooth", "dconv_init",
               "t_dropout", "t_max_period", "t_weight_decay", "t_lr", "t_weight_pos_embed", "t_sin_random_shift",
               "t_cape_mean_normalize", "t_cape_augment", "t_cape_glob_loc_scale", "rescale", "use_train_segment")


def constructor_kwargs(spec: ModelSpec, options: HTDemucsOptions, segment: Fraction) -> dict[str, Any]:
    """HTDemucs' keyword arguments for a run of `spec` with `options`."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        if f.name in NOT_CONSTRUCTOR:
            continue
        value = getattr(options, f.name)
        if f.name in NONE_AS and value == NONE_AS[f.name]:
            value = None
        kwargs[RENAMED.get(f.name, f.name)] = list(value) if isinstance(value, tuple) else value
    return dict(sources=list(spec.targets), audio_channels=spec.nb_channels, samplerate=spec.sample_rate,
                segment=segment, **kwargs)


def build_network(spec: ModelSpec, options: HTDemucsOptions, segment: Fraction) -> nn.Module:
    from demucs.htdemucs import HTDemucs

    return HTDemucs(**constructor_kwargs(spec, options, segment))


def window(spec: ModelSpec, options: HTDemucsOptions) -> Fraction:
    """The model's window (`segment`): `--segment`, else the training crops' length, in whole samples."""
    if options.segment > 0:
        return Fraction(max(1, round(options.segment * spec.sample_rate)), spec.sample_rate)
    if spec.crop_samples is None:
        raise UmxError("--segment: give the model's window in seconds where it trains on whole tracks "
                       "(--seq-dur <= 0)")
    return Fraction(spec.crop_samples, spec.sample_rate)


def draws_on_host(options: HTDemucsOptions) -> bool:
    """Whether the network draws random numbers from Python's or numpy's generators in training (CAPE's
    augmentation, the sin embedding's random shift), not only from torch's."""
    return (options.t_emb == "cape" and options.t_cape_augment) or (options.t_emb == "sin" and options.t_sin_random_shift > 0)


@contextlib.contextmanager
def seeded_host(seed: int) -> Iterator[None]:
    """Python's and numpy's global generators seeded for the block, then restored (apply_model's shifts,
    the transformer's embedding augmentations draw from them)."""
    py, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


class HTDemucsModel(nn.Module):
    """The Trainable: one unit, the network, on `[batch, channels, time]` → `[batch, targets, channels,
    time]`. Training: the network's own forward on the crops. Evaluation (the validation pass):
    Demucs' validation, `apply_model` in windows without overlap and without shifts (Demucs draws one
    random shift there; umx keeps its validation loss free of draws)."""

    def __init__(self, network: nn.Module, targets: Sequence[str], options: HTDemucsOptions):
        super().__init__()
        self.units = nn.ModuleDict({NAME: network})
        self.unit_targets = {NAME: tuple(targets)}
        self.options = options
        self.segment = network.segment

    @property
    def network(self) -> nn.Module:
        return self.units[NAME]

    def forward(self, mixture: Tensor, seed: int | None = None) -> Tensor:
        if seed is not None:
            torch.manual_seed(seed)
        if not self.training:
            return apply_demucs(self.network, mixture, shifts=0, overlap=0.0, transition_power=1.0)
        if seed is not None and draws_on_host(self.options):
            with seeded_host(seed):
                out = self.network(mixture)
        else:
            out = self.network(mixture)
        self.network.segment = self.segment  # HTDemucs sets it to each training input's length
        return out

    def subset(self, units: Sequence[str]) -> "HTDemucsModel":
        return self  # one unit

    def make_capturable(self) -> None:
        if draws_on_host(self.options):
            raise UmxError("--cuda-graph: --t-emb cape with --t-cape-augment, and --t-sin-random-shift, draw on the "
                           "host in every step, which a CUDA graph cannot replay; turn them off or use --cuda-graph off")


def apply_demucs(network: nn.Module, audio: Tensor, shifts: int, overlap: float, transition_power: float) -> Tensor:
    """Demucs' `apply_model` (windows of the network's segment, blended), its shifts seeded. It puts
    the network in evaluation mode, as it leaves it."""
    from demucs.apply import apply_model

    with seeded_host(SHIFT_SEED):
        return apply_model(network, audio, shifts=shifts, split=True, overlap=overlap,
                           transition_power=transition_power, progress=False)


class DemucsSeparation:
    """A model directory's whole-track separation (models.protocol.Separation) by apply_model, then
    the residual (the mixture minus the targets) where asked."""

    def __init__(self, network: nn.Module, targets: list[str], sample_rate: int, options: HTDemucsOptions,
                 residual: bool | str = False, chosen: Sequence[str] | None = None):
        self.network, self.options, self.sample_rate = network, options, sample_rate
        self.residual = bool(residual)
        chosen = list(chosen or targets)
        self.picked = [targets.index(t) for t in chosen]  # the network's stems kept, in the order asked
        self.target_names = chosen + ([residual if isinstance(residual, str) else "residual"] if residual else [])

    @torch.no_grad()
    def __call__(self, audio: Tensor) -> Tensor:
        """`[batch, channels, time]` → `[batch, sources, channels, time]`."""
        o = self.options
        est = apply_demucs(self.network, audio, o.shifts, o.overlap, o.transition_power)
        if self.picked != list(range(est.shape[1])):
            est = est[:, self.picked]
        if self.residual:
            est = torch.cat([est, (audio - est.sum(1))[:, None]], dim=1)
        return est


class HTDemucsArchitecture:
    """`--arch htdemucs`."""

    name = NAME
    options = HTDemucsOptions
    options_in_config = False

    def units(self, targets: Sequence[str], options: Any) -> dict[str, tuple[str, ...]]:
        return {NAME: tuple(targets)}

    def check(self, options: HTDemucsOptions, spec: ModelSpec, eval_separation: str) -> None:
        check_network(options, spec)
        window(spec, options)
        if options.source_weights and len(options.source_weights) != len(spec.targets):
            raise UmxError(f"--source-weights: {len(options.source_weights)} weights for {len(spec.targets)} targets "
                           f"({', '.join(spec.targets)})")
        if options.source_weights and not sum(options.source_weights) > 0:
            raise UmxError("--source-weights: at least one weight must be above 0")

    def min_samples(self, options: HTDemucsOptions) -> int:
        return options.stft_n_fft // 4  # one STFT hop

    def statistics(self, options: Any) -> None:
        return None

    def build(self, spec: ModelSpec, options: HTDemucsOptions, statistics: Any) -> HTDemucsModel:
        return HTDemucsModel(build_network(spec, options, window(spec, options)), spec.targets, options)

    def fine_tune(self, model_dir: Path, spec: ModelSpec, options: HTDemucsOptions) -> HTDemucsModel:
        """From one of umx's model directories, or from a model package Demucs wrote (a `.th` file)."""
        model = self.build(spec, options, None)
        if model_dir.is_file():
            model.network.load_state_dict(demucs_state(model_dir, spec, options, model.network))
            return model
        described = self.describe(model_dir)
        if described.spec.targets != spec.targets:
            raise UmxError(f"--model {model_dir}: separates {', '.join(described.spec.targets)}, not this run's "
                           f"{', '.join(spec.targets)}")
        if (described.spec.sample_rate, described.spec.nb_channels) != (spec.sample_rate, spec.nb_channels):
            raise UmxError(f"--model {model_dir}: takes {described.spec.nb_channels} channels at "
                           f"{described.spec.sample_rate} Hz, this run's data {spec.nb_channels} at {spec.sample_rate} Hz")
        changed = [f.name for f in dataclasses.fields(options) if f.name not in NOT_CONSTRUCTOR + NOT_SHAPING
                   and getattr(options, f.name) != getattr(described.options, f.name)]
        if changed:
            raise UmxError(f"--model {model_dir}: its network differs from this run's ("
                           + ", ".join(f"--{n.replace('_', '-')} {_shown(getattr(described.options, n))}"
                                       for n in changed[:6]) + ")")
        with torch.device("meta"):
            expected = build_network(described.spec, described.options, described.segment)
        model.network.load_state_dict(read_state(Path(model_dir) / WEIGHTS, expected, described.path.name,
                                                 f"an {NAME} model directory"))
        return model

    def objective(self, model: HTDemucsModel, options: HTDemucsOptions) -> WaveformLoss:
        return WaveformLoss(options.waveform_loss, options.source_weights or None)

    def optimisers(self, model: HTDemucsModel, options: HTDemucsOptions,
                   settings: OptimiserSettings) -> dict[str, UnitOptimiser]:
        """Demucs' `get_optimizer`: Adam (or AdamW) over the network, the transformer's parameters in
        a group of their own (its weight decay, its lr where --t-lr gives one); the lr follows the
        validation (umx's plateau scheduler; Demucs keeps it constant, as --lr-decay-patience beyond
        --epochs does)."""
        network = model.network
        transformer = network.crosstransformer
        groups = None
        if transformer is not None:
            own = {id(p) for p in transformer.parameters()}
            groups = [{"params": [p for p in network.parameters() if id(p) not in own]},
                      transformer.make_optim_group()]
        optimizer = adam(network, settings, adamw=options.optimizer == "adamw", groups=groups)
        return {NAME: UnitOptimiser(optimizer, plateau(optimizer, settings))}

    def scoring(self, model: HTDemucsModel, units: Sequence[str], spec: ModelSpec, options: HTDemucsOptions,
                residual: bool, how: str):
        """`--eval-separation fast`: the validation pass's own separation (apply_model without overlap
        and shifts); `exact`: umx-separate's (the run's --shifts, --overlap)."""
        separation = DemucsSeparation(model.network, list(spec.targets), spec.sample_rate, options, residual)

        def score(mixture: Tensor, loss_estimates: Tensor) -> Tensor:
            if how != "fast":
                out = separation(mixture)[0]
                model.network.train(model.training)
                return out
            est = loss_estimates[0].float()
            return torch.cat([est, (mixture[0] - est.sum(0))[None]]) if residual else est

        return score

    def write_directory(self, folder: Path, spec: ModelSpec, options: HTDemucsOptions) -> None:
        segment = window(spec, options)
        write_json(folder / SEPARATOR_JSON, {ARCHITECTURE_KEY: NAME, "targets": list(spec.targets),
                                             "sample_rate": spec.sample_rate, "nb_channels": spec.nb_channels,
                                             SEGMENT_KEY: [segment.numerator, segment.denominator],
                                             "options": _plain(options)})

    def write_weights(self, folder: Path, options: Any, weights: dict, best: Sequence[str]) -> None:
        if best:
            save_torch(weights[NAME], folder / WEIGHTS)

    def separation(self, model_dir: Path, targets: Sequence[str] | None, how: SeparationOptions,
                   device: torch.device) -> DemucsSeparation:
        """Every target of the directory, or those of `targets` (the network separates them all; the
        others are dropped, and a residual is the mixture less those kept)."""
        described = self.describe(model_dir)
        unknown = [t for t in targets or () if t not in described.spec.targets]
        if unknown:
            raise UmxError(f"{model_dir}: separates {', '.join(described.spec.targets)}, not {', '.join(unknown)}")
        model = self.load(model_dir, described).to(device).eval()
        for p in model.parameters():
            p.requires_grad = False
        return DemucsSeparation(model.network, list(described.spec.targets), described.spec.sample_rate,
                                described.options, how.residual, targets)

    def directory_targets(self, model_dir: Path) -> list[str]:
        return list(self.describe(model_dir).spec.targets)

    # --- the model directory: nothing in it trusted ------------------------------------------------
    def describe(self, model_dir: Path) -> "Described":
        """separator.json, every value checked."""
        path = Path(model_dir) / SEPARATOR_JSON
        conf = read_json(path, f"is {model_dir} an {NAME} model directory?")
        targets, rate = read_targets_and_rate(conf, path)
        channels = conf.get("nb_channels")
        if channels not in (1, 2) or type(channels) is not int:
            raise UmxError(f"{path}: nb_channels must be 1 or 2, got {channels!r:.40}")
        segment = conf.get(SEGMENT_KEY)
        if not isinstance(segment, list) or len(segment) != 2 or not all(type(v) is int for v in segment) \
                or not 0 < segment[1] <= 384000 or not 0 < segment[0] <= MAX_SEGMENT * segment[1]:
            raise UmxError(f"{path}: {SEGMENT_KEY} must be [numerator, denominator] of at most {MAX_SEGMENT} s, "
                           f"got {segment!r:.60}")
        options = options_from_json(HTDemucsOptions, conf.get("options"), f"{path}: options")
        spec = ModelSpec(targets, rate, channels)
        check_network(options, spec)
        return Described(spec, options, Fraction(*segment), path)

    def load(self, model_dir: Path, described: "Described") -> HTDemucsModel:
        """The weights, bounded by the network the JSON describes (built on the meta device) before
        torch reads them, then loaded strictly."""
        with torch.device("meta"):
            expected = build_network(described.spec, described.options, described.segment)
        state = read_state(Path(model_dir) / WEIGHTS, expected, described.path.name, f"an {NAME} model directory")
        model = HTDemucsModel(build_network(described.spec, described.options, described.segment),
                              described.spec.targets, described.options)
        model.network.load_state_dict(state)
        return model


@dataclass(frozen=True)
class Described:
    spec: ModelSpec
    options: HTDemucsOptions
    segment: Fraction
    path: Path


def check_network(options: HTDemucsOptions, spec: ModelSpec) -> None:
    """Refuse sizes HTDemucs cannot build or run, in one line naming the option (the package asserts
    deep inside, or fails in the first forward)."""
    o = options
    if spec.nb_channels not in (1, 2):
        raise UmxError(f"--arch {NAME}: mono or stereo audio only, not {spec.nb_channels} channels")
    n_fft = o.stft_n_fft
    if n_fft & (n_fft - 1):
        raise UmxError(f"--stft-n-fft {n_fft}: HTDemucs takes a power of two")
    if n_fft // 2 < 2 * o.stride ** o.depth:
        raise UmxError(f"--stft-n-fft {n_fft} is too small for --depth {o.depth} with --stride {o.stride}: its "
                       f"{n_fft // 2} frequency bins need to be at least {2 * o.stride ** o.depth}")
    for flag, value in (("channels", o.channels), ("channels-time", o.channels_time or o.channels)):
        if value < o.dconv_comp and o.dconv_mode:
            raise UmxError(f"--{flag} {value} is below --dconv-comp {o.dconv_comp} (DConv's width is their ratio)")
    if o.wiener_iters != o.end_iters:
        raise UmxError(f"--end-iters {o.end_iters} must equal --wiener-iters {o.wiener_iters} (HTDemucs asserts it)")
    width = o.bottom_channels or o.channels * o.growth ** (o.depth - 1)
    if o.t_layers and (width % o.t_heads or width % 2):
        raise UmxError(f"--t-heads {o.t_heads}: the transformer's width {width} (--channels × --growth^(--depth - 1), "
                       "or --bottom-channels) must be even and divisible by it")
    for index in range(o.norm_starts, o.depth):
        for flag, base in (("channels", o.channels), ("channels-time", o.channels_time or o.channels)):
            if (base * o.growth ** index) % o.norm_groups:
                raise UmxError(f"--norm-groups {o.norm_groups} does not divide layer {index}'s "
                               f"{base * o.growth ** index} channels (--{flag} × --growth^layer; from --norm-starts)")
    if len(o.t_cape_glob_loc_scale) != 3:
        raise UmxError("--t-cape-glob-loc-scale: three numbers (global shift, local shift, scale)")
    if any(not 0 < f < 1 for f in o.multi_freqs):
        raise UmxError("--multi-freqs: ratios strictly between 0 and 1")
    trial_forward(o, spec)


def trial_forward(options: HTDemucsOptions, spec: ModelSpec) -> None:
    """Refuse the layer sizes (kernel, strides, context, band split) whose layers do not fit together,
    which HTDemucs only finds in its first forward: a forward of a few STFT frames through the same
    layer geometry at the narrowest width, without the transformer and the group norms (their
    sizes are checked above)."""
    from demucs.htdemucs import HTDemucs

    o = options
    geometry = dataclasses.replace(o, channels=o.dconv_comp, channels_time=0, growth=1, bottom_channels=0,
                                   t_layers=0, norm_starts=o.depth, wiener_iters=0, end_iters=0)
    kwargs = constructor_kwargs(ModelSpec(("a",), spec.sample_rate, spec.nb_channels), geometry, Fraction(1))
    try:
        with torch.no_grad():
            HTDemucs(**kwargs).train()(torch.zeros(1, spec.nb_channels, 2 * o.stft_n_fft))
    except (AssertionError, RuntimeError, ValueError, IndexError) as e:
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UmxError(f"--arch {NAME}: its layers do not fit together with --stft-n-fft {o.stft_n_fft} --depth "
                       f"{o.depth} --kernel-size {o.kernel_size} --stride {o.stride} --time-stride {o.time_stride} "
                       f"--context {o.context} (HTDemucs: {detail})") from None


def demucs_state(path: Path, spec: ModelSpec, options: HTDemucsOptions, network: nn.Module) -> dict[str, Tensor]:
    """The weights of a Demucs model package (`.th`), or of MSST's HTDemucs checkpoint (a state dict),
    for this run's network, read without running its pickle (`package.py`), bounded by this run's
    network (room for a training checkpoint's optimizer moments); a package's sources, rate, channels
    and the constructor arguments that shape weights must be this run's (one line naming them); every
    file's keys and shapes must be the network's."""
    from .package import read_demucs_package

    limit = sum(p.numel() for p in network.state_dict().values()) * MAX_ELEMENT_BYTES * 4 + PICKLE_SLACK
    package = read_demucs_package(path, limit, declared_in="this run's --arch htdemucs options")
    if package.klass is not None:
        check_package(path, package, spec, options)
    return fitting_state(path, package.state, network)


def check_package(path: Path, package: Any, spec: ModelSpec, options: HTDemucsOptions) -> None:
    """A Demucs package's class, sources, rate, channels and weight-shaping arguments against the run's."""
    if package.klass != "HTDemucs":
        raise UmxError(f"{path}: a {package.klass:.40} model; --arch {NAME} fine-tunes HTDemucs packages only")
    kw = package.kwargs
    sources = kw.get("sources")
    if sources != list(spec.targets):
        hint = f" (--targets {' '.join(sources)})" if isinstance(sources, list) and sorted(map(str, sources)) == sorted(
            spec.targets) else ""
        raise UmxError(f"{path}: separates {_shown(sources)}, not this run's {', '.join(spec.targets)}{hint}")
    for key, ours, default in (("samplerate", spec.sample_rate, 44100), ("audio_channels", spec.nb_channels, 2)):
        if kw.get(key, default) != ours:
            raise UmxError(f"{path}: its {key} is {_shown(kw.get(key, default))}, this run's {ours}")
    sparse = [k for k in ("t_sparse_self_attn", "t_sparse_cross_attn") if kw.get(k)]
    if sparse:
        raise UmxError(f"{path}: uses sparse attention ({sparse[0]}), which needs xformers; umx trains dense HTDemucs")
    shaping, other = [], []
    for f in dataclasses.fields(options):
        if f.name in NOT_CONSTRUCTOR:
            continue
        key = RENAMED.get(f.name, f.name)
        theirs = kw.get(key, f.default if f.name not in NONE_AS else None)
        theirs = NONE_AS[f.name] if f.name in NONE_AS and theirs is None else theirs
        theirs = tuple(theirs) if isinstance(theirs, list) else theirs
        if theirs != getattr(options, f.name):
            (other if f.name in NOT_SHAPING else shaping).append(f"--{f.name.replace('_', '-')} {_shown(theirs)}")
    if shaping:
        raise UmxError(f"{path}: was built with {' '.join(shaping[:8])}; give them (this run's network differs)")
    if other:
        print(f"{path}: fine-tuning with this run's options where the package had {' '.join(other[:8])}",
              file=sys.stderr)


def fitting_state(path: Path, state: dict[str, Tensor], network: nn.Module) -> dict[str, Tensor]:
    """`state` as float32 where its keys and shapes are exactly the network's, else one line counting
    the keys that differ and naming one of each kind."""
    expected = {k: v.shape for k, v in network.state_dict().items()}
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & state.keys() if state[k].shape != expected[k])
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (such as {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (such as {unexpected[0]:.80})" if unexpected else "",
                 f"{len(wrong)} of other shapes (such as {wrong[0]})" if wrong else ""]
        raise UmxError(f"{path}: its weights do not fit this run's network (its --arch htdemucs options and --targets "
                       "must be the checkpoint's): " + ", ".join(p for p in parts if p))
    return {k: v.float() for k, v in state.items()}


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))[:80]
    return f"{value}"[:40]


def _plain(options: HTDemucsOptions) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}


ARCHITECTURE = HTDemucsArchitecture()
