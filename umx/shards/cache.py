"""A local cache of remote shards: download once, verify, reuse.

Keys include the full URL (bucket and path), so two shard sets never collide;
a shard is fetched into a temp file and renamed when complete and verified
against its manifest sha256; the least recently used shards are evicted when
the cache passes its size limit. Local shard sets are read in place. Counters
(bytes fetched, hits, misses, seconds waiting) feed the progress bar and the
history.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ShardError
from . import storage


@dataclass
class CacheStats:
    bytes_fetched: int = 0
    hits: int = 0
    misses: int = 0
    wait_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def cache_root() -> Path:
    """umx's cache folder: $UMX_CACHE, default ~/.cache/umx."""
    return Path(os.environ.get("UMX_CACHE", Path.home() / ".cache" / "umx"))


def default_dir() -> Path:
    return cache_root() / "shards"


class ShardCache:
    def __init__(self, folder: str | Path | None = None, max_bytes: int = 100 * 2**30):
        self.folder = Path(folder) if folder else default_dir()
        self.max_bytes = max_bytes
        self.stats = CacheStats()

    def key(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode()).hexdigest()[:24]
        return self.folder / f"{digest}-{url.rstrip('/').rsplit('/', 1)[-1]}"

    def fetch(self, url: str, sha256: str, size: int) -> str:
        """A local path holding the verified shard at `url` (downloading it if needed)."""
        if not storage.is_remote(url):
            return url
        path = self.key(url)
        if path.is_file() and path.stat().st_size == size:
            self.stats.hits += 1
            os.utime(path)  # LRU by modification time
            return str(path)
        self.stats.misses += 1
        start = time.time()
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            h, n = hashlib.sha256(), 0

            def download():
                nonlocal h, n
                h, n = hashlib.sha256(), 0
                with storage.open_read(url) as src, open(tmp, "wb") as out:
                    while block := src.read(storage.CHUNK):
                        h.update(block)
                        n += len(block)
                        out.write(block)
            storage.retrying(url, download)
            if (h.hexdigest(), n) != (sha256, size):
                raise ShardError(f"{url}: checksum mismatch (sha256 {h.hexdigest()[:16]}…, {n} bytes; the "
                                 f"manifest says {sha256[:16]}…, {size} bytes): the object is damaged or was replaced")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.stats.bytes_fetched += n
        self.stats.wait_s += time.time() - start
        self.evict(keep=path)
        return str(path)

    def evict(self, keep: Path | None = None) -> None:
        """Drop least recently used shards until the cache fits its limit."""
        files = sorted((p for p in self.folder.glob("*") if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files:
            if total <= self.max_bytes:
                break
            if p != keep:
                total -= p.stat().st_size
                p.unlink(missing_ok=True)


def verify_once(path: Path, sha256: str, size: int | None, label: str, stats: CacheStats | None = None) -> None:
    """Check a local file against its checksum, once per machine: a marker keyed by
    path, size, mtime and checksum remembers that it was good. `label` names it in errors."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{sha256}".encode())
    marker = cache_root() / "verified" / key.hexdigest()[:32]
    if marker.is_file():
        return
    start = time.time()
    digest, n = storage.sha256_of(str(path))
    if stats is not None:
        stats.wait_s += time.time() - start
    if digest != sha256 or (size is not None and n != size):
        raise ShardError(f"{label}: checksum mismatch (sha256 {digest[:16]}…, {n} bytes; the manifest says "
                         f"{sha256[:16]}…{'' if size is None else f', {size} bytes'}): damaged or replaced")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def download_verified(url: str, dest: Path, sha256: str, stats: CacheStats) -> None:
    """Fetch `url` into `dest` (temp file + rename) if it is not there, checking its sha256."""
    if dest.is_file():
        stats.hits += 1
        return
    stats.misses += 1
    start = time.time()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        data = storage.read_bytes(url)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ShardError(f"{url}: checksum mismatch: the object is damaged or was replaced")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    stats.bytes_fetched += len(data)
    stats.wait_s += time.time() - start
