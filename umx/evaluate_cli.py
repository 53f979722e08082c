"""`umx-eval MODEL_DIR --shards URL --split test`: separate a split of a shard set and score it.

`umx-eval MODEL_DIR --root MUSDB18 [--no-is-wav]` does the same straight from a
dataset folder (any layout, `--dataset`; MUSDB18 by default), as open-unmix's
evaluate.py does. Thin argument parsing: the separating and scoring are evaluate.py's.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import evaluate
from .cli_util import run_cli, underscore_aliases
from .errors import UmxError
from .layouts import STRUCTURE, check_options
from .layouts.options import LAYOUTS, add_layout_arguments, given_layout_options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umx-eval", description="Separate a split of a shard set and score it "
                                "with museval (BSSv4), next to the input-mixture baseline.")
    p.add_argument("model", metavar="MODEL_DIR", help="model directory (umx-train's or open-unmix's)")
    p.add_argument("--shards", help="shard set folder or URL (or its manifest.json)")
    p.add_argument("--root", help="or a dataset folder, read directly (open-unmix's evaluate.py --root)")
    p.add_argument("--dataset", choices=LAYOUTS, help="layout of --root (default: musdb)")
    p.add_argument("--split", default="test", help="split to evaluate: valid or test (default test)")
    p.add_argument("--targets", nargs="+", help="targets to score (default: every <target>.pth in MODEL_DIR)")
    p.add_argument("--outdir", help="where eval_<split>.json and museval's per-track files go "
                   "(default: MODEL_DIR)")
    p.add_argument("--niter", type=int, default=1, help="EM iterations of the Wiener filter (0: none)")
    p.add_argument("--residual", action="store_true", help="separate a residual source (mixture minus the "
                   "targets) even where the targets make up the mixture (it is then not scored)")
    p.add_argument("--residual-name", default="residual", metavar="NAME",
                   help="name of the residual, which is added and scored where the targets do not make up "
                   "the mixture")
    p.add_argument("--wiener-win-len", type=int, default=300, help="frames filtered together; 0: whole track")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes scoring tracks in parallel (1: in this process)")
    p.add_argument("--no-cuda", action="store_true", help="separate on the CPU even if CUDA is available")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_layout_arguments(p, training=False)
    underscore_aliases(p)
    return p


def _main(argv: list[str] | None) -> int:
    from .separate import device_for

    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise UmxError(f"--workers must be >= 1, got {args.workers}")
    if bool(args.shards) == bool(args.root):
        raise UmxError("give a shard set (--shards) or a dataset folder (--root), one of the two")
    data = args.shards
    if args.root:
        layout = args.dataset or "musdb"
        options = given_layout_options(args)
        check_options(layout, options, STRUCTURE[layout])
        data = evaluate.folder_split(layout, args.root, args.split, options)
    elif args.dataset or given_layout_options(args):
        raise UmxError("--dataset and dataset options go with --root (a shard set was prepared with its own)")
    results = evaluate.evaluate(args.model, data, args.split, args.targets, niter=args.niter,
                                residual=args.residual, residual_name=args.residual_name,
                                wiener_win_len=args.wiener_win_len, device=str(device_for(args.no_cuda)),
                                workers=args.workers, outdir=args.outdir or args.model, progress=not args.quiet)
    print(evaluate.format_table(results))
    print(f"results written to {results['json']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
