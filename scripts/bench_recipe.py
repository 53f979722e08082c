#!/usr/bin/env python
"""The training recipe's additions at equal steps on synthetic data: baseline against each addition and all.

    python scripts/bench_recipe.py [--work DIR] [--epochs 12] [--json OUT]

Every run trains the same small OpenUnmix (vocals, trackfolder_fix synthetic set, random track
mixing, gain + channelswap = open-unmix's recipe) for the same number of steps with one addition
(flipsign, scale, shift, speed, pitch, EMA 0.99) or all of them, then scores the valid split with
umx-eval's BSSv4 (museval's numbers: docs/metrics.md) and uSDR. One process, runs in turn.
Synthetic stems are not music: an augmentation that helps on MUSDB18 may not help here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from umx import synth
from umx.evaluate import evaluate
from umx.prep import prepare
from umx.train import TrainConfig, train

BASE = ["gain", "channelswap"]
RUNS = {"baseline (open-unmix)": dict(), "+flipsign": dict(aug=["flipsign"]), "+scale": dict(aug=["scale"]),
        "+shift": dict(aug=["shift:4410"]), "+speed": dict(aug=["speed:0.08"]), "+pitch": dict(aug=["pitch:2"]),
        "+ema 0.99": dict(ema=[0.99]),
        "all": dict(aug=["flipsign", "scale", "shift:4410", "speed:0.08", "pitch:2"], ema=[0.99])}
FIX = dict(target_file="vocals.wav", interferer_files=["bass.wav", "drums.wav", "other.wav"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/umx-bench-recipe")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--tracks", type=int, default=8)
    p.add_argument("--json")
    args = p.parse_args(argv)
    work = Path(args.work)
    shards = work / "shards"
    if not (shards / "manifest.json").is_file():
        root = synth.write_layout("trackfolder_fix", work / "data", n_train=args.tracks, n_valid=2, duration=12.0,
                                  seed=3)
        prepare("trackfolder_fix", root, shards, progress=False, overwrite=True, **FIX)
    rows = []
    for name, opts in RUNS.items():
        out = work / name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus_")
        cfg = TrainConfig(shards=str(shards), output=str(out), target="vocals", epochs=args.epochs, hidden_size=32,
                          nfft=2048, nhop=512, seq_dur=1.0, batch_size=8, samples_per_track=4, lr=0.003,
                          random_track_mix=True, source_augmentations=BASE + opts.get("aug", []),
                          ema=opts.get("ema"), quiet=True)
        t = time.time()
        train(cfg)
        seconds = time.time() - t
        res = evaluate(out, str(shards), "valid", workers=1, progress=False, metrics=("bssv4", "usdr"))
        history = json.loads((out / "vocals.json").read_text())
        rows.append({"run": name, "csdr": res["scores"]["vocals"]["SDR"], "usdr": res["usdr"]["scores"]["vocals"],
                     "best_valid_loss": history["best_loss"], "best_weights": history.get("best_weights", "raw"),
                     "train_s": seconds})
        print(f"{name:24} cSDR {rows[-1]['csdr']:6.2f} dB  uSDR {rows[-1]['usdr']:6.2f} dB  "
              f"best valid loss {rows[-1]['best_valid_loss']:.4f} ({rows[-1]['best_weights']})  {seconds:5.0f} s",
              flush=True)
    base = rows[0]
    print("\n| run | cSDR (dB) | Δ vs baseline | uSDR (dB) | Δ | best valid loss | train s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['csdr']:.2f} | {r['csdr'] - base['csdr']:+.2f} | {r['usdr']:.2f} | "
              f"{r['usdr'] - base['usdr']:+.2f} | {r['best_valid_loss']:.4f} ({r['best_weights']}) | {r['train_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"epochs": args.epochs, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
