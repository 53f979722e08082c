#!/usr/bin/env python
"""Loader throughput: umx's TrainStream against open-unmix 1.3.0's datasets, same data, same run.

    python scripts/bench_loader.py [--work DIR] [--json] [--quick]

Writes (or reuses, in --work) a synthetic data set twice — as trackfolder_fix PCM16 wav
folders and as a MUSDB18-HQ root with the same train tracks — prepares both as shard sets,
then measures in this one process, in turns, `--repeats` times (the median is reported):

  umx         TrainStream over the shards: int16 crops of --seq-dur s, batch --batch-size,
              4 sources, pool 8; in-process and in one DataLoader worker. trackfolder_fix
              shards with 1 crop per track and epoch (open-unmix's default for that layout),
              musdb shards with 64 (open-unmix's musdb default). Random track mixing is the
              device's Remix in umx, so it is not part of the loader.
  open-unmix  FixedSourcesTrackFolderDataset (random chunks, random_track_mix, gain +
              channelswap; wav files in the page cache), in-process and in one worker with
              its default collate; MUSDBDataset(is_wav=True) (musdb's reader starts ffmpeg
              for every source of every crop), in-process, only --musdb-samples samples.

In-process figures run with one torch thread, so every figure is per core. The machine
may be shared: compare the ratios, which are measured side by side. Also reported: a
worker's memory against its pool budget, and the time from starting umx-train to its
first training step on the prepared set (a fresh interpreter; statistics come from the
manifest).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # openunmix_compat: open-unmix imports torchaudio's removed API

from umx import bench, bench_advice, synth  # noqa: E402
from umx.prep import prepare  # noqa: E402
from umx.shards import manifest as mf  # noqa: E402
from umx.train.streams import TrainStream  # noqa: E402

FIX = {"target_file": "vocals.wav", "interferer_files": ["bass.wav", "drums.wav", "other.wav"]}


def make_data(work: Path, tracks: int, duration: float, seed: int = 0, musdb: bool = True) -> dict:
    """trackfolder_fix and (unless `musdb=False`) musdb roots with the same train tracks, and their
    shard sets (kept in `work`). The musdb package needs ffmpeg on the PATH even for wav folders."""
    key = f"{tracks}-{duration}-{seed}"
    paths = {"fix": work / "fix", "musdb": work / "musdb", "fix_shards": work / "fix-shards",
             "musdb_shards": work / "musdb-shards", "fix_zarr": work / "fix-zarr"}
    workers = os.cpu_count() or 1
    for name, layout, opts in [("fix", "trackfolder_fix", FIX), ("musdb", "musdb", {})][: 2 if musdb else 1]:
        marker = work / f"data-{name}.json"
        if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
            continue
        work.mkdir(parents=True, exist_ok=True)
        synth.write_layout(layout, paths[name], n_train=tracks, n_valid=1, duration=duration, seed=seed)
        prepare(layout, paths[name], paths[f"{name}_shards"], workers=workers, progress=False, overwrite=True,
                **opts)
        marker.write_text(json.dumps({"key": key}))
    marker = work / "data-fix-zarr.json"  # the trackfolder_fix data once more, as a zarr store
    if not (marker.is_file() and json.loads(marker.read_text()).get("key") == key):
        prepare("trackfolder_fix", paths["fix"], paths["fix_zarr"], workers=workers, progress=False, overwrite=True,
                format="zarr", **FIX)
        marker.write_text(json.dumps({"key": key}))
    return paths


def CONTENDERS(paths: dict) -> list[tuple[str, Path, int]]:
    """(label, shard set, crops per track) of every umx loader measured: WebDataset and zarr with
    open-unmix's trackfolder_fix default (1 crop per track) and with 64, and the musdb set."""
    return [("fix", paths["fix_shards"], 1), ("fix_zarr", paths["fix_zarr"], 1),
            ("fix64", paths["fix_shards"], 64), ("fix64_zarr", paths["fix_zarr"], 64),
            ("musdb", paths["musdb_shards"], 64)]


# --- umx ----------------------------------------------------------------------------

def umx_stream(shards: Path, seq: int, batch: int, spt: int) -> TrainStream:
    return TrainStream(mf.load(shards), "vocals", seq, batch, samples_per_track=spt, pool_size=8, seed=42)


def umx_rate(shards: Path, seq: int, batch: int, spt: int, workers: int, batches: int) -> dict:
    r = bench.measure_loader(umx_stream(shards, seq, batch, spt), workers, batches)
    return {"samples_per_s": r["loader_samples_per_s"], "memory": r["worker_memory"]}


# --- open-unmix ---------------------------------------------------------------------

def _openunmix_data():
    import openunmix_compat

    openunmix_compat.register()
    from openunmix import data

    return data


def fixed_dataset(root: Path, seq_dur: float):
    data = _openunmix_data()
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm over the track folders
        return data.FixedSourcesTrackFolderDataset(
            str(root), split="train", target_file=FIX["target_file"], interferer_files=FIX["interferer_files"],
            seq_duration=seq_dur, random_chunks=True, random_track_mix=True,
            source_augmentations=data.aug_from_str(["gain", "channelswap"]), seed=42)


def musdb_dataset(root: Path, seq_dur: float):
    data = _openunmix_data()
    return data.MUSDBDataset(root=str(root), is_wav=True, subsets="train", split="train", seq_duration=seq_dur,
                             samples_per_track=64, random_track_mix=True,
                             source_augmentations=data.aug_from_str(["gain", "channelswap"]), seed=42)


def inprocess_rate(dataset, samples: int, seed: int = 0) -> float:
    """Samples/s of `dataset[i]` for random i, in this process (after one untimed sample)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(dataset), size=samples + 1)
    dataset[int(idx[0])]
    t = time.perf_counter()
    for i in idx[1:]:
        dataset[int(i)]
    return samples / (time.perf_counter() - t)


def worker_rate(dataset, batch: int, batches: int) -> float:
    """Samples/s of a one-worker DataLoader (default collate, as open-unmix's train.py),
    after the first batch (the worker's start)."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=batch * (batches + 1))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=1, prefetch_factor=4)
    it = iter(loader)
    next(it)
    t, n = time.perf_counter(), 0
    for x, _ in it:
        n += x.shape[0]
    return n / (time.perf_counter() - t)


# --- the run --------------------------------------------------------------------------

def run(args) -> dict:
    torch.set_num_threads(1)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="umx-bench-loader-"))
    t = time.perf_counter()
    paths = make_data(work, args.tracks, args.duration)
    setup_s = time.perf_counter() - t
    seq = int(args.seq_dur * 44100)
    fixed, musdb = fixed_dataset(paths["fix"], args.seq_dur), musdb_dataset(paths["musdb"], args.seq_dur)
    runs: dict[str, list] = {}
    mem: dict[str, dict] = {}

    def add(name, value):
        runs.setdefault(name, []).append(value)

    for rep in range(args.repeats):  # in turns, so a disturbance hits every contender alike
        for label, shards, spt in CONTENDERS(paths):
            add(f"umx_{label}_inprocess", umx_rate(shards, seq, args.batch_size, spt, 0, args.batches)["samples_per_s"])
            r = umx_rate(shards, seq, args.batch_size, spt, 1, args.batches)
            add(f"umx_{label}_worker", r["samples_per_s"])
            mem[label] = r["memory"]
        add("fixed_inprocess", inprocess_rate(fixed, args.fixed_samples, rep))
        add("fixed_worker", worker_rate(fixed, args.batch_size, max(1, args.fixed_samples // args.batch_size)))
        add("musdb_inprocess", inprocess_rate(musdb, args.musdb_samples, rep))
    med = {k: statistics.median(v) for k, v in runs.items()}
    pairs = [("umx_fix_worker", "fixed_worker"), ("umx_fix_inprocess", "fixed_inprocess"),
             ("umx_musdb_worker", "musdb_inprocess"), ("umx_musdb_inprocess", "musdb_inprocess"),
             ("umx_fix_worker", "musdb_inprocess"), ("umx_fix_zarr_worker", "fixed_worker"),
             ("umx_fix_zarr_inprocess", "fixed_inprocess"), ("umx_fix_zarr_worker", "umx_fix_worker"),
             ("umx_fix64_zarr_worker", "umx_fix64_worker")]
    # each repeat measured both sides back to back: the median of the per-repeat ratios
    ratios = {f"{a} / {b}": statistics.median(x / y for x, y in zip(runs[a], runs[b])) for a, b in pairs}
    budgets = {}
    for label, shards, spt in CONTENDERS(paths):
        budgets[label] = bench.pool_budget(umx_stream(shards, seq, args.batch_size, spt))
    out = {"machine": {"cpus": bench._cpus(), "torch_threads": 1, "device": "cpu"},
           "setup": {"tracks": args.tracks, "duration_s": args.duration, "seq_dur": args.seq_dur,
                     "batch_size": args.batch_size, "repeats": args.repeats, "work": str(work),
                     "data_setup_s": setup_s},
           "samples_per_s": med, "runs": runs, "ratios": ratios,
           "targets": {"umx one worker >= 10x FixedSourcesTrackFolderDataset":
                       ratios["umx_fix_worker / fixed_worker"] >= 10,
                       "umx one worker >= 300x MUSDBDataset(is_wav)":
                       ratios["umx_musdb_worker / musdb_inprocess"] >= 300,
                       "umx zarr, one worker >= 5x FixedSourcesTrackFolderDataset":
                       ratios["umx_fix_zarr_worker / fixed_worker"] >= 5},
           "memory": {label: {"worker": mem[label], "budget": budgets[label]} for label in mem}}
    if args.first_step:
        train_args = ["--shards", str(paths["fix_shards"]), "--epochs", "1", "--quiet",
                      "--output", str(work / "first-step-model"), *args.train_args]
        first = [bench.time_to_first_step(train_args) for _ in range(args.repeats)]
        out["first_step"] = {"args": train_args, "runs": first,
                             "start_s": statistics.median(f["first_step_start_s"] for f in first),
                             "done_s": statistics.median(f.get("first_step_done_s", float("nan")) for f in first)}
        out["targets"]["umx-train start to first step < 10 s"] = out["first_step"]["start_s"] < 10
    return out


def table(r: dict) -> str:
    s, m, rt = r["samples_per_s"], r["setup"], r["ratios"]
    lines = [f"loader benchmark: {m['tracks']} tracks of ~{m['duration_s']:.0f} s, {m['seq_dur']} s crops, "
             f"batch {m['batch_size']}, 4 sources; {r['machine']['cpus']} CPU cores, 1 torch thread; "
             f"median of {m['repeats']}",
             f"  {'loader':<70}{'samples/s per core':>20}"]
    rows = [("umx TrainStream, trackfolder_fix shards, 1 crop/track, 1 worker", "umx_fix_worker"),
            ("umx TrainStream, trackfolder_fix shards, 1 crop/track, in-process", "umx_fix_inprocess"),
            ("umx TrainStream, trackfolder_fix zarr store (random access), 1 worker", "umx_fix_zarr_worker"),
            ("umx TrainStream, trackfolder_fix zarr store (random access), in-process", "umx_fix_zarr_inprocess"),
            ("umx TrainStream, trackfolder_fix shards, 64 crops/track, 1 worker", "umx_fix64_worker"),
            ("umx TrainStream, trackfolder_fix zarr store, 64 crops/track, 1 worker", "umx_fix64_zarr_worker"),
            ("umx TrainStream, musdb shards, 64 crops/track, 1 worker", "umx_musdb_worker"),
            ("umx TrainStream, musdb shards, 64 crops/track, in-process", "umx_musdb_inprocess"),
            ("open-unmix FixedSourcesTrackFolderDataset, 1 worker", "fixed_worker"),
            ("open-unmix FixedSourcesTrackFolderDataset, in-process", "fixed_inprocess"),
            ("open-unmix MUSDBDataset(is_wav=True), in-process", "musdb_inprocess")]
    lines += [f"  {name:<70}{s[key]:>20.1f}" for name, key in rows]
    lines.append("ratios (median over repeats of each repeat's ratio):")
    lines += [f"  {k:<70}{v:>19.1f}×" for k, v in rt.items()]
    for label, mm in r["memory"].items():
        lines.append(f"memory ({label} shards, 1 worker): {bench_advice.memory_line(mm['worker'], mm['budget'])}")
    if "first_step" in r:
        f = r["first_step"]
        lines.append(f"umx-train start → first step starts {f['start_s']:.1f} s, done {f['done_s']:.1f} s "
                     f"(umx-train {' '.join(f['args'])})")
    lines += [f"target {'holds' if ok else 'MISSED'}: {name}" for name, ok in r["targets"].items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", help="folder for the data and shard sets (reused when it matches; default: a temp dir)")
    p.add_argument("--tracks", type=int, default=16, help="train tracks (default 16)")
    p.add_argument("--duration", type=float, default=20.0, help="mean track length in s (default 20)")
    p.add_argument("--seq-dur", type=float, default=6.0, help="crop length in s (default 6)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=20, help="timed umx batches per measurement (default 20)")
    p.add_argument("--fixed-samples", type=int, default=64, help="timed FixedSources samples (default 64)")
    p.add_argument("--musdb-samples", type=int, default=10, help="timed MUSDBDataset samples (default 10; ~2/s)")
    p.add_argument("--repeats", type=int, default=3, help="measure everything this often, in turns; report medians")
    p.add_argument("--first-step", action=argparse.BooleanOptionalAction, default=True,
                   help="also time umx-train's start to its first step (default on)")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="extra umx-train options for the first-step timing (last on the line)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny data; figures meaningless)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


QUICK = dict(tracks=3, duration=2.5, seq_dur=1.0, batch_size=4, batches=2, fixed_samples=4, musdb_samples=1,
             repeats=1)
QUICK_TRAIN = ["--seq-dur", "1", "--batch-size", "2", "--hidden-size", "16", "--nfft", "2048", "--nhop", "512",
               "--debug"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        args.train_args = args.train_args or QUICK_TRAIN
    r = run(args)
    print(json.dumps(r, indent=2, default=str) if args.json else table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
