"""A local cache of remote shards: download once, verify, reuse.

Keys include the full URL (bucket and path), so two shard sets never collide;
the entry name ends with the URL's last component, checked as a safe name
(umx.names). A shard is fetched into a temp file, verified against its manifest
sha256 and renamed when complete; the least recently used shards are evicted
when the cache passes its size limit. Local shard sets are read in place.
Counters (bytes fetched, hits, misses, seconds waiting) feed the progress bar
and the history.

What is re-checked: a verified file gets a sidecar `.<name>.verified` (its
sha256, size, device, inode, mtime and ctime, all in nanoseconds). A cached file
is used only if the sidecar matches its current stat and the expected sha256;
otherwise it is hashed again (once per process) and, if bad, downloaded again.
So a file rewritten, truncated, replaced or copied is caught on its next use,
without re-reading every shard every run. Not caught: a change that leaves
inode, size, mtime and ctime all as they were — an in-place rewrite within one
timestamp tick of the verification (a second on coarse filesystems), writes
that bypass the filesystem, or decay of the disk itself; such a shard still
fails if its records no longer decode or match the manifest.

Concurrency: several processes (loader workers, trainers) may share one cache
(on a local filesystem: flock). `fetch` holds a shared lock on `.<name>.lock`
while a process may still open the shard — until it has fetched `PINNED` other
shards, or exits; eviction, under the cache-wide `.lock`, only deletes a shard
whose lock it can take exclusively. An opened or mapped file stays readable
after eviction (its disk space is freed when the last reader closes it). When
every shard over the limit is pinned the cache stays over its limit until
they are released: a shard set larger than the cache trains, only slower.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from ..errors import ShardError
from ..names import UnsafeNameError, inside, safe_name
from . import storage

DEFAULT_CACHE_GIB = 100.0  # the shard cache's size limit (--cache-size, UMX_CACHE_SIZE)
PINNED = 4  # shards a process keeps locked against eviction after fetching them (the reader opens them at once)

_state = threading.RLock()
_pins: "OrderedDict[str, int]" = OrderedDict()  # shard path → fd holding a shared flock on its lock file
_pins_pid = os.getpid()
_verified: set[tuple] = set()  # (path, identity…, sha256) this process hashed or found a matching sidecar for


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


# ---- verification: sidecars and the per-process memory --------------------------------------------------------

def _identity(st: os.stat_result) -> dict:
    return {"size": st.st_size, "dev": st.st_dev, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}


def _memo(path: Path, st: os.stat_result, sha256: str) -> tuple:
    return (str(path), *_identity(st).values(), sha256)


def _hidden(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{suffix}")


def _write_sidecar(path: Path, sha256: str, st: os.stat_result) -> None:
    """Remember that `path` (as `st` describes it) was verified; best effort (no sidecar: hashed again)."""
    side = _hidden(path, "verified")
    tmp = None
    try:
        fd, tmp = storage.new_temp(side)  # exclusive, at a name no other process or thread can take
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"sha256": sha256, **_identity(st)}))
        os.replace(tmp, side)
    except OSError:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _sidecar_matches(path: Path, sha256: str, st: os.stat_result) -> bool:
    try:
        return json.loads(_hidden(path, "verified").read_text()) == {"sha256": sha256, **_identity(st)}
    except (OSError, ValueError):
        return False


def _stat(path: Path) -> os.stat_result | None:
    """The file's stat, or None if it is not (or no longer) a regular file."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _good(path: Path, sha256: str, size: int | None, stats: CacheStats | None = None) -> bool:
    """Whether the file at `path` is the verified object: known good in this process, or its
    sidecar matches its stat, or (hashed now, once) its content matches."""
    st = _stat(path)
    if st is None or (size is not None and st.st_size != size):
        return False
    memo = _memo(path, st, sha256)
    if memo in _verified:
        return True
    if not _sidecar_matches(path, sha256, st):
        start = time.time()
        try:
            digest, n = storage.sha256_of(str(path))
        except FileNotFoundError:
            return False
        if stats is not None:
            stats.wait_s += time.time() - start
        after = _stat(path)
        if after is None or _identity(after) != _identity(st) or digest != sha256:
            return False
        _write_sidecar(path, sha256, st)
    _verified.add(memo)
    return True


def _download(url: str, path: Path, sha256: str, size: int | None) -> int:
    """Download `url` into `path` (temp file, checked, fsynced, renamed) and write its sidecar; the bytes read."""
    fd, tmp = storage.new_temp(path)  # exclusive: never a file or link planted at a guessable name
    os.close(fd)
    h, n = hashlib.sha256(), 0
    try:
        def download():
            nonlocal h, n
            h, n = hashlib.sha256(), 0
            with storage.open_read(url) as src, \
                    open(os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW), "wb") as out:  # each retry anew
                while block := src.read(storage.CHUNK):
                    h.update(block)
                    n += len(block)
                    if size is not None and n > size:  # a server that sends more than the manifest lists
                        break                          # fills no disk: the checksum check below refuses it
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
        storage.retrying(url, download)
        if h.hexdigest() != sha256 or (size is not None and n != size):
            raise ShardError(f"{url}: checksum mismatch (sha256 {h.hexdigest()[:16]}…, {n} bytes; the manifest says "
                             f"{sha256[:16]}…{'' if size is None else f', {size} bytes'}): the object is damaged or "
                             "was replaced")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    st = os.stat(path)
    _write_sidecar(path, sha256, st)
    _verified.add(_memo(path, st, sha256))
    return n


# ---- locks -----------------------------------------------------------------------------------------------------

def _open_locked(lock: Path, mode: int) -> int | None:
    """An fd of `lock` (created if missing) holding flock `mode`; None if LOCK_NB and it is taken.
    A lock file an evictor unlinked while we waited is not the lock any more: open it again."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, mode)
            now = os.stat(lock)
            mine = os.fstat(fd)
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
        except BlockingIOError:
            os.close(fd)
            return None
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextmanager
def _locked(lock: Path, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
    fd = _open_locked(lock, mode)
    try:
        yield
    finally:
        os.close(fd)  # (never LOCK_UN: it would also drop a forked child's or parent's copy)


def _own_pins() -> "OrderedDict[str, int]":
    """This process's pins (a forked child closes the copies it inherited; the parent keeps its own)."""
    global _pins_pid
    if _pins_pid != os.getpid():
        for fd in _pins.values():
            try:
                os.close(fd)
            except OSError:
                pass
        _pins.clear()
        _pins_pid = os.getpid()
    return _pins


def pinned() -> list[str]:
    """The shard paths this process holds against eviction (most recently fetched last)."""
    with _state:
        return list(_own_pins())


def release() -> None:
    """Let this process's pinned shards be evicted (they are also released at exit)."""
    with _state:
        pins = _own_pins()
        while pins:
            os.close(pins.popitem()[1])


# ---- the cache -------------------------------------------------------------------------------------------------

class ShardCache:
    def __init__(self, folder: str | Path | None = None, max_bytes: int = int(DEFAULT_CACHE_GIB * 2**30)):
        self.folder = Path(folder) if folder else default_dir()
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._keys: dict[str, Path] = {}

    def key(self, url: str) -> Path:
        """The cache entry of `url`: a digest of the whole URL, then its last component (checked:
        it comes from a manifest). UnsafeNameError if that component is not a safe file name."""
        path = self._keys.get(url)
        if path is None:
            digest = hashlib.sha256(url.encode()).hexdigest()[:24]
            name = safe_name(url.rstrip("/").rsplit("/", 1)[-1], "shard name", url)
            path = self._keys[url] = inside(self.folder, f"{digest}-{name}", "cache entry", url)
        return path

    def fetch(self, url: str, sha256: str, size: int) -> str:
        """A local path holding the verified shard at `url` (downloading it if needed). The file
        stays there until this process has fetched PINNED other shards (open it before then; an
        open file stays readable even if evicted afterwards)."""
        if not storage.is_remote(url):
            return url
        path = self.key(url)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._pin(path)
        seen = _stat(path)
        if _good(path, sha256, size, self.stats):
            self.stats.hits += 1
            return str(path)
        start = time.time()
        with _locked(_hidden(path, "fetching")):  # one download of a shard at a time
            now = _stat(path)
            if now is not None and (seen is None or _identity(now) != _identity(seen)) \
                    and _good(path, sha256, size, self.stats):  # another process fetched it meanwhile
                self.stats.hits += 1
                self.stats.wait_s += time.time() - start
                return str(path)
            if now is not None:
                print(f"warning: the cached copy of {url} is damaged ({path}); downloading it again", file=sys.stderr)
            self.stats.misses += 1
            n = _download(url, path, sha256, size)
        self.stats.bytes_fetched += n
        self.stats.wait_s += time.time() - start
        self.evict(keep=path)
        return str(path)

    def _pin(self, path: Path) -> None:
        """Hold a shared lock on the shard's lock file (this process's LRU of PINNED), and mark it used."""
        with _state:
            pins = _own_pins()
            fd = pins.get(str(path))
            if fd is None:
                fd = pins[str(path)] = _open_locked(_hidden(path, "lock"), fcntl.LOCK_SH)
            pins.move_to_end(str(path))
            while len(pins) > PINNED:
                os.close(pins.popitem(last=False)[1])
            os.utime(fd)  # least recently used: by the lock file's mtime (the shard's own stat stays as verified)

    def evict(self, keep: Path | None = None) -> None:
        """Drop least recently used shards until the cache fits its limit, skipping those any
        process holds (the cache then stays over its limit until they are released)."""
        try:
            with _locked(self.folder / ".lock"):
                self._evict(keep)
        except FileNotFoundError:  # no cache folder: nothing to evict
            pass

    def _evict(self, keep: Path | None) -> None:
        shards, orphans = [], []
        try:
            listing = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        names = {e.name for e in listing}
        for e in listing:
            if e.name.startswith("."):
                if e.name.endswith(".lock") and e.name != ".lock" and e.name[1:-5] not in names:
                    orphans.append(self.folder / e.name[1:-5])  # the lock of a shard gone or never fetched
                continue
            try:
                if not e.is_file(follow_symlinks=False):
                    continue
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed since the listing
                continue
            try:
                used = os.stat(_hidden(self.folder / e.name, "lock")).st_mtime_ns
            except FileNotFoundError:  # (a shard of an older cache, never pinned: its own mtime)
                used = st.st_mtime_ns
            shards.append((used, e.name, st.st_size))
        with _state:
            mine = set(_own_pins())
        for path in orphans:
            if str(path) not in mine:
                self._remove(path)
        total = sum(size for _, _, size in shards)
        for _, name, size in sorted(shards):
            if total <= self.max_bytes:
                break
            path = self.folder / name
            if (keep is not None and path == Path(keep)) or str(path) in mine:
                continue
            if self._remove(path):
                total -= size

    @staticmethod
    def _remove(path: Path) -> bool:
        """Delete a shard and its companions if no process holds it (under the cache-wide lock)."""
        lock = _hidden(path, "lock")
        fd = _open_locked(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            return False  # in use
        try:
            for p in (path, _hidden(path, "verified"), _hidden(path, "fetching"), lock):
                p.unlink(missing_ok=True)
        finally:
            os.close(fd)
        return True


# ---- local shard sets and zarr objects -------------------------------------------------------------------------

def verify_once(path: Path, sha256: str, size: int | None, label: str, stats: CacheStats | None = None) -> None:
    """Check a local file against its checksum, once per machine: a marker keyed by path, size,
    device, inode, mtime, ctime and checksum remembers that it was good (a file rewritten or
    replaced since is hashed again). `label` names it in errors."""
    st = path.stat()
    memo = _memo(path.resolve(), st, sha256)
    if memo in _verified:
        return
    key = hashlib.sha256("\0".join(map(str, memo)).encode())
    marker = cache_root() / "verified" / key.hexdigest()[:32]
    if marker.is_file():
        _verified.add(memo)
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
    _verified.add(memo)


def _contained(url: str, dest: Path, root: Path) -> Path:
    """`dest`, confirmed to lie inside `root` (UnsafeNameError otherwise)."""
    full = Path(os.path.join(os.getcwd(), dest))  # absolute, but '..' left in place to be refused
    folder = Path(os.path.abspath(root))
    if full.is_relative_to(folder) and full != folder:
        inside(folder, full.relative_to(folder).as_posix(), "cache entry", url)
        return Path(dest)
    raise UnsafeNameError(f"{url}: cache entry {str(dest)[:80]!r} is not inside the shard cache {root}")


def download_verified(url: str, dest: Path, sha256: str, stats: CacheStats, root: Path) -> None:
    """Fetch `url` into `dest` (temp file + rename), checking its sha256, unless a verified copy is
    there (see the module docstring: sidecar, else hashed once). `dest` must stay inside `root`,
    the cache folder (UnsafeNameError otherwise)."""
    dest = _contained(url, Path(dest), Path(root))
    if _good(dest, sha256, None, stats):
        stats.hits += 1
        return
    stats.misses += 1
    start = time.time()
    dest.parent.mkdir(parents=True, exist_ok=True)
    n = _download(url, dest, sha256, None)
    stats.bytes_fetched += n
    stats.wait_s += time.time() - start
