"""The prep pipeline: scan → read/decode once → check/repair → resample → int16 →
shards + statistics → report → manifest (last).

Tracks are read in parallel worker processes; shards are written by the main
process in a fixed order, so the output is identical for any worker count.
Everything is built in a staging folder and moved into place at the end, so
a failed or killed run never damages a shard set that was already there.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import __version__, audio
from ..errors import AudioError, UmxError
from ..layouts import Track, scan
from ..shards import manifest as mf
from ..shards import storage
from ..shards.webdataset import DEFAULT_SHARD_BYTES, ShardWriter, TrackRecord
from . import stats
from .report import Report

DEFAULT_STFT = (4096, 1024)


@dataclass
class Loaded:
    """A worker's result for one track: the record, or why it was skipped."""

    track: Track
    record: TrackRecord | None
    notes: list[tuple[str, str, str, str]]  # (file, status, problem, action)
    moments: stats.Moments | None


def _read_arrays(track: Track) -> tuple[dict[str, tuple[np.ndarray, int, Path]], np.ndarray | None]:
    """Decode a track's sources (and real mixture) once: name → (float32, rate, file)."""
    if track.stems is not None:
        decoded, rate = audio.read_stems(track.stems)
        arrays = {n: (decoded[track.stem_ids[n]], rate, track.stems) for n in track.files}
        if track.mixture is not None:
            arrays["mixture"] = (decoded[track.stem_ids["mixture"]], rate, track.stems)
        return arrays
    arrays = {}
    for name, path in {**track.files, **({"mixture": track.mixture} if track.mixture else {})}.items():
        data, rate = audio.read(path, "float32")
        arrays[name] = (data, rate, path)
    return arrays


def _load_track(track: Track, sample_rate: int, stft: tuple[int, int] | None, max_length_diff: float,
                store_mixture: bool) -> Loaded:
    notes: list[tuple[str, str, str, str]] = []
    try:
        arrays = _read_arrays(track)
    except AudioError as e:
        notes.append((e.path, "skipped", e.problem, "track skipped"))
        return Loaded(track, None, notes, None)
    pcm: dict[str, np.ndarray] = {}
    fixes: dict[str, dict[str, None]] = {}  # file → problems and actions (ordered, once each)
    for name, (data, rate, path) in arrays.items():
        done = fixes.setdefault(str(path), {})
        if not np.isfinite(data).all():
            notes.append((str(path), "skipped", "contains NaN or inf samples", "track skipped"))
            return Loaded(track, None, notes, None)
        if data.shape[0] != 2:
            done[f"{data.shape[0]} channel(s)|" + ("duplicated to stereo" if data.shape[0] == 1
                                                   else "kept first two channels")] = None
            data = audio.force_stereo(data)
        if rate != sample_rate:
            done[f"sample rate {rate} Hz|resampled to {sample_rate} Hz"] = None
            data = audio.resample(data, rate, sample_rate)
        pcm[name] = audio.to_int16(data)
    for path, done in fixes.items():
        problems, actions = zip(*(d.split("|") for d in done)) if done else ((), ())
        notes.append((path, "repaired" if done else "ok", "; ".join(problems), "; ".join(actions)))

    lengths = {n: a.shape[-1] for n, a in pcm.items()}
    shortest, longest = min(lengths.values()), max(lengths.values())
    if longest != shortest:
        diff = (longest - shortest) / sample_rate
        problem = f"sources differ in length by {diff:.3f} s ({lengths})"
        longest_file = str(arrays[max(lengths, key=lengths.get)][2])
        if diff > max_length_diff:
            notes.append((longest_file, "skipped", problem, "track skipped"))
            return Loaded(track, None, notes, None)
        notes.append((longest_file, "repaired", problem, f"all sources cut to {shortest} frames"))
        pcm = {n: a[:, :shortest] for n, a in pcm.items()}

    mixture = pcm.pop("mixture", None)
    moments = None
    if track.split == "train" and stft is not None:
        # open-unmix's statistics see the dataset's unaugmented input: the real mixture where it has one
        mix = audio.to_float32(mixture) if mixture is not None else sum(audio.to_float32(a) for a in pcm.values())
        moments = stats.track_moments(mix, *stft)
    meta = {"id": track.id, "name": track.name, "split": track.split, "frames": shortest,
            "sources": list(pcm), "files": {n: str(p) for n, p in track.files.items()}}
    if track.mixture is not None:
        meta["mixture_file"] = str(track.mixture)
    record = TrackRecord(track.id, meta, pcm, mixture if store_mixture else None)
    return Loaded(track, record, notes, moments)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _load_star(args) -> Loaded:
    return _load_track(*args)


def prepare(
    layout: str,
    root: str | Path,
    out: str | Path,
    *,
    workers: int = 1,
    sample_rate: int = 44100,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    max_length_diff: float = 1.0,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **layout_options,
) -> dict:
    """Turn the dataset folder `root` (in `layout`) into a shard set at `out`.

    Returns the manifest written. Raises UmxError (naming the file and the
    problem) for unusable input; nothing at `out` changes unless prep succeeds.
    """
    out = Path(out).expanduser()
    if (out / mf.NAME).exists() and not overwrite:
        raise UmxError(f"{out}: already holds a shard set ({mf.NAME}); use --overwrite to replace it")
    found = scan(layout, root, **layout_options)
    report = Report()
    for r in found.rejected:
        report.add(r["split"], r["track"], r["file"], "skipped", r["problem"], r["action"])

    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{mp.current_process().pid}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        splits, moments, widest = _write_shards(found, staging, report, workers, sample_rate, shard_bytes,
                                        max_length_diff, progress)
        kept = {s: sum(len(e["track_ids"]) for e in splits.get(s, [])) for s in found.splits}
        _check_usable(found, report, kept, strict, root)
        manifest = {
            "format": mf.FORMAT, "version": mf.VERSION, "created_by": f"umx {__version__}",
            "layout": layout, "layout_options": found.options, "sample_rate": sample_rate, "channels": 2,
            "sources": found.sources, "target": found.target, "sampling": found.sampling,
            "storage": {"format": "webdataset", "encoding": "int16", "shard_bytes": shard_bytes},
            "splits": {s: {"tracks": kept[s], "frames": sum(sum(e["track_frames"]) for e in splits[s]),
                           "max_sources": widest.get(s, 0), "shards": splits[s]} for s in found.splits},
        }
        if found.sampling["records"] == "source_files":
            urls = [str(staging / e["name"]) for e in manifest["splits"]["train"]["shards"]]
            stats_ = stats.source_file_statistics(urls, manifest, *DEFAULT_STFT)
        else:
            stats_ = moments.finalize()
        manifest["statistics"] = {mf.stats_key(*DEFAULT_STFT): stats_}
        mf.validate(manifest, str(out / mf.NAME))
        storage.write_json(staging / "report.json", report.to_json(kept))
        _publish(staging, out, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _write_shards(found, staging, report, workers, sample_rate, shard_bytes, max_length_diff, progress):
    splits: dict[str, list[dict]] = {}
    widest: dict[str, int] = {}  # most sources in one record, per split
    writers: dict[str, ShardWriter] = {}
    moments = stats.empty(DEFAULT_STFT[0])
    per_track_stats = DEFAULT_STFT if found.sampling["records"] == "tracks" else None
    stored_input = found.sampling["train_input"] == "mixture"
    jobs = [(t, sample_rate, per_track_stats, max_length_diff, t.split != "train" or stored_input)
            for t in found.tracks]
    pool = mp.get_context("fork").Pool(workers, _worker_init) if workers > 1 else None
    try:
        results = pool.imap(_load_star, jobs) if pool else map(_load_star, jobs)
        for loaded in tqdm(results, total=len(jobs), desc="prep", unit="track", disable=not progress):
            t = loaded.track
            for file, status, problem, action in loaded.notes:
                report.add(t.split, t.id, file, status, problem, action)
            if loaded.record is None:
                continue
            if t.split not in writers:
                writers[t.split] = ShardWriter(staging, t.split, shard_bytes)
            writers[t.split].write(loaded.record)
            widest[t.split] = max(widest.get(t.split, 0), len(loaded.record.sources))
            if loaded.moments is not None:
                moments = moments.merge(loaded.moments)
    finally:
        if pool:
            pool.terminate()
    for split, w in writers.items():
        splits[split] = w.close()
    return splits, moments, widest


def _check_usable(found, report: Report, kept: dict[str, int], strict: bool, root) -> None:
    """Refuse an empty split (listing why each candidate was rejected) and, with
    --strict, any repair or skip."""
    problems = report.problems()
    if strict and problems:
        lines = "\n".join(f"  {p['file']}: {p['problem']} ({p['action']})" for p in problems)
        raise UmxError(f"--strict: {len(problems)} file(s) would be repaired or skipped:\n{lines}")
    for split in found.splits:
        if kept.get(split, 0) == 0:
            why = [p for p in problems if p["split"] == split]
            lines = "\n".join(f"  {p['file']}: {p['problem']}" for p in why) or "  (no tracks found)"
            raise UmxError(f"{Path(root)}: no usable track in the '{split}' split:\n{lines}")


def _publish(staging: Path, out: Path, manifest: dict) -> None:
    """Move the new shards in, drop shards of a replaced set, write the manifest last."""
    old = out / mf.NAME
    if old.exists():
        old.unlink()  # the old set stops being visible as complete before files change
    new_names = {e["name"] for s in manifest["splits"].values() for e in s["shards"]}
    for stale in out.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        if stale.name not in new_names:
            stale.unlink()
    for f in staging.iterdir():
        f.replace(out / f.name)
    storage.write_json(old, manifest)


def print_summary(manifest: dict, out: str | Path, report_path: str | Path, file=None) -> None:
    file = file or sys.stdout
    for split, body in manifest["splits"].items():
        secs = body["frames"] / manifest["sample_rate"]
        print(f"  {split}: {body['tracks']} tracks, {secs:.1f} s, {len(body['shards'])} shard(s)", file=file)
    print(f"shard set written to {out} (report: {report_path})", file=file)
