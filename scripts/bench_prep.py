#!/usr/bin/env python
"""Prep throughput per core: umx-prep with --workers 1, in audio-seconds per wall second.

    python scripts/bench_prep.py [--work DIR] [--json] [--quick]

Audio-seconds count every source of every prepared track (4 per track; a musdb mixture
is not counted), so "×real time" is audio-seconds / wall seconds. Two inputs, written
(or reused, in --work) from the same synthetic songs:

  wav    trackfolder_fix, PCM16 wav folders (the files are in the page cache)
  stems  musdb with MUSDB18's .stem.mp4 files (is_wav=False, decoded with ffmpeg)

Beside each prep run, in turns and in this one process, the same files are only decoded
(soundfile, or stempeg/ffmpeg for stems: the floor of any prep), so the report also gives
prep speed as a fraction of bare decoding, which a busy shared machine disturbs less than
the absolute figure. One torch thread, --workers 1: every figure is per core.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from umx import audio, synth
from umx.prep import prepare

FIX = {"target_file": "vocals.wav", "interferer_files": ["bass.wav", "drums.wav", "other.wav"]}


def make_data(work: Path, tracks: int, duration: float, seed: int = 1) -> dict:
    key = f"{tracks}-{duration}-{seed}"
    marker = work / "data.json"
    paths = {"wav": work / "wav", "stems": work / "stems"}
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        return paths
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(paths["wav"], ignore_errors=True)
    shutil.rmtree(paths["stems"], ignore_errors=True)
    synth.write_layout("trackfolder_fix", paths["wav"], n_train=tracks, n_valid=1, duration=duration, seed=seed)
    synth.write_layout("musdb", paths["stems"], n_train=tracks, n_valid=1, duration=duration, seed=seed,
                       as_stems=True)
    marker.write_text(json.dumps({"key": key}))
    return paths


def audio_seconds(manifest: dict) -> float:
    rate = manifest["sample_rate"]
    return sum(f * len(names) for s in manifest["splits"].values() for e in s["shards"]
               for f, names in zip(e["track_frames"], e["track_sources"])) / rate


def prep_once(kind: str, root: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    opts = FIX if kind == "wav" else {"is_wav": False}
    layout = "trackfolder_fix" if kind == "wav" else "musdb"
    t = time.perf_counter()
    manifest = prepare(layout, root, out, workers=1, progress=False, overwrite=True, **opts)
    wall = time.perf_counter() - t
    secs = audio_seconds(manifest)
    return {"wall_s": wall, "audio_s": secs, "x_realtime": secs / wall}


def decode_once(kind: str, root: Path) -> dict:
    """Only decode what prep reads: every wav file / every .stem.mp4."""
    files = sorted(root.rglob("*.wav")) if kind == "wav" else sorted(root.rglob("*.stem.mp4"))
    t, secs = time.perf_counter(), 0.0
    for f in files:
        if kind == "wav":
            data, rate = audio.read(f, "float32")
            secs += data.shape[-1] / rate
        else:
            stems, rate = audio.read_stems(f)
            secs += (stems.shape[0] - 1) * stems.shape[-1] / rate  # sources, not the mixture stream
    wall = time.perf_counter() - t
    return {"wall_s": wall, "audio_s": secs, "x_realtime": secs / wall}


def run(args) -> dict:
    torch.set_num_threads(1)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="umx-bench-prep-"))
    t = time.perf_counter()
    paths = make_data(work, args.tracks, args.duration)
    setup_s = time.perf_counter() - t
    kinds = ["wav"] + (["stems"] if args.stems else [])
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for kind in kinds:
            runs.setdefault(f"decode_{kind}", []).append(decode_once(kind, paths[kind]))
            runs.setdefault(f"prep_{kind}", []).append(prep_once(kind, paths[kind], work / f"shards-{kind}"))
    med = {k: statistics.median(r["x_realtime"] for r in v) for k, v in runs.items()}
    out = {"machine": {"cpus": len(__import__("os").sched_getaffinity(0)), "torch_threads": 1, "workers": 1},
           "setup": {"tracks": args.tracks, "duration_s": args.duration, "repeats": args.repeats, "work": str(work),
                     "data_setup_s": setup_s},
           "x_realtime_per_core": med, "runs": runs,
           "ratios": {f"prep_{k} / decode_{k}": med[f"prep_{k}"] / med[f"decode_{k}"] for k in kinds},
           "targets": {"prep >= 100x real time per core, PCM16 wav": med["prep_wav"] >= 100}}
    return out


def table(r: dict) -> str:
    s = r["setup"]
    lines = [f"prep benchmark: {s['tracks']} tracks of ~{s['duration_s']:.0f} s (+1 valid/test), --workers 1, "
             f"1 torch thread, {r['machine']['cpus']} CPU cores; median of {s['repeats']}",
             f"  {'':<44}{'× real time per core':>22}"]
    names = {"prep_wav": "umx-prep, PCM16 wav (trackfolder_fix)", "decode_wav": "decode only, PCM16 wav (soundfile)",
             "prep_stems": "umx-prep, .stem.mp4 (musdb --no-is-wav)", "decode_stems": "decode only, .stem.mp4 (ffmpeg)"}
    for k, v in r["x_realtime_per_core"].items():
        lines.append(f"  {names[k]:<44}{v:>22.1f}")
    lines.append("  ratios (prep speed / bare decoding speed):")
    lines += [f"  {k:<44}{v:>21.2f}×" for k, v in r["ratios"].items()]
    lines += [f"target {'holds' if ok else 'MISSED'}: {name}" for name, ok in r["targets"].items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", help="folder for the data (reused when it matches; default: a temp dir)")
    p.add_argument("--tracks", type=int, default=8, help="train tracks (default 8)")
    p.add_argument("--duration", type=float, default=30.0, help="mean track length in s (default 30)")
    p.add_argument("--repeats", type=int, default=3, help="measure this often, in turns; report medians")
    p.add_argument("--stems", action=argparse.BooleanOptionalAction, default=True,
                   help="also the .stem.mp4 input (default on)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny data; figures meaningless)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.tracks, args.duration, args.repeats = 2, 2.0, 1
    r = run(args)
    print(json.dumps(r, indent=2) if args.json else table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
