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
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .. import __version__
from ..errors import UmxError
from ..layouts import Scan, safe_id, scan
from ..shards import manifest as mf
from ..shards import storage, zarr_store
from ..shards.cache import cache_root
from ..shards.webdataset import DEFAULT_SHARD_BYTES, ShardWriter
from . import stats
from .checks import Loaded, Options, load_track, note
from .report import Report

DEFAULT_STFT = (4096, 1024)
FORMATS = ("webdataset", "zarr")
STAGING = ".staging"


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
        entry = self.writer.close_shard()
        sidecar = {"entry": entry, "notes": self.notes, "consumed": self.consumed, "widest": self.widest,
                   "moments": self.moments.to_json()}
        storage.write_json(self.staging / f"{entry['name']}.done.json", sidecar)
        self.done.append(sidecar)
        self._reset()

    def close(self) -> list[dict]:
        """Finish the open shard; returns notes of tracks after the last shard (all skipped)."""
        if self.writer.is_open:
            self._finish()
        return self.notes


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
    for f in staging.iterdir():  # drop what is not kept: partial shards, temp files, later shards
        kept = {s["entry"]["name"] for v in done.values() for s in v}
        name = f.name.removesuffix(".done.json")
        if f.name != "prep.json" and name not in kept:
            f.unlink()
    return done


def prepare(
    layout: str,
    root: str | Path,
    out: str | Path,
    *,
    workers: int = 1,
    sample_rate: int = 44100,
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
    remote = storage.is_remote(str(out))
    out = str(out) if remote else Path(out).expanduser()
    found = scan(layout, root, **layout_options)
    settings = {"sample_rate": sample_rate, "shard_bytes": shard_bytes, "max_length_diff": max_length_diff,
                "skip_silent_targets": skip_silent_targets, "version": mf.VERSION}
    if format not in FORMATS:
        raise UmxError(f"--format must be one of {', '.join(FORMATS)}, not '{format}'")
    fp = fingerprint(layout, found, {**settings, "format": format})
    manifest_url = storage.join(str(out), mf.NAME)
    if storage.exists(manifest_url) and not overwrite:
        existing = json.loads(storage.read_bytes(manifest_url))
        if existing.get("prep", {}).get("fingerprint") == fp:
            return existing  # the same input and options: already done
        raise UmxError(f"{out}: already holds a shard set made from other input or options; "
                       "use --overwrite to replace it")
    # staging is always local: next to a local shard set, in the cache for a bucket
    staging = (cache_root() / "staging" / hashlib.sha256(out.encode()).hexdigest()[:20]) if remote \
        else out / STAGING
    plan = staging / "prep.json"
    if staging.exists():
        same = plan.is_file() and json.loads(plan.read_text()).get("fingerprint") == fp
        if not same and not overwrite:
            raise UmxError(f"{staging}: an interrupted prep of other input or options is here; "
                           "rerun it, or use --overwrite to discard it")
        if not same:
            shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    storage.write_json(plan, {"fingerprint": fp})
    done = _load_done(staging)

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
        tails = _write_shards(found, staging, done, workers, shard_bytes, progress, Options(
            sample_rate=sample_rate, max_length_diff=max_length_diff, target=found.target,
            skip_silent_targets=skip_silent_targets,
            stft=DEFAULT_STFT if found.sampling["records"] == "tracks" else None))
        return _finish(layout, found, staging, out, done, tails, report, settings, fp, strict, root, progress,
                       format)
    except storage.StorageError:
        raise  # e.g. an interrupted upload: the staged shards stay, a rerun sends the rest
    except UmxError:
        shutil.rmtree(staging, ignore_errors=True)  # an input problem: nothing to resume
        raise


def _finish(layout, found, staging, out, done, tails, report, settings, fp, strict, root, progress,
            format: str) -> dict:
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
        "format": mf.FORMAT, "version": mf.VERSION, "created_by": f"umx {__version__}",
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
            records, manifest, *DEFAULT_STFT)}
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
    mf.validate(manifest, storage.join(str(out), mf.NAME))
    storage.write_json(staging / "report.json", report.to_json(kept))
    _publish(staging, out, manifest)
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


def _publish(staging: Path, out, manifest: dict) -> None:
    """Move (or upload) the new shards in, drop shards of a replaced set, write the manifest
    last — so a half-written shard set is never visible as complete."""
    if storage.is_remote(str(out)):
        return _publish_remote(staging, str(out), manifest)
    old = out / mf.NAME
    if old.exists():
        old.unlink()  # the old set stops being visible as complete before files change
    zarr = manifest["storage"]["format"] == "zarr"
    new_names = set() if zarr else {e["name"] for s in manifest["splits"].values() for e in s["shards"]}
    for stale in out.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        if stale.name not in new_names:
            stale.unlink()
    shutil.rmtree(out / zarr_store.STORE, ignore_errors=True)
    for name in [*sorted(new_names), "report.json"] + ([zarr_store.STORE] if zarr else []):
        (staging / name).replace(out / name)
    storage.write_json(old, manifest)
    shutil.rmtree(staging)


def _publish_remote(staging: Path, out: str, manifest: dict) -> None:
    """Upload to a bucket; shards already there with the right size (an interrupted
    upload) are not sent again."""
    storage.remove(storage.join(out, mf.NAME))
    entries = [e for s in manifest["splits"].values() for e in s["shards"]]
    names = {e["name"] for e in entries}
    for stale in storage.listing(out):
        if stale.endswith(".tar") and stale not in names:
            storage.remove(storage.join(out, stale))
    if manifest["storage"]["format"] == "zarr":
        base = staging / zarr_store.STORE
        for rel in manifest["storage"]["objects"]:  # few large objects: upload each (reruns resend them)
            storage.upload(base / rel, storage.join(storage.join(out, zarr_store.STORE), rel))
        entries = []
    there = storage.listing(out)
    for e in entries:
        if there.get(e["name"]) != e["bytes"]:
            storage.upload(staging / e["name"], storage.join(out, e["name"]))
    storage.upload(staging / "report.json", storage.join(out, "report.json"))
    (staging / mf.NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    storage.upload(staging / mf.NAME, storage.join(out, mf.NAME))
    shutil.rmtree(staging)


def print_summary(manifest: dict, out: str | Path, report_path: str | Path, file=None) -> None:
    file = file or sys.stdout
    for split, body in manifest["splits"].items():
        secs = body["frames"] / manifest["sample_rate"]
        print(f"  {split}: {body['tracks']} tracks, {secs:.1f} s, {len(body['shards'])} shard(s)", file=file)
    print(f"shard set written to {out} (report: {report_path})", file=file)
