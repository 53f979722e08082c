#!/usr/bin/env python
"""The loader's samples/s of this checkout against another commit, side by side in one run.

    python scripts/bench_versions.py REF [--rounds 3] [--work DIR] [--json] [bench_loader.py options]

Checks REF out into a temporary git worktree and runs each version's own `scripts/bench_loader.py
--json` on the same synthetic data (each prepared by its own version) once per version per round,
alternating (A B A B …), each in a fresh interpreter whose `umx` is that version's. Reports the median samples/s of every umx loader
figure per version and the ratio this/REF: a refactor or a safety check that costs speed shows up
here, measured against the code it replaced on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _run(tree: Path, work: Path, extra: list[str]) -> dict:
    """One bench_loader run of a version: its own script and its own prepared copy of the same data
    (synthetic and seeded: the same bytes; each version reads the manifests it writes)."""
    env = dict(os.environ, PYTHONPATH=str(tree), UMX_CACHE=str(work / "cache"))
    cmd = [sys.executable, str(tree / "scripts" / "bench_loader.py"), "--json", "--work", str(work / "data"),
           "--no-first-step", *extra]
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True).stdout
    return json.loads(out[out.index("{"):])["samples_per_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ref", help="the commit to compare with (e.g. the one before a refactor)")
    p.add_argument("--this", dest="this_ref", help="a commit to measure instead of the working tree (so that "
                   "edits during the run do not mix in)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", help="folder for the data (default: a temp dir)")
    p.add_argument("--json", action="store_true")
    args, extra = p.parse_known_args()  # the rest goes to bench_loader.py
    extra = [a for a in extra if a != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        trees = {"ref": (Path(tmp) / "ref", args.ref)}
        if args.this_ref:
            trees["this"] = (Path(tmp) / "this", args.this_ref)
        try:
            for tree, commit in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), commit],
                               check=True)
            this_tree = trees["this"][0] if args.this_ref else ROOT
            runs: dict[str, list[dict]] = {"this": [], "ref": []}
            for _ in range(args.rounds):
                runs["this"].append(_run(this_tree, work / "this", extra))
                runs["ref"].append(_run(trees["ref"][0], work / "ref", extra))
        finally:
            for tree, _ in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    keys = [k for k in runs["this"][0] if k.startswith("umx_") and k in runs["ref"][0]]
    med = {v: {k: statistics.median(r[k] for r in runs[v]) for k in keys} for v in runs}
    result = {"ref": args.ref, "this": args.this_ref or "working tree", "rounds": args.rounds, "samples_per_s": med,
              "ratio_this_over_ref": {k: med["this"][k] / med["ref"][k] for k in keys}}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{'loader':28s} {'this':>10s} {'ref':>10s} {'this/ref':>9s}   (median of {args.rounds} rounds)")
        for k in keys:
            print(f"{k:28s} {med['this'][k]:10.1f} {med['ref'][k]:10.1f} {result['ratio_this_over_ref'][k]:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
