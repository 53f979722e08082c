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

from ..model import Spectrogram


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

    def finalize(self) -> dict:
        """The scaler open-unmix initialises the model with: mean, floored std."""
        std = np.sqrt(self.m2 / self.count)
        std = np.maximum(std, 1e-4 * np.max(std))
        return {"mean": self.mean.tolist(), "std": std.tolist(), "frames": int(self.count)}


def empty(n_fft: int) -> Moments:
    bins = n_fft // 2 + 1
    return Moments(0, np.zeros(bins), np.zeros(bins))


def mixture_frames(mixture: np.ndarray, n_fft: int, n_hop: int) -> np.ndarray:
    """`[frames, bins]` channel-averaged magnitudes of a float `[channels, time]` mixture."""
    with torch.no_grad():
        spec = Spectrogram(n_fft, n_hop)(torch.from_numpy(mixture)[None])
    return spec[0].mean(0).T.double().numpy()


def track_moments(mixture: np.ndarray, n_fft: int, n_hop: int) -> Moments:
    """Moments of one full mixture (no frames if shorter than one FFT window)."""
    if mixture.shape[-1] < n_fft:
        return empty(n_fft)
    frames = mixture_frames(mixture, n_fft, n_hop)
    mean = frames.mean(0)
    return Moments(frames.shape[0], mean, ((frames - mean) ** 2).sum(0))


def from_shard_set(manifest, n_fft: int, n_hop: int, progress: bool = False) -> dict:
    """Statistics for an STFT setting prep did not compute: one pass over the
    full training mixtures in the shards (sum of all sources)."""
    from tqdm import tqdm

    from ..audio import to_float32
    from ..shards.webdataset import read_shard

    total = empty(n_fft)
    shards = manifest.shards("train")
    for entry in tqdm(shards, desc=f"statistics nfft={n_fft} hop={n_hop}", disable=not progress):
        for record in read_shard(manifest.shard_url(entry)):
            mixture = sum(to_float32(a) for a in record.sources.values())
            total = total.merge(track_moments(mixture, n_fft, n_hop))
    if total.count == 0:
        raise ValueError(f"{manifest.location}: no training track is longer than nfft={n_fft} samples")
    return total.finalize()
