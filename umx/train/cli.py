"""`umx-train --shards DIR [open-unmix's train.py options]`, or open-unmix's own
command line (`--dataset LAYOUT --root DIR …`), which prepares the dataset once
into a cache and trains from that shard set.

Multi-GPU / multi-node: `torchrun --nproc-per-node N -m umx.train …` (the same
options; `--batch-size` is per process). The options are generated from TrainConfig's
metadata (options.py)."""

from __future__ import annotations

import sys

from ..cli_util import command, run_command
from ..layouts.options import layout_options
from ..prep import cache
from .options import SECTIONS, architecture_sections, given_options, train_config, train_options

EPILOG = """\b
Examples:
  umx-train --root path/to/musdb18 --target vocals
  umx-train --dataset trackfolder_fix --root /data --target-file vocals.flac \\
            --interferer-files bass.flac drums.flac other.flac
  umx-train --shards s3://bucket/umxhq --batch-size 32 --nb-workers 8"""


@command("umx-train", sections=SECTIONS + architecture_sections(), epilog=EPILOG,
         help="Train a separation model (--arch: Open-Unmix by default) from a shard set (or, with open-unmix's --dataset/--root, "
              "from a dataset folder prepared on demand).")
@train_options
def cli(**params) -> int:
    from .build import train

    shards = cache.resolve_shards(params["shards"], params["dataset"], params["root"], layout_options(params),
                                  params["quiet"])
    out = train(train_config(params, shards, given_options(params)))
    if out is not None:
        print(f"model written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(cli, argv, "umx-train")


if __name__ == "__main__":
    sys.exit(main())
