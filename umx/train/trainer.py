"""The open-unmix training recipe on a streamed shard set, on one process or many.

Adam(lr, weight_decay) · ReduceLROnPlateau(gamma, patience, cooldown=10) ·
early stopping on the validation loss · MSE between magnitude spectrograms ·
validation on the full tracks of the valid split, one per batch. Under
torchrun the model is wrapped in DistributedDataParallel, validation is split
over the ranks and reduced, and only rank 0 writes. The data stream, the
device augmentation and dropout are seeded per (seed, epoch, step), so
`--checkpoint` resumes — at an epoch end or mid-epoch — the very history an
uninterrupted run would write. Built by `build.build_trainer`; `train()` is the entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import UmxError
from ..shards import manifest as mf
from ..shards.reader import ShardReader, add_metrics
from . import distributed, sampling
from .augment import Augment, mix_and_target
from .config import TrainConfig
from .outputs import save_checkpoint, save_torch, write_results, write_separator_json
from .slots import Slots
from .state import Progress, RunState
from .step import LossLog
from .validation import ValidItem


@dataclass
class TrainData:
    """The data side of a run: where batches and validation items come from."""

    reader: ShardReader
    slots: Slots
    seq_len: int | None  # None: whole tracks
    stream: object  # streams.TrainStream | streams.SourceFileStream
    resident: object | None  # resident.ResidentTracks | ResidentSources: the split in device memory
    valid_items: list[ValidItem]  # this rank's share
    n_valid: int  # over all ranks
    valid_io: dict  # loader counters of loading the validation set


@dataclass
class Optimisation:
    model: torch.nn.Module
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    step: object  # step.EagerStep | step.GraphStep


class Trainer:
    """One training run, built by `build_trainer`: `fit()` trains it to `--epochs`."""

    def __init__(self, cfg: TrainConfig, manifest: mf.Manifest, dist: distributed.Context, device: torch.device,
                 data: TrainData, encoder: torch.nn.Module, augment: Augment, parts: Optimisation, state: RunState):
        self.cfg, self.manifest, self.dist, self.device = cfg, manifest, dist, device
        self.data, self.encoder, self.augment, self.parts, self.state = data, encoder, augment, parts, state
        self.out = Path(cfg.output).expanduser()

    # short names for the parts most used
    model = property(lambda self: self.parts.model)
    optimizer = property(lambda self: self.parts.optimizer)
    step = property(lambda self: self.parts.step)
    stream = property(lambda self: self.data.stream)
    reader = property(lambda self: self.data.reader)
    resident = property(lambda self: self.data.resident)

    def batch_audio(self, batch) -> torch.Tensor:
        """A loader batch as int16 `[batch, slots, channels, time]` on the device."""
        if batch.starts is not None:
            return self.data.resident.gather(batch.starts, self.data.seq_len)
        return batch.audio.to(self.device, non_blocking=True)

    def train_step(self, pcm: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """One optimisation step on an int16 batch; every draw seeded by (seed, epoch, step, rank).
        Returns the loss as a device scalar: reading it is the caller's choice (a host sync)."""
        cfg, key, slots = self.cfg, (epoch, step, self.dist.rank), self.data.slots
        gen = sampling.torch_generator(cfg.seed, sampling.AUGMENT, *key, device=self.device)
        x, y = mix_and_target(self.augment(pcm, gen), slots.input_slot, slots.complement)
        return self.parts.step(x, y, sampling.torch_seed(cfg.seed, sampling.DROPOUT, *key))

    # --- one epoch -------------------------------------------------------
    def _loader(self) -> DataLoader:
        return DataLoader(self.stream, batch_size=None, num_workers=self.cfg.nb_workers,
                          pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.cfg.nb_workers else None)

    def train_epoch(self, epoch: int) -> tuple[float, dict]:
        """Train one epoch (or its rest, after a mid-epoch resume): the mean step loss over all
        ranks, and this rank's loader counters of the epoch."""
        cfg, known = self.cfg, self.state.progress.within(epoch)
        self.model.train()
        log = LossLog(self.device, list(known.losses))
        self.stream.set_epoch(epoch, known.step)
        total = self.stream.batches_per_epoch(cfg.nb_workers)
        meter = _Meter(known, self.stream.batch_size)
        trace = self._trace_file() if cfg.trace else None
        bar = tqdm(self._loader(), total=total, initial=known.step, desc=f"epoch {epoch}", leave=False,
                   disable=cfg.quiet or not self.dist.is_main)
        for step, batch in enumerate(bar, start=known.step):
            pcm = self.batch_audio(batch)
            log.append(self.train_step(pcm, epoch, step))
            meter.update(log.known(), pcm.shape[0], batch.io, epoch)  # read back asynchronously on a GPU
            if trace:
                trace.write(json.dumps({"epoch": epoch, "step": step, "tracks": batch.track_ids}) + "\n")
            bar.set_postfix(**meter.postfix())
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
                meter.check(log.values(), epoch)  # never checkpoint weights a NaN step has spoiled
                self.state.progress = Progress(epoch, step + 1, list(log.values()), meter.seconds(), meter.io)
                self._save_checkpoint()
        if trace:
            trace.close()
        losses = log.values()
        meter.check(losses, epoch)
        if len(losses) != total:
            raise UmxError(f"rank {self.dist.rank} ran {len(losses)} steps in epoch {epoch}, expected {total}")
        distributed.broadcast_buffers(self.model, self.dist)
        loss_sum, count = distributed.sum_all([float(np.sum(losses)), len(losses)], self.dist, self.device)
        return loss_sum / count, meter.io

    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss over every validation item, whichever rank scored it."""
        self.model.eval()
        total = 0.0
        for item in self.data.valid_items:
            wav = item.sources.to(self.device).float()[None] / 32768.0
            x, y = mix_and_target(wav, complement=self.data.slots.complement)
            if item.mixture is not None:  # the real mixture (musdb) or the stored input (aligned)
                x = item.mixture.to(self.device).float()[None] / 32768.0
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
                total += torch.nn.functional.mse_loss(self.model(self.encoder(x)), self.encoder(y)).item()
        return distributed.sum_all([total], self.dist, self.device)[0] / self.data.n_valid

    # --- the run ---------------------------------------------------------
    def fit(self) -> Path:
        cfg, main = self.cfg, self.dist.is_main
        if main:
            self._announce()
        first = self.state.progress.epoch
        epochs = tqdm(range(first, cfg.epochs + 1), desc="training", disable=cfg.quiet or not main,
                      initial=first - 1, total=cfg.epochs)
        for epoch in epochs:
            start = time.time() - self.state.progress.within(epoch).seconds
            train_loss, io = self.train_epoch(epoch)
            valid_loss = self.validate()
            self.parts.scheduler.step(valid_loss)
            stop = self.state.stop_early(valid_loss, cfg.patience)  # the same reduced loss on every rank
            lr = float(self.parts.optimizer.param_groups[0]["lr"])  # after the plateau step
            is_best = self.state.end_epoch(epoch, train_loss, valid_loss, time.time() - start, lr,
                                           self._loader_metrics(io))
            self._save(is_best)
            epochs.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{valid_loss:.4f}", lr=lr)
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

    def _announce(self) -> None:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        write_separator_json(self.out, cfg.nfft, cfg.nhop, self.manifest.sample_rate, cfg.nb_channels)
        first = self.state.progress.epoch
        if first > cfg.epochs:
            print(f"nothing to train: {self.out} is trained to epoch {first - 1} already (--epochs {cfg.epochs})",
                  file=sys.stderr)
        if not cfg.quiet:
            per = f" per rank × {self.dist.world_size} ranks" if self.dist.active else ""
            print(f"training '{cfg.target}' on {self.device} from {self.manifest.location}: "
                  f"{self.stream.samples_per_epoch()} samples/epoch, batch {self.stream.batch_size}{per} "
                  f"(effective batch {self.stream.batch_size * self.dist.world_size})")

    def _loader_metrics(self, io: dict) -> dict:
        """An epoch's loader counters summed over ranks: bytes fetched, cache hits and
        misses, seconds waiting for shards, shards skipped as bad."""
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
        if self.dist.is_main:
            save_checkpoint(self.out, self.cfg.target, self.model, self.parts.optimizer, self.parts.scheduler,
                            self.state)

    def _save(self, is_best: bool) -> None:
        """Epoch end: best weights, checkpoint, then the json (each atomic; rank 0 only)."""
        if not self.dist.is_main:
            return
        cfg, target = self.cfg, self.cfg.target
        if is_best:
            save_torch(self.model.state_dict(), self.out / f"{target}.pth")
        self._save_checkpoint()
        args = {**dataclasses.asdict(cfg), "dataset": self.manifest.layout, "sample_rate": self.manifest.sample_rate,
                "world_size": self.dist.world_size}
        write_results(self.out, target, args, self.state)
        try:  # the loss curves a user looks at; never a reason to stop training
            from ..plot import plot_history

            plot_history(self.out, target)
        except Exception as e:  # noqa: BLE001 (matplotlib/back-end trouble)
            print(f"warning: could not draw the loss plot ({type(e).__name__}: {e})", file=sys.stderr)


class _Meter:
    """An epoch's running figures: losses checked as they come back, samples/s of the steps the
    device has finished, loader counters."""

    def __init__(self, known: Progress, batch_size: int):
        self.start, self.before = time.time(), known.seconds
        self.io = dict(known.io)
        self.checked = self.first_known = len(known.losses)
        self.losses: list[float] = list(known.losses)
        self.seen, self.batch_size = 0, batch_size

    def update(self, losses: list[float], samples: int, io: dict | None, epoch: int) -> None:
        self.check(losses, epoch)
        self.losses, self.seen = losses, self.seen + samples
        add_metrics(self.io, io)

    def check(self, losses: list[float], epoch: int) -> None:
        """Stop on the first non-finite loss among those read back since the last check."""
        for i in range(self.checked, len(losses)):
            if not math.isfinite(losses[i]):
                raise UmxError(f"loss became {losses[i]} at epoch {epoch}, step {i + 1}; stopping")
        self.checked = len(losses)

    def seconds(self) -> float:
        return self.before + time.time() - self.start

    def postfix(self) -> dict:
        # steps whose loss has come back are done on the device: the honest rate on a GPU
        finished = min(self.seen, (len(self.losses) - self.first_known) * self.batch_size)
        io = self.io
        return dict(loss=f"{np.mean(self.losses):.4f}" if self.losses else "…",
                    samples_per_s=f"{finished / (time.time() - self.start):.1f}",
                    **({"fetched_MB": f"{io['bytes_fetched'] / 2**20:.0f}", "hits": io["hits"]}
                       if io.get("misses") or io.get("hits") else {}))


def train(config: TrainConfig) -> Path:
    """Train one target model; returns the output directory."""
    from .build import build_trainer, setup_process

    config.check()
    dist, device = setup_process(config)
    try:
        return build_trainer(config, dist, device).fit()
    finally:
        distributed.teardown(dist)
