"""Open-Unmix's training objectives over every target of a run (`--loss`), chosen in one place:
`make_objective`.

An objective takes the networks' magnitude estimates (one per target), the targets' waveforms
and the mixture, and returns one row of loss terms: each target's spectrogram MSE (what
open-unmix calls the loss, and what `<target>.json` records), then the objective that is
minimised. The row stays on the device, so the step never waits for the host.

- `Independent`: the sum of the targets' MSEs. Each network's gradient is that of its own MSE,
  so the run is N single-target runs that see the same batches.
- `MultiDomain`: X-UMX's multi-domain loss (Sawata et al., ICASSP 2021): the mean spectrogram
  MSE plus `mix_coef` × a time-domain weighted-SDR loss (Choi et al., 2019) on the estimates
  brought back to waveforms with the mixture's phase. With `combination`, both terms also
  score every sum of 2 … N-1 targets against the sum of their references.

The time-domain estimates come from the same non-centred STFT frames the networks see, by
an inverse STFT (overlap-add, divided by the summed squared window). Only samples that every
frame's window covers fully are compared: the first and last `nfft - nhop` samples of a crop
have no well-conditioned inverse without centring, and X-UMX's centred frames would change
what the networks see.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Independent:
    """The sum of each target's spectrogram MSE: open-unmix's loss, target by target."""

    joint = False

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder  # the networks' front end: the loss is computed in its space

    def __call__(self, estimates: Sequence[Tensor], references: Tensor, mixture: Tensor) -> Tensor:
        """estimates: per target `[batch, channels', bins, frames]` magnitudes; references:
        `[batch, targets, channels, time]`; mixture `[batch, channels, time]` → `[targets + 1]`
        (each target's spectrogram MSE, then the objective)."""
        terms = [F.mse_loss(est, self.encoder(references[:, t])) for t, est in enumerate(estimates)]
        mse = torch.stack(terms)
        return torch.cat([mse, mse.sum()[None]])


def weighted_sdr(estimate: Tensor, reference: Tensor, mixture: Tensor, eps: float = 1e-10) -> Tensor:
    """Choi et al.'s weighted SDR loss per row of `[rows, time]`: the negative cosine similarity of
    the estimate with its reference and of the estimated rest with the real rest (mixture minus
    each), weighted by the reference's share of the energy. -1 is perfect."""
    noise, noise_est = mixture - reference, mixture - estimate

    def cosine(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum(-1) / (torch.sqrt(eps + (a * a).sum(-1)) * torch.sqrt(eps + (b * b).sum(-1)) + eps)

    energy, rest = (reference * reference).sum(-1), (noise * noise).sum(-1)
    alpha = energy / (energy + rest + eps)
    return -alpha * cosine(estimate, reference) - (1 - alpha) * cosine(noise_est, noise)


class MultiDomain:
    """X-UMX's multi-domain loss: mean spectrogram MSE + `mix_coef` × (1 + mean weighted SDR)."""

    joint = True

    def __init__(self, encoder: nn.Module, mix_coef: float = 10.0, combination: bool = False):
        self.encoder, self.mix_coef, self.combination = encoder, mix_coef, combination
        self.nfft, self.nhop = encoder.stft.n_fft, encoder.stft.n_hop

    def groups(self, n: int) -> list[tuple[int, ...]]:
        """The targets scored together: each alone, and with `combination` every 2 … n-1 of them."""
        sizes = range(1, n) if self.combination else range(1, 2)
        return [g for k in sizes for g in itertools.combinations(range(n), k)] if n > 1 else [(0,)]

    def waveforms(self, estimates: Sequence[Tensor], mixture: Tensor, encoder) -> Tensor:
        """The estimates with the mixture's phase, back in time: `[batch, targets, channels, time']`
        over the fully covered samples (see the module docstring)."""
        spec = encoder.stft(mixture)  # [B, C, F, N] complex, the frames the networks saw
        phase = spec / spec.abs().clamp_min(1e-12)
        mags = torch.stack([e.float() for e in estimates], dim=1)  # [B, T, C' (1: mono model), F, N]
        complex_est = mags * phase[:, None]
        window = encoder.stft.window.to(mags.dtype)
        frames = torch.fft.irfft(complex_est, n=self.nfft, dim=-2) * window[:, None]
        lead, n = frames.shape[:-2], frames.shape[-1]
        length = self.nfft + self.nhop * (n - 1)
        ola = F.fold(frames.reshape(-1, self.nfft, n), (1, length), (1, self.nfft), stride=(1, self.nhop))
        envelope = F.fold((window**2)[None, :, None].expand(1, self.nfft, n), (1, length), (1, self.nfft),
                          stride=(1, self.nhop)).reshape(-1)
        start, stop = self.covered(n)
        return (ola.reshape(*lead, length)[..., start:stop] / envelope[start:stop])

    def covered(self, n_frames: int) -> tuple[int, int]:
        """Samples every frame position's full overlap covers: [nfft - nhop, nhop * n_frames)."""
        return self.nfft - self.nhop, self.nhop * n_frames

    def __call__(self, estimates: Sequence[Tensor], references: Tensor, mixture: Tensor) -> Tensor:
        n, encoder = len(estimates), self.encoder
        targets = [encoder(references[:, t]) for t in range(n)]
        mse = torch.stack([F.mse_loss(e.float(), y) for e, y in zip(estimates, targets)])
        groups = self.groups(n)
        freq = torch.stack([mse[g[0]] if len(g) == 1 else
                            F.mse_loss(sum(estimates[i].float() for i in g), sum(targets[i] for i in g))
                            for g in groups]).mean()
        waves = self.waveforms(estimates, mixture, encoder)
        start, stop = self.covered(estimates[0].shape[-1])
        refs, mix = references[..., start:stop], mixture[..., start:stop]
        est_g = torch.stack([waves[:, list(g)].sum(1) for g in groups], dim=1)  # [B, G, C, L]
        ref_g = torch.stack([refs[:, list(g)].sum(1) for g in groups], dim=1)
        time = 1 + weighted_sdr(est_g.flatten(0, 2), ref_g.flatten(0, 2),
                                mix[:, None].expand_as(ref_g).flatten(0, 2)).mean()
        return torch.cat([mse, (freq + self.mix_coef * time)[None]])


LOSSES = ("independent", "multidomain")  # --loss


def make_objective(loss: str, encoder: nn.Module, mix_coef: float = 10.0,
                   combination: bool = False) -> "Independent | MultiDomain":
    """The objective `--loss` names (LOSSES)."""
    if loss == "independent":
        return Independent(encoder)
    if loss == "multidomain":
        return MultiDomain(encoder, mix_coef, combination)
    raise ValueError(f"unknown loss '{loss}'")
