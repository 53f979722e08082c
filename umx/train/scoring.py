"""Separation quality during training (`--eval-every`): the validation tracks separated as
umx-separate separates them, scored as umx-eval scores them, in the validation pass itself.

The networks being trained go into a `Separator` (centred STFT, Wiener filtering with one EM
iteration over every target of the run, plus a residual where the targets do not make up the
mixture), on the training device. Each track is scored with umx.bss: BSSv4's SDR per 1-s frame
(`bss.sdr`: museval's SDR needs none of the distortion filters, which only ISR, SIR and SAR use;
the references being every separated source of the track, as umx-eval and SiSEC do) and the
global uSDR. A run's figures: cSDR = median over frames, then median over tracks; uSDR = mean
over tracks (the MDX/SDX challenges' aggregate). docs/metrics.md has the definitions.

The track's centred STFT is computed once: the loss pass takes its interior frames, which are
the uncentred STFT open-unmix's loss is defined on (bit-equal), where the hop divides nfft / 2.
Where the networks' magnitude estimates come from is the one choice (`--eval-separation`,
`make_scorer`): `exact` runs them again on the centred STFT, as umx-separate does, so a recorded
score is umx-eval's on those weights; `fast` reuses the loss pass's estimates (see
`SharedForward`), which saves most of a forward pass and differs from umx-eval near the track
edges only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import bss
from ..errors import UmxError
from ..models import defaults
from ..evaluate import mean_over_tracks, median_of_values
from ..model import Joint, Spectrogram
from ..separate import Separator
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


def separator_for(model: Joint, names: list[str], residual: bool, sample_rate: int, nfft: int, nhop: int,
                  nb_channels: int) -> Separator:
    """The networks being trained (not copied) as a Separator, as umx-separate would load them."""
    return Separator({n: model.models[n] for n in names}, niter=defaults.NITER, residual=residual, sample_rate=sample_rate,
                     n_fft=nfft, n_hop=nhop, nb_channels=nb_channels, wiener_win_len=defaults.WIENER_WIN_LEN, bridge=model.bridge)


@dataclass
class ValidTrack:
    """One validation mixture as both passes need it: its centred STFT `[1, C, F, N]`, computed
    once, and the loss pass's network input (the encoder's magnitudes of the uncentred frames)."""

    mixture: Tensor  # [1, channels, time]
    stft: Tensor
    magnitude: Tensor  # |stft|, per channel
    spectrogram: Tensor
    lead: int | None  # centred frames before the first uncentred one; None: the frames do not align


def track_for(x: Tensor, separator: Separator, encoder: Spectrogram) -> ValidTrack:
    """The centred STFT of mixture `x` and the loss pass's input. The centred frame `lead + k`
    is the uncentred frame k where the hop divides nfft / 2: then the input is taken from it,
    else the encoder computes its own."""
    stft = separator.stft(x)
    magnitude = stft.abs()
    half, hop = separator.n_fft // 2, separator.n_hop
    if half % hop:
        return ValidTrack(x, stft, magnitude, encoder(x), None)
    lead = half // hop
    mag = magnitude[..., lead:lead + 1 + (x.shape[-1] - separator.n_fft) // hop]
    return ValidTrack(x, stft, magnitude, mag.mean(1, keepdim=True) if encoder.mono else mag, lead)


class MagnitudeSource(Protocol):
    """Where the separation's magnitude estimates of a track come from."""

    def __call__(self, separator: Separator, track: ValidTrack, loss_estimates: Sequence[Tensor]) -> list[Tensor]:
        ...


class SeparateForward:
    """umx-separate's: the networks run again, on the centred STFT (the recorded score is umx-eval's)."""

    def __call__(self, separator: Separator, track: ValidTrack, loss_estimates: Sequence[Tensor]) -> list[Tensor]:
        return list(separator.magnitudes(track.stft, track.magnitude))


EDGE_CONTEXT = 32  # frames beside a track's edge frames that the networks see again to estimate them


class SharedForward:
    """The loss pass's estimates, reused: one forward pass instead of two. They are the networks'
    outputs on the uncentred frames, which the centred STFT holds between `lead` frames at each
    end (46 ms with nfft 4096). Those edge frames are estimated by the networks again on the
    first and last EDGE_CONTEXT + lead frames alone (a few per cent of a 30-s track). What
    differs from umx-separate is the LSTMs' context near the edges: the edge frames do not see
    the far side of the track, and the loss pass's frames do not see the edge frames. (Applying
    the nearest frame's mask to the edge frames instead was measured 4.7 dB off in uSDR on
    1.5-s tracks: short tracks weigh their edges heavily.)"""

    def __call__(self, separator: Separator, track: ValidTrack, loss_estimates: Sequence[Tensor]) -> list[Tensor]:
        if track.lead is None:
            raise UmxError("--eval-separation fast needs --nhop to divide --nfft / 2")
        frames, first = track.stft.shape[-1], track.lead
        last = first + track.spectrogram.shape[-1]
        edge = first + EDGE_CONTEXT  # frames re-run at each end (the ends are alike: frames - last == first)
        if 2 * edge >= frames:  # a short track: the whole of it is hardly more
            return SeparateForward()(separator, track, loss_estimates)
        batch = track.stft.shape[0]  # both ends in one call, as one batch
        ends = separator.magnitudes(torch.cat([track.stft[..., :edge], track.stft[..., -edge:]]),
                                    torch.cat([track.magnitude[..., :edge], track.magnitude[..., -edge:]]))
        out = []
        for inner, both in zip(loss_estimates, ends):
            start, end = both[:batch], both[batch:]
            full = start.new_empty(start.shape[:-1] + (frames,))
            full[..., :first], full[..., last:] = start[..., :first], end[..., last - frames:]
            full[..., first:last] = inner
            out.append(full)
        return out


SEPARATIONS = {"exact": SeparateForward, "fast": SharedForward}  # --eval-separation


class Scorer:
    """Scores validation tracks with the networks being trained (not copied)."""

    def __init__(self, separator: Separator, encoder: Spectrogram, source: MagnitudeSource, names: list[str],
                 rate: int):
        self.separator, self.encoder, self.source, self.names, self.rate = separator, encoder, source, names, rate

    def track(self, x: Tensor) -> ValidTrack:
        return track_for(x, self.separator, self.encoder)

    @torch.no_grad()
    def score(self, track: ValidTrack, targets: Tensor, loss_estimates: Sequence[Tensor]) -> TrackScores:
        """Separate one track (`targets`: its references `[1, targets, channels, time]`; the loss
        pass's estimates, in `names` order) and score every target."""
        x = track.mixture
        est = self.separator.from_estimates(track.stft, self.source(self.separator, track, loss_estimates),
                                            x.shape[-1], track.magnitude)[0]  # [sources, channels, time]
        return score_signals(references(x[0], targets[0], self.separator.residual), est, self.names, self.rate)


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


def make_scorer(model: Joint, encoder: Spectrogram, names: list[str], slots: Slots, sources: list[str],
                separation: str, sample_rate: int, nfft: int, nhop: int, nb_channels: int) -> Scorer:
    """The scorer of `--eval-separation` (the one place the choice is made)."""
    separator = separator_for(model, names, needs_residual(slots, sources), sample_rate, nfft, nhop, nb_channels)
    return Scorer(separator, encoder, SEPARATIONS[separation](), names, sample_rate)


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
