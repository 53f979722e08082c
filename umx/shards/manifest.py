"""manifest.json: the contract between umx-prep and umx-train.

It says what a shard set holds (layout, rate, channels, sources, splits, the
shards of each split with their tracks and checksums, input statistics) so the
trainer never needs to know which dataset layout the data came from. It is
validated on read; every error names the field.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Union, get_args

from ..errors import ManifestError
from ..names import UnsafeNameError, safe_key, safe_name
from . import storage

FORMAT = "umx-shards"
VERSION = 2  # the newest manifest this umx reads
# the version each storage format is written with: v2 gave zarr sets their own entry kind (track
# groups of the store, no tar names or checksums); WebDataset sets have not changed since v1
WRITTEN_VERSION = {"webdataset": 1, "zarr": 2}
NAME = "manifest.json"
MAX_BYTES = 256 * 2**20  # far above any real manifest (MUSDB18: well under 1 MiB); bounds what a hostile one costs

Records = Literal["tracks", "source_files"]
Input = Literal["sum", "mixture"]
Valid = Literal["full_tracks", "crops"]
Remix = Literal["independent", "joint", "never"]
StorageFormat = Literal["webdataset", "zarr"]


def stats_key(n_fft: int, n_hop: int) -> str:
    """Key of the input-scaler statistics for one STFT setting."""
    return f"stft{n_fft}-hop{n_hop}"


@dataclass(frozen=True)
class LayoutDefaults:
    """The layout's training defaults (open-unmix's per-dataset defaults), written by prep; a
    training option left unset takes these. The values here are what a manifest that does not
    name one means: the one place these defaults are spelled."""

    samples_per_track: int = 1
    source_augmentations: tuple[str, ...] = ()
    random_mix: bool = False
    silence_missing_targets: bool = False
    nb_train_samples: int = 1000
    nb_valid_samples: int = 100


@dataclass(frozen=True)
class Complement:
    """A target that is no stored source: the sum of every source but `of` (musdb's
    `accompaniment` is everything but the vocals)."""

    name: str
    of: str


@dataclass(frozen=True)
class Sampling:
    """How the trainer samples a shard set, so that it never needs to know the layout."""

    records: Records  # "tracks": aligned sources of one track | "source_files": one file of one source
    train_input: Input  # "sum": mix the sources | "mixture": the stored input file is the model input
    valid_input: Input  # "sum" | "mixture": the real mixture, stored for validation tracks
    valid: Valid  # "full_tracks" | "crops": nb_valid_samples seeded crops
    remix: Remix  # "independent": each interferer from its own random track | "joint": all from one | "never"
    augment: bool  # whether source augmentations may be applied
    defaults: LayoutDefaults
    complement: Complement | None = None


@dataclass(frozen=True)
class Storage:
    format: StorageFormat
    objects: Mapping[str, str] = field(default_factory=dict)  # zarr: object key → sha256


@dataclass(frozen=True)
class ShardEntry:
    """A WebDataset shard: a tar file of the set, with its checksum and the tracks it holds."""

    split: str
    name: str
    sha256: str
    bytes: int
    track_ids: tuple[str, ...]
    track_frames: tuple[int, ...]
    track_sources: tuple[tuple[str, ...], ...]  # the sources each record holds

    @property
    def frames(self) -> int:
        return sum(self.track_frames)


@dataclass(frozen=True)
class TrackGroup:
    """A group of tracks of a zarr store (the same groups as WebDataset shards: the unit the
    sampling plan assigns to consumers); its objects are checksummed in `Storage.objects`."""

    split: str
    name: str
    track_ids: tuple[str, ...]
    track_frames: tuple[int, ...]
    track_sources: tuple[tuple[str, ...], ...]

    @property
    def frames(self) -> int:
        return sum(self.track_frames)


TrackEntry = Union[ShardEntry, TrackGroup]


@dataclass(frozen=True)
class Split:
    name: str
    entries: tuple[TrackEntry, ...]
    max_sources: int  # the most sources one record of the split holds

    @property
    def tracks(self) -> int:
        return sum(len(e.track_ids) for e in self.entries)


@dataclass(frozen=True)
class Manifest:
    """A validated, parsed manifest; `raw` is the JSON object as stored (for writing it back)."""

    raw: dict
    location: str  # the shard set's base URL or folder
    version: int
    layout: str
    sample_rate: int
    channels: int
    sources: list[str]
    target: str
    sampling: Sampling
    storage: Storage
    split_table: Mapping[str, Split]
    statistics_table: Mapping[str, Mapping[str, list]]

    def splits(self) -> list[str]:
        return list(self.split_table)

    def split(self, name: str) -> Split:
        if name not in self.split_table:
            raise ManifestError(self.location, f"splits.{name}",
                                f"this shard set has no '{name}' split (it has {self.splits()})")
        return self.split_table[name]

    def shards(self, split: str) -> list[TrackEntry]:
        """The entries of a split: WebDataset shards, or a zarr store's track groups."""
        return list(self.split(split).entries)

    def shard_url(self, entry: TrackEntry) -> str:
        """Where an entry's data is: its tar file, or for a zarr group the store."""
        return storage.join(self.location, entry.name if isinstance(entry, ShardEntry) else ZARR_STORE)

    def statistics(self, n_fft: int, n_hop: int) -> dict | None:
        stats = self.statistics_table.get(stats_key(n_fft, n_hop))
        return None if stats is None else dict(stats)

    def content_digest(self, split: str) -> str:
        """A digest of the split's stored bytes (its shards' or store objects' checksums)."""
        if self.storage.format == "zarr":
            parts = [f"{k}={v}" for k, v in sorted(self.storage.objects.items()) if k.startswith(f"{split}/")]
        else:
            parts = [e.sha256 for e in self.shards(split)]  # type: ignore[union-attr]
        return hashlib.sha256("".join(parts).encode()).hexdigest()


ZARR_STORE = "store.zarr"


_TOP = {
    "format": str, "version": int, "layout": str, "sample_rate": int, "channels": int,
    "sources": list, "target": str, "sampling": dict, "storage": dict, "splits": dict,
}
_SAMPLING = {"records": get_args(Records), "train_input": get_args(Input), "valid_input": get_args(Input),
             "valid": get_args(Valid), "remix": get_args(Remix)}
_TRACKS = {"track_ids": list, "track_frames": list, "track_sources": list}
_SHARD = {"name": str, "sha256": str, "bytes": int, **_TRACKS}
_GROUP = {"group": str, **_TRACKS}
_DEFAULT_TYPES = {"samples_per_track": int, "source_augmentations": list, "random_mix": bool,
                  "silence_missing_targets": bool, "nb_train_samples": int, "nb_valid_samples": int}


def _require(obj: dict, spec: dict, where: str, prefix: str) -> None:
    if not isinstance(obj, dict):
        raise ManifestError(where, prefix.rstrip(".") or "(top level)", "must be a JSON object")
    for key, typ in spec.items():
        if key not in obj:
            raise ManifestError(where, prefix + key, "is missing")
        value = obj[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ManifestError(where, prefix + key, f"must be {typ.__name__}, got {type(value).__name__}")


def _name(value, where: str, field: str, what: str) -> None:
    """A name that will become part of a path (see umx.names): refused naming the field."""
    try:
        safe_name(value, what, where)
    except UnsafeNameError as e:
        raise ManifestError(where, field, str(e).removeprefix(f"{where}: ")) from None


def _stats_bins(key: str) -> int | None:
    """The number of frequency bins statistics stored under `key` must have (None: a key
    this umx does not write, checked only for consistency)."""
    head, _, hop = key.partition("-hop")
    if not head.startswith("stft") or not head[4:].isdigit() or not hop.isdigit():
        return None
    return int(head[4:]) // 2 + 1


def _list_of(value, typ, where: str, field: str, min_value=None) -> None:
    if not isinstance(value, list) or not all(isinstance(v, typ) and not isinstance(v, bool) for v in value):
        names = "/".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
        raise ManifestError(where, field, f"must be a list of {names}")
    if min_value is not None and any(v < min_value for v in value):
        raise ManifestError(where, field, f"values must be >= {min_value}")


def validate(raw: Any, where: str = NAME) -> dict:
    """Check a manifest object; raise ManifestError naming the first bad field."""
    _require(raw, _TOP, where, "")
    if raw["format"] != FORMAT:
        raise ManifestError(where, "format", f"must be '{FORMAT}', got '{raw['format']}'")
    if isinstance(raw["version"], int) and raw["version"] > VERSION:
        raise ManifestError(where, "version", f"is {raw['version']}, newer than this umx reads "
                            f"({VERSION}); upgrade umx")
    if raw["version"] < 1:
        raise ManifestError(where, "version", f"must be >= 1, got {raw['version']}")
    if raw["sample_rate"] <= 0:
        raise ManifestError(where, "sample_rate", "must be positive")
    if raw["channels"] not in (1, 2):
        raise ManifestError(where, "channels", f"must be 1 or 2, got {raw['channels']}")
    _list_of(raw["sources"], str, where, "sources")
    if not raw["sources"] or len(set(raw["sources"])) != len(raw["sources"]):
        raise ManifestError(where, "sources", "must be a non-empty list of distinct names")
    for i, source in enumerate(raw["sources"]):  # sources name record members, zarr arrays and output files
        _name(source, where, f"sources[{i}]", "source name")
    if raw["target"] not in raw["sources"]:
        raise ManifestError(where, "target", f"'{raw['target']}' is not one of sources {raw['sources']}")
    for key, allowed in _SAMPLING.items():
        if raw["sampling"].get(key) not in allowed:
            raise ManifestError(where, f"sampling.{key}", f"must be one of {list(allowed)}, "
                                f"got {raw['sampling'].get(key)!r}")
    if not isinstance(raw["sampling"].get("augment"), bool):
        raise ManifestError(where, "sampling.augment", "must be true or false")
    _validate_defaults(raw["sampling"].get("defaults"), where)
    _validate_complement(raw["sampling"].get("complement"), raw["sources"], where)
    if not raw["splits"]:
        raise ManifestError(where, "splits", "is empty")
    _validate_storage(raw["storage"], where)
    zarr = raw["storage"].get("format") == "zarr"
    for split, body in raw["splits"].items():
        _name(split, where, f"splits.{split[:40]!r}", "split name")
        _require(body, {"shards": list}, where, f"splits.{split}.")
        for i, shard in enumerate(body["shards"]):
            prefix = f"splits.{split}.shards[{i}]."
            if zarr and isinstance(shard, dict) and "group" in shard:  # v2: a track group of the store
                _require(shard, _GROUP, where, prefix)
                _name(shard["group"], where, prefix + "group", "track group name")
            else:  # a tar shard (v1 zarr sets list their groups in this form too)
                _validate_tar_entry(shard, where, prefix)
            _validate_tracks(shard, raw["sources"], where, prefix)
        if not isinstance(body.get("max_sources", 0), int) or isinstance(body.get("max_sources", 0), bool):
            raise ManifestError(where, f"splits.{split}.max_sources", "must be int")
    validate_statistics(raw.get("statistics", {}), where)
    return raw


def _validate_tar_entry(shard: Any, where: str, prefix: str) -> None:
    _require(shard, _SHARD, where, prefix)
    name = shard["name"]
    _name(name, where, prefix + "name", "shard name")
    if name.startswith(".") or not name.endswith(".tar"):
        raise ManifestError(where, prefix + "name", f"'{name}' is not a plain .tar file name")
    if len(shard["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in shard["sha256"]):
        raise ManifestError(where, prefix + "sha256", "must be 64 lower-case hex digits")
    if shard["bytes"] < 0:
        raise ManifestError(where, prefix + "bytes", "must be >= 0")


def _validate_tracks(shard: dict, sources: list[str], where: str, prefix: str) -> None:
    _list_of(shard["track_ids"], str, where, prefix + "track_ids")
    for k, track_id in enumerate(shard["track_ids"]):  # ids name evaluation outputs and cache entries
        _name(track_id, where, f"{prefix}track_ids[{k}]", "track id")
    _list_of(shard["track_frames"], int, where, prefix + "track_frames", 0)
    known = set(sources)
    if not all(isinstance(v, list) and all(isinstance(n, str) and n in known for n in v)
               for v in shard["track_sources"]):
        raise ManifestError(where, prefix + "track_sources", "must be a list of lists of names from 'sources'")
    for key in ("track_frames", "track_sources"):
        if len(shard["track_ids"]) != len(shard[key]):
            raise ManifestError(where, prefix + key, "length differs from track_ids")


def _validate_defaults(defaults: Any, where: str) -> None:
    if not isinstance(defaults, dict):
        raise ManifestError(where, "sampling.defaults", "must be a JSON object")
    for key, typ in _DEFAULT_TYPES.items():
        if key not in defaults:
            continue
        value = defaults[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ManifestError(where, f"sampling.defaults.{key}", f"must be {typ.__name__}")
        if typ is int and value < 1:
            raise ManifestError(where, f"sampling.defaults.{key}", "must be >= 1")
    if not all(isinstance(a, str) for a in defaults.get("source_augmentations", [])):
        raise ManifestError(where, "sampling.defaults.source_augmentations", "must be a list of names")


def _validate_complement(complement: Any, sources: list[str], where: str) -> None:
    if complement is None:
        return
    _require(complement, {"name": str, "of": str}, where, "sampling.complement.")
    if complement["name"] in sources or complement["of"] not in sources:
        raise ManifestError(where, "sampling.complement", "must name a target that is not a source ('name') and "
                            "the source it leaves out ('of')")


def validate_statistics(statistics: Any, where: str) -> None:
    """Input-scaler statistics: per STFT setting a mean and a std of one value per frequency bin,
    finite, std >= 0 (open-unmix divides by it)."""
    stats = statistics
    if not isinstance(stats, dict):
        raise ManifestError(where, "statistics", "must be a JSON object")
    for key, entry in stats.items():
        _require(entry, {"mean": list, "std": list}, where, f"statistics.{key}.")
        for part in ("mean", "std"):
            _list_of(entry[part], (int, float), where, f"statistics.{key}.{part}")
        if len(entry["mean"]) != len(entry["std"]):
            raise ManifestError(where, f"statistics.{key}.std", "length differs from mean")
        bins = _stats_bins(key)
        if bins is not None and len(entry["mean"]) != bins:
            raise ManifestError(where, f"statistics.{key}.mean", f"has {len(entry['mean'])} values; an STFT of "
                                f"this setting has {bins} frequency bins")
        if not all(math.isfinite(v) for v in entry["mean"]):
            raise ManifestError(where, f"statistics.{key}.mean", "values must be finite")
        if not all(math.isfinite(v) and v >= 0 for v in entry["std"]):
            raise ManifestError(where, f"statistics.{key}.std", "values must be finite and >= 0")


def _validate_storage(st: dict, where: str) -> None:
    """The `storage` section: its format, and for zarr every object key (each becomes a path)."""
    fmt = st.get("format", "webdataset")
    if fmt not in ("webdataset", "zarr"):
        raise ManifestError(where, "storage.format", f"must be 'webdataset' or 'zarr', got {fmt!r}")
    if fmt != "zarr":
        return
    objects = st.get("objects")
    if not isinstance(objects, dict) or not objects:
        raise ManifestError(where, "storage.objects", "must be a non-empty JSON object of key → sha256")
    for key, digest in objects.items():
        try:
            safe_key(key, "object key", where)
        except UnsafeNameError as e:
            raise ManifestError(where, f"storage.objects[{key[:60]!r}]", str(e).removeprefix(f"{where}: ")) \
                from None
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ManifestError(where, f"storage.objects[{key[:60]!r}]", "must be 64 lower-case hex digits")


def manifest_url(location: str) -> str:
    """Accept a shard-set folder/URL, the manifest file itself, or a zarr store the manifest
    sits beside (`…/store.zarr`)."""
    if location.endswith(".json"):
        return location
    location = location.rstrip("/")
    if location.endswith(".zarr"):
        location = location.rsplit("/", 1)[0] if "/" in location else "."
    return storage.join(location, NAME)


def _read_bounded(f, limit: int) -> bytes:
    """At most `limit` bytes of `f`, reading until the end (a streamed HTTP file gives a block per read)."""
    parts, n = [], 0
    while n < limit and (block := f.read(min(storage.CHUNK, limit - n))):
        parts.append(block)
        n += len(block)
    return b"".join(parts)


def load(location: str) -> Manifest:
    """Read and validate the manifest of a shard set (folder, URL or manifest path)."""
    url = manifest_url(str(location))
    base = url.rsplit("/", 1)[0] if "/" in url else "."
    if not storage.is_remote(url):
        local = Path(str(location).removeprefix("file://")).expanduser()
        if local.is_file() and not str(location).endswith(".json"):
            raise ManifestError(str(local), "(file)", "is a file, not a shard set: give the folder umx-prep "
                                "wrote (or its manifest.json)")
    try:
        with storage.open_read(url) as f:
            data = _read_bounded(f, MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ManifestError(url, "(file)", f"is larger than {MAX_BYTES // 2**20} MiB: not a umx manifest")
        raw = json.loads(data.decode("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise ManifestError(url, "(file)", "no manifest here: is this a shard set written by umx-prep?") from None
    except IsADirectoryError:
        raise ManifestError(url, "(file)", "is a folder, not a manifest") from None
    except ValueError as e:  # not UTF-8, not JSON, or a number over Python's 4300-digit limit
        raise ManifestError(url, "(file)", f"is not valid JSON ({e})") from None
    except RecursionError:
        raise ManifestError(url, "(file)", "is nested too deeply to be a umx manifest") from None
    return parse(validate(raw, url), base)


def _v1_complement(raw: dict) -> dict | None:
    """What a v1 manifest left implicit: a track set with vocals may train `accompaniment`."""
    if raw["sampling"]["records"] == "tracks" and "vocals" in raw["sources"]:
        return {"name": "accompaniment", "of": "vocals"}
    return None


def parse(raw: dict, location: str) -> Manifest:
    """A validated manifest object as typed sections (the only reader of the raw JSON)."""
    smp, st = raw["sampling"], raw["storage"]
    given = {k: v for k, v in smp["defaults"].items() if k in _DEFAULT_TYPES}
    if "source_augmentations" in given:
        given["source_augmentations"] = tuple(given["source_augmentations"])
    complement = smp.get("complement", _v1_complement(raw) if raw["version"] == 1 else None)
    sampling = Sampling(records=smp["records"], train_input=smp["train_input"], valid_input=smp["valid_input"],
                        valid=smp["valid"], remix=smp["remix"], augment=smp["augment"],
                        defaults=LayoutDefaults(**given),
                        complement=Complement(**complement) if complement else None)
    storage_format = st.get("format", "webdataset")
    splits = {}
    for name, body in raw["splits"].items():
        entries = tuple(_entry(name, e, storage_format) for e in body["shards"])
        widest = max((len(s) for e in entries for s in e.track_sources), default=0)
        splits[name] = Split(name, entries, body.get("max_sources", widest) or widest)
    return Manifest(raw=raw, location=location, version=raw["version"], layout=raw["layout"],
                    sample_rate=raw["sample_rate"], channels=raw["channels"], sources=list(raw["sources"]),
                    target=raw["target"], sampling=sampling,
                    storage=Storage(storage_format, dict(st.get("objects", {}))),
                    split_table=splits, statistics_table=raw.get("statistics", {}))


def _entry(split: str, e: dict, storage_format: str) -> TrackEntry:
    tracks = (tuple(e["track_ids"]), tuple(e["track_frames"]), tuple(tuple(s) for s in e["track_sources"]))
    if storage_format == "zarr":  # v2: "group"; v1 listed the staged tar's name (and its checksum)
        return TrackGroup(split, e["group"] if "group" in e else e["name"].removesuffix(".tar"), *tracks)
    return ShardEntry(split, e["name"], e["sha256"], e["bytes"], *tracks)
