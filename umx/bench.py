"""`umx-bench --shards URL [umx-train options]`: is this training run data-bound?

On the user's own shard set and options it measures, side by side in one process:

  loader      samples/s of the training DataLoader alone (per worker and in total,
              for `--nb-workers`), after the workers have started;
  step        the device step time without the loader: one pinned batch repeated
              through `Trainer.train_step` after a warm-up;
  end to end  training samples/s with the loader feeding the steps (a bounded
              number of steps), and `gpu_busy`, the fraction of that wall time the
              device steps alone would take (step time × steps / wall time);

then says whether the run is data-bound and what to change. Everything is a
library function (tests call them); `main` is a thin argparse layer that takes
umx-train's own options. The input scaler is left at its default (as with
`--debug`): it does not change the step time, and a shard set without
statistics for this STFT would otherwise need a statistics pass first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from .cli_util import run_cli
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
    if getattr(stream, "resident", None) is not None:
        pool, formula = 0, "no pool (the split is in device memory; batches are crop positions)"
    elif hasattr(stream, "pool_size") and stream._random_access():
        store = sum(frames) * channels * 2 * slots
        pool, formula = 0, (f"no pool (zarr: crops copied from memory-mapped chunks; up to the whole split, "
                            f"{store / 2**20:.0f} MiB, ends up mapped: page cache shared by every worker)")
    elif hasattr(stream, "pool_size"):
        track = max(frames, default=0) * channels * 2
        pool = min(stream.pool_size, len(frames)) * track * slots
        formula = f"pool_size {stream.pool_size} × largest track {track / 2**20:.1f} MiB × {slots} slots"
    else:
        pool = sum(frames) * channels * 2 * (1 + int(stream.slots.input_slot))
        formula = f"every file of the split ({pool / 2**20:.1f} MiB)"
    seq = stream.seq_len or max(frames, default=0)
    batch = stream.batch_size * slots * channels * seq * 2
    buffers = (2 + prefetch) * batch
    mapped = ""
    if hasattr(stream, "pool_size") and not stream._random_access() and getattr(stream, "resident", None) is None:
        from .shards.webdataset import MAPPED_SHARDS

        mapped = f" (and up to {MAPPED_SHARDS} shards kept mapped: page cache, shared by every worker)"
    return {"pool_bytes": pool, "batch_bytes": batch, "batch_buffers_bytes": buffers, "budget_bytes": pool + buffers,
            "formula": f"{formula} + {2 + prefetch} batches × {batch / 2**20:.1f} MiB{mapped}"}


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
    return {"step_ms": 1000 * step_s, "step_ms_mean": 1000 * float(np.mean(times)), "step_batch": int(pcm.shape[0]),
            "device_samples_per_s": pcm.shape[0] / step_s, "steps": steps}


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
           "train_partial_batches": partial}
    if step_ms is not None:  # a fraction; above 1 only by measurement noise (kept in gpu_busy_raw)
        out["gpu_busy_raw"] = step_ms / 1000 * (n - warmup) / wall
        out["gpu_busy"] = min(1.0, out["gpu_busy_raw"])
    return out


# --- the verdict -------------------------------------------------------------------

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


def verdict(r: dict) -> tuple[bool, list[str]]:
    """(data-bound?, plain advice) from a result of `bench`."""
    dev, workers, cpus = r["device_kind"], r["nb_workers"], r["cpus"]
    need = r["device_samples_per_s"]
    have, per = r["loader_samples_per_s"], r["loader_samples_per_s_per_worker"]
    busy = r.get("gpu_busy", 1.0)
    advice = []
    # data-bound: the loader alone cannot keep up, or the device idles while the loader has
    # little headroom; an idle device with a loader far ahead of it is host overhead instead
    data_bound = have < need or (busy < 0.9 and have < 2 * need)
    if have < need:
        want = math.ceil(1.25 * need / per) if per > 0 else cpus
        advice.append(f"the loader delivers {have:.0f} samples/s with {workers} worker(s) but the {dev} could train "
                      f"{need:.0f}: the run is data-bound")
        if want <= max(1, cpus - 1):
            advice.append(f"use --nb-workers {want} (each worker gives about {per:.0f} samples/s; "
                          f"{cpus} CPU cores here)")
        else:
            advice.append(f"{want} workers would be needed at {per:.0f} samples/s each, more than the {cpus} cores "
                          f"here: use --nb-workers {max(1, cpus - 1)} and a machine with more cores per device, or "
                          "more crops per record read (--samples-per-track, if the recipe allows it)")
    elif busy < 0.9:
        advice.append(f"the loader alone keeps up ({have:.0f} ≥ {need:.0f} samples/s) but end to end the {dev} is "
                      f"busy only {100 * busy:.0f} % of the time")
        if workers == 0:
            advice.append("use --nb-workers ≥ 1: with 0 the same process reads the data and trains")
        elif dev == "cpu":
            advice.append(f"not the data: on the CPU the {workers} loader worker(s) take cores from the training "
                          f"threads ({cpus} cores here); that is the cost of training on a CPU")
        elif have < 2 * need:
            want = min(max(workers + 1, math.ceil(2 * need / per)), max(1, cpus - 1))
            advice.append(f"the loader has little headroom ({have / need:.1f}×): "
                          + (f"use --nb-workers {want} to hide its latency" if want > workers else
                             "and no core is left for more workers: a machine with more cores per device"))
        else:
            advice.append("not the data (the loader has ample headroom): host-side overhead per step — check that "
                          "the CPU is not shared, try --precision bf16 / tf32, a larger --batch-size")
    else:
        advice.append(f"compute-bound: the {dev} is busy {100 * busy:.0f} % of the time and the loader has "
                      f"{have / need:.1f}× the samples/s it needs")
        fewer = max(1, math.ceil(1.25 * need / per)) if per > 0 else workers
        if workers > 1 and fewer < workers:
            advice.append(f"fewer workers would do (about {fewer}), leaving cores and memory free")
    if dev == "GPU" and r.get("step_kind") == "eager" and r.get("seq_dur", 0) > 0:
        advice.append("the step runs eagerly (launch-bound for open-unmix's LSTMs): --cuda-graph auto captures it "
                      "as one CUDA graph (not under torchrun)")
    if r.get("train_partial_batches"):
        advice.append(f"{r['train_partial_batches']} of {r['train_steps']} batches were partial: each worker's share "
                      "of an epoch is not a multiple of --batch-size (a short epoch split over the workers), and a "
                      "partial batch is a whole step for fewer samples (uncaptured, for the CUDA-graph step): raise "
                      "--samples-per-track or use fewer workers")
    mem = r.get("pool", {})
    ram = r.get("ram_bytes", 0)
    if mem and ram and max(1, workers) * mem["budget_bytes"] > 0.5 * ram:
        advice.append(f"{max(1, workers)} worker(s) × {mem['budget_bytes'] / 2**30:.1f} GiB budget is more than half "
                      f"the {ram / 2**30:.0f} GiB of RAM: lower --pool-size or --nb-workers")
    io = r.get("loader_io", {})
    if io.get("misses"):
        advice.append(f"{io['misses']} shard(s) were fetched from remote storage during the measurement: give "
                      "--cache-dir a fast local disk and --cache-size at least the shard set's size, so later "
                      "epochs read the cache")
    return data_bound, advice


def bench(config, steps: int = 10, warmup: int = 2, loader_batches: int = 20) -> dict:
    """Measure loader, device step and end-to-end training for one TrainConfig."""
    from .shards.reader import add_metrics
    from .train import distributed
    from .train.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="umx-bench-") as tmp:
        cfg = dataclasses.replace(config, debug=True, output=tmp, trace=False, save_every=0, quiet=True,
                                  checkpoint=None)
        t = time.perf_counter()
        trainer = Trainer(cfg)
        setup_s = time.perf_counter() - t
        try:
            dev = trainer.device
            name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{_cpus()} CPU cores"
            r = {"device": f"{dev} ({name})", "device_kind": "GPU" if dev.type == "cuda" else "cpu",
                 "cpus": _cpus(), "ram_bytes": _ram(), "torch_threads": torch.get_num_threads(),
                 "shards": cfg.shards, "target": trainer.cfg.target, "batch_size": cfg.batch_size,
                 "seq_dur": cfg.seq_dur, "nb_workers": cfg.nb_workers, "pool_size": cfg.pool_size,
                 "samples_per_track": trainer.cfg.samples_per_track, "hidden_size": cfg.hidden_size,
                 "nfft": cfg.nfft, "precision": cfg.precision, "cuda_graph": cfg.cuda_graph, "setup_s": setup_s,
                 "device_cache_bytes": trainer.resident.nbytes if trainer.resident is not None else 0,
                 "pool": pool_budget(trainer.stream)}
            loader = measure_loader(trainer.stream, cfg.nb_workers, loader_batches, pin_memory=dev.type == "cuda")
            r.update(loader)
            r.update(measure_step(trainer, steps, warmup))
            r["step_kind"] = ("cuda graph" if trainer.step.captured else
                              "graph step, uncaptured" if hasattr(trainer.step, "graph") else "eager")
            r.update(measure_train(trainer, steps, warmup, r["step_ms"]))
            r["loader_io"] = add_metrics({}, trainer.reader.take_metrics())
        finally:
            distributed.teardown(trainer.dist)
    r["data_bound"], r["advice"] = verdict(r)
    return r


def memory_line(wm: dict, budget: dict) -> str:
    """One line: what a loader process held, against its budget."""
    mb = 2**20
    return (f"loader process peak RSS {wm['peak_rss'] / mb:.0f} MiB, grown {wm['grown_rss'] / mb:.0f} MiB over its start "
            f"(batch buffers {wm['grown_shmem'] / mb:.0f}, mapped shard pages {wm['grown_file'] / mb:.0f}, heap "
            f"{wm['grown_anon'] / mb:.0f}); budget {budget['budget_bytes'] / mb:.0f} MiB = {budget['formula']}")


def report(r: dict) -> str:
    """The human-readable summary of a `bench` result."""
    wm = r["worker_memory"]
    who = f"{r['nb_workers']} worker(s)" if r["nb_workers"] else "in-process (--nb-workers 0)"
    lines = [
        f"umx-bench on {r['device']}: {r['shards']} target '{r['target']}', batch {r['batch_size']} × "
        f"{r['seq_dur']} s, hidden {r['hidden_size']}, nfft {r['nfft']}, {r['precision']}",
        f"  loader      {r['loader_samples_per_s']:8.1f} samples/s total, {r['loader_samples_per_s_per_worker']:.1f} "
        f"per worker ({who}; first batch after {r['loader_first_batch_s']:.2f} s)",
        f"  step        {r['step_ms']:8.1f} ms per batch of {r['step_batch']} on the device, without the loader "
        f"(= {r['device_samples_per_s']:.1f} samples/s; {r.get('step_kind', 'eager')})",
        f"  end to end  {r['train_samples_per_s']:8.1f} samples/s training with the loader; the device steps take "
        f"{100 * r['gpu_busy']:.0f} % of the wall time",
        f"  memory      {memory_line(wm, r['pool'])}",
        ("DATA-BOUND" if r["data_bound"] else "not data-bound") + ":",
    ]
    lines += [f"  - {a}" for a in r["advice"]]
    return "\n".join(lines)


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


# --- CLI ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from .train.cli import build_parser as train_parser

    p = argparse.ArgumentParser(
        prog="umx-bench", parents=[train_parser()], conflict_handler="resolve",
        description="Measure a training run (loader samples/s, device step time, end-to-end samples/s) on your "
                    "shard set and umx-train options, and say whether it is data-bound.")
    b = p.add_argument_group("benchmark")
    b.add_argument("--steps", type=int, default=10, help="timed device steps, with and without the loader")
    b.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, worker start)")
    b.add_argument("--loader-batches", type=int, default=20, help="timed batches of the loader alone")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    return p


def _main(argv: list[str] | None) -> int:
    from .train.cli import TRAIN_FIELDS, resolve_shards
    from .train.trainer import TrainConfig

    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.loader_batches < 1 or args.warmup < 0:
        raise UmxError("--steps and --loader-batches must be ≥ 1, --warmup ≥ 0")
    args.shards = resolve_shards(args)
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in TRAIN_FIELDS})
    r = bench(config, args.steps, args.warmup, args.loader_batches)
    print(json.dumps(r, indent=2, default=str) if args.json else report(r))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
