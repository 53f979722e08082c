"""`umx-train --shards DIR [open-unmix's train.py options]`, or open-unmix's own
command line (`--dataset LAYOUT --root DIR …`), which prepares the dataset once
into a cache and trains from that shard set.

Multi-GPU / multi-node: `torchrun --nproc-per-node N -m umx.train …` (the same
options; `--batch-size` is per process)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import get_type_hints

from ..cli_util import run_cli, underscore_aliases
from ..layouts.options import LAYOUTS, add_layout_arguments, layout_options
from ..prep import cache
from . import config
from .config import TrainConfig
from .trainer import train


GROUP_TITLES = {"training": "training", "model": "model", "data": "data", "buckets": "buckets and the shard cache"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umx-train", description="Train an Open-Unmix target model from a shard set "
                                "(or, with open-unmix's --dataset/--root, from a dataset folder prepared on demand).")
    p.add_argument("--dataset", choices=LAYOUTS, help="open-unmix's dataset layout of --root (default: musdb)")
    p.add_argument("--root", help="open-unmix's dataset folder: prepared once into a cache, then streamed")
    p.add_argument("--audio-backend", help="accepted for open-unmix compatibility and ignored: "
                   "umx-prep decodes audio once (soundfile, ffmpeg for .stem.mp4)")
    groups = {"run": p, **{g: p.add_argument_group(title) for g, title in GROUP_TITLES.items()}}
    hints = get_type_hints(TrainConfig)
    for f, opt in config.options():
        if not opt.layout:  # open-unmix's dataset options come with the layout arguments below
            _add_option(groups[opt.group], f, opt, hints[f.name])
    add_layout_arguments(p)
    underscore_aliases(p)
    return p


def _add_option(group, f: dataclasses.Field, opt: config.Option, hint) -> None:
    """One TrainConfig field as an argparse option: its type, default, choices and help from the table."""
    flag = "--" + f.name.replace("_", "-")
    default = f.default
    shown = "" if default is None or default is False or default == "" else f" (default: {default})"
    if hint in (bool, "bool"):
        group.add_argument(flag, action="store_true", help=opt.help)
    elif hint == bool | None:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=opt.help)
    elif opt.nargs:
        group.add_argument(flag, nargs=opt.nargs, choices=opt.choices, default=default, help=opt.help + shown)
    else:
        kind = next(t for t in (int, float, str) if hint in (t, t | None))
        group.add_argument(flag, type=kind, choices=opt.choices, default=default, help=opt.help + shown)


TRAIN_FIELDS = set(TrainConfig.__dataclass_fields__)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.shards = cache.resolve_shards(args.shards, args.dataset, args.root, layout_options(args), args.quiet)
    out = train(TrainConfig(**{k: v for k, v in vars(args).items() if k in TRAIN_FIELDS}))
    print(f"model written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
