#!/usr/bin/env python
"""What `--save-every 1m` costs: the time training waits for one mid-epoch checkpoint, as a share of a minute.

    python scripts/bench_checkpoint.py [--targets vocals] [--repeats 5] [--json OUT]

The umxhq model (hidden 512, nfft 4096) per target, its Adam state and the run state are written
as `umx-train` writes them (every target's `<target>.chkpnt`, serialised in memory, atomically
renamed as one generation), median of `--repeats`. Training waits only for the copy of the state
to the CPU; a background thread serialises and writes (CheckpointWriter). Reported: that wait
(the cost), the whole write, and the wait as a share of a minute.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", nargs="+", default=["vocals"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="umx-bench-ckpt-"))
    root = synth.write_layout("musdb", work / "musdb", n_train=2, n_valid=1, duration=8.0, seed=1)
    prepare("musdb", root, work / "shards", progress=False)
    t = build_trainer(TrainConfig(shards=str(work / "shards"), output=str(work / "out"), targets=args.targets,
                                  debug=True, quiet=True, hidden_size=512, nfft=4096, nhop=1024))
    try:
        t.out.mkdir(parents=True, exist_ok=True)
        t.stream.set_epoch(1)
        t.train_step(t.batch_audio(next(iter(t.stream))), 1, 0)  # Adam's state exists, as mid-epoch
        times, totals = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            t._save_checkpoint()
            times.append(time.perf_counter() - start)
            t.writer.wait()
            totals.append(time.perf_counter() - start)
    finally:
        distributed.teardown(t.dist)
    size = sum(f.stat().st_size for f in t.out.glob("*.chkpnt"))
    r = {"targets": args.targets, "checkpoint_s": statistics.median(times), "bytes": size,
         "write_s": statistics.median(totals),
         "share_of_a_minute": statistics.median(times) / 60, "device": str(t.device)}
    print(f"checkpoint of {', '.join(args.targets)} (umxhq, {size / 2**20:.0f} MiB) on {r['device']}: "
          f"training waits {r['checkpoint_s'] * 1000:.0f} ms = {100 * r['share_of_a_minute']:.2f} % of training at "
          f"--save-every 1m (the background write takes {r['write_s'] * 1000:.0f} ms in all)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
