"""The training options: one table, from which the command line is generated.

Every option of open-unmix's train.py (same names and defaults) plus umx's own is a
`TrainConfig` field whose metadata (`Option`) holds its help, group, choices and range.
The CLI (`umx-train`, `umx-bench`) is built from these fields; nothing repeats a default.
Options left None take the shard set's defaults (`manifest.LayoutDefaults`, written by
prep from the layout): the target, samples per track, augmentations, random mixing,
sample counts. `0` is never taken for "unset".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UmxError, shown
from ..json_input import json_object
from ..layouts import SAMPLE_COUNTS, check_target_name
from ..models import defaults, registry
from ..models.openunmix.files import HIDDEN_SIZE, NFFT, NHOP
from ..models.openunmix.losses import LOSSES
from ..models.protocol import Architecture, ModelSpec
from ..option_table import Option, check_values, fields_with_options, option
from ..shards import manifest as mf
from ..shards.cache import DEFAULT_CACHE_GIB

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
MODES = ("auto", "on", "off")  # --cuda-graph, --device-cache
SELECT_BY = ("loss", "sdr")  # --select-by
EVAL_SEPARATIONS = ("fast", "exact")  # --eval-separation: see scoring.SEPARATIONS
RESUME = ("auto", "never")  # --resume
SAMPLING = ("auto", "global", "pool")  # --sampling: see streams.choose_plan
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
GROUPS = ("run", "training", "model", "data", "buckets", "layout")
# sane upper bounds (a value beyond one is a typo, and would overflow a timer, a seed or float32 somewhere)
MONTH = 30 * 24 * 3600  # seconds: the longest wait (--dist-timeout, --data-timeout); timedelta and poll() overflow
MANY = 10**6  # epochs, patience, evaluations, crops: more than any run takes
SEED_MAX = 2**32 - 1  # numpy's legacy seeding takes 32 bits


def _counted(name: str) -> dict:
    """A sample-count layout option's range, the layouts' own (SAMPLE_COUNTS): umx-prep and umx-eval
    take it from there without importing the training stack."""
    low, high = SAMPLE_COUNTS[name]
    return dict(low=low, high=high)


_OU = registry.get(registry.DEFAULT).options()  # open-unmix's model defaults, spelled once (models/openunmix)


@dataclass
class TrainConfig:
    shards: str = option("", "shard set written by umx-prep: folder, manifest.json, or URL (s3://, gs://, https://)",
                         "run")
    target: str | None = option(None, "source to separate (default: the shard set's target, e.g. vocals)", "run")
    targets: list[str] | None = option(None, "train several targets in one run, on one data stream (e.g. vocals "
                                       "drums bass other; musdb also accompaniment): one model each", "run",
                                       nargs="*")
    output: str = option("open-unmix", "model directory to write", "run")
    checkpoint: str | None = option(None, "model directory of a run to resume", "run")
    config: str | None = option(None, "an MSST config file (YAML: audio, model, training, augmentations, "
                                "inference), read as MSST reads it; options given here override it", "run")
    model: str | None = option(None, "model directory of a trained target to fine-tune", "run")
    no_cuda: bool = option(False, "train on the CPU even if CUDA is available", "run")
    quiet: bool = option(False, "no progress bars", "run")
    dist_timeout: float = option(600.0, "seconds a rank waits in a collective before it gives up (a dead peer "
                                 "then ends the run within this bound, and torchrun can restart it)", "run",
                                 low=1, high=MONTH)
    data_timeout: float = option(600.0, "seconds to wait for a batch from the loader workers before stopping "
                                 "with an error (a hung worker or stalled bucket); 0: forever", "run", low=0,
                                 high=MONTH)

    epochs: int = option(1000, "train until this epoch (counting resumed ones)", "training", low=1, high=MANY)
    batch_size: int = option(16, "per process (torchrun: × nproc)", "training", low=1, high=2**16)
    patience: int = option(140, "early stopping patience (epochs)", "training", low=0, high=MANY)
    lr: float = option(0.001, "learning rate", "training", low=0, low_open=True, high=10)
    lr_decay_patience: int = option(80, "epochs without improvement before the lr drops", "training", low=0,
                                    high=MANY)
    lr_decay_gamma: float = option(0.3, "factor of each lr drop", "training", low=0, high=1, low_open=True,
                                  high_open=True)
    weight_decay: float = option(0.00001, "Adam weight decay", "training", low=0, high=10)
    seed: int = option(42, "seed of every random draw (model, crops, augmentation, dropout)", "training", low=0,
                       high=SEED_MAX)
    debug: bool = option(False, "skip the input statistics (faster start)", "training")
    loss: str = option(_OU.loss, "independent: the sum of each target's spectrogram MSE (N single-target "
                       "runs in one); multidomain: X-UMX's spectrogram MSE + --mix-coef × a time-domain weighted "
                       "SDR loss, one objective for all targets", "training", choices=LOSSES)
    mix_coef: float = option(_OU.mix_coef, "multidomain: weight of the time-domain loss (X-UMX: 10)", "training", low=0,
                             high=10**4)
    combination: bool = option(_OU.combination, "multidomain: also score every sum of 2 … N-1 targets (X-UMX's combination "
                               "loss)", "training")
    bridge: bool = option(_OU.bridge, "X-UMX's averaging bridges between the targets' networks (not loadable by "
                          "openunmix: umx-separate and umx-eval load it)", "training")
    ema: list[float] | None = option(None, "also keep moving averages of the weights with these decays (e.g. "
                                     "0.999 0.9999), validated each epoch next to the raw weights: the best is "
                                     "written as <target>.pth, the choice recorded in <target>.json", "training",
                                     nargs="*", low=0, high=1, low_open=True, high_open=True)
    grad_accum: int = option(1, "step the optimizer every N batches (gradients summed, each batch weighted "
                             "1/N): an N× batch on a small GPU, but BatchNorm still sees each batch's statistics, "
                             "so not bit-equal to it", "training", low=1, high=2**16)
    grad_clip: float = option(0.0, "clip the gradients' global norm to this before each optimizer step "
                              "(MSST's training.grad_clip); 0: never", "training", low=0, high=1e9)
    epoch_steps: int | None = option(None, "batches per epoch (MSST's training.num_steps): sets "
                                     "--samples-per-track (or --nb-train-samples) to cover them", "training",
                                     low=1, high=10**9)
    eval_every: int = option(0, "every N epochs also separate the validation tracks (Wiener filtering, as "
                             "umx-separate) and score them: cSDR (BSSv4) and uSDR into <target>.json; 0: never",
                             "training", low=0, high=MANY)
    eval_separation: str = option("fast", "how --eval-every separates: fast: from the validation pass's own "
                                  "network outputs (one forward pass fewer; differs from umx-separate near the track "
                                  "edges only); exact: as umx-separate (the networks run again on the centred "
                                  "STFT), so the scores are umx-eval's on those weights", "training",
                                  choices=EVAL_SEPARATIONS)
    select_by: str = option("loss", "what best weights and early stopping follow: the validation loss "
                            "(open-unmix) or the cSDR of --eval-every (patience then counts evaluations)",
                            "training", choices=SELECT_BY)
    save_every: int | str = option(0, "also write the checkpoint inside an epoch: every N steps, or every 10m / 90s "
                                   "/ 1h of training (exact mid-epoch resume)", "training", kind="interval",
                                   low=0, high=10**9)
    resume: str | None = option(None, "auto: continue the run in --output if its checkpoint is this run's (same "
                                "shard set and options; else an error), or start it; never: start fresh "
                                "(default: auto when torchrun restarted the group, else never)", "run",
                                choices=RESUME)
    precision: str = option("fp32", "fp32 (exact), tf32 matmuls on GPUs, bf16 autocast, or fp16 autocast with a "
                            "GradScaler (MSST's use_amp; its state is in the checkpoint)", "training",
                            choices=PRECISIONS)
    cuda_graph: str = option("auto", "capture the training step as one CUDA graph: auto (on one GPU with fixed "
                             "shapes), on (also runs that step, uncaptured, on CPU), off (open-unmix's eager step)",
                             "training", choices=MODES)
    device_cache: str = option("auto", "hold the train split in device memory, so workers send crop positions, "
                               "not audio: auto (on a GPU where it takes at most half the free memory), on, off",
                               "training", choices=MODES)
    trace: bool = option(False, "log the track ids of every step per rank to OUTPUT/trace-rank<r>.jsonl", "training")

    arch: str = option(registry.DEFAULT, "the separation model's architecture (umx's own and installed plugins: "
                       "models/registry.py); its options follow", "model", choices=registry.names())
    seq_dur: float = option(6.0, "crop length in s; <= 0: full tracks", "model", low=-3600, high=3600)
    # open-unmix's model options (its train.py's): the openunmix architecture's group
    unidirectional: bool = option(_OU.unidirectional, "unidirectional LSTM (real time)", "model")
    hidden_size: int = option(_OU.hidden_size, "LSTM hidden size", "model", low=HIDDEN_SIZE.low,
                              high=HIDDEN_SIZE.high)
    nfft: int = option(_OU.nfft, "STFT window length", "model", low=NFFT.low, high=NFFT.high)
    nhop: int = option(_OU.nhop, "STFT hop length", "model", low=NHOP.low, high=NHOP.high)
    bandwidth: int = option(_OU.bandwidth, "max bandwidth (Hz) seen by the LSTM", "model", low=0, high=10**6)
    nb_channels: int = option(2, "1: mono model (downmixed input), 2: stereo", "model", choices=(1, 2))

    nb_workers: int = option(0, "DataLoader worker processes", "data", low=0, high=1024)
    source_augmentations: list[str] | None = option(
        None, "per-source augmentations on the device, in order, NAME[:PARAM...]: gain[:LOW[:HIGH]] "
        "channelswap[:P] flipsign[:P] scale[:LOW[:HIGH]] shift[:MAX_SHIFT] speed[:MAX_CHANGE] "
        "pitch[:MAX_SEMITONES] repitch[:PROBA[:MAX_PITCH[:MAX_TEMPO[:TEMPO_STD]]]] (musdb: gain channelswap, else none; "
        "README has the defaults)", "data", nargs="*")
    random_track_mix: bool | None = option(None, "draw interferers from other tracks (musdb: on, else off)", "data")
    random_interferer_mix: bool | None = option(None, "trackfolder_var: all interferers from one random track "
                                                "(the same switch as --random-track-mix)", "data")
    sampling: str = option("auto", "global: an epoch's samples depend on (seed, epoch) alone, so a run resumes on "
                           "other ranks/workers exactly (needs random access); pool: each worker draws from a pool "
                           "of the shards it streams (resumes exactly only on the same topology; aligned tracks only: "
                           "source files are always global); auto: global unless the shards are remote and larger "
                           "than --cache-size", "data", choices=SAMPLING)
    min_mean_abs: float = option(0.0, "MSST's quiet-crop rejection (audio.min_mean_abs): a crop any of whose "
                                 "sources has a mean absolute value below this (of full scale) is replaced, on the "
                                 "device, by another crop of its batch; 0: off", "data", low=0, high=1)
    pool_size: int = option(8, "tracks each worker holds for random crops (--sampling pool)", "data", low=1,
                            high=10**5)

    cache_dir: str | None = option(None, "local cache of remote shards (default $UMX_CACHE/shards)", "buckets")
    cache_size: float = option(DEFAULT_CACHE_GIB, "cache size limit in GiB (LRU)", "buckets", low=0, low_open=True,
                               high=2**20)
    skip_bad_shards: bool = option(False, "skip (and count) shards whose checksum or structure is wrong instead "
                                   "of stopping", "buckets")
    storage_options: str | None = option(None, "JSON options for the bucket filesystem (endpoint, credentials, …)",
                                         "buckets")
    anon: bool = option(False, "read a public bucket without credentials", "buckets")

    samples_per_track: int | None = option(None, "crops per track per epoch", "layout",
                                        layout=True, **_counted("samples_per_track"))
    silence_missing_targets: bool | None = option(None, "trackfolder_var: tracks without the target get a silent "
                                                  "one", "layout", layout=True)
    nb_train_samples: int | None = option(None, "sourcefolder: samples per epoch", "layout",
                                        layout=True, **_counted("nb_train_samples"))
    nb_valid_samples: int | None = option(None, "sourcefolder: validation samples", "layout",
                                        layout=True, **_counted("nb_valid_samples"))
    # a plugin architecture's options (its `options` dataclass, from its option group); None: its
    # defaults. Open-unmix's are the fields above (options_in_config).
    arch_options: Any = None

    @property
    def architecture(self) -> Architecture:
        return registry.get(self.arch)

    def model_options(self) -> Any:
        """The chosen architecture's options: from umx-train's own fields where they are its
        (open-unmix's), else from `arch_options`."""
        arch = self.architecture
        if arch.options_in_config:
            return arch.options(**{f.name: getattr(self, f.name) for f in dataclasses.fields(arch.options)})
        return self.arch_options if self.arch_options is not None else arch.options()

    def check(self) -> None:
        """Refuse values no run can use, each as one line naming the option (before any work)."""
        self._check_ema()  # before the ranges: its decays have a line of their own
        check_values(self)
        arch = self.architecture
        if not arch.options_in_config:
            given = self.arch_options
            if given is not None and type(given) is not arch.options:
                raise UmxError(f"--arch {self.arch}: its options must be a {arch.options.__name__}, "
                               f"not a {type(given).__name__}")
            check_values(self.model_options())
        from .augment import parse_augmentation

        for spec in self.source_augmentations or []:
            try:
                parse_augmentation(spec)
            except ValueError as e:
                raise UmxError(f"--source-augmentations: {e}") from None
        steps, _ = self.save_interval()
        if steps and steps % self.grad_accum:
            raise UmxError(f"--save-every {self.save_every} must be a multiple of --grad-accum {self.grad_accum} "
                           "(a checkpoint between two optimizer steps would lose the gradients gathered so far)")
        if self.select_by == "sdr" and not self.eval_every:
            raise UmxError("--select-by sdr follows the SDR of --eval-every N: give --eval-every (e.g. 1)")
        targets = tuple(self.targets or [self.target or "target"])
        arch.check(self.model_options(), ModelSpec(targets, defaults.SAMPLE_RATE, self.nb_channels,
                                                   self.seq_len(defaults.SAMPLE_RATE)), self.eval_separation)
        json_object(self.storage_options, "--storage-options")
        out = Path(self.output).expanduser()
        if self.output and out.exists() and not out.is_dir():
            raise UmxError(f"--output {self.output}: is a file, not a folder")

    def _check_ema(self) -> None:
        """--ema: decays in (0, 1), each with a label of its own (`<target>.json` and the checkpoint
        keep one average per label: two decays of one label would silently be one)."""
        from .ema import label

        for decay in self.ema or []:
            if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
                raise UmxError(f"--ema decays must be in (0, 1), e.g. 0.999; got {decay!r}")
        if self.ema and len(set(self.ema)) != len(self.ema):
            raise UmxError(f"--ema {' '.join(map(str, self.ema))}: a decay given twice")
        labels: dict[str, float] = {}
        for decay in self.ema or []:
            other = labels.setdefault(label(decay), decay)
            if other != decay:
                raise UmxError(f"--ema {other!r} and {decay!r} are both recorded as '{label(decay)}': give decays "
                               "that differ in their first 6 digits")

    def resolved(self, manifest: mf.Manifest) -> "TrainConfig":
        """Fill every None from the manifest; refuse what the shard set cannot do."""
        self.check()
        smp, d = manifest.sampling, manifest.sampling.defaults
        mix = self.random_track_mix if self.random_track_mix is not None else self.random_interferer_mix
        targets = self._targets(manifest)
        values = dict(
            target=targets[0], targets=targets,
            samples_per_track=_given(self.samples_per_track, d.samples_per_track)
            if not self.epoch_steps else -(-self.epoch_steps * self.batch_size // max(1, manifest.split("train").tracks)),
            source_augmentations=_given(self.source_augmentations, list(d.source_augmentations)),
            random_track_mix=_given(mix, d.random_mix),
            silence_missing_targets=_given(self.silence_missing_targets, d.silence_missing_targets),
            nb_train_samples=_given(self.nb_train_samples, d.nb_train_samples) if not self.epoch_steps
            else self.epoch_steps * self.batch_size,
            nb_valid_samples=_given(self.nb_valid_samples, d.nb_valid_samples),
        )
        values["random_interferer_mix"] = values["random_track_mix"]  # two spellings of one switch
        self.architecture.check(self.model_options(), self.spec(manifest, targets), self.eval_separation)
        self._check_lengths(manifest)
        if not smp.augment:
            if self.source_augmentations or mix:
                raise UmxError(f"--source-augmentations / --random-track-mix: a '{manifest.layout}' shard set "
                               "is never remixed or augmented (its input file is the model input)")
            values.update(source_augmentations=[], random_track_mix=False, random_interferer_mix=False)
        return dataclasses.replace(self, **values)

    def save_interval(self) -> tuple[int, float]:
        """--save-every as (steps, seconds); 0 where not used. `N` is steps, `N{s,m,h}` a duration."""
        return parse_interval(self.save_every, _OPTIONS["save_every"])

    def _targets(self, manifest: mf.Manifest) -> list[str]:
        """--targets, or --target alone; refuse repeats and joint options a run cannot use."""
        targets = list(self.targets or [self.target or manifest.target])
        if self.target and self.targets and self.target not in self.targets:
            raise UmxError(f"--target {self.target} is not one of --targets {' '.join(self.targets)}")
        where = "--targets" if self.targets else "--target" if self.target else f"{manifest.location}: target"
        for t in targets:
            check_target_name(t, where)
        repeated = sorted({t for t in targets if targets.count(t) > 1})
        if repeated:
            raise UmxError(f"--targets: {', '.join(repeated)} given twice")
        return targets

    def spec(self, manifest: mf.Manifest, targets: list[str] | None = None) -> ModelSpec:
        """What the data decides about the model (after `resolved`: its targets)."""
        return ModelSpec(tuple(targets or self.targets), manifest.sample_rate, self.nb_channels,
                         self.seq_len(manifest.sample_rate))

    def _check_lengths(self, manifest: mf.Manifest) -> None:
        """Refuse tracks no STFT window fits in, where the run takes them whole (validation tracks;
        training tracks with --seq-dur <= 0): one line before any work, not a crash in the first
        validation pass. (Crops are never shorter than a window, and training leaves out tracks
        shorter than its crop, as open-unmix does; prep skips tracks shorter than its own window.)"""
        shortest = self.architecture.min_samples(self.model_options())
        whole = ["train"] if self.seq_dur <= 0 and manifest.sampling.records == "tracks" else []
        if manifest.sampling.valid == "full_tracks":
            whole.append("valid")
        for split in (s for s in whole if s in manifest.splits()):
            for entry in manifest.shards(split):
                for track, frames in zip(entry.track_ids, entry.track_frames):
                    if frames < shortest:
                        raise UmxError(f"{manifest.location}: {split} track '{track}' is {frames} samples long, "
                                       f"shorter than the {shortest} samples --arch {self.arch} takes (open-unmix: "
                                       "one STFT window, --nfft): lower it, or prepare the set again (umx-prep "
                                       "skips such tracks)")

    def seq_len(self, sample_rate: int) -> int | None:
        """Crop length in samples, or None for whole tracks (--seq-dur <= 0)."""
        if self.seq_dur <= 0:
            return None
        seq_len = int(self.seq_dur * sample_rate)
        shortest = self.architecture.min_samples(self.model_options())
        if seq_len < shortest:
            raise UmxError(f"--seq-dur {self.seq_dur} s is shorter than the {shortest} samples --arch {self.arch} "
                           "takes (open-unmix: one STFT window, --nfft)")
        return seq_len


def options() -> list[tuple[dataclasses.Field, Option]]:
    """Every option field of TrainConfig with its command-line metadata, in declaration order."""
    return fields_with_options(TrainConfig)


_OPTIONS = {f.name: opt for f, opt in options()}


def parse_interval(value: Any, opt: Option, flag: str = "--save-every") -> tuple[int, float]:
    """An interval option (--save-every) as (steps, seconds), 0 where not used: `N` steps, or a
    duration `N{s,m,h}`; either at most `opt.high`. One line for anything else (`flag` begins it)."""
    high = int(opt.high)
    bad = UmxError(f"{flag} must be a number of steps (e.g. 500) or a duration (e.g. 10m, 90s, 1h), up to "
                   f"{high} steps or seconds; got {shown(value)}".lstrip())
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        if not 0 <= value <= high:
            raise bad
        return value, 0.0
    text = str(value).strip().lower()
    try:
        if text[-1:] in DURATION_UNITS:
            seconds = float(text[:-1]) * DURATION_UNITS[text[-1]]
            if not math.isfinite(seconds) or not 0 < seconds <= high:
                raise ValueError
            return 0, seconds
        steps = int(text)  # also ValueError for a number of over 4300 digits
    except ValueError:
        raise bad from None
    if not 0 <= steps <= high:
        raise bad
    return steps, 0.0


def _given(value, default):
    """An option's value, or the shard set's default where it was not given (None, never 0)."""
    return default if value is None else value
