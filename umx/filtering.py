"""Multichannel Wiener filtering with EM refinement, on complex tensors.

The math of `openunmix.filtering` 1.3.0 (Nugraha, Liutkus & Vincent's
simplified EM, as used by Open-Unmix), written with torch's complex dtype
instead of a trailing real/imaginary axis, and vectorised over channels and
sources. Results match open-unmix's to float rounding.

Shapes (per track; the Separator loops over the batch):
    mix_stft               [frames, bins, channels] complex
    targets_spectrograms   [frames, bins, channels or 1, sources] magnitudes
    estimates              [frames, bins, channels, sources(+1 residual)] complex
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


def invert(m: Tensor) -> Tensor:
    """Inverse of `[..., C, C]` complex matrices.

    1×1 and 2×2 use the closed forms open-unmix uses (conj(det) / |det|²), so
    near-singular matrices give the same numbers; larger ones use linalg.inv.
    """
    c = m.shape[-1]
    if c == 1:
        return m.conj() / (m.real**2 + m.imag**2)
    if c == 2:
        det = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
        inv_det = det.conj() / (det.real**2 + det.imag**2)
        row0 = torch.stack([m[..., 1, 1], -m[..., 0, 1]], -1)
        row1 = torch.stack([-m[..., 1, 0], m[..., 0, 0]], -1)
        return torch.stack([row0, row1], -2) * inv_det[..., None, None]
    return torch.linalg.inv(m)


def expectation_maximization(
    y: Tensor, x: Tensor, iterations: int = 2, eps: float = 1e-10, batch_size: int = 200
) -> tuple[Tensor, Tensor, Tensor]:
    """Refine source estimates `y` [frames, bins, channels, sources] of mixture `x` [frames, bins, channels].

    Each iteration: PSDs v_j = channel-mean |y_j|², spatial covariances
    R_j = Σ_t y_j y_jᴴ / (eps + Σ_t v_j) per bin, then y_j = v_j R_j Cxx⁻¹ x with
    Cxx = √eps·I + Σ_j v_j R_j. Frames are processed `batch_size` at a time so
    memory stays bounded. Returns (y, v [frames, bins, sources], R [sources, bins, C, C]).
    """
    nb_frames, nb_bins, nb_channels = x.shape
    nb_sources = y.shape[-1]
    if nb_channels == 2 and iterations > 0:
        return _em_stereo(x, lambda t: y[t], nb_sources, iterations, eps, math.sqrt(eps))
    real = x.real.dtype
    batch_size = batch_size or nb_frames
    regularization = math.sqrt(eps) * torch.eye(nb_channels, dtype=x.dtype, device=x.device)
    R = torch.zeros((nb_sources, nb_bins, nb_channels, nb_channels), dtype=x.dtype, device=x.device)
    v = torch.zeros((nb_frames, nb_bins, nb_sources), dtype=real, device=x.device)
    y = y.clone()
    for _ in range(iterations):
        v = (y.real**2 + y.imag**2).mean(dim=-2)
        for j in range(nb_sources):
            cov = torch.zeros((nb_bins, nb_channels, nb_channels), dtype=x.dtype, device=x.device)
            weight = torch.full((nb_bins,), eps, dtype=real, device=x.device)
            for pos in range(0, nb_frames, batch_size):
                yj = y[pos:pos + batch_size, ..., j]
                cov = cov + torch.einsum("tfa,tfb->fab", yj, yj.conj())
                weight = weight + v[pos:pos + batch_size, ..., j].sum(0)
            R[j] = cov / weight[:, None, None]
        for pos in range(0, nb_frames, batch_size):
            t = slice(pos, pos + batch_size)
            vt = v[t].to(x.dtype)
            cxx = regularization + torch.einsum("tfj,jfab->tfab", vt, R)
            inv_cxx = invert(cxx)
            xt = x[t][..., None]
            for j in range(nb_sources):
                gain = vt[..., j, None, None] * (R[j][None] @ inv_cxx)
                y[t, ..., j] = (gain @ xt)[..., 0]
    return y, v, R


EM_CHUNK = 64  # frames per pass of the stereo EM: its temporaries stay in the CPU's cache


@dataclass
class _StereoSums:
    """Σ_t over frames of |y_0|², |y_1|² and y_0 conj(y_1) per bin and source: R_j's entries, unnormalised."""

    s00: Tensor
    s11: Tensor
    s01: Tensor

    @classmethod
    def zeros(cls, nb_bins: int, nb_sources: int, like: Tensor) -> "_StereoSums":
        real = torch.zeros((nb_bins, nb_sources), dtype=like.real.dtype, device=like.device)
        return cls(real, torch.zeros_like(real), torch.zeros(real.shape, dtype=like.dtype, device=like.device))

    def add(self, y0: Tensor, y1: Tensor, psd_out: Tensor) -> None:
        """Add one chunk of estimates (channels 0 and 1, [frames, bins, sources]); write its PSDs
        (the channel mean of |y|²) into `psd_out`."""
        p0, p1 = y0.real.square() + y0.imag.square(), y1.real.square() + y1.imag.square()
        self.s00 += p0.sum(0)
        self.s11 += p1.sum(0)
        self.s01 += (y0 * y1.conj()).sum(0)
        torch.add(p0, p1, out=psd_out).mul_(0.5)


def _em_stereo(x: Tensor, initial: Callable[[slice], Tensor], nb_sources: int, iterations: int, eps: Tensor | float,
               reg: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """`expectation_maximization` for two channels, written out: R_j and Cxx are Hermitian 2×2, so
    their entries are sums of elementwise products over frames, Cxx⁻¹ x is the closed form, and
    y_j = v_j R_j (Cxx⁻¹ x). The same quantities as the general path (to float rounding), without
    complex batched products of tiny matrices, which dominate the general path on a CPU.

    The estimates are never stored whole: `initial(frames)` gives the initial ones chunk by
    chunk, and an iteration needs only their PSDs and the sums for R, which the previous pass
    leaves behind. Passes go EM_CHUNK frames at a time, so the many elementwise temporaries are
    cache-sized rather than track-sized (the work is memory traffic otherwise). Only the last
    iteration's estimates are written. `eps` regularises R's normalisation, `reg` Cxx's diagonal.
    """
    nb_frames, nb_bins, _ = x.shape
    chunks = [slice(t, t + EM_CHUNK) for t in range(0, nb_frames, EM_CHUNK)]
    v = torch.empty((nb_frames, nb_bins, nb_sources), dtype=x.real.dtype, device=x.device)
    sums = _StereoSums.zeros(nb_bins, nb_sources, x)
    for t in chunks:
        y = initial(t)
        sums.add(y[:, :, 0], y[:, :, 1], v[t])
    out = torch.empty((nb_frames, nb_bins, 2, nb_sources), dtype=x.dtype, device=x.device)
    for it in range(iterations):
        last = it == iterations - 1
        weight = eps + v.sum(0)  # [bins, sources]
        r00, r11, r01 = sums.s00 / weight, sums.s11 / weight, sums.s01 / weight
        if not last:
            next_v, sums = torch.empty_like(v), _StereoSums.zeros(nb_bins, nb_sources, x)
        for t in chunks:
            vt = v[t]
            c00 = reg + (vt * r00).sum(-1)  # Cxx, [frames, bins]
            c11 = reg + (vt * r11).sum(-1)
            c01 = (vt * r01).sum(-1)
            det = c00 * c11 - (c01.real.square() + c01.imag.square())
            x0, x1 = x[t, :, 0], x[t, :, 1]
            w0 = ((c11 * x0 - c01 * x1) / det)[..., None]  # Cxx⁻¹ x
            w1 = ((c00 * x1 - c01.conj() * x0) / det)[..., None]
            y0 = vt * (r00 * w0 + r01 * w1)
            y1 = vt * (r01.conj() * w0 + r11 * w1)
            if last:
                out[t, :, 0], out[t, :, 1] = y0, y1
            else:
                sums.add(y0, y1, next_v[t])
        if not last:
            v = next_v
    R = torch.stack([torch.stack([r00, r01], -1), torch.stack([r01.conj(), r11], -1)], -2).permute(1, 0, 2, 3)
    return out, v, R


def wiener(
    targets_spectrograms: Tensor,
    mix_stft: Tensor,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
    mix_magnitude: Tensor | None = None,
) -> Tensor:
    """Separate `mix_stft` given magnitude estimates of the targets (`mix_magnitude`: |mix_stft|,
    where the caller has it already).

    Initial estimates: the target magnitudes with the mixture phase (or, with
    `softmask`, ratio masks of the mixture); `residual` adds the mixture minus
    their sum as one more source; then `iterations` EM steps, on a copy scaled
    so the largest mixture magnitude is at most `scale_factor` (numerical
    stability), scaled back afterwards.
    """
    # frames outermost in memory (the Separator passes permuted views): EM works through frame chunks
    mix_stft, targets_spectrograms = mix_stft.contiguous(), targets_spectrograms.contiguous()
    size = mix_stft.abs() if mix_magnitude is None else mix_magnitude.contiguous()

    def initial(t: slice = slice(None)) -> Tensor:
        """The initial estimates of frames `t`, [frames, bins, channels, sources(+1)]: made chunk
        by chunk for the stereo EM, which never needs them whole."""
        x, spec = mix_stft[t], targets_spectrograms[t]
        if softmask:
            weights = (spec / (eps + spec.sum(dim=-1, keepdim=True))).to(x.dtype)
            factor = x[..., None]
        else:  # the mixture's phase as a unit phasor: cos/sin(atan2(im, re)) without the three transcendentals
            magnitude = size[t]
            weights, factor = spec, torch.where(magnitude > 0, x / torch.where(magnitude > 0, magnitude, 1), 1)[..., None]
        if weights.shape[-2] != x.shape[-1]:  # mono spectrogram model on a multichannel mixture
            weights = weights.expand(*x.shape, weights.shape[-1])
        y = weights * factor
        return torch.cat([y, x[..., None] - y.sum(dim=-1, keepdim=True)], dim=-1) if residual else y

    if iterations == 0:
        return initial()
    max_abs = torch.clamp(size.max() / scale_factor, min=1.0)
    nb_sources = targets_spectrograms.shape[-1] + bool(residual)
    if mix_stft.shape[-1] == 2:
        # open-unmix runs the EM on y / max_abs and x / max_abs (float32 headroom), then scales back.
        # The EM is homogeneous but for its two regularisers, so the same iterations on y and x
        # themselves, with eps and √eps scaled by max_abs², give the same estimates (to rounding)
        # without three passes over the window.
        scale2 = max_abs * max_abs
        return _em_stereo(mix_stft, initial, nb_sources, iterations, eps * scale2, math.sqrt(eps) * scale2)[0]
    y = initial()
    y = y.div_(max_abs) if y.is_contiguous() else y / max_abs  # (y is this function's own tensor)
    y = expectation_maximization(y, mix_stft / max_abs, iterations, eps=eps)[0]
    return y.mul_(max_abs)
