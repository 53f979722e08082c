"""`umx-bench --shards URL [umx-train options]`: the command line of bench.py (measuring) and
bench_advice.py (the verdict and the report); it takes umx-train's own options (the same
generated decorator, `train.options.train_options`)."""

from __future__ import annotations

import json
import sys


from . import bench, bench_advice
from .cli_util import IntRange, command, option, run_command
from .layouts.options import layout_options
from .train.options import SECTIONS, architecture_sections, given_options, train_config, train_options

EPILOG = """\b
Examples:
  umx-bench --shards /data/umxhq-shards --batch-size 16 --nb-workers 8
  umx-bench --root path/to/musdb18 --target vocals --json"""


@command("umx-bench", sections=SECTIONS + architecture_sections() + (("bench", "Benchmark options"),), epilog=EPILOG,
         help="Measure a training run (loader samples/s, device step time, end-to-end samples/s) on your "
              "shard set and umx-train options, and say whether it is data-bound.")
@train_options
@option("--steps", type=IntRange(1, 10**5), default=10, group="bench",
        help="timed device steps, with and without the loader")
@option("--warmup", type=IntRange(0, 10**4), default=2, group="bench",
        help="untimed steps first (compilation, worker start)")
@option("--loader-batches", type=IntRange(1, 10**5), default=20, group="bench",
        help="timed batches of the loader alone")
@option("--json", "as_json", is_flag=True, group="bench", help="print one JSON object instead of the summary")
def cli(steps: int, warmup: int, loader_batches: int, as_json: bool, **params) -> int:
    from .prep.cache import resolve_shards

    shards = resolve_shards(params["shards"], params["dataset"], params["root"], layout_options(params),
                            params["quiet"])
    r = bench.bench(train_config(params, shards, given_options(params)), steps, warmup, loader_batches)
    print(json.dumps(r, indent=2, default=str) if as_json else bench_advice.report(r))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(cli, argv, "umx-bench")


if __name__ == "__main__":
    sys.exit(main())
