"""Separate a split of a shard set (or of a dataset folder) and score it: umx-eval's library
(its command line is evaluate_cli.py).

`shard_split` reads a split of a shard set; `folder_split` one straight from a
dataset folder (any layout; `umx-eval --root`), as open-unmix's evaluate.py does:
the files are read and checked as umx-prep reads them, with nothing written but
the scores.

Scores are museval's BSSEval v4 (SDR, SIR, ISR, SAR in dB, 1 s frames, the
references being every scored source of the track at once, as SiSEC/MUSDB18
evaluation does), aggregated the way the field reports them: median over the
frames of a track, then median over tracks. The input mixture, used as the
estimate of every target, is scored the same way as a baseline.

What is scored: the model's targets and, when they do not make up the whole
mixture (other sources, or a stored mixture file), the residual (mixture minus
the targets' estimates), which the separator then adds automatically. Its
reference is the track's mixture minus the target references.

Separation runs in this process (on CUDA where available); scoring runs in
`--workers` processes, overlapped with separation.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import UmxError
from .names import inside, safe_name

METRICS = ("SDR", "SIR", "ISR", "SAR")
WINDOW_S = 1.0  # museval's default frame (window = hop = 1 s)


# --- scoring (runs in worker processes: numpy/museval only) --------------------

def score_track(references: dict[str, np.ndarray], estimates: dict[str, np.ndarray], rate: int) -> dict:
    """BSSEval v4 of one track: name → `[frames, channels]` references and estimates (same names).

    Returns name → metric → list of per-frame values (NaN for silent frames).
    """
    import museval

    names = list(references)
    refs = np.stack([references[n] for n in names]).astype(np.float64)
    ests = np.stack([estimates[n] for n in names]).astype(np.float64)
    win = int(WINDOW_S * rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sdr, isr, sir, sar = museval.evaluate(refs, ests, win=win, hop=win, mode="v4")
    out = {}
    for i, name in enumerate(names):
        values = {"SDR": sdr[i], "SIR": sir[i], "ISR": isr[i], "SAR": sar[i]}
        # museval's TrackStore stores an infinite value as NaN
        out[name] = {m: [float(x) if np.isfinite(x) else math.nan for x in values[m]] for m in METRICS}
    return out


def score_job(track: dict) -> dict:
    """Score the separation and the mixture baseline of one track (a picklable dict in, dict out)."""
    refs, ests, mix, rate = track.pop("references"), track.pop("estimates"), track.pop("mixture"), track["rate"]
    track["frames"] = score_track(refs, ests, rate)
    track["mixture_frames"] = score_track(refs, {n: mix for n in refs}, rate)
    return track


def median_over_frames(frames: dict) -> dict:
    """name → metric → per-frame list → name → metric → median over frames (NaN frames ignored)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN → NaN
        return {name: {m: float(np.nanmedian(v[m])) if len(v[m]) else math.nan for m in METRICS}
                for name, v in frames.items()}


def median_over_tracks(per_track: list[dict]) -> dict:
    """Median over tracks of per-track scores, NaN tracks ignored (pandas' median, as museval's EvalStore)."""
    names = list(dict.fromkeys(n for t in per_track for n in t))
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in names:
            out[name] = {m: float(np.nanmedian([t[name][m] for t in per_track if name in t] or [math.nan]))
                         for m in METRICS}
    return out


# --- table ---------------------------------------------------------------------

def _line(name: str, scores: dict) -> str:
    return name.ljust(16) + "==> " + "  ".join(f"{m}:{scores[m]:>8.3f}" for m in METRICS)


def format_table(results: dict) -> str:
    """museval's report form, for the model and the mixture baseline, plus the SDR gain."""
    lines = [f"{results['split']}: {results['n_tracks']} tracks, museval BSSv4 "
             f"({WINDOW_S:g} s frames), model {results['model']}",
             "Aggregated scores (median over frames, median over tracks)"]
    lines += [_line(n, s) for n, s in results["scores"].items()]
    lines.append("Mixture baseline (the mixture as every estimate; median over frames, median over tracks)")
    lines += [_line(n, s) for n, s in results["mixture_baseline"].items()]
    gains = [f"{n} {results['scores'][n]['SDR'] - results['mixture_baseline'][n]['SDR']:+.2f} dB"
             for n in results["scores"]]
    lines.append("SDR over the mixture: " + ", ".join(gains))
    return "\n".join(lines)


def _json_safe(obj):
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 5)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _write_museval_json(path: Path, name: str, frames: dict) -> None:
    """Per-track frame scores in museval's own JSON format (museval.TrackStore)."""
    from museval import TrackStore

    from .shards.storage import atomic_writer

    store = TrackStore(track_name=name, win=WINDOW_S, hop=WINDOW_S)
    for target, values in frames.items():
        store.add_target(target_name=target, values=values)
    with atomic_writer(path, "w") as f:
        f.write(store.json)


# --- the run -------------------------------------------------------------------

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _shared_cpus(workers: int, device: str):
    """Share the CPUs between the scoring processes and torch in this process.

    Scoring processes get one BLAS thread each (unless the user set the
    variables); torch here gets the cores left over, at least one. Spinning
    OpenMP thread teams on oversubscribed cores slow torch down tenfold.
    """
    import torch

    saved_env = {k: os.environ.get(k) for k in THREAD_VARS}
    saved_threads = torch.get_num_threads()
    for k in THREAD_VARS:
        os.environ.setdefault(k, "1")
    if str(device).startswith("cpu"):
        torch.set_num_threads(max(1, min(saved_threads, (os.cpu_count() or 1) - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _score_in_pool(prepare, records, workers: int, done: list, bar) -> None:
    """Separate here, score in `workers` processes, at most 2 × workers tracks in flight."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn: the children never inherit torch's thread pools (fork + OpenMP can hang)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        pending = set()
        for rec in records:
            pending.add(pool.submit(score_job, prepare(rec)))
            while len(pending) >= 2 * workers:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    done.append(f.result())
                    bar.update()
        for f in pending:
            done.append(f.result())
            bar.update()


@dataclass
class EvalSet:
    """What is scored: the split's tracks, wherever they come from."""

    location: str
    sources: list[str]
    sample_rate: int
    n_tracks: int
    records: Callable[[], Iterator]


def shard_split(shards: str, split: str) -> EvalSet:
    """A split of a shard set (WebDataset or zarr, local or remote, verified as training reads it)."""
    from .shards import manifest as mf
    from .shards.reader import ShardReader

    manifest = mf.load(shards)
    entries = manifest.shards(split)  # clear error when the split is missing

    def records():
        reader = ShardReader(manifest)
        for entry in entries:
            yield from reader.records(entry)

    return EvalSet(manifest.location, list(manifest.sources), manifest.sample_rate,
                   sum(len(e.track_ids) for e in entries), records)


def folder_split(layout: str, root: str | Path, split: str, options: dict | None = None,
                 sample_rate: int = 44100) -> EvalSet:
    """A split of a dataset folder, read and checked track by track as umx-prep reads it."""
    from .layouts import scan
    from .prep.checks import Options, load_track

    found = scan(layout, Path(root).expanduser(), **(options or {}))
    tracks = [t for t in found.tracks if t.split == split]
    if not tracks:
        have = sorted({t.split for t in found.tracks})
        raise UmxError(f"{root}: no '{split}' tracks in this {layout} folder (it has: {', '.join(have) or 'none'})")
    opt = Options(sample_rate=sample_rate, stft=None, store_mixture=True, target=found.target)

    def records():
        for track in tracks:
            loaded = load_track(track, opt)
            if loaded.record is None:
                why = "; ".join(n.get("problem", "") for n in loaded.notes if n.get("problem"))
                print(f"warning: track '{track.name}' skipped ({why})", file=sys.stderr)
                continue
            yield loaded.record

    return EvalSet(str(root), list(found.sources), sample_rate, len(tracks), records)


def evaluate(
    model_dir: str | Path,
    shards: str | EvalSet,
    split: str = "test",
    targets: list[str] | None = None,
    niter: int = 1,
    residual: bool = False,
    residual_name: str = "residual",
    wiener_win_len: int | None = 300,
    device: str = "cpu",
    workers: int = 1,
    outdir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Separate every track of `split` and score it; returns (and writes, with `outdir`) the results.
    `shards`: a shard set (folder or URL), or an EvalSet (`folder_split` for a dataset folder).

    `outdir` gets `eval_<split>.json` (settings, aggregated scores, per-track
    medians) and `museval/<split>/<track id>.json` (museval's frame-level files).
    """
    import torch
    from tqdm import tqdm

    from . import audio as audio_io
    from .separate import Separator, available_targets
    from .shards.storage import write_json

    manifest = shards if isinstance(shards, EvalSet) else shard_split(shards, split)
    n_tracks = manifest.n_tracks
    if n_tracks == 0:
        raise UmxError(f"{manifest.location}: split '{split}' has no tracks")
    targets = list(targets) if targets else available_targets(model_dir)
    missing = [t for t in targets if t not in manifest.sources]
    if missing:
        raise UmxError(f"{manifest.location}: the shard set has no source {', '.join(repr(t) for t in missing)} "
                       f"to score against (it has {', '.join(manifest.sources)})")
    leftover = [s for s in manifest.sources if s not in targets]
    # the residual is scored where the targets do not make up the mixture
    score_rest = bool(leftover) or len(targets) < 2
    separator = Separator.from_dir(model_dir, targets, niter=niter,
                                   residual=residual_name if residual or score_rest else False,
                                   wiener_win_len=wiener_win_len, device=device)
    rest_name = separator.residual_name if separator.residual else None
    if rest_name in manifest.sources:
        raise UmxError(f"residual name '{rest_name}' is a source of the shard set: "
                       f"pick another with --residual-name")
    rate = manifest.sample_rate

    def prepare(rec) -> dict:
        mixture = audio_io.force_stereo(rec.mixture_or_sum())
        lacking = [t for t in targets if t not in rec.sources]
        if lacking:
            raise UmxError(f"{manifest.location}: track '{rec.id}' has no {', '.join(lacking)} source")
        x = mixture if separator.sample_rate == rate else audio_io.resample(mixture, rate, separator.sample_rate)
        with torch.inference_mode():
            est = separator(torch.from_numpy(np.ascontiguousarray(x))[None].to(device))[0].float().cpu().numpy()
        est = dict(zip(separator.target_names, est, strict=True))
        refs = {t: audio_io.force_stereo(audio_io.to_float32(rec.sources[t])) for t in targets}
        if score_rest:
            refs[rest_name] = mixture - sum(refs.values())
        n = mixture.shape[-1]
        ests = {}
        for name in refs:
            e = est[name]
            if separator.sample_rate != rate:
                e = audio_io.resample(e, separator.sample_rate, rate)
            e = e[:, :n] if e.shape[-1] >= n else np.pad(e, ((0, 0), (0, n - e.shape[-1])))
            ests[name] = np.ascontiguousarray(e.T)
        return {"id": rec.id, "name": rec.meta.get("name", rec.id), "rate": rate,
                "references": {k: np.ascontiguousarray(v.T) for k, v in refs.items()},
                "estimates": ests, "mixture": np.ascontiguousarray(mixture.T)}

    done: list[dict] = []
    bar = tqdm(total=n_tracks, desc=f"eval {split}", disable=not progress, file=sys.stderr)
    if workers <= 1:
        for rec in manifest.records():
            done.append(score_job(prepare(rec)))
            bar.update()
    else:
        with _shared_cpus(workers, device):
            _score_in_pool(prepare, manifest.records(), workers, done, bar)
    bar.close()
    done.sort(key=lambda t: t["id"])

    per_track = [{"id": t["id"], "name": t["name"], "scores": median_over_frames(t["frames"]),
                  "mixture": median_over_frames(t["mixture_frames"])} for t in done]
    results = {
        "model": str(model_dir), "shards": manifest.location, "split": split, "n_tracks": len(done),
        "targets": targets, "residual": rest_name, "scored": list(done[0]["frames"]) if done else [],
        "niter": niter, "wiener_win_len": wiener_win_len, "device": str(device),
        "metric": f"museval BSSv4, {WINDOW_S:g} s frames; median over frames, then median over tracks",
        "scores": median_over_tracks([t["scores"] for t in per_track]),
        "mixture_baseline": median_over_tracks([t["mixture"] for t in per_track]),
        "tracks": per_track,
    }
    if outdir is not None:
        out = Path(outdir).expanduser()
        folder = out / "museval" / safe_name(split, "split name", "--split")
        folder.mkdir(parents=True, exist_ok=True)
        for t in done:  # track ids come from the shard set: checked before they name a file
            name = safe_name(t["id"], "track id", manifest.location)
            _write_museval_json(inside(folder, f"{name}.json", "track id", manifest.location), t["name"],
                                t["frames"])
        results["json"] = str(out / f"eval_{split}.json")
        write_json(results["json"], _json_safe(results))
    return results
