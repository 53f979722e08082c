#!/usr/bin/env python
"""What `--eval-every` costs: one validation pass with separation and SDR against one without, same run.

    python scripts/bench_valid_sdr.py [--work DIR] [--valid-tracks 2] [--duration 30] [--targets vocals]
                                      [--umxhq] [--repeats 3] [--json OUT]

The validation pass without SDR is open-unmix's: every validation track through the networks, the
loss on magnitudes. With `--eval-every`, the same pass also separates each track (Wiener filtering
with one EM iteration, inverse STFT) and scores it (umx.bss: BSSv4 frames and uSDR), in either
`--eval-separation` mode: `exact` runs the networks again on the centred STFT, as umx-separate;
`fast` reuses the loss pass's network outputs. All three are timed on the same trainer, in turn,
median of `--repeats`; the two modes' scores are printed side by side.
Goal (CPU): the pass with SDR costs at most 2× the pass without.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from umx import synth
from umx.prep import prepare
from umx.train import TrainConfig, build_trainer
from umx.train import distributed

UMXHQ = dict(hidden_size=512, nfft=4096, nhop=1024)
CPU = dict(hidden_size=128, nfft=4096, nhop=1024)


def run(args) -> dict:
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="umx-bench-valid-"))
    shards = work / f"shards-{args.valid_tracks}-{args.duration}"
    if not (shards / "manifest.json").is_file():
        root = synth.write_layout("musdb", work / "musdb", n_train=2, n_valid=args.valid_tracks,
                                  duration=args.duration, seed=5)
        prepare("musdb", root, shards, progress=False, overwrite=True)
    cfg = TrainConfig(shards=str(shards), output=str(work / "out"), targets=args.targets, debug=True, quiet=True,
                      eval_every=1, seq_dur=min(6.0, args.duration / 2),  # (training crops fit short tracks)
                      **(UMXHQ if args.umxhq else CPU))
    trainer = build_trainer(cfg)
    modes = ("exact", "fast")
    try:
        times = {"plain": [], **{m: [] for m in modes}}
        scores = {}

        def scored(mode):
            trainer.cfg.eval_separation = mode
            return trainer.validate_scored()[1]

        trainer.validate(), [scored(m) for m in modes]  # warm-up: plans, allocations
        for _ in range(args.repeats):
            t = time.perf_counter()
            trainer.validate()
            times["plain"].append(time.perf_counter() - t)
            for mode in modes:
                t = time.perf_counter()
                scores[mode] = scored(mode)
                times[mode].append(time.perf_counter() - t)
    finally:
        distributed.teardown(trainer.dist)
    out = {"device": str(trainer.device), "targets": args.targets, "valid_tracks": args.valid_tracks,
           "duration_s": args.duration, "model": UMXHQ if args.umxhq else CPU, "repeats": args.repeats,
           "valid_s": statistics.median(times["plain"]), "times_s": times}
    for mode in modes:
        out[mode] = {"valid_with_sdr_s": statistics.median(times[mode]), "csdr": scores[mode][0],
                     "usdr": scores[mode][1]}
        out[mode]["ratio"] = out[mode]["valid_with_sdr_s"] / out["valid_s"]
        out[mode]["goal_at_most_2x"] = out[mode]["ratio"] <= 2
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work")
    p.add_argument("--valid-tracks", type=int, default=2)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--targets", nargs="+", default=["vocals"])
    p.add_argument("--umxhq", action="store_true", help="hidden 512 (default: 128)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    r = run(args)
    print(f"validation of {r['valid_tracks']} × {r['duration_s']:g} s tracks, targets {', '.join(r['targets'])}, "
          f"{r['model']} on {r['device']}: {r['valid_s']:.2f} s without SDR")
    for mode in ("exact", "fast"):
        m = r[mode]
        print(f"  --eval-separation {mode}: {m['valid_with_sdr_s']:.2f} s with separation + cSDR + uSDR = "
              f"{m['ratio']:.2f}x (goal <= 2x: {'met' if m['goal_at_most_2x'] else 'NOT met'}); "
              + ", ".join(f"{t} cSDR {m['csdr'][t]:.3f} uSDR {m['usdr'][t]:.3f} dB" for t in m["csdr"]))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
