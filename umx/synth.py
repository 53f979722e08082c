"""Deterministic synthetic multitrack music: embedded data for demos, tests and benchmarks.

MUSDB18 cannot be downloaded everywhere, so this renders small songs whose stems are
musically plausible and learnable to separate but not trivially: the voice sings in the
song's key over pads in the same register, the bass follows the chord roots, the drums
share the beat. Synthesis is numpy-vectorised (wavetable oscillators, one slice-add per
note), and everything is seeded: the same seed gives bit-identical arrays.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from .audio import to_float32, to_int16, write, write_stems
from .cli_util import Choice, command, option, run_command
from .errors import UmxError
from .layouts.options import LAYOUTS

SOURCES = ("vocals", "bass", "drums", "other")
EXTRA_SOURCES = ("piano", "accordion")

_SCALES = ((0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10), (0, 2, 3, 5, 7, 9, 10), (0, 2, 4, 5, 7, 9, 10))
_PROGRESSIONS = ((0, 5, 3, 4), (0, 3, 4, 3), (5, 3, 0, 4), (0, 4, 5, 3), (0, 6, 5, 4), (0, 3, 0, 4))
_VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))
_LEVELS = {"vocals": 1.0, "bass": 0.8, "drums": 0.9, "other": 0.6, "piano": 0.5, "accordion": 0.45}
_KICKS = ("x.......x.......", "x.....x...x.....", "x.......x.x.....", "x..x....x..x....", "x.....x.x.......")
_SNARES = ("....x.......x...", "....x.......x..x", "....x..x....x...")
_HATS = ("x.x.x.x.x.x.x.x.", "xxxxxxxxxxxxxxxx", "x.xxx.xxx.xxx.xx")
_BASS_RHYTHMS = (  # (start, length, scale-step above the root) in eighth notes
    ((0, 2, 0), (2, 2, 0), (4, 2, 0), (6, 2, 0)),
    ((0, 3, 0), (3, 1, 0), (4, 2, 4), (6, 2, 0)),
    ((0, 6, 0), (6, 2, 4)),
    ((0, 1, 0), (1, 1, 7), (2, 1, 0), (3, 1, 0), (4, 1, 0), (5, 1, 7), (6, 1, 0), (7, 1, 4)),
)
_BITS = 11  # wavetable of 2**11 samples per period
_X = np.arange(2**_BITS + 1) / 2**_BITS  # one guard point: interpolation never wraps
_WORDS = ("Blue", "Morning", "Paper", "Echo", "River", "Neon", "Quiet", "Summer", "Glass", "Road", "Velvet", "Storm")


@dataclass(frozen=True)
class _Plan:
    """The song every stem of a track shares: tempo, key, scale and chord progression."""

    sr: int
    n: int
    beat: float  # seconds
    key: int  # pitch class of the tonic
    scale: tuple[int, ...]
    chords: tuple[int, ...]  # scale degree of each chord's root
    chord_bars: int

    def midi(self, degree: int) -> int:
        """MIDI pitch of a scale degree (0 = tonic in octave 2, may be negative or > 6)."""
        octave, step = divmod(int(degree), 7)
        return 36 + self.key + 12 * octave + self.scale[step]

    def chord(self, bar: int) -> int:
        return self.chords[(bar // self.chord_bars) % len(self.chords)]

    @property
    def bars(self) -> int:
        return int(np.ceil(self.n / self.sr / (4 * self.beat)))


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _osc(freq: float | np.ndarray, amps: np.ndarray, sr: int, phase: float = 0.0, n: int = 0) -> np.ndarray:
    """Band-limited wavetable oscillator → float32 waveform with these harmonic amplitudes.

    `freq` is a constant (then give `n`) or per-sample Hz. The phase is a wrapping uint32
    accumulator: its top 11 bits index the table, the rest interpolate (fast and exact).
    """
    k = np.arange(1, len(amps) + 1)
    amps = np.where(k * np.max(freq) < 0.45 * sr, amps, 0.0)  # drop harmonics that would alias
    table = (amps @ np.sin(2 * np.pi * np.outer(k, _X))).astype(np.float32)
    slope = np.diff(table)
    start = np.uint32(int(phase % 1.0 * 2**32))
    if np.ndim(freq) == 0:
        acc = np.arange(n, dtype=np.uint32) * np.uint32(round(freq / sr * 2**32)) + start
    else:
        acc = np.cumsum(np.rint(freq * (2**32 / sr)).astype(np.uint32), dtype=np.uint32) + start
    i = acc >> np.uint32(32 - _BITS)
    frac = (acc & np.uint32(2 ** (32 - _BITS) - 1)).astype(np.float32) * np.float32(2.0 ** (_BITS - 32))
    return table[i] + frac * slope[i]


def _env(n: int, sr: int, attack: float, release: float, decay: float | None = None) -> np.ndarray:
    """float32 envelope: raised-cosine attack and release (no clicks), optional exponential decay."""
    env = np.exp(np.arange(n) / (-decay * sr)) if decay else np.ones(n)
    a, r = min(n, max(1, int(attack * sr))), min(n, max(1, int(release * sr)))
    env[:a] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    env[n - r:] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(1, r + 1) / r)
    return env.astype(np.float32)


def _add(buf: np.ndarray, start: int, x: np.ndarray) -> None:
    """Mix x into buf (1-d or [2, n]) at start, cut at the buffer's end."""
    end = min(buf.shape[-1], start + x.shape[-1])
    if end > start:
        buf[..., start:end] += x[..., : end - start]


def _pan(x: np.ndarray, pos: float, delay: int = 0) -> np.ndarray:
    """Constant-power pan (pos in [-1, 1]) plus a few samples of inter-channel delay."""
    theta = (pos + 1) * np.pi / 4
    right = np.concatenate([np.zeros(delay, x.dtype), x[: len(x) - delay]]) if delay > 0 else x
    return np.stack([np.cos(theta) * x, np.sin(theta) * right])


def _highpass_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.diff(rng.standard_normal(n + 1)) * 0.5  # first difference: a gentle high-pass


def _vocals(p: _Plan, rng: np.random.Generator) -> np.ndarray:
    """Sung phrases: formant-shaped harmonics, delayed vibrato, a pitch scoop, rests between phrases."""
    out = np.zeros(p.n, np.float32)
    degrees = [d for d in range(-7, 35) if 55 <= p.midi(d) <= 76]
    rate, depth = rng.uniform(5.0, 6.0), rng.uniform(5.0, 30.0)  # Hz, cents
    d = int(rng.integers(2, len(degrees) - 2))
    t = 0.5 * p.beat * rng.integers(1, 3)
    k = np.arange(1, 41)
    while t * p.sr < p.n:
        for _ in range(int(rng.integers(2, 8))):  # one phrase of several notes
            dur = p.beat * float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]))
            d = int(np.clip(d + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]), 0, len(degrees) - 1))
            start, n = int(t * p.sr), int(dur * p.sr)
            t += dur
            if start >= p.n:
                break
            tt = np.arange(n) / p.sr
            cents = depth * np.minimum(1.0, tt / 0.3) * np.sin(2 * np.pi * rate * tt + rng.uniform(0, 6.3))
            f0 = _hz(p.midi(degrees[d]))
            freq = f0 * 2.0 ** ((cents - 40.0 * np.exp(-tt / 0.04)) / 1200.0)
            formants = np.array(_VOWELS[rng.integers(len(_VOWELS))]) * rng.uniform(0.95, 1.05)
            gains, widths = np.array([1.0, 0.5, 0.25])[:, None], np.array([90.0, 120.0, 160.0])[:, None]
            amps = (gains / (1 + ((k * f0 - formants[:, None]) / widths) ** 2)).sum(0) + 0.03 / k
            note = _osc(freq, amps, p.sr, rng.uniform()) * (1 + 0.004 * cents)
            if rng.uniform() < 0.4:  # consonant: a short burst of breath noise
                m = min(n, int(0.03 * p.sr))
                note[:m] += 0.15 * _highpass_noise(rng, m) * np.hanning(m)
            _add(out, start, note * _env(n, p.sr, 0.04, min(0.08, dur / 3)) * rng.uniform(0.7, 1.0))
        t += p.beat * float(rng.choice([1.0, 1.5, 2.0, 3.0, 4.0]))  # rest between phrases
    return _pan(out, rng.uniform(-0.15, 0.15), int(rng.integers(1, 4)))


def _bass(p: _Plan, rng: np.random.Generator) -> np.ndarray:
    """Plucked low notes on the chord roots (and fifths/octaves), a few harmonics."""
    out = np.zeros(p.n, np.float32)
    rhythm = _BASS_RHYTHMS[rng.integers(len(_BASS_RHYTHMS))]
    amps = 1.0 / np.arange(1, 7) ** rng.uniform(1.2, 2.0)
    eighth = p.beat / 2
    for bar in range(p.bars):
        root = p.chord(bar)
        low = 28 + (p.midi(root) - 28) % 12  # E1..D#2
        for pos, length, step in rhythm:
            n = int(length * eighth * p.sr * 0.9)
            f = _hz(low + p.midi(root + step) - p.midi(root))
            note = _osc(f, amps, p.sr, n=n) * _env(n, p.sr, 0.005, 0.02, rng.uniform(0.25, 0.6))
            _add(out, int((bar * 8 + pos) * eighth * p.sr), note * rng.uniform(0.8, 1.0))
    return _pan(out, rng.uniform(-0.1, 0.1), int(rng.integers(1, 4)))


def _drums(p: _Plan, rng: np.random.Generator) -> np.ndarray:
    """Kick (pitch-swept sine), snare (noise + tone), hi-hat (high-passed noise) on a 16-step grid."""
    sr, step = p.sr, p.beat / 4
    t = np.arange(int(0.4 * sr)) / sr
    kick_f = rng.uniform(45, 60) * (1 + 2.5 * np.exp(-t / 0.03))
    kick = np.sin(2 * np.pi * np.cumsum(kick_f) / sr) * np.exp(-t / rng.uniform(0.12, 0.25))
    snare_tone = 0.5 * np.sin(2 * np.pi * rng.uniform(170, 220) * t) * np.exp(-t / 0.05)
    snare_decay, hat_decay = rng.uniform(0.06, 0.12), rng.uniform(0.015, 0.04)
    parts = {name: np.zeros(p.n, np.float32) for name in ("kick", "snare", "hat")}
    patterns = {name: pats[rng.integers(len(pats))] for name, pats in zip(parts, (_KICKS, _SNARES, _HATS))}
    for bar in range(p.bars):
        for name, pattern in patterns.items():
            for s in (i for i, c in enumerate(pattern) if c == "x"):
                vel = rng.uniform(0.7, 1.0) * (0.4 if name == "snare" and s not in (4, 12) else 1.0)
                start = int(((bar * 16 + s) * step + rng.uniform(0, 0.005)) * sr)
                if name == "kick":
                    hit = kick
                elif name == "snare":
                    hit = snare_tone + _highpass_noise(rng, len(t)) * np.exp(-t / snare_decay)
                else:
                    hit = _highpass_noise(rng, len(t) // 4) * np.exp(-t[: len(t) // 4] / hat_decay) * 0.6
                _add(parts[name], start, hit * vel)
    hat_side = int(rng.choice([-1, 1]))
    return (_pan(parts["kick"], 0.0) + _pan(parts["snare"], rng.uniform(-0.2, 0.2), int(rng.integers(1, 6)))
            + _pan(parts["hat"], hat_side * rng.uniform(0.3, 0.6), int(rng.integers(3, 12))))


def _chord_tones(p: _Plan, bar: int, low: int) -> list[int]:
    root = p.chord(bar)
    return [low + (p.midi(root + s) - low) % 12 for s in (0, 2, 4)]


def _pads(p: _Plan, rng: np.random.Generator) -> np.ndarray:
    """Chord pads: two detuned voices per chord tone, slow attack, voices spread across the stereo field."""
    out = np.zeros((2, p.n), np.float32)
    amps = 1.0 / np.arange(1, 11) * np.exp(-np.arange(1, 11) / rng.uniform(3, 6))
    seg, attack = p.chord_bars * 4 * p.beat, rng.uniform(0.2, 0.6)
    detune = rng.uniform(4, 10)
    for bar in range(0, p.bars, p.chord_bars):
        n = int((seg + 0.3) * p.sr)
        env = _env(n, p.sr, attack, 0.3)
        for midi in _chord_tones(p, bar, 55):
            for sign in (-1, 1):
                f = _hz(midi + sign * detune / 100)
                voice = _osc(f, amps, p.sr, rng.uniform(), n) * env
                g = 0.5 + sign * rng.uniform(0.1, 0.4)
                _add(out, int(bar * 4 * p.beat * p.sr), np.stack([np.sqrt(1 - g) * voice, np.sqrt(g) * voice]))
    return out


def _piano(p: _Plan, rng: np.random.Generator) -> np.ndarray:
    """Arpeggiated chords: slightly inharmonic partials, higher partials decay faster."""
    out = np.zeros(p.n, np.float32)
    step, tau = p.beat / int(rng.choice([2, 4])), rng.uniform(0.3, 0.8)
    k = np.arange(1, 7)[:, None]
    for i in range(int(p.n / p.sr / step)):
        tones = _chord_tones(p, int(i * step / (4 * p.beat)), 60)
        f0 = _hz(tones[i % 3] + 12 * (i % 6 >= 3))
        tt = np.arange(int(2 * step * p.sr)) / p.sr
        partials = np.sin(2 * np.pi * f0 * k * np.sqrt(1 + 2e-4 * k**2) * tt) * np.exp(-tt / (tau / k**0.7)) / k
        _add(out, int(i * step * p.sr), partials.sum(0) * _env(len(tt), p.sr, 0.002, 0.03) * rng.uniform(0.6, 1.0))
    return _pan(out, rng.uniform(-0.6, 0.6), int(rng.integers(2, 10)))


def _accordion(p: _Plan, rng: np.random.Generator) -> np.ndarray:
    """Held chord tones on two detuned reeds (musette beating), one reed per side."""
    out = np.zeros((2, p.n), np.float32)
    amps = np.where(np.arange(1, 13) % 2 == 1, 1.0, 0.5) / np.arange(1, 13)
    detune, t = rng.uniform(5, 15), 0.0
    while t * p.sr < p.n:
        dur = p.beat * float(rng.choice([1.0, 2.0, 2.0, 4.0]))
        midi = int(rng.choice(_chord_tones(p, int(t / (4 * p.beat)), 62)))
        n = int(dur * p.sr)
        env = _env(n, p.sr, 0.05, 0.05) * rng.uniform(0.6, 1.0)
        reeds = [_osc(_hz(midi + c / 100), amps, p.sr, n=n) * env for c in (-detune, detune)]
        _add(out, int(t * p.sr), np.stack([0.8 * reeds[0] + 0.3 * reeds[1], 0.3 * reeds[0] + 0.8 * reeds[1]]))
        t += dur
    return out


_SYNTHS = {"vocals": _vocals, "bass": _bass, "drums": _drums, "other": _pads, "piano": _piano, "accordion": _accordion}


def _render(seed: int, duration: float, sample_rate: int, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Render the named stems of song `seed`; each stem has its own random stream so rendering
    a subset gives the same signals, only the final scale differs."""
    if duration <= 0 or sample_rate <= 0:
        raise ValueError(f"duration and sample_rate must be positive, got {duration} and {sample_rate}")
    plan_seq, *stem_seqs = np.random.SeedSequence(seed).spawn(1 + len(_SYNTHS))
    rng = np.random.default_rng(plan_seq)
    plan = _Plan(sample_rate, round(duration * sample_rate), 60.0 / rng.uniform(80, 140), int(rng.integers(12)),
                 _SCALES[rng.integers(len(_SCALES))], _PROGRESSIONS[rng.integers(len(_PROGRESSIONS))],
                 int(rng.integers(1, 3)))
    stems = {}
    for (name, synth), seq in zip(_SYNTHS.items(), stem_seqs):
        if name in names:
            rng = np.random.default_rng(seq)
            x = synth(plan, rng).astype(np.float32, copy=False)
            rms = max(1e-9, float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))
            stems[name] = x * np.float32(_LEVELS[name] * 10 ** (rng.uniform(-6, 6) / 20) / rms)
    # bound the sum of |stems|, so the mixture of ANY subset of stems peaks at < 0.9
    bound = sum(np.abs(x) for x in stems.values()).max()
    scale = np.float32(0.89 / max(1e-9, float(bound)))
    return {name: x * scale for name, x in stems.items()}


def generate_track(seed: int, duration: float = 12.0, sample_rate: int = 44100,
                   extra_sources: bool = False) -> dict[str, np.ndarray]:
    """One synthetic song as float32 stereo stems `[2, frames]`, deterministic in `seed`.

    The stems' mixture (of any subset of them) peaks at <= 0.9. With `extra_sources`, a random
    non-empty subset of EXTRA_SOURCES is added as extra keys (for variable-source layouts).
    """
    names = SOURCES
    if extra_sources:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
        names += tuple(s for s, keep in zip(EXTRA_SOURCES, rng.permutation([True, rng.uniform() < 0.5])) if keep)
    return _render(seed, duration, sample_rate, names)


def _item(seed: int, split: int, kind: int, index: int, duration: float) -> tuple[np.random.Generator, int, float]:
    """Rng, song seed and duration (±20 %) of one dataset item; independent of how many items there are."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, split, kind, index]))
    return rng, int(rng.integers(2**63)), duration * rng.uniform(0.8, 1.2)


def _pcm16(stems: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Round to what PCM16 stores, so a mixture summed here equals the sum of the written files."""
    return {name: to_float32(to_int16(x)) for name, x in stems.items()}


# MUSDB18's fixed validation tracks start with these names (musdb's mus.yaml)
MUSDB_VALID_NAMES = ("Actions - One Minute Smile", "Clara Berry And Wooldog - Waltz For My Victims",
                     "Johnny Lokke - Promises & Lies", "Patrick Talbot - A Reason To Leave")
MUSDB_STEM_ORDER = ("mixture", "drums", "bass", "other", "vocals")  # stream ids of a .stem.mp4


def write_layout(layout: str, root: str | Path, n_train: int = 6, n_valid: int = 2, duration: float = 12.0,
                 seed: int = 0, sample_rate: int = 44100, ext: str = ".wav", as_stems: bool = False,
                 target_ext: str | None = None) -> Path:
    """Write a synthetic dataset in one of the Open-Unmix folder layouts (LAYOUTS) under `root`.

    musdb: `train/` holds n_train tracks plus n_valid tracks named after MUSDB18's
    validation list (so prep's valid split is not empty), `test/` n_valid tracks;
    `as_stems=True` writes MUSDB18's `.stem.mp4` files instead of MUSDB18-HQ folders.
    `target_ext` gives the vocals files their own extension (e.g. vocals.flac beside
    .wav interferers, as in the spec's trackfolder_var example).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    if n_train < 0 or n_valid < 0:
        raise ValueError(f"track counts must be >= 0, got n_train={n_train}, n_valid={n_valid}")
    ext = ".wav" if layout == "musdb" else ext if ext.startswith(".") else "." + ext
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if layout == "musdb" and n_valid > len(MUSDB_VALID_NAMES):
        raise ValueError(f"musdb: at most {len(MUSDB_VALID_NAMES)} validation tracks, got {n_valid}")
    n_extra = n_valid if layout == "musdb" else 0
    splits = (("train", n_train + n_extra), ("test" if layout == "musdb" else "valid", n_valid))
    for split, (split_dir, count) in enumerate(splits):
        if layout == "sourcefolder":  # unaligned: unequal file counts per source, own song per file
            counts = count + np.random.default_rng([seed, split]).permutation(len(SOURCES)) if count else [0] * 4
            for kind, (source, n_files) in enumerate(zip(SOURCES, counts), start=1):
                for i in range(n_files):
                    (root / split_dir / source).mkdir(parents=True, exist_ok=True)
                    _, song, dur = _item(seed, split, kind, i, duration)
                    audio = _render(song, dur, sample_rate, (source,))[source]
                    write(root / split_dir / source / f"clip_{i:03d}{ext}", audio, sample_rate)
            continue
        for i in range(count):
            rng, song, dur = _item(seed, split, 0, i, duration)
            stems = _pcm16(generate_track(song, dur, sample_rate, extra_sources=layout == "trackfolder_var"))
            mixture = sum(stems[s] for s in SOURCES)
            if layout == "musdb":
                title = " ".join(rng.choice(_WORDS, 2, replace=False))
                files = {"mixture": mixture, **{s: stems[s] for s in SOURCES}}
                track = f"Synth Artist {i:03d} - {title}"
                if split_dir == "train" and i >= n_train:
                    track = MUSDB_VALID_NAMES[i - n_train]
                if as_stems:
                    (root / split_dir).mkdir(parents=True, exist_ok=True)
                    write_stems(root / split_dir / f"{track}.stem.mp4",
                                np.stack([files[s] for s in MUSDB_STEM_ORDER]), sample_rate)
                    continue
            elif layout == "aligned":
                files, track = {"mixture": mixture, "vocals": stems["vocals"]}, f"track_{i:03d}"
            elif layout == "trackfolder_var":
                others = [s for s in stems if s != "vocals"]
                chosen = set(rng.choice(others, int(rng.integers(1, len(others) + 1)), replace=False))
                files = {s: x for s, x in stems.items() if s == "vocals" or s in chosen}
                track = f"track_{i:03d}"
            else:
                files, track = {s: stems[s] for s in SOURCES}, f"track_{i:03d}"
            (root / split_dir / track).mkdir(parents=True, exist_ok=True)
            for name, audio in files.items():
                suffix = target_ext if target_ext and name == "vocals" and layout != "musdb" else ext
                write(root / split_dir / track / f"{name}{suffix}", audio, sample_rate)
    return root


@command("umx-synth", epilog="\b\nExample:\n  umx-synth trackfolder_fix /tmp/data --train 4 --valid 2 --duration 6",
         help="Write a deterministic synthetic music dataset: LAYOUT (a dataset folder layout) into the "
              "folder OUT (created).")
@click.argument("layout", type=Choice(LAYOUTS), metavar="LAYOUT")
@click.argument("out", metavar="OUT")
@option("--train", type=click.IntRange(min=0), default=6, help="training tracks")
@option("--valid", type=click.IntRange(min=0), default=2, help="validation tracks, 'test' for musdb")
@option("--duration", type=float, default=12.0, help="mean track length in seconds")
@option("--seed", type=int, default=0, help="dataset seed")
@option("--sample-rate", type=int, default=44100, help="Hz")
@option("--ext", default=".wav", help="audio file extension (musdb is always .wav)")
@option("--stems", is_flag=True, help="musdb: write MUSDB18 .stem.mp4 files (needs ffmpeg)")
def cli(layout: str, out: str, train: int, valid: int, duration: float, seed: int, sample_rate: int, ext: str,
        stems: bool) -> int:
    try:
        root = write_layout(layout, out, train, valid, duration, seed, sample_rate, ext, as_stems=stems)
    except (UmxError, ValueError) as e:
        print(f"umx-synth: error: {e}", file=sys.stderr)
        return 1
    per = " (+0..3 files per source folder)" if layout == "sourcefolder" else ""
    split = "test" if layout == "musdb" else "valid"
    print(f"umx-synth: wrote {train} train + {valid} {split} tracks{per} ({layout}) to {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`umx-synth LAYOUT OUT`: write a synthetic dataset (thin wrapper over write_layout)."""
    return run_command(cli, argv, "umx-synth")


if __name__ == "__main__":
    raise SystemExit(main())
