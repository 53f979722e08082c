"""Separate a split of a shard set (or of a dataset folder) and score it: umx-eval's library
(its command line is evaluate_cli.py).

`shard_split` reads a split of a shard set; `folder_split` one straight from a
dataset folder (any layout; `umx-eval --root`), as open-unmix's evaluate.py does:
the files are read and checked as umx-prep reads them, with nothing written but
the scores.

Metrics (`--metric`, several allowed; docs/metrics.md has the definitions):

- `bssv4` (default): BSSEval v4 (SDR, SIR, ISR, SAR in dB, 1 s frames, the references
  being every scored source of the track at once, as SiSEC/MUSDB18 evaluation does),
  computed by umx.bss: museval's numbers, many times faster;
- `museval`: the same, computed by the museval package itself (the reference);
- `usdr` (default): the MDX/SDX challenges' one global SDR per track and target.

Frame metrics are aggregated the way the field reports them ("cSDR"): median over the
frames of a track, then median over tracks; uSDR as the challenges do: mean over tracks
(the median is given too). The input mixture, used as the estimate of every target, is
scored the same way as a baseline.

What is scored: the model's targets and, when they do not make up the whole
mixture (other sources, or a stored mixture file), the residual (mixture minus
the targets' estimates), which the separator then adds automatically. Its
reference is the track's mixture minus the target references.

Separation runs in this process (on CUDA where available); scoring runs in
`--workers` processes, overlapped with separation.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import UmxError
from .models import defaults
from .names import safe_name, subfolder

METRICS = ("SDR", "SIR", "ISR", "SAR")
WINDOW_S = 1.0  # museval's default frame (window = hop = 1 s)
METRIC_CHOICES = ("bssv4", "usdr", "museval")  # --metric
DEFAULT_METRICS = ("bssv4", "usdr")
FRAME_METRICS = ("bssv4", "museval")  # BSSv4 frame by frame: ours, or museval's
METRIC_NAMES = {"bssv4": "BSSv4 (umx.bss, museval's definition)", "museval": "museval BSSv4",
                "usdr": "uSDR (global SDR per track, as MDX/SDX)"}


def check_metrics(metrics) -> tuple[str, ...]:
    """The metrics asked for, in order, each once; an error for an unknown one."""
    metrics = tuple(dict.fromkeys(metrics or DEFAULT_METRICS))
    unknown = [m for m in metrics if m not in METRIC_CHOICES]
    if unknown:
        raise UmxError(f"--metric must be among {', '.join(METRIC_CHOICES)}, not {', '.join(unknown)}")
    if "museval" in metrics:
        from .audio import FFMPEG_HINT, ffmpeg_missing

        missing = ffmpeg_missing()
        if missing:  # museval imports musdb → stempeg, which raises at import without them
            raise UmxError(f"--metric museval runs the museval package, which needs ffmpeg; {missing} not found "
                           f"on PATH: {FFMPEG_HINT}, or score with the default bssv4 (the same numbers)")
    return metrics


# --- scoring (runs in worker processes: numpy/museval only) --------------------

def score_track(references: dict[str, np.ndarray], estimates: dict[str, np.ndarray], rate: int,
                metric: str = "museval") -> dict:
    """BSSEval v4 of one track: name → `[frames, channels]` references and estimates (same names),
    computed by museval or (`metric="bssv4"`) by umx.bss.

    Returns name → metric → list of per-frame values (NaN for silent frames). A source silent
    over the whole track (museval refuses it) makes every frame silent: all NaN, as museval scores
    a frame in which any reference or estimate is silent.
    """
    names = list(references)
    refs = np.stack([references[n] for n in names]).astype(np.float64)
    ests = np.stack([estimates[n] for n in names]).astype(np.float64)
    win = int(WINDOW_S * rate)
    if silent_sources(dict(zip(names, refs))) or silent_sources(dict(zip(names, ests))):
        frames = refs.shape[1] // win if win < refs.shape[1] else 1  # museval's Framing (hop = win)
        return {name: {m: [math.nan] * frames for m in METRICS} for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if metric == "museval":
            import museval

            sdr, isr, sir, sar = museval.evaluate(refs, ests, win=win, hop=win, mode="v4")
        else:
            from . import bss

            sdr, isr, sir, sar = bss.evaluate(refs, ests, win=win, hop=win)
    out = {}
    for i, name in enumerate(names):
        values = {"SDR": sdr[i], "SIR": sir[i], "ISR": isr[i], "SAR": sar[i]}
        # museval's TrackStore stores an infinite value as NaN
        out[name] = {m: [float(x) if np.isfinite(x) else math.nan for x in values[m]] for m in METRICS}
    return out


def silent_sources(signals: dict[str, np.ndarray]) -> list[str]:
    """The names whose `[frames, channels]` signal is silent over the whole track by museval's rule
    (the sum over channels is zero at every sample): BSSv4 is undefined there, museval raises."""
    return [n for n, x in signals.items() if not np.any(np.sum(x, axis=-1) != 0)]


def silence_note(track_id: str, references: dict[str, np.ndarray], estimates: dict[str, np.ndarray]) -> str | None:
    """One line naming the track and its sources silent over the whole track, or None."""
    what = [f"reference '{n}'" for n in silent_sources(references)]
    what += [f"estimate '{n}'" for n in silent_sources(estimates)]
    if not what:
        return None
    return (f"track '{track_id}': {', '.join(what)} silent over the whole track: its BSSv4 frames are NaN for "
            f"every source (museval's rule for a silent frame), left out of the medians")


def usdr_track(references: dict[str, np.ndarray], estimates: dict[str, np.ndarray]) -> dict[str, float]:
    """name → the track's uSDR (umx.bss.usdr) of that source."""
    from . import bss

    names = list(references)
    values = bss.usdr(np.stack([references[n] for n in names]), np.stack([estimates[n] for n in names]))
    return {n: float(v) for n, v in zip(names, values)}


def score_job(track: dict) -> dict:
    """Score the separation and the mixture baseline of one track with `track["metrics"]`
    (a picklable dict in, dict out)."""
    refs, ests, mix, rate = track.pop("references"), track.pop("estimates"), track.pop("mixture"), track["rate"]
    baseline = {n: mix for n in refs}
    metrics = track.get("metrics", ("museval",))
    if any(m in FRAME_METRICS for m in metrics):
        track["note"] = silence_note(track["id"], refs, ests)
    track["frames"] = {m: score_track(refs, ests, rate, m) for m in metrics if m in FRAME_METRICS}
    track["mixture_frames"] = {m: score_track(refs, baseline, rate, m) for m in metrics if m in FRAME_METRICS}
    if "usdr" in metrics:
        track["usdr"], track["mixture_usdr"] = usdr_track(refs, ests), usdr_track(refs, baseline)
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
    return name.ljust(16) + "==> " + "  ".join(f"{m}:{scores[m]:>8.3f}" for m in METRICS if m in scores)


def _usdr_line(name: str, mean: float, median: float) -> str:
    return name.ljust(16) + f"==> uSDR:{mean:>8.3f}  (median {median:.3f})"


def format_table(results: dict) -> str:
    """museval's report form, per metric, for the model and the mixture baseline, plus the SDR gain."""
    lines = [f"{results['split']}: {results['n_tracks']} tracks, model {results['model']}"]
    by_metric = results.get("by_metric") or {"museval": results}
    for metric, r in by_metric.items():
        lines.append(f"{METRIC_NAMES[metric]}, {WINDOW_S:g} s frames: median over frames, median over tracks")
        lines += [_line(n, v) for n, v in r["scores"].items()]
        lines.append("  mixture baseline (the mixture as every estimate)")
        lines += [_line(n, v) for n, v in r["mixture_baseline"].items()]
    usdr = results.get("usdr")
    if usdr:
        lines.append(f"{METRIC_NAMES['usdr']}: mean over tracks")
        lines += [_usdr_line(n, v, usdr["median"][n]) for n, v in usdr["scores"].items()]
        lines.append("  mixture baseline")
        lines += [_usdr_line(n, v, usdr["mixture_median"][n]) for n, v in usdr["mixture_baseline"].items()]
    if results.get("scores"):
        gains = [f"{n} {results['scores'][n]['SDR'] - results['mixture_baseline'][n]['SDR']:+.2f} dB"
                 for n in results["scores"]]
        lines.append("SDR over the mixture: " + ", ".join(gains))
    if usdr:
        lines.append("uSDR over the mixture: " + ", ".join(
            f"{n} {v - usdr['mixture_baseline'][n]:+.2f} dB" for n, v in usdr["scores"].items()))
    return "\n".join(lines)


def mean_over_tracks(per_track: list[dict[str, float]]) -> dict[str, float]:
    """name → mean over tracks (the MDX/SDX challenges' aggregate of uSDR), NaN tracks ignored."""
    names = list(dict.fromkeys(n for t in per_track for n in t))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {n: float(np.nanmean([t[n] for t in per_track if n in t] or [math.nan])) for n in names}


def median_of_values(per_track: list[dict[str, float]]) -> dict[str, float]:
    """name → median over tracks of one value per track (uSDR, or a track's cSDR), NaN tracks ignored."""
    names = list(dict.fromkeys(n for t in per_track for n in t))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {n: float(np.nanmedian([t[n] for t in per_track if n in t] or [math.nan])) for n in names}


def _json_safe(obj):
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 5)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


MUSEVAL_FORMAT = "0.4.1"  # the museval version whose TrackStore JSON layout this writes


def _museval_value(x: float) -> float:
    """museval's TrackStore quantisation: 5 decimals (Decimal, half-even), an infinity as NaN."""
    return float(Decimal(x).quantize(Decimal(".00001"))) if math.isfinite(x) else math.nan


def museval_track_json(frames: dict) -> str:
    """Per-track frame scores as museval's `TrackStore.json` writes them (its schema, its quantisation),
    without importing museval: museval pulls musdb and stempeg, which refuse to import without ffmpeg."""
    targets = [{"name": target, "frames": [
        {"time": i * WINDOW_S, "duration": WINDOW_S,
         "metrics": {m: _museval_value(values[m][i]) for m in ("SDR", "SIR", "SAR", "ISR")}}
        for i in range(len(values["SDR"]))]} for target, values in frames.items()]
    return json.dumps({"targets": targets, "museval_version": MUSEVAL_FORMAT}, indent=2, allow_nan=True)


def _write_museval_json(path: Path, frames: dict) -> None:
    from .shards.storage import atomic_writer

    with atomic_writer(path, "w") as f:
        f.write(museval_track_json(frames))


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


def _output_folders(outdir: str | Path | None, split: str, frame_metrics: list[str]
                    ) -> tuple[Path | None, dict[str, Path]]:
    """`outdir` (made if missing) and its `<metric>/<split>/` folders: real folders, never a symbolic
    link followed out of it (the default outdir is a model directory someone handed over)."""
    if outdir is None:
        return None, {}
    out = subfolder(Path(outdir).expanduser(), [], str(outdir))
    return out, {m: subfolder(out, [m, split], str(out)) for m in frame_metrics}


@dataclass
class EvalSet:
    """What is scored: the split's tracks, wherever they come from."""

    location: str
    sources: list[str]
    sample_rate: int
    n_tracks: int
    records: Callable[[], Iterator]
    complement: tuple[str, str] | None = None  # (name, of): a target that is every source but `of` (accompaniment)


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

    complement = manifest.sampling.complement
    return EvalSet(manifest.location, list(manifest.sources), manifest.sample_rate,
                   sum(len(e.track_ids) for e in entries), records,
                   None if complement is None else (complement.name, complement.of))


def folder_split(layout: str, root: str | Path, split: str, options: dict | None = None,
                 sample_rate: int = defaults.SAMPLE_RATE) -> EvalSet:
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
    niter: int = defaults.NITER,
    residual: bool = False,
    residual_name: str = "residual",
    wiener_win_len: int | None = defaults.WIENER_WIN_LEN,
    device: str = "cpu",
    workers: int = 1,
    outdir: str | Path | None = None,
    progress: bool = True,
    metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS,
) -> dict:
    """Separate every track of `split` and score it with `metrics`; returns (and writes, with
    `outdir`) the results. `shards`: a shard set (folder or URL), or an EvalSet (`folder_split`
    for a dataset folder).

    `outdir` gets `eval_<split>.json` (settings, aggregated scores, per-track medians) and,
    per frame metric, `<metric>/<split>/<track id>.json` (frame-level files in museval's own
    format, which museval.EvalStore reads). `results["scores"]` is the first frame metric's.
    """
    metrics = check_metrics(metrics)
    split = safe_name(split, "split name", "--split")  # it names eval_<split>.json and <metric>/<split>/
    frame_metrics = [m for m in metrics if m in FRAME_METRICS]
    import torch
    from tqdm import tqdm

    from . import audio as audio_io
    from .models.protocol import SeparationOptions
    from .models.registry import directory_targets, load_separation
    from .shards.storage import write_json

    manifest = shards if isinstance(shards, EvalSet) else shard_split(shards, split)
    n_tracks = manifest.n_tracks
    if n_tracks == 0:
        raise UmxError(f"{manifest.location}: split '{split}' has no tracks")
    targets = list(targets) if targets else directory_targets(model_dir)
    complement_of = dict([manifest.complement]) if manifest.complement is not None else {}
    missing = [t for t in targets if t not in manifest.sources and t not in complement_of]
    if missing:
        extra = f", {', '.join(complement_of)}" if complement_of else ""
        raise UmxError(f"{manifest.location}: the shard set has no source {', '.join(repr(t) for t in missing)} "
                       f"to score against (it has {', '.join(manifest.sources)}{extra})")
    covered = {s for t in targets for s in ([x for x in manifest.sources if x != complement_of[t]]
                                            if t in complement_of else [t])}
    leftover = [s for s in manifest.sources if s not in covered]
    # the residual is scored where the targets do not make up the mixture
    score_rest = bool(leftover) or len(targets) < 2
    rest_name = (residual_name or "residual") if residual or score_rest else None
    how = SeparationOptions(residual=rest_name or False, niter=niter, wiener_win_len=wiener_win_len)
    separator = load_separation(model_dir, targets, how, device)
    if rest_name in manifest.sources:
        raise UmxError(f"residual name '{rest_name}' is a source of the shard set: "
                       f"pick another with --residual-name")
    out, folders = _output_folders(outdir, split, frame_metrics)  # before the work: a refusal costs nothing
    rate = manifest.sample_rate

    def prepare(rec) -> dict:
        safe_name(rec.id, "track id", manifest.location)  # it names a file: refused before the work, not after
        mixture = audio_io.force_stereo(rec.mixture_or_sum())
        lacking = [complement_of.get(t, t) for t in targets if complement_of.get(t, t) not in rec.sources]
        if lacking:
            raise UmxError(f"{manifest.location}: track '{rec.id}' has no {', '.join(lacking)} source")
        x = mixture if separator.sample_rate == rate else audio_io.resample(mixture, rate, separator.sample_rate)
        with torch.inference_mode():
            est = separator(torch.from_numpy(np.ascontiguousarray(x))[None].to(device))[0].float().cpu().numpy()
        est = dict(zip(separator.target_names, est, strict=True))
        refs = {t: audio_io.force_stereo(audio_io.to_float32(rec.sources[complement_of.get(t, t)])) for t in targets}
        for t in refs.keys() & complement_of.keys():  # every source but its `of`: the mixture less that one
            refs[t] = mixture - refs[t]
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
        return {"id": rec.id, "name": rec.meta.get("name", rec.id), "rate": rate, "metrics": metrics,
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
    for t in done:
        if t.get("note"):
            print(f"warning: {t['note']}", file=sys.stderr)

    per_track = []
    for t in done:
        entry = {"id": t["id"], "name": t["name"],
                 "by_metric": {m: {"scores": median_over_frames(t["frames"][m]),
                                   "mixture": median_over_frames(t["mixture_frames"][m])} for m in frame_metrics}}
        if frame_metrics:
            entry.update(entry["by_metric"][frame_metrics[0]])
        if "usdr" in metrics:
            entry.update(usdr=t["usdr"], mixture_usdr=t["mixture_usdr"])
        per_track.append(entry)
    by_metric = {m: {"scores": median_over_tracks([t["by_metric"][m]["scores"] for t in per_track]),
                     "mixture_baseline": median_over_tracks([t["by_metric"][m]["mixture"] for t in per_track])}
                 for m in frame_metrics}
    scored = list(done[0]["usdr"] if "usdr" in metrics else done[0]["frames"][frame_metrics[0]]) if done else []
    results = {
        "model": str(model_dir), "shards": manifest.location, "split": split, "n_tracks": len(done),
        "targets": targets, "residual": rest_name, "scored": scored,
        "niter": niter, "wiener_win_len": wiener_win_len, "device": str(device), "metrics": list(metrics),
        "metric": "; ".join(f"{METRIC_NAMES[m]}" for m in metrics) + f" ({WINDOW_S:g} s frames: median over "
                  "frames, then median over tracks; uSDR: mean over tracks)",
        "scores": by_metric[frame_metrics[0]]["scores"] if frame_metrics else {},
        "mixture_baseline": by_metric[frame_metrics[0]]["mixture_baseline"] if frame_metrics else {},
        "by_metric": by_metric,
        "tracks": per_track,
    }
    if "usdr" in metrics:
        results["usdr"] = {"scores": mean_over_tracks([t["usdr"] for t in per_track]),
                           "median": median_of_values([t["usdr"] for t in per_track]),
                           "mixture_baseline": mean_over_tracks([t["mixture_usdr"] for t in per_track]),
                           "mixture_median": median_of_values([t["mixture_usdr"] for t in per_track])}
    if outdir is not None:
        for metric, folder in folders.items():
            for t in done:  # a real folder, a checked name: the rename replaces whatever is there, a link too
                name = safe_name(t["id"], "track id", manifest.location)
                _write_museval_json(folder / f"{name}.json", t["frames"][metric])
        results["json"] = str(out / f"eval_{split}.json")
        write_json(results["json"], _json_safe(results))
    return results
