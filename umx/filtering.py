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
    if nb_channels == 2:
        return _em_stereo(y, x, iterations, eps)
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


EM_CHUNK = 32  # frames per pass of the stereo EM: its temporaries stay in the CPU's cache


def _em_stereo(y: Tensor, x: Tensor, iterations: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """`expectation_maximization` for two channels, written out: R_j and Cxx are Hermitian 2×2, so
    their entries are sums of elementwise products over frames, Cxx⁻¹ x is the closed form, and
    y_j = v_j R_j (Cxx⁻¹ x). The same quantities as the general path (to float rounding), without
    complex batched products of tiny matrices, which dominate the general path on a CPU. Two passes
    over EM_CHUNK frames at a time (the sums for R, then the filter), so the many elementwise
    temporaries are cache-sized rather than track-sized: the work is memory traffic otherwise."""
    nb_frames, nb_bins, _ = x.shape
    nb_sources = y.shape[-1]
    reg = math.sqrt(eps)
    real = x.real.dtype
    R = torch.zeros((nb_sources, nb_bins, 2, 2), dtype=x.dtype, device=x.device)
    v = torch.zeros(y.shape[:2] + (nb_sources,), dtype=real, device=x.device)
    for _ in range(iterations):
        s00 = torch.zeros((nb_bins, nb_sources), dtype=real, device=x.device)
        s11, s01 = torch.zeros_like(s00), torch.zeros((nb_bins, nb_sources), dtype=x.dtype, device=x.device)
        v = torch.empty(y.shape[:2] + (nb_sources,), dtype=real, device=x.device)
        for t in range(0, nb_frames, EM_CHUNK):
            a, b = y[t:t + EM_CHUNK, :, 0], y[t:t + EM_CHUNK, :, 1]  # [frames, bins, sources]
            pa, pb = a.real.square() + a.imag.square(), b.real.square() + b.imag.square()
            s00 += pa.sum(0)
            s11 += pb.sum(0)
            s01 += (a * b.conj()).sum(0)
            torch.add(pa, pb, out=v[t:t + EM_CHUNK]).mul_(0.5)  # PSD: the channel mean
        weight = eps + v.sum(0)  # [bins, sources]
        r00, r11, r01 = s00 / weight, s11 / weight, s01 / weight
        out = torch.empty_like(y)
        for t in range(0, nb_frames, EM_CHUNK):
            vt = v[t:t + EM_CHUNK]
            c00 = reg + (vt * r00).sum(-1)  # Cxx, [frames, bins]
            c11 = reg + (vt * r11).sum(-1)
            c01 = (vt * r01).sum(-1)
            det = c00 * c11 - (c01.real.square() + c01.imag.square())
            x0, x1 = x[t:t + EM_CHUNK, :, 0], x[t:t + EM_CHUNK, :, 1]
            w0 = ((c11 * x0 - c01 * x1) / det)[..., None]  # Cxx⁻¹ x
            w1 = ((c00 * x1 - c01.conj() * x0) / det)[..., None]
            out[t:t + EM_CHUNK, :, 0] = vt * (r00 * w0 + r01 * w1)
            out[t:t + EM_CHUNK, :, 1] = vt * (r01.conj() * w0 + r11 * w1)
        y = out
        R = torch.stack([torch.stack([r00, r01], -1), torch.stack([r01.conj(), r11], -1)], -2).permute(1, 0, 2, 3)
        R = R.to(x.dtype)
    return y, v, R


def wiener(
    targets_spectrograms: Tensor,
    mix_stft: Tensor,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
) -> Tensor:
    """Separate `mix_stft` given magnitude estimates of the targets.

    Initial estimates: the target magnitudes with the mixture phase (or, with
    `softmask`, ratio masks of the mixture); `residual` adds the mixture minus
    their sum as one more source; then `iterations` EM steps, on a copy scaled
    so the largest mixture magnitude is at most `scale_factor` (numerical
    stability), scaled back afterwards.
    """
    # frames outermost in memory (the Separator passes permuted views): EM works through frame chunks
    mix_stft, targets_spectrograms = mix_stft.contiguous(), targets_spectrograms.contiguous()
    size = mix_stft.abs()
    if softmask:
        total = eps + targets_spectrograms.sum(dim=-1, keepdim=True)
        y = mix_stft[..., None] * (targets_spectrograms / total).to(mix_stft.dtype)
    else:  # the mixture's phase as a unit phasor: cos/sin(atan2(im, re)) without the three transcendentals
        phasor = torch.where(size > 0, mix_stft / torch.where(size > 0, size, 1), 1)[..., None]
        y = targets_spectrograms * phasor
    if y.shape[-2] != mix_stft.shape[-1]:  # mono spectrogram model on a multichannel mixture
        y = y.expand(*mix_stft.shape, y.shape[-1])
    if residual:
        y = torch.cat([y, mix_stft[..., None] - y.sum(dim=-1, keepdim=True)], dim=-1)
    if iterations == 0:
        return y
    max_abs = torch.clamp(size.max() / scale_factor, min=1.0)
    y = y.div_(max_abs) if y.is_contiguous() else y / max_abs  # (y is this function's own tensor)
    y = expectation_maximization(y, mix_stft / max_abs, iterations, eps=eps)[0]
    return y.mul_(max_abs)
