"""WebDataset tar shards: one record per track, written and read.

A record is `__key__` = track id, `meta.json` (id, original name, frames,
sources, files) and one `<source>.npy` per source holding int16 PCM
`[channels, frames]`. Shards roll over at `max_bytes` and are named
`{split}-{index:06d}.tar`; each is written under a temp name and renamed when
complete, and listed with its sha256 for the manifest.

`read_shard` reads a local shard through the random-access fast path
(local_tar.py) and a remote one by streaming it through webdataset's tar iterator.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_iterator

from ..errors import ShardError
from . import local_tar, records, storage

DEFAULT_SHARD_BYTES = 256 * 1024 * 1024


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


class ShardWriter:
    """Append track records to `{split}-NNNNNN.tar` shards in `folder`.

    `entries` lists finished shards (name, sha256, bytes, track ids/frames)
    in manifest form.
    """

    def __init__(self, folder: str | Path, split: str, max_bytes: int = DEFAULT_SHARD_BYTES, start_index: int = 0):
        self.folder, self.split, self.max_bytes = Path(folder), split, max_bytes
        self.entries: list[dict] = []
        self._index = start_index  # > 0 when resuming after finished shards
        self._open: tuple | None = None  # (file, tarwriter, tmp path, ids, frames, sources)

    @property
    def is_open(self) -> bool:
        return self._open is not None

    def would_roll_over(self, record: records.TrackRecord) -> bool:
        """Whether writing `record` closes the open shard first (it would pass max_bytes)."""
        size = sum(a.nbytes for a in record.sources.values())
        size += record.mixture.nbytes if record.mixture is not None else 0
        return self._open is not None and self._open[0].tell() + size > self.max_bytes

    def write(self, record: records.TrackRecord) -> None:
        if self.would_roll_over(record):
            self.close_shard()
        if self._open is None:
            fd, tmp = storage.new_temp(self.folder / shard_name(self.split, self._index))
            f = os.fdopen(fd, "wb")
            self._open = (f, wds.TarWriter(f, encoder=True, mtime=0.0), tmp, [], [], [])
        f, tar, _, ids, frames, names = self._open
        sample = {"__key__": record.id, "meta.json": record.meta}
        for name, pcm in record.sources.items():
            sample[f"{name}.npy"] = np.ascontiguousarray(pcm, dtype=np.int16)
        if record.mixture is not None:
            sample["mixture.npy"] = np.ascontiguousarray(record.mixture, dtype=np.int16)
        tar.write(sample)
        ids.append(record.id)
        frames.append(int(record.frames))
        names.append(list(record.sources))

    def close_shard(self) -> dict:
        """Finish the open shard (fsync, rename to its final name); its manifest entry."""
        f, tar, tmp, ids, frames, names = self._open
        tar.close()
        f.close()  # (TarWriter closes only files it opened itself)
        name = shard_name(self.split, self._index)
        final = self.folder / name
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        digest, nbytes = storage.sha256_of(str(final))
        entry = {"name": name, "sha256": digest, "bytes": nbytes,
                 "track_ids": ids, "track_frames": frames, "track_sources": names}
        self.entries.append(entry)
        self._index += 1
        self._open = None
        return entry

    def close(self) -> list[dict]:
        if self._open is not None:
            self.close_shard()
        return self.entries

    def abort(self) -> None:
        """Drop the open, half-written shard (after a failed write, e.g. a full disk): close its
        file without the tar stream flushing again (which would fail once more, at garbage
        collection, on stderr) and free its space."""
        if self._open is None:
            return
        f, tar, tmp = self._open[:3]
        self._open = None
        stream = getattr(getattr(tar, "tarstream", None), "fileobj", None)
        if stream is not None and hasattr(stream, "closed"):
            stream.closed = True  # tarfile's _Stream: close() (and __del__) then write nothing
        try:
            f.close()
        except OSError:
            pass
        Path(tmp).unlink(missing_ok=True)


def decode_sample(url: str, sample: dict) -> records.TrackRecord:
    """One record of the streaming path: a webdataset sample (`group_by_keys`'s dict of bytes) decoded."""
    import json

    key = sample["__key__"]
    try:
        meta = json.loads(sample["meta.json"])
        sources = {name: np.load(io.BytesIO(sample[f"{name}.npy"]), allow_pickle=False)
                   for name in meta["sources"]}
        mixture = np.load(io.BytesIO(sample["mixture.npy"]), allow_pickle=False) if "mixture.npy" in sample else None
    except (KeyError, ValueError, OSError) as e:
        raise ShardError(f"{url}: record '{key}' is damaged ({type(e).__name__}: {e})") from None
    return records.checked_record(url, key, meta, sources, mixture)


def read_shard(url: str, select: Callable[[int], bool] | None = None, views: bool = False
               ) -> Iterator[records.TrackRecord]:
    """Decode the records of one shard, in order.

    `select(record_index)` lets a worker skip (not decode) records that belong
    to another worker when shards are split at record granularity. With
    `views=True` the arrays of a local shard are read-only views on a memory
    map of it (a loader that only copies crops out of them reads no more);
    otherwise every array is a fresh, writable copy.
    """
    try:
        stream = storage.open_read(url)
    except FileNotFoundError:
        raise ShardError(f"{url}: shard is missing") from None
    with stream:
        try:
            if not storage.is_remote(url) and hasattr(stream, "fileno"):
                yield from local_tar.read_local(url, stream, select, views)
                return
            files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
            for index, sample in enumerate(group_by_keys(files)):
                if select is None or select(index):
                    yield decode_sample(url, sample)
        except ShardError:
            raise
        except Exception as e:  # tarfile raises several types for damaged archives
            raise ShardError(f"{url}: shard is damaged ({type(e).__name__}: {e})") from None
