"""The streaming loader: shards → pool of tracks → int16 crop batches.

Workers split the shard list without duplicates (whole shards when there are
enough, otherwise records of a shard round-robin), decode records into a
small pool of tracks and draw random `seq_dur` crops of every source at one
offset. Each track is drawn `samples_per_track` times per epoch (open-unmix's
balanced track sampling); the pool only decides the order, and which tracks
share a batch (what the device-side remix mixes). A batch is an int16 tensor
`[batch, slots, channels, samples]`: the target first, then the interferers,
then — where the shard set's input is a stored file (aligned) — the input.
Float conversion, gains, swaps and remixing happen on the device.

How to build the slots of a record is the manifest's `sampling` section; the
loader never looks at the layout name.

Two sources need no pool, so crops are drawn uniformly over every track of the
consumer (open-unmix's distribution): a zarr store, read crop by crop (only the
chunks a crop covers), and a split held in device memory (`resident.py`), for
which batches carry crop positions instead of audio.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import random
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ShardError, UmxError
from ..shards.manifest import Manifest
from ..shards.reader import ShardReader, SkippedShard
from ..shards.webdataset import TrackRecord
from . import plan, sampling

COMPLEMENT = "accompaniment"  # a target open-unmix allows for musdb: everything but the vocals


@dataclass
class Batch:
    audio: torch.Tensor | None  # int16 [batch, slots, channels, samples]; None: see `starts`
    track_ids: list[str]
    io: dict | None = None  # loader counters since the previous batch (see ShardReader.take_metrics)
    starts: torch.Tensor | None = None  # int64 [batch] (or [batch, slots]): crop columns on the device (resident.py)

    def pin_memory(self) -> "Batch":
        if self.audio is None:
            return self
        return Batch(self.audio.pin_memory(), self.track_ids, self.io)

    def __reduce__(self):
        ticket = getattr(self, "_ticket", None)  # a worker's batch in a reused shared buffer
        if ticket is None:
            return (Batch, (self.audio, self.track_ids, self.io, self.starts))
        return (_received, (self.audio, self.track_ids, self.io, ticket))


@dataclass(frozen=True)
class Slots:
    """How a record becomes `[slots, channels, time]`: target first, then interferers
    (zero-padded to a fixed count), then the stored input where it is the model input.

    `complement`: the target is the sum of every source but `order[0]` (open-unmix's
    musdb `accompaniment`): slot 0 holds the vocals and the trainer takes y = x - vocals.
    """

    order: tuple[str, ...]
    n_interferers: int
    input_slot: bool
    complement: bool
    silence_missing: bool

    def names(self, sources: list[str]) -> list[str | None] | None:
        """What every slot holds for a track with these sources: a source name, "mixture"
        (the stored input), or None for a silent slot; None for the whole track if training
        leaves it out (open-unmix leaves tracks without the target out)."""
        if not self.usable(sources):
            return None
        target = self.order[0]
        others = [s for s in self.order[1:] if s in sources] + sorted(s for s in sources if s not in self.order)
        names = [target if target in sources else None, *others, *[None] * (self.n_interferers - len(others))]
        return names + ["mixture"] if self.input_slot else names

    def parts(self, record: TrackRecord) -> list[np.ndarray | None] | None:
        """The record's `[channels, time]` array of every slot, None for a silent slot
        (or None for the whole record, if training leaves it out)."""
        names = self.names(list(record.sources))
        if names is None:
            return None
        if self.input_slot and record.mixture is None:
            raise UmxError(f"record '{record.id}' has no stored input mixture")
        return [None if n is None else record.mixture if n == "mixture" else record.sources[n] for n in names]

    @property
    def count(self) -> int:
        """Slots per sample: target, interferers, and the stored input where there is one."""
        return 1 + self.n_interferers + int(self.input_slot)

    def usable(self, source_names: list[str]) -> bool:
        """Does training use a record with these sources (see `parts`)?"""
        return self.silence_missing or self.order[0] in source_names

    def stack(self, record: TrackRecord) -> np.ndarray | None:
        """The record as one int16 `[slots, channels, time]` array."""
        parts = self.parts(record)
        return None if parts is None else _fill(np.empty((1, len(parts), *_shape(parts)), np.int16), [parts])[0]


def make_slots(manifest: Manifest, target: str, silence_missing: bool = False) -> Slots:
    """The slot layout for `target`, or an error naming the target and what the set has."""
    sources = manifest.sources
    complement = target == COMPLEMENT and "vocals" in sources and manifest.sampling["records"] == "tracks"
    if target not in sources and not complement:
        extra = f", {COMPLEMENT}" if "vocals" in sources and len(sources) > 1 else ""
        raise UmxError(f"{manifest.location}: target '{target}' is not a source of this shard set "
                       f"(sources: {', '.join(sources)}{extra})")
    first = "vocals" if complement else target
    order = (first, *[s for s in sources if s != first])
    if manifest.sampling["remix"] == "joint":  # variable source sets: pad to the largest record
        n_interferers = max(manifest.raw["splits"][s].get("max_sources", len(sources)) for s in manifest.splits())
    else:
        n_interferers = len(sources) - 1
    return Slots(order, n_interferers, manifest.sampling["train_input"] == "mixture", complement, silence_missing)


def _consumer() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def _shape(crops: list[np.ndarray | None]) -> tuple[int, ...]:
    return next(c for c in crops if c is not None).shape


def _fill(buf: np.ndarray, items: list[list[np.ndarray | None]]) -> np.ndarray:
    """Copy each item's slot crops into `buf[item, slot]` (zeros where a slot is None)."""
    for i, crops in enumerate(items):
        for j, crop in enumerate(crops):
            if crop is None:
                buf[i, j] = 0
            elif isinstance(crop, np.ndarray):
                buf[i, j] = crop
            else:
                crop.read_into(buf[i, j])
    return buf


_RINGS: "weakref.WeakValueDictionary[str, BatchRing]" = weakref.WeakValueDictionary()


class BatchRing:
    """Shared-memory batch buffers that loader workers reuse.

    A batch made in a worker reaches the main process through shared memory. Fresh
    shared memory for every batch (what torch's collate does) costs a page fault per 4 KiB
    page the first time it is written — on some machines more than filling the batch. So
    each worker fills one of up to `SLOTS` buffers it keeps. The main process uses the
    batch where it lies (no copy) and hands the slot back through a small shared table
    when the last tensor viewing that memory is freed (after pinning, for a GPU; after
    the step, on the CPU). A worker reuses a slot only once the main process handed back
    that very batch (a token per batch); otherwise — no free slot, a spawned worker, an
    unknown receiver, batches kept — it takes fresh shared memory, so a batch is never
    overwritten while anything can still read it.

    Created with the stream, in the main process, so forked workers share the table.
    """

    SLOTS = 8  # per worker: prefetch_factor 4 in flight, one being filled, those the consumer holds
    MAX_WORKERS = 256

    def __init__(self):
        self.id = f"{os.getpid()}-{id(self)}-{int.from_bytes(os.urandom(4), 'little')}"
        try:
            self._table = mp.get_context("fork").Array("q", self.SLOTS * self.MAX_WORKERS, lock=True)
        except (ValueError, OSError, ImportError):  # no fork / no shared memory here: never reuse
            self._table = None
        self._pid, self._slots, self._next = None, {}, 0
        self._free: list[np.ndarray] = []  # in-process buffers whose batches are gone
        _RINGS[self.id] = self

    def __getstate__(self) -> dict:  # pickled into a spawned worker: that worker never reuses
        return {"id": self.id, "_table": None, "_pid": None, "_slots": {}, "_next": 0, "_free": []}

    KEEP_FREE = 2  # in-process buffers kept for reuse

    def take_local(self, shape: tuple[int, ...]) -> torch.Tensor:
        """An int16 tensor for a batch made in this process (no worker): a buffer of an
        earlier batch once nothing uses that batch any more, else a new one (numpy's: it
        asks for transparent huge pages, cheaper to fault in than torch.empty's)."""
        n = int(np.prod(shape))
        i = next((i for i, b in enumerate(self._free) if b.size >= n), None)
        buf = np.empty(n, np.int16) if i is None else self._free.pop(i)
        array = buf[:n].reshape(shape)
        weakref.finalize(array, self._reuse, buf)  # when the last tensor on `array` is gone
        return torch.from_numpy(array)

    def _reuse(self, buf: np.ndarray) -> None:
        self._free.append(buf)
        if len(self._free) > self.KEEP_FREE:
            self._free.pop(0)

    def take(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, tuple | None]:
        """An int16 tensor in shared memory for a batch, and the hand-back ticket (or None)."""
        info = get_worker_info()
        nbytes = int(np.prod(shape)) * 2
        if self._table is not None and info is not None and info.id < self.MAX_WORKERS:
            if self._pid != os.getpid():  # first use in this worker process
                self._pid, self._slots = os.getpid(), {}
                self._next = int.from_bytes(os.urandom(3), "little") << 32  # tokens unique to this process
            for s in range(self.SLOTS):
                index = info.id * self.SLOTS + s
                storage, token = self._slots.get(s, (None, None))
                if token is not None and self._table[index] != token:
                    continue  # still in flight
                if storage is None or storage.nbytes() < nbytes:
                    storage = torch.UntypedStorage._new_shared(nbytes)
                self._next += 1
                self._slots[s] = (storage, self._next)
                return torch.empty(0, dtype=torch.int16).set_(storage, 0, shape), (self.id, index, self._next)
        storage = torch.UntypedStorage._new_shared(nbytes)
        return torch.empty(0, dtype=torch.int16).set_(storage, 0, shape), None

    def give_back(self, index: int, token: int) -> None:
        try:
            self._table[index] = token
        except Exception:  # interpreter shutdown: nothing will reuse the slot
            pass


def _received(audio: torch.Tensor, track_ids: list[str], io: dict | None, ticket: tuple) -> Batch:
    """Unpickling a worker's batch in the main process: the batch stays in the worker's
    shared buffer, which goes back to the worker once nothing here uses that memory any
    more (the last tensor viewing it is freed; see BatchRing)."""
    ring = _RINGS.get(ticket[0])
    if ring is None or ring._table is None:
        return Batch(audio, track_ids, io)  # not the process that made the ring: never handed back
    array = audio.numpy()
    weakref.finalize(array, ring.give_back, *ticket[1:])  # runs when the last tensor on `array` is gone
    return Batch(torch.from_numpy(array), track_ids, io)


def _batch(out: list, ring: BatchRing | None = None) -> Batch:
    """`out`: (slot crops, track id) per sample → one int16 `[batch, slots, channels, time]`
    tensor; every crop is copied once, straight into the batch (in a worker: into shared
    memory, from `ring` where there is one)."""
    crops = [c for c, _ in out]
    if isinstance(crops[0], int) or isinstance(crops[0][0], int):  # positions in a device-resident split
        batch = Batch(None, [t for _, t in out], starts=torch.tensor(crops, dtype=torch.int64))
        out.clear()
        return batch
    shape = (len(crops), len(crops[0]), *_shape(crops[0]))
    ticket = None
    if get_worker_info() is None:
        audio = ring.take_local(shape) if ring is not None else torch.from_numpy(np.empty(shape, np.int16))
    elif ring is not None:
        audio, ticket = ring.take(shape)
    else:
        audio = torch.empty(0, dtype=torch.int16).set_(torch.UntypedStorage._new_shared(int(np.prod(shape)) * 2),
                                                       0, shape)
    _fill(audio.numpy(), crops)
    ids = [t for _, t in out]
    out.clear()
    batch = Batch(audio, ids)
    batch._ticket = ticket
    return batch


@dataclass(frozen=True)
class StoredCrop:
    """A crop of one array of a zarr store, read into the batch when it is filled."""

    store: object  # zarr_store.SplitCrops
    name: str
    start: int
    frames: int
    channels: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.channels, self.frames)

    def read_into(self, out: np.ndarray) -> None:
        self.store.read(self.name, self.start, out)


@dataclass(frozen=True)
class StoredTrack:
    """A track of a zarr store: what each slot reads, from which column of the split's arrays."""

    store: object  # zarr_store.SplitCrops
    names: list
    column: int

    def crops(self, offset: int, frames: int) -> list[StoredCrop | None]:
        return [None if n is None else StoredCrop(self.store, n, self.column + offset, frames,
                                                  self.store.channels(n)) for n in self.names]


class _Stream(IterableDataset):
    """What both streams share: epoch, resume position, and the per-consumer plan."""

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch `epoch`, skipping the first `start_step` batches of this rank
        (an exact mid-epoch resume: the draws are replayed, not stored)."""
        self.epoch, self.start_step = epoch, start_step

    def batches_per_epoch(self, n_workers: int = 0) -> int:
        """Batches every rank yields per epoch with `n_workers` loader workers."""
        return sum(plan.rank_batches(self.samples_per_epoch(), self.world_size, max(1, n_workers), self.batch_size))

    def _position(self) -> tuple[int, int, int, int, int]:
        """(role, n_workers, consumer, quota, batches to skip) of the calling worker."""
        worker, n_workers = _consumer()
        total = self.samples_per_epoch()
        done, next_role = plan.resume_point(
            self.start_step, plan.rank_batches(total, self.world_size, n_workers, self.batch_size))
        role = (next_role + worker) % n_workers
        q = plan.quota(total, self.rank, self.world_size, role, n_workers)
        return role, n_workers, self.rank * n_workers + role, q, done[role]

    def _emit(self, out: list, skip: list[int]) -> Iterator[Batch]:
        if skip[0] > 0:
            skip[0] -= 1
            out.clear()
        else:
            batch = _batch(out, getattr(self, "ring", None))
            batch.io = self.reader.take_metrics()
            yield batch


class TrainStream(_Stream):
    """Iterable over the crop batches of one epoch of track records; `set_epoch` first."""

    def __init__(self, manifest: Manifest, target: str, seq_len: int | None, batch_size: int,
                 samples_per_track: int = 1, pool_size: int = 8, seed: int = 42, split: str = "train",
                 rank: int = 0, world_size: int = 1, silence_missing_targets: bool = False,
                 reader: ShardReader | None = None):
        self.manifest, self.split = manifest, split
        self.reader = reader or ShardReader(manifest)
        self.ring = BatchRing()  # made here, before workers fork, so they share its table
        self.slots = make_slots(manifest, target, silence_missing_targets)
        self.shards = manifest.shards(split)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.samples_per_track, self.pool_size = samples_per_track, max(1, pool_size)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_step = 1, 0
        self.resident: dict[str, int] | None = None  # track id → column, where the split is on the device
        self.eligible = sum(self._eligible(e) for e in self.shards)
        if self.eligible == 0:
            frames = [f for s in self.shards for f in s.track_frames]
            why = f"at least {seq_len} samples long (longest: {max(frames, default=0)}); lower --seq-dur" \
                if seq_len and max(frames, default=0) < seq_len else f"with target '{self.slots.order[0]}'"
            raise UmxError(f"{manifest.location}: no '{split}' track is {why}")

    def _eligible(self, entry, select: Callable[[int], bool] | None = None) -> int:
        """Tracks of a shard that training uses (long enough, and holding the target)."""
        return sum(1 for i, (f, names) in enumerate(zip(entry.track_frames, entry.track_sources))
                   if (select is None or select(i)) and (self.seq_len is None or f >= self.seq_len)
                   and self.slots.usable(names))

    def samples_per_epoch(self) -> int:
        return self.eligible * self.samples_per_track

    def _reads(self, consumer: int, n_consumers: int) -> list:
        """(shard entry, record filter) this consumer reads this epoch, in order."""
        shards = [self.shards[i] for i in self._shard_order()]
        return [(shards[pos], select) for pos, select in
                plan.assign([len(e.track_ids) for e in shards], consumer, n_consumers)]

    def check(self, n_workers: int) -> None:
        """Fail fast, before any worker starts, if some consumer of some rank would get no track."""
        n_workers = max(1, n_workers)
        n = self.world_size * n_workers
        for c in range(n):
            rank, worker = divmod(c, n_workers)
            if plan.quota(self.samples_per_epoch(), rank, self.world_size, worker, n_workers) and \
                    not sum(self._eligible(e, sel) for e, sel in self._reads(c, n)):
                raise plan.no_data(self.manifest.location, rank, worker, self.world_size, n_workers, "track")

    def _shard_order(self) -> np.ndarray:
        return sampling.rng(self.seed, sampling.SHARD_ORDER, self.epoch).permutation(len(self.shards))

    def __iter__(self) -> Iterator[Batch]:
        worker, n_workers, consumer, q, skip = self._position()
        reads = self._reads(consumer, self.world_size * n_workers)
        n_tracks = sum(self._eligible(entry, select) for entry, select in reads)
        if n_tracks == 0:
            if q == 0:
                return
            raise plan.no_data(self.manifest.location, self.rank, worker, self.world_size, n_workers, "track")
        rng = sampling.rng(self.seed, sampling.CROPS, self.epoch, consumer)
        draws = np.full(n_tracks, q // n_tracks)
        draws[rng.permutation(n_tracks)[: q % n_tracks]] += 1  # the quota, spread evenly over the tracks
        pool: list[list] = []  # [slot arrays int16 [C, T] (None: silent), draws left, track id, frames]
        # a pool bounds the decoded tracks in memory; crops read from a zarr store or the device need none,
        # so those draw uniformly over every track of this consumer, as open-unmix does
        pool_size = math.inf if self.resident is None and self._random_access() else self.pool_size
        out: list[tuple[list, str]] = []
        skip_left, k, debt, last = [skip], 0, 0, None
        for entry, select in reads:
            first = k
            try:
                for parts, frames, track_id in self._tracks(entry, select):
                    if self.seq_len is not None and frames < self.seq_len:
                        continue  # open-unmix excludes tracks shorter than seq_dur
                    if parts is None:
                        continue
                    k += 1
                    n, debt = int(draws[k - 1]) + debt, 0  # a skipped shard's draws go to the next tracks
                    if n == 0:
                        continue
                    last = [parts, n, track_id, frames]
                    pool.append(last)
                    while len(pool) >= pool_size:
                        yield from self._draw(pool, rng, out, skip_left)
            except SkippedShard:
                end = first + self._eligible(entry, select)
                debt += int(draws[k:end].sum())
                k = end
        if debt:
            if last is None:
                raise UmxError(f"{self.manifest.location}: every shard of rank {self.rank} worker {worker} was bad")
            pool.append([last[0], debt, last[2], last[3]])
        while pool:
            yield from self._draw(pool, rng, out, skip_left)
        if out:
            yield from self._emit(out, skip_left)

    def _random_access(self) -> bool:
        """zarr stores are read crop by crop, only the chunks a crop covers (no pool of tracks)."""
        return self.reader.zarr is not None and self.seq_len is not None

    def _tracks(self, entry, select) -> Iterator[tuple]:
        """(slot arrays or None, frames, id) of each record of `entry` this consumer reads; with
        a device-resident split, the track's column there instead of its audio (nothing is read)."""
        if self.resident is None and not self._random_access():
            for record in self.reader.guarded(entry, select, views=True):
                yield self.slots.parts(record), record.frames, record.id
            return
        store = self.reader.zarr.crops(self.split) if self.resident is None else None
        for i, (track_id, frames, names) in enumerate(zip(entry.track_ids, entry.track_frames,
                                                          entry.track_sources)):
            if select is not None and not select(i):
                continue
            if not self.slots.usable(names):
                yield None, frames, track_id
            elif store is not None:
                slot_names, column = self.slots.names(names), store.column(track_id)
                try:  # every chunk the track's crops may need: a damaged one fails (or is skipped) here
                    for name in filter(None, slot_names):
                        store.check(name, column, column + frames)
                except ShardError as e:
                    self.reader.skip(entry, e)
                yield StoredTrack(store, slot_names, column), frames, track_id
            elif track_id not in self.resident:  # its shard was skipped as bad when the split was uploaded
                raise SkippedShard(f"{track_id} is not resident")
            else:
                yield self.resident[track_id], frames, track_id

    def _draw(self, pool: list[list], rng: np.random.Generator, out: list, skip: list[int]) -> Iterator[Batch]:
        i = int(rng.integers(len(pool)))
        parts, left, track_id, frames = pool[i]
        if self.seq_len is None:
            crops = parts
        else:
            offset = int(rng.integers(frames - self.seq_len + 1))
            end = offset + self.seq_len
            if isinstance(parts, int):  # a column of the device-resident split
                crops = parts + offset
            elif isinstance(parts, StoredTrack):  # read when the batch is filled
                crops = parts.crops(offset, self.seq_len)
            else:
                crops = [None if p is None else p[:, offset:end] for p in parts]  # views: copied once, into the batch
        out.append((crops, track_id))
        if left == 1:
            pool[i] = pool[-1]
            pool.pop()
        else:
            pool[i][1] = left - 1
        if len(out) == self.batch_size or self.seq_len is None:
            yield from self._emit(out, skip)


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


class SourceFileStream(_Stream):
    """Unaligned sources (sourcefolder): each sample takes one random file per source,
    each at its own random offset; an epoch is `nb_samples` samples (open-unmix's
    `--nb-train-samples`). Sampling is with replacement, so every worker holds the
    whole split and draws its share of the samples from its own stream."""

    def __init__(self, manifest: Manifest, target: str, seq_len: int, batch_size: int, nb_samples: int,
                 seed: int = 42, split: str = "train", rank: int = 0, world_size: int = 1,
                 reader: ShardReader | None = None):
        if seq_len is None:
            raise UmxError("unaligned source folders need a crop length: --seq-dur must be > 0")
        self.manifest, self.split = manifest, split
        self.reader = reader or ShardReader(manifest)
        self.ring = BatchRing()  # made here, before workers fork, so they share its table
        self.slots = make_slots(manifest, target)
        self.seq_len, self.batch_size, self.nb_samples = seq_len, batch_size, nb_samples
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_step = 1, 0
        self.resident: dict[str, list[tuple[str, int, int]]] | None = None  # source → (file id, frames, column)
        lengths = [f for e in manifest.shards(split) for f in e.track_frames]
        if not any(f >= seq_len for f in lengths):
            raise UmxError(f"{manifest.location}: no '{split}' file is at least {seq_len} samples long "
                           f"(longest: {max(lengths, default=0)}); lower --seq-dur")

    def samples_per_epoch(self) -> int:
        return self.nb_samples

    def __iter__(self) -> Iterator[Batch]:
        worker, n_workers, consumer, q, skip = self._position()
        if q == 0:
            return
        files = self.resident or source_files(self.manifest, self.split, self.slots.order, self.seq_len,
                                               self.reader)
        rng = sampling.rng(self.seed, sampling.CROPS, self.epoch, consumer)
        out: list = []
        skip_left = [skip]
        for _ in range(q):
            parts, ids = [], []
            for source in self.slots.order:
                file = files[source][int(rng.integers(len(files[source])))]
                if self.resident is not None:  # (id, frames, column): send the crop's column
                    offset = int(rng.integers(file[1] - self.seq_len + 1))
                    parts.append(file[2] + offset)
                else:
                    offset = int(rng.integers(file[1].shape[-1] - self.seq_len + 1))
                    parts.append(file[1][:, offset: offset + self.seq_len])
                ids.append(file[0])
            out.append((parts, "+".join(ids)))
            if len(out) == self.batch_size:
                yield from self._emit(out, skip_left)
        if out:
            yield from self._emit(out, skip_left)


@dataclass
class ValidItem:
    """One validation example: source slots (target first) and the stored input, if any."""

    id: str
    sources: torch.Tensor  # int16 [slots, channels, frames]
    mixture: torch.Tensor | None  # int16 [channels, frames]


def load_validation(manifest: Manifest, target: str, split: str = "valid", silence_missing: bool = False,
                    nb_samples: int = 100, seq_len: int | None = None,
                    reader: ShardReader | None = None) -> list[ValidItem]:
    """The validation set: full tracks, or for unaligned sources `nb_samples` crops that are
    the same every epoch (each seeded by its index, as open-unmix seeds them)."""
    slots = make_slots(manifest, target, silence_missing)
    use_mixture = manifest.sampling["valid_input"] == "mixture"
    slots_no_input = Slots(slots.order, slots.n_interferers, False, slots.complement, slots.silence_missing)
    if manifest.sampling["valid"] == "crops":
        files = source_files(manifest, split, slots.order, seq_len, reader)
        items = []
        for index in range(nb_samples):
            parts = []
            for source in slots.order:
                r = random.Random(index)
                _, pcm = r.choice(files[source])
                start = int(r.uniform(0, pcm.shape[-1] - seq_len)) if seq_len else 0
                parts.append(pcm[:, start: start + seq_len] if seq_len else pcm)
            items.append(ValidItem(f"sample_{index}", torch.from_numpy(np.stack(parts)), None))
        return items
    items = []
    reader = reader or ShardReader(manifest)
    for entry in manifest.shards(split):
        try:
            records = list(reader.guarded(entry))
        except SkippedShard:
            continue
        for record in records:
            stack = slots_no_input.stack(record)
            if stack is None:
                continue
            mix = torch.from_numpy(record.mixture) if use_mixture and record.mixture is not None else None
            items.append(ValidItem(record.id, torch.from_numpy(stack), mix))
    if not items:
        raise UmxError(f"{manifest.location}: the '{split}' split has no track with target '{target}'"
                       + ("" if silence_missing else " (--silence-missing-targets would keep them)"))
    return items
