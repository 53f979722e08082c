"""Repitch (umx/train/augment.py): Demucs' repitch augmentation on the device.

Statistical checks run on seeded generators, so each is deterministic; their bounds are the
p = 0.001 (or tighter) quantiles of the right distribution, which a wrong draw misses by far.
Signal checks measure what Demucs' soundstretch call promises: the pitch times 2^(semitones / 12)
and the tempo times 1 + tempo / 100, all sources of a sample alike.
"""

import math

import pytest
import torch

from pitch_measure import cents, peak_hz
from umx.train.augment import SYNTAX, Augment, Pitch, Repitch, Shift, parse_augmentation

SR = 44100

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: shared cores, no spinning OpenMP teams


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _params(*rows):
    """`(repitched, semitones, tempo)` rows → Repitch's `[batch, 3]` draw."""
    return torch.tensor(rows, dtype=torch.float64)


def _tone(freq, n, batch=1, rows=(1, 1)):
    t = torch.arange(n, dtype=torch.float64)
    return torch.sin(2 * math.pi * freq * t / SR).float().expand(batch, *rows, n).clone()


def _input_frame(repitch, n, tempo):
    """The input frame output frame `n` plays at `tempo` percent (the docstring's mapping)."""
    start = repitch.margin - repitch.k0_hop
    return repitch.k0_hop + (start + n) * (1 + tempo / 100)


# --- draws -------------------------------------------------------------------------------------------

def test_semitones_are_whole_and_uniform_over_the_range():
    draws = Repitch().draw(torch.zeros(20000, 1, 1, 1), _gen())
    assert draws.shape == (20000, 3) and draws.dtype == torch.float64
    semitones = draws[:, 1]
    assert torch.equal(semitones, semitones.round())  # whole semitones, as Demucs' randint
    counts = torch.bincount(semitones.long() + 2, minlength=5).double()
    assert len(counts) == 5 and torch.all(counts > 0)  # -2 and +2 both reachable, nothing beyond
    chi2 = ((counts - 4000) ** 2 / 4000).sum().item()
    assert chi2 < 18.5  # chi-square, 4 degrees of freedom, p = 0.001
    assert torch.equal(Repitch(max_pitch=0).draw(torch.zeros(100, 1, 1, 1), _gen())[:, 1], torch.zeros(100))


def test_tempo_is_a_clipped_gaussian():
    n, std, clip = 20000, 5.0, 12.0
    tempo = Repitch(max_tempo=clip, tempo_std=std).draw(torch.zeros(n, 1, 1, 1), _gen(1))[:, 2]
    assert tempo.abs().max() == clip  # clipped, and the clip reached
    clipped = (tempo.abs() == clip).double().mean().item()
    p_clip = math.erfc(clip / std / math.sqrt(2))  # P(|N(0, std)| > clip) = 0.0164
    assert abs(clipped - p_clip) < 3.5 * math.sqrt(p_clip * (1 - p_clip) / n)
    # the rest follow N(0, std) truncated to (-clip, clip): Kolmogorov-Smirnov, p = 0.001
    inner = torch.sort(tempo[tempo.abs() < clip]).values
    m = len(inner)
    phi = torch.special.ndtr(inner / std)
    lo, hi = math.erfc(clip / std / math.sqrt(2)) / 2, 1 - math.erfc(clip / std / math.sqrt(2)) / 2
    cdf = (phi - lo) / (hi - lo)
    i = torch.arange(1, m + 1, dtype=torch.float64)
    assert max((i / m - cdf).max().item(), (cdf - (i - 1) / m).max().item()) < 1.95 / math.sqrt(m)


def test_proba_is_the_fraction_repitched():
    n = 20000
    for proba in (0.2, 0.7):
        on = Repitch(proba).draw(torch.zeros(n, 1, 1, 1), _gen(2))[:, 0]
        assert torch.all((on == 0) | (on == 1))
        assert abs(on.mean().item() - proba) < 3.5 * math.sqrt(proba * (1 - proba) / n)
    assert torch.all(Repitch(0.0).draw(torch.zeros(n, 1, 1, 1), _gen())[:, 0] == 0)
    assert torch.all(Repitch(1.0).draw(torch.zeros(n, 1, 1, 1), _gen())[:, 0] == 1)


def test_draws_are_reproducible_and_independent_per_sample():
    wav = torch.zeros(20000, 4, 2, 1)
    a = Repitch().draw(wav, _gen(3))
    assert torch.equal(a, Repitch().draw(wav, _gen(3)))
    assert not torch.equal(a, Repitch().draw(wav, _gen(4)))
    # one draw per sample (not per batch): neighbours' semitones agree 1 time in 5, tempi never
    assert abs((a[1:, 1] == a[:-1, 1]).double().mean().item() - 0.2) < 0.01  # 3.5 sigma = 0.0099
    assert len(torch.unique(a[:, 2])) > 19000  # (the ~330 clipped ones share ±12)
    # and the three draws of a sample independent of each other: |correlation| < 3.5 / sqrt(n)
    corr = torch.corrcoef(a.T)
    assert (corr - torch.eye(3, dtype=torch.float64)).abs().max() < 0.025


# --- what the output is ------------------------------------------------------------------------------

def test_proba_zero_gives_the_plain_crop():
    repitch, out_len = Repitch(0.0), 3000
    wav = torch.randn(3, 4, 2, repitch.frames_needed(out_len), generator=_gen(11))
    crop = wav[..., repitch.margin:repitch.margin + out_len]
    assert torch.equal(repitch(wav, _gen(), out_len), crop)


def test_samples_not_repitched_are_exactly_the_crop():
    repitch, out_len = Repitch(), 3000
    wav = torch.randn(4, 2, 2, repitch.frames_needed(out_len), generator=_gen(12))
    params = _params((0, 2, 12), (1, 2, 12), (0, -1, -7.5), (1, 0, 0))
    out = repitch.apply(wav, params, out_len)
    crop = wav[..., repitch.margin:repitch.margin + out_len]
    assert torch.equal(out[0], crop[0]) and torch.equal(out[2], crop[2])  # whatever their semitones and tempo
    assert (out[1] - crop[1]).abs().max() > 0.5  # the drawn ones are changed


def test_a_zero_draw_is_close_to_the_crop():
    """Repitched by 0 semitones at tempo 0: the vocoder reads whole frames with their own phases
    and the sinc reads whole samples, so a band-limited signal comes back; what is left is float32
    rounding in the phase sums and the sinc's passband ripple (measured 1.4e-4 of a full-scale sum)."""
    repitch, out_len = Repitch(1.0), 16384
    n = repitch.frames_needed(out_len)
    t = torch.arange(n, dtype=torch.float64)
    freqs = (110.0, 440.0, 1234.5, 3000.0, 7000.0, 12000.0)  # up to 0.54 of Nyquist: in the sinc's passband
    x = (sum(torch.sin(2 * math.pi * f * t / SR + i) for i, f in enumerate(freqs)) / len(freqs)).float()
    wav = x.expand(2, 1, 2, n).clone()
    out = repitch.apply(wav, _params((1, 0, 0), (1, 0, 0)), out_len)
    crop = wav[..., repitch.margin:repitch.margin + out_len]
    assert (out - crop).abs().max() < 2e-3


def test_tempo_zero_is_pitch():
    """At tempo 0 the stretch is Pitch's r, so Repitch runs Pitch's very operations on the same
    frames; only the crop is longer (for the fast tempi), which can move a value between a
    kernel's vectorised body and its scalar tail: a few float32 ulps at most (measured: equal)."""
    repitch, pitch, out_len = Repitch(), Pitch(2), 6000
    wav = torch.randn(5, 2, 2, repitch.frames_needed(out_len), generator=_gen(13))
    semitones = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    params = torch.stack([torch.ones_like(semitones), semitones, torch.zeros_like(semitones)], 1)
    out = repitch.apply(wav, params, out_len)
    want = pitch.apply(wav[..., :pitch.frames_needed(out_len)], semitones, out_len)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("semitones, tempo", [(2, 0), (2, 10), (2, -12), (-2, 12), (1, -5), (0, 10), (0, -10)])
def test_pitch_moves_by_the_semitones_whatever_the_tempo(semitones, tempo):
    repitch, out_len, freq = Repitch(), 32768, 1234.5
    wav = _tone(freq, repitch.frames_needed(out_len))
    out = repitch.apply(wav, _params((1, semitones, tempo)), out_len)
    assert out.shape == (1, 1, 1, out_len)
    err = cents(peak_hz(out[0, 0, 0], SR), torch.tensor(freq * 2 ** (semitones / 12))).abs().item()
    assert err < 5, err  # measured < 0.01 cents; a semitone is 100, a 10 % tempo read as pitch 165
    level = out[..., 2000:-2000].abs().amax(-1)
    assert torch.all((level > 0.97) & (level < 1.03))  # a steady tone stays a steady tone


def _bursts(x, width):
    """The energy centres of the bursts in `x` `[time]`: runs of its energy (smoothed over 1025
    frames, two hops, against the vocoder's ripple at its hop) above the floor (the median) that
    reach over a quarter of the highest burst, joined across gaps under `width / 2`; those touching an end
    are left out."""
    energy = torch.nn.functional.avg_pool1d(x.double().square()[None, None], 1025, 1, padding=512)[0, 0]
    energy = (energy - energy.median()).clamp_min(0)
    above = torch.cat([torch.tensor([False]), energy > 0.25 * energy.max(), torch.tensor([False])]).to(torch.int8)
    runs = []
    for a, b in zip((above.diff() == 1).nonzero()[:, 0].tolist(), (above.diff() == -1).nonzero()[:, 0].tolist()):
        if runs and a - runs[-1][1] < width / 2:
            runs[-1][1] = b
        else:
            runs.append([a, b])
    return torch.stack([(energy[a:b] * torch.arange(a, b)).sum() / energy[a:b].sum()
                        for a, b in runs if a > 0 and b < len(x)])


@pytest.mark.parametrize("tempo", [10.0, -10.0, 12.0])
def test_tempo_moves_the_onsets(tempo):
    """Tone bursts every 4410 frames come out every 4410 / (1 + tempo / 100), where the docstring's
    mapping puts them. Smooth bursts over a steady floor, not clicks: a phase vocoder smears a click
    over its window and scrambles it, and after digital silence it loses the phase relations between
    bins. Each burst found must lie within half a window (n_fft / 2 = 1024 frames: how far the
    vocoder's phases can move energy within a frame) of where the tempo puts one,
    and each burst expected must be found there; at tempo 0 the fourth would be 1200 frames off."""
    repitch, out_len, period, width = Repitch(), 32768, 4410, 2048
    n = repitch.frames_needed(out_len)
    t = torch.arange(n, dtype=torch.float64)
    centres = torch.arange(repitch.margin + 1500, n - width, period, dtype=torch.float64)
    d = (t[:, None] - centres) / width
    envelope = 0.3 + torch.where(d.abs() < 0.5, torch.cos(math.pi * d) ** 2, 0).sum(1)
    wav = (envelope * torch.sin(2 * math.pi * 1000 * t / SR)).float()[None, None, None]
    got = _bursts(repitch.apply(wav, _params((1, 0, tempo)), out_len)[0, 0, 0], width)
    out_frames = torch.arange(out_len, dtype=torch.float64)
    want = torch.stack([out_frames[(_input_frame(repitch, out_frames, tempo) - c).abs().argmin()] for c in centres])
    assert len(got) >= 5
    distance, burst = (got[:, None] - want).abs().min(1)
    assert distance.max() < 1024  # every burst found is one expected (measured <= 383),
    inside = want[(want > width) & (want < out_len - width)]
    assert (inside[:, None] - got).abs().amin(1).max() < 1024  # and every one expected is found
    spacing = (got[-1] - got[0]) / (burst[-1] - burst[0])
    assert abs(spacing * (1 + tempo / 100) / period - 1) < 0.04  # measured <= 1.4 %; tempo 0 would be >= 9 % off


def test_all_sources_of_a_sample_alike_samples_each_their_own():
    repitch, out_len = Repitch(1.0), 4096
    one = torch.randn(1, 1, 2, repitch.frames_needed(out_len), generator=_gen(14))
    wav = one.expand(6, 3, 2, -1).clone()  # six identical samples of three identical sources
    draws = repitch.draw(wav, _gen(5))
    out = repitch(wav, _gen(5), out_len)
    assert torch.equal(out, repitch.apply(wav, draws, out_len))  # forward is its draw applied
    assert out.shape == (6, 3, 2, out_len)
    torch.testing.assert_close(out[:, 1:], out[:, :1].expand(-1, 2, -1, -1), rtol=0, atol=1e-6)
    # (same operations on the same values; atol only for a kernel's vectorised body against its tail)
    assert len(torch.unique(draws[:, 2])) == 6  # six different tempi,
    for i in range(6):
        for j in range(i):
            assert (out[i] - out[j]).abs().max() > 0.1  # six different outputs


# --- lengths -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("semitones, tempo", [(-2, 12), (2, 12), (-2, -12)])
def test_frames_needed_holds_the_fastest_tempo(semitones, tempo):
    """The last output frame at +12 % (reading furthest) and at the extremes of the stretch: the
    output is full level to its last frame, and does not change when the crop goes on beyond
    frames_needed, so no read reached stft's reflected padding or a clamped frame."""
    repitch, out_len = Repitch(), 8192
    need = repitch.frames_needed(out_len)
    assert need >= math.ceil(_input_frame(repitch, out_len - 1, 12.0)) + repitch.n_fft
    longer = _tone(500.0, need + 5000)
    out = repitch.apply(longer[..., :need], _params((1, semitones, tempo)), out_len)
    assert out.shape == (1, 1, 1, out_len)
    period = math.ceil(SR / (500 * 2 ** (-2 / 12)))
    assert out[..., -period:].abs().max() > 0.95  # not silent nor faded at the end
    assert out[..., :period].abs().max() > 0.95
    torch.testing.assert_close(out, repitch.apply(longer, _params((1, semitones, tempo)), out_len),
                               rtol=0, atol=1e-5)  # float32 ulps of a differently long stft
    with pytest.raises(ValueError, match=f"{out_len} output frames need {need} input frames, got {need - 1}"):
        repitch.apply(longer[..., :need - 1], _params((1, semitones, tempo)), out_len)


def test_frames_needed_grows_with_the_tempo_range():
    out_len = 44100
    assert Repitch(max_tempo=0).frames_needed(out_len) == Pitch(2).frames_needed(out_len)  # Pitch's at tempo 0
    needs = [Repitch(max_tempo=m).frames_needed(out_len) for m in (0, 6, 12, 24)]
    assert needs == sorted(needs) and needs[2] - needs[0] > 0.12 * out_len


# --- specs and Augment -------------------------------------------------------------------------------

def test_parse_repitch():
    default = parse_augmentation("repitch")
    assert isinstance(default, Repitch)
    assert (default.proba, default.max_pitch, default.max_tempo, default.tempo_std) == (0.2, 2, 12.0, 5.0)  # Demucs'
    given = parse_augmentation("repitch:1:2:10:3")
    assert (given.proba, given.max_pitch, given.max_tempo, given.tempo_std) == (1.0, 2, 10.0, 3.0)
    assert isinstance(given.max_pitch, int)
    assert "\n  repitch[:PROBA[:MAX_PITCH[:MAX_TEMPO[:TEMPO_STD]]]]" in SYNTAX and "[0.2, 2, 12, 5]" in SYNTAX


@pytest.mark.parametrize("spec, message", [
    ("repitch:2", r"PROBA must be a number in \[0, 1\]"),
    ("repitch:0.2:1.5", "MAX_PITCH must be an integer"),
    ("repitch:0.2:2:100", r"MAX_TEMPO must be a number in \[0, 50\]"),
    ("repitch:0.2:2:12:-1", "TEMPO_STD must be a number"),
    ("repitch:0.2:2:12:5:1", "at most 4 parameter"),
])
def test_parse_bad_repitch(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_augmentation(spec)
    assert repr(spec) in str(info.value) and "\n" not in str(info.value)


def test_augment_chains_repitch():
    repitch = Repitch()
    assert Augment(["repitch"]).input_frames(5000) == repitch.frames_needed(5000)
    aug = Augment(["repitch", "shift:100", "gain"])
    assert aug.input_frames(5000) == repitch.frames_needed(Shift(100).frames_needed(5000))
    pcm = torch.randint(-3000, 3000, (3, 2, 2, aug.input_frames(5000)), dtype=torch.int16)
    out = aug(pcm, _gen(6), 5000)
    assert out.shape == (3, 2, 2, 5000) and torch.equal(out, aug(pcm, _gen(6), 5000))
