"""The training streams: sampling plan → crop source → draws → batches.

Workers split the manifest's entries without duplicates (plan.py), each draws its
quota of samples from the seeded generator of (seed, epoch, consumer), and a crop
source (crops.py) turns every draw into batch data. Each track is drawn
`samples_per_track` times per epoch (open-unmix's balanced track sampling); where the
source keeps a pool, the pool only decides the order and which tracks share a batch
(what the device-side remix mixes). Float conversion, gains, swaps and remixing happen
on the device. The streams never look at the layout name, only at the manifest's
sampling section and the slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import UmxError
from ..shards.manifest import Manifest, TrackEntry
from ..shards.reader import ShardReader, SkippedShard
from . import crops, plan, sampling
from .batches import Batch
from .slots import make_slots


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
    """What both streams share: epoch, resume position, the per-consumer plan, batching."""

    source: "crops.TrackSource | crops.FileSource"
    reader: ShardReader

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch `epoch`, skipping the first `start_step` batches of this rank
        (an exact mid-epoch resume: the draws are replayed, not stored)."""
        self.epoch, self.start_step = epoch, start_step

    def samples_per_epoch(self) -> int:
        raise NotImplementedError

    def batches_per_epoch(self, n_workers: int = 0) -> int:
        """Batches every rank yields per epoch with `n_workers` loader workers."""
        return sum(plan.rank_batches(self.samples_per_epoch(), self.world_size, max(1, n_workers), self.batch_size))

    def position(self) -> Position:
        worker, n_workers = _consumer()
        total = self.samples_per_epoch()
        done, next_role = plan.resume_point(
            self.start_step, plan.rank_batches(total, self.world_size, n_workers, self.batch_size))
        role = (next_role + worker) % n_workers
        return Position(role, n_workers, self.rank * n_workers + role,
                        plan.quota(total, self.rank, self.world_size, role, n_workers), done[role])


class _Batcher:
    """Collects drawn samples into batches of `size`, dropping the first `skip` batches (a resume)."""

    def __init__(self, source, reader: ShardReader, size: int, skip: int):
        self.source, self.reader, self.size, self.skip = source, reader, size, skip
        self.crops: list = []
        self.ids: list[str] = []

    def add(self, crop, track_id: str, flush: bool = False) -> Iterator[Batch]:
        self.crops.append(crop)
        self.ids.append(track_id)
        if flush or len(self.crops) == self.size:
            yield from self.emit()

    def emit(self) -> Iterator[Batch]:
        if not self.crops:
            return
        if self.skip > 0:
            self.skip -= 1
        else:
            batch = self.source.batch(self.crops, self.ids)
            batch.io = self.reader.take_metrics()
            yield batch
        self.crops, self.ids = [], []


@dataclass
class _Pooled:
    track: crops.SourceTrack
    left: int  # draws of this track still to come this epoch


class TrainStream(_Stream):
    """Iterable over the crop batches of one epoch of aligned tracks; `set_epoch` first."""

    def __init__(self, manifest: Manifest, target: str | Sequence[str], seq_len: int | None, batch_size: int,
                 samples_per_track: int = 1, pool_size: int = 8, seed: int = 42, split: str = "train",
                 rank: int = 0, world_size: int = 1, silence_missing_targets: bool = False,
                 reader: ShardReader | None = None, resident: Mapping[str, int] | None = None):
        self.manifest, self.split = manifest, split
        self.reader = reader or ShardReader(manifest)
        self.slots = make_slots(manifest, target, silence_missing_targets)
        self.shards = manifest.shards(split)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.samples_per_track, self.pool_size = samples_per_track, max(1, pool_size)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_step = 1, 0
        # made here, in the main process, before loader workers fork (they share its buffers' table)
        self.source = crops.track_source(manifest, self.reader, self.slots, split, seq_len, resident)
        self.eligible = sum(self._eligible(e) for e in self.shards)
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
        """Fail fast, before any worker starts, if some consumer of some rank would get no track."""
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

    def __iter__(self) -> Iterator[Batch]:
        pos = self.position()
        reads = self._reads(pos.consumer, self.world_size * pos.n_workers)
        if pos.quota == 0:
            return
        rng = sampling.rng(self.seed, sampling.CROPS, self.epoch, pos.consumer)
        draws = self._draws(pos, reads, rng)
        # a pool bounds the decoded tracks in memory; a source read crop by crop needs none, so it
        # draws uniformly over every track of this consumer, as open-unmix does
        limit = self.pool_size if self.source.pooled else math.inf
        out = _Batcher(self.source, self.reader, self.batch_size, pos.skip)
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
        yield from out.add(crop, item.track.id, flush=self.seq_len is None)


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
        self.manifest, self.split = manifest, split
        self.reader = reader or ShardReader(manifest)
        self.slots = make_slots(manifest, target)
        self.seq_len, self.batch_size, self.nb_samples = seq_len, batch_size, nb_samples
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_step = 1, 0
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
        pos = self.position()
        if pos.quota == 0:
            return
        files = self.source.files()
        rng = sampling.rng(self.seed, sampling.CROPS, self.epoch, pos.consumer)
        out = _Batcher(self.source, self.reader, self.batch_size, pos.skip)
        for _ in range(pos.quota):
            parts, ids = [], []
            for source in self.slots.order:
                file = files[source][int(rng.integers(len(files[source])))]
                offset = int(rng.integers(file.frames - self.seq_len + 1))
                parts.append(self.source.crop(file, offset, self.seq_len))
                ids.append(file.id)
            yield from out.add(parts, "+".join(ids))
        yield from out.emit()
