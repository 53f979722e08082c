"""Crop sources: where the crops of a training sample come from.

The streams (streams.py) decide *what* to draw — which track, which offset, from the
seeded sampling plan; a crop source decides *how* a draw becomes batch data. Each way
of holding the data is one class behind one small protocol, chosen in one place
(`track_source`, `file_source`):

  aligned tracks (TrackSource)              unaligned source files (FileSource)
  RecordPool    WebDataset records, decoded  MemoryFiles    every file in memory
                into a pool of memory views
  ZarrCrops     a zarr store, read crop by   —
                crop (only the chunks a crop covers)
  ResidentCrops the split in device memory:  ResidentFiles  the files in device memory:
                a crop is its position       a crop is its position per slot

A source never draws a random number, so every backend yields the same samples for the
same plan (the device-resident ones: bit-identical batches, gathered on the device).
Adding a backend means adding one class here and one line in the factory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Protocol

import numpy as np

from ..errors import ShardError, UmxError
from ..shards.manifest import Manifest, TrackEntry
from ..shards.reader import ShardReader, SkippedShard
from . import batches
from .batches import Batch, BatchRing
from .slots import Slots, fill_arrays

Select = Callable[[int], bool] | None


@dataclass(frozen=True)
class SourceTrack:
    """A track as a source holds it: `handle` is the source's own (slot arrays, a zarr
    track, a device column); None for a track training leaves out (no target)."""

    id: str
    frames: int
    handle: object


class TrackSource(Protocol):
    """Crops of aligned tracks: every slot of a sample from one track, at one offset."""

    # the pool plan only (--sampling pool): True, the stream keeps a bounded pool of tracks (decoded
    # audio, or a device copy that must draw exactly what the pool draws); False: crops are drawn
    # uniformly over every track of the consumer. The global plan reads any track at any time.
    pooled: bool

    def tracks(self, entry: TrackEntry, select: Select) -> Iterator[SourceTrack]:
        """This consumer's tracks of one manifest entry, in order (`select` None: every record of
        the entry, one per record; raises SkippedShard for a bad shard under --skip-bad-shards)."""

    def crop(self, track: SourceTrack, offset: int, frames: int | None) -> object:
        """The crop of every slot at `offset` (`frames` None: the whole track)."""

    def batch(self, crops: list, track_ids: list[str]) -> Batch:
        """One batch of crops."""

    def held(self, frames: list[int], channels: int, pool_size: int, slots: int) -> tuple[int, str]:
        """What one worker holds for its crops, in bytes, and how that is reckoned (umx-bench)."""


class FileSource(Protocol):
    """Crops of unaligned source files: each slot from its own file at its own offset."""

    def files(self) -> Mapping[str, list[SourceTrack]]:
        """Every long enough file of each slot's source, in a fixed order."""

    def crop(self, file: SourceTrack, offset: int, frames: int) -> object: ...

    def batch(self, crops: list[list], track_ids: list[str]) -> Batch: ...

    def held(self, frames: list[int], channels: int, pool_size: int, slots: int) -> tuple[int, str]: ...


def _audio_batch(crops: list, track_ids: list[str], ring: BatchRing, fill) -> Batch:
    first = next(c for c in crops[0] if c is not None)
    shape = (len(crops), len(crops[0]), *first.shape)
    buffer, ticket = batches.audio_buffer(shape, ring)
    fill(buffer.numpy(), crops)
    return batches.audio(buffer, ticket, track_ids)


def _listed(entry: TrackEntry, select: Select, slots: Slots) -> Iterator[tuple[str, int, list | None]]:
    """(id, frames, what each slot holds or None if training leaves it out) of the entry's tracks
    this consumer reads, from the manifest alone (sources that need not read a record to know)."""
    for i, (track_id, frames, names) in enumerate(zip(entry.track_ids, entry.track_frames, entry.track_sources)):
        if select is None or select(i):
            yield track_id, frames, slots.names(list(names))


class RecordPool:
    """WebDataset records decoded as read-only views on the memory-mapped shard: a crop is a
    view, copied once, straight into the batch."""

    pooled = True

    def __init__(self, reader: ShardReader, slots: Slots, ring: BatchRing):
        self.reader, self.slots, self.ring = reader, slots, ring

    def tracks(self, entry: TrackEntry, select: Select) -> Iterator[SourceTrack]:
        for record in self.reader.guarded(entry, select, views=True):
            yield SourceTrack(record.id, record.frames, self.slots.parts(record))

    def crop(self, track: SourceTrack, offset: int, frames: int | None) -> list:
        if frames is None:
            return track.handle
        return [None if p is None else p[:, offset:offset + frames] for p in track.handle]

    def batch(self, crops: list, track_ids: list[str]) -> Batch:
        return _audio_batch(crops, track_ids, self.ring, fill_arrays)

    def held(self, frames: list[int], channels: int, pool_size: int, slots: int) -> tuple[int, str]:
        from ..shards.local_tar import MAPPED_SHARDS

        track = max(frames, default=0) * channels * 2
        if pool_size == 0:  # the global plan: any track at any time, read where it lies
            return 0, ("no pool (global plan: crops are views on the memory-mapped shards; the pages they touch "
                       "are page cache, shared by every worker)")
        return (min(pool_size, len(frames)) * track * slots,
                f"pool_size {pool_size} × largest track {track / 2**20:.1f} MiB × {slots} slots (and up to "
                f"{MAPPED_SHARDS} shards kept mapped: page cache, shared by every worker)")


@dataclass(frozen=True)
class _StoredCrop:
    """A crop of one array of a zarr store, read into the batch when it is filled."""

    store: object  # zarr_store.SplitCrops
    name: str
    start: int
    frames: int
    channels: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.channels, self.frames)


def _fill_stored(buf: np.ndarray, items: list[list[_StoredCrop | None]]) -> None:
    for i, crops in enumerate(items):
        for j, crop in enumerate(crops):
            if crop is None:
                buf[i, j] = 0
            else:
                crop.store.read(crop.name, crop.start, buf[i, j])


class ZarrCrops:
    """A zarr store read crop by crop: only the chunks a crop covers, no pool of tracks."""

    pooled = False

    def __init__(self, reader: ShardReader, slots: Slots, split: str, ring: BatchRing):
        self.reader, self.slots, self.split, self.ring = reader, slots, split, ring

    def tracks(self, entry: TrackEntry, select: Select) -> Iterator[SourceTrack]:
        store = self.reader.zarr.crops(self.split)
        for track_id, frames, slot_names in _listed(entry, select, self.slots):
            if slot_names is None:
                yield SourceTrack(track_id, frames, None)
                continue
            column = store.column(track_id)
            try:  # every chunk the track's crops may need: a damaged one fails (or is skipped) here
                for name in filter(None, slot_names):
                    store.check(name, column, column + frames)
            except ShardError as e:
                self.reader.skip(entry, e)
            yield SourceTrack(track_id, frames, (store, slot_names, column))

    def crop(self, track: SourceTrack, offset: int, frames: int | None) -> list:
        store, names, column = track.handle
        return [None if n is None else _StoredCrop(store, n, column + offset, frames, store.channels(n))
                for n in names]

    def batch(self, crops: list, track_ids: list[str]) -> Batch:
        return _audio_batch(crops, track_ids, self.ring, _fill_stored)

    def held(self, frames: list[int], channels: int, pool_size: int, slots: int) -> tuple[int, str]:
        store = sum(frames) * channels * 2 * slots
        return 0, (f"no pool (zarr: crops copied from memory-mapped chunks; up to the whole split, "
                   f"{store / 2**20:.0f} MiB, ends up mapped: page cache shared by every worker)")


class ResidentCrops:
    """The split in device memory (resident.ResidentTracks): a crop is its column there, the
    trainer gathers it. Draws exactly what a RecordPool draws, so batches are bit-identical."""

    pooled = True

    def __init__(self, columns: Mapping[str, int], slots: Slots):
        self.columns, self.slots = columns, slots

    def tracks(self, entry: TrackEntry, select: Select) -> Iterator[SourceTrack]:
        for track_id, frames, slot_names in _listed(entry, select, self.slots):
            if slot_names is None:
                yield SourceTrack(track_id, frames, None)
            elif track_id not in self.columns:  # its shard was skipped as bad when the split was uploaded
                raise SkippedShard(f"{track_id} is not resident")
            else:
                yield SourceTrack(track_id, frames, self.columns[track_id])

    def crop(self, track: SourceTrack, offset: int, frames: int | None) -> int:
        return track.handle + offset

    def batch(self, crops: list, track_ids: list[str]) -> Batch:
        return batches.positions(crops, track_ids)

    def held(self, frames: list[int], channels: int, pool_size: int, slots: int) -> tuple[int, str]:
        return 0, "no pool (the split is in device memory; batches are crop positions)"


def source_files(manifest: Manifest, split: str, order: tuple[str, ...], seq_len: int | None,
                 reader: ShardReader | None = None) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Every file of every source of a source-file split, long enough for a crop."""
    files: dict[str, list] = {s: [] for s in order}
    reader = reader or ShardReader(manifest)
    for entry in manifest.shards(split):
        try:
            records = list(reader.guarded(entry, views=True))
        except SkippedShard:
            continue
        for record in records:
            for name, pcm in record.sources.items():
                if name in files and (seq_len is None or pcm.shape[-1] >= seq_len):
                    files[name].append((record.id, pcm))
    empty = [s for s, f in files.items() if not f]
    if empty:
        raise UmxError(f"{manifest.location}: no '{split}' file of source(s) {', '.join(empty)} is at least "
                       f"{seq_len} samples long; lower --seq-dur")
    return files


class MemoryFiles:
    """Every file of the split read into memory by each worker (sampling is with replacement)."""

    def __init__(self, manifest: Manifest, split: str, slots: Slots, seq_len: int, reader: ShardReader,
                 ring: BatchRing):
        self.manifest, self.split, self.slots, self.seq_len = manifest, split, slots, seq_len
        self.reader, self.ring = reader, ring

    def files(self) -> dict[str, list[SourceTrack]]:
        found = source_files(self.manifest, self.split, self.slots.order, self.seq_len, self.reader)
        return {s: [SourceTrack(i, pcm.shape[-1], pcm) for i, pcm in f] for s, f in found.items()}

    def crop(self, file: SourceTrack, offset: int, frames: int) -> np.ndarray:
        return file.handle[:, offset:offset + frames]

    def batch(self, crops: list[list], track_ids: list[str]) -> Batch:
        return _audio_batch(crops, track_ids, self.ring, fill_arrays)

    def held(self, frames: list[int], channels: int, pool_size: int, slots: int) -> tuple[int, str]:
        held = sum(frames) * channels * 2 * (1 + int(self.slots.input_slot))
        return held, f"every file of the split ({held / 2**20:.1f} MiB)"


class ResidentFiles:
    """The source files in device memory (resident.ResidentSources): a crop is a column per slot."""

    def __init__(self, files: Mapping[str, list[tuple[str, int, int]]]):
        self._files = {s: [SourceTrack(i, frames, column) for i, frames, column in f] for s, f in files.items()}

    def files(self) -> dict[str, list[SourceTrack]]:
        return self._files

    def crop(self, file: SourceTrack, offset: int, frames: int) -> int:
        return file.handle + offset

    def batch(self, crops: list[list], track_ids: list[str]) -> Batch:
        return batches.positions(crops, track_ids)

    def held(self, frames: list[int], channels: int, pool_size: int, slots: int) -> tuple[int, str]:
        return 0, "no pool (the split is in device memory; batches are crop positions)"


# --- the one place a backend is chosen -----------------------------------------------------------

def track_source(manifest: Manifest, reader: ShardReader, slots: Slots, split: str, seq_len: int | None,
                 resident: Mapping[str, int] | None = None) -> TrackSource:
    """The crop source for aligned tracks: the device-resident split where there is one, a zarr
    store crop by crop (fixed-length crops), else WebDataset records in a pool."""
    if resident is not None:
        return ResidentCrops(resident, slots)
    if manifest.storage.format == "zarr" and seq_len is not None:
        return ZarrCrops(reader, slots, split, BatchRing())
    return RecordPool(reader, slots, BatchRing())


def file_source(manifest: Manifest, reader: ShardReader, slots: Slots, split: str, seq_len: int,
                resident: Mapping[str, list[tuple[str, int, int]]] | None = None) -> FileSource:
    """The crop source for unaligned source files: in device memory where they are, else in memory."""
    if resident is not None:
        return ResidentFiles(resident)
    return MemoryFiles(manifest, split, slots, seq_len, reader, BatchRing())
