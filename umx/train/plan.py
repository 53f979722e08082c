"""The sampling plans: which consumer yields which batches of an epoch.

A consumer is one DataLoader worker of one rank. Two plans, chosen in one place
(`streams.choose_plan`):

- global (every source with random access): the epoch is a sequence of *global
  batches*, batch j a function of (seed, epoch, j) alone. Step t of rank r takes
  batch `consumed + t * world + r`, and worker k of a rank the steps t ≡ k (mod
  workers), the order in which a DataLoader takes them. So the epoch's batches do
  not depend on the topology: after `consumed` batches any W' ranks × K' workers
  take exactly the rest (elastic resume), and nothing is replayed.
- pool (a stream of shards read in order, e.g. a bucket larger than the cache):
  every consumer reads its own shards and yields its quota of samples,
  ceil(epoch / world_size) per rank, split over its workers by a fixed rule. Its
  draws are a function of (seed, epoch, rank, worker), so it resumes exactly only
  on the same topology (the skipped batches are replayed).

Either way every rank runs the same number of steps, by construction (no hang at
the epoch's end), and everything is computed before any data is read.
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
    order = schedule(worker_batches)
    done = [0] * len(worker_batches)
    for w in order[:step]:
        done[w] += 1
    return done, (order[step - 1] + 1) % len(worker_batches) if step else 0


def no_data(where: str, rank: int, worker: int, world: int, n_workers: int, what: str) -> UmxError:
    return UmxError(f"{where}: rank {rank} worker {worker} would get no {what} "
                    f"({world} rank(s) × {n_workers} worker(s)); use fewer workers or ranks, "
                    "or prepare with a smaller --shard-size")


# --- the global plan -------------------------------------------------------------------------------

def global_batches(samples: int, batch_size: int) -> int:
    """The epoch's global batches: `batch_size` samples each, the last one the rest."""
    return -(-samples // batch_size)


def steps_left(batches: int, consumed: int, world: int) -> int:
    """Steps every rank still takes after `consumed` of the epoch's `batches` global batches."""
    return -(-max(0, batches - consumed) // world)


def worker_batches(batches: int, consumed: int, world: int, rank: int, worker: int, n_workers: int) -> list[int]:
    """The global batches one worker yields, in order, after `consumed` were taken.

    Where the rest does not divide by the ranks, the last step's missing batches are taken
    from the epoch's start again (as torch's DistributedSampler pads): every rank steps
    equally often, and at most world − 1 batches are seen twice.
    """
    steps = steps_left(batches, consumed, world)
    return [(consumed + t * world + rank) % batches for t in range(worker, steps, n_workers)]


def schedule(worker_batches: list[int]) -> list[int]:
    """The worker role each step's batch comes from: a DataLoader takes batches from its
    workers in turn, skipping workers that are done."""
    order, done, w = [], [0] * len(worker_batches), 0
    for _ in range(sum(worker_batches)):
        while done[w] >= worker_batches[w]:
            w = (w + 1) % len(worker_batches)
        done[w] += 1
        order.append(w)
        w = (w + 1) % len(worker_batches)
    return order
