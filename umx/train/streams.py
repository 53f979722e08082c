"""The training streams: sampling plan → crop source → draws → batches.

An epoch's samples are drawn by one of two plans (plan.py, chosen in `choose_plan`):

- global: the epoch is a list of samples fixed by (seed, epoch) alone — every track
  `samples_per_track` times in a random order (open-unmix's balanced track sampling),
  each at a random offset — cut into global batches; a consumer computes the batches
  the plan gives it and reads their crops directly. Nothing depends on the ranks or
  workers, so a run resumes on another topology with exactly the samples it had not
  yet seen (`set_epoch(…, consumed=…)`).
- pool: workers split the manifest's entries without duplicates, each draws its quota
  of samples from the seeded generator of (seed, epoch, consumer) over a bounded pool
  of decoded tracks, which also decides which tracks share a batch (what the
  device-side remix mixes). For shards that can only be read in order.

A crop source (crops.py) turns every draw into batch data. Every batch carries its
global index: the device augmentation and dropout are seeded by (seed, epoch, index).
Float conversion, gains, swaps and remixing happen on the device. The streams never
look at the layout name, only at the manifest's sampling section and the slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import UmxError
from ..shards import storage
from ..shards.manifest import Manifest, TrackEntry
from ..shards.reader import ShardReader, SkippedShard
from . import crops, plan, sampling
from .batches import Batch
from .slots import make_slots


def choose_plan(wanted: str, manifest: Manifest, split: str, cache_bytes: int, resident: object | None) -> str:
    """--sampling auto: the global plan wherever every track can be read at any time — the
    device-resident split, a zarr store, local shards, remote shards the cache holds whole;
    the pool plan for remote WebDataset shards larger than the cache (read in order)."""
    if wanted != "auto":
        return wanted
    if resident is not None or manifest.storage.format == "zarr" or manifest.sampling.records == "source_files":
        return "global"
    shards = manifest.shards(split)
    remote = bool(shards) and storage.is_remote(manifest.shard_url(shards[0]))
    return "pool" if remote and sum(e.bytes for e in shards) > cache_bytes else "global"


def _consumer() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


@dataclass(frozen=True)
class Position:
    """Where the calling worker stands in the epoch's plan."""

    role: int  # which worker's share it plays (after a resume, not always its own id)
    n_workers: int
    consumer: int  # rank × workers + role: the seed of its draws
    quota: int  # samples it yields this epoch
    skip: int  # batches already consumed before a mid-epoch resume (replayed, not yielded)


class _Stream(IterableDataset):
    """What both streams share: epoch, resume position, the plan, batching."""

    source: "crops.TrackSource | crops.FileSource"
    reader: ShardReader
    plan: str  # "global" | "pool"

    def set_epoch(self, epoch: int, start_step: int = 0, consumed: int | None = None) -> None:
        """Iterate epoch `epoch` from this rank's step `start_step` on: in the global plan after
        `consumed` global batches (default: `start_step` steps of this topology; another number
        after a run on another topology), in the pool plan replaying the skipped batches' draws."""
        self.epoch, self.start_step = epoch, start_step
        self.consumed = start_step * self.world_size if consumed is None else consumed

    @property
    def elastic(self) -> bool:
        """Whether a resume may change the ranks or workers mid-epoch (the global plan)."""
        return self.plan == "global"

    def samples_per_epoch(self) -> int:
        raise NotImplementedError

    def global_batches(self) -> int:
        return plan.global_batches(self.samples_per_epoch(), self.batch_size)

    def batches_per_epoch(self, n_workers: int = 0) -> int:
        """Batches (steps) every rank yields per epoch with `n_workers` loader workers."""
        if self.elastic:
            return plan.steps_left(self.global_batches(), 0, self.world_size)
        return sum(plan.rank_batches(self.samples_per_epoch(), self.world_size, max(1, n_workers), self.batch_size))

    def steps_remaining(self, n_workers: int = 0) -> int:
        """Steps every rank takes from where `set_epoch` started the epoch to its end."""
        if self.elastic:
            return plan.steps_left(self.global_batches(), self.consumed, self.world_size)
        return self.batches_per_epoch(n_workers) - self.start_step

    def _mine(self) -> list[int]:
        """The global batches the calling worker yields (global plan)."""
        worker, n_workers = _consumer()
        return plan.worker_batches(self.global_batches(), self.consumed, self.world_size, self.rank, worker, n_workers)

    def _emit(self, crops_: list, ids: list[str], offsets: list, index: int) -> Batch:
        batch = self.source.batch(crops_, ids)
        batch.index, batch.offsets, batch.io = index, offsets, self.reader.take_metrics()
        return batch

    def position(self) -> Position:
        worker, n_workers = _consumer()
        total = self.samples_per_epoch()
        done, next_role = plan.resume_point(
            self.start_step, plan.rank_batches(total, self.world_size, n_workers, self.batch_size))
        role = (next_role + worker) % n_workers
        return Position(role, n_workers, self.rank * n_workers + role,
                        plan.quota(total, self.rank, self.world_size, role, n_workers), done[role])

    def indices(self, pos: Position) -> list[int]:
        """The global index of each batch a pool-plan worker makes this epoch (skipped ones too):
        step × world_size + rank, the step being where the DataLoader takes it."""
        order = plan.schedule(plan.rank_batches(self.samples_per_epoch(), self.world_size, pos.n_workers,
                                                self.batch_size))
        return [t * self.world_size + self.rank for t, role in enumerate(order) if role == pos.role]


class _Batcher:
    """Collects drawn samples into batches of `size`, dropping the first `skip` batches (a resume)."""

    def __init__(self, stream: _Stream, size: int, skip: int, indices: list[int]):
        self.stream, self.size, self.skip, self.indices = stream, size, skip, iter(indices)
        self.crops: list = []
        self.ids: list[str] = []
        self.offsets: list[int] = []

    def add(self, crop, track_id: str, offset: int, flush: bool = False) -> Iterator[Batch]:
        self.crops.append(crop)
        self.ids.append(track_id)
        self.offsets.append(offset)
        if flush or len(self.crops) == self.size:
            yield from self.emit()

    def emit(self) -> Iterator[Batch]:
        if not self.crops:
            return
        index = next(self.indices)
        if self.skip > 0:
            self.skip -= 1
        else:
            yield self.stream._emit(self.crops, self.ids, self.offsets, index)
        self.crops, self.ids, self.offsets = [], [], []


@dataclass
class _Pooled:
    track: crops.SourceTrack
    left: int  # draws of this track still to come this epoch


class TrainStream(_Stream):
    """Iterable over the crop batches of one epoch of aligned tracks; `set_epoch` first."""

    def __init__(self, manifest: Manifest, target: str | Sequence[str], seq_len: int | None, batch_size: int,
                 samples_per_track: int = 1, pool_size: int = 8, seed: int = 42, split: str = "train",
                 rank: int = 0, world_size: int = 1, silence_missing_targets: bool = False,
                 reader: ShardReader | None = None, resident: Mapping[str, int] | None = None,
                 plan: str = "global"):
        if plan not in ("global", "pool"):
            raise ValueError(f"plan must be 'global' or 'pool' (choose_plan resolves 'auto'), got {plan!r}")
        self.manifest, self.split, self.plan = manifest, split, plan
        self.reader = reader or ShardReader(manifest)
        self.slots = make_slots(manifest, target, silence_missing_targets)
        self.shards = manifest.shards(split)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.samples_per_track, self.pool_size = samples_per_track, max(1, pool_size)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.set_epoch(1)
        # made here, in the main process, before loader workers fork (they share its buffers' table)
        self.source = crops.track_source(manifest, self.reader, self.slots, split, seq_len, resident)
        # the global plan's tracks: (entry, record, frames) of every track training uses, in manifest order
        self.table = [(e, i, f) for e, entry in enumerate(self.shards)
                      for i, (f, names) in enumerate(zip(entry.track_frames, entry.track_sources))
                      if self._long_enough(f) and self.slots.usable(list(names))]
        self.eligible = len(self.table)
        if self.eligible == 0:
            frames = [f for s in self.shards for f in s.track_frames]
            why = f"at least {seq_len} samples long (longest: {max(frames, default=0)}); lower --seq-dur" \
                if seq_len and max(frames, default=0) < seq_len else "with target '" + "', '".join(self.slots.order[:self.slots.required]) + "'"
            raise UmxError(f"{manifest.location}: no '{split}' track is {why}")

    def _eligible(self, entry: TrackEntry, select: Callable[[int], bool] | None = None) -> int:
        """Tracks of an entry that training uses (long enough, and holding the target)."""
        return sum(1 for i, (f, names) in enumerate(zip(entry.track_frames, entry.track_sources))
                   if (select is None or select(i)) and self._long_enough(f) and self.slots.usable(list(names)))

    def _long_enough(self, frames: int) -> bool:
        return self.seq_len is None or frames >= self.seq_len  # open-unmix leaves shorter tracks out

    def samples_per_epoch(self) -> int:
        return self.eligible * self.samples_per_track

    def _reads(self, consumer: int, n_consumers: int) -> list:
        """(entry, record filter) this consumer reads this epoch, in order."""
        order = sampling.rng(self.seed, sampling.SHARD_ORDER, self.epoch).permutation(len(self.shards))
        shards = [self.shards[i] for i in order]
        return [(shards[pos], select) for pos, select in
                plan.assign([len(e.track_ids) for e in shards], consumer, n_consumers)]

    def check(self, n_workers: int) -> None:
        """Fail fast, before any worker starts, if some consumer of some rank would get no track
        (pool plan; in the global plan every consumer may read every track)."""
        if self.elastic:
            return
        n_workers = max(1, n_workers)
        n = self.world_size * n_workers
        for c in range(n):
            rank, worker = divmod(c, n_workers)
            if plan.quota(self.samples_per_epoch(), rank, self.world_size, worker, n_workers) and \
                    not sum(self._eligible(e, sel) for e, sel in self._reads(c, n)):
                raise plan.no_data(self.manifest.location, rank, worker, self.world_size, n_workers, "track")

    def _draws(self, pos: Position, reads: list, rng: np.random.Generator) -> np.ndarray:
        """How often each of this consumer's tracks is drawn: the quota, spread evenly."""
        n_tracks = sum(self._eligible(entry, select) for entry, select in reads)
        if n_tracks == 0:
            raise plan.no_data(self.manifest.location, self.rank, pos.role, self.world_size, pos.n_workers, "track")
        draws = np.full(n_tracks, pos.quota // n_tracks)
        draws[rng.permutation(n_tracks)[: pos.quota % n_tracks]] += 1
        return draws

    def _pooled_tracks(self, reads: list, draws: np.ndarray, role: int) -> Iterator[_Pooled]:
        """The consumer's tracks in reading order with their draws; a skipped shard's draws go
        to the next tracks (or, at the end, to the last track read)."""
        k, debt, last = 0, 0, None
        for entry, select in reads:
            first = k
            try:
                for track in self.source.tracks(entry, select):
                    if not self._long_enough(track.frames) or track.handle is None:
                        continue
                    k += 1
                    n, debt = int(draws[k - 1]) + debt, 0
                    if n:
                        last = track
                        yield _Pooled(track, n)
            except SkippedShard:
                end = first + self._eligible(entry, select)
                debt += int(draws[k:end].sum())
                k = end
        if debt:
            if last is None:
                raise UmxError(f"{self.manifest.location}: every shard of rank {self.rank} worker {role} was bad")
            yield _Pooled(last, debt)

    def epoch_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """The global plan's samples of the epoch: each one's track (an index into `table`) and a
        uniform number in [0, 1) that places its offset; a function of (seed, epoch) alone."""
        rng = sampling.rng(self.seed, sampling.CROPS, self.epoch)
        order = rng.permutation(np.repeat(np.arange(self.eligible), self.samples_per_track))
        return order, rng.random(order.size)

    def __iter__(self) -> Iterator[Batch]:
        if self.elastic:
            yield from self._global()
        else:
            yield from self._pooled()

    def _global(self) -> Iterator[Batch]:
        mine = self._mine()
        if not mine:
            return
        order, place = self.epoch_samples()
        tracks = _Tracks(self)
        for j in mine:
            crops_, ids, offsets = [], [], []
            for g in range(j * self.batch_size, min(order.size, (j + 1) * self.batch_size)):
                track = tracks.get(int(order[g]))
                offset = 0 if self.seq_len is None else int(place[g] * (track.frames - self.seq_len + 1))
                crops_.append(self.source.crop(track, offset, self.seq_len))
                ids.append(track.id)
                offsets.append(offset)
            yield self._emit(crops_, ids, offsets, j)

    def _pooled(self) -> Iterator[Batch]:
        pos = self.position()
        reads = self._reads(pos.consumer, self.world_size * pos.n_workers)
        if pos.quota == 0:
            return
        rng = sampling.rng(self.seed, sampling.CROPS, self.epoch, pos.consumer)
        draws = self._draws(pos, reads, rng)
        # a pool bounds the decoded tracks in memory; a source read crop by crop needs none, so it
        # draws uniformly over every track of this consumer, as open-unmix does
        limit = self.pool_size if self.source.pooled else math.inf
        out = _Batcher(self, self.batch_size, pos.skip, self.indices(pos))
        pool: list[_Pooled] = []
        for item in self._pooled_tracks(reads, draws, pos.role):
            pool.append(item)
            while len(pool) >= limit:
                yield from self._draw(pool, rng, out)
        while pool:
            yield from self._draw(pool, rng, out)
        yield from out.emit()

    def _draw(self, pool: list[_Pooled], rng: np.random.Generator, out: _Batcher) -> Iterator[Batch]:
        i = int(rng.integers(len(pool)))
        item = pool[i]
        offset = 0 if self.seq_len is None else int(rng.integers(item.track.frames - self.seq_len + 1))
        crop = self.source.crop(item.track, offset, self.seq_len)
        if item.left == 1:
            pool[i] = pool[-1]
            pool.pop()
        else:
            item.left -= 1
        yield from out.add(crop, item.track.id, offset, flush=self.seq_len is None)


class _Tracks:
    """A worker's random access to the global plan's tracks: an entry's tracks are listed by the
    source the first time one is drawn, and kept (views on memory-mapped shards, zarr handles,
    device columns). A track of a shard skipped as bad (--skip-bad-shards) is replaced by the
    next good one in the table, which every worker finds alike."""

    def __init__(self, stream: TrainStream):
        self.stream = stream
        self.entries: dict[int, list[crops.SourceTrack] | None] = {}

    def _entry(self, e: int) -> list[crops.SourceTrack] | None:
        if e not in self.entries:
            try:
                self.entries[e] = list(self.stream.source.tracks(self.stream.shards[e], None))
            except SkippedShard:
                self.entries[e] = None
        return self.entries[e]

    def get(self, k: int) -> crops.SourceTrack:
        table = self.stream.table
        for step in range(len(table)):
            e, i, _ = table[(k + step) % len(table)]
            listed = self._entry(e)
            if listed is not None and listed[i].handle is not None:
                return listed[i]
        raise UmxError(f"{self.stream.manifest.location}: every '{self.stream.split}' shard was bad")


class SourceFileStream(_Stream):
    """Unaligned sources (sourcefolder): each sample takes one random file per source,
    each at its own random offset; an epoch is `nb_samples` samples (open-unmix's
    `--nb-train-samples`). Sampling is with replacement, so every worker holds the
    whole split and draws its share of the samples from its own stream."""

    def __init__(self, manifest: Manifest, target: str | Sequence[str], seq_len: int, batch_size: int, nb_samples: int,
                 seed: int = 42, split: str = "train", rank: int = 0, world_size: int = 1,
                 reader: ShardReader | None = None, resident: Mapping[str, list] | None = None):
        if seq_len is None:
            raise UmxError("unaligned source folders need a crop length: --seq-dur must be > 0")
        self.manifest, self.split, self.plan = manifest, split, "global"  # every file is in memory
        self.reader = reader or ShardReader(manifest)
        self.slots = make_slots(manifest, target)
        self.seq_len, self.batch_size, self.nb_samples = seq_len, batch_size, nb_samples
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.set_epoch(1)
        self.source = crops.file_source(manifest, self.reader, self.slots, split, seq_len, resident)
        lengths = [f for e in manifest.shards(split) for f in e.track_frames]
        if not any(f >= seq_len for f in lengths):
            raise UmxError(f"{manifest.location}: no '{split}' file is at least {seq_len} samples long "
                           f"(longest: {max(lengths, default=0)}); lower --seq-dur")

    def samples_per_epoch(self) -> int:
        return self.nb_samples

    def check(self, n_workers: int) -> None:
        """Nothing can be short: every consumer draws from every file (with replacement)."""

    def __iter__(self) -> Iterator[Batch]:
        """Global batches; batch j's samples are drawn from the generator of (seed, epoch, j)."""
        mine = self._mine()
        if not mine:
            return
        files = self.source.files()
        for j in mine:
            rng = sampling.rng(self.seed, sampling.CROPS, self.epoch, j)
            batch, ids, offsets = [], [], []
            for _ in range(min(self.batch_size, self.nb_samples - j * self.batch_size)):
                parts, names, where = [], [], []
                for source in self.slots.order:
                    file = files[source][int(rng.integers(len(files[source])))]
                    offset = int(rng.integers(file.frames - self.seq_len + 1))
                    parts.append(self.source.crop(file, offset, self.seq_len))
                    names.append(file.id)
                    where.append(offset)
                batch.append(parts)
                ids.append("+".join(names))
                offsets.append(where)
            yield self._emit(batch, ids, offsets, j)
