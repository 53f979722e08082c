"""What `umx-bench --shards URL [umx-train options]` measures: is this training run data-bound?

On the user's own shard set and options it measures, side by side in one process:

  loader      samples/s of the training DataLoader alone (per worker and in total,
              for `--nb-workers`), after the workers have started;
  step        the device step time without the loader: one pinned batch repeated
              through `Trainer.train_step` after a warm-up;
  end to end  training samples/s with the loader feeding the steps (a bounded
              number of steps), and `gpu_busy`, the fraction of that wall time the
              device steps alone would take (step time × steps / wall time);

and bench_advice.py then says whether the run is data-bound and what to change. Everything
is a library function (tests call them); bench_cli.py is the thin click layer that takes
umx-train's own options. The input scaler is left at its default (as with
`--debug`): it does not change the step time, and a shard set without
statistics for this STFT would otherwise need a statistics pass first.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from . import bench_advice
from .errors import UmxError

PREFETCH = 4  # Trainer._loader's prefetch_factor with workers


# --- memory -----------------------------------------------------------------------

def memory() -> dict:
    """This process's memory in bytes (Linux /proc/self/status; empty elsewhere): resident
    now (`rss`) and at its peak (`peak_rss`), and what the resident pages are: `anon`
    (heap, in-process batches), `file` (memory-mapped shards: page cache, shared with
    every process that maps them) and `shmem` (shared-memory batch buffers of a worker)."""
    names = {"VmRSS": "rss", "VmHWM": "peak_rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in names:
                    out[names[key]] = out.get(names[key], 0) + int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


def pool_budget(stream, prefetch: int = PREFETCH) -> dict:
    """What one loader worker may hold, in bytes: its pool of tracks
    (pool_size × largest track bytes × slots; a source-file stream holds its whole split)
    plus batch buffers (`prefetch` waiting to be taken, one being filled, one the trainer
    is using). The pool's tracks are memory-mapped shards: of them only the pages crops
    were copied from are resident, and those are page cache, shared between workers."""
    shards = stream.manifest.shards(stream.split)
    channels = stream.manifest.channels
    slots = len(stream.slots.order[:1]) + stream.slots.n_interferers + int(stream.slots.input_slot)
    frames = [f for e in shards for f in e.track_frames]
    pool_size = 0 if stream.elastic else getattr(stream, "pool_size", 0)  # the global plan keeps no pool
    pool, formula = stream.source.held(frames, channels, pool_size, slots)
    seq = stream.seq_len or max(frames, default=0)
    batch = stream.batch_size * slots * channels * seq * 2
    buffers = (2 + prefetch) * batch
    return {"pool_bytes": pool, "batch_bytes": batch, "batch_buffers_bytes": buffers, "budget_bytes": pool + buffers,
            "formula": f"{formula} + {2 + prefetch} batches × {batch / 2**20:.1f} MiB"}


# --- loader -----------------------------------------------------------------------

class Epochs(IterableDataset):
    """A training stream over consecutive epochs (each worker keeps its own share of
    every epoch), so a bounded measurement never waits on workers restarting; each batch's
    `io` carries the producing process's memory (`bench_memory`) and its pid."""

    def __init__(self, stream, first_epoch: int = 1, max_epochs: int = 10_000):
        self.stream, self.first_epoch, self.max_epochs = stream, first_epoch, max_epochs

    def __iter__(self) -> Iterator:
        start = {f"start_{k}": v for k, v in memory().items()}
        for epoch in range(self.first_epoch, self.first_epoch + self.max_epochs):
            self.stream.set_epoch(epoch)
            produced = False
            for batch in self.stream:
                produced = True
                batch.io = {**(batch.io or {}), "bench_memory": {**memory(), **start, "pid": os.getpid()}}
                yield batch
            if not produced:  # this worker has no share of an epoch: it is done
                return


def make_loader(stream, nb_workers: int, pin_memory: bool = False, first_epoch: int = 1) -> DataLoader:
    """The DataLoader Trainer._loader builds, over consecutive epochs of `stream`."""
    return DataLoader(Epochs(stream, first_epoch), batch_size=None, num_workers=nb_workers, pin_memory=pin_memory,
                      prefetch_factor=PREFETCH if nb_workers else None)


KINDS = ("rss", "anon", "file", "shmem")


def _worker_memory(batches_io: list[dict]) -> dict:
    """Per producing process (a worker, or this process), from the batches' `bench_memory`:
    peak RSS, and how much each kind of resident memory grew over the process's start
    (`grown_anon`: private heap; `grown_file`: mapped shard pages; `grown_shmem`: batch
    buffers). The top level holds the largest of each over the processes."""
    per: dict[int, dict] = {}
    for io in batches_io:
        m = (io or {}).get("bench_memory")
        if m:
            p = per.setdefault(m["pid"], {})
            p["peak_rss"] = max(p.get("peak_rss", 0), m.get("peak_rss", 0))
            p["start_rss"] = m.get("start_rss", 0)
            for k in KINDS:
                p[f"grown_{k}"] = max(p.get(f"grown_{k}", 0), m.get(k, 0) - m.get(f"start_{k}", 0))
    out = {"workers": list(per.values())}
    for k in ("peak_rss", "start_rss", *(f"grown_{k}" for k in KINDS)):
        out[k] = max((p.get(k, 0) for p in per.values()), default=0)
    return out


def measure_loader(stream, nb_workers: int = 0, batches: int = 20, warmup: int | None = None,
                   pin_memory: bool = False) -> dict:
    """Samples/s of the DataLoader alone. The first `warmup` batches (default: one per
    worker, at least one) are left out of the rate: they include the workers' start."""
    warmup = max(1, nb_workers) if warmup is None else warmup
    loader = make_loader(stream, nb_workers, pin_memory)
    t0 = time.perf_counter()
    it = iter(loader)
    first_s, samples, ios, start, n = None, 0, [], None, 0
    try:
        for n, batch in enumerate(it, start=1):
            if first_s is None:
                first_s = time.perf_counter() - t0
            ios.append(batch.io)
            if n == warmup:
                start = time.perf_counter()
            elif n > warmup:
                samples += len(batch.track_ids)
            if n >= warmup + batches:
                break
        end = time.perf_counter()
    finally:
        del it
    if start is None or samples == 0:
        raise UmxError(f"the loader gave only {n} batch(es): too few samples for a measurement")
    total = samples / (end - start)
    return {"loader_samples_per_s": total, "loader_samples_per_s_per_worker": total / max(1, nb_workers),
            "loader_first_batch_s": first_s, "loader_batches": n - warmup, "loader_samples": samples,
            "nb_workers": nb_workers, "worker_memory": _worker_memory(ios)}


# --- device step and end to end ------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_batch(trainer) -> torch.Tensor:
    """One training batch on the device (pinned on its way there where it is a GPU)."""
    trainer.stream.set_epoch(1)
    batch = next(iter(trainer.stream))
    return trainer.batch_audio(batch.pin_memory() if trainer.device.type == "cuda" else batch)


def measure_step(trainer, steps: int = 10, warmup: int = 2, pcm: torch.Tensor | None = None) -> dict:
    """Device step time without the loader: one batch repeated through `train_step`."""
    pcm = one_batch(trainer) if pcm is None else pcm
    trainer.model.train()
    for i in range(warmup):
        trainer.train_step(pcm, 1, i)
    times = []
    for i in range(steps):
        _sync(trainer.device)
        t = time.perf_counter()
        trainer.train_step(pcm, 1, warmup + i)
        _sync(trainer.device)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    n_targets = len(trainer.targets_of(trainer.active))
    return {"step_ms": 1000 * step_s, "step_ms_mean": 1000 * float(np.mean(times)), "step_batch": int(pcm.shape[0]),
            "device_samples_per_s": pcm.shape[0] / step_s, "steps": steps,
            "device_target_samples_per_s": n_targets * pcm.shape[0] / step_s}


def measure_augmentations(trainer, pcm: torch.Tensor, repeats: int = 5) -> list[dict]:
    """Each device augmentation's time on one batch (median of `repeats`), in the order the step runs
    them: what a user pays for each (the step time includes them all)."""
    from .train import sampling
    from .train.augment import INT16_SCALE

    aug, device = trainer.augment, trainer.device
    out_len = trainer.data.out_len if aug.changes_length else None
    rows = []
    wav = pcm.float() / INT16_SCALE
    if aug.changes_length:
        wav = wav[..., :aug.input_frames(out_len)]
    for name, fn in aug.stages(out_len):
        times = []
        for r in range(repeats + 1):
            gen = sampling.torch_generator(0, sampling.AUGMENT, 1, r, device=device)
            _sync(device)
            t = time.perf_counter()
            result = fn(wav, gen)
            _sync(device)
            if r:  # the first: warm-up
                times.append(time.perf_counter() - t)
        rows.append({"augmentation": name, "ms": 1000 * float(np.median(times))})
        wav = result
    return rows


def measure_train(trainer, steps: int = 10, warmup: int = 2, step_ms: float | None = None) -> dict:
    """End-to-end training samples/s with the loader feeding the steps (as `train_epoch`
    does: batch → device, non_blocking → train_step), after `warmup` steps."""
    cfg, device = trainer.cfg, trainer.device
    trainer.model.train()
    loader = make_loader(trainer.stream, cfg.nb_workers, pin_memory=device.type == "cuda")
    it = iter(loader)
    samples, start, n, partial = 0, time.perf_counter() if warmup == 0 else None, 0, 0
    try:
        for n, batch in enumerate(it, start=1):
            pcm = trainer.batch_audio(batch)
            trainer.train_step(pcm, 1, n)
            if n == warmup:
                _sync(device)
                start = time.perf_counter()
            elif n > warmup:
                samples += pcm.shape[0]
                partial += pcm.shape[0] < cfg.batch_size
            if n >= warmup + steps:
                break
        _sync(device)
        end = time.perf_counter()
    finally:
        del it
    if start is None or samples == 0:
        raise UmxError(f"the loader gave only {n} batch(es): too few samples for a measurement")
    wall = end - start
    out = {"train_samples_per_s": samples / wall, "train_steps": n - warmup, "train_wall_s": wall,
           "train_partial_batches": partial,
           # a joint run trains every target on each sample: the figure to compare with N single runs
           "train_target_samples_per_s": len(trainer.targets_of(trainer.active)) * samples / wall}
    if step_ms is not None:  # a fraction; above 1 only by measurement noise (kept in gpu_busy_raw)
        out["gpu_busy_raw"] = step_ms / 1000 * (n - warmup) / wall
        out["gpu_busy"] = min(1.0, out["gpu_busy_raw"])
    return out


# --- the machine, and the whole measurement ------------------------------------------

def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def bench(config, steps: int = 10, warmup: int = 2, loader_batches: int = 20) -> dict:
    """Measure loader, device step and end-to-end training for one TrainConfig."""
    from .shards.reader import add_metrics
    from .train import distributed
    from .train import build_trainer

    config.check()  # the options as given, refused as umx-train refuses them (some are replaced below)
    with tempfile.TemporaryDirectory(prefix="umx-bench-") as tmp:
        cfg = dataclasses.replace(config, debug=True, output=tmp, trace=False, save_every=0, quiet=True,
                                  checkpoint=None)
        t = time.perf_counter()
        trainer = build_trainer(cfg)
        setup_s = time.perf_counter() - t
        try:
            dev = trainer.device
            name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{_cpus()} CPU cores"
            r = {"device": f"{dev} ({name})", "device_kind": "GPU" if dev.type == "cuda" else "cpu",
                 "cpus": _cpus(), "ram_bytes": _ram(), "torch_threads": torch.get_num_threads(),
                 "shards": cfg.shards, "target": trainer.cfg.target, "targets": trainer.cfg.targets,
                 "arch": cfg.arch, "arch_options": dataclasses.asdict(trainer.kind.options),
                 "loss": cfg.loss, "bridge": cfg.bridge, "batch_size": cfg.batch_size,
                 "seq_dur": cfg.seq_dur, "nb_workers": cfg.nb_workers, "pool_size": cfg.pool_size,
                 "samples_per_track": trainer.cfg.samples_per_track, "hidden_size": cfg.hidden_size,
                 "nfft": cfg.nfft, "precision": cfg.precision, "cuda_graph": cfg.cuda_graph, "setup_s": setup_s,
                 "device_cache_bytes": trainer.resident.nbytes if trainer.resident is not None else 0,
                 "pool": pool_budget(trainer.stream)}
            loader = measure_loader(trainer.stream, cfg.nb_workers, loader_batches, pin_memory=dev.type == "cuda")
            r.update(loader)
            r.update(measure_step(trainer, steps, warmup))
            r["augmentations"] = measure_augmentations(trainer, one_batch(trainer))
            for row in r["augmentations"]:
                row["share_of_step"] = row["ms"] / r["step_ms"]
            r["step_kind"] = ("cuda graph" if trainer.step.captured else
                              "graph step, uncaptured" if trainer.parts.graph else "eager")
            r.update(measure_train(trainer, steps, warmup, r["step_ms"]))
            r["loader_io"] = add_metrics({}, trainer.reader.take_metrics())
        finally:
            distributed.teardown(trainer.dist)
    r["data_bound"], r["advice"] = bench_advice.verdict(r)
    return r


# --- time to the first training step --------------------------------------------------

_FIRST_STEP = """
import os, sys, time
from umx.train import trainer as _t
_step = _t.Trainer.train_step
def _first(self, *a, **k):
    print(f"UMX_BENCH_FIRST_STEP {time.time()!r}", flush=True)
    loss = _step(self, *a, **k)
    print(f"UMX_BENCH_FIRST_STEP_DONE {time.time()!r}", flush=True)
    os._exit(0)
_t.Trainer.train_step = _first
from umx.train.cli import main
sys.exit(main(sys.argv[1:]))
"""


def time_to_first_step(train_args: list[str], timeout: float = 600) -> dict:
    """Seconds from starting `umx-train TRAIN_ARGS` (a fresh interpreter) until its first
    training step starts and ends; the process stops after that step."""
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", _FIRST_STEP, *train_args], capture_output=True, text=True,
                       timeout=timeout)
    marks = dict(line.split() for line in p.stdout.splitlines() if line.startswith("UMX_BENCH_FIRST_STEP"))
    if "UMX_BENCH_FIRST_STEP" not in marks:
        raise UmxError(f"umx-train {' '.join(train_args)} gave no training step (exit {p.returncode}):\n"
                       f"{p.stderr[-2000:]}")
    out = {"first_step_start_s": float(marks["UMX_BENCH_FIRST_STEP"]) - t0}
    if "UMX_BENCH_FIRST_STEP_DONE" in marks:
        out["first_step_done_s"] = float(marks["UMX_BENCH_FIRST_STEP_DONE"]) - t0
    return out
