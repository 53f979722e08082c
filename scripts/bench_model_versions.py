#!/usr/bin/env python
"""The training step and the separation of this checkout against another commit, side by side in one run.

    python scripts/bench_model_versions.py REF [--this COMMIT] [--rounds 3] [--steps 10] [--seconds 30]

The loader's counterpart is `bench_versions.py`; this one times what the model seam touches. Each
version runs in a fresh interpreter whose `umx` is that version's, alternating (A B A B …), on the
same shard set and the same model directory (prepared once, by this checkout: both versions read
the same formats):

- step: `umx-bench` (the version's own) on open-unmix's default recipe at a small batch, its median
  device step (ms) and end-to-end training samples/s;
- separate: `umx-separate` (the version's own command line, in-process after its imports) on a
  `--seconds` track with an open-unmix model directory of umxhq's sizes (random weights), wall
  seconds.

Reports the median of the rounds per version and the ratios this/REF (step: REF/this, so that
above 1 is faster for both).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

STEP = """
import json, sys
from umx.bench_cli import main
sys.exit(main(sys.argv[1:]))
"""

SEPARATE = """
import sys, time
import umx.separate, torch
torch.set_num_threads(int(sys.argv[1]))
t = time.perf_counter()
code = umx.separate.main(sys.argv[2:])
print("UMX_SEPARATE_S", time.perf_counter() - t)
sys.exit(code)
"""


def prepare(work: Path, seconds: float) -> tuple[Path, Path, Path]:
    """A small shard set, an umxhq-sized open-unmix model directory and a stereo track."""
    import numpy as np
    import soundfile as sf
    import torch

    from umx import synth
    from umx.models.openunmix.network import OpenUnmix
    from umx.prep.pipeline import prepare as prep

    data, shards, model = work / "data", work / "shards", work / "model"
    if not (shards / "manifest.json").is_file():
        synth.write_layout("trackfolder_fix", data, n_train=6, n_valid=1, duration=8.0, seed=1)
        prep("trackfolder_fix", data, shards, workers=2, progress=False, overwrite=True,
             target_file="vocals.wav", interferer_files=["bass.wav", "drums.wav", "other.wav"])
    model.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487)
    torch.save(net.state_dict(), model / "vocals.pth")
    (model / "vocals.json").write_text(json.dumps({"args": {"nfft": 4096, "nhop": 1024, "nb_channels": 2,
                                                            "hidden_size": 512, "unidirectional": False}}))
    (model / "separator.json").write_text(json.dumps({"nb_channels": 2, "nfft": 4096, "nhop": 1024,
                                                      "sample_rate": 44100}))
    song = work / "song.wav"
    rng = np.random.default_rng(0)
    sf.write(song, (0.1 * rng.standard_normal((int(seconds * 44100), 2))).astype(np.float32), 44100)
    return shards, model, song


def run(tree: Path, work: Path, what: str, shards: Path, model: Path, song: Path, steps: int, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), UMX_CACHE=str(work / "cache"), OMP_NUM_THREADS=str(threads))
    if what == "step":
        args = ["--shards", str(shards), "--json", "--steps", str(steps), "--warmup", "2", "--loader-batches", "2",
                "--batch-size", "4", "--seq-dur", "2", "--hidden-size", "128", "--no-cuda"]
        out = subprocess.run([sys.executable, "-c", STEP, *args], env=env, cwd=tree, capture_output=True,
                             text=True, check=True).stdout
        r = json.loads(out[out.index("{"):])
        return {"step_ms": r["step_ms"], "train_samples_per_s": r["train_samples_per_s"]}
    args = [str(threads), str(model), str(song), "--outdir", str(work / "stems"), "--residual", "--no-cuda"]
    out = subprocess.run([sys.executable, "-c", SEPARATE, *args], env=env, cwd=tree, capture_output=True,
                         text=True, check=True).stdout
    return {"separate_s": float(next(l for l in out.splitlines() if l.startswith("UMX_SEPARATE_S")).split()[1])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ref", help="the commit to compare with (e.g. the one before a refactor)")
    p.add_argument("--this", dest="this_ref", help="a commit to measure instead of the working tree")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seconds", type=float, default=30.0, help="length of the separated track")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shards, model, song = prepare(work, args.seconds)
        trees = {"ref": (work / "ref", args.ref)}
        if args.this_ref:
            trees["this"] = (work / "this", args.this_ref)
        try:
            for tree, commit in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), commit],
                               check=True)
            this_tree = trees["this"][0] if args.this_ref else ROOT
            runs: dict[str, list[dict]] = {"this": [], "ref": []}
            for _ in range(args.rounds):
                for version, tree in (("this", this_tree), ("ref", trees["ref"][0])):
                    r = {}
                    for what in ("step", "separate"):
                        r.update(run(tree, work / version, what, shards, model, song, args.steps, args.threads))
                    runs[version].append(r)
        finally:
            for tree, _ in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    keys = list(runs["this"][0])
    med = {v: {k: statistics.median(r[k] for r in runs[v]) for k in keys} for v in runs}
    faster = {"step_ms": lambda a, b: b / a, "separate_s": lambda a, b: b / a,
              "train_samples_per_s": lambda a, b: a / b}  # every ratio: above 1 is this version faster
    result = {"ref": args.ref, "this": args.this_ref or "working tree", "rounds": args.rounds, "median": med,
              "speed_this_over_ref": {k: faster[k](med["this"][k], med["ref"][k]) for k in keys}, "runs": runs}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{'figure':22s} {'this':>10s} {'ref':>10s} {'speed this/ref':>15s}   (median of {args.rounds} rounds)")
        for k in keys:
            print(f"{k:22s} {med['this'][k]:10.2f} {med['ref'][k]:10.2f} {result['speed_this_over_ref'][k]:15.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
