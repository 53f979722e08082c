"""zarr v3 store of a shard set: one int16 array per source per split.

`store.zarr/<split>/<source>` is `[channels, frames]` with every track of the
split concatenated along time, chunked about one crop per chunk (1 MiB) and
grouped by the sharding codec into objects of `SHARD_CHUNKS` chunks, so a bucket
holds few large objects; `<split>/mixture` holds stored mixtures where the
layout has them. The track index (id, name, offset, frames, sources) is in the
split group's attributes, and the sha256 of every stored object is listed in
the manifest. A track is read as one slice per source: only the chunks it
covers are fetched.

zarr fills a missing chunk with zeros; here a missing or damaged object is an
error naming the array and the object (each object is checked against its
checksum once per process before it is read).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import ShardError
from . import storage
from .webdataset import TrackRecord

STORE = "store.zarr"
CHUNK_FRAMES = 262144  # 2 ch × 2 B × 262144 = 1 MiB, about one 6 s crop
SHARD_CHUNKS = 32  # 32 MiB objects


def write_store(path: Path, splits: dict[str, tuple[int, Iterable[TrackRecord]]]) -> dict[str, str]:
    """Write each split's records, streamed (one track in memory at a time); `splits` maps a
    split to (its total frames, its records). Returns {object path: sha256} of every stored file."""
    import zarr
    from zarr.storage import LocalStore

    root = zarr.open_group(LocalStore(str(path)), mode="w")
    for split, (total, records) in splits.items():
        group = root.require_group(split)
        arrays, index, offset = {}, [], 0
        for r in records:
            for n, pcm in {**r.sources, **({"mixture": r.mixture} if r.mixture is not None else {})}.items():
                if n not in arrays:  # created when a source first appears; other tracks' spans stay zero
                    arrays[n] = group.create_array(n, shape=(2, max(total, 1)), chunks=(2, CHUNK_FRAMES),
                                                   shards=(2, CHUNK_FRAMES * SHARD_CHUNKS), dtype="int16",
                                                   compressors=None, fill_value=0)
                arrays[n][:, offset: offset + r.frames] = pcm
            index.append({"id": r.id, "meta": r.meta, "offset": offset, "frames": r.frames,
                          "sources": list(r.sources), "mixture": r.mixture is not None})
            offset += r.frames
        group.attrs["tracks"] = index
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(path).rglob("*")) if p.is_file()}


class ZarrReader:
    """Reads tracks of a zarr shard set; opened lazily (zarr/fsspec state must not
    cross a fork: each DataLoader worker opens its own)."""

    def __init__(self, base: str, objects: dict[str, str], cache=None):
        from .cache import ShardCache

        self.base, self.objects = base, objects
        self.cache = cache or ShardCache()
        self.url = storage.join(base, STORE)
        self.remote = storage.is_remote(self.url)
        # a bucket's store is mirrored object by object into the shard cache, verified on download
        self.root = (self.cache.folder / f"{hashlib.sha256(self.url.encode()).hexdigest()[:24]}-{STORE}"
                     if self.remote else Path(self.url.removeprefix("file://")))
        self._root = None
        self._checked: set[str] = set()

    def _ensure(self, key: str, label: str) -> None:
        """Make object `key` present locally and checked (missing: an error, never zarr's zeros)."""
        from .cache import download_verified, verify_once

        if key in self._checked:
            return
        want = self.objects.get(key)
        url = storage.join(self.url, key)
        if want is None:
            raise ShardError(f"{url}: {label} is not listed in the manifest")
        try:
            if self.remote:
                download_verified(url, self.root / key, want, self.cache.stats)
            elif not (self.root / key).is_file():
                raise FileNotFoundError(key)
            else:
                verify_once(self.root / key, want, None, f"{url}: {label} is damaged", self.cache.stats)
        except (FileNotFoundError, storage.StorageError):
            raise ShardError(f"{url}: {label} is missing (zarr would read zeros)") from None
        except ShardError as e:
            raise ShardError(f"{url}: {label} is damaged (checksum mismatch)") if "checksum" in str(e) else e
        self._checked.add(key)

    def _open(self):
        if self._root is None:
            import zarr
            from zarr.storage import LocalStore

            for key in self.objects:
                if key.endswith("zarr.json"):
                    self._ensure(key, "metadata")
            self._root = zarr.open_group(LocalStore(str(self.root), read_only=True), mode="r")
        return self._root

    def _check(self, split: str, name: str, start: int, stop: int) -> None:
        """Make present and verify (once) every stored object that frames [start, stop) touch."""
        span = CHUNK_FRAMES * SHARD_CHUNKS
        for k in range(start // span, (max(stop, start + 1) - 1) // span + 1):
            self._ensure(f"{split}/{name}/c/0/{k}", f"array '{split}/{name}' object {k}")

    def records(self, split: str, ids: list[str]) -> Iterator[TrackRecord]:
        """Full tracks `ids` of a split, in that order."""
        group = self._open()[split]
        by_id = {t["id"]: t for t in group.attrs["tracks"]}
        for track_id in ids:
            if track_id not in by_id:
                raise ShardError(f"{storage.join(self.base, STORE)}: track '{track_id}' is not in the '{split}' index")
            t = by_id[track_id]
            lo, hi = t["offset"], t["offset"] + t["frames"]
            names = t["sources"] + (["mixture"] if t["mixture"] else [])
            for n in names:
                self._check(split, n, lo, hi)
            sources = {n: np.asarray(group[n][:, lo:hi]) for n in t["sources"]}
            mixture = np.asarray(group["mixture"][:, lo:hi]) if t["mixture"] else None
            yield TrackRecord(t["id"], t["meta"], sources, mixture)


def records_of(tars: Iterable[str]) -> Iterator[TrackRecord]:
    """Every record of some WebDataset shards, in order, one at a time (prep converts its staged shards)."""
    from .webdataset import read_shard

    for url in tars:
        yield from read_shard(url)
