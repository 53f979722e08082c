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


def _em_stereo(y: Tensor, x: Tensor, iterations: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """`expectation_maximization` for two channels, written out: R_j and Cxx are Hermitian 2×2, so
    their entries are sums of elementwise products over frames, Cxx⁻¹ x is the closed form, and
    y_j = v_j R_j (Cxx⁻¹ x). The same quantities as the general path (to float rounding), without
    complex batched products of tiny matrices, which dominate the general path on a CPU. Memory: a few
    arrays the size of `y` (the Separator filters `wiener_win_len` frames at a time)."""
    nb_sources = y.shape[-1]
    y = y.clone()
    x0, x1 = x[..., 0], x[..., 1]
    reg = math.sqrt(eps)
    R = torch.zeros((nb_sources, x.shape[1], 2, 2), dtype=x.dtype, device=x.device)
    v = torch.zeros(y.shape[:2] + (nb_sources,), dtype=x.real.dtype, device=x.device)
    for _ in range(iterations):
        v = (y.real**2 + y.imag**2).mean(dim=-2)  # [frames, bins, sources]
        a, b = y[:, :, 0], y[:, :, 1]  # [frames, bins, sources]
        weight = eps + v.sum(0)  # [bins, sources]
        r00 = (a.real**2 + a.imag**2).sum(0) / weight
        r11 = (b.real**2 + b.imag**2).sum(0) / weight
        r01 = (a * b.conj()).sum(0) / weight  # [bins, sources] complex
        c00 = reg + (v * r00).sum(-1)  # [frames, bins]
        c11 = reg + (v * r11).sum(-1)
        c01 = (v * r01).sum(-1)
        det = c00 * c11 - (c01.real**2 + c01.imag**2)
        w0 = (c11 * x0 - c01 * x1) / det
        w1 = (c00 * x1 - c01.conj() * x0) / det
        w0, w1 = w0[..., None], w1[..., None]
        y = torch.stack([v * (r00 * w0 + r01 * w1), v * (r01.conj() * w0 + r11 * w1)], dim=2)
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
    if softmask:
        total = eps + targets_spectrograms.sum(dim=-1, keepdim=True)
        y = mix_stft[..., None] * (targets_spectrograms / total).to(mix_stft.dtype)
    else:
        angle = torch.atan2(mix_stft.imag, mix_stft.real)[..., None]
        y = torch.complex(targets_spectrograms * torch.cos(angle), targets_spectrograms * torch.sin(angle))
    if y.shape[-2] != mix_stft.shape[-1]:  # mono spectrogram model on a multichannel mixture
        y = y.expand(*mix_stft.shape, y.shape[-1])
    if residual:
        y = torch.cat([y, mix_stft[..., None] - y.sum(dim=-1, keepdim=True)], dim=-1)
    if iterations == 0:
        return y
    max_abs = torch.clamp(mix_stft.abs().max() / scale_factor, min=1.0)
    y = expectation_maximization(y / max_abs, mix_stft / max_abs, iterations, eps=eps)[0]
    return y * max_abs
