"""Read one track once and decide, visibly, what to do with each oddity.

Every problem gets a class, a status (ok / repaired / skipped) and the action
taken; the pipeline puts them in report.json. The outcomes:

  unreadable, truncated, non-audio file    → track skipped
  NaN / inf samples                        → track skipped
  other sample rate                        → resampled (soxr)
  mono / more than two channels            → duplicated / first two kept
  sources of different length              → cut to the shortest up to --max-length-diff, else skipped
  shorter than one STFT window (4096)      → track skipped
  clipping, all-silent source              → reported (a silent target is kept, or skipped with
                                             --skip-silent-targets)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import audio
from ..errors import AudioError
from ..layouts import Track
from ..models import defaults
from ..shards.records import TrackRecord
from . import stats

CLIP_LEVEL = 32767 - 1  # int16 magnitude counted as full scale
CLIP_FRACTION = 1e-3  # report clipping above this fraction of full-scale samples


@dataclass
class Options:
    sample_rate: int = defaults.SAMPLE_RATE
    stft: tuple[int, int] | None = defaults.STFT  # per-track statistics (None: computed later)
    max_length_diff: float = 1.0
    store_mixture: bool = False
    target: str = ""
    skip_silent_targets: bool = False
    min_frames: int = 0  # shorter tracks are skipped (the pipeline: one window of its STFT)


@dataclass
class Loaded:
    """The result for one track: the record, or why it was skipped; and every note."""

    track: Track
    record: TrackRecord | None
    notes: list[dict] = field(default_factory=list)
    moments: stats.Moments | None = None


def note(file, cls: str, status: str, problem: str = "", action: str = "") -> dict:
    return {"file": str(file), "class": cls, "status": status, "problem": problem, "action": action}


def _read_arrays(track: Track) -> dict[str, tuple[np.ndarray, int, Path]]:
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


def _length_skip(out: Loaded, arrays: dict, lengths: dict[str, int], diff: float, opt: Options) -> Loaded:
    """Skip a track whose sources differ in length by more than --max-length-diff seconds."""
    where = arrays[max(lengths, key=lengths.get)][2]
    problem = f"sources differ in length by {diff:.3f} s ({lengths})"
    out.notes.append(note(where, "length", "skipped", problem + f" > --max-length-diff {opt.max_length_diff}",
                          "track skipped"))
    return out


def _short_skip(out: Loaded, arrays: dict, lengths: dict[str, int], opt: Options) -> Loaded:
    """Skip a track too short for one STFT window: it could be neither trained on nor scored (a
    validation track that short would stop training at its first validation pass)."""
    name = min(lengths, key=lengths.get)
    out.notes.append(note(arrays[name][2], "short", "skipped",
                          f"{lengths[name]} samples at {opt.sample_rate} Hz: shorter than one STFT window "
                          f"({opt.min_frames} samples), too short to train on or score", "track skipped"))
    return out


def load_track(track: Track, opt: Options) -> Loaded:
    out = Loaded(track, None)
    try:
        arrays = _read_arrays(track)
    except AudioError as e:
        cls = "truncated" if e.problem.startswith("truncated") else "unreadable"
        out.notes.append(note(e.path, cls, "skipped", e.problem, "track skipped"))
        return out
    for name, (data, rate, path) in arrays.items():
        if not np.isfinite(data).all():
            out.notes.append(note(path, "nan", "skipped", "contains NaN or inf samples", "track skipped"))
            return out
    # lengths are compared on what the files hold, before any resampling: a track that is
    # skipped costs no resampling, and the work below is bounded by the decoded data (whose
    # rates audio.read has checked) rather than by what a header claims
    projected = {n: int(round(a.shape[-1] * opt.sample_rate / r)) for n, (a, r, _) in arrays.items()}
    seconds = {n: a.shape[-1] / r for n, (a, r, _) in arrays.items()}
    if max(seconds.values()) - min(seconds.values()) > opt.max_length_diff:
        return _length_skip(out, arrays, projected, max(seconds.values()) - min(seconds.values()), opt)
    pcm: dict[str, np.ndarray] = {}
    per_file: dict[str, list[tuple[str, str, str]]] = {}  # file → (class, problem, action)
    for name, (data, rate, path) in arrays.items():
        fixes = per_file.setdefault(str(path), [])
        if data.shape[0] != 2:
            action = "duplicated to stereo" if data.shape[0] == 1 else "kept first two channels"
            fixes.append(("channels", f"{data.shape[0]} channel(s)", action))
            data = audio.force_stereo(data)
        if rate != opt.sample_rate:
            fixes.append(("sample_rate", f"sample rate {rate} Hz", f"resampled to {opt.sample_rate} Hz"))
            data = audio.resample(data, rate, opt.sample_rate)
        pcm[name] = audio.to_int16(data)
    for path, fixes in per_file.items():
        unique = list(dict.fromkeys(fixes))
        if unique:
            out.notes += [note(path, c, "repaired", p, a) for c, p, a in unique]
        else:
            out.notes.append(note(path, "ok", "ok"))

    lengths = {n: a.shape[-1] for n, a in pcm.items()}
    shortest, longest = min(lengths.values()), max(lengths.values())
    if longest != shortest:
        diff = (longest - shortest) / opt.sample_rate
        if diff > opt.max_length_diff:  # only by resampling rounding: skipped as above
            return _length_skip(out, arrays, lengths, diff, opt)
        problem = f"sources differ in length by {diff:.3f} s ({lengths})"
        where = arrays[max(lengths, key=lengths.get)][2]
        out.notes.append(note(where, "length", "repaired", problem, f"all sources cut to {shortest} frames"))
        pcm = {n: a[:, :shortest] for n, a in pcm.items()}
    if shortest < opt.min_frames:
        return _short_skip(out, arrays, lengths, opt)

    for name, a in pcm.items():
        path = arrays[name][2]
        peak = int(np.abs(a.astype(np.int32)).max())
        if peak == 0:
            skip = name == opt.target and opt.skip_silent_targets
            out.notes.append(note(path, "silent", "skipped" if skip else "reported", f"source '{name}' is all silent",
                                  "track skipped (--skip-silent-targets)" if skip else "kept"))
            if skip:
                return out
        elif peak >= CLIP_LEVEL:
            clipped = int((np.abs(a.astype(np.int32)) >= CLIP_LEVEL).sum())
            if clipped > CLIP_FRACTION * a.size:
                out.notes.append(note(path, "clipping", "reported",
                                      f"source '{name}': {clipped} samples at full scale", "kept"))

    mixture = pcm.pop("mixture", None)
    if track.split == "train" and opt.stft is not None:
        # open-unmix's statistics see the dataset's unaugmented input: the real mixture where it has one
        mix = audio.to_float32(mixture) if mixture is not None else sum(audio.to_float32(a) for a in pcm.values())
        out.moments = stats.track_moments(mix, *opt.stft)
    meta = {"id": track.id, "name": track.name, "split": track.split, "frames": shortest,
            "sources": list(pcm), "files": {n: str(p) for n, p in track.files.items()}}
    if track.mixture is not None:
        meta["mixture_file"] = str(track.mixture)
    out.record = TrackRecord(track.id, meta, pcm, mixture if opt.store_mixture else None)
    return out
