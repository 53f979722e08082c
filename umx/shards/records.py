"""`TrackRecord`: one track as a shard set stores it, whatever the storage format.

Written by prep, read back from WebDataset tar shards (webdataset.py, local_tar.py)
or a zarr store (zarr_store.py), and used by train and eval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ShardError


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


def checked_record(url: str, key: str, meta: dict, sources: dict[str, np.ndarray], mixture: np.ndarray | None
                   ) -> TrackRecord:
    """The record read from shard `url` (ShardError, naming it, where an array is not int16 `[channels, frames]`)."""
    arrays = {**sources, **({"mixture": mixture} if mixture is not None else {})}
    for name, pcm in arrays.items():
        if pcm.dtype != np.int16 or pcm.ndim != 2:
            raise ShardError(f"{url}: record '{key}' array '{name}' is not int16 [channels, frames]")
    return TrackRecord(key, meta, sources, mixture)
