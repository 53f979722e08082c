"""Device-side augmentation on whole batches `[batch, sources, channels, time]`.

In the style of Demucs' augment.py: each augmentation is a few-line module.
They run after the int16 crops reach the device, so the CPU workers only copy
memory. Every module draws from the generator it is given; in training that is the
default generator, which the step seeds per (seed, epoch, global batch) before it runs
the augmentations inside itself (trainer.Mixer; inside the CUDA graph on a GPU): a
resumed run repeats the same draws.

Shapes depend only on the input's shape and the modules' parameters, and no module reads a
value back to the host, so each can be captured in a CUDA graph (see each docstring). The
random modules added after Gain/ChannelSwap split `forward` into `draw(wav, generator)` (the
random parameters, a small tensor) and `apply(wav, params[, out_len])` (deterministic), so a
test can force or read back a draw and a benchmark can time each part.

Length-changing modules (Shift, Speed, Pitch, Repitch) take the output length in `forward(wav,
generator, out_len)` and say with `frames_needed(out_len)` how many input frames it takes;
`Augment.input_frames(seq_len)` chains those so that the crops arrive long enough.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .slots import TargetSlot

INT16_SCALE = 32768.0


def _check_order(low: float, high: float) -> None:
    if not low <= high:
        raise ValueError(f"LOW {low:g} is above HIGH {high:g}")


class Gain(nn.Module):
    """Scale each source by U(low, high) — open-unmix's `gain` source augmentation,
    so the model does not learn fixed source levels."""

    changes_length = False  # keeps the length

    SUMMARY = "a gain U(LOW, HIGH) per source"
    PARAMS = (("low", float, 0.0, 10.0), ("high", float, 0.0, 10.0))

    def __init__(self, low: float = 0.25, high: float = 1.25):
        super().__init__()
        _check_order(low, high)
        self.low, self.high = low, high

    def forward(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b, s = wav.shape[:2]
        g = torch.rand(b, s, 1, 1, device=wav.device, generator=generator, dtype=wav.dtype)
        return wav * (self.low + g * (self.high - self.low))


class ChannelSwap(nn.Module):
    """Swap left and right of each source with probability p — open-unmix's
    `channelswap`, so the model does not learn a fixed stereo placement."""

    changes_length = False  # keeps the length

    SUMMARY = "swap left and right per source with probability P"
    PARAMS = (("p", float, 0.0, 1.0),)

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if wav.shape[2] != 2:
            return wav
        b, s = wav.shape[:2]
        swap = torch.rand(b, s, 1, 1, device=wav.device, generator=generator) < self.p
        return torch.where(swap, wav.flip(2), wav)


class Remix(nn.Module):
    """Random track mixing with the batch as the pool of tracks; the first `keep` slots (the
    target of a single-target run) stay with their own track.

    independent: each other slot comes from another random item (its own permutation per
    slot, Demucs' Remix) — open-unmix's `random_track_mix`; in a joint run (`keep=0`) every
    source slot, targets included, is drawn independently.
    joint: all interferer slots move together, so a sample's interferers are one other
    track's — open-unmix's `random_interferer_mix` (trackfolder_var).
    """

    changes_length = False  # keeps the length

    def __init__(self, joint: bool = False, keep: int = 1):
        super().__init__()
        self.joint, self.keep = joint, keep

    def forward(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b, s = wav.shape[:2]
        k = self.keep
        if b < 2 or s <= max(k, 1):
            return wav
        n = 1 if self.joint else s - k
        perms = torch.argsort(torch.rand(n, b, device=wav.device, generator=generator), dim=1)
        moved = [wav[perms[0 if self.joint else i], k + i] for i in range(s - k)]
        return torch.stack([*wav[:, :k].unbind(1), *moved], dim=1)


def _out_len(module: nn.Module, wav: Tensor, out_len: int | None) -> int:
    """`out_len`, or where None the longest output `wav` allows; a clear error where `wav` is
    shorter than `module.frames_needed(out_len)`. Shapes only: no host sync."""
    have = wav.shape[-1]
    if out_len is None:
        lo, hi = 0, have  # frames_needed is increasing: the largest n with frames_needed(n) <= have
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if module.frames_needed(mid) <= have else (lo, mid - 1)
        out_len = lo
    need = module.frames_needed(out_len)
    if have < need:
        raise ValueError(f"{type(module).__name__}: {out_len} output frames need {need} input frames, got {have}")
    return out_len


KAISER_BETA = 8.6  # the sinc's window: ~ -80 dB side lobes
_I0_BETA = float(torch.special.i0(torch.tensor(KAISER_BETA, dtype=torch.float64)))


def _interpolate(x: Tensor, pos: Tensor, cutoff: Tensor, zeros: int, half: int) -> Tensor:
    """`x` `[batch, rows, time]` read at `pos` `[batch, out]` (float64, in input frames; all rows of
    an item alike) by band-limited interpolation: a Kaiser-windowed sinc lowpass at `cutoff`
    `[batch]` (a fraction of the input's Nyquist) with `zeros` zero crossings each side, over the
    `2 * half` input frames around each position (`half >= zeros / cutoff`), normalised to unit
    DC gain. A fixed loop of gathers over the taps: the memory stays that of the output."""
    b, rows, t = x.shape
    base = pos.floor()
    frac = (pos - base).to(x.dtype)
    base = base.long()
    c = cutoff.to(x.dtype)[:, None]
    out = x.new_zeros(b, rows, pos.shape[1])
    total = x.new_zeros(b, 1, pos.shape[1])
    for j in range(1 - half, half + 1):
        u = (j - frac) * c  # the tap's distance from the position, in zero crossings of the lowpass
        taper = torch.special.i0(KAISER_BETA * (1 - (u / zeros).square()).clamp_min(0).sqrt()) / _I0_BETA
        w = torch.where(u.abs() < zeros, torch.sinc(u) * taper, 0)[:, None]
        out += w * x.gather(2, (base + j).clamp(0, t - 1)[:, None].expand(b, rows, -1))
        total += w
    return out / total


class FlipSign(nn.Module):
    """Invert the polarity of each source with probability p (Demucs' FlipSign): a source and its
    negative sound alike, so the model should not care, and the same crops give more variety.
    Graph-safe."""

    changes_length = False  # keeps the length

    SUMMARY = "invert the polarity of each source with probability P"
    PARAMS = (("p", float, 0.0, 1.0),)

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def draw(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The signs: ±1, `[batch, sources, 1, 1]`."""
        b, s = wav.shape[:2]
        flip = torch.rand(b, s, 1, 1, device=wav.device, generator=generator) < self.p
        return 1 - 2 * flip.to(wav.dtype)

    def apply(self, wav: Tensor, signs: Tensor) -> Tensor:
        return wav * signs

    def forward(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(wav, self.draw(wav, generator))


class Scale(nn.Module):
    """One gain U(low, high) per sample, the same for all its sources, on top of Gain's per-source
    gain: the level of the whole mix (and its target alike) varies, so the model does not learn a
    fixed loudness, while the balance between the sources stays as Gain left it. Graph-safe."""

    changes_length = False  # keeps the length

    SUMMARY = "one gain U(LOW, HIGH) per sample, all its sources alike"
    PARAMS = Gain.PARAMS

    def __init__(self, low: float = 0.25, high: float = 1.25):
        super().__init__()
        _check_order(low, high)
        self.low, self.high = low, high

    def draw(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The gains, `[batch, 1, 1, 1]`."""
        g = torch.rand(wav.shape[0], 1, 1, 1, device=wav.device, generator=generator, dtype=wav.dtype)
        return self.low + g * (self.high - self.low)

    def apply(self, wav: Tensor, gains: Tensor) -> Tensor:
        return wav * gains

    def forward(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(wav, self.draw(wav, generator))


class Shift(nn.Module):
    """Cut each source of each sample at its own random offset in [0, max_shift] out of a crop
    `max_shift` frames longer (Demucs' Shift): the sources of a sample lose their alignment (beat,
    phrasing), so target and interferers combine in new ways, and crops start anywhere rather than
    on the loader's grid. `frames_needed(out_len) = out_len + max_shift`. Graph-safe: one gather
    with a fixed-size index."""

    changes_length = True  # trims frames: frames_needed

    SUMMARY = "a time offset in [0, MAX_SHIFT] frames per source; crops grow by MAX_SHIFT"
    PARAMS = (("max_shift", int, 0, 2**22),)

    def __init__(self, max_shift: int = 8192):
        super().__init__()
        self.max_shift = int(max_shift)

    def frames_needed(self, out_len: int) -> int:
        return out_len + self.max_shift

    def draw(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The offsets: int64 in [0, max_shift], `[batch, sources]`."""
        return torch.randint(self.max_shift + 1, wav.shape[:2], device=wav.device, generator=generator)

    def apply(self, wav: Tensor, offsets: Tensor, out_len: int | None = None) -> Tensor:
        out_len = _out_len(self, wav, out_len)
        idx = offsets[:, :, None, None] + torch.arange(out_len, device=wav.device)
        return wav.gather(3, idx.expand(*wav.shape[:3], out_len))

    def forward(self, wav: Tensor, generator: torch.Generator | None = None, out_len: int | None = None) -> Tensor:
        return self.apply(wav, self.draw(wav, generator), out_len)


class Speed(nn.Module):
    """Play each sample faster or slower by a factor U(1 - max_change, 1 + max_change), pitch and
    tempo together (Demucs' speed augmentation, soundstretch on the CPU there; batched on the
    device here): tempi and keys beyond the dataset's. All sources of a sample get the same
    factor, so they stay in time and in tune with each other.

    Output frame n reads the input at `half + n * factor` by windowed-sinc interpolation, the
    lowpass at `rolloff * min(1, 1 / factor)` of the input's Nyquist so that a faster read does
    not alias. The output length is fixed; a faster sample reads further into its crop, so the
    crop must hold `frames_needed(out_len) = ceil(out_len * (1 + max_change)) + 2 * half`.
    Graph-safe: fixed shapes, a loop of `2 * half` gathers; positions are float64 (in float32
    they lose sub-sample accuracy beyond ~10^5 frames).
    """

    changes_length = True  # trims frames: frames_needed

    SUMMARY = "resample each sample by 1 ± MAX_CHANGE (pitch and tempo together)"
    PARAMS = (("max_change", float, 0.0, 0.5),)

    def __init__(self, max_change: float = 0.08, zeros: int = 16, rolloff: float = 0.94):
        super().__init__()
        self.max_change, self.zeros, self.rolloff = max_change, zeros, rolloff
        self.half = math.ceil(zeros * (1 + max_change) / rolloff)

    def frames_needed(self, out_len: int) -> int:
        return math.ceil(out_len * (1 + self.max_change)) + 2 * self.half

    def draw(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The factors: float64 in [1 - max_change, 1 + max_change), `[batch]`."""
        u = torch.rand(wav.shape[0], device=wav.device, generator=generator, dtype=torch.float64)
        return 1 + (2 * u - 1) * self.max_change

    def apply(self, wav: Tensor, factors: Tensor, out_len: int | None = None) -> Tensor:
        out_len = _out_len(self, wav, out_len)
        factors = factors.to(torch.float64)
        pos = self.half + torch.arange(out_len, device=wav.device, dtype=torch.float64) * factors[:, None]
        cutoff = self.rolloff * factors.reciprocal().clamp(max=1)
        out = _interpolate(wav.reshape(wav.shape[0], -1, wav.shape[-1]), pos, cutoff, self.zeros, self.half)
        return out.view(*wav.shape[:-1], out_len)

    def forward(self, wav: Tensor, generator: torch.Generator | None = None, out_len: int | None = None) -> Tensor:
        return self.apply(wav, self.draw(wav, generator), out_len)


def _vocode(wav: Tensor, rate: Tensor, stretch: Tensor, out_len: int, margin: int, r_max: float, n_fft: int,
            hop: int, zeros: int, rolloff: float, half: int) -> Tensor:
    """Pitch's and Repitch's core: `wav` `[batch, ..., time]` phase-vocoder stretched by `stretch`
    `[batch]` (float64), then read at `(start + n) * rate` (`rate` `[batch]`, at most `r_max`) by
    `_interpolate`: every frequency times `rate`, the duration times `stretch / rate`. Output frame
    n is input frame `k0 * hop + (start + n) * rate / stretch`, where `start = margin - k0 * hop`:
    `margin + n` where `stretch = rate` (Pitch). Shapes depend on `out_len`, `margin` and `r_max` only."""
    (b, *lead), t = wav.shape[:-1], wav.shape[-1]
    rows = math.prod(lead)
    window = torch.hann_window(n_fft, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(wav.reshape(-1, t), n_fft, hop, window=window, return_complex=True)
    bins, frames = spec.shape[1:]
    spec = spec.view(b, rows, bins, frames)
    mag, phase = spec.abs(), spec.angle()
    # stretched frame m reads input frame k0 + m / stretch: the first one read (whose phases every
    # later frame inherits) lies wholly within the input, not in stft's reflected padding
    k0 = math.ceil(n_fft / 2 / hop)
    start = margin - k0 * hop  # output frame n is stretched frame (n + start) * rate
    last = (out_len - 1 + start) * r_max + half + 1  # enough for the last read's taps,
    m = math.ceil((last + n_fft / 2) / hop) + 1  # and every window overlapping them
    tau = k0 + torch.arange(m, device=wav.device, dtype=torch.float64) / stretch[:, None]
    at = tau.floor().clamp(0, frames - 2)
    alpha = (tau - at).clamp(0, 1).to(wav.dtype)[:, None, None]
    i0 = at.long()[:, None, None].expand(b, rows, bins, m)
    i1 = (at.long() + 1)[:, None, None].expand(b, rows, bins, m)
    magnitude = (1 - alpha) * mag.gather(3, i0) + alpha * mag.gather(3, i1)
    omega = torch.arange(bins, device=wav.device, dtype=wav.dtype)[:, None] * (2 * math.pi * hop / n_fft)
    dphi = phase.gather(3, i1) - phase.gather(3, i0) - omega
    advance = dphi - 2 * math.pi * torch.round(dphi / (2 * math.pi)) + torch.remainder(omega, 2 * math.pi)
    first = phase[..., k0:k0 + 1]
    phase_out = torch.cat([first, first + advance[..., :-1].cumsum(3)], dim=3)
    out_frames = torch.fft.irfft(torch.polar(magnitude, phase_out), n=n_fft, dim=2) * window[:, None]
    length = (m - 1) * hop + n_fft
    fold = dict(output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop))
    ola = nn.functional.fold(out_frames.reshape(b * rows, n_fft, m), **fold).view(b, rows, length)
    envelope = nn.functional.fold(window.square()[None, :, None].repeat(1, 1, m), **fold).view(1, 1, length)
    stretched = (ola / envelope.clamp_min(1e-3))[..., n_fft // 2:]  # frame q: input frame k0 * hop + q / stretch
    pos = (start + torch.arange(out_len, device=wav.device, dtype=torch.float64)) * rate[:, None]
    cutoff = rolloff * rate.reciprocal().clamp(max=1)
    return _interpolate(stretched, pos, cutoff, zeros, half).view(*wav.shape[:-1], out_len)


class Pitch(nn.Module):
    """Shift the pitch of each sample by U(-max_semitones, max_semitones) semitones keeping its
    tempo: keys and timbres beyond the dataset's without touching the rhythm. All sources of a
    sample alike.

    Method: a phase-vocoder time stretch by r = 2^(semitones / 12) (STFT; stretched frame m reads
    input frame m / r, magnitudes interpolated between the two nearest frames, phases advanced by
    each bin's measured frequency), then Speed's windowed-sinc resampling read at `n * r`, which
    restores the duration and multiplies every frequency by r. Output frame n is input frame
    `n + margin`: `frames_needed(out_len) = out_len + 2 * margin` (margin ≈ 1.1 n_fft + hop + the
    sinc's reach).

    Artefacts, those of a plain phase vocoder: transients smeared over about a window (n_fft =
    2048: 46 ms at 44.1 kHz), so attacks soften and pre-echo; a "phasy", slightly reverberant
    sound where the phase relations between neighbouring bins (vertical coherence) are lost, which
    also blurs wide stereo images; formants move with the pitch (voices sound larger or smaller).
    Small shifts (±2) keep them mild.

    Graph-safe: torch.stft, fixed-shape gathers, a cumulative sum over frames, irfft and an
    overlap-add by `fold` — not torch.istft, whose window-envelope check reads a value back to the
    host. The per-sample rate only changes which frames are read, never a shape: every sample gets
    the frames the largest rate needs. About an STFT/iSTFT pair of every source and channel plus
    Speed's interpolation.
    """

    changes_length = True  # trims frames: frames_needed

    SUMMARY = "pitch-shift each sample by ± MAX_SEMITONES semitones, tempo kept"
    PARAMS = (("max_semitones", float, 0.0, 12.0),)

    def __init__(self, max_semitones: float = 2.0, n_fft: int = 2048, hop: int = 512, zeros: int = 16,
                 rolloff: float = 0.94):
        super().__init__()
        self.max_semitones, self.n_fft, self.hop, self.zeros, self.rolloff = max_semitones, n_fft, hop, zeros, rolloff
        self.r_max = 2 ** (max_semitones / 12)
        self.half = math.ceil(zeros * self.r_max / rolloff)
        # the sinc's reach before the first read (in stretched frames, / r in input frames) and the
        # STFT windows around the stretched frames the reads touch, each side
        self.margin = math.ceil(self.half * self.r_max) + math.ceil(n_fft / 2 * (1 + self.r_max)) + hop

    def frames_needed(self, out_len: int) -> int:
        return out_len + 2 * self.margin

    def draw(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The shifts in semitones: float64 in [-max_semitones, max_semitones), `[batch]`."""
        u = torch.rand(wav.shape[0], device=wav.device, generator=generator, dtype=torch.float64)
        return (2 * u - 1) * self.max_semitones

    def apply(self, wav: Tensor, semitones: Tensor, out_len: int | None = None) -> Tensor:
        out_len = _out_len(self, wav, out_len)
        rate = torch.pow(2.0, semitones.to(device=wav.device, dtype=torch.float64) / 12)
        return _vocode(wav, rate, rate, out_len, self.margin, self.r_max, self.n_fft, self.hop, self.zeros,
                       self.rolloff, self.half)

    def forward(self, wav: Tensor, generator: torch.Generator | None = None, out_len: int | None = None) -> Tensor:
        return self.apply(wav, self.draw(wav, generator), out_len)


class Repitch(nn.Module):
    """Demucs' repitch augmentation (its RepitchedWrapper, soundstretch on the CPU there) on the
    device: with probability `proba` a sample is shifted by whole semitones, uniform in [-max_pitch,
    max_pitch], and its tempo changed by N(0, tempo_std) percent clipped to ± max_tempo (+12: 12 %
    faster), all its sources alike, so they stay in tune and in time; the other samples are plain
    crops. Keys and tempi beyond the dataset's, while most crops stay as recorded. (Demucs repitches
    its dataset, before its other augmentations: put it first.)

    Method: Pitch's, stretched by r / f instead of r (r = 2^(semitones / 12), f = 1 + tempo / 100),
    so the read at `n * r` multiplies every frequency by r and the duration by 1 / f. Output frame
    n is input frame `k0_hop + (margin - k0_hop + n) * f` (k0_hop: the first STFT frame read): at
    f = 1 Pitch's `margin + n`, and Pitch's output. A sample not repitched is the crop from `margin`,
    exactly (torch.where). `frames_needed` holds the fastest tempo 1 + max_tempo / 100 and Pitch's
    margins stretched by it. Pitch's artefacts (phasiness: repitched samples of the synthetic stems
    come out 2-4 dB quieter) and graph-safety; every sample costs a Pitch whatever its draw.
    Not reproduced: Demucs' `voice` flag (soundstretch's `-speech` for its vocals, a quality setting
    of that tool) and `same=False` (a draw per source).
    """

    changes_length = True  # trims frames: frames_needed

    SUMMARY = "with probability PROBA: ± MAX_PITCH semitones, tempo N(0, TEMPO_STD) % within ± MAX_TEMPO (Demucs')"
    PARAMS = (("proba", float, 0.0, 1.0), ("max_pitch", int, 0, 12), ("max_tempo", float, 0.0, 50.0),
              ("tempo_std", float, 0.0, 50.0))

    def __init__(self, proba: float = 0.2, max_pitch: int = 2, max_tempo: float = 12.0, tempo_std: float = 5.0,
                 n_fft: int = 2048, hop: int = 512, zeros: int = 16, rolloff: float = 0.94):
        super().__init__()
        self.proba, self.max_pitch, self.max_tempo, self.tempo_std = proba, int(max_pitch), max_tempo, tempo_std
        self.n_fft, self.hop, self.zeros, self.rolloff = n_fft, hop, zeros, rolloff
        self.r_max, self.f_max = 2 ** (self.max_pitch / 12), 1 + max_tempo / 100
        self.half = math.ceil(zeros * self.r_max / rolloff)
        self.margin = math.ceil(self.half * self.r_max) + math.ceil(n_fft / 2 * (1 + self.r_max)) + hop  # Pitch's
        self.k0_hop = math.ceil(n_fft / 2 / hop) * hop

    def frames_needed(self, out_len: int) -> int:
        # the last output frame's input frame at the fastest tempo, then Pitch's trailing margin for
        # the slowest stretch r / f (the sinc's taps and the STFT windows, each / stretch in input frames)
        reach = self.r_max * self.f_max
        last = self.k0_hop + math.ceil((self.margin - self.k0_hop + out_len - 1) * self.f_max)
        return last + 1 + math.ceil(self.half * reach) + math.ceil(self.n_fft / 2 * (1 + reach)) + self.hop

    def draw(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """`[batch, 3]` float64: 1 where the sample is repitched (probability proba) else 0, the
        semitones (an integer in [-max_pitch, max_pitch]), the tempo change in percent. All three are
        drawn for every sample, so the generator advances alike whatever the outcome."""
        b, device = wav.shape[0], wav.device
        on = torch.rand(b, device=device, generator=generator, dtype=torch.float64) < self.proba
        semitones = torch.randint(-self.max_pitch, self.max_pitch + 1, (b,), device=device, generator=generator)
        tempo = torch.randn(b, device=device, generator=generator, dtype=torch.float64) * self.tempo_std
        return torch.stack([on.double(), semitones.double(), tempo.clamp(-self.max_tempo, self.max_tempo)], dim=1)

    def apply(self, wav: Tensor, params: Tensor, out_len: int | None = None) -> Tensor:
        """`params` as `draw` gives them; semitones and tempo within the module's ranges (not checked:
        that would read them back), or the reads run past the crop."""
        out_len = _out_len(self, wav, out_len)
        params = params.to(device=wav.device, dtype=torch.float64)
        rate = torch.pow(2.0, params[:, 1] / 12)
        shifted = _vocode(wav, rate, rate / (1 + params[:, 2] / 100), out_len, self.margin, self.r_max, self.n_fft,
                          self.hop, self.zeros, self.rolloff, self.half)
        on = (params[:, 0] > 0.5).view(-1, *[1] * (wav.dim() - 1))
        return torch.where(on, shifted, wav[..., self.margin:self.margin + out_len])

    def forward(self, wav: Tensor, generator: torch.Generator | None = None, out_len: int | None = None) -> Tensor:
        return self.apply(wav, self.draw(wav, generator), out_len)


AUGMENTATIONS = {"gain": Gain, "channelswap": ChannelSwap, "flipsign": FlipSign, "scale": Scale,
                 "shift": Shift, "speed": Speed, "pitch": Pitch, "repitch": Repitch}


def _defaults(cls: type) -> list:
    params = inspect.signature(cls.__init__).parameters
    return [params[name].default for name, *_ in cls.PARAMS]


def _usage(name: str) -> str:
    params = AUGMENTATIONS[name].PARAMS
    return name + "".join(f"[:{p[0].upper()}" for p in params) + "]" * len(params)


SYNTAX = "source augmentations: NAME[:PARAM...], applied in the given order (defaults in brackets)\n" + "\n".join(
    f"  {_usage(name):26} {cls.SUMMARY} [{', '.join(f'{d:g}' for d in _defaults(cls))}]"
    for name, cls in AUGMENTATIONS.items())


def parse_augmentation(spec: str) -> nn.Module:
    """`NAME[:PARAM...]` (see SYNTAX) → its module; a one-line ValueError naming `spec` for an unknown
    name, too many parameters, a parameter that is not a number or is out of its range."""
    key, *texts = str(spec).strip().split(":")
    key = key.strip().lower()
    cls = AUGMENTATIONS.get(key)
    if cls is None:
        raise ValueError(f"unknown source augmentation {spec!r}; available: {', '.join(AUGMENTATIONS)} "
                         "(NAME[:PARAM...])")
    if len(texts) > len(cls.PARAMS):
        raise ValueError(f"source augmentation {spec!r}: at most {len(cls.PARAMS)} parameter(s): {_usage(key)}")
    values = []
    for text, (name, kind, low, high) in zip(texts, cls.PARAMS):
        try:
            value = kind(text.strip())
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"source augmentation {spec!r}: {name.upper()} must be {what} in [{low:g}, {high:g}], "
                             f"got {text!r}")
        values.append(value)
    try:
        return cls(*values)
    except ValueError as e:
        raise ValueError(f"source augmentation {spec!r}: {e}") from None


class Augment(nn.Module):
    """int16 batch → float → [remix] → source augmentations in the given order.

    `source_augmentations` are specs (`NAME[:PARAM...]`, see SYNTAX) or ready modules; `remix` is
    None, "independent" or "joint" (see Remix). A stored input slot (aligned data,
    `input_slot=True`) is never augmented: such sets never are. With length-changing steps (shift,
    speed, pitch, repitch) the crops must hold `input_frames(seq_len)` frames and `forward` gets
    `seq_len`.
    """

    def __init__(self, source_augmentations: Sequence[str | nn.Module] = (), remix: str | None = None, keep: int = 1):
        super().__init__()
        augs = [a if isinstance(a, nn.Module) else parse_augmentation(a) for a in source_augmentations]
        steps = ([Remix(joint=remix == "joint", keep=keep)] if remix else []) + augs
        self.steps = nn.ModuleList(steps)
        self.names = ([f"remix:{remix}"] if remix else []) + [
            type(a).__name__.lower() if isinstance(a, nn.Module) else str(a).strip() for a in source_augmentations]

    @property
    def changes_length(self) -> bool:
        return any(step.changes_length for step in self.steps)

    def input_frames(self, seq_len: int) -> int:
        """The frames the crops must hold so that `forward(pcm, generator, seq_len)` ends `seq_len`
        long: each length-changing step's need, from the last step back to the first."""
        for step in reversed(self.steps):
            if step.changes_length:
                seq_len = step.frames_needed(seq_len)
        return seq_len

    def stages(self, seq_len: int | None = None) -> list[tuple[str, Callable[..., Tensor]]]:
        """`(name, fn(wav, generator) → wav)` per step, output lengths bound: what `forward` runs
        after the int16 → float conversion, one by one (a benchmark times each; the first takes
        float `[batch, sources, channels, input_frames(seq_len)]`)."""
        if seq_len is None and self.changes_length:
            raise ValueError(f"source augmentations {self.names}: shift, speed, pitch and repitch change the length; "
                             "give seq_len (the crops must then hold input_frames(seq_len) frames)")
        lengths, n = [], seq_len
        for step in reversed(self.steps):
            lengths.insert(0, n)
            if step.changes_length:
                n = step.frames_needed(n)
        return [(name, functools.partial(step, out_len=n) if step.changes_length else step)
                for name, step, n in zip(self.names, self.steps, lengths)]

    def forward(self, pcm: Tensor, generator: torch.Generator | None = None, seq_len: int | None = None) -> Tensor:
        stages = self.stages(seq_len)
        if seq_len is not None:
            need = self.input_frames(seq_len)
            if pcm.shape[-1] < need:
                raise ValueError(f"source augmentations {self.names}: {seq_len} output frames need crops of {need} "
                                 f"frames, got {pcm.shape[-1]}")
            pcm = pcm[..., :need]
        wav = pcm.float() / INT16_SCALE
        for _, fn in stages:
            wav = fn(wav, generator)
        return wav


def replace_quiet(pcm: Tensor, floor: float, sources: int) -> Tensor:
    """MSST's quiet-crop rejection (`min_mean_abs`), on the device: a crop any of whose first `sources`
    slots has a mean absolute value below `floor` (of full scale, measured before the augmentations, as
    MSST measures the raw chunk) is replaced by one of the batch's crops that has none, in turn; a batch
    of only quiet crops stays as it is. No host sync: the CUDA graph captures it."""
    level = pcm[:, :sources].abs().float().mean((-1, -2)) / INT16_SCALE  # [batch, sources]
    loud = (level >= floor).all(1)
    quiet = ~loud
    order = torch.argsort(quiet.to(torch.int8), stable=True)  # the loud crops first, in batch order
    rank = torch.cumsum(quiet.to(torch.int64), 0) - 1  # each quiet crop's place among the quiet ones
    taken = order[torch.remainder(rank.clamp_min(0), loud.sum().clamp_min(1))]
    positions = torch.arange(pcm.shape[0], device=pcm.device)
    source = torch.where(loud | ~loud.any(), positions, taken)
    return pcm[source]


def mix_and_target(wav: Tensor, input_slot: bool = False, complement: bool = False,
                   targets: Sequence[TargetSlot] | None = None) -> tuple[Tensor, Tensor]:
    """`[batch, slots, channels, time]` → (model input x, target y).

    x is the sum of the sources, or the last slot where it is a stored input;
    y is slot 0, or with `complement` everything but slot 0 (musdb's accompaniment).
    With `targets`, y is every target's `[batch, targets, channels, time]`.
    """
    x = wav[:, -1] if input_slot else wav.sum(1)
    if targets is None:
        return x, (x - wav[:, 0]) if complement else wav[:, 0]
    return x, torch.stack([x - wav[:, t.slot] if t.complement else wav[:, t.slot] for t in targets], dim=1)
