"""Loader batches and the shared-memory buffers they travel in.

A batch is int16 `[batch, slots, channels, samples]` audio, or — where the split lives
on the device (resident.py) — the crop positions to gather there. A batch made in a
loader worker reaches the main process through shared memory; `BatchRing` keeps a
few buffers per worker and reuses them once the main process is done with a batch.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..compat import new_shared_storage


@dataclass
class Batch:
    audio: torch.Tensor | None  # int16 [batch, slots, channels, samples]; None: see `starts`
    track_ids: list[str]
    io: dict | None = None  # loader counters since the previous batch (see ShardReader.take_metrics)
    starts: torch.Tensor | None = None  # int64 [batch] (or [batch, slots]): crop columns on the device (resident.py)
    index: int = -1  # the epoch's global batch index: what its augmentation and dropout draws are seeded by
    offsets: list | None = None  # each sample's crop offset (per slot for unaligned sources): the trace

    def pin_memory(self) -> "Batch":
        if self.audio is None:
            return self
        return dataclasses.replace(self, audio=self.audio.pin_memory())

    def __reduce__(self):
        ticket = getattr(self, "_ticket", None)  # a worker's batch in a reused shared buffer
        if ticket is None:
            return (Batch, (self.audio, self.track_ids, self.io, self.starts, self.index, self.offsets))
        return (_received, (self.audio, self.track_ids, self.io, ticket, self.index, self.offsets))



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

    @property
    def reusable(self) -> bool:
        """Whether batches handed back can be reused (a shared table exists in this process)."""
        return self._table is not None

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
                    storage = new_shared_storage(nbytes)
                self._next += 1
                self._slots[s] = (storage, self._next)
                return torch.empty(0, dtype=torch.int16).set_(storage, 0, shape), (self.id, index, self._next)
        storage = new_shared_storage(nbytes)
        return torch.empty(0, dtype=torch.int16).set_(storage, 0, shape), None

    def give_back(self, index: int, token: int) -> None:
        try:
            self._table[index] = token
        except Exception:  # interpreter shutdown: nothing will reuse the slot
            pass


def _received(audio: torch.Tensor, track_ids: list[str], io: dict | None, ticket: tuple, index: int = -1,
              offsets: list | None = None) -> Batch:
    """Unpickling a worker's batch in the main process: the batch stays in the worker's
    shared buffer, which goes back to the worker once nothing here uses that memory any
    more (the last tensor viewing it is freed; see BatchRing)."""
    ring = _RINGS.get(ticket[0])
    if ring is None or not ring.reusable:
        return Batch(audio, track_ids, io, index=index, offsets=offsets)  # not the ring's process: never handed back
    array = audio.numpy()
    weakref.finalize(array, ring.give_back, *ticket[1:])  # runs when the last tensor on `array` is gone
    return Batch(torch.from_numpy(array), track_ids, io, index=index, offsets=offsets)


def positions(starts: list, track_ids: list[str]) -> Batch:
    """A batch of crop positions in a device-resident split (`[batch]` or `[batch, slots]`)."""
    return Batch(None, track_ids, starts=torch.tensor(starts, dtype=torch.int64))


def audio_buffer(shape: tuple[int, ...], ring: BatchRing) -> tuple[torch.Tensor, tuple | None]:
    """An int16 tensor for a batch of `shape`, where it is cheapest to hand over: in this process
    a reused buffer, in a worker shared memory from `ring` (and the ticket that hands it back)."""
    if get_worker_info() is None:
        return ring.take_local(shape), None
    return ring.take(shape)


def audio(buffer: torch.Tensor, ticket: tuple | None, track_ids: list[str]) -> Batch:
    """A filled audio buffer as a batch (with its hand-back ticket, see BatchRing)."""
    batch = Batch(buffer, track_ids)
    batch._ticket = ticket
    return batch
