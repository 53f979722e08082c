"""`umx-prep LAYOUT ROOT --out DIR [layout options]`: thin argument parsing."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cli_util import run_cli, underscore_aliases
from ..shards.webdataset import DEFAULT_SHARD_BYTES
from .pipeline import prepare, print_summary

LAYOUTS = ("musdb", "aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umx-prep", description="Turn a dataset folder into a umx shard set.")
    p.add_argument("layout", choices=LAYOUTS, help="dataset layout of ROOT (open-unmix's --dataset)")
    p.add_argument("root", help="dataset folder (open-unmix's --root)")
    p.add_argument("--out", required=True, help="shard set folder to write")
    p.add_argument("--target-file", help="trackfolder layouts: target file name, e.g. vocals.wav")
    p.add_argument("--interferer-files", nargs="+", help="trackfolder_fix: interferer file names")
    p.add_argument("--sample-rate", type=int, default=44100, help="rate of the shard set; other rates are resampled")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel track readers")
    p.add_argument("--shard-size", type=float, default=DEFAULT_SHARD_BYTES / 2**20, help="shard size in MiB")
    p.add_argument("--max-length-diff", type=float, default=1.0,
                   help="sources of a track differing by up to this many seconds are cut to the shortest")
    p.add_argument("--strict", action="store_true", help="fail instead of repairing or skipping any file")
    p.add_argument("--overwrite", action="store_true", help="replace a shard set already at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    underscore_aliases(p)
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    options = {}
    if args.layout == "trackfolder_fix":
        options = {"target_file": args.target_file, "interferer_files": args.interferer_files}
    manifest = prepare(
        args.layout, args.root, args.out, workers=max(1, args.workers), sample_rate=args.sample_rate,
        shard_bytes=int(args.shard_size * 2**20), max_length_diff=args.max_length_diff, strict=args.strict,
        overwrite=args.overwrite, progress=not args.quiet, **options,
    )
    report = Path(args.out) / "report.json"
    _print_problems(report)
    print_summary(manifest, args.out, report)
    return 0


def _print_problems(report_path: Path) -> None:
    import json

    entries = json.loads(report_path.read_text())["files"]
    for e in entries:
        if e["status"] != "ok":
            print(f"{e['status']}: {e['file']}: {e['problem']} → {e['action']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
