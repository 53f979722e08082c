"""Input-scaler statistics, computed the way open-unmix's `get_statistics` does.

Per frequency bin: mean and std of the channel-averaged magnitude spectrogram
of every full training mixture, over all frames of all tracks (sklearn's
StandardScaler, population std), with std floored at 1e-4 · max(std).
Tracks are processed in parallel, so each yields a partial (count, mean, M2)
that `merge` combines exactly (Chan et al.'s parallel variance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UmxError
from ..models.openunmix.network import Spectrogram
from ..shards.manifest import LayoutDefaults


@dataclass
class Moments:
    count: int
    mean: np.ndarray
    m2: np.ndarray

    def merge(self, other: "Moments") -> "Moments":
        if self.count == 0:
            return other
        if other.count == 0:
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / n
        return Moments(n, mean, m2)

    def to_json(self) -> dict:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @staticmethod
    def from_json(d: dict) -> "Moments":
        return Moments(d["count"], np.asarray(d["mean"], np.float64), np.asarray(d["m2"], np.float64))

    def finalize(self) -> dict:
        """The scaler open-unmix initialises the model with: mean, floored std."""
        std = np.sqrt(self.m2 / self.count)
        std = np.maximum(std, 1e-4 * np.max(std))
        return {"mean": self.mean.tolist(), "std": std.tolist(), "frames": int(self.count)}


def empty(n_fft: int) -> Moments:
    bins = n_fft // 2 + 1
    return Moments(0, np.zeros(bins), np.zeros(bins))


BATCH = 32


def mixture_frames(mixture: np.ndarray, n_fft: int, n_hop: int) -> np.ndarray:
    """`[frames, bins]` channel-averaged magnitudes of a float `[channels, time]` mixture
    (or of a batch `[batch, channels, time]` of equal-length mixtures, frames of all)."""
    batch = torch.from_numpy(mixture if mixture.ndim == 3 else mixture[None])
    with torch.no_grad():
        spec = Spectrogram(n_fft, n_hop)(batch).mean(1)  # [batch, bins, frames]
    return spec.transpose(1, 2).reshape(-1, spec.shape[1]).double().numpy()


def track_moments(mixture: np.ndarray, n_fft: int, n_hop: int) -> Moments:
    """Moments of one full mixture, or a batch of them (no frames if shorter than one window)."""
    if mixture.shape[-1] < n_fft:
        return empty(n_fft)
    frames = mixture_frames(mixture, n_fft, n_hop)
    mean = frames.mean(0)
    return Moments(frames.shape[0], mean, ((frames - mean) ** 2).sum(0))


def from_shard_set(manifest, n_fft: int, n_hop: int, progress: bool = False, reader=None) -> dict:
    """Statistics for an STFT setting prep did not compute, from the training split:
    full training mixtures, or for unaligned source files the mixtures open-unmix draws.
    `reader` (a ShardReader) decides about caching and bad shards (skipped if it skips them)."""
    from tqdm import tqdm

    from ..shards.reader import ShardReader, SkippedShard

    reader = reader or ShardReader(manifest)

    def records(entry):
        try:
            return list(reader.guarded(entry))
        except SkippedShard:
            return []

    shards = manifest.shards("train")
    if manifest.sampling.records == "source_files":
        return source_file_statistics((r for e in shards for r in records(e)), manifest.sources, manifest.sample_rate,
                                      manifest.sampling.defaults.nb_train_samples, n_fft, n_hop)
    total = empty(n_fft)
    for entry in tqdm(shards, desc=f"statistics nfft={n_fft} hop={n_hop}", disable=not progress):
        for record in records(entry):
            total = total.merge(track_moments(record.mixture_or_sum(), n_fft, n_hop))
    if total.count == 0:
        raise UmxError(f"{manifest.location}: no training track is longer than nfft={n_fft} samples "
                       "(or every one was skipped as bad)")
    return total.finalize()


def source_file_statistics(records, sources, sample_rate: int, nb_samples: int | None, n_fft: int, n_hop: int,
                           seq_dur: float = 6.0, seed: int = 42) -> dict:
    """Statistics for unaligned source folders, as open-unmix's get_statistics draws them:
    `nb_train_samples` mixtures of one random file per source, each its centre
    `seq_dur` seconds (files not longer than that are left out, as in training)."""
    from ..audio import to_float32

    files: dict[str, list[np.ndarray]] = {s: [] for s in sources}
    for record in records:
        for name, pcm in record.sources.items():
            files[name].append(pcm)
    seq = int(seq_dur * sample_rate)
    usable = {s: [a for a in arrays if a.shape[-1] > seq] for s, arrays in files.items()}
    if not all(usable.values()):  # short clips: use the longest centre every source can give
        seq = min(max(a.shape[-1] for a in arrays) for arrays in files.values())
        usable = {s: [a for a in arrays if a.shape[-1] >= seq] for s, arrays in files.items()}
    rng = np.random.default_rng(seed)
    total = empty(n_fft)
    n = LayoutDefaults.nb_train_samples if nb_samples is None else nb_samples
    for begin in range(0, n, BATCH):  # equal-length mixtures: one STFT call per batch
        mixes = []
        for _ in range(min(BATCH, n - begin)):
            mix = 0
            for arrays in usable.values():
                a = arrays[int(rng.integers(len(arrays)))]
                start = max(a.shape[-1] // 2 - seq // 2, 0)
                mix = mix + to_float32(a[:, start:start + seq])
            mixes.append(mix)
        total = total.merge(track_moments(np.stack(mixes), n_fft, n_hop))
    return total.finalize()
