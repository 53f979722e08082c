"""Dataset layouts of the open-unmix spec, each scanned into `Track` records.

A layout module knows folder structure only: which files form a track and
which source each file is. Reading and checking audio is prep's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LayoutError


@dataclass
class Track:
    """One track to prepare: its split, a safe id, and one file per source."""

    split: str
    name: str  # original name (folder name), kept in metadata
    files: dict[str, Path]
    id: str = ""


@dataclass
class Scan:
    """What a layout found: tracks to prepare, candidates rejected and why."""

    tracks: list[Track] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    target: str = ""
    options: dict = field(default_factory=dict)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_id(name: str) -> str:
    """A track id that is a safe tar member / zarr key: no separators, dots or controls.

    Dots are replaced too: WebDataset splits a member name at its first dot.
    """
    ident = _UNSAFE.sub("_", name).strip("_")
    return ident or "track"


def assign_ids(tracks: list[Track]) -> None:
    """Give every track a unique safe id within its split (suffixing clashes)."""
    seen: dict[tuple[str, str], int] = {}
    for t in tracks:
        base = safe_id(t.name)
        n = seen.get((t.split, base), 0)
        seen[(t.split, base)] = n + 1
        t.id = base if n == 0 else f"{base}_{n}"


def source_name(filename: str) -> str:
    """Source name of a file name pattern: its stem, lower-case and safe."""
    return safe_id(Path(filename).stem).lower()


def split_dir(root: Path, split: str) -> Path:
    """The folder of one split, or a LayoutError naming what is missing."""
    d = root / split
    if not d.is_dir():
        raise LayoutError(f"{root}: no '{split}' folder (expected {d})")
    return d


def scan(layout: str, root: str | Path, **options) -> Scan:
    """Scan `root` as `layout`; options are the layout's own (target file, …)."""
    from . import trackfolder_fix

    scanners = {"trackfolder_fix": trackfolder_fix.scan}
    if layout not in scanners:
        raise LayoutError(f"unknown layout '{layout}' (this version prepares: {sorted(scanners)})")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset folder not found")
    result = scanners[layout](root, **options)
    assign_ids(result.tracks)
    return result
