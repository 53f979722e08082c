"""The prep pipeline: scan → read/decode once → check/repair → resample → int16 →
shards + statistics → report → manifest (last).

Tracks are read in parallel worker processes; shards are written by the main
process in a fixed order, so the output is identical for any worker count.
Everything is built in `OUT/.staging` and moved into place at the end, so a
failed or killed run never damages a shard set that was already there.

Resumable: each finished shard gets a sidecar (`<shard>.done.json`: its
manifest entry, statistics moments, report notes and the tracks it consumed).
Rerunning the same command after a kill verifies the finished shards (sha256),
keeps them, skips their tracks and redoes the rest; the result is byte-identical
to an uninterrupted run. A staging folder or shard set made from other input
or options is never mixed in: prep refuses unless --overwrite.

--out is only ever a shard set: prep refuses a non-empty folder or bucket prefix
that holds no umx manifest (user files, another tool's shards or store.zarr, the
dataset itself), and replacing a shard set (--overwrite) removes only what the
old manifest lists, never other files. What prep has placed at --out but not yet
covered by a manifest (an interrupted publish or upload) is listed, with each
object's sha256, in the staging folder's ledger (owned.json): a rerun knows those
objects as its own, and re-uploads a bucket object unless the ledger says this
very content was sent.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .. import __version__, audio
from ..errors import UmxError, shown
from ..layouts import Scan, safe_id, scan
from ..models import defaults
from ..names import inside, safe_key, safe_name
from ..shards import manifest as mf
from ..shards import storage, zarr_store
from ..shards.cache import cache_root
from ..shards.webdataset import DEFAULT_SHARD_BYTES, ShardWriter, shard_name
from . import stats
from .checks import Loaded, Options, load_track, note
from .report import Report

DEFAULT_STFT = defaults.STFT
MIN_FRAMES = DEFAULT_STFT[0]  # a track shorter than one window of open-unmix's STFT is skipped (checks.py)
WORKERS = (1, 1024)  # --workers, as umx-train's --nb-workers
MAX_SHARD_MIB = 2**16  # --shard-size (64 GiB)
MAX_LENGTH_DIFF = 3600  # --max-length-diff (s)
FORMATS = ("webdataset", "zarr")
STAGING = ".staging"
LEDGER = "owned.json"  # in the staging folder: what prep placed at --out beyond the manifest's reach


def _worker_init() -> None:
    torch.set_num_threads(1)


def _load_star(args) -> Loaded:
    return load_track(*args)


def fingerprint(layout: str, found: Scan, settings: dict) -> str:
    """What the output depends on: layout, options, settings and every input file's
    path, size and modification time."""
    h = hashlib.sha256(json.dumps([layout, found.options, settings], sort_keys=True, default=str).encode())
    files = sorted({str(p) for t in found.tracks for p in [*t.files.values(), t.mixture] if p}
                   | {r["file"] for r in found.rejected})
    for f in files:
        p = Path(f)
        st = p.stat() if p.is_file() else None
        h.update(f"{f}\0{st.st_size if st else -1}\0{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()


class _SplitWriter:
    """One split's shards, plus what each shard accounts for (sidecars make it resumable)."""

    def __init__(self, staging: Path, split: str, max_bytes: int, done: list[dict]):
        self.staging, self.split = staging, split
        self.done = done  # sidecars of finished shards, in order
        self.writer = ShardWriter(staging, split, max_bytes, start_index=len(done))
        self._reset()

    def _reset(self) -> None:
        self.notes, self.consumed, self.widest = [], [], 0
        self.moments = stats.empty(DEFAULT_STFT[0])

    def add(self, loaded: Loaded) -> None:
        with self._naming():
            self._add(loaded)

    def _naming(self):
        return _named_os_errors(self.staging / shard_name(self.split, len(self.done)), self.abort)

    def abort(self) -> None:
        """Drop the half-written shard after a failed write (disk full); a rerun redoes its tracks."""
        self.writer.abort()

    def _add(self, loaded: Loaded) -> None:
        t = loaded.track
        if loaded.record is not None and self.writer.would_roll_over(loaded.record):
            self._finish()
        self.notes += [{"split": t.split, "track": t.id, **n} for n in loaded.notes]
        self.consumed.append(t.id)
        if loaded.record is not None:
            self.writer.write(loaded.record)
            self.widest = max(self.widest, len(loaded.record.sources))
            if loaded.moments is not None:
                self.moments = self.moments.merge(loaded.moments)

    def _finish(self) -> None:
        with self._naming():
            entry = self.writer.close_shard()
        sidecar = {"entry": entry, "notes": self.notes, "consumed": self.consumed, "widest": self.widest,
                   "moments": self.moments.to_json()}
        side = self.staging / f"{entry['name']}.done.json"
        with _named_os_errors(side):
            storage.write_json(side, sidecar)
        self.done.append(sidecar)
        self._reset()

    def close(self) -> list[dict]:
        """Finish the open shard; returns notes of tracks after the last shard (all skipped)."""
        if self.writer.is_open:
            self._finish()
        return self.notes


class _named_os_errors:
    """Give an OSError that names no file (a write failing with ENOSPC) the path being written,
    so the command line can say which path ran out of space."""

    def __init__(self, path, on_error=None):
        self.path, self.on_error = str(path), on_error

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if isinstance(e, OSError) and self.on_error is not None:
            self.on_error()
        if isinstance(e, OSError) and e.errno and e.filename is None:
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), self.path) from None
        return False


def _load_done(staging: Path) -> dict[str, list[dict]]:
    """Finished shards of an interrupted run, verified; anything after a bad one is redone."""
    done: dict[str, list[dict]] = {}
    for side in sorted(staging.glob("*.done.json")):
        s = json.loads(side.read_text())
        split = s["entry"]["name"].rsplit("-", 1)[0]
        shard = staging / s["entry"]["name"]
        ok = shard.is_file() and storage.sha256_of(str(shard)) == (s["entry"]["sha256"], s["entry"]["bytes"])
        expected = len(done.get(split, []))
        if ok and s["entry"]["name"] == f"{split}-{expected:06d}.tar":
            done.setdefault(split, []).append(s)
    kept = {s["entry"]["name"] for v in done.values() for s in v}
    for f in staging.iterdir():  # drop what is not kept: partial shards, temp files, later shards, a store
        name = f.name.removesuffix(".done.json")
        if f.name not in ("prep.json", LEDGER) and name not in kept:
            shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink()
    return done


def prepare(
    layout: str,
    root: str | Path,
    out: str | Path,
    *,
    workers: int = 1,
    sample_rate: int = defaults.SAMPLE_RATE,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    max_length_diff: float = 1.0,
    skip_silent_targets: bool = False,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    format: str = "webdataset",
    **layout_options,
) -> dict:
    """Turn the dataset folder `root` (in `layout`) into a shard set at `out`.

    Returns the manifest. Raises UmxError (naming the file and the problem) for
    unusable input; nothing at `out` changes unless prep succeeds.
    """
    _check_settings(workers, sample_rate, shard_bytes, max_length_diff, format)
    remote = storage.is_remote(str(out))
    out = str(out) if remote else Path(out).expanduser()
    if not remote and out.exists() and not out.is_dir():
        raise UmxError(f"{out}: --out is an existing file, not a folder")
    found = scan(layout, root, **layout_options)
    if not remote:
        _check_apart(out, Path(root).expanduser(), found)
    settings = {"sample_rate": sample_rate, "shard_bytes": shard_bytes, "max_length_diff": max_length_diff,
                "skip_silent_targets": skip_silent_targets, "version": mf.WRITTEN_VERSION.get(format, mf.VERSION)}
    fp = fingerprint(layout, found, {**settings, "format": format})
    # staging is always local: next to a local shard set, in the cache for a bucket
    staging = (cache_root() / "staging" / hashlib.sha256(out.encode()).hexdigest()[:20]) if remote \
        else out / STAGING
    existing, owned = _claim(out, staging, remote)
    if existing is not None and not overwrite:
        if isinstance(existing.get("prep"), dict) and existing["prep"].get("fingerprint") == fp:
            return existing  # the same input and options: already done
        raise UmxError(f"{out}: already holds a shard set made from other input or options; "
                       "use --overwrite to replace it")
    plan = staging / "prep.json"
    if staging.exists():
        same = plan.is_file() and _fingerprint_of(plan) == fp
        if not same and not overwrite:
            raise UmxError(f"{staging}: an interrupted prep of other input or options is here; "
                           "rerun it, or use --overwrite to discard it")
        if not same:
            _reset_staging(staging)
    try:
        with _named_os_errors(staging):
            staging.mkdir(parents=True, exist_ok=True)
            storage.write_json(plan, {"fingerprint": fp})
            done = _load_done(staging)
    except OSError:
        _drop_partial(staging)
        raise

    report = Report()
    for r in found.rejected:
        report.add(r["split"], r["track"], note(r["file"], r.get("class", "missing"), "skipped", r["problem"],
                                                r["action"]))
    for t in found.tracks:
        if found.sampling["records"] == "tracks" and _unsafe(t.name):
            report.add(t.split, t.id, note(t.name, "unsafe_name", "repaired", f"track name '{t.name}' is not a "
                                           "safe shard member name", f"stored as id '{t.id}' (name kept in meta)"))
        elif t.id != safe_id(t.name):
            report.add(t.split, t.id, note(t.name, "duplicate_id", "repaired", f"another track also maps to id "
                                           f"'{safe_id(t.name)}'", f"stored as id '{t.id}'"))
    try:
        with _named_os_errors(staging):
            tails = _write_shards(found, staging, done, workers, shard_bytes, progress, Options(
                sample_rate=sample_rate, max_length_diff=max_length_diff, target=found.target,
                skip_silent_targets=skip_silent_targets, min_frames=MIN_FRAMES,
                stft=DEFAULT_STFT if found.sampling["records"] == "tracks" else None))
            return _finish(layout, found, staging, out, done, tails, report, settings, fp, strict, root, progress,
                           format, owned)
    except storage.StorageError:
        raise  # e.g. an interrupted upload: the staged shards stay, a rerun sends the rest
    except UmxError:
        _reset_staging(staging)  # an input problem: nothing to resume (the ledger stays)
        raise
    except OSError:
        _drop_partial(staging)  # disk full, read-only, …: finished shards stay for a rerun
        raise


def _check_settings(workers, sample_rate, shard_bytes, max_length_diff, format) -> None:
    """Refuse unusable settings before any work, each as one line naming the option."""
    if format not in FORMATS:
        raise UmxError(f"--format must be one of {', '.join(FORMATS)}, not '{format}'")
    try:
        audio.check_rate(sample_rate)
    except ValueError as e:
        raise UmxError(f"--sample-rate: {e}") from None
    if isinstance(workers, bool) or not isinstance(workers, int) or not WORKERS[0] <= workers <= WORKERS[1]:
        raise UmxError(f"--workers must be a whole number from {WORKERS[0]} to {WORKERS[1]}, got {shown(workers)}")
    if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) \
            or not 1 <= shard_bytes <= MAX_SHARD_MIB * 2**20:
        raise UmxError(f"--shard-size must be a positive size up to {MAX_SHARD_MIB} MiB, got {shown(shard_bytes)} "
                       "bytes")
    if isinstance(max_length_diff, bool) or not isinstance(max_length_diff, (int, float)) \
            or not math.isfinite(max_length_diff) or not 0 <= max_length_diff <= MAX_LENGTH_DIFF:
        raise UmxError(f"--max-length-diff must be a number of seconds from 0 to {MAX_LENGTH_DIFF:g}, "
                       f"got {shown(max_length_diff)}")


def _check_apart(out: Path, root: Path, found: Scan) -> None:
    """Refuse an --out that is the dataset folder, holds it, or lies where the layout reads data
    (a split or track folder): prep would write into its own input, or delete it."""
    o, r = out.resolve(), root.resolve()
    if o == r:
        raise UmxError(f"{out}: --out is the dataset folder itself; choose a folder outside it")
    if r.is_relative_to(o):
        raise UmxError(f"{out}: --out contains the dataset folder {root}; choose a folder outside it")
    if not o.is_relative_to(r):
        return
    inputs = [p for t in found.tracks for p in [*t.files.values(), t.mixture, t.stems] if p]
    inputs += [Path(x["file"]) for x in found.rejected]
    tops = set(found.splits) | set(found.options.get("subsets") or [])
    for f in inputs:
        try:
            tops.add(Path(f).resolve().relative_to(r).parts[0])
        except (ValueError, IndexError):
            pass
    top = o.relative_to(r).parts[0]
    if top in tops:
        raise UmxError(f"{out}: --out is inside the dataset's '{top}' folder ({root / top}), where prep "
                       "reads data; choose a folder outside it")


def _fingerprint_of(plan: Path):
    try:
        return json.loads(plan.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _read_ledger(staging: Path) -> dict[str, str | None]:
    """What prep placed at --out and no manifest there lists yet: name → sha256 (None: unknown)."""
    try:
        objects = json.loads((staging / LEDGER).read_text())["objects"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {k: v for k, v in objects.items() if isinstance(k, str) and (v is None or isinstance(v, str))} \
        if isinstance(objects, dict) else {}


def _write_ledger(staging: Path, objects: dict[str, str | None]) -> None:
    storage.write_json(staging / LEDGER, {"objects": dict(sorted(objects.items()))})


def _own_staging(staging: Path) -> bool:
    """Whether a staging folder is one prep made (empty, or with its plan or ledger)."""
    return staging.is_dir() and not staging.is_symlink() and (
        not any(staging.iterdir()) or (staging / "prep.json").is_file() or (staging / LEDGER).is_file())


def _reset_staging(staging: Path) -> None:
    """Discard staged work, keeping the ledger: what it lists still lies at --out."""
    ledger = _read_ledger(staging)
    shutil.rmtree(staging, ignore_errors=True)
    if ledger:
        staging.mkdir(parents=True, exist_ok=True)
        _write_ledger(staging, ledger)


def _drop_partial(staging: Path) -> None:
    """Free the space of a half-written shard or temp file (a rerun would drop it anyway)."""
    if staging.is_dir():
        for f in staging.glob(".*.tmp*"):
            f.unlink(missing_ok=True)


def _entries(out, remote: bool) -> dict[str, int | None]:
    """Everything at --out: local top-level names, or every object key under a bucket prefix (→ size)."""
    if not remote:
        return {p.name: None for p in out.iterdir()} if out.is_dir() else {}
    fs, path = storage.filesystem(out)
    base = path.rstrip("/") + "/"

    def find():
        try:
            fs.invalidate_cache(path.rstrip("/"))  # objects others wrote since this process listed
            return fs.find(path.rstrip("/"), detail=True)
        except FileNotFoundError:
            return {}
    found = storage.retrying(out, find, "list")
    return {k[len(base):]: int(v.get("size") or 0) for k, v in found.items()
            if k.startswith(base) and v.get("type") != "directory"}


def _listed(manifest: dict, remote: bool) -> set[str]:
    """What a (validated) manifest makes its own at its location: itself, its report, its shards
    or its store (local: the top-level name; bucket: every object key)."""
    names = {mf.NAME, "report.json"}
    where = "manifest.json"
    st = manifest["storage"]
    if isinstance(st, dict) and st.get("format") == "zarr":
        if not remote:
            return names | {zarr_store.STORE}
        objects = st.get("objects") if isinstance(st.get("objects"), dict) else {}
        return names | {f"{zarr_store.STORE}/{safe_key(k, 'zarr object', where)}" for k in objects}
    return names | {safe_name(e["name"], "shard name", where) for b in manifest["splits"].values()
                    for e in b["shards"]}


def _claim(out, staging: Path, remote: bool) -> tuple[dict | None, dict[str, str | None]]:
    """The shard set at --out (its validated manifest, or None) and what prep may replace there
    (name → sha256 where known); refuse a location that holds anything else and no shard set."""
    entries = _entries(out, remote)
    existing = None
    if mf.NAME in entries:
        url = storage.join(str(out), mf.NAME)
        try:
            existing = mf.validate(json.loads(storage.read_bytes(url)), url)
            listed = _listed(existing, remote)
        except storage.StorageError:
            raise  # could not read it (access, network): not a verdict on what it is
        except (UmxError, ValueError, UnicodeDecodeError) as e:
            raise UmxError(f"{out}: holds a manifest.json that is not a umx shard set's ({e}); refusing to "
                           "write here — choose an empty or new --out") from None
    else:
        listed = set()
    if not remote and STAGING in entries and not _own_staging(staging):
        raise UmxError(f"{staging}: not a staging folder of umx-prep; refusing to write here — choose an empty "
                       "or new --out")
    ledger = _read_ledger(staging) if (remote or _own_staging(staging)) else {}
    owned = {**{n: None for n in listed}, **ledger}
    if existing is None:
        foreign = sorted(n for n in entries if n not in owned and not (n == STAGING and not remote))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f", … ({len(foreign)} in all)" if len(foreign) > 5 else "")
            raise UmxError(f"{out}: is not empty and holds no umx shard set (found {shown}); refusing to write "
                           "into it (nothing was changed) — choose an empty or new --out")
    return existing, owned


def _finish(layout, found, staging, out, done, tails, report, settings, fp, strict, root, progress,
            format: str, owned: dict) -> dict:
    sample_rate, shard_bytes = settings["sample_rate"], settings["shard_bytes"]
    splits, moments, widest = {}, stats.empty(DEFAULT_STFT[0]), {}
    for split in found.splits:
        sides = done.get(split, [])
        for s in sides:
            report.entries += s["notes"]
            moments = moments.merge(stats.Moments.from_json(s["moments"]))
        report.entries += tails.get(split, [])
        splits[split] = [s["entry"] for s in sides]
        widest[split] = max((s["widest"] for s in sides), default=0)
    kept = {s: sum(len(e["track_ids"]) for e in splits[s]) for s in found.splits}
    _check_usable(found, report, kept, strict, root)
    manifest = {
        "format": mf.FORMAT, "version": mf.WRITTEN_VERSION[format], "created_by": f"umx {__version__}",
        "layout": layout, "layout_options": found.options, "sample_rate": sample_rate, "channels": 2,
        "sources": found.sources, "target": found.target, "sampling": found.sampling,
        "storage": {"format": "webdataset", "encoding": "int16", "shard_bytes": shard_bytes},
        "prep": {"fingerprint": fp, "settings": settings},
        "splits": {s: {"tracks": kept[s], "frames": sum(sum(e["track_frames"]) for e in splits[s]),
                       "max_sources": widest[s], "shards": splits[s]} for s in found.splits},
    }
    if found.sampling["records"] == "source_files":
        records = zarr_store.records_of(str(staging / e["name"]) for e in splits["train"])
        manifest["statistics"] = {mf.stats_key(*DEFAULT_STFT): stats.source_file_statistics(
            records, found.sources, sample_rate, found.sampling["defaults"].get("nb_train_samples"), *DEFAULT_STFT)}
    else:
        manifest["statistics"] = {mf.stats_key(*DEFAULT_STFT): moments.finalize()}
    if format == "zarr":  # the same records, as one array per source per split
        store = staging / zarr_store.STORE
        shutil.rmtree(store, ignore_errors=True)
        objects = zarr_store.write_store(store, {split: (
            sum(sum(e["track_frames"]) for e in splits[split]),
            zarr_store.records_of(str(staging / e["name"]) for e in splits[split])) for split in found.splits})
        manifest["storage"] = {"format": "zarr", "encoding": "int16", "store": zarr_store.STORE,
                               "chunk_frames": zarr_store.CHUNK_FRAMES, "shard_chunks": zarr_store.SHARD_CHUNKS,
                               "objects": objects}
        for body in manifest["splits"].values():  # the store's track groups: no tar files, no checksums of them
            body["shards"] = [{"group": e["name"].removesuffix(".tar"), "track_ids": e["track_ids"],
                               "track_frames": e["track_frames"], "track_sources": e["track_sources"]}
                              for e in body["shards"]]
    mf.validate(manifest, storage.join(str(out), mf.NAME))
    storage.write_json(staging / "report.json", report.to_json(kept))
    storage.write_json(staging / mf.NAME, manifest)  # every write that takes space precedes any removal
    _publish(staging, out, manifest, owned)
    if progress:
        print("\n".join(report.summary_lines(kept)), file=sys.stderr)
    return manifest


def _unsafe(name: str) -> bool:
    """Names that could escape a shard set or break a reader: separators, '..', control characters."""
    return "/" in name or "\\" in name or ".." in name or any(ord(c) < 32 for c in name)


def _write_shards(found: Scan, staging: Path, done: dict, workers: int, shard_bytes: int, progress: bool,
                  opt: Options) -> dict[str, list[dict]]:
    skip = {(split, t) for split, sides in done.items() for s in sides for t in s["consumed"]}
    todo = [t for t in found.tracks if (t.split, t.id) not in skip]
    stored_input = found.sampling["train_input"] == "mixture"
    jobs = [(t, Options(**{**opt.__dict__, "store_mixture": t.split != "train" or stored_input})) for t in todo]
    writers = {s: _SplitWriter(staging, s, shard_bytes, done.setdefault(s, [])) for s in found.splits}
    pool = mp.get_context("fork").Pool(workers, _worker_init) if workers > 1 and jobs else None
    try:
        results = pool.imap(_load_star, jobs) if pool else map(_load_star, jobs)
        for loaded in tqdm(results, total=len(found.tracks), initial=len(found.tracks) - len(jobs), desc="prep",
                           unit="track", disable=not progress):
            writers[loaded.track.split].add(loaded)
    finally:
        if pool:
            pool.terminate()
    return {s: w.close() for s, w in writers.items()}


def _check_usable(found: Scan, report: Report, kept: dict[str, int], strict: bool, root) -> None:
    """Refuse an empty split (listing why each candidate was rejected) and, with
    --strict, any repair or skip."""
    if strict:
        problems = report.problems(("repaired", "skipped"))
        if problems:
            lines = "\n".join(f"  {p['file']}: {p['problem']} ({p['action']})" for p in problems)
            raise UmxError(f"--strict: {len(problems)} file(s) would be repaired or skipped:\n{lines}")
    for split in found.splits:
        if kept.get(split, 0) == 0:
            why = [p for p in report.problems(("skipped",)) if p["split"] == split]
            lines = "\n".join(f"  {p['file']}: {p['problem']}" for p in why) or "  (no tracks found)"
            raise UmxError(f"{Path(root)}: no usable track in the '{split}' split:\n{lines}")


def _publish(staging: Path, out, manifest: dict, owned: dict[str, str | None]) -> None:
    """Move (or upload) the new shards in, drop what the replaced set listed, write the manifest
    last — so a half-written shard set is never visible as complete. Only what `owned` names
    (the old manifest's files, the ledger's) is replaced or removed; anything else at --out
    stays, and a new name that is taken by such a file is refused before anything changes."""
    if storage.is_remote(str(out)):
        return _publish_remote(staging, str(out), manifest, owned)
    zarr = manifest["storage"]["format"] == "zarr"
    new = ({zarr_store.STORE} if zarr else {e["name"] for s in manifest["splits"].values() for e in s["shards"]}) \
        | {"report.json"}
    taken = sorted(n for n in new | {mf.NAME} if (out / n).exists() and n not in owned)
    if taken:
        raise UmxError(f"{out}: {', '.join(taken)} already exist(s) and belong(s) to no umx shard set here; "
                       "refusing to replace them (nothing was changed) — move them or choose another --out")
    old = out / mf.NAME
    stale = [inside(out, n, "listed file", str(old)) for n in sorted(set(owned) - new - {mf.NAME, STAGING})]
    _write_ledger(staging, {**owned, **{n: None for n in new | {mf.NAME}}})  # a rerun after a kill knows them
    if old.exists():
        old.unlink()  # the old set stops being visible as complete before files change
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if zarr:
        shutil.rmtree(out / zarr_store.STORE, ignore_errors=True)  # owned (checked above): replaced whole
    for name in sorted(new):
        (staging / name).replace(out / name)
    (staging / mf.NAME).replace(old)
    shutil.rmtree(staging)


def _publish_remote(staging: Path, out: str, manifest: dict, owned: dict[str, str | None]) -> None:
    """Upload to a bucket. An object is not sent again only where the ledger says this prep sent
    exactly this content (sha256) and it is still there (an interrupted upload); everything else is
    uploaded. Only what the old manifest or the ledger lists is removed."""
    if manifest["storage"]["format"] == "zarr":
        base = staging / zarr_store.STORE
        files = {f"{zarr_store.STORE}/{rel}": (base / rel, sha) for rel, sha in manifest["storage"]["objects"].items()}
    else:
        files = {e["name"]: (staging / e["name"], e["sha256"]) for s in manifest["splits"].values()
                 for e in s["shards"]}
    report = staging / "report.json"
    files["report.json"] = (report, storage.sha256_of(str(report))[0])
    there = _entries(out, remote=True)
    taken = sorted(k for k in [*files, mf.NAME] if k in there and k not in owned)
    if taken:
        shown = ", ".join(taken[:5]) + (f", … ({len(taken)} in all)" if len(taken) > 5 else "")
        raise UmxError(f"{out}: {shown} already exist(s) and belong(s) to no umx shard set here; refusing to "
                       "replace them (nothing was changed) — remove them or choose another --out")
    stale = [safe_key(k, "listed object", out) for k in sorted(set(owned) - set(files) - {mf.NAME})]
    ledger = {**owned, mf.NAME: owned.get(mf.NAME)}
    _write_ledger(staging, ledger)  # before anything changes: a rerun after a kill knows what is its own
    storage.remove(storage.join(out, mf.NAME))
    for key in stale:
        if key in there:
            storage.remove(storage.join(out, key))
        ledger.pop(key, None)
    _write_ledger(staging, ledger)
    for key, (local, sha) in files.items():
        if ledger.get(key) == sha and there.get(key) == local.stat().st_size:
            continue  # this very content was sent by this prep (an interrupted upload)
        ledger[key] = None  # being replaced: content unknown until the upload is done
        _write_ledger(staging, ledger)
        storage.upload(local, storage.join(out, key))
        ledger[key] = sha
        _write_ledger(staging, ledger)
    storage.upload(staging / mf.NAME, storage.join(out, mf.NAME))
    shutil.rmtree(staging)


def print_summary(manifest: dict, out: str | Path, report_path: str | Path, file=None) -> None:
    file = file or sys.stdout
    for split, body in manifest["splits"].items():
        secs = body["frames"] / manifest["sample_rate"]
        print(f"  {split}: {body['tracks']} tracks, {secs:.1f} s, {len(body['shards'])} shard(s)", file=file)
    print(f"shard set written to {out} (report: {report_path})", file=file)
