"""Whole-track inference for models trained on chunks: windowed overlap-add, as MSST's `demix` does it.

A chunked model (a waveform or band-split network trained on crops) separates a whole track chunk
by chunk: windows of `chunk` samples every `chunk // overlap` samples, each estimate weighted by a
fade window (linear fades of `chunk // 10` samples, none at the track's own ends), summed and
divided by the summed weights, so the weights of every sample add up to one. The track is
reflect-padded by the windows' overlap at each end, so its first and last samples are estimated
inside a window, and the last window is padded with zeros. Chunks run in batches of `batch`, so
memory is the output plus one batch of chunks, whatever the track's length. A track no longer than
one chunk is one forward pass of the whole track.

Where this differs from MSST's demix: the fades are decided per chunk (MSST decides them per batch
of chunks, so its batch size changes its output), and a last chunk is padded with zeros (MSST pads it
by reflection when it is over half a chunk).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

FADE_FRACTION = 10  # MSST: fade_size = chunk_size // 10


def fade_window(chunk: int, fade_in: bool, fade_out: bool, device: torch.device | None = None) -> Tensor:
    """Ones with linear fades of `chunk // FADE_FRACTION` samples where asked."""
    window = torch.ones(chunk, device=device)
    fade = chunk // FADE_FRACTION
    if fade:
        ramp = torch.linspace(0, 1, fade, device=device)
        if fade_in:
            window[:fade] = ramp
        if fade_out:
            window[-fade:] = ramp.flip(0)
    return window


def layout(length: int, chunk: int, overlap: int) -> tuple[int, list[tuple[int, Tensor]]]:
    """The padding at each end and every window: (its start in the padded track, its weights)."""
    step = max(1, chunk // overlap)
    border = chunk - step
    total = length + 2 * border
    windows = []
    for start in range(0, max(total - border, 1), step):
        n = min(chunk, total - start)
        windows.append((start, fade_window(chunk, border > 0 and start > 0, border > 0 and start + chunk < total)[:n]))
    return border, windows


def weight_sums(length: int, chunk: int, overlap: int) -> Tensor:
    """Every padded sample's summed window weights (what overlap_add divides by): never zero."""
    border, windows = layout(length, chunk, overlap)
    total = torch.zeros(length + 2 * border)
    for start, window in windows:
        total[start:start + len(window)] += window
    return total


@torch.no_grad()
def overlap_add(separate: Callable[[Tensor], Tensor], audio: Tensor, chunk: int, overlap: int = 4,
                batch: int = 4) -> Tensor:
    """`audio` `[channels, time]` → `[sources, channels, time]`, where `separate` maps a batch of
    chunks `[n, channels, chunk]` to `[n, sources, channels, chunk]`."""
    if chunk < 1 or overlap < 1 or batch < 1:
        raise ValueError(f"chunk, overlap and batch must be >= 1, got {chunk}, {overlap}, {batch}")
    channels, length = audio.shape
    if length <= chunk:
        return separate(audio[None])[0]
    border, windows = layout(length, chunk, overlap)
    mode = "reflect" if length > border else "constant"  # reflect needs more samples than it pads
    padded = F.pad(audio[None], (border, border), mode=mode)[0] if border else audio
    total = padded.shape[-1]
    out: Tensor | None = None
    weight = torch.zeros(total, device=audio.device)
    for first in range(0, len(windows), batch):
        group = windows[first:first + batch]
        pieces = torch.stack([F.pad(padded[:, s:s + chunk], (0, max(0, s + chunk - total))) for s, _ in group])
        estimates = separate(pieces)  # [n, sources, channels, chunk]
        if out is None:
            out = estimates.new_zeros((estimates.shape[1], channels, total))
        for k, (s, window) in enumerate(group):
            window = window.to(audio.device)
            out[..., s:s + len(window)] += estimates[k, ..., :len(window)] * window
            weight[s:s + len(window)] += window
    return (out / weight.clamp_min(1e-8))[..., border:border + length]


class ChunkedSeparation:
    """A chunked model's whole-track separation (models.protocol.Separation): `overlap_add` of `run`
    (chunks `[n, channels, chunk]` → `[n, targets, channels, chunk]`) over each track, then the
    residual (the mixture minus the targets) where asked."""

    def __init__(self, run: Callable[[Tensor], Tensor], targets: list[str], sample_rate: int, chunk: int,
                 overlap: int, batch: int, residual: bool | str = False):
        self.run, self.sample_rate = run, sample_rate
        self.chunk, self.overlap, self.batch = chunk, overlap, batch
        self.residual = bool(residual)
        self.target_names = list(targets) + ([residual if isinstance(residual, str) else "residual"]
                                             if residual else [])

    @torch.no_grad()
    def __call__(self, audio: Tensor) -> Tensor:
        """`[batch, channels, time]` → `[batch, sources, channels, time]`."""
        out = []
        for track in audio:
            est = overlap_add(self.run, track, self.chunk, self.overlap, self.batch)
            if self.residual:
                est = torch.cat([est, (track - est.sum(0))[None]])
            out.append(est)
        return torch.stack(out)
