"""WebDataset tar shards: one record per track.

A record is `__key__` = track id, `meta.json` (id, original name, frames,
sources, files) and one `<source>.npy` per source holding int16 PCM
`[channels, frames]`. Shards roll over at `max_bytes` and are named
`{split}-{index:06d}.tar`; each is written under a temp name and renamed when
complete, and listed with its sha256 for the manifest.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_iterator

from ..errors import ShardError
from . import storage

DEFAULT_SHARD_BYTES = 256 * 1024 * 1024


@dataclass
class TrackRecord:
    """One track as stored: int16 `[channels, frames]` per source."""

    id: str
    meta: dict
    sources: dict[str, np.ndarray]
    mixture: np.ndarray | None = None  # the real mixture file, where the layout has one

    def mixture_or_sum(self) -> np.ndarray:
        """float32 mixture: the stored one, else the sum of the sources."""
        from ..audio import to_float32

        if self.mixture is not None:
            return to_float32(self.mixture)
        return sum(to_float32(a) for a in self.sources.values())

    @property
    def frames(self) -> int:
        return next(iter(self.sources.values())).shape[-1]


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

    def would_roll_over(self, record: TrackRecord) -> bool:
        """Whether writing `record` closes the open shard first (it would pass max_bytes)."""
        size = sum(a.nbytes for a in record.sources.values())
        size += record.mixture.nbytes if record.mixture is not None else 0
        return self._open is not None and self._open[0].tell() + size > self.max_bytes

    def write(self, record: TrackRecord) -> None:
        if self.would_roll_over(record):
            self.close_shard()
        if self._open is None:
            tmp = self.folder / f".{shard_name(self.split, self._index)}.tmp"
            f = open(tmp, "wb")
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
        tar.close()  # closes f too
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


def _decode(url: str, sample: dict) -> TrackRecord:
    import json

    key = sample["__key__"]
    try:
        meta = json.loads(sample["meta.json"])
        sources = {name: np.load(io.BytesIO(sample[f"{name}.npy"]), allow_pickle=False)
                   for name in meta["sources"]}
        mixture = np.load(io.BytesIO(sample["mixture.npy"]), allow_pickle=False) if "mixture.npy" in sample else None
    except (KeyError, ValueError, OSError) as e:
        raise ShardError(f"{url}: record '{key}' is damaged ({type(e).__name__}: {e})") from None
    arrays = {**sources, **({"mixture": mixture} if mixture is not None else {})}
    for name, pcm in arrays.items():
        if pcm.dtype != np.int16 or pcm.ndim != 2:
            raise ShardError(f"{url}: record '{key}' array '{name}' is not int16 [channels, frames]")
    return TrackRecord(key, meta, sources, mixture)


def read_shard(url: str, select: Callable[[int], bool] | None = None) -> Iterator[TrackRecord]:
    """Decode the records of one shard, in order.

    `select(record_index)` lets a worker skip (not decode) records that belong
    to another worker when shards are split at record granularity.
    """
    try:
        stream = storage.open_read(url)
    except FileNotFoundError:
        raise ShardError(f"{url}: shard is missing") from None
    with stream:
        try:
            files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
            for index, sample in enumerate(group_by_keys(files)):
                if select is None or select(index):
                    yield _decode(url, sample)
        except ShardError:
            raise
        except Exception as e:  # tarfile raises several types for damaged archives
            raise ShardError(f"{url}: shard is damaged ({type(e).__name__}: {e})") from None
