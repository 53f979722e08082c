import numpy as np
import pytest

from umx import audio
from umx.errors import AudioError


def test_roundtrip_int16_exact(tmp_path):
    pcm = (np.random.default_rng(0).integers(-32768, 32767, size=(2, 1000))).astype(np.int16)
    path = tmp_path / "a.wav"
    audio.write(path, audio.to_float32(pcm), 44100)
    back, rate = audio.read(path, "int16")
    assert rate == 44100 and back.dtype == np.int16 and back.shape == (2, 1000)
    np.testing.assert_array_equal(back, pcm)
    f, _ = audio.read(path)
    np.testing.assert_array_equal(audio.to_int16(f), pcm)


def test_info_and_errors_name_the_file(tmp_path):
    path = tmp_path / "x.wav"
    audio.write(path, np.zeros((1, 441), np.float32), 22050)
    i = audio.info(path)
    assert (i.sample_rate, i.frames, i.channels) == (22050, 441, 1)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio")
    with pytest.raises(AudioError, match="bad.wav: not a readable audio file"):
        audio.read(bad)
    with pytest.raises(AudioError, match="missing.wav: file not found"):
        audio.info(tmp_path / "missing.wav")


def test_resample_and_force_stereo():
    t = np.arange(22050) / 22050
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)[None]
    up = audio.resample(tone, 22050, 44100)
    assert up.shape == (1, 44100)
    spectrum = np.abs(np.fft.rfft(up[0]))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins over 1 s
    assert audio.force_stereo(tone).shape == (2, 22050)
    assert audio.force_stereo(np.zeros((5, 10), np.float32)).shape == (2, 10)


def test_to_int16_clips():
    x = np.array([[-2.0, -1.0, 0.0, 0.5, 1.0, 2.0]], np.float32)
    assert audio.to_int16(x).tolist() == [[-32768, -32768, 0, 16384, 32767, 32767]]
