"""Tests of umx.synth: the deterministic synthetic multitrack music behind demos and tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from umx import synth
from umx.audio import read

SR = 44100


@pytest.fixture(scope="module")
def track() -> dict[str, np.ndarray]:
    return synth.generate_track(3, duration=6.0)


def _windows(x: np.ndarray, seconds: float) -> np.ndarray:
    w = int(seconds * SR)
    return x[: len(x) // w * w].reshape(-1, w)


def test_same_seed_is_bit_identical_and_other_seed_differs(track):
    again = synth.generate_track(3, duration=6.0)
    other = synth.generate_track(4, duration=6.0)
    assert list(again) == list(track)
    for name in synth.SOURCES:
        np.testing.assert_array_equal(again[name], track[name])
        assert not np.allclose(other[name], track[name])


def test_shapes_dtypes_and_mixture_headroom(track):
    assert set(track) == set(synth.SOURCES)
    for name, x in track.items():
        assert x.shape == (2, round(6.0 * SR)), name
        assert x.dtype == np.float32, name
        assert np.isfinite(x).all() and np.abs(x).max() > 0.01, name
    for seed in range(3):
        stems = synth.generate_track(seed, duration=3.0, sample_rate=22050, extra_sources=True)
        assert all(x.shape == (2, 66150) for x in stems.values())
        assert np.abs(sum(stems.values())).max() <= 0.9
        assert np.abs(stems["vocals"] + stems["drums"]).max() <= 0.9  # any subset keeps headroom


def test_odd_duration_rounds_frames():
    stems = synth.generate_track(0, duration=1.00001, sample_rate=8000)
    assert all(x.shape == (2, 8000) for x in stems.values())


def test_extra_sources_are_extra_keys_and_keep_the_base_stems():
    base = synth.generate_track(5, duration=3.0)
    extra = synth.generate_track(5, duration=3.0, extra_sources=True)
    added = set(extra) - set(synth.SOURCES)
    assert set(synth.SOURCES) <= set(extra) and added and added <= set(synth.EXTRA_SOURCES)
    # each stem has its own random stream: same signal, only the overall scale may differ
    for name in synth.SOURCES:
        corr = np.corrcoef(base[name].ravel(), extra[name].ravel())[0, 1]
        assert corr > 0.9999, name


def test_vocals_have_rests_and_are_pitched_in_vocal_range(track):
    v = track["vocals"].mean(0).astype(np.float64)
    rms = np.sqrt((_windows(v, 0.2) ** 2).mean(1))
    assert (rms < 1e-4).sum() >= 2, "no silent 200 ms windows: phrases have no rests"
    assert (rms > 0.02 * rms.max()).mean() > 0.3, "vocals mostly silent"
    seg = _windows(v, 0.2)[np.argmax(rms)]
    seg = seg - seg.mean()
    ac = np.correlate(seg, seg, "full")[len(seg) - 1:]
    lo, hi = SR // 1000, SR // 80
    lag = lo + int(np.argmax(ac[lo:hi]))
    assert ac[lag] / ac[0] > 0.8, "vocal note is not periodic"
    assert 150 < SR / lag < 900, f"f0 {SR / lag:.0f} Hz outside a singing range"


def test_drums_have_transients(track):
    d = np.abs(track["drums"].mean(0))
    env = _windows(d, 0.01).max(1)
    rises = env[1:] / (env[:-1] + 1e-6)
    assert (rises > 4).sum() >= 6, "drums have too few sharp onsets"


def test_bass_is_low_and_pads_are_sustained(track):
    bass = track["bass"].mean(0)
    spectrum = np.abs(np.fft.rfft(bass))
    freqs = np.fft.rfftfreq(len(bass), 1 / SR)
    assert 25 < freqs[np.argmax(spectrum)] < 200
    pads = np.sqrt((_windows(track["other"].mean(0), 0.2) ** 2).mean(1))
    assert (pads[3:] > 0.05 * pads.max()).all(), "pads should sound throughout"


def test_channels_differ_for_every_source(track):
    for name, x in track.items():
        assert np.abs(x[0] - x[1]).max() > 1e-3, name


def _rel(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("layout", ["trackfolder_fix", "aligned"])
def test_track_layouts_write_expected_files(tmp_path, layout):
    root = synth.write_layout(layout, tmp_path / "ds", n_train=2, n_valid=1, duration=2.0, ext=".flac")
    assert root == tmp_path / "ds"
    names = synth.SOURCES if layout == "trackfolder_fix" else ("mixture", "vocals")
    expected = {f"{split}/track_{i:03d}/{n}.flac" for split, count in (("train", 2), ("valid", 1))
                for i in range(count) for n in names}
    assert _rel(root) == expected
    for folder in (root / "train").iterdir():
        infos = [sf.info(str(f)) for f in folder.iterdir()]
        assert len({i.frames for i in infos}) == 1, "sources of one track differ in length"
        assert all(i.channels == 2 and i.samplerate == SR and i.subtype == "PCM_16" for i in infos)


def test_musdb_layout_and_exact_mixture(tmp_path):
    root = synth.write_layout("musdb", tmp_path, n_train=2, n_valid=1, duration=2.0)
    tracks = {p.parent.name for p in root.rglob("mixture.wav")}
    assert len(tracks) == 4 and all(" - " in t for t in tracks)
    # n_valid train tracks carry names of MUSDB18's validation list, n_valid more go to test
    assert {p.name for p in (root / "train").iterdir()} & set(synth.MUSDB_VALID_NAMES) == \
        {synth.MUSDB_VALID_NAMES[0]}
    assert len(list((root / "test").iterdir())) == 1 and not (root / "valid").exists()
    for folder in (root / "train").iterdir():
        assert {p.name for p in folder.iterdir()} == {f"{n}.wav" for n in ("mixture", *synth.SOURCES)}
        mix, _ = read(folder / "mixture.wav", dtype="int16")
        total = sum(read(folder / f"{s}.wav", dtype="int16")[0].astype(np.int32) for s in synth.SOURCES)
        assert np.abs(total - mix).max() <= 1  # within PCM16 rounding (exact by construction)


def test_tracks_are_stable_when_more_are_added(tmp_path):
    small = synth.write_layout("aligned", tmp_path / "a", n_train=1, n_valid=0, duration=1.0)
    large = synth.write_layout("aligned", tmp_path / "b", n_train=2, n_valid=1, duration=1.0)
    a, _ = read(small / "train/track_000/vocals.wav", "int16")
    b, _ = read(large / "train/track_000/vocals.wav", "int16")
    np.testing.assert_array_equal(a, b)
    lengths = {sf.info(str(p)).frames for p in large.rglob("mixture.wav")}
    assert len(lengths) > 1 and all(0.8 * SR <= n <= 1.2 * SR for n in lengths)


def test_sourcefolder_is_unaligned(tmp_path):
    root = synth.write_layout("sourcefolder", tmp_path, n_train=2, n_valid=1, duration=1.0)
    for split in ("train", "valid"):
        counts = [len(list((root / split / s).iterdir())) for s in synth.SOURCES]
        assert len(set(counts)) == len(counts), f"{split}: equal file counts {counts}"
    lengths = {sf.info(str(p)).frames for p in (root / "train").rglob("*.wav")}
    assert len(lengths) > 3, "files should differ in length"


def test_trackfolder_var_has_variable_sources_with_vocals(tmp_path):
    root = synth.write_layout("trackfolder_var", tmp_path, n_train=5, n_valid=1, duration=1.0)
    sets = [frozenset(p.stem for p in track.iterdir()) for track in root.glob("*/*")]
    assert len(sets) == 6
    allowed = set(synth.SOURCES) | set(synth.EXTRA_SOURCES)
    for s in sets:
        assert "vocals" in s and len(s) >= 2 and s <= allowed
    assert len(set(sets)) > 1, "every track has the same sources"


def test_unknown_layout_raises(tmp_path):
    with pytest.raises(ValueError, match="nope.*trackfolder_fix"):
        synth.write_layout("nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_main_writes_files(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = synth.main(["trackfolder_fix", str(out), "--train", "1", "--valid", "1", "--duration", "1",
                     "--seed", "2", "--sample-rate", "16000", "--ext", "wav"])
    assert rc == 0
    files = sorted(out.rglob("*.wav"))
    assert len(files) == 8 and all(sf.info(str(f)).samplerate == 16000 for f in files)
    assert str(out) in capsys.readouterr().out


def test_main_rejects_unknown_layout(capsys):
    assert synth.main(["nope", "out"]) == 2  # a value click refuses: one line, exit 2
    assert capsys.readouterr().err.startswith("error: Invalid value for 'LAYOUT': 'nope' is not one of")


def test_musdb_stems_hold_the_same_music(tmp_path):
    wav = synth.write_layout("musdb", tmp_path / "w", n_train=1, n_valid=1, duration=2.0)
    stems = synth.write_layout("musdb", tmp_path / "s", n_train=1, n_valid=1, duration=2.0, as_stems=True)
    files = sorted((stems / "test").glob("*.stem.mp4"))
    assert len(files) == 1 and len(list((stems / "train").glob("*.stem.mp4"))) == 2
    from umx.audio import read_stems
    decoded, rate = read_stems(files[0])
    folder = wav / "test" / files[0].name.removesuffix(".stem.mp4")
    assert rate == SR and decoded.shape[0] == 5
    for i, name in enumerate(synth.MUSDB_STEM_ORDER):
        ref, _ = read(folder / f"{name}.wav")
        assert ref.shape[1] <= decoded.shape[2] <= ref.shape[1] + 4096  # AAC pads the end
        err = decoded[i, :, :ref.shape[1]] - ref
        snr = 10 * np.log10((ref ** 2).sum() / (err ** 2).sum())
        assert snr > 10, (name, snr)  # lossy AAC, but the same music, time-aligned
