"""The training loop on a streamed shard set, on one process or many, for any architecture
(models.protocol), one target or several at once.

The open-unmix recipe, generalised to the architecture's optimisation units: each unit's
optimizer and plateau scheduler (open-unmix: Adam(lr, weight_decay) · ReduceLROnPlateau(gamma,
patience, cooldown=10) per target) · early stopping on the validation loss · the architecture's
objective · validation on the full tracks of the valid split, one per batch. Every target of a
run shares one data stream, one augmentation pass and one step; each unit keeps its own
network, optimizer, scheduler, best weights and early stopping, unless the objective is joint
(X-UMX's, or one network of all targets): then the validation objective decides for all. Under
torchrun the model is wrapped in DistributedDataParallel, validation is split
over the ranks and reduced, and only rank 0 writes. The data stream, the
device augmentation and dropout are seeded per (seed, epoch, global batch), so
`--checkpoint` resumes — at an epoch end or mid-epoch — the very history an
uninterrupted run would write, and under the global sampling plan continues an
epoch on other ranks or workers with exactly its remaining samples (elastic).
Built by `build.build_trainer`; `train()` is the entry.
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
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import UmxError
from ..models import registry
from ..models.protocol import Architecture, ModelSpec, Objective, Trainable
from ..shards import manifest as mf
from ..shards.reader import ShardReader, add_metrics
from . import distributed, sampling
from .augment import Augment, mix_and_target, replace_quiet
from .config import TrainConfig
from .ema import EMA, label
from .outputs import CheckpointWriter, TargetParts, append_to, write_results
from .slots import Slots
from .state import Epoch, Progress, RunState
from .step import EagerStep, GraphStep, LossLog
from .validation import ValidItem

if TYPE_CHECKING:  # imported where used: the scoring stack is only needed with --eval-every
    from . import scoring


@dataclass
class TrainData:
    """The data side of a run: where batches and validation items come from."""

    reader: ShardReader
    slots: Slots
    seq_len: int | None  # the crops' length (None: whole tracks)
    stream: object  # streams.TrainStream | streams.SourceFileStream
    resident: object | None  # resident.ResidentTracks | ResidentSources: the split in device memory
    valid_items: list[ValidItem]  # this rank's share
    n_valid: int  # over all ranks
    valid_io: dict  # loader counters of loading the validation set
    out_len: int | None = None  # the model's crop length: seq_len less what augmentations trim (shift, speed, pitch, repitch)


@dataclass(frozen=True)
class Mixer:
    """The step's `prepare`: int16 crops `[batch, slots, channels, time]` → (mixture, targets) on the
    device — the augmentations (drawing from the default generator the step seeds per batch), then
    the mix. Run inside the step, so the CUDA graph captures it too."""

    augment: Augment
    input_slot: bool
    targets: tuple  # slots.TargetSlot of the targets trained
    out_len: int | None  # the crops' length after the augmentations (None: what they deliver)
    min_mean_abs: float = 0.0  # --min-mean-abs: quiet crops replaced first (augment.replace_quiet)

    def __call__(self, pcm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_mean_abs:
            pcm = replace_quiet(pcm, self.min_mean_abs, pcm.shape[1] - self.input_slot)
        return mix_and_target(self.augment(pcm, None, self.out_len), self.input_slot, targets=self.targets)

    def restricted(self, names: list[str]) -> "Mixer":
        """The same, with the targets of `names` only (those still training)."""
        return dataclasses.replace(self, targets=tuple(t for t in self.targets if t.name in names))


@dataclass(frozen=True)
class ModelKind:
    """The run's architecture, its options and what the data decides about the model."""

    arch: Architecture
    options: object  # the architecture's options dataclass
    spec: ModelSpec

    def units(self, targets: list[str]) -> dict[str, tuple[str, ...]]:
        return self.arch.units(targets, self.options)


@dataclass
class Optimisation:
    model: Trainable  # every unit's network
    net: torch.nn.Module  # what the step runs: the units still training, or their DDP wrapper
    optimizers: dict[str, torch.optim.Optimizer]  # per unit
    schedulers: dict[str, torch.optim.lr_scheduler.ReduceLROnPlateau]
    step: object  # step.EagerStep | step.GraphStep (make_step)
    objective: Objective
    graph: bool  # the step is the CUDA-graph step
    ema: EMA | None = None  # --ema: moving averages of the weights
    mixer: Mixer | None = None  # the batch preparation inside the step (all targets; make_step restricts it)
    scaler: "torch.amp.GradScaler | None" = None  # --precision fp16


@dataclass
class Scores:
    """An epoch's losses: each unit's term (open-unmix: its target's spectrogram MSE) and the objective's."""

    targets: dict[str, float]
    objective: float


class Trainer:
    """One training run, built by `build_trainer`: `fit()` trains it to `--epochs`."""

    def __init__(self, cfg: TrainConfig, manifest: mf.Manifest, dist: distributed.Context, device: torch.device,
                 data: TrainData, kind: ModelKind, augment: Augment, parts: Optimisation, state: RunState):
        self.cfg, self.manifest, self.dist, self.device = cfg, manifest, dist, device
        self.data, self.kind, self.augment, self.parts, self.state = data, kind, augment, parts, state
        self.units = list(parts.model.units)  # in the run's order
        self.out = Path(cfg.output).expanduser()
        self.writer = CheckpointWriter()  # checkpoints written in the background

    # short names for the parts most used
    model = property(lambda self: self.parts.model)
    optimizer = property(lambda self: self.parts.optimizers[self.units[0]])  # the first unit's
    step = property(lambda self: self.parts.step)
    stream = property(lambda self: self.data.stream)
    reader = property(lambda self: self.data.reader)
    resident = property(lambda self: self.data.resident)

    @property
    def joint(self) -> bool:
        return self.parts.objective.joint

    @property
    def active(self) -> list[str]:
        """The units still training (in the run's order)."""
        return self.state.active(self.units)

    def targets_of(self, units: list[str]) -> list[str]:
        """The targets the networks of `units` estimate, in the run's order."""
        mine = {t for u in units for t in self.model.unit_targets[u]}
        return [t for t in self.cfg.targets if t in mine]

    def _slots(self, units: list[str]) -> tuple:
        names = self.targets_of(units)
        return tuple(t for t in self.data.slots.target_slots if t.name in names)

    def batch_audio(self, batch) -> torch.Tensor:
        """A loader batch as int16 `[batch, slots, channels, time]` on the device."""
        if batch.starts is not None:
            return self.data.resident.gather(batch.starts, self.data.seq_len)
        return batch.audio.to(self.device, non_blocking=True)

    def train_step(self, pcm: torch.Tensor, epoch: int, index: int, update: bool = True) -> torch.Tensor:
        """One optimisation step on an int16 batch. The step augments and mixes the batch itself
        (Mixer, inside the CUDA graph where there is one); every draw comes from one seed of (seed,
        epoch, index), the batch's global index in the epoch, so it is the same on any topology.
        Returns the loss row (each training target's loss, then the objective) on the device:
        reading it is the caller's choice (a host sync)."""
        return self.parts.step(pcm, seed=sampling.torch_seed(self.cfg.seed, sampling.STEP, epoch, index), update=update)

    # --- one epoch -------------------------------------------------------
    def _loader(self) -> DataLoader:
        workers = self.cfg.nb_workers
        return DataLoader(self.stream, batch_size=None, num_workers=workers, pin_memory=self.device.type == "cuda",
                          prefetch_factor=4 if workers else None, timeout=self.cfg.data_timeout if workers else 0)

    def _batches(self, loader: DataLoader):
        """The loader's batches; a worker silent for --data-timeout seconds stops the run with one line
        (torch's DataLoader raises; without it a hung worker would hang every rank)."""
        try:
            yield from loader
        except RuntimeError as e:
            if "timed out" in str(e):
                raise UmxError(f"no batch from the loader workers for {self.cfg.data_timeout:g} s (--data-timeout): "
                               "a worker hangs or the shards stall") from None
            raise

    def _resume_point(self, epoch: int) -> Progress:
        """What is known of `epoch`: its start, or where a checkpoint stopped inside it. A run on other
        ranks or workers continues the epoch where the sampling plan allows it (global), else
        starts it over (pool: its draws depend on the topology)."""
        known = self.state.progress.within(epoch)
        topology = (self.dist.world_size, self.cfg.nb_workers)
        if known.step and known.world and (known.world, known.workers) != topology and not self.stream.elastic:
            if self.dist.is_main:
                print(f"warning: epoch {epoch} was checkpointed after {known.step} steps on {known.world} rank(s) × "
                      f"{known.workers} worker(s); with --sampling pool its draws depend on the topology, so it "
                      f"starts over on {topology[0]} × {topology[1]} (the weights are the checkpoint's)",
                      file=sys.stderr)
            return Progress(epoch)
        return known

    def train_epoch(self, epoch: int) -> tuple[Scores, dict]:
        """Train one epoch (or its rest, after a mid-epoch resume): the mean step losses over all
        ranks, and this rank's loader counters of the epoch."""
        cfg, known = self.cfg, self._resume_point(epoch)
        self.model.train()
        log = LossLog(self.device)  # this rank's steps from here on; `known.losses` are every rank's before
        self.stream.set_epoch(epoch, known.step, known.consumed if known.world else None)
        total = known.step + self.stream.steps_remaining(cfg.nb_workers)
        meter = _Meter(known, self.stream.batch_size)
        every, since = cfg.save_interval(), time.time()  # --save-every: (steps, seconds)
        trace = self._trace_file() if cfg.trace else None
        bar = tqdm(self._batches(self._loader()), total=total, initial=known.step, desc=f"epoch {epoch}", leave=False,
                   disable=cfg.quiet or not self.dist.is_main)
        for step, batch in enumerate(bar, start=known.step):
            pcm = self.batch_audio(batch)
            update = (step + 1) % cfg.grad_accum == 0 or step + 1 == total  # --grad-accum
            log.append(self.train_step(pcm, epoch, batch.index, update))
            meter.update(log.known(), pcm.shape[0], batch.io, epoch)  # read back asynchronously on a GPU
            if trace:
                trace.write(json.dumps({"epoch": epoch, "step": step, "batch": batch.index, "tracks": batch.track_ids,
                                        "offsets": batch.offsets}) + "\n")
            bar.set_postfix(**meter.postfix())
            if self._save_due(step, every, since) and step + 1 < total:
                since = time.time()
                meter.check(log.values(), epoch)  # never checkpoint weights a NaN step has spoiled
                rows = known.losses + distributed.gather_all(log.values(), self.dist)
                consumed = self.stream.consumed + (step + 1 - known.step) * self.dist.world_size
                self.state.progress = Progress(epoch, step + 1, rows, meter.seconds(), meter.io, consumed,
                                               self.dist.world_size, cfg.nb_workers)
                self._save_checkpoint()
        if trace:
            trace.close()
        losses = log.values()
        meter.check(losses, epoch)
        if len(losses) != total - known.step:
            raise UmxError(f"rank {self.dist.rank} ran {len(losses)} steps in epoch {epoch}, expected "
                           f"{total - known.step}")
        distributed.broadcast_buffers(self.model, self.dist)
        # the steps before a resume (every rank's) are counted once, by rank 0
        rows = losses + (known.losses if self.dist.is_main else [])
        width = len(self.active) + 1
        *sums, count = distributed.sum_all([*np.sum(np.asarray(rows, dtype=np.float64).reshape(-1, width), axis=0),
                                            len(rows)], self.dist, self.device)
        return self._scores([v / count for v in sums]), meter.io

    SYNC_EVERY = 8  # steps between two checks of a timed checkpoint under torchrun (one broadcast each)

    def _save_due(self, step: int, every: tuple[int, float], since: float) -> bool:
        """A mid-epoch checkpoint after `step`: every N steps, or once the interval has passed (at an
        optimizer step: --grad-accum's gradients are not in the checkpoint). Under torchrun rank 0's
        clock decides, every SYNC_EVERY steps: every rank must save at the same step."""
        steps, seconds = every
        if steps:
            return (step + 1) % steps == 0
        if not seconds or (step + 1) % self.cfg.grad_accum:
            return False
        if not self.dist.active:
            return time.time() - since >= seconds
        if (step + 1) % (self.SYNC_EVERY * self.cfg.grad_accum):
            return False
        return distributed.agree(time.time() - since >= seconds, self.dist, self.device)

    def _scores(self, row: list[float]) -> Scores:
        return Scores(dict(zip(self.active, row[:-1])), row[-1])

    def validate(self) -> Scores:
        """Mean losses over every validation item, whichever rank scored it."""
        return self._validation_pass(None)[0]

    def validate_scored(self) -> tuple[Scores, tuple[dict[str, float], dict[str, float]]]:
        """`validate`, with the validation tracks also separated by the current networks and scored
        in the same pass (scoring.py): the losses, and (cSDR, uSDR) per target still training,
        over every rank's tracks."""
        from . import scoring

        kind, active = self.kind, self.active
        residual = scoring.needs_residual(self.data.slots, list(self.manifest.sources))
        separate = kind.arch.scoring(self.model, active, kind.spec, kind.options, residual, self.cfg.eval_separation)
        targets = self.targets_of(active)
        scorer = scoring.Scorer(separate, targets, residual, self.manifest.sample_rate)
        losses, mine = self._validation_pass(scorer)
        csdr, usdr = scoring.aggregate(distributed.gather_all(mine, self.dist), targets)
        return losses, (self._per_unit(csdr, active), self._per_unit(usdr, active))

    def _per_unit(self, values: dict[str, float], units: list[str]) -> dict[str, float]:
        """A unit's figure: its targets' mean (open-unmix: its target's)."""
        return {u: float(np.mean([values[t] for t in self.model.unit_targets[u]])) for u in units}

    @torch.no_grad()
    def _validation_pass(self, scorer: "scoring.Scorer | None") -> tuple[Scores, list["scoring.TrackScores"]]:
        """The mean losses, and with a scorer each of this rank's tracks' scores (from the same pass)."""
        self.model.eval()
        net, targets = self.model.subset(self.active), self._slots(self.active)
        totals, scored = [0.0] * (len(self.active) + 1), []
        for item in self.data.valid_items:
            wav = item.sources.to(self.device).float()[None] / 32768.0
            x, y = mix_and_target(wav, targets=targets)
            if item.mixture is not None:  # the real mixture (musdb) or the stored input (aligned)
                x = item.mixture.to(self.device).float()[None] / 32768.0
            with torch.autocast(self.device.type, dtype=torch.float16 if self.cfg.precision == "fp16" else torch.bfloat16,
                                enabled=self.cfg.precision in ("bf16", "fp16")):
                estimates = net(x)
                terms = self.parts.objective(estimates, y, x)
            totals = [a + b for a, b in zip(totals, terms.tolist())]
            if scorer:
                scored.append(scorer.score(x, y, estimates))
        sums = distributed.sum_all(totals, self.dist, self.device)
        return self._scores([v / self.data.n_valid for v in sums]), scored

    def _validate_averages(self) -> dict[str, Scores]:
        """--ema: the validation losses of every set of moving averages (label → Scores)."""
        ema = self.parts.ema
        if ema is None:
            return {}
        out = {}
        for decay in ema.decays:
            with ema.swapped(decay, self.active):
                out[label(decay)] = self.validate()
        return out

    def _best_weights(self, target: str, loss: float, averaged: dict[str, Scores]) -> tuple[str, float]:
        """The weight set (raw or a moving average) with the lowest validation loss, and that loss
        (joint objectives: the lowest objective, the same choice for every target)."""
        options = {"raw": loss, **{k: (v.objective if self.joint else v.targets[target]) for k, v in averaged.items()}}
        chosen = min(options, key=lambda k: (options[k], k != "raw"))  # ties: the raw weights
        return chosen, options[chosen]

    # --- the run ---------------------------------------------------------
    def fit(self) -> Path | None:
        """Train to --epochs; the model directory, or None where nothing was trained: a resumed run
        whose every target has stopped early says so in one line and writes nothing (a stopped target
        stays stopped, whatever --epochs or --patience the resume gives; its best weights are in place)."""
        cfg, main = self.cfg, self.dist.is_main
        if not self.active:
            if main:
                print(self._all_stopped(), file=sys.stderr)
            return None
        if main:
            self._announce()
        first = self.state.progress.epoch
        epochs = tqdm(range(first, cfg.epochs + 1), desc="training", disable=cfg.quiet or not main,
                      initial=first - 1, total=cfg.epochs)
        for epoch in epochs:
            start = time.time() - self.state.progress.within(epoch).seconds
            active = self.active
            train, io = self.train_epoch(epoch)
            evaluating = cfg.eval_every and epoch % cfg.eval_every == 0
            valid, sdr = self.validate_scored() if evaluating else (self.validate(), None)
            averaged = self._validate_averages()
            seconds, io = time.time() - start, self._loader_metrics(io)
            best = {}
            for target in active:  # every rank holds the same reduced losses
                t = self.state.target(target)
                loss = valid.objective if self.joint else valid.targets[target]
                self.parts.schedulers[target].step(loss)  # the learning rate follows the loss, as in open-unmix
                chosen, chosen_loss = self._best_weights(target, loss, averaged)
                selected = chosen_loss if cfg.select_by == "loss" else _negative_sdr(sdr, target, active, self.joint)
                if selected is not None:
                    t.stop_early(selected, cfg.patience)
                lr = float(self.parts.optimizers[target].param_groups[0]["lr"])  # after the plateau step
                objective = (train.objective, valid.objective) if self.joint else None
                scores = None if not cfg.eval_every else (None, None) if sdr is None else \
                    (_finite(sdr[0][target]), _finite(sdr[1][target]))
                averages = None if not averaged else \
                    {label: (v.objective if self.joint else v.targets[target]) for label, v in averaged.items()}
                best[target] = t.end_epoch(epoch, Epoch(train.targets[target], valid.targets[target], seconds, lr,
                                                        io, objective, scores, averages, chosen), selected)
            self.state.progress = Progress(epoch + 1)
            self._save(best)
            post = {"train_loss": f"{train.objective:.4f}", "val_loss": f"{valid.objective:.4f}"}
            epochs.set_postfix(**post, lr=float(self.parts.optimizers[active[0]].param_groups[0]["lr"]))
            stopped = [t for t in active if self.state.target(t).stopped]
            if stopped and main and not cfg.quiet:
                print(f"early stopping {', '.join(stopped)} after epoch {epoch} (no improvement for "
                      f"{cfg.patience} epochs)")
            if not self.active:
                break
            if stopped:  # the others train on, without the stopped networks
                make_step(self.parts, cfg, self.dist, self.device, self.active)
        if cfg.trace:
            digest = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes()
                                             for v in self.model.units.state_dict().values())).hexdigest()
            with self._trace_file() as f:
                f.write(json.dumps({"final_weights_sha256": digest}) + "\n")
        self.writer.wait()
        distributed.barrier(self.dist)
        return self.out

    def _all_stopped(self) -> str:
        """The line for a run whose every target stopped early."""
        when = ", ".join(f"{t} after epoch {self.state.target(t).history.epochs_trained}" for t in self.units)
        where = Path(self.cfg.checkpoint or self.cfg.output).expanduser()
        return (f"nothing to train: every target of the run in {where} has stopped early ({when}); its best weights "
                f"are in place (to train on from them, give --model {where} and a new --output)")

    def _announce(self) -> None:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self.kind.arch.write_directory(self.out, self.kind.spec, self.kind.options)
        first = self.state.progress.epoch
        if first > cfg.epochs:
            print(f"nothing to train: {self.out} is trained to epoch {first - 1} already (--epochs {cfg.epochs})",
                  file=sys.stderr)
        if not cfg.quiet:
            per = f" per rank × {self.dist.world_size} ranks" if self.dist.active else ""
            arch = "" if cfg.arch == registry.DEFAULT else f" with {cfg.arch}"
            what = f"'{cfg.target}'" if len(cfg.targets) == 1 else \
                f"{', '.join(cfg.targets)} jointly" + (f" ({cfg.loss} loss{', bridged' if cfg.bridge else ''})"
                                                       if cfg.arch == registry.DEFAULT else "")
            what += arch
            print(f"training {what} on {self.device} from {self.manifest.location}: "
                  f"{self.stream.samples_per_epoch()} samples/epoch, batch {self.stream.batch_size}{per} "
                  f"(effective batch {self.stream.batch_size * self.dist.world_size})")

    def _loader_metrics(self, io: dict) -> dict:
        """An epoch's loader counters summed over ranks: bytes fetched, cache hits and
        misses, seconds waiting for shards, shards skipped as bad."""
        keys = ["bytes_fetched", "hits", "misses", "wait_s"]
        values = distributed.sum_all([float(io.get(k, 0)) for k in keys], self.dist, self.device)
        out = {k: (int(v) if k != "wait_s" else round(v, 3)) for k, v in zip(keys, values)}
        # a bad shard once, however many workers and ranks met it (in the global plan any may read it)
        out["skipped_shards"] = len(set(distributed.gather_all(sorted(set(io.get("bad_shards", []))), self.dist)))
        return out

    def _trace_file(self):
        """This rank's --trace file, appended line by line (a killed run's lines too); a link or
        anything else but a regular file at its name is refused, never followed."""
        self.out.mkdir(parents=True, exist_ok=True)
        return append_to(self.out / f"trace-rank{self.dist.rank}.jsonl")

    def _chosen_weights(self, target: str) -> dict:
        """The weights of this epoch's choice for unit `target` (raw, or a moving average: --ema)."""
        chosen = (self.state.target(target).history.weights_history or ["raw"])[-1]
        if chosen == "raw" or self.parts.ema is None:
            return self.model.units[target].state_dict()
        decay = next(d for d in self.parts.ema.decays if label(d) == chosen)
        return self.parts.ema.weights(decay, target)

    def _save_checkpoint(self) -> None:
        if self.dist.is_main:
            p = self.parts
            scaler = p.scaler.state_dict() if p.scaler is not None else None
            self.writer.save(self.out, {u: TargetParts(self.model.units[u], p.optimizers[u], p.schedulers[u],
                                                       p.ema.target_state(u) if p.ema else None, scaler)
                                        for u in self.units}, self.state)

    def _save(self, best: dict[str, bool]) -> None:
        """Epoch end: best weights, checkpoints, then the jsons (each atomic; rank 0 only)."""
        if not self.dist.is_main:
            return
        cfg = self.cfg
        self.kind.arch.write_weights(self.out, self.kind.options, {u: self._chosen_weights(u) for u in self.units},
                                     [u for u, is_best in best.items() if is_best])
        self._save_checkpoint()
        args = {**dataclasses.asdict(cfg), "dataset": self.manifest.layout, "sample_rate": self.manifest.sample_rate,
                "world_size": self.dist.world_size}
        for target in best:
            write_results(self.out, target, args, self.state)
        try:  # the loss curves a user looks at; never a reason to stop training
            from ..plot import plot_history, plot_targets

            for target in best:
                plot_history(self.out, target)
            if len(self.units) > 1:
                plot_targets(self.out, self.units)
        except Exception as e:  # noqa: BLE001 (matplotlib/back-end trouble)
            print(f"warning: could not draw the loss plot ({type(e).__name__}: {e})", file=sys.stderr)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _negative_sdr(sdr, target: str, active: list[str], joint: bool) -> float | None:
    """--select-by sdr: what early stopping minimises, -cSDR (joint objectives: of the units'
    mean); None where the epoch was not evaluated or gave no finite cSDR."""
    if sdr is None:
        return None
    values = [sdr[0][t] for t in (active if joint else [target])]
    value = float(np.mean(values))
    return -value if math.isfinite(value) else None


class _Meter:
    """An epoch's running figures: losses checked as they come back, samples/s of the steps the
    device has finished, loader counters."""

    def __init__(self, known: Progress, batch_size: int):
        self.start, self.before = time.time(), known.seconds
        self.io = dict(known.io)
        self.checked = 0  # of this rank's losses since the start (or the resume)
        self.first_step = known.step  # the epoch's step the first of them belongs to
        self.losses: list[list[float]] = []
        self.seen, self.batch_size = 0, batch_size

    def update(self, losses: list[list[float]], samples: int, io: dict | None, epoch: int) -> None:
        self.check(losses, epoch)
        self.losses, self.seen = losses, self.seen + samples
        add_metrics(self.io, io)

    def check(self, losses: list[list[float]], epoch: int) -> None:
        """Stop on the first non-finite loss among those read back since the last check."""
        for i in range(self.checked, len(losses)):
            bad = next((v for v in losses[i] if not math.isfinite(v)), None)
            if bad is not None:
                raise UmxError(f"loss became {bad} at epoch {epoch}, step {self.first_step + i + 1}; stopping")
        self.checked = len(losses)

    def seconds(self) -> float:
        return self.before + time.time() - self.start

    def postfix(self) -> dict:
        # steps whose loss has come back are done on the device: the honest rate on a GPU
        finished = min(self.seen, len(self.losses) * self.batch_size)
        io = self.io
        return dict(loss=f"{np.mean([r[-1] for r in self.losses]):.4f}" if self.losses else "…",
                    samples_per_s=f"{finished / (time.time() - self.start):.1f}",
                    **({"fetched_MB": f"{io['bytes_fetched'] / 2**20:.0f}", "hits": io["hits"]}
                       if io.get("misses") or io.get("hits") else {}))


def make_step(parts: Optimisation, cfg: TrainConfig, dist: distributed.Context, device: torch.device,
              active: list[str]) -> None:
    """The step over the units still training (all, until one stops early): their networks
    (DDP-wrapped under torchrun) and optimizers. Rebuilt when that set changes."""
    model = parts.model.subset(active)
    net = model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizers = [parts.optimizers[u] for u in active]
    bf16 = cfg.precision == "bf16"
    parts.net = net
    common = dict(bf16=bf16, accumulate=cfg.grad_accum, ema=parts.ema, names=active, clip=cfg.grad_clip)
    if parts.scaler is not None:  # (never the graph step: see build.graph_step_wanted)
        common["scaler"] = parts.scaler
    if parts.mixer is not None:  # the batch's augmentation and mixing run inside the step
        mine = {t for u in active for t in model.unit_targets[u]}
        common["prepare"] = parts.mixer.restricted([t for t in cfg.targets if t in mine])
    parts.step = GraphStep(model, optimizers, parts.objective, capture=device.type == "cuda", **common) \
        if parts.graph else EagerStep(net, optimizers, parts.objective, **common)
