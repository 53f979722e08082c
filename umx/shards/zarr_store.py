"""zarr v3 store of a shard set: one int16 array per source per split.

`store.zarr/<split>/<source>` is `[channels, frames]` with every track of the
split concatenated along time, chunked about one crop per chunk (1 MiB) and
grouped by the sharding codec into objects of `SHARD_CHUNKS` chunks, so a bucket
holds few large objects; `<split>/mixture` holds stored mixtures where the
layout has them. The track index (id, name, offset, frames, sources) is in the
split group's attributes, and the sha256 of every stored object is listed in
the manifest. Training reads crops at random (SplitCrops): each crop copies
only the chunks it covers, straight from the memory-mapped objects; whole
tracks (validation, statistics, conversion) are read through zarr.

zarr fills a missing chunk with zeros (and by default does not even store an
all-zero one); here every written chunk is stored, silent ones included, and a
missing or damaged object or chunk is an error naming the array and the object
(each object is checked against its checksum once before it is read).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import ShardError
from ..names import inside
from . import storage
from .manifest import ZARR_STORE
from .records import TrackRecord

STORE = ZARR_STORE
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
                                                   compressors=None, fill_value=0,
                                                   # silent chunks too: an absent chunk is then always an error
                                                   config={"write_empty_chunks": True})
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
        self._crops: dict[str, SplitCrops] = {}

    def ensure(self, key: str, label: str) -> None:
        """Make object `key` present locally and checked (missing: an error, never zarr's zeros)."""
        from .cache import download_verified, verify_once

        if key in self._checked:
            return
        want = self.objects.get(key)
        url = storage.join(self.url, key)
        if want is None:
            raise ShardError(f"{url}: {label} is not listed in the manifest")
        path = inside(self.root, key, "zarr object key", self.url)  # keys come from the manifest: never trusted
        try:
            if self.remote:
                download_verified(url, path, want, self.cache.stats, self.cache.folder)
            elif not path.is_file():
                raise FileNotFoundError(key)
            else:
                verify_once(path, want, None, f"{url}: {label} is damaged", self.cache.stats)
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
                    self.ensure(key, "metadata")
            self._root = zarr.open_group(LocalStore(str(self.root), read_only=True), mode="r")
        return self._root

    def _check(self, split: str, name: str, start: int, stop: int) -> None:
        """Make present and verify (once) every stored object that frames [start, stop) touch."""
        _, chunk, per_object = self.crops(split).geometry(name)
        span = chunk * per_object
        for k in range(start // span, (max(stop, start + 1) - 1) // span + 1):
            self.ensure(f"{split}/{name}/c/0/{k}", f"array '{split}/{name}' object {k}")

    def records(self, split: str, ids: list[str]) -> Iterator[TrackRecord]:
        """Full tracks `ids` of a split, in that order."""
        group = self._open()[split]
        by_id = {t["id"]: t for t in self.crops(split).tracks()}
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


    def crops(self, split: str) -> "SplitCrops":
        """Random access to frames of the split's arrays (see SplitCrops); one per process."""
        if self._crops.get(split) is None or self._crops[split].pid != os.getpid():
            self._crops[split] = SplitCrops(self, split)
        return self._crops[split]


MISSING = 2**64 - 1  # the sharding codec's index entry of an absent chunk


class SplitCrops:
    """Any frames of a split's arrays, read straight from the stored shard objects.

    The arrays are uncompressed (bytes codec) and sharded with the index at the
    end of each object, so a chunk is a plain `[channels, CHUNK_FRAMES]` block at
    an offset the index gives: each object is verified (once), memory-mapped and
    its index parsed once per process, then a crop copies only the pages of the
    chunks it covers, without zarr's per-read machinery. An absent chunk is an
    error naming the array and chunk, never zarr's zero fill.
    """

    def __init__(self, reader: ZarrReader, split: str):
        self.reader, self.split, self.pid = reader, split, os.getpid()
        self._objects: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self._meta: dict[str, tuple[int, int, int]] = {}  # array → (channels, chunk frames, chunks per object)
        self.chunks_read = 0
        self._blocks: dict[tuple[str, int], np.ndarray] = {}
        self._tracks: list[dict] | None = None
        self._columns: dict[str, int] | None = None

    def geometry(self, name: str) -> tuple[int, int, int]:
        """(channels, chunk frames, chunks per object) of array `name`, from its checked metadata."""
        return self._array(name)

    def _array(self, name: str) -> tuple[int, int, int]:
        if name not in self._meta:
            key = f"{self.split}/{name}/zarr.json"
            self.reader.ensure(key, f"array '{self.split}/{name}' metadata")
            where = f"{self.reader.url}: array '{self.split}/{name}'"
            try:
                meta = json.loads((self.reader.root / key).read_text())
                shard = meta["codecs"][0]["configuration"] if meta["codecs"][0]["name"] == "sharding_indexed" \
                    else None
                layout_ok = (shard is not None and meta["data_type"] == "int16"
                             and [c["name"] for c in shard["codecs"]] == ["bytes"]
                             and shard.get("index_location", "end") == "end")
                if layout_ok:
                    shape, outer = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
                    channels, chunk = shard["chunk_shape"]
            except (KeyError, IndexError, TypeError, ValueError, RecursionError) as e:
                raise ShardError(f"{where}: metadata is malformed ({type(e).__name__}: {e})") from None
            if not layout_ok:
                raise ShardError(f"{where} is not stored as umx-prep writes it (int16, uncompressed, sharded "
                                 "with the index at the end)")
            numbers = [*shape, *outer, channels, chunk]
            if (len(shape) != 2 or len(outer) != 2 or not all(type(v) is int and v > 0 for v in numbers)
                    or channels != shape[0] or outer[0] != channels or outer[1] % chunk
                    or channels not in (1, 2)):
                raise ShardError(f"{where}: metadata has an impossible geometry (shape {shape}, object chunk "
                                 f"{outer}, chunk {shard['chunk_shape']})")
            used = max((t["offset"] + t["frames"] for t in self.tracks()), default=0)
            if shape[1] < used:
                raise ShardError(f"{where}: holds {shape[1]} frames but the track index needs {used}")
            self._meta[name] = (channels, chunk, outer[1] // chunk)
        return self._meta[name]

    def tracks(self) -> list[dict]:
        """The split's track index (id, offset, frames, …), checked once: offsets and lengths
        are whole numbers and the tracks do not overlap."""
        if self._tracks is None:
            key = f"{self.split}/zarr.json"
            self.reader.ensure(key, "metadata")
            where = f"{self.reader.url}: the '{self.split}' track index"
            try:
                tracks = json.loads((self.reader.root / key).read_text())["attributes"]["tracks"]
                spans = sorted((t["offset"], t["frames"], t["id"]) for t in tracks)
            except (KeyError, TypeError, ValueError, RecursionError) as e:
                raise ShardError(f"{where} is malformed ({type(e).__name__}: {e})") from None
            end = 0
            for offset, frames, track_id in spans:
                if type(offset) is not int or type(frames) is not int or offset < end or frames < 0:
                    raise ShardError(f"{where}: track {str(track_id)[:60]!r} has an impossible span "
                                     f"(offset {offset}, frames {frames})")
                end = offset + frames
            self._tracks = tracks
        return self._tracks

    def channels(self, name: str) -> int:
        return self._array(name)[0]

    def column(self, track_id: str) -> int:
        """Where a track starts along time in the split's arrays."""
        if self._columns is None:
            self._columns = {t["id"]: t["offset"] for t in self.tracks()}
        if track_id not in self._columns:
            raise ShardError(f"{self.reader.url}: track '{track_id}' is not in the '{self.split}' index")
        return self._columns[track_id]

    def _object(self, name: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(memory map, index [chunks, 2] of offset and length) of object k of an array."""
        if (name, k) not in self._objects:
            key = f"{self.split}/{name}/c/0/{k}"
            self.reader.ensure(key, f"array '{self.split}/{name}' object {k}")
            per_object = self._array(name)[2]
            path = self.reader.root / key
            if path.stat().st_size < 16 * per_object + 4:
                raise ShardError(f"{self.reader.url}: array '{self.split}/{name}' object {k} is too small to "
                                 f"hold its chunk index ({path.stat().st_size} bytes)")
            with open(path, "rb") as f:  # a plain array on the map: np.memmap's
                data = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)  # slicing is slow
            index = data[-(16 * per_object + 4):-4].view("<u8").reshape(per_object, 2)
            self._objects[name, k] = (data, index)
        return self._objects[name, k]

    def _chunk(self, name: str, c: int) -> np.ndarray:
        """Chunk c of array `name` as a `[channels, chunk frames]` view of its object (checked once)."""
        block = self._blocks.get((name, c))
        if block is None:
            block = self._blocks[name, c] = self._new_chunk(name, c)
        return block

    def _new_chunk(self, name: str, c: int) -> np.ndarray:
        channels, chunk, per_object = self._array(name)
        data, index = self._object(name, c // per_object)
        offset, nbytes = index[c % per_object].tolist()
        if offset == MISSING or nbytes != channels * chunk * 2 or offset + nbytes > data.size:
            what = "is missing (zarr would read zeros)" if offset == MISSING else "is damaged"
            raise ShardError(f"{self.reader.url}: array '{self.split}/{name}' chunk {c} {what}")
        return data[offset:offset + nbytes].view("<i2").reshape(channels, chunk)

    def check(self, name: str, start: int, stop: int) -> None:
        """Raise ShardError if any chunk frames [start, stop) of `name` cover is missing or damaged."""
        chunk = self._array(name)[1]
        for c in range(start // chunk, (max(stop, start + 1) - 1) // chunk + 1):
            self._chunk(name, c)

    def read(self, name: str, start: int, out: np.ndarray) -> np.ndarray:
        """Copy frames [start, start + out.shape[-1]) of array `name` into `out` `[channels, n]`."""
        chunk = self._array(name)[1]
        pos, stop = start, start + out.shape[-1]
        while pos < stop:
            c = pos // chunk
            block = self._chunk(name, c)
            self.chunks_read += 1
            end = min(stop, (c + 1) * chunk)
            out[:, pos - start:end - start] = block[:, pos - c * chunk:end - c * chunk]
            pos = end
        return out


def records_of(tars: Iterable[str]) -> Iterator[TrackRecord]:
    """Every record of some WebDataset shards, in order, one at a time (prep converts its staged shards)."""
    from .webdataset import read_shard

    for url in tars:
        yield from read_shard(url)
