"""The streaming loader: shards → pool of tracks → int16 crop batches.

Workers split the shard list without duplicates (whole shards when there are
enough, otherwise records of a shard round-robin), decode records into a
small pool of tracks and draw random `seq_dur` crops of every source at one
offset. Each track is drawn `samples_per_track` times per epoch (open-unmix's
balanced track sampling); the pool only decides the order, and which tracks
share a batch (what the device-side remix mixes). A batch is an int16 tensor
`[batch, sources, channels, samples]`, the target source first; float
conversion, gains, swaps and remixing happen on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import UmxError
from ..shards.manifest import Manifest
from ..shards.webdataset import read_shard
from . import sampling


@dataclass
class Batch:
    audio: torch.Tensor  # int16 [batch, sources, channels, samples]
    track_ids: list[str]

    def pin_memory(self) -> "Batch":
        return Batch(self.audio.pin_memory(), self.track_ids)


def source_order(manifest: Manifest, target: str) -> list[str]:
    """The sources of a batch, target first, or an error naming the choices."""
    if target not in manifest.sources:
        raise UmxError(f"{manifest.location}: target '{target}' is not a source of this shard set "
                       f"(sources: {', '.join(manifest.sources)})")
    return [target] + [s for s in manifest.sources if s != target]


def assign(n_shards: int, consumer: int, n_consumers: int) -> list[tuple[int, Callable[[int], bool] | None]]:
    """Which shards (and which records of them) one consumer reads.

    Whole shards round-robin when every consumer gets at least one; otherwise
    every consumer reads every shard but decodes only records
    `index % n_consumers == consumer`. Either way no record is read twice.
    """
    if n_shards >= n_consumers:
        return [(i, None) for i in range(consumer, n_shards, n_consumers)]
    return [(i, lambda r, c=consumer, n=n_consumers: r % n == c) for i in range(n_shards)]


class TrainStream(IterableDataset):
    """Iterable over crop batches of one epoch; call `set_epoch` before iterating."""

    def __init__(self, manifest: Manifest, target: str, seq_len: int | None, batch_size: int,
                 samples_per_track: int = 1, pool_size: int = 8, seed: int = 42, split: str = "train",
                 rank: int = 0, world_size: int = 1):
        self.manifest, self.split = manifest, split
        self.order = source_order(manifest, target)
        self.shards = manifest.shards(split)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.samples_per_track, self.pool_size = samples_per_track, max(1, pool_size)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 1
        frames = [f for s in self.shards for f in s.track_frames]
        self.eligible = sum(1 for f in frames if seq_len is None or f >= seq_len)
        if self.eligible == 0:
            raise UmxError(f"{manifest.location}: no '{split}' track is at least {seq_len} samples long "
                           f"(longest: {max(frames, default=0)}); lower --seq-dur")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def samples_per_epoch(self) -> int:
        return self.eligible * self.samples_per_track

    def _consumer_tracks(self, consumer: int, n_consumers: int) -> int:
        """Eligible tracks one consumer reads this epoch (from the manifest alone)."""
        order = self._shard_order()
        count = 0
        for shard_pos, select in assign(len(order), consumer, n_consumers):
            frames = self.shards[order[shard_pos]].track_frames
            count += sum(1 for i, f in enumerate(frames) if (select is None or select(i))
                         and (self.seq_len is None or f >= self.seq_len))
        return count

    def batches_per_epoch(self, n_workers: int = 0) -> int:
        """Batches this rank yields in the current epoch with `n_workers` loader workers."""
        n_workers = max(1, n_workers)
        n_consumers = self.world_size * n_workers
        return sum(-(-self._consumer_tracks(self.rank * n_workers + w, n_consumers) * self.samples_per_track
                     // self.batch_size) for w in range(n_workers))

    def _shard_order(self) -> np.ndarray:
        return sampling.rng(self.seed, sampling.SHARD_ORDER, self.epoch).permutation(len(self.shards))

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        consumer, n_consumers = self.rank * n_workers + worker, self.world_size * n_workers
        order = self._shard_order()
        rng = sampling.rng(self.seed, sampling.CROPS, self.epoch, consumer)
        pool: list[list] = []  # [stacked int16 [S, C, T], draws left, track id]
        out: list[tuple[np.ndarray, str]] = []
        for shard_pos, select in assign(len(order), consumer, n_consumers):
            entry = self.shards[order[shard_pos]]
            for record in read_shard(self.manifest.shard_url(entry), select):
                if self.seq_len is not None and record.frames < self.seq_len:
                    continue  # open-unmix excludes tracks shorter than seq_dur
                stack = np.stack([record.sources[s] for s in self.order])
                pool.append([stack, self.samples_per_track, record.id])
                while len(pool) >= self.pool_size:
                    yield from self._draw(pool, rng, out)
        while pool:
            yield from self._draw(pool, rng, out)
        if out:
            yield self._batch(out)

    def _draw(self, pool: list[list], rng: np.random.Generator, out: list) -> Iterator[Batch]:
        i = int(rng.integers(len(pool)))
        stack, left, track_id = pool[i]
        if self.seq_len is None:
            crop = stack
        else:
            offset = int(rng.integers(stack.shape[-1] - self.seq_len + 1))
            crop = stack[..., offset: offset + self.seq_len]
        out.append((crop, track_id))
        if left == 1:
            pool[i] = pool[-1]
            pool.pop()
        else:
            pool[i][1] = left - 1
        if len(out) == self.batch_size or self.seq_len is None:
            yield self._batch(out)

    @staticmethod
    def _batch(out: list) -> Batch:
        audio = torch.from_numpy(np.stack([c for c, _ in out]))
        ids = [t for _, t in out]
        out.clear()
        return Batch(audio, ids)


def load_split(manifest: Manifest, target: str, split: str = "valid") -> list[tuple[str, torch.Tensor]]:
    """Every full track of a split as (id, int16 `[sources, channels, frames]`), target first."""
    order = source_order(manifest, target)
    tracks = []
    for entry in manifest.shards(split):
        for record in read_shard(manifest.shard_url(entry)):
            tracks.append((record.id, torch.from_numpy(np.stack([record.sources[s] for s in order]))))
    return tracks


def collate_batch(batch: Batch) -> Batch:
    """DataLoader hook: batches are built by the stream itself."""
    return batch
