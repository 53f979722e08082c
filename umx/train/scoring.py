"""Separation quality during training (`--eval-every`): the validation tracks separated as
umx-separate separates them (the architecture's `TrackScoring`), scored as umx-eval scores them,
in the validation pass itself. Each track is scored with umx.bss: BSSv4's SDR per 1-s frame
(`bss.sdr`: museval's SDR needs none of the distortion filters, which only ISR, SIR and SAR use;
the references being every separated source of the track, as umx-eval and SiSEC do) and the
global uSDR. A run's figures: cSDR = median over frames, then median over tracks; uSDR = mean
over tracks (the MDX/SDX challenges' aggregate). docs/metrics.md has the definitions.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import bss
from ..errors import UmxError
from ..evaluate import mean_over_tracks, median_of_values
from ..models.protocol import TrackScoring
from .augment import mix_and_target
from .slots import Slots
from .validation import ValidItem



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


class Scorer:
    """Scores validation tracks with the networks being trained (not copied), separated as the
    architecture separates a track inside the validation pass (models.protocol.TrackScoring)."""

    def __init__(self, separate: TrackScoring, names: list[str], residual: bool, rate: int):
        self.separate, self.names, self.residual, self.rate = separate, names, residual, rate

    @torch.no_grad()
    def score(self, x: Tensor, targets: Tensor, loss_estimates: Any) -> TrackScores:
        """Separate one track `x` `[1, channels, time]` (`targets`: its references `[1, targets,
        channels, time]`; the loss pass's estimates) and score every target."""
        est = self.separate(x, loss_estimates)  # [sources, channels, time]
        return score_signals(references(x[0], targets[0], self.residual), est, self.names, self.rate)


def references(x: Tensor, targets: Tensor, residual: bool) -> Tensor:
    """What a track's separation is scored against: every target `[targets, channels, time]`, and
    where a residual is separated, the mixture `x` `[channels, time]` minus them."""
    return torch.cat([targets, (x - targets.sum(0))[None]]) if residual else targets


def has_csdr(refs: Tensor, rate: int) -> bool:
    """Whether references leave any cSDR to compute, whatever the estimates: some 1-s frame in
    which every one of them is audible (museval leaves a frame out where any reference is silent,
    and refuses a reference silent throughout)."""
    r = refs.transpose(1, 2).cpu().numpy()  # [sources, time, channels]
    try:
        frames = bss.sdr(r, r, win=rate, hop=rate)  # the references as their own estimates: +inf or NaN
    except ValueError:
        return False
    return bool((~np.isnan(frames)).any())


def check_selectable(items: Sequence[ValidItem], slots: Slots, sources: list[str], rate: int) -> None:
    """--select-by sdr: refuse, in one line before any training, a validation set that can give no
    cSDR at all (every track has a reference silent in each of its 1-s frames: a target silent
    throughout, say). That run would never select an epoch, so it would write no weights. The
    references are built as the validation pass builds them (the stored mixture where there is one)."""
    targets = slots.target_slots
    audible: set[str] = set()
    for item in items:
        x, y = mix_and_target(item.sources[None].double(), targets=targets)
        if item.mixture is not None:
            x = item.mixture[None].double()
        if has_csdr(references(x[0], y[0], needs_residual(slots, sources)), rate):
            return
        audible |= {t.name for t, ref in zip(targets, y[0]) if bool((ref.sum(0) != 0).any())}
    silent = [t.name for t in targets if t.name not in audible]
    why = (f"the target {', '.join(repr(n) for n in silent)} {'is' if len(silent) == 1 else 'are'} silent in all "
           f"{len(items)} of them" if silent else f"each of the {len(items)} has a silent reference, a target or the "
           "rest of the mixture, in every 1-s frame")
    raise UmxError(f"--select-by sdr: the validation tracks give no cSDR to select by ({why}; museval's SDR "
                   "leaves silent references out): use --select-by loss")


def score_signals(refs: Tensor, est: Tensor, names: list[str], rate: int) -> TrackScores:
    """cSDR and uSDR of each of `names` (the first sources of `refs`/`est`, `[sources, channels, time]`;
    the others, a residual, count as references for BSSv4 as in umx-eval)."""
    # [sources, time, channels], as museval takes them: views, not copies (bss converts to float64 frame by frame)
    refs_np, est_np = refs.transpose(1, 2).cpu().numpy(), est.transpose(1, 2).cpu().numpy()
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
