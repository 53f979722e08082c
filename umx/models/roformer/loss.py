"""MSST's RoFormer loss, computed outside the network: L1 on the waveforms plus a weight times the
multi-resolution STFT loss (the mean modulus of the complex STFTs' difference, summed over windows).

    loss = mean|ŷ − y| + w · Σ_W mean|STFT_W(ŷ) − STFT_W(y)|,
    STFT_W: n_fft max(W, stft_n_fft), win W (Hann), hop `multi_stft_hop_size`, centred

This is the package's own BS-RoFormer loss and MSST's for both models. The package's Mel-Band
RoFormer hops `max(hop, W // 4)` instead, so umx computes the loss here for both (and in float32,
whatever autocast runs the network in)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class MultiResolutionLoss:
    """One unit: the row is (its loss, the objective), the same value."""

    joint = True

    def __init__(self, windows: Sequence[int], hop: int, n_fft: int, weight: float, normalized: bool = False):
        self.windows, self.hop, self.n_fft = tuple(windows), hop, n_fft
        self.weight, self.normalized = weight, normalized

    def __call__(self, estimates: Tensor, references: Tensor, mixture: Tensor) -> Tensor:
        """estimates and references `[batch, targets, channels, time]`."""
        est, ref = estimates.float(), references.float()
        loss = F.l1_loss(est, ref)
        if self.weight:
            flat_est, flat_ref = est.reshape(-1, est.shape[-1]), ref.reshape(-1, ref.shape[-1])
            spectral = est.new_zeros(())
            for window in self.windows:
                kw = dict(n_fft=max(window, self.n_fft), win_length=window, hop_length=self.hop,
                          normalized=self.normalized, window=torch.hann_window(window, device=est.device),
                          return_complex=True)
                spectral = spectral + (torch.stft(flat_est, **kw) - torch.stft(flat_ref, **kw)).abs().mean()
            loss = loss + self.weight * spectral
        return torch.stack([loss, loss])
