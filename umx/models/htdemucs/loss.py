"""Demucs' training loss, computed outside the network in float32: per source, the mean absolute
(or squared: `--waveform-loss mse`) error of the waveforms over channels, time and the batch, then
the weighted mean over sources (Demucs' `weights`, `--source-weights`; none: all 1)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class WaveformLoss:
    """One unit: the row is (its loss, the objective), the same value."""

    joint = True

    def __init__(self, kind: str = "l1", weights: Sequence[float] | None = None):
        self.kind, self.weights = kind, None if weights is None else tuple(float(w) for w in weights)

    def per_source(self, estimates: Tensor, references: Tensor) -> Tensor:
        """`[sources]`: each source's error, estimates and references `[batch, sources, channels, time]`."""
        diff = estimates.float() - references.float()
        error = diff.abs() if self.kind == "l1" else diff.square()
        return error.mean(dim=(0, 2, 3))

    def __call__(self, estimates: Tensor, references: Tensor, mixture: Tensor) -> Tensor:
        per = self.per_source(estimates, references)
        if self.weights is None:
            loss = per.mean()
        else:
            w = torch.tensor(self.weights, device=per.device, dtype=per.dtype)
            loss = (per * w).sum() / w.sum()
        return torch.stack([loss, loss])
