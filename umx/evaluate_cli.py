"""`umx-eval MODEL_DIR --shards URL --split test`: separate a split of a shard set and score it.

`umx-eval MODEL_DIR --root MUSDB18 [--no-is-wav]` does the same straight from a
dataset folder (any layout, `--dataset`; MUSDB18 by default), as open-unmix's
evaluate.py does. Thin argument parsing: the separating and scoring are evaluate.py's.
"""

from __future__ import annotations

import os
import sys

import click

from . import evaluate
from .cli_util import Choice, command, option, run_command
from .errors import UmxError
from .layouts import STRUCTURE, check_options
from .layouts.options import GROUP, HEADING, LAYOUTS, given_layout_options, layout_click_options
from .names import safe_name
from .separate import filter_options


EPILOG = """\b
Examples:
  umx-eval open-unmix --shards /data/umxhq-shards --split test
  umx-eval open-unmix --root path/to/musdb18 --no-is-wav
  umx-eval open-unmix --shards /data/umxhq-shards --metric bssv4 --metric museval"""


@command("umx-eval", sections=(("", "Options"), (GROUP, HEADING)), epilog=EPILOG,
         help="Separate a split of a shard set and score it (BSSv4 cSDR and uSDR by default), next to the "
              "input-mixture baseline. MODEL_DIR: a model directory (umx-train's or open-unmix's).")
@click.argument("model", metavar="MODEL_DIR")
@option("--shards", help="shard set folder or URL (or its manifest.json)")
@option("--root", help="or a dataset folder, read directly (open-unmix's evaluate.py --root)")
@option("--dataset", type=Choice(LAYOUTS), help="layout of --root (default: musdb)")
@option("--split", default="test", help="split to evaluate: valid or test")
@option("--targets", nargs="+", help="targets to score (default: every target of MODEL_DIR)")
@option("--metric", "metrics", multiple=True, type=Choice(evaluate.METRIC_CHOICES),
        help="bssv4 (museval's BSSv4, computed fast by umx), usdr (global SDR per track, as the MDX/SDX "
             "challenges), museval (the museval package itself, slow: the reference); repeat for several "
             f"[default: {' '.join(evaluate.DEFAULT_METRICS)}]")
@option("--outdir", help="where eval_<split>.json and the per-track files (museval's format) go "
        "(default: MODEL_DIR)")
@filter_options
@option("--residual", is_flag=True, help="separate a residual source (mixture minus the targets) even where "
        "the targets make up the mixture (it is then not scored)")
@option("--residual-name", default="residual", metavar="NAME",
        help="name of the residual, which is added and scored where the targets do not make up the mixture")
@option("--workers", type=click.IntRange(min=1), default=min(4, os.cpu_count() or 1),
        show_default="4 or the CPU count", help="processes scoring tracks in parallel (1: in this process)")
@option("--no-cuda", is_flag=True, help="separate on the CPU even if CUDA is available")
@option("--quiet", is_flag=True, help="no progress bar")
@layout_click_options(training=False)
def cli(**args) -> int:
    from .separate import device_for

    if bool(args["shards"]) == bool(args["root"]):
        raise UmxError("give a shard set (--shards) or a dataset folder (--root), one of the two")
    safe_name(args["split"], "split name", "--split")  # it names eval_<split>.json: checked before any work
    data = args["shards"]
    if args["root"]:
        layout = args["dataset"] or "musdb"
        options = given_layout_options(args)
        check_options(layout, options, STRUCTURE[layout])
        data = evaluate.folder_split(layout, args["root"], args["split"], options)
    elif args["dataset"] or given_layout_options(args):
        raise UmxError("--dataset and dataset options go with --root (a shard set was prepared with its own)")
    results = evaluate.evaluate(args["model"], data, args["split"], args["targets"], niter=args["niter"],
                                residual=args["residual"], residual_name=args["residual_name"],
                                wiener_win_len=args["wiener_win_len"], device=str(device_for(args["no_cuda"])),
                                workers=args["workers"], outdir=args["outdir"] or args["model"],
                                progress=not args["quiet"], metrics=args["metrics"] or evaluate.DEFAULT_METRICS)
    print(evaluate.format_table(results))
    print(f"results written to {results['json']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(cli, argv, "umx-eval")


if __name__ == "__main__":
    sys.exit(main())
