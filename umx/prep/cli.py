"""`umx-prep LAYOUT ROOT --out DIR [layout options]`: thin argument parsing.

The layout options are open-unmix's dataset arguments, spelled as there
(`--input-file` and `--input_file` alike); umx-train shares them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from ..cli_util import run_cli, underscore_aliases
from ..errors import UmxError
from ..layouts import check_options
from ..layouts.options import LAYOUTS, add_layout_arguments, given_layout_options
from ..shards import storage
from ..shards.webdataset import DEFAULT_SHARD_BYTES
from .pipeline import prepare, print_summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umx-prep", description="Turn a dataset folder into a umx shard set.")
    p.add_argument("layout", choices=LAYOUTS, help="dataset layout of ROOT (open-unmix's --dataset)")
    p.add_argument("root", help="dataset folder (open-unmix's --root)")
    p.add_argument("--out", required=True, help="shard set to write: a folder or a bucket URL (s3://, gs://)")
    p.add_argument("--format", choices=("webdataset", "zarr"), default="webdataset",
                   help="WebDataset tar shards (default: faster for the umxhq recipe, 64 crops per track) or a zarr "
                        "v3 store (random-access crops: faster with 1 crop per track; see docs/benchmarks.md)")
    p.add_argument("--storage-options", help="JSON options for the bucket filesystem (endpoint, credentials, …)")
    p.add_argument("--sample-rate", type=int, default=44100, help="rate of the shard set; other rates are resampled")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel track readers")
    p.add_argument("--shard-size", type=float, default=DEFAULT_SHARD_BYTES / 2**20, help="shard size in MiB")
    p.add_argument("--max-length-diff", type=float, default=1.0,
                   help="sources of a track differing by up to this many seconds are cut to the shortest")
    p.add_argument("--skip-silent-targets", action="store_true",
                   help="skip tracks whose target source is all silent (default: keep and report them)")
    p.add_argument("--strict", action="store_true", help="fail instead of repairing or skipping any file")
    p.add_argument("--overwrite", action="store_true", help="replace a shard set already at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_layout_arguments(p, training=False)
    underscore_aliases(p)
    return p


def _storage_options(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        options = json.loads(text)
    except ValueError as e:
        raise UmxError(f"--storage-options: not valid JSON ({e})") from None
    if not isinstance(options, dict):
        raise UmxError("--storage-options: must be a JSON object, e.g. '{\"endpoint_url\": \"http://…\"}'")
    return options


def _shard_bytes(mib: float) -> int:
    if not math.isfinite(mib) or mib <= 0:
        raise UmxError(f"--shard-size must be a positive number of MiB, got {mib}")
    return max(1, int(mib * 2**20))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    options = given_layout_options(args)
    check_options(args.layout, options)
    storage.configure(_storage_options(args.storage_options))
    manifest = prepare(  # checks the other settings (rate, workers, --out, …) before any work
        args.layout, args.root, args.out, workers=args.workers, sample_rate=args.sample_rate,
        shard_bytes=_shard_bytes(args.shard_size), max_length_diff=args.max_length_diff, strict=args.strict,
        skip_silent_targets=args.skip_silent_targets, format=args.format,
        overwrite=args.overwrite, progress=not args.quiet, **options,
    )
    report = storage.join(args.out, "report.json")
    print_problems(report)
    print_summary(manifest, args.out, report)
    return 0


def print_problems(report_url: str) -> None:
    for e in json.loads(storage.read_bytes(str(report_url)))["files"]:
        if e["status"] != "ok":  # one line per repaired, reported or skipped file
            print(f"{e['status']}: {e['file']}: {e['problem']} → {e['action']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
