"""Every path is a URL: one fsspec-based opener for local paths, file://, s3://,
gs://, http(s):// — plus atomic local writes and checksums.

Credentials and endpoints come from the usual places (AWS env vars and
profiles, AWS_ENDPOINT_URL for S3-compatible stores, Google application
default credentials) plus `configure(storage_options, anon)` for anything
else (`--storage-options JSON`, `--anon`). Transient errors are retried with
backoff; permanent ones become one clear error naming the URL.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import IO, Callable, Iterator, TypeVar

import fsspec

from ..errors import UmxError

CHUNK = 1 << 20
RETRIES = 4
T = TypeVar("T")

# per-protocol options; set once by a CLI before loader workers fork
_OPTIONS: dict = {}


class StorageError(UmxError):
    """A URL could not be read or written (names the URL and why)."""


def configure(storage_options: dict | None = None, anon: bool = False) -> None:
    """Options for remote filesystems (`--storage-options JSON`, `--anon`)."""
    _OPTIONS.clear()
    _OPTIONS.update(storage_options or {})
    if anon:
        _OPTIONS["anon"] = True


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


PROTOCOLS = ("file", "s3", "gs", "gcs", "http", "https")  # what umx reads shard sets from and writes them to


def filesystem(url: str):
    """(fsspec filesystem, path within it) for a URL or local path."""
    protocol = str(url).split("://", 1)[0] if "://" in str(url) else "file"
    if protocol not in PROTOCOLS:
        raise StorageError(f"{url}: '{protocol}://' is not a storage umx reads or writes (use a local path or "
                           f"{', '.join(p + '://' for p in PROTOCOLS[1:])})")
    options = {} if protocol in ("file", "http", "https") else dict(_OPTIONS)
    if protocol in ("http", "https"):
        options = {k: v for k, v in _OPTIONS.items() if k == "client_kwargs"}
    try:
        return fsspec.core.url_to_fs(str(url), **options)
    except (ImportError, ValueError) as e:
        raise StorageError(f"{url}: cannot open this kind of URL ({e})") from None


def join(base: str, name: str) -> str:
    """Join a shard-set location and a member name (works for URLs and paths)."""
    return base.rstrip("/") + "/" + name if "://" in base else str(Path(base) / name)


def _permanent(url: str, e: BaseException) -> StorageError | None:
    """The clear error for a failure no retry can fix, or None if it may be transient."""
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, FileNotFoundError) or "NoSuchBucket" in text or "NoSuchKey" in text or "404" in text:
        what = "no such bucket" if "NoSuchBucket" in text or "bucket" in text.lower() and "not" in text.lower() \
            else "not found"
        return StorageError(f"{url}: {what} ({text.splitlines()[0][:200]})")
    if isinstance(e, PermissionError) or any(k in text for k in ("AccessDenied", "InvalidAccessKeyId",
                                                                  "SignatureDoesNotMatch", "403", "Forbidden")):
        return StorageError(f"{url}: access denied — check the credentials (AWS_ACCESS_KEY_ID / profile / "
                            f"--storage-options) ({text.splitlines()[0][:200]})")
    if isinstance(e, (IsADirectoryError, NotADirectoryError, UmxError)):
        return StorageError(f"{url}: {text}")
    return None


def _missing_bucket(url: str) -> bool:
    """Whether the bucket of a bucket URL does not exist (a store may say 'denied' for it)."""
    if not str(url).startswith(("s3://", "gs://", "gcs://")):
        return False
    try:
        fs, path = filesystem(url)
        fs.info(path.split("/", 1)[0])
        return False
    except FileNotFoundError:
        return True
    except Exception:
        return False


def retrying(url: str, action: Callable[[], T], what: str = "read") -> T:
    """Run `action`, retrying transient errors with exponential backoff."""
    delay = 0.2
    for attempt in range(RETRIES + 1):
        try:
            return action()
        except Exception as e:  # filesystems raise anything; sort it out below
            permanent = _permanent(url, e)
            if permanent is not None:
                if _missing_bucket(url):
                    bucket = str(url).split("://", 1)[1].split("/", 1)[0]
                    raise StorageError(f"{url}: no such bucket '{bucket}'") from None
                raise permanent from None
            if attempt == RETRIES:
                raise StorageError(f"{url}: could not {what} after {RETRIES + 1} tries ({type(e).__name__}: {e})") \
                    from None
            time.sleep(delay)
            delay *= 2


def open_read(url: str) -> IO[bytes]:
    """Open a local path or URL for binary reading (a missing local file: FileNotFoundError)."""
    if not is_remote(url):
        return open(str(url).removeprefix("file://"), "rb")
    fs, path = filesystem(url)
    if str(url).startswith(("http://", "https://")):  # plain HTTP servers may not do range requests
        return retrying(url, lambda: fs.open(path, "rb", block_size=0))
    return retrying(url, lambda: fs.open(path, "rb"))


def read_bytes(url: str) -> bytes:
    if not is_remote(url):
        return Path(str(url).removeprefix("file://")).read_bytes()
    fs, path = filesystem(url)
    return retrying(url, lambda: fs.cat_file(path))


def listing(folder: str) -> dict[str, int]:
    """Names and sizes of the objects directly in a folder or bucket prefix ({} if none).

    Listing, not HEAD requests: one round trip for a whole shard set, and some
    S3-compatible stores answer HEAD for a missing key with a misleading error."""
    fs, path = filesystem(folder)

    def ls():
        try:
            return fs.ls(path, detail=True, refresh=True) if is_remote(folder) else fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in retrying(folder, ls)
            if e.get("type") != "directory"}


def exists(url: str) -> bool:
    """Whether a file or object exists (for an object: by listing its folder)."""
    if not is_remote(url):
        return Path(str(url).removeprefix("file://")).exists()
    folder, name = str(url).rstrip("/").rsplit("/", 1)
    return name in listing(folder)


def upload(local: Path, url: str) -> None:
    """Put a local file at a URL (remote) or path (local, atomically)."""
    if not is_remote(url):
        dest = Path(str(url).removeprefix("file://"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(local, "rb") as src, atomic_writer(dest) as out:
            while block := src.read(CHUNK):
                out.write(block)
        return
    fs, path = filesystem(url)
    retrying(url, lambda: fs.put_file(str(local), path), "upload")


def remove(url: str) -> None:
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


# a temp file is always a new file: O_EXCL fails on any name that exists, a planted symbolic link included
_NEW_FILE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
             | getattr(os, "O_BINARY", 0))
TEMP_MARK = ".tmp"  # temp files are `.<name>.tmp<random>`: prep's clean-up finds them by it


def new_temp(path: Path) -> tuple[int, Path]:
    """(fd, path) of a file created here and now next to `path`, at a name no one can guess in advance
    (every temp file umx writes should come from here): a link
    or file planted in the folder can never become the file umx writes (a predictable name, such as
    one with the pid, could be a link to anywhere)."""
    for _ in range(64):
        tmp = path.with_name(f".{path.name}{TEMP_MARK}{secrets.token_hex(8)}")
        try:
            return os.open(tmp, _NEW_FILE, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as e:  # permission denied, read-only, no space: name the file meant
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from None
    raise OSError(errno.EEXIST, "no free temporary name next to it", str(path))


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write to `path` via a temp file; the final name appears only when complete.

    The temp file is created exclusively (never an existing file or link); the rename replaces
    whatever is at `path`, a symbolic link itself rather than the file it points to."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = new_temp(path)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if e.errno is not None and e.filename in (None, str(tmp)):  # name the file meant, not the temp file
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from None
        raise
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj) -> None:
    with atomic_writer(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def sha256_of(url: str) -> tuple[str, int]:
    """sha256 hex digest and byte count of a file or URL (read once, in chunks)."""
    h = hashlib.sha256()
    n = 0
    with open_read(url) as f:
        while block := f.read(CHUNK):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n
