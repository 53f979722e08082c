#!/usr/bin/env python
"""Joint training of N targets against N sequential single-target runs, same data, same device, one run.

    python scripts/bench_joint.py [--work DIR] [--targets vocals drums bass other] [--umxhq] [--reference]
                                  [--epochs 1] [--repeats 2] [--json OUT]

Both sides train the same OpenUnmix recipe on scripts/bench_loader.py's synthetic musdb set:

  joint       one `umx-train --targets …` run (one stream, one augmentation pass, one step);
  sequential  one `umx-train --target T` run per target, one after the other.

Reported, as ratios of sequential over joint: the wall time of an epoch (training time of
`<target>.json`, summed over the sequential runs) and target-samples/s (samples × targets
trained per second) from umx.bench's step and end-to-end measurements. With `--reference`,
also open-unmix's own loop for ONE target (scripts/bench_train.py), in target-samples/s.

Goal (GPU, umxhq recipe: `--umxhq`): all four targets in at most half the wall time of four
single-target runs, and in less than open-unmix's own loop needs for one target. On a CPU
the step dominates and the joint run saves the loader and augmentation work only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_loader  # noqa: E402

from umx import bench  # noqa: E402
from umx.train import TrainConfig, train  # noqa: E402

UMXHQ = dict(hidden_size=512, nfft=4096, nhop=1024, seq_dur=6.0, batch_size=16)
CPU = dict(hidden_size=128, nfft=2048, nhop=512, seq_dur=2.0, batch_size=8)


def epoch_seconds(shards: Path, targets: list[str], recipe: dict, common: dict, out: Path) -> float:
    """One epoch of one run (its training time, without validation) in seconds."""
    cfg = TrainConfig(shards=str(shards), output=str(out), targets=targets, epochs=1, quiet=True, debug=True,
                      **recipe, **common)
    train(cfg)
    return json.loads((out / f"{targets[0]}.json").read_text())["train_time_history"][0]


def run(args) -> dict:
    recipe = UMXHQ if args.umxhq else CPU
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="umx-bench-joint-"))
    paths = bench_loader.make_data(work, args.tracks, args.duration)
    shards = paths["musdb_shards"]
    common = dict(nb_workers=args.nb_workers, no_cuda=args.no_cuda, samples_per_track=args.samples_per_track)
    targets = args.targets
    rows: dict[str, list] = {"joint_epoch_s": [], "sequential_epoch_s": [], "joint": [], "single": []}
    for r in range(args.repeats):  # alternate, so that a busy machine slows both sides alike
        rows["joint_epoch_s"].append(sum(epoch_seconds(shards, targets, recipe, common, work / f"j{r}-{e}")
                                         for e in range(args.epochs)) / args.epochs)
        rows["sequential_epoch_s"].append(sum(epoch_seconds(shards, [t], recipe, common, work / f"s{r}-{t}-{e}")
                                              for t in targets for e in range(args.epochs)) / args.epochs)
        rows["joint"].append(bench.bench(TrainConfig(shards=str(shards), targets=targets, **recipe, **common),
                                         args.steps, args.warmup, args.loader_batches))
        rows["single"].append(bench.bench(TrainConfig(shards=str(shards), target=targets[0], **recipe, **common),
                                          args.steps, args.warmup, args.loader_batches))
    med = statistics.median
    joint_e2e = med(r["train_target_samples_per_s"] for r in rows["joint"])
    single_e2e = med(r["train_target_samples_per_s"] for r in rows["single"])
    joint_step = med(r["device_target_samples_per_s"] for r in rows["joint"])
    single_step = med(r["device_target_samples_per_s"] for r in rows["single"])
    out = {"device": rows["joint"][0]["device"], "recipe": recipe, "targets": targets, "tracks": args.tracks,
           "samples_per_track": args.samples_per_track, "nb_workers": args.nb_workers, "repeats": args.repeats,
           "joint_epoch_s": med(rows["joint_epoch_s"]), "sequential_epoch_s": med(rows["sequential_epoch_s"]),
           "joint_train_target_samples_per_s": joint_e2e, "single_train_target_samples_per_s": single_e2e,
           "joint_step_target_samples_per_s": joint_step, "single_step_target_samples_per_s": single_step,
           "step_kind": rows["joint"][0].get("step_kind")}
    out["epoch_ratio_sequential_over_joint"] = out["sequential_epoch_s"] / out["joint_epoch_s"]
    out["e2e_ratio_joint_over_single"] = joint_e2e / single_e2e
    out["step_ratio_joint_over_single"] = joint_step / single_step
    if args.reference:
        import bench_train

        device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
        reference = bench_loader.musdb_dataset(paths["musdb"], recipe["seq_dur"])
        ref = bench_train.openunmix_rate(reference, {**recipe, "bandwidth": 16000, "nb_channels": 2},
                                         args.nb_workers, args.steps, args.warmup, device)
        out["openunmix_one_target_samples_per_s"] = ref["samples_per_s"]
        out["joint_over_openunmix_target_samples"] = joint_e2e / ref["samples_per_s"]
        # all N targets jointly against open-unmix's loop training ONE target on the same samples
        out["joint_all_targets_time_over_openunmix_one"] = ref["samples_per_s"] * len(targets) / joint_e2e
    out["goals"] = {"joint <= 1/2 of sequential wall time": out["epoch_ratio_sequential_over_joint"] >= 2}
    if args.reference:
        out["goals"]["all targets jointly faster than open-unmix's loop for one"] = \
            out["joint_all_targets_time_over_openunmix_one"] < 1
    out["runs"] = rows
    return out


def table(r: dict) -> str:
    n = len(r["targets"])
    lines = [f"joint training of {n} targets ({', '.join(r['targets'])}) on {r['device']}, {r['recipe']}, "
             f"{r['repeats']} repeat(s), step: {r['step_kind']}",
             f"  epoch wall time      joint {r['joint_epoch_s']:8.2f} s   {n} sequential runs "
             f"{r['sequential_epoch_s']:8.2f} s   ratio {r['epoch_ratio_sequential_over_joint']:.2f}x",
             f"  end to end           joint {r['joint_train_target_samples_per_s']:8.1f}     single "
             f"{r['single_train_target_samples_per_s']:8.1f} target-samples/s   ratio "
             f"{r['e2e_ratio_joint_over_single']:.2f}x",
             f"  device step          joint {r['joint_step_target_samples_per_s']:8.1f}     single "
             f"{r['single_step_target_samples_per_s']:8.1f} target-samples/s   ratio "
             f"{r['step_ratio_joint_over_single']:.2f}x"]
    if "openunmix_one_target_samples_per_s" in r:
        lines.append(f"  open-unmix's loop, one target: {r['openunmix_one_target_samples_per_s']:.1f} samples/s; "
                     f"all {n} targets jointly take {r['joint_all_targets_time_over_openunmix_one']:.2f}x its time "
                     "for one")
    lines += [f"  goal {'met' if ok else 'NOT met'}: {goal}" for goal, ok in r["goals"].items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", help="data folder (shared with bench_loader.py; reused when it matches)")
    p.add_argument("--targets", nargs="+", default=["vocals", "drums", "bass", "other"])
    p.add_argument("--umxhq", action="store_true", help="the umxhq recipe (hidden 512, nfft 4096, 6 s × 16)")
    p.add_argument("--reference", action="store_true", help="also open-unmix's own loop for one target")
    p.add_argument("--tracks", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--samples-per-track", type=int, default=4)
    p.add_argument("--nb-workers", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--loader-batches", type=int, default=6)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--json", help="also write the result here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t = time.time()
    r = run(args)
    r["bench_wall_s"] = time.time() - t
    print(table(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
