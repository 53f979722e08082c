"""Building a training run from its config: process set-up, data, model, optimisation, state.

`setup_process` does what belongs to the process, once, before anything is built
(storage options, distributed group, threads, seeds, precision flags); `build_trainer`
then assembles a `Trainer` from parts that each have one job: the data side
(`TrainData`: shard reader, slots, the device-resident split, the train stream, the
validation set) and the model side, from the run's architecture (models.protocol: the model,
its objective, each unit's optimizer and scheduler), then the step and the run state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import UmxError
from ..models import registry
from ..models.protocol import OptimiserSettings, Statistics, Trainable
from ..prep import stats as stats_mod
from ..shards import manifest as mf
from ..shards import storage
from ..shards.cache import cache_root
from ..shards.reader import ShardReader, add_metrics
from . import distributed, resident
from .augment import Augment
from ..json_input import json_object
from .config import TrainConfig
from .ema import EMA
from .outputs import checkpoint_bytes, load_checkpoints
from .slots import Slots, make_slots
from .state import Bounds, RunState, StateError, TargetState
from .scoring import check_selectable
from .step import checked_optimizer_state, checked_scaler_state, checked_scheduler_state, settle_lr
from .streams import SourceFileStream, TrainStream, choose_plan
from .trainer import Mixer, ModelKind, Optimisation, Trainer, TrainData, make_step
from .validation import ValidItem, load_validation


def setup_process(config: TrainConfig) -> tuple[distributed.Context, torch.device]:
    """Process-wide set-up: storage options, the process group and device, CPU threads (loader
    workers and other ranks share the cores: oversubscribed OpenMP threads crawl), the seeds
    (model initialisation, as open-unmix seeds it) and the precision flags."""
    storage.configure(json_object(config.storage_options, "--storage-options"), config.anon)
    dist, device = distributed.setup(not config.no_cuda and torch.cuda.is_available(), config.dist_timeout)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local - config.nb_workers))
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    tf32 = config.precision == "tf32"  # fp32 is strict fp32 (no TF32 anywhere)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return dist, device


def build_trainer(config: TrainConfig, dist: distributed.Context | None = None,
                  device: torch.device | None = None) -> Trainer:
    """A ready `Trainer` for `config` (set up the process first, unless `dist` and `device` are given)."""
    config.check()  # before any set-up
    if dist is None or device is None:
        dist, device = setup_process(config)
    manifest = mf.load(config.shards)
    cfg, automatic = resume_mode(config.resolved(manifest), dist, device)
    remix = manifest.sampling.remix if cfg.random_track_mix and manifest.sampling.remix != "never" else None
    required = make_slots(manifest, cfg.targets, cfg.silence_missing_targets).required
    keep = 1 if len(cfg.targets) == 1 else 0 if remix == "independent" else required
    augment = Augment(cfg.source_augmentations, remix, keep).to(device)
    data = build_data(cfg, manifest, dist, device, augment)
    kind = ModelKind(cfg.architecture, cfg.model_options(), cfg.spec(manifest))
    model = build_model(cfg, kind, manifest, data.reader, device, quiet=cfg.quiet or not dist.is_main)
    add_metrics(data.valid_io, data.reader.take_metrics())  # (a statistics pass, if any) not an epoch's
    mixer = Mixer(augment, data.slots.input_slot, tuple(data.slots.target_slots),
                  data.out_len if augment.changes_length else None, cfg.min_mean_abs)
    parts, state = build_optimisation(cfg, kind, model, dist, device, data.seq_len, mixer,
                                      resume_bounds(cfg, kind, data.stream, dist))
    fingerprint = run_fingerprint(cfg, manifest)
    if automatic:
        check_same_run(cfg, state.run, fingerprint)
        if dist.is_main and not cfg.quiet:
            p = state.progress
            print(f"resuming {cfg.output} automatically at epoch {p.epoch}" + (f", step {p.step}" if p.step else ""))
    state.run = fingerprint
    return Trainer(cfg, manifest, dist, device, data, kind, augment, parts, state)


# options that do not change what a run computes: a run resumed with other values is the same run
NOT_TRAJECTORY = {"output", "checkpoint", "config", "quiet", "epochs", "trace", "resume", "save_every", "cache_dir",
                  "cache_size", "storage_options", "anon", "no_cuda", "eval_every", "eval_separation", "patience",
                  "nb_workers", "dist_timeout", "data_timeout"}  # the topology may change: elastic resume


def run_fingerprint(cfg: TrainConfig, manifest: mf.Manifest) -> dict:
    """What makes a run this run: the shard set's content and every option that changes the
    trajectory. Not the topology: a run may continue on other ranks and workers (elastic). A run of
    the default architecture fingerprints as before umx had others (its checkpoints resume)."""
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_TRAJECTORY}
    if cfg.arch == registry.DEFAULT and cfg.arch_options is None:
        del options["arch"], options["arch_options"]
    return json.loads(json.dumps({"train": manifest.content_digest("train"), "options": options}))


def resume_mode(cfg: TrainConfig, dist: distributed.Context,
                device: torch.device | None = None) -> tuple[TrainConfig, bool]:
    """--resume auto (the default under a torchrun restart): continue from --output where it holds a
    checkpoint of every target; returns the config and whether that happened.

    Every rank takes rank 0's decision: after a node is lost, torchrun's agents may count their
    restarts differently (an agent that saw the new node join before its own worker died restarts
    with count 0), and one rank starting afresh beside resumed ones would hang the group."""
    device = device or torch.device("cpu")
    count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    restarted = distributed.sum_all([count], dist, device)[0] > 0  # any rank restarted
    mode = cfg.resume or ("auto" if restarted else "never")
    if mode != "auto" or cfg.checkpoint:
        return cfg, False
    out = Path(cfg.output).expanduser()
    units = list(cfg.architecture.units(cfg.targets, cfg.model_options()))
    present = [u for u in units if (out / f"{u}.chkpnt").is_file() or (out / f"{u}.chkpnt.next").is_file()]
    if dist.active and not distributed.agree(bool(present), dist, device):
        return cfg, False  # rank 0 (the writer) sees nothing to continue
    if not present:
        if dist.active:
            raise UmxError(f"--resume auto: rank 0 continues the run in {out}, but rank {dist.rank} does not see "
                           "its checkpoints there: --output must be a folder every node sees")
        return cfg, False  # nothing to continue: a fresh run
    if len(present) < len(units):
        raise UmxError(f"--resume auto: {out} holds checkpoints of {', '.join(present)} but not of "
                       f"{', '.join(u for u in units if u not in present)}: not this run's output")
    return dataclasses.replace(cfg, checkpoint=str(out)), True


def check_same_run(cfg: TrainConfig, saved: dict, fingerprint: dict) -> None:
    """Refuse to continue a checkpoint of another run (other data or options)."""
    saved = {k: v for k, v in saved.items() if k != "world_size"}  # recorded before elastic resume
    if saved.get("options") is not None:
        saved["options"] = {k: v for k, v in saved["options"].items() if k not in NOT_TRAJECTORY}
        # an option added since that checkpoint was written: at its default, the run is the same
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        for key, value in fingerprint["options"].items():
            if key not in saved["options"] and key in defaults and value == defaults[key]:
                saved["options"][key] = value
    if saved == fingerprint:
        return
    if not saved:
        raise UmxError(f"--resume auto: the checkpoints in {cfg.output} do not say which run wrote them "
                       "(written before umx recorded it): resume with --checkpoint, or start in a new --output")
    diff = ["another shard set"] if saved.get("train") != fingerprint["train"] else []
    old, new = saved.get("options", {}), fingerprint["options"]
    diff += [f"--{k.replace('_', '-')} {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)]
    raise UmxError(f"--resume auto: {cfg.output} holds another run ({'; '.join(diff[:6])}): use a new --output, "
                   "or --resume never to start over there")



def build_data(cfg: TrainConfig, manifest: mf.Manifest, dist: distributed.Context, device: torch.device,
               augment: Augment | None = None) -> TrainData:
    """The data side. Crops are `seq_len` long, or longer where an augmentation (shift, speed, pitch, repitch)
    needs more frames to end `seq_len` long on the device."""
    reader = ShardReader(manifest, cfg.cache_dir, int(cfg.cache_size * 2**30), cfg.skip_bad_shards)
    out_len = cfg.seq_len(manifest.sample_rate)
    seq_len = out_len
    if augment is not None and augment.changes_length:
        if out_len is None:
            raise UmxError("--source-augmentations shift, speed, pitch and repitch need crops: --seq-dur must be > 0")
        seq_len = augment.input_frames(out_len)
    slots = make_slots(manifest, cfg.targets, cfg.silence_missing_targets)
    split = resident_split(cfg, manifest, slots, reader, device, seq_len, quiet=cfg.quiet or not dist.is_main)
    positions = None if split is None else split.positions
    common = dict(rank=dist.rank, world_size=dist.world_size, reader=reader, resident=positions)
    if manifest.sampling.records == "source_files":
        stream = SourceFileStream(manifest, cfg.targets, seq_len, cfg.batch_size, cfg.nb_train_samples, cfg.seed,
                                  **common)
    else:
        plan = choose_plan(cfg.sampling, manifest, "train", int(cfg.cache_size * 2**30), split)
        stream = TrainStream(manifest, cfg.targets, seq_len, cfg.batch_size if seq_len else 1, cfg.samples_per_track,
                             cfg.pool_size, cfg.seed, silence_missing_targets=cfg.silence_missing_targets,
                             plan=plan, **common)
    stream.check(cfg.nb_workers)
    valid: list[ValidItem] = load_validation(manifest, cfg.targets, "valid", cfg.silence_missing_targets,
                                             cfg.nb_valid_samples, out_len, reader)
    if cfg.select_by == "sdr":  # a set that can give no cSDR could never select weights
        check_selectable(valid, slots, list(manifest.sources), manifest.sample_rate)
    return TrainData(reader, slots, seq_len, stream, split, valid[dist.rank::dist.world_size], len(valid),
                     reader.take_metrics(), out_len)


def resident_split(cfg: TrainConfig, manifest: mf.Manifest, slots: Slots, reader: ShardReader,
                   device: torch.device, seq_len: int | None, quiet: bool):
    """--device-cache auto: the train split on the GPU where it fits (half the free memory);
    on: wherever crops have a fixed length (on CPU: in host memory, the same code); off: streamed."""
    if cfg.device_cache == "off":
        return None
    if seq_len is None:
        if cfg.device_cache == "on":
            raise UmxError("--device-cache on: not available with whole-track batches (--seq-dur 0); "
                           "use auto or off")
        return None
    if cfg.device_cache == "auto" and not resident.fits(manifest, slots, device):
        return None
    if manifest.sampling.records == "source_files":
        return resident.ResidentSources(manifest, slots, reader, device, seq_len, quiet=quiet)
    return resident.ResidentTracks(manifest, slots, reader, device, quiet=quiet)


def input_statistics(manifest: mf.Manifest, nfft: int, nhop: int, quiet: bool, reader=None) -> dict:
    """The manifest's statistics for this STFT, else computed once and cached."""
    stats = manifest.statistics(nfft, nhop)
    if stats is not None:
        return stats
    digest = manifest.content_digest("train")[:16]
    cache = cache_root() / "stats"
    path = cache / f"{digest}-{mf.stats_key(nfft, nhop)}.json"
    if path.is_file():
        try:  # our own cache, but a file on disk all the same: checked like a manifest's
            cached = json.loads(path.read_text())
            mf.validate_statistics({mf.stats_key(nfft, nhop): cached}, str(path))
            return cached
        except (ValueError, RecursionError, UmxError) as e:
            print(f"warning: {path}: recomputing the input statistics ({e})", file=sys.stderr)
    reader = reader or ShardReader(manifest)
    skipped = len(reader.bad)
    stats = stats_mod.from_shard_set(manifest, nfft, nhop, progress=not quiet, reader=reader)
    if len(reader.bad) > skipped:  # computed without the shards --skip-bad-shards left out: not the set's
        print(f"warning: input statistics computed without {len(reader.bad) - skipped} bad shard(s); not cached",
              file=sys.stderr)
        return stats
    cache.mkdir(parents=True, exist_ok=True)
    storage.write_json(path, stats)
    return stats


def build_model(cfg: TrainConfig, kind: ModelKind, manifest: mf.Manifest, reader: ShardReader,
                device: torch.device, quiet: bool) -> Trainable:
    """The architecture's model: fresh (with the input statistics it asks for), or `--model`'s weights
    to fine-tune."""
    if cfg.model:
        return kind.arch.fine_tune(Path(cfg.model).expanduser(), kind.spec, kind.options).to(device)
    need = kind.arch.statistics(kind.options)
    statistics = None
    if need is not None and not (cfg.checkpoint or cfg.debug):  # weights come from the checkpoint / --debug
        s = input_statistics(manifest, need.nfft, need.nhop, quiet, reader)
        statistics = Statistics(np.asarray(s["mean"]), np.asarray(s["std"]))
    return kind.arch.build(kind.spec, kind.options, statistics).to(device)


def resume_bounds(cfg: TrainConfig, kind: ModelKind, stream, dist: distributed.Context) -> Bounds:
    """What this run can hold, which the state of a checkpoint it resumes must fit: its units, the
    epoch's samples and batches (from its stream), its topology and sampling plan."""
    return Bounds(tuple(kind.units(cfg.targets)), stream.samples_per_epoch(), stream.batch_size, dist.world_size,
                  cfg.nb_workers, stream.elastic)


def build_optimisation(cfg: TrainConfig, kind: ModelKind, model: Trainable, dist: distributed.Context,
                       device: torch.device, seq_len: int | None, mixer: Mixer | None = None,
                       bounds: Bounds | None = None) -> tuple[Optimisation, RunState]:
    """Per unit the optimizer and plateau scheduler the architecture declares; the objective, the
    step — and the run state, resumed from --checkpoint (held against `bounds`, what the run can hold)."""
    graph = graph_step_wanted(cfg, dist, device, seq_len)
    settings = OptimiserSettings(cfg.lr, cfg.weight_decay, cfg.lr_decay_gamma, cfg.lr_decay_patience, graph, device)
    declared = kind.arch.optimisers(model, kind.options, settings)
    optimizers = {u: d.optimizer for u, d in declared.items()}
    schedulers = {u: d.scheduler for u, d in declared.items()}
    ema = EMA(model, cfg.ema) if cfg.ema else None
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    units = list(model.units)
    state = RunState(targets={u: TargetState() for u in units})
    if cfg.checkpoint:
        state = resume(cfg, model, optimizers, schedulers, ema, bounds, scaler)
    objective = kind.arch.objective(model, kind.options)
    parts = Optimisation(model, model, optimizers, schedulers, None, objective, graph, ema, mixer, scaler)
    make_step(parts, cfg, dist, device, state.active(units))
    return parts, state


def resume(cfg: TrainConfig, model: Trainable, optimizers: dict, schedulers: dict, ema: EMA | None = None,
           bounds: Bounds | None = None, scaler: "torch.amp.GradScaler | None" = None) -> RunState:
    """Every unit's network, optimizer, scheduler (and --ema averages) from `--checkpoint`, and the
    run state to continue. Each part is checked against this run's own (the optimizer's moments
    against its parameters, …) before it is loaded; only --output is ever written (an interrupted
    save is settled there, never in another run's folder given as --checkpoint)."""
    folder = Path(cfg.checkpoint).expanduser()
    averages = len(ema.decays) if ema is not None else 0
    units = list(model.units)
    ckpts, state = load_checkpoints(folder, units, bounds or Bounds(tuple(units)),
                                    settle=_same_folder(folder, Path(cfg.output).expanduser()),
                                    max_bytes={u: checkpoint_bytes(model.units[u], averages) for u in units})
    for unit, ckpt in ckpts.items():
        path = ckpt.path or folder / f"{unit}.chkpnt"
        try:
            model.units[unit].load_state_dict(ckpt.state_dict)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
            lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
            raise UmxError(f"{path}: does not fit this run's model (--arch {cfg.arch} and its options — for "
                           f"open-unmix --hidden-size, --nfft, --nb-channels, --unidirectional, --bandwidth — must "
                           f"be those of the run; {lines[-1][:200] if lines else e})") from None
        try:
            optimizer = checked_optimizer_state(ckpt.optimizer, optimizers[unit])
            scheduler = checked_scheduler_state(ckpt.scheduler, schedulers[unit])
        except StateError as e:
            raise UmxError(f"{path}: field '{e.name}' {e.problem}") from None
        optimizers[unit].load_state_dict(optimizer)
        schedulers[unit].load_state_dict(scheduler)
        settle_lr(optimizers[unit])
        if scaler is not None:  # one scaler for the run: every unit's file holds its state
            try:
                scaler.load_state_dict(checked_scaler_state(ckpt.scaler))
            except StateError as e:
                raise UmxError(f"{path}: field '{e.name}' {e.problem} (--precision fp16)") from None
        if ema is not None:
            try:
                ema.load_target_state(unit, ckpt.ema)
            except KeyError as e:
                raise UmxError(f"{path}: has no moving averages for --ema {' '.join(map(str, cfg.ema))} "
                               f"({e.args[0]})") from None
            except ValueError as e:
                raise UmxError(f"{path}: {e} (--ema {' '.join(map(str, cfg.ema))})") from None
    return state


def _same_folder(a: Path, b: Path) -> bool:
    """Whether two paths name one folder (the checkpoint folder is the output folder)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def graph_step_wanted(cfg: TrainConfig, dist: distributed.Context, device: torch.device, seq_len: int | None) -> bool:
    """--cuda-graph auto: the captured step wherever it can run (one CUDA process, fixed
    shapes); on: the graph step everywhere (on CPU uncaptured, the same code); off: eager."""
    if cfg.cuda_graph == "off":
        return False
    reason = ("with --precision fp16 (the GradScaler decides on the host whether a step is taken)"
              if cfg.precision == "fp16" else "under torchrun/DDP" if dist.active else
              "with whole-track batches (--seq-dur 0: every batch has another shape)" if seq_len is None else
              "with --grad-accum > 1 (accumulating and stepping batches would need two graphs)"
              if cfg.grad_accum > 1 else None)
    if cfg.cuda_graph == "on" and reason:
        raise UmxError(f"--cuda-graph on: the training step cannot be captured {reason}; use auto or off")
    return reason is None and (cfg.cuda_graph == "on" or device.type == "cuda")


def train(config: TrainConfig) -> Path | None:
    """Train the run's target model(s); returns the output directory (None: nothing was left to train)."""
    config.check()
    dist, device = setup_process(config)
    try:
        trainer = build_trainer(config, dist, device)
        try:
            out = trainer.fit()
        except BaseException:
            with contextlib.suppress(Exception):  # the run's own error is the one to report
                trainer.writer.wait()
            raise
        trainer.writer.wait()
        return out
    finally:
        distributed.teardown(dist)
