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
        planes = y.permute(3, 2, 0, 1)
        out, v, R = _em_stereo(_planes(x.permute(2, 0, 1)), lambda t: planes[:, :, t], nb_sources, iterations, eps,
                               math.sqrt(eps))
        return out.permute(2, 3, 1, 0), v.permute(1, 2, 0), R
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


def _planes(t: Tensor) -> Tensor:
    """`t` itself where its last two axes are one contiguous block (elementwise work on it is
    then as fast as on a contiguous tensor), else a contiguous copy."""
    return t if t.stride(-1) == 1 and t.stride(-2) == t.shape[-1] else t.contiguous()


@dataclass
class _StereoSums:
    """Σ_t over frames of |y_0|², |y_1|² and y_0 conj(y_1) per source and bin: R_j's entries, unnormalised."""

    s00: Tensor
    s11: Tensor
    s01: Tensor

    @classmethod
    def zeros(cls, nb_sources: int, nb_bins: int, like: Tensor) -> "_StereoSums":
        real = torch.zeros((nb_sources, nb_bins), dtype=like.real.dtype, device=like.device)
        return cls(real, torch.zeros_like(real), torch.zeros(real.shape, dtype=like.dtype, device=like.device))

    def add(self, y0: Tensor, y1: Tensor, psd_out: Tensor) -> None:
        """Add one chunk of estimates (channels 0 and 1, [sources, frames, bins]); write its PSDs
        (the channel mean of |y|²) into `psd_out`."""
        p0 = torch.addcmul(y0.real.square(), y0.imag, y0.imag)  # |y|², a fused multiply-add
        p1 = torch.addcmul(y1.real.square(), y1.imag, y1.imag)
        self.s00 += p0.sum(1)
        self.s11 += p1.sum(1)
        self.s01 += (y0 * y1.conj()).sum(1)
        torch.add(p0, p1, out=psd_out).mul_(0.5)


def _em_stereo(x: Tensor, initial: Callable[[slice], Tensor], nb_sources: int, iterations: int, eps: Tensor | float,
               reg: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """`expectation_maximization` for two channels, written out: R_j and Cxx are Hermitian 2×2, so
    their entries are sums of elementwise products over frames, Cxx⁻¹ x is the closed form, and
    y_j = v_j R_j (Cxx⁻¹ x). The same quantities as the general path (to float rounding), without
    complex batched products of tiny matrices, which dominate the general path on a CPU.

    Everything is in planes of [frames, bins] (x: [2, frames, bins]; `initial(frames)`:
    [sources, 2, frames, bins]; returns y [sources, 2, frames, bins], v [sources, frames, bins]
    and R [sources, bins, 2, 2]): sums over the sources are then additions of whole planes, many
    times faster than reductions over a short last axis, and the output is what the inverse FFT
    reads. The estimates are never stored whole: `initial` gives the initial ones chunk by chunk,
    and an iteration needs only their PSDs and the sums for R, which the previous pass leaves
    behind. Passes go EM_CHUNK frames at a time, so the many elementwise temporaries are
    cache-sized rather than track-sized (the work is memory traffic otherwise). Only the last
    iteration's estimates are written. `eps` regularises R's normalisation, `reg` Cxx's diagonal.
    """
    _, nb_frames, nb_bins = x.shape
    chunks = [slice(t, t + EM_CHUNK) for t in range(0, nb_frames, EM_CHUNK)]
    v = torch.empty((nb_sources, nb_frames, nb_bins), dtype=x.real.dtype, device=x.device)
    sums = _StereoSums.zeros(nb_sources, nb_bins, x)
    for t in chunks:
        y = initial(t)
        sums.add(y[:, 0], y[:, 1], v[:, t])
    out = torch.empty((nb_sources, 2, nb_frames, nb_bins), dtype=x.dtype, device=x.device)
    for it in range(iterations):
        last = it == iterations - 1
        weight = eps + v.sum(1)  # [sources, bins]
        r00, r11, r01 = sums.s00 / weight, sums.s11 / weight, sums.s01 / weight
        a00, a11, a01, a10 = r00[:, None], r11[:, None], r01[:, None], r01.conj().resolve_conj()[:, None]
        if not last:
            next_v, sums = torch.empty_like(v), _StereoSums.zeros(nb_sources, nb_bins, x)
        for t in chunks:
            # (fused multiply-adds and in-place ops where they save a pass over the chunk)
            vt = v[:, t]  # [sources, frames, bins]
            c00 = (vt * a00).sum(0).add_(reg)  # Cxx, [frames, bins]
            c11 = (vt * a11).sum(0).add_(reg)
            c01 = (vt * a01).sum(0)
            det = torch.addcmul(c01.real.square(), c01.imag, c01.imag).neg_().addcmul_(c00, c11)
            x0, x1 = x[0, t], x[1, t]
            w0 = torch.addcmul(c11 * x0, c01, x1, value=-1).div_(det)  # Cxx⁻¹ x
            w1 = torch.addcmul(c00 * x1, c01.conj(), x0, value=-1).div_(det)
            # the last iteration writes straight into the output planes
            y0, y1 = (out[:, 0, t], out[:, 1, t]) if last else (None, None)
            y0 = torch.mul(vt, (a00 * w0).addcmul_(a01, w1), out=y0)
            y1 = torch.mul(vt, (a10 * w0).addcmul_(a11, w1), out=y1)
            if not last:
                sums.add(y0, y1, next_v[:, t])
        if not last:
            v = next_v
    R = torch.stack([torch.stack([r00, r01], -1), torch.stack([r01.conj(), r11], -1)], -2)
    return out, v, R


def _wiener_stereo(targets_spectrograms: Tensor, mix_stft: Tensor, iterations: int, softmask: bool, residual: bool,
                   scale_factor: float, eps: float, mix_magnitude: Tensor | None) -> Tensor:
    """`wiener` for two channels and at least one EM iteration, on [frames, bins] planes."""
    x = _planes(mix_stft.permute(2, 0, 1))  # [2, frames, bins]
    size = x.abs() if mix_magnitude is None else _planes(mix_magnitude.permute(2, 0, 1))
    spec = _planes(targets_spectrograms.permute(3, 2, 0, 1))  # [targets, 1 or 2, frames, bins]
    nb_targets = spec.shape[0]

    def initial(t: slice) -> Tensor:
        """The initial estimates of frames `t`, [sources, 2, frames, bins], made chunk by chunk."""
        xt, st = x[:, t], spec[:, :, t]
        y = torch.empty((nb_targets + residual, 2) + xt.shape[1:], dtype=x.dtype, device=x.device)
        if softmask:
            torch.mul((st / (eps + st.sum(0))).to(x.dtype), xt, out=y[:nb_targets])
        else:  # the mixture's phase as a unit phasor: cos/sin(atan2(im, re)) without the three transcendentals
            magnitude = size[:, t]
            live = magnitude > 0
            torch.mul(st, torch.where(live, xt / torch.where(live, magnitude, 1), 1), out=y[:nb_targets])
        if residual:
            torch.sub(xt, y[:nb_targets].sum(0), out=y[nb_targets])
        return y

    # open-unmix runs the EM on y / max_abs and x / max_abs (float32 headroom), then scales back.
    # The EM is homogeneous but for its two regularisers, so the same iterations on y and x
    # themselves, with eps and √eps scaled by max_abs², give the same estimates (to rounding)
    # without passes over the window to scale.
    max_abs = torch.clamp(size.max() / scale_factor, min=1.0)
    scale2 = max_abs * max_abs
    y = _em_stereo(x, initial, nb_targets + residual, iterations, eps * scale2, math.sqrt(eps) * scale2)[0]
    return y.permute(2, 3, 1, 0)  # [frames, bins, 2, sources]; the memory stays in planes


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

    The result may be a permuted view (stereo: sources and channels outermost in memory).
    """
    if mix_stft.shape[-1] == 2 and iterations > 0:
        return _wiener_stereo(targets_spectrograms, mix_stft, iterations, softmask, residual, scale_factor, eps,
                              mix_magnitude)
    mix_stft, targets_spectrograms = mix_stft.contiguous(), targets_spectrograms.contiguous()
    size = mix_stft.abs() if mix_magnitude is None else mix_magnitude.contiguous()
    if softmask:
        y = mix_stft[..., None] * (targets_spectrograms / (eps + targets_spectrograms.sum(dim=-1, keepdim=True))
                                   ).to(mix_stft.dtype)
    else:  # the mixture's phase as a unit phasor: cos/sin(atan2(im, re)) without the three transcendentals
        y = targets_spectrograms * torch.where(size > 0, mix_stft / torch.where(size > 0, size, 1), 1)[..., None]
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
