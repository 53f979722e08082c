"""Separation quality during training (`--eval-every`): the validation tracks separated as
umx-separate separates them, scored as umx-eval scores them.

The networks being trained go into a `Separator` (centred STFT, Wiener filtering with one EM
iteration over every target of the run, plus a residual where the targets do not make up the
mixture), on the training device. Each track is scored with umx.bss: BSSv4's SDR per 1-s frame
(`bss.sdr`: museval's SDR needs none of the distortion filters, which only ISR, SIR and SAR use;
the references being every separated source of the track, as umx-eval and SiSEC do) and the
global uSDR. A run's figures: cSDR = median over frames, then median over tracks; uSDR = mean
over tracks (the MDX/SDX challenges' aggregate). docs/metrics.md has the definitions.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .. import bss
from ..evaluate import mean_over_tracks, median_of_values
from ..model import Joint
from ..separate import Separator
from .augment import mix_and_target
from .slots import Slots
from .validation import ValidItem

NITER = 1  # EM iterations, umx-separate's default
WIENER_WIN = 300  # frames filtered together, umx-separate's default


@dataclass
class TrackScores:
    """One validation track's scores of each target: cSDR (median over its frames; NaN where
    every frame is silent, or a reference is silent throughout) and uSDR."""

    csdr: dict[str, float]
    usdr: dict[str, float]


def needs_residual(slots: Slots, sources: list[str]) -> bool:
    """Whether the targets leave part of the mixture out (then a residual source is separated too)."""
    covered: set[str] = set()
    for t in slots.target_slots:
        source = slots.order[t.slot]
        covered |= (set(sources) - {source}) if t.complement else {source}
    return len(slots.target_slots) < 2 or covered != set(sources) or slots.input_slot


def separator_for(model: Joint, names: list[str], residual: bool, sample_rate: int, nfft: int, nhop: int,
                  nb_channels: int) -> Separator:
    """The networks being trained (not copied) as a Separator, as umx-separate would load them."""
    return Separator({n: model.models[n] for n in names}, niter=NITER, residual=residual, sample_rate=sample_rate,
                     n_fft=nfft, n_hop=nhop, nb_channels=nb_channels, wiener_win_len=WIENER_WIN, bridge=model.bridge)


@torch.no_grad()
def score_item(separator: Separator, item: ValidItem, slots: Slots, names: list[str], rate: int,
               device: torch.device) -> TrackScores:
    """Separate one validation item and score every target of `names`."""
    wav = item.sources.to(device).float()[None] / 32768.0
    x, y = mix_and_target(wav, targets=tuple(t for t in slots.target_slots if t.name in names))
    if item.mixture is not None:
        x = item.mixture.to(device).float()[None] / 32768.0
    est = separator(x)[0]  # [sources, channels, time]
    refs = y[0]
    if separator.residual:
        refs = torch.cat([refs, (x[0] - refs.sum(0))[None]])
    refs_np = refs.transpose(1, 2).double().cpu().numpy()  # [sources, time, channels], as museval takes them
    est_np = est.transpose(1, 2).double().cpu().numpy()
    usdr = bss.usdr(refs_np, est_np)
    csdr = np.full(len(refs_np), math.nan)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sdr = bss.sdr(refs_np, est_np, win=rate, hop=rate)  # BSSv4's SDR frames: no filters needed
            csdr = np.array([np.nanmedian(r) if np.isfinite(r).any() else math.nan for r in sdr])
    except ValueError:  # a reference silent throughout (museval refuses it too): no cSDR for this track
        pass
    return TrackScores({n: float(csdr[i]) for i, n in enumerate(names)},
                       {n: float(usdr[i]) for i, n in enumerate(names)})


def aggregate(tracks: list[TrackScores], names: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """(cSDR: median over tracks, uSDR: mean over tracks) per target, as umx-eval aggregates them;
    NaN tracks left out (NaN where no track has a value)."""
    csdr = median_of_values([t.csdr for t in tracks])
    usdr = mean_over_tracks([t.usdr for t in tracks])
    return {n: csdr.get(n, math.nan) for n in names}, {n: usdr.get(n, math.nan) for n in names}
