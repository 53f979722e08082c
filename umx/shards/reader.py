"""Reading shards for training: fetch (remote: through the cache), verify, decode.

A shard is checked against its manifest entry before any record is used:
remote shards on download (sha256), local shards once per machine (sha256,
remembered by a marker keyed by path, size and mtime), and every shard's
records against the entry's track ids. A bad shard is an error naming it —
or, with `skip_bad`, skipped and counted. Counters (bytes fetched, cache
hits/misses, seconds waiting, skipped shards) are taken by the loader and
travel with the batches to the trainer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ShardError, UmxError
from . import storage
from .cache import DEFAULT_CACHE_GIB, ShardCache, verify_once
from .manifest import Manifest, ShardEntry, TrackEntry
from .records import TrackRecord
from .webdataset import read_shard
from .zarr_store import ZarrReader


class ShardReader:
    def __init__(self, manifest: Manifest, cache_dir: str | None = None, cache_bytes: int = int(DEFAULT_CACHE_GIB * 2**30),
                 skip_bad: bool = False, verify_local: bool = True):
        self.manifest, self.skip_bad, self.verify_local = manifest, skip_bad, verify_local
        self.cache = ShardCache(cache_dir, cache_bytes)
        self.bad: list[str] = []
        self._taken = self.cache.stats.as_dict()
        self.zarr = ZarrReader(manifest.location, dict(manifest.storage.objects), self.cache) \
            if manifest.storage.format == "zarr" else None

    def _local_path(self, entry: ShardEntry) -> str:
        url = self.manifest.shard_url(entry)
        if storage.is_remote(url):
            return self.cache.fetch(url, entry.sha256, entry.bytes)
        path = Path(url.removeprefix("file://"))
        if not path.is_file():
            raise ShardError(f"{path}: shard is missing (listed in {self.manifest.location}/manifest.json)")
        if self.verify_local:
            self._verify_once(path, entry)
        return str(path)

    def _verify_once(self, path: Path, entry: ShardEntry) -> None:
        verify_once(path, entry.sha256, entry.bytes, f"{path}", self.cache.stats)

    def records(self, entry: TrackEntry, select: Callable[[int], bool] | None = None,
                views: bool = False) -> Iterator[TrackRecord]:
        """The records of one shard (those `select` keeps), checked against the manifest
        (`views`: read-only arrays on a memory map of the local shard; see read_shard).
        In a zarr shard set an entry is a group of tracks of the store (the same
        groups as the WebDataset shards), read from the store's arrays."""
        keep = [i for i in range(len(entry.track_ids)) if select is None or select(i)]
        expected = [entry.track_ids[i] for i in keep]
        if self.zarr is not None:
            records = self.zarr.records(entry.split, expected)
        else:
            records = read_shard(self._local_path(entry), select, views=views)
        got = 0
        for record in records:
            if got >= len(expected) or record.id != expected[got]:
                raise ShardError(f"{self.manifest.shard_url(entry)}: record '{record.id}' does not match the "
                                 f"manifest (expected {expected[got] if got < len(expected) else 'no more records'})")
            self._check_record(entry, keep[got], record)
            got += 1
            yield record
        if got != len(expected):
            raise ShardError(f"{self.manifest.shard_url(entry)}: holds {got} of the {len(expected)} records the "
                             "manifest lists")

    def _check_record(self, entry: TrackEntry, index: int, record: TrackRecord) -> None:
        """A record holds what the manifest says: its sources, and every array `[channels, frames]`
        of the listed length (a disagreeing record would crop out of bounds or train on garbage)."""
        listed = entry.track_sources[index]
        if len(record.sources) != len(listed) or sorted(record.sources) != sorted(listed):
            raise ShardError(f"{self._where(entry, record)} holds sources {list(record.sources)}; the manifest "
                             f"lists {list(listed)}")
        shape = (self.manifest.channels, entry.track_frames[index])
        arrays = {**record.sources, **({"mixture": record.mixture} if record.mixture is not None else {})}
        for name, pcm in arrays.items():
            if pcm.shape != shape:
                raise ShardError(f"{self._where(entry, record)} array '{name}' has shape {list(pcm.shape)}; the "
                                 f"manifest says [{shape[0]}, {shape[1]}]")

    def _where(self, entry: TrackEntry, record: TrackRecord) -> str:
        return f"{self.manifest.shard_url(entry)}: record '{record.id}'"

    def guarded(self, entry: TrackEntry, select=None, views: bool = False) -> Iterator[TrackRecord]:
        """`records`, but with skip_bad a bad shard is reported and skipped, not raised."""
        try:
            yield from self.records(entry, select, views)
        except (ShardError, storage.StorageError) as e:
            self.skip(entry, e)

    def skip(self, entry: TrackEntry, error: Exception) -> None:
        """Raise `error`, or with skip_bad report the entry as skipped and raise SkippedShard."""
        if not self.skip_bad:
            raise error
        self.bad.append(self.manifest.shard_url(entry))
        print(f"warning: skipping bad shard ({error})", file=sys.stderr)
        raise SkippedShard(str(error)) from None

    def take_metrics(self) -> dict:
        """Counters since the last call (bytes fetched, hits, misses, wait seconds, skipped shards)."""
        now = self.cache.stats.as_dict()
        delta = {k: now[k] - self._taken[k] for k in now}
        self._taken = now
        delta["bad_shards"], self.bad = self.bad, []
        return delta


class SkippedShard(UmxError):
    """Raised by `ShardReader.guarded` after a bad shard was skipped (the stream redistributes its draws)."""


def add_metrics(total: dict, delta: dict | None) -> dict:
    """Accumulate loader counters (as taken from batches) into `total`."""
    if delta:
        for k, v in delta.items():
            total[k] = total.get(k, [] if isinstance(v, list) else 0) + v
    return total


