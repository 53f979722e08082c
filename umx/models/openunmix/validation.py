"""Open-Unmix's separation of a validation track inside the validation pass (`--eval-every`).

The networks being trained go into a `Separator` (centred STFT, Wiener filtering with one EM
iteration over every target of the run, plus a residual where the targets do not make up the
mixture), on the training device, as umx-separate would load them. Where the networks' magnitude
estimates come from is the one choice (`--eval-separation`, `SEPARATIONS`): `exact` runs them
again on the centred STFT, as umx-separate does, so a recorded score is umx-eval's on those
weights; `fast` reuses the loss pass's estimates (see `SharedForward`), which saves most of a
forward pass and differs from umx-eval near the track edges only. The loss pass's frames are the
centred STFT's interior frames where the hop divides nfft / 2 (bit-equal: `track_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import Tensor

from ...errors import UmxError
from .. import defaults
from ..protocol import ModelSpec
from .network import Spectrogram
from .separator import Separator


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


class TrackSeparation:
    """`--eval-every`'s separation of one validation track (models.protocol.TrackScoring)."""

    def __init__(self, separator: Separator, encoder: Spectrogram, source: MagnitudeSource):
        self.separator, self.encoder, self.source = separator, encoder, source

    @torch.no_grad()
    def __call__(self, mixture: Tensor, loss_estimates: Sequence[Tensor]) -> Tensor:
        track = track_for(mixture, self.separator, self.encoder)
        magnitudes = self.source(self.separator, track, loss_estimates)
        return self.separator.from_estimates(track.stft, magnitudes, mixture.shape[-1], track.magnitude)[0]


def scoring(model, spec: ModelSpec, nfft: int, nhop: int, residual: bool, how: str) -> TrackSeparation:
    """The networks of `model` (an OpenUnmixModel, not copied) as umx-separate would load them, with
    the magnitude source `how` (--eval-separation) names."""
    separator = Separator(dict(model.units.items()), niter=defaults.NITER, residual=residual,
                          sample_rate=spec.sample_rate, n_fft=nfft, n_hop=nhop, nb_channels=spec.nb_channels,
                          wiener_win_len=defaults.WIENER_WIN_LEN, bridge=model.joint.bridge)
    return TrackSeparation(separator, model.encoder, SEPARATIONS[how]())
