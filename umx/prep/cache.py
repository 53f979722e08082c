"""Prep on demand, for open-unmix command lines (`umx-train --dataset … --root …`).

`resolve_shards` turns such a command line's data options into the shard set to read.
A prepared shard set lands in a cache folder keyed by the dataset's content (every
file's path, size and mtime) and the prep options, so a second run with the
same data and options reuses it, and any change gives a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from ..errors import UmxError
from ..layouts import STRUCTURE, TRAINING, check_options, flag
from ..shards import manifest as mf
from ..shards.cache import cache_root
from .pipeline import prepare


def dataset_key(layout: str, root: str | Path, options: dict) -> str:
    h = hashlib.sha256(json.dumps([layout, sorted(options.items())], default=str).encode())
    root = Path(root).expanduser().resolve()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def prepared(layout: str, root: str | Path, options: dict, quiet: bool = False) -> Path:
    """The cached shard set of `root`, prepared now if there is none yet."""
    out = cache_root() / "prepared" / f"{layout}-{dataset_key(layout, root, options)}"
    if (out / mf.NAME).is_file():
        if not quiet:
            print(f"using prepared shard set {out}", file=sys.stderr)
        return out
    if not quiet:
        print(f"preparing {root} ({layout}) once into {out}", file=sys.stderr)
    prepare(layout, root, out, workers=os.cpu_count() or 1, progress=not quiet, overwrite=True, **options)
    return out


def synthetic(layout: str, options: dict, quiet: bool = False) -> Path:
    """The embedded synthetic data set in `layout`, in the file types the options
    name (written once into the cache)."""
    from .. import synth

    named = [options.get(k) or "" for k in ("target_file", "input_file", "output_file")]
    named += list(options.get("interferer_files") or [])
    ext = options.get("ext") or next((Path(n).suffix for n in named[1:] if Path(n).suffix), "") \
        or Path(named[0]).suffix or ".wav"
    target_ext = Path(named[0]).suffix or ext
    tag = "-".join([layout, ext, target_ext, options.get("target_dir") or "", *(options.get("interferer_dirs") or [])])
    root = cache_root() / "synthetic" / hashlib.sha256(tag.encode()).hexdigest()[:12]
    if not (root / ".complete").is_file():
        synth.write_layout(layout, root, n_train=8, n_valid=2, duration=12.0, seed=0, ext=ext,
                           target_ext=target_ext)
        if layout == "sourcefolder":  # name the folders as the command line does
            wanted = [options.get("target_dir") or "vocals", *(options.get("interferer_dirs") or [])]
            for split in ("train", "valid"):
                for old, new in zip(("vocals", "bass", "drums", "other"), wanted):
                    if old != new:
                        (root / split / old).rename(root / split / new)
        (root / ".complete").touch()
    if not quiet:
        print(f"notice: no --root or --shards given: using the embedded synthetic {layout} data set at {root} "
              "(open-unmix downloads a 7 s MUSDB18 preview here; umx cannot download)", file=sys.stderr)
    return root


def resolve_shards(shards: str | None, dataset: str | None, root: str | None, options: dict,
                   quiet: bool = False) -> str:
    """The shard set a command line names: `shards` (--shards) as given, or open-unmix's
    --dataset layout (default musdb) of --root prepared into the cache (`prepared`; without
    a root, the embedded synthetic data set in that layout).

    `options`: the command line's layout options, training ones included, None where not
    given (what layouts.options.layout_options reads from the parsed arguments).
    """
    if shards:
        if root or dataset:
            raise UmxError("--shards and --root/--dataset exclude each other: give a shard set or a dataset folder")
        structural = {k: v for k, v in options.items() if v is not None and k not in
                      {x for v in TRAINING.values() for x in v}}
        if structural:
            raise UmxError(f"{', '.join(flag(k) for k in structural)}: dataset options need --root "
                           "(a shard set was prepared with its own)")
        return shards
    layout = dataset or "musdb"
    check_options(layout, options)
    prep_options = {k: options.get(k) for k in STRUCTURE[layout] if options.get(k) is not None}
    root = root or synthetic(layout, prep_options, quiet)
    return str(prepared(layout, root, prep_options, quiet=quiet))
