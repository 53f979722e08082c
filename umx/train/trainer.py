"""The open-unmix training recipe on a streamed shard set, on one process or many.

Adam(lr, weight_decay) · ReduceLROnPlateau(gamma, patience, cooldown=10) ·
early stopping on the validation loss · MSE between magnitude spectrograms ·
validation on the full tracks of the valid split, one per batch. Under
torchrun the model is wrapped in DistributedDataParallel, validation is split
over the ranks and reduced, and only rank 0 writes. The data stream, the
device augmentation and dropout are seeded per (seed, epoch, step), so
`--checkpoint` resumes — at an epoch end or mid-epoch — the very history an
uninterrupted run would write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import UmxError
from ..model import OpenUnmix, Spectrogram, bandwidth_to_max_bin, load_target
from ..prep import stats as stats_mod
from ..shards import manifest as mf
from . import distributed, resident, sampling
from .augment import Augment, mix_and_target
from .loader import SourceFileStream, TrainStream, load_validation
from .step import MODES as GRAPH_MODES, EagerStep, GraphStep, LossLog, make_optimizer, optimizer_state, settle_lr
from .outputs import load_checkpoint, read_results, save_torch, write_separator_json
from ..shards import storage
from ..shards.cache import cache_root
from ..shards.reader import ShardReader, add_metrics
from ..shards.storage import write_json

PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass
class TrainConfig:
    """Every option of open-unmix's train.py (same names and defaults) plus umx's own.

    Options left None take the shard set's defaults, which prep wrote into the
    manifest from the layout (open-unmix's per-dataset defaults): the target,
    samples per track, augmentations, random mixing, sample counts.
    """

    shards: str = ""
    target: str | None = None  # the shard set's target: vocals for musdb, the --target-file stem, …
    output: str = "open-unmix"
    checkpoint: str | None = None
    model: str | None = None
    no_cuda: bool = False
    epochs: int = 1000
    batch_size: int = 16
    patience: int = 140
    seq_dur: float = 6.0
    unidirectional: bool = False
    hidden_size: int = 512
    nfft: int = 4096
    nhop: int = 1024
    lr: float = 0.001
    lr_decay_patience: int = 80
    lr_decay_gamma: float = 0.3
    weight_decay: float = 0.00001
    bandwidth: int = 16000
    nb_channels: int = 2
    nb_workers: int = 0
    quiet: bool = False
    seed: int = 42
    debug: bool = False  # skip the input statistics (open-unmix's --debug)
    samples_per_track: int | None = None
    source_augmentations: list[str] | None = None
    random_track_mix: bool | None = None
    random_interferer_mix: bool | None = None
    silence_missing_targets: bool | None = None
    nb_train_samples: int | None = None
    nb_valid_samples: int | None = None
    pool_size: int = 8
    save_every: int = 0  # also checkpoint every N steps inside an epoch (exact mid-epoch resume)
    precision: str = "fp32"  # fp32 | tf32 | bf16
    cuda_graph: str = "auto"  # auto | on | off: capture the step as one CUDA graph (umx.train.step)
    device_cache: str = "auto"  # auto | on | off: hold the train split in device memory (umx.train.resident)
    trace: bool = False  # write the tracks of every step per rank to trace-rank<r>.jsonl
    cache_dir: str | None = None  # local cache of remote shards (default $UMX_CACHE/shards)
    cache_size: float = 100.0  # GiB
    skip_bad_shards: bool = False
    storage_options: str | None = None  # JSON for fsspec (endpoint, credentials, …)
    anon: bool = False

    def check(self) -> None:
        """Refuse values no run can use, each as one line naming the option (before any work)."""
        for name, (lo, hi, low_open) in RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, float) and not math.isfinite(value):
                raise UmxError(f"{flag} must be a finite number, got {value}")
            if (value <= lo if low_open else value < lo) or (hi is not None and value > hi):
                bound = f"> {lo}" if low_open else f">= {lo}"
                raise UmxError(f"{flag} must be {bound}{'' if hi is None else f' and <= {hi}'}, got {value}")
        if self.nhop > self.nfft:
            raise UmxError(f"--nhop {self.nhop} is larger than --nfft {self.nfft}: frames would leave gaps")
        if self.output and Path(self.output).expanduser().exists() and not Path(self.output).expanduser().is_dir():
            raise UmxError(f"--output {self.output}: is a file, not a folder")

    def resolved(self, manifest: mf.Manifest) -> "TrainConfig":
        """Fill every None from the manifest; refuse what the shard set cannot do."""
        self.check()
        smp, d = manifest.sampling, manifest.sampling["defaults"]
        mix = self.random_track_mix if self.random_track_mix is not None else self.random_interferer_mix
        values = dict(
            target=self.target or manifest.target,
            samples_per_track=_given(self.samples_per_track, d.get("samples_per_track", 1)),
            source_augmentations=(self.source_augmentations if self.source_augmentations is not None
                                  else d.get("source_augmentations", [])),
            random_track_mix=mix if mix is not None else bool(d.get("random_mix", False)),
            silence_missing_targets=bool(self.silence_missing_targets if self.silence_missing_targets is not None
                                         else d.get("silence_missing_targets", False)),
            nb_train_samples=_given(self.nb_train_samples, d.get("nb_train_samples", 1000)),
            nb_valid_samples=_given(self.nb_valid_samples, d.get("nb_valid_samples", 100)),
        )
        values["random_interferer_mix"] = values["random_track_mix"]
        if self.precision not in PRECISIONS:
            raise UmxError(f"--precision must be one of {', '.join(PRECISIONS)}, not '{self.precision}'")
        if self.device_cache not in resident.MODES:
            raise UmxError(f"--device-cache must be one of {', '.join(resident.MODES)}, not '{self.device_cache}'")
        if self.cuda_graph not in GRAPH_MODES:
            raise UmxError(f"--cuda-graph must be one of {', '.join(GRAPH_MODES)}, not '{self.cuda_graph}'")
        if not smp["augment"]:
            if self.source_augmentations or mix:
                raise UmxError(f"--source-augmentations / --random-track-mix: a '{manifest.layout}' shard set "
                               "is never remixed or augmented (its input file is the model input)")
            values.update(source_augmentations=[], random_track_mix=False, random_interferer_mix=False)
        return dataclasses.replace(self, **values)


# (lowest, highest or None, lowest excluded) of every numeric option a run could not use otherwise
RANGES: dict[str, tuple[float, float | None, bool]] = {
    "epochs": (1, None, False), "batch_size": (1, None, False), "patience": (0, None, False),
    "seq_dur": (-math.inf, None, False), "hidden_size": (1, 2**14, False), "nfft": (16, 2**16, False),
    "nhop": (1, None, False), "lr": (0, None, True), "lr_decay_patience": (0, None, False),
    "lr_decay_gamma": (0, 1, True), "weight_decay": (0, None, False), "bandwidth": (0, None, False),
    "nb_channels": (1, 2, False), "nb_workers": (0, 1024, False), "samples_per_track": (1, None, False),
    "nb_train_samples": (1, None, False), "nb_valid_samples": (1, None, False), "pool_size": (1, None, False),
    "save_every": (0, None, False), "cache_size": (0, None, True),
}


def _given(value, default):
    """An option's value, or the shard set's default where it was not given (None, never 0)."""
    return default if value is None else value


class EarlyStopping:
    """open-unmix's early stopping: stop after `patience` epochs without a lower loss."""

    def __init__(self, patience: int, best: float | None = None, num_bad_epochs: int = 0):
        self.patience, self.best, self.num_bad_epochs = patience, best, num_bad_epochs

    def step(self, loss: float) -> bool:
        if self.best is None:
            self.best = loss
            return False
        if math.isnan(loss):
            return True
        if loss < self.best or self.patience == 0:
            self.best, self.num_bad_epochs = loss, 0
        else:
            self.num_bad_epochs += 1
        return self.num_bad_epochs >= self.patience


def input_statistics(manifest: mf.Manifest, nfft: int, nhop: int, quiet: bool, reader=None) -> dict:
    """The manifest's statistics for this STFT, else computed once and cached."""
    stats = manifest.statistics(nfft, nhop)
    if stats is not None:
        return stats
    digest = hashlib.sha256("".join(s.sha256 for s in manifest.shards("train")).encode()).hexdigest()[:16]
    cache = cache_root() / "stats"
    path = cache / f"{digest}-{mf.stats_key(nfft, nhop)}.json"
    if path.is_file():
        try:  # our own cache, but a file on disk all the same: checked like a manifest's
            cached = json.loads(path.read_text())
            mf.validate_statistics({mf.stats_key(nfft, nhop): cached}, str(path))
            return cached
        except (json.JSONDecodeError, UmxError) as e:
            print(f"warning: {path}: recomputing the input statistics ({e})", file=sys.stderr)
    stats = stats_mod.from_shard_set(manifest, nfft, nhop, progress=not quiet, reader=reader)
    cache.mkdir(parents=True, exist_ok=True)
    write_json(path, stats)
    return stats


class Trainer:
    """One training run: build everything from the config, then `fit()`."""

    def __init__(self, config: TrainConfig):
        storage.configure(_json_option(config.storage_options, "--storage-options"), config.anon)
        self.manifest = mf.load(config.shards)
        self.cfg = cfg = config.resolved(self.manifest)
        self.dist, self.device = distributed.setup(not cfg.no_cuda and torch.cuda.is_available())
        self.out = Path(cfg.output).expanduser()
        if self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # loader workers and other ranks share the cores: oversubscribed OpenMP threads crawl
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local - cfg.nb_workers))
        torch.manual_seed(cfg.seed)  # model initialisation, as open-unmix seeds it
        np.random.seed(cfg.seed)
        _set_precision(cfg.precision)

        rate = self.manifest.sample_rate
        seq_len = int(cfg.seq_dur * rate) if cfg.seq_dur > 0 else None
        if seq_len is not None and seq_len < cfg.nfft:
            raise UmxError(f"--seq-dur {cfg.seq_dur} s is shorter than one STFT window (--nfft {cfg.nfft})")
        smp, rank, world = self.manifest.sampling, self.dist.rank, self.dist.world_size
        self.reader = ShardReader(self.manifest, cfg.cache_dir, int(cfg.cache_size * 2**30), cfg.skip_bad_shards)
        if smp["records"] == "source_files":
            self.stream = SourceFileStream(self.manifest, cfg.target, seq_len, cfg.batch_size, cfg.nb_train_samples,
                                           cfg.seed, rank=rank, world_size=world, reader=self.reader)
        else:
            self.stream = TrainStream(self.manifest, cfg.target, seq_len, cfg.batch_size if seq_len else 1,
                                      cfg.samples_per_track, cfg.pool_size, cfg.seed, rank=rank, world_size=world,
                                      silence_missing_targets=cfg.silence_missing_targets, reader=self.reader)
        self.slots = self.stream.slots
        if hasattr(self.stream, "check"):
            self.stream.check(cfg.nb_workers)
        self.seq_len = seq_len
        self.resident = self._resident_split()
        valid = load_validation(self.manifest, cfg.target, "valid", cfg.silence_missing_targets,
                                cfg.nb_valid_samples, seq_len, self.reader)
        self.valid_io = self.reader.take_metrics()
        self.n_valid, self.valid_items = len(valid), valid[rank::world]  # split over ranks, reduced
        self.encoder = Spectrogram(cfg.nfft, cfg.nhop, mono=cfg.nb_channels == 1).to(self.device)
        remix = smp["remix"] if cfg.random_track_mix and smp["remix"] != "never" else None
        self.augment = Augment(cfg.source_augmentations, remix).to(self.device)
        self.model = self._build_model(rate)
        add_metrics(self.valid_io, self.reader.take_metrics())  # (a statistics pass, if any) not an epoch's
        self.net = self.model
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        graph = self._graph_step_wanted()
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay, graph, self.device)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=cfg.lr_decay_gamma, patience=cfg.lr_decay_patience, cooldown=10)
        self.stopper = EarlyStopping(cfg.patience)
        self.history = {"train_loss_history": [], "valid_loss_history": [], "train_time_history": [],
                        "lr_history": [], "loader_history": [], "best_epoch": 0, "epochs_trained": 0}
        self.position = {"epoch": 1, "step": 0, "losses": [], "seconds": 0.0}  # where the run stands
        if cfg.checkpoint:
            self._resume(cfg.checkpoint)
        step = GraphStep if graph else EagerStep
        kwargs = {"capture": self.device.type == "cuda"} if graph else {}
        self.step = step(self.net, self.encoder, self.optimizer, bf16=cfg.precision == "bf16", **kwargs)

    def _resident_split(self) -> "resident.ResidentTracks | resident.ResidentSources | None":
        """--device-cache auto: the train split on the GPU where it fits (half the free memory);
        on: wherever crops have a fixed length (on CPU: in host memory, the same code); off: streamed."""
        mode, stream = self.cfg.device_cache, self.stream
        if mode == "off":
            return None
        if self.seq_len is None:
            if mode == "on":
                raise UmxError("--device-cache on: not available with whole-track batches (--seq-dur 0); "
                               "use auto or off")
            return None
        if mode == "auto" and not resident.fits(self.manifest, self.slots, self.device):
            return None
        quiet = self.cfg.quiet or not self.dist.is_main
        if isinstance(stream, TrainStream):
            cache = resident.ResidentTracks(self.manifest, self.slots, self.reader, self.device, quiet=quiet)
            stream.resident = cache.starts
        else:
            cache = resident.ResidentSources(self.manifest, self.slots, self.reader, self.device, self.seq_len,
                                             quiet=quiet)
            stream.resident = cache.files
        return cache

    def batch_audio(self, batch) -> torch.Tensor:
        """A loader batch as int16 `[batch, slots, channels, time]` on the device."""
        if batch.starts is not None:
            return self.resident.gather(batch.starts, self.seq_len)
        return batch.audio.to(self.device, non_blocking=True)

    def _graph_step_wanted(self) -> bool:
        """--cuda-graph auto: the captured step wherever it can run (one CUDA process, fixed
        shapes); on: the graph step everywhere (on CPU uncaptured, the same code); off: eager."""
        mode = self.cfg.cuda_graph
        if mode == "off":
            return False
        reason = ("under torchrun/DDP" if self.dist.active else
                  "with whole-track batches (--seq-dur 0: every batch has another shape)" if self.seq_len is None
                  else None)
        if mode == "on" and reason:
            raise UmxError(f"--cuda-graph on: the training step cannot be captured {reason}; use auto or off")
        return reason is None and (mode == "on" or self.device.type == "cuda")

    def _build_model(self, rate: int) -> OpenUnmix:
        cfg = self.cfg
        if cfg.model:
            model = load_target(cfg.model, cfg.target, self.device)
            channels = model.fc3.out_features // model.nb_output_bins
            if (model.nb_output_bins, channels) != (cfg.nfft // 2 + 1, cfg.nb_channels):
                raise UmxError(f"--model {cfg.model}: its '{cfg.target}' model has {model.nb_output_bins} frequency "
                               f"bins and {channels} channel(s), but this run has --nfft {cfg.nfft} "
                               f"({cfg.nfft // 2 + 1} bins) and --nb-channels {cfg.nb_channels}")
            model.train()
            return model
        if cfg.checkpoint or cfg.debug:  # weights come from the checkpoint / --debug skips statistics
            mean = std = None
        else:
            s = input_statistics(self.manifest, cfg.nfft, cfg.nhop, cfg.quiet or not self.dist.is_main, self.reader)
            mean, std = np.asarray(s["mean"]), np.asarray(s["std"])
        return OpenUnmix(
            nb_bins=cfg.nfft // 2 + 1, nb_channels=cfg.nb_channels, hidden_size=cfg.hidden_size,
            unidirectional=cfg.unidirectional, input_mean=mean, input_scale=std,
            max_bin=bandwidth_to_max_bin(rate, cfg.nfft, cfg.bandwidth),
        ).to(self.device)

    def _resume(self, folder: str) -> None:
        """Model, optimizer, scheduler, early stopping, histories and the data-stream position.

        umx checkpoints carry the whole run state (so a kill between two output
        files cannot desynchronise them); open-unmix's resume from the json."""
        path = Path(folder).expanduser() / f"{self.cfg.target}.chkpnt"
        ckpt = load_checkpoint(Path(folder), self.cfg.target)
        missing = [k for k in ("state_dict", "optimizer", "scheduler") if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise UmxError(f"{path}: not a training checkpoint (no {', '.join(missing)})")
        try:
            self.model.load_state_dict(ckpt["state_dict"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
            raise UmxError(f"{path}: does not fit this run's model (--hidden-size, --nfft, --nb-channels, "
                           f"--unidirectional, --bandwidth must be those of the run; {lines[-1][:200] if lines else e})"
                           ) from None
        settle_lr(self.optimizer)
        state = ckpt.get("umx")
        if state is None:
            results, _ = read_results(Path(folder), self.cfg.target)
            state = {"history": {k: results.get(k, []) for k in self.history},
                     "best_loss": results["best_loss"], "num_bad_epochs": results["num_bad_epochs"],
                     "position": {"epoch": results["epochs_trained"] + 1, "step": 0, "losses": [], "seconds": 0.0}}
        self.history = state["history"]
        self.stopper = EarlyStopping(self.cfg.patience, state["best_loss"], state["num_bad_epochs"])
        self.position = state["position"]

    # --- one epoch -------------------------------------------------------
    def _loader(self) -> DataLoader:
        cuda = self.device.type == "cuda"
        return DataLoader(self.stream, batch_size=None, num_workers=self.cfg.nb_workers, pin_memory=cuda,
                          prefetch_factor=4 if self.cfg.nb_workers else None)

    def train_step(self, pcm: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """One optimisation step on an int16 batch; every draw seeded by (seed, epoch, step, rank).
        Returns the loss as a device scalar: reading it is the caller's choice (a host sync)."""
        cfg, key = self.cfg, (epoch, step, self.dist.rank)
        gen = sampling.torch_generator(cfg.seed, sampling.AUGMENT, *key, device=self.device)
        x, y = mix_and_target(self.augment(pcm, gen), self.slots.input_slot, self.slots.complement)
        return self.step(x, y, sampling.torch_seed(cfg.seed, sampling.DROPOUT, *key))

    def train_epoch(self, epoch: int) -> float:
        """Train one epoch (or its rest, after a mid-epoch resume); the mean step loss over all ranks."""
        cfg, pos = self.cfg, self.position
        self.model.train()
        start_step, losses = (pos["step"], list(pos["losses"])) if pos["epoch"] == epoch else (0, [])
        log = LossLog(self.device, losses)
        self.stream.set_epoch(epoch, start_step)
        total = self.stream.batches_per_epoch(cfg.nb_workers)
        start, seen = time.time(), 0
        self.epoch_io = dict(pos.get("io", {})) if pos["epoch"] == epoch else {}
        trace = self._trace_file() if cfg.trace else None
        checked = first_known = len(losses)
        bar = tqdm(self._loader(), total=total, initial=start_step, desc=f"epoch {epoch}", leave=False,
                   disable=cfg.quiet or not self.dist.is_main)
        for step, batch in enumerate(bar, start=start_step):
            pcm = self.batch_audio(batch)
            log.append(self.train_step(pcm, epoch, step))
            losses = log.known()  # read back asynchronously: a few steps behind on a GPU
            _check_finite(losses, checked, epoch)
            checked = len(losses)
            if trace:
                trace.write(json.dumps({"epoch": epoch, "step": step, "tracks": batch.track_ids}) + "\n")
            seen += pcm.shape[0]
            io = add_metrics(self.epoch_io, batch.io)
            # steps whose loss has come back are done on the device: the honest rate on a GPU
            finished = min(seen, (len(losses) - first_known) * self.stream.batch_size)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}" if losses else "…",
                            samples_per_s=f"{finished / (time.time() - start):.1f}",
                            **({"fetched_MB": f"{io['bytes_fetched'] / 2**20:.0f}", "hits": io["hits"]}
                               if io.get("misses") or io.get("hits") else {}))
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
                losses = list(log.values())
                _check_finite(losses, checked, epoch)  # never checkpoint weights a NaN step has spoiled
                checked = len(losses)
                self.position = {"epoch": epoch, "step": step + 1, "losses": losses, "io": io,
                                 "seconds": pos.get("seconds", 0.0) + time.time() - start}
                self._save_checkpoint()
        if trace:
            trace.close()
        losses = log.values()
        _check_finite(losses, checked, epoch)
        if len(losses) != total:
            raise UmxError(f"rank {self.dist.rank} ran {len(losses)} steps in epoch {epoch}, expected {total}")
        distributed.broadcast_buffers(self.model, self.dist)
        loss_sum, count = distributed.sum_all([float(np.sum(losses)), len(losses)], self.dist, self.device)
        return loss_sum / count

    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss over every validation item, whichever rank scored it."""
        self.model.eval()
        total = 0.0
        for item in self.valid_items:
            wav = item.sources.to(self.device).float()[None] / 32768.0
            x, y = mix_and_target(wav, complement=self.slots.complement)
            if item.mixture is not None:  # the real mixture (musdb) or the stored input (aligned)
                x = item.mixture.to(self.device).float()[None] / 32768.0
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
                total += torch.nn.functional.mse_loss(self.model(self.encoder(x)), self.encoder(y)).item()
        return distributed.sum_all([total], self.dist, self.device)[0] / self.n_valid

    # --- the run ---------------------------------------------------------
    def fit(self) -> Path:
        cfg, h, main = self.cfg, self.history, self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_separator_json(self.out, cfg.nfft, cfg.nhop, self.manifest.sample_rate, cfg.nb_channels)
            if not cfg.quiet:
                per = f" per rank × {self.dist.world_size} ranks" if self.dist.active else ""
                print(f"training '{cfg.target}' on {self.device} from {self.manifest.location}: "
                      f"{self.stream.samples_per_epoch()} samples/epoch, batch {self.stream.batch_size}{per} "
                      f"(effective batch {self.stream.batch_size * self.dist.world_size})")
        first = self.position["epoch"]
        if first > cfg.epochs and main:
            print(f"nothing to train: {self.out} is trained to epoch {first - 1} already (--epochs {cfg.epochs})",
                  file=sys.stderr)
        epochs = tqdm(range(first, cfg.epochs + 1), desc="training", disable=cfg.quiet or not main,
                      initial=first - 1, total=cfg.epochs)
        for epoch in epochs:
            start = time.time() - (self.position.get("seconds", 0.0) if self.position["epoch"] == epoch else 0.0)
            train_loss = self.train_epoch(epoch)
            valid_loss = self.validate()
            self.scheduler.step(valid_loss)
            stop = self.stopper.step(valid_loss)  # the same reduced loss on every rank: the same decision
            h["train_loss_history"].append(train_loss)
            h["valid_loss_history"].append(valid_loss)
            h["train_time_history"].append(time.time() - start)
            h["lr_history"].append(float(self.optimizer.param_groups[0]["lr"]))  # after the plateau step
            h["loader_history"].append(self._loader_metrics())
            h["epochs_trained"] = epoch
            is_best = valid_loss == self.stopper.best
            if is_best:
                h["best_epoch"] = epoch
            self.position = {"epoch": epoch + 1, "step": 0, "losses": [], "seconds": 0.0}
            self._save(epoch, is_best)
            epochs.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{valid_loss:.4f}",
                               lr=float(self.optimizer.param_groups[0]["lr"]))
            if stop:
                if main and not cfg.quiet:
                    print(f"early stopping after epoch {epoch} (no improvement for {cfg.patience} epochs)")
                break
        if cfg.trace:
            digest = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes()
                                             for v in self.model.state_dict().values())).hexdigest()
            with self._trace_file() as f:
                f.write(json.dumps({"final_weights_sha256": digest}) + "\n")
        distributed.barrier(self.dist)
        return self.out

    def _loader_metrics(self) -> dict:
        """This epoch's loader counters summed over ranks: bytes fetched, cache hits and
        misses, seconds waiting for shards, shards skipped as bad."""
        io = self.epoch_io
        keys = ["bytes_fetched", "hits", "misses", "wait_s"]
        values = distributed.sum_all([float(io.get(k, 0)) for k in keys] + [float(len(io.get("bad_shards", [])))],
                                     self.dist, self.device)
        out = {k: (int(v) if k != "wait_s" else round(v, 3)) for k, v in zip(keys, values)}
        out["skipped_shards"] = int(values[-1])
        return out

    def _trace_file(self):
        self.out.mkdir(parents=True, exist_ok=True)
        return open(self.out / f"trace-rank{self.dist.rank}.jsonl", "a")

    def _save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        save_torch({"epoch": self.position["epoch"], "state_dict": self.model.state_dict(),
                    "best_loss": self.stopper.best, "optimizer": optimizer_state(self.optimizer),
                    "scheduler": self.scheduler.state_dict(),
                    "umx": {"history": self.history, "best_loss": self.stopper.best,
                            "num_bad_epochs": self.stopper.num_bad_epochs, "position": self.position}},
                   self.out / f"{self.cfg.target}.chkpnt")

    def _save(self, epoch: int, is_best: bool) -> None:
        """Epoch end: best weights, checkpoint, then the json (each atomic; rank 0 only)."""
        if not self.dist.is_main:
            return
        cfg, target = self.cfg, self.cfg.target
        if is_best:
            save_torch(self.model.state_dict(), self.out / f"{target}.pth")
        self._save_checkpoint()
        args = dataclasses.asdict(cfg)
        args["dataset"] = self.manifest.layout
        args["sample_rate"] = self.manifest.sample_rate
        args["world_size"] = self.dist.world_size
        write_json(self.out / f"{target}.json", {
            "args": args, "best_loss": self.stopper.best, "num_bad_epochs": self.stopper.num_bad_epochs,
            **self.history,
        })
        try:  # the loss curves a user looks at; never a reason to stop training
            from ..plot import plot_history

            plot_history(self.out, target)
        except Exception as e:  # noqa: BLE001 (matplotlib/back-end trouble)
            print(f"warning: could not draw the loss plot ({type(e).__name__}: {e})", file=sys.stderr)


def _check_finite(losses: list[float], start: int, epoch: int) -> None:
    """Stop on the first non-finite loss among those read back since `start`."""
    for i in range(start, len(losses)):
        if not math.isfinite(losses[i]):
            raise UmxError(f"loss became {losses[i]} at epoch {epoch}, step {i + 1}; stopping")


def _json_option(text: str | None, flag: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UmxError(f"{flag}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise UmxError(f"{flag}: must be a JSON object, e.g. '{{\"endpoint_url\": \"http://…\"}}'")
    return value


def _set_precision(precision: str) -> None:
    """fp32 is strict fp32 (no TF32 anywhere); tf32 allows it in matmuls and cuDNN."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def train(config: TrainConfig) -> Path:
    """Train one target model; returns the output directory."""
    trainer = Trainer(config)
    try:
        return trainer.fit()
    finally:
        distributed.teardown(trainer.dist)
