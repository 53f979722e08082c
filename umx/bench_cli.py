"""`umx-bench --shards URL [umx-train options]`: the command line of bench.py (measuring) and
bench_advice.py (the verdict and the report); it takes umx-train's own options."""

from __future__ import annotations

import argparse
import json
import sys

from . import bench, bench_advice
from .cli_util import run_cli
from .errors import UmxError
from .layouts.options import layout_options


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
    from .prep.cache import resolve_shards
    from .train.cli import TRAIN_FIELDS
    from .train.config import TrainConfig

    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.loader_batches < 1 or args.warmup < 0:
        raise UmxError("--steps and --loader-batches must be ≥ 1, --warmup ≥ 0")
    args.shards = resolve_shards(args.shards, args.dataset, args.root, layout_options(args), args.quiet)
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in TRAIN_FIELDS})
    r = bench.bench(config, args.steps, args.warmup, args.loader_batches)
    print(json.dumps(r, indent=2, default=str) if args.json else bench_advice.report(r))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
