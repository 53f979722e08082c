"""The local fast path of reading WebDataset tar shards (webdataset.read_shard's, for local files).

Local shards are read with random access: tar headers are parsed in place,
records another worker owns are seeked over, and each `.npy` payload is read
straight into its array (one copy from the page cache) or, with `views=True`,
is an array view on a read-only memory map of the shard (no copy at all; a
loader then touches only the pages of the crops it draws). Grouping, skipping
and every check are webdataset's / np.load's, so records and errors are the
same as the streaming path's (webdataset.py), which remote URLs still use.
"""

from __future__ import annotations

import io
import mmap
import os
import re
import tarfile
from typing import Callable, Iterator

import numpy as np
from numpy.lib import format as npformat
from webdataset.tariterators import base_plus_ext

from ..errors import ShardError
from .records import TrackRecord, checked_record

_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator default
_NPY_MAGIC = b"\x93NUMPY"


_USTAR = b"ustar\x0000"  # POSIX ustar magic + version, what Python's tarfile (and so ShardWriter) writes
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
_PAX_KEPT = {b"mtime", b"atime", b"ctime", b"uid", b"gid", b"uname", b"gname"}  # change no name, size, offset


def _octal(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):
        raise ValueError("base-256 number")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _pax_path(data: bytes) -> str | None | bool:
    """The `path` of a pax extended header (None: it has none), or False for anything the
    fast scan leaves to tarfile."""
    pos, path = 0, None
    while pos < len(data):
        m = _PAX_RECORD.match(data, pos)
        if m is None:
            return False
        length, key = int(m.group(1)), m.group(2)
        end = pos + length
        if length < len(m.group(0)) + 1 or end > len(data) or data[end - 1:end] != b"\n":
            return False
        if key == b"path":
            try:
                path = data[m.end():end - 1].decode("utf-8")
            except UnicodeDecodeError:
                return False
            if not path or path.endswith("/"):
                return False
        elif key not in _PAX_KEPT:
            return False
        pos = end
    return path


def scan(fh, size: int) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of every member of a well-formed ustar/pax archive of
    regular files — what tarfile finds there, at a fraction of its cost — or None for any
    other archive, damaged or unusual, which tarfile then reads (so its behaviour decides)."""
    found, offset, path = [], 0, None
    while True:
        fh.seek(offset)
        buf = fh.read(512)
        if len(buf) < 512:
            return found if not buf and offset == size and offset > 0 and path is None else None
        if not buf.strip(b"\0"):  # end-of-archive block
            return found if offset > 0 and path is None else None
        try:
            checksum, length = _octal(buf[148:156]), _octal(buf[124:136])
            for lo, hi in ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345)):
                _octal(buf[lo:hi])  # mode … devminor: tarfile parses them too, a bad one ends its archive
        except ValueError:
            return None
        if checksum != sum(buf[:148]) + 256 + sum(buf[156:]) or buf[257:265] != _USTAR or buf[345:346] != b"\0":
            return None
        kind, data = buf[156:157], offset + 512
        if kind == b"x" and path is None:
            fh.seek(data)
            path = _pax_path(fh.read(length))
            if path is False:
                return None
            path = path or ""  # "": a pax header without a path
        elif kind in (b"0", b"\0"):
            if kind == b"\0" and buf[:100].split(b"\0", 1)[0].endswith(b"/"):
                return None  # tarfile: a V7 directory, whatever a pax path says
            try:
                name = path or buf[:100].split(b"\0", 1)[0].decode("utf-8")
            except UnicodeDecodeError:
                return None
            if not name or name.endswith("/"):
                return None
            found.append((name, data, length))
            path = None
        else:
            return None
        offset = data + (length + 511) // 512 * 512


def members(fh) -> Iterator[tuple[str, dict[str, tuple[int, int]]]]:
    """(key, {suffix: (data offset, size)}) per record, grouped as webdataset's group_by_keys does."""
    end = os.fstat(fh.fileno()).st_size
    entries = scan(fh, end)
    if entries is None:
        fh.seek(0)
        entries = ((i.name, i.offset_data, i.size) for i in tarfile.open(fileobj=fh, mode="r:") if i.isreg())
    key, current = None, None
    for name, offset_data, size in entries:
        if name is None:
            continue
        if "/" not in name and name.startswith("__") and name.endswith("__"):
            continue
        if _SKIP_META.match(name):
            continue
        if offset_data + size > end:  # where the streaming reader fails reading it
            raise tarfile.ReadError("unexpected end of data")
        prefix, suffix = base_plus_ext(name)
        if prefix is None:
            continue
        suffix = suffix.lower()
        if current is None or prefix != key:
            if current is not None:
                yield key, current
            key, current = prefix, {}
        if suffix in current or suffix in ("__key__", "__url__"):  # group_by_keys' samples start with these
            raise ValueError(f"{name}: duplicate file name in tar file {suffix} {list(current)}")
        current[suffix] = (offset_data, size)
    if current is not None:
        yield key, current


def read_at(fh, offset: int, size: int) -> bytes:
    """`size` bytes of `fh` at `offset` (tarfile.ReadError where the file ends first)."""
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise tarfile.ReadError("unexpected end of data")
    return data


_N = rb"(?:0|[1-9]\d*)"
_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=][a-z]\d+)', 'fortran_order': (True|False), 'shape': \((|" + _N
                         + rb",|" + _N + rb"(?:, " + _N + rb")+)\), \} *\n")  # np.save's layout: (), (n,), (n, m…)
_DTYPES: dict[bytes, np.dtype] = {}


def npy_header(head: bytes, version: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a .npy header: np.save's own layout parsed
    directly, anything else by numpy's reader (which validates it)."""
    start = 10 if version == b"\x01\x00" else 12
    m = _NPY_HEADER.fullmatch(head, start) if len(head) - start <= 10000 else None  # numpy's max_header_size
    if m is not None:
        dtype = _DTYPES.get(m.group(1))
        if dtype is None:
            try:
                dtype = _DTYPES[m.group(1)] = np.dtype(m.group(1).decode("ascii"))
            except TypeError:  # not a dtype: numpy's reader below raises its ValueError, as np.load does
                pass
        if dtype is not None and not dtype.hasobject:
            return tuple(int(x) for x in m.group(3).split(b",") if x), m.group(2) == b"True", dtype
    stream = io.BytesIO(head)
    npformat.read_magic(stream)
    read_header = npformat.read_array_header_1_0 if version == b"\x01\x00" else npformat.read_array_header_2_0
    return read_header(stream)


def read_npy(fh, mm, offset: int, size: int) -> np.ndarray:
    """One `.npy` member as np.load(allow_pickle=False) returns it, without the copies."""
    fh.seek(offset)
    prefix = fh.read(min(size, 12))
    version = prefix[6:8]
    if len(prefix) < 12 or prefix[:6] != _NPY_MAGIC or version not in (b"\x01\x00", b"\x02\x00"):
        return np.load(io.BytesIO(read_at(fh, offset, size)), allow_pickle=False)  # np.load decides
    start = 10 + int.from_bytes(prefix[8:10], "little") if version == b"\x01\x00" else \
        12 + int.from_bytes(prefix[8:12], "little")
    shape, fortran_order, dtype = npy_header(read_at(fh, offset, min(size, start)), version)
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    if dtype.itemsize == 0 or min(shape, default=0) < 0:  # zero-width items, negative dimensions: np.load decides
        return np.load(io.BytesIO(read_at(fh, offset, size)), allow_pickle=False)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if size - start < nbytes:
        raise ValueError(f"EOF: reading array data, expected {nbytes} bytes got {max(0, size - start)}")
    if mm is not None:
        array = np.frombuffer(mm, dtype, count, offset + start)
    else:
        array = np.empty(count, dtype)
        fh.seek(offset + start)
        if nbytes and fh.readinto(array.view(np.uint8)) != nbytes:  # (datetimes have no buffer format)
            raise ValueError(f"EOF: reading array data, expected {nbytes} bytes")
    return array.reshape(shape[::-1]).transpose() if fortran_order else array.reshape(shape)


def _decode_local(url: str, fh, mm, key: str, files: dict[str, tuple[int, int]]) -> TrackRecord:
    import json

    try:
        meta = json.loads(read_at(fh, *files["meta.json"]))
        sources = {name: read_npy(fh, mm, *files[f"{name}.npy"]) for name in meta["sources"]}
        mixture = read_npy(fh, mm, *files["mixture.npy"]) if "mixture.npy" in files else None
    except (KeyError, ValueError, OSError) as e:
        raise ShardError(f"{url}: record '{key}' is damaged ({type(e).__name__}: {e})") from None
    return checked_record(url, key, meta, sources, mixture)


MAPPED_SHARDS = 64  # local shards a process keeps mapped and decoded, for `views` reads


class _Mapped:
    """A local shard kept mapped, its records decoded once (read-only views on the map).

    A loader reads the same shards every epoch. Mapping a shard afresh each time costs a
    page fault per 4 KiB page a crop touches (and re-parsing every header); kept mapped,
    later epochs only copy crops. The pages are page cache, shared by every process that
    maps the shard; keyed by the file's identity, size and mtime, so a rewritten shard is
    mapped anew.
    """

    _open: "dict[tuple, _Mapped]" = {}  # insertion order is recency

    def __init__(self, url: str, fh):
        self.url, self.members = url, list(members(fh))
        self.mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if self.members else None
        self.records: dict[int, TrackRecord] = {}

    @classmethod
    def of(cls, url: str, fh) -> "_Mapped":
        st = os.fstat(fh.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        shard = cls._open.pop(key, None) or cls(url, fh)
        cls._open[key] = shard
        while len(cls._open) > MAPPED_SHARDS:  # arrays still in use keep their map alive
            cls._open.pop(next(iter(cls._open)))
        return shard

    def record(self, index: int, fh) -> TrackRecord:
        if index not in self.records:
            key, files = self.members[index]
            self.records[index] = _decode_local(self.url, fh, self.mm, key, files)
        return self.records[index]


def read_local(url: str, fh, select: Callable[[int], bool] | None, views: bool) -> Iterator[TrackRecord]:
    """The records of local shard `url`, open as `fh`: webdataset.read_shard's fast path
    (`select`, `views` as there; errors are raised as they are, read_shard wraps them)."""
    if views:
        shard = _Mapped.of(url, fh)
        for index in range(len(shard.members)):
            if select is None or select(index):
                yield shard.record(index, fh)
        return
    for index, (key, files) in enumerate(members(fh)):
        if select is None or select(index):
            yield _decode_local(url, fh, None, key, files)
