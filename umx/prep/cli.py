"""`umx-prep LAYOUT ROOT --out DIR [layout options]`: thin argument parsing.

The layout options are open-unmix's dataset arguments, spelled as there
(`--input-file` and `--input_file` alike); umx-train shares them.
"""

from __future__ import annotations

import json
import math
import os
import sys

import click

from .. import audio
from ..cli_util import Choice, FloatRange, IntRange, command, option, run_command
from ..errors import UmxError
from ..layouts import check_options
from ..models import defaults
from ..layouts.options import GROUP, HEADING, LAYOUTS, given_layout_options, layout_click_options
from ..shards import storage
from ..shards.webdataset import DEFAULT_SHARD_BYTES
from ..json_input import json_object
from ..train.options import config_option
from .pipeline import FORMATS, MAX_LENGTH_DIFF, MAX_SHARD_MIB, WORKERS, prepare, print_summary


EPILOG = """\b
Examples:
  umx-prep musdb path/to/musdb18 --out /data/umxhq-shards
  umx-prep trackfolder_fix /data --out s3://bucket/set --target-file vocals.flac \\
           --interferer-files bass.flac drums.flac other.flac"""


@command("umx-prep", sections=(("", "Options"), (GROUP, HEADING), ("buckets", "Buckets")), epilog=EPILOG,
         help="Turn a dataset folder into a umx shard set. LAYOUT is open-unmix's --dataset "
              f"({', '.join(LAYOUTS)}), ROOT its --root.")
@click.argument("layout", type=Choice(LAYOUTS), metavar="LAYOUT")
@click.argument("root", metavar="ROOT")
@option("--out", required=True, help="shard set to write: a folder or a bucket URL (s3://, gs://)")
@option("--format", type=Choice(FORMATS), default=FORMATS[0],
        help="WebDataset tar shards (faster for the umxhq recipe, 64 crops per track) or a zarr v3 store "
             "(random-access crops: faster with 1 crop per track; see docs/benchmarks.md)")
@option("--sample-rate", type=IntRange(), default=defaults.SAMPLE_RATE,  # the ranges: prepare's (pipeline._check_settings)
        help=f"rate of the shard set ({audio.MIN_RATE}–{audio.MAX_RATE} Hz); other rates are resampled")
@option("--workers", type=IntRange(), default=min(os.cpu_count() or 1, WORKERS[1]), show_default="the CPU count",
        help=f"parallel track readers ({WORKERS[0]}–{WORKERS[1]})")
@option("--shard-size", type=FloatRange(), default=DEFAULT_SHARD_BYTES / 2**20,
        help=f"shard size in MiB (up to {MAX_SHARD_MIB})")
@option("--max-length-diff", type=FloatRange(), default=1.0,
        help=f"sources of a track differing by up to this many seconds (at most {MAX_LENGTH_DIFF}) are cut to "
             "the shortest")
@option("--skip-silent-targets", is_flag=True,
        help="skip tracks whose target source is all silent (default: keep and report them)")
@option("--strict", is_flag=True, help="fail instead of repairing or skipping any file")
@option("--overwrite", is_flag=True, help="replace a shard set already at --out")
@option("--quiet", is_flag=True, help="no progress bar")
@layout_click_options(training=False)
@config_option("storage_options")
def cli(**params) -> int:
    options = given_layout_options(params)
    check_options(params["layout"], options)
    storage.configure(_storage_options(params["storage_options"]))
    out = params["out"]
    manifest = prepare(  # checks the other settings (rate, workers, --out, …) before any work
        params["layout"], params["root"], out, workers=params["workers"], sample_rate=params["sample_rate"],
        shard_bytes=_shard_bytes(params["shard_size"]), max_length_diff=params["max_length_diff"],
        strict=params["strict"], skip_silent_targets=params["skip_silent_targets"], format=params["format"],
        overwrite=params["overwrite"], progress=not params["quiet"], **options,
    )
    report = storage.join(out, "report.json")
    print_problems(report)
    print_summary(manifest, out, report)
    return 0


def _storage_options(text: str | None) -> dict | None:
    return json_object(text, "--storage-options") or None


def _shard_bytes(mib: float) -> int:
    if not math.isfinite(mib) or not 0 < mib <= MAX_SHARD_MIB:
        raise UmxError(f"--shard-size must be a positive number of MiB up to {MAX_SHARD_MIB}, got {mib}")
    return max(1, int(mib * 2**20))


def print_problems(report_url: str) -> None:
    for e in json.loads(storage.read_bytes(str(report_url)))["files"]:
        if e["status"] != "ok":  # one line per repaired, reported or skipped file
            print(f"{e['status']}: {e['file']}: {e['problem']} → {e['action']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run_command(cli, argv, "umx-prep")


if __name__ == "__main__":
    sys.exit(main())
