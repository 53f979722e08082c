"""Paths, atomic writes and checksums for shard sets.

Every read goes through `open_read` (fsspec), so local paths and `file://`
URLs work today and remote protocols plug in at one place. Writes are local
and atomic: temp file in the same folder, fsync, rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import IO, Iterator

import fsspec

CHUNK = 1 << 20


def join(base: str, name: str) -> str:
    """Join a shard-set location and a member name (works for URLs and paths)."""
    return base.rstrip("/") + "/" + name if "://" in base else str(Path(base) / name)


def open_read(url: str) -> IO[bytes]:
    """Open a local path or URL for binary reading."""
    return fsspec.open(url, "rb").open()


def exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write to `path` via a temp file; the final name appears only when complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj) -> None:
    with atomic_writer(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def sha256_of(url: str) -> tuple[str, int]:
    """sha256 hex digest and byte count of a file or URL."""
    h = hashlib.sha256()
    n = 0
    with open_read(url) as f:
        while block := f.read(CHUNK):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n
