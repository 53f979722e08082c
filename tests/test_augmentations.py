"""Shift, FlipSign, Scale, Speed, Pitch, spec parsing and Augment's lengths (umx/train/augment.py).

Statistical checks run on seeded generators, so each is deterministic; the thresholds are the
p = 0.001 (or tighter) quantiles of the right distribution, which a wrong module misses by far.
"""

import math

import pytest
import torch

from pitch_measure import cents, peak_hz
from umx.train.augment import (AUGMENTATIONS, SYNTAX, Augment, FlipSign, Gain, Pitch, Scale, Shift, Speed,
                               parse_augmentation)

SR = 44100


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: shared cores, no spinning OpenMP teams


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _ks_uniform(values, low, high):
    """Kolmogorov–Smirnov distance between `values` and U(low, high)."""
    x = torch.sort((values.double().flatten() - low) / (high - low)).values
    n = len(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - x).max().item(), (x - (i - 1) / n).max().item())


def _ks_ok(values, low, high):
    return _ks_uniform(values, low, high) < 1.95 / math.sqrt(values.numel())  # p = 0.001


def _tone(freq, n, batch=1, rows=(1, 1), amp=1.0, start=0):
    t = torch.arange(n, dtype=torch.float64)
    x = amp * torch.sin(2 * math.pi * freq * t / SR) * (t >= start)
    return x.float().expand(batch, *rows, n).clone()


def _max_step(freq, amp=1.0):
    """The largest sample-to-sample change of a sine: 2 A sin(pi f / sr)."""
    return 2 * amp * math.sin(math.pi * freq / SR)


# --- shift -------------------------------------------------------------------------------------------

def test_shift_cuts_each_source_at_a_uniform_offset():
    max_shift, out_len = 9, 50
    ramp = torch.arange(out_len + max_shift, dtype=torch.float32).expand(2000, 4, 2, -1)
    out = Shift(max_shift)(ramp, _gen(), out_len)
    assert out.shape == (2000, 4, 2, out_len)
    offsets = out[..., 0, 0].long()
    assert torch.equal(offsets, Shift(max_shift).draw(ramp, _gen()))  # the cut is at the drawn offset
    cut = (offsets[:, :, None, None] + torch.arange(out_len)).float()
    assert torch.equal(out, cut.expand_as(out))  # a plain cut, the same in every channel
    counts = torch.bincount(offsets.flatten(), minlength=max_shift + 1).double()
    assert len(counts) == max_shift + 1  # both ends 0 and max_shift reachable, nothing beyond
    expected = offsets.numel() / (max_shift + 1)
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001
    assert (offsets[:, 1:] != offsets[:, :1]).float().mean() > 0.85  # per source, not per sample


def test_shift_offsets_uniform_for_a_large_range():
    offsets = Shift(8192).draw(torch.zeros(5000, 4, 1, 1), _gen(1))
    assert offsets.min() >= 0 and offsets.max() <= 8192 and offsets.max() > 8180
    assert _ks_ok(offsets.double() + 0.5, 0, 8193)


def test_shift_wants_a_longer_crop():
    shift = Shift(100)
    assert shift.frames_needed(1000) == 1100
    assert shift(torch.zeros(1, 1, 1, 1100), _gen()).shape[-1] == 1000  # default: all it can
    with pytest.raises(ValueError, match="1000 output frames need 1100 input frames, got 1099"):
        shift(torch.zeros(1, 1, 1, 1099), _gen(), 1000)


# --- flipsign, scale ---------------------------------------------------------------------------------

def test_flipsign_rate_and_magnitude():
    wav = torch.rand(4000, 4, 2, 16) + 0.1
    out = FlipSign()(wav, _gen())
    assert torch.equal(out.abs(), wav.abs())
    sign = out / wav
    assert torch.all(sign == sign[:, :, :1, :1])  # one sign per source of a sample
    flipped = (sign[:, :, 0, 0] < 0).double()
    assert abs(flipped.mean().item() - 0.5) < 0.02  # 16000 draws: 3.5 sigma = 0.014
    assert (flipped[:, 1:] != flipped[:, :1]).double().mean() > 0.4  # per source
    assert torch.equal(FlipSign(0.0)(wav, _gen()), wav) and torch.equal(FlipSign(1.0)(wav, _gen()), -wav)


def test_scale_one_factor_per_sample_in_range():
    wav = torch.ones(5000, 4, 2, 8)
    out = Scale(0.5, 1.5)(wav, _gen())
    factor = out[:, 0, 0, 0]
    assert torch.all(out == factor[:, None, None, None])  # every source and channel of a sample alike
    assert factor.min() >= 0.5 and factor.max() <= 1.5
    assert _ks_ok(factor, 0.5, 1.5)
    assert len(torch.unique(factor)) > 4900  # per sample, not one for the batch
    with pytest.raises(ValueError, match="above HIGH"):
        Scale(1.5, 0.5)


# --- speed -------------------------------------------------------------------------------------------

def test_speed_factors_uniform_in_range():
    factors = Speed(0.08).draw(torch.zeros(20000, 1, 1, 1), _gen())
    assert factors.min() >= 0.92 and factors.max() <= 1.08
    assert _ks_ok(factors, 0.92, 1.08)


def test_speed_multiplies_frequency_by_the_factor():
    speed, out_len, freq = Speed(0.08), 32768, 1234.5
    wav = _tone(freq, speed.frames_needed(out_len), batch=12, rows=(2, 1))
    factors = speed.draw(wav, _gen(2))
    out = speed(wav, _gen(2), out_len)
    assert out.shape == (12, 2, 1, out_len)
    assert torch.equal(out[:, 0], out[:, 1])  # all sources of a sample alike
    err = cents(peak_hz(out[:, 0, 0], SR), freq * factors).abs().max().item()
    assert err < 5, err  # measured ~0.001 cents
    assert (factors.max() - factors.min()) > 0.05  # the batch really spread over the range


def test_speed_extremes_and_anti_aliasing():
    speed, out_len = Speed(0.08), 16384
    n = speed.frames_needed(out_len)
    factors = torch.tensor([0.92, 1.08], dtype=torch.float64)
    out = speed.apply(_tone(2000.0, n, batch=2), factors, out_len)
    assert cents(peak_hz(out[:, 0, 0], SR), 2000 * factors).abs().max() < 5
    # a tone just below the input's Nyquist would alias to ~0.93 Nyquist when read 8 % faster
    near_nyquist = torch.sin(math.pi * 0.99 * torch.arange(n)).float()[None, None, None]
    assert speed.apply(near_nyquist, factors[1:], out_len).square().mean().sqrt() < 0.01 * 0.5 ** 0.5


# --- pitch -------------------------------------------------------------------------------------------

def test_pitch_draws_uniform_semitones():
    semitones = Pitch(2).draw(torch.zeros(20000, 1, 1, 1), _gen())
    assert semitones.min() >= -2 and semitones.max() <= 2
    assert _ks_ok(semitones, -2, 2)


def test_pitch_shifts_a_tone_by_the_given_semitones():
    pitch, out_len, freq = Pitch(2), 32768, 1234.5
    semitones = torch.tensor([-2, -1.3, -0.5, 0, 0.7, 1, 2], dtype=torch.float64)
    wav = _tone(freq, pitch.frames_needed(out_len), batch=len(semitones))
    out = pitch.apply(wav, semitones, out_len)
    assert out.shape == (len(semitones), 1, 1, out_len)  # duration kept
    err = cents(peak_hz(out[:, 0, 0], SR), freq * 2 ** (semitones / 12)).abs().max().item()
    assert err < 5, err  # measured ~0.001 cents
    level = out[..., 1000:-1000].abs().amax(-1)
    assert torch.all((level > 0.97) & (level < 1.03))  # a steady tone stays a steady tone


def test_pitch_keeps_the_tempo():
    """An onset stays where it was: a plain resampling by 2^(±2/12) would move it by over 1000 frames."""
    pitch, out_len, onset = Pitch(2), 20000, 10000
    semitones = torch.tensor([-2.0, 2.0], dtype=torch.float64)
    wav = _tone(440.0, pitch.frames_needed(out_len), batch=2, start=pitch.margin + onset)
    out = pitch.apply(wav, semitones, out_len)[:, 0, 0]
    for row in out:
        assert abs((row.abs() > 0.5).nonzero()[0].item() - onset) < 512  # within a hop (the window smears it)


def test_pitch_forward_is_its_draw_applied():
    pitch = Pitch(2)
    wav = torch.randn(3, 2, 2, pitch.frames_needed(4000))
    assert torch.equal(pitch(wav, _gen(5), 4000), pitch.apply(wav, pitch.draw(wav, _gen(5)), 4000))


# --- no clicks at the crop edges ---------------------------------------------------------------------

@pytest.mark.parametrize("specs", [["shift:1000"], ["shift:1000", "speed:0.08"], ["pitch:2"]])
def test_no_clicks_at_the_edges(specs):
    aug, seq_len, freq = Augment(specs), 8192, 500.0
    pcm = (_tone(freq, aug.input_frames(seq_len), batch=8, rows=(2, 2), amp=0.5) * 32767).round().short()
    out = aug(pcm, _gen(3), seq_len)
    assert out.shape == (8, 2, 2, seq_len)
    # a zero-padded or tapered edge, or a seam, would jump or fade far beyond the tone's own slope
    fastest = freq * (1.08 if "speed:0.08" in specs else 2 ** (2 / 12))
    assert out.diff(dim=-1).abs().max() < 1.02 * _max_step(fastest, 0.5)
    period = math.ceil(SR / (freq * 0.89))
    for edge in (out[..., :period], out[..., -period:]):
        assert torch.all(edge.abs().amax(-1) > 0.48)  # full level right to the first and last frame


# --- determinism -------------------------------------------------------------------------------------

def test_same_seed_same_output_other_seed_differs():
    aug = Augment(["shift:64", "speed:0.05", "pitch:1", "gain", "scale", "flipsign", "channelswap"], "independent")
    pcm = torch.randint(-3000, 3000, (4, 3, 2, aug.input_frames(6000)), dtype=torch.int16)
    a, b = aug(pcm, _gen(7), 6000), aug(pcm, _gen(7), 6000)
    assert torch.equal(a, b)
    assert not torch.equal(a, aug(pcm, _gen(8), 6000))
    staged = pcm[..., :aug.input_frames(6000)].float() / 32768
    gen = _gen(7)
    for _, fn in aug.stages(6000):  # the stages one by one: the same draws, the same result
        staged = fn(staged, gen)
    assert torch.equal(staged, a)


# --- spec parsing ------------------------------------------------------------------------------------

def test_parse_good_specs():
    assert isinstance(parse_augmentation("gain"), Gain)
    assert parse_augmentation("shift:8192").max_shift == 8192
    assert parse_augmentation("speed:0.08").max_change == 0.08
    assert parse_augmentation("pitch:2").max_semitones == 2
    scale = parse_augmentation("scale:0.25:1.25")
    assert isinstance(scale, Scale) and (scale.low, scale.high) == (0.25, 1.25)
    assert parse_augmentation(" Scale:0.5 ").low == 0.5 and parse_augmentation("scale:0.5").high == 1.25
    assert parse_augmentation("flipsign").p == 0.5 and parse_augmentation("channelswap:1").p == 1
    for name in AUGMENTATIONS:
        assert f"\n  {name}" in SYNTAX
    assert "[8192]" in SYNTAX and "[0.25, 1.25]" in SYNTAX


@pytest.mark.parametrize("spec, message", [
    ("reverb", "unknown source augmentation 'reverb'"),
    ("shift:lots", "MAX_SHIFT must be an integer"),
    ("shift:81.5", "MAX_SHIFT must be an integer"),
    ("shift:-1", r"in \[0, "),
    ("speed:0.9", r"MAX_CHANGE must be a number in \[0, 0.5\]"),
    ("speed:nan", "MAX_CHANGE must be a number"),
    ("pitch:", "MAX_SEMITONES must be a number"),
    ("pitch:24", r"\[0, 12\]"),
    ("scale:1.5:0.5", "LOW 1.5 is above HIGH 0.5"),
    ("gain:0.25:1.25:2", "at most 2 parameter"),
    ("flipsign:1.5", "P must be a number"),
])
def test_parse_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_augmentation(spec)
    assert repr(spec) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        Augment(["gain", spec])


# --- Augment lengths ---------------------------------------------------------------------------------

def test_input_frames_chain_in_reverse():
    shift, speed, pitch = Shift(100), Speed(0.08), Pitch(2)
    aug = Augment(["gain", "shift:100", "speed:0.08", "flipsign", "pitch:2"])
    assert aug.input_frames(5000) == shift.frames_needed(speed.frames_needed(pitch.frames_needed(5000)))
    other = Augment(["pitch:2", "speed:0.08", "shift:100"])
    assert other.input_frames(5000) == pitch.frames_needed(speed.frames_needed(shift.frames_needed(5000)))
    assert Augment(["gain", "channelswap", "scale"]).input_frames(5000) == 5000
    assert Augment([]).input_frames(5000) == 5000


def test_forward_returns_seq_len_frames():
    aug = Augment(["shift:100", "speed:0.08", "pitch:2"], "joint", keep=1)
    need = aug.input_frames(3000)
    pcm = torch.randint(-1000, 1000, (3, 3, 2, need + 77), dtype=torch.int16)
    assert aug(pcm, _gen(), 3000).shape == (3, 3, 2, 3000)  # a longer crop: its start is used
    with pytest.raises(ValueError, match=f"need crops of {need} frames, got {need - 1}"):
        aug(pcm[..., :need - 1], _gen(), 3000)
    with pytest.raises(ValueError, match="give seq_len"):
        aug(pcm, _gen())
    plain = Augment(["gain", "channelswap"])
    assert plain(pcm, _gen(), 3000).shape[-1] == 3000
    assert torch.equal(plain(pcm, _gen(4)), plain(pcm, _gen(4)))  # no seq_len: the length it was given
    assert plain(pcm, _gen(4)).shape[-1] == need + 77
