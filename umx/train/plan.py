"""The sampling plan: which consumer reads what, and how many samples it yields.

A consumer is one DataLoader worker of one rank. Every rank yields the same
number of samples per epoch, ceil(epoch / world_size), split over its workers
by a fixed rule, so every rank runs exactly the same number of steps, by
construction (no hang at epoch end). Each consumer spreads its quota evenly
over the tracks it reads. Everything here is a function of the manifest and
(seed, epoch, rank, worker), computed before any data is read.
"""

from __future__ import annotations

from typing import Callable

from ..errors import UmxError


def assign(sizes: list[int], consumer: int, n_consumers: int) -> list[tuple[int, Callable[[int], bool] | None]]:
    """Which shards (and which of their records) one consumer reads; `sizes` are the
    record counts of the shards in reading order.

    Whole shards round-robin when every consumer gets at least one; otherwise
    every consumer reads every shard but decodes only the records whose index
    over all shards is `consumer` modulo `n_consumers`. Either way no record is
    read twice, and no record is left out.
    """
    if len(sizes) >= n_consumers:
        return [(i, None) for i in range(consumer, len(sizes), n_consumers)]
    plan, offset = [], 0
    for i, size in enumerate(sizes):
        plan.append((i, lambda r, o=offset: (o + r) % n_consumers == consumer))
        offset += size
    return plan


def quota(total: int, rank: int, world: int, worker: int, n_workers: int) -> int:
    """Samples one consumer yields in an epoch of `total` samples."""
    per_rank = -(-total // world)
    return per_rank // n_workers + (worker < per_rank % n_workers)


def rank_batches(total: int, world: int, n_workers: int, batch_size: int) -> list[int]:
    """Batches each worker of any rank yields (the same for every rank)."""
    return [-(-quota(total, 0, world, w, n_workers) // batch_size) for w in range(n_workers)]


def resume_point(step: int, worker_batches: list[int]) -> tuple[list[int], int]:
    """Where an epoch stands after its rank took `step` batches: the batches each
    worker role had delivered, and the role whose turn is next.

    The DataLoader takes batches from its workers in turn, skipping workers that
    are done; this replays that order. A resumed loader starts with worker 0, so
    worker i then plays role (next + i) % n_workers, which keeps the order.
    """
    done = [0] * len(worker_batches)
    w = 0
    for _ in range(step):
        while done[w] >= worker_batches[w]:
            w = (w + 1) % len(worker_batches)
        done[w] += 1
        w = (w + 1) % len(worker_batches)
    return done, w


def no_data(where: str, rank: int, worker: int, world: int, n_workers: int, what: str) -> UmxError:
    return UmxError(f"{where}: rank {rank} worker {worker} would get no {what} "
                    f"({world} rank(s) × {n_workers} worker(s)); use fewer workers or ranks, "
                    "or prepare with a smaller --shard-size")
