"""The only module that touches audio files.

soundfile does I/O, soxr resamples. Arrays are channel-first `[channels, frames]`
like torch audio tensors; int16 is the storage form (what shards hold), float32
the compute form (int16 / 32768, exactly what soundfile returns for PCM16).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioError

INT16_SCALE = 32768.0
# Sample rates umx accepts, in a file header or as a target: below 8 kHz no music
# source-separation data exists, above 384 kHz no audio interface records. A header outside
# these bounds is damaged or hostile: at 1 Hz a 64 KiB file would "last" 4.5 hours and
# resample to gigabytes. Every reader (prep, separate, evaluate) refuses it via info/read.
MIN_RATE = 8000
MAX_RATE = 384000


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    frames: int
    channels: int
    subtype: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def check_rate(rate, what: str = "sample rate") -> int:
    """`rate` if it is a usable sample rate (an int within MIN_RATE..MAX_RATE), else ValueError."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"{what} {rate!r} Hz is outside the supported {MIN_RATE}–{MAX_RATE} Hz")
    return int(rate)


def _rate_of(path, rate) -> int:
    try:
        return check_rate(int(rate), "header sample rate")
    except ValueError as e:
        raise AudioError(path, str(e)) from None


def info(path: str | Path) -> AudioInfo:
    """Header facts of an audio file, without decoding it."""
    if not Path(path).is_file():
        raise AudioError(path, "file not found")
    try:
        i = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(path, f"not a readable audio file ({e})") from None
    if i.frames <= 0:
        raise AudioError(path, "contains no audio frames")
    return AudioInfo(str(path), _rate_of(path, i.samplerate), int(i.frames), int(i.channels), str(i.subtype))


def _truncated_wav(path: Path) -> str | None:
    """libsndfile silently reads what is there of a cut-off WAV; say how much is missing."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = path.stat().st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            n = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                have = size - f.tell()
                return None if n <= have or n == 0xFFFFFFFF else \
                    f"truncated: header declares {n} data bytes, file holds {have}"
            f.seek(n + (n & 1), 1)


def read(path: str | Path, dtype: str = "float32") -> tuple[np.ndarray, int]:
    """Decode a whole file to `[channels, frames]` in `dtype` ('float32' or 'int16')."""
    if dtype not in ("float32", "int16"):
        raise ValueError(f"dtype must be float32 or int16, not {dtype}")
    if not Path(path).is_file():
        raise AudioError(path, "file not found")
    cut = _truncated_wav(Path(path))
    if cut:
        raise AudioError(path, cut)
    try:
        with sf.SoundFile(str(path)) as f:
            rate = _rate_of(path, f.samplerate)  # before decoding anything
            data = f.read(dtype=dtype, always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(path, f"not a readable audio file ({e})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "contains no audio frames")
    return np.ascontiguousarray(data.T), rate


def write(path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    """Write `[channels, frames]` audio; the format follows the file extension.

    Writes to a temporary name and renames, so a killed write never leaves a
    truncated file under the final name.
    """
    path = Path(path)
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise ValueError(f"{path}: audio must be [channels, frames], got shape {audio.shape}")
    if subtype is None and path.suffix.lower() in (".wav", ".flac"):
        subtype = "PCM_16"
    from .shards.storage import atomic_writer  # an exclusive temp file at an unpredictable name

    try:
        with atomic_writer(path) as f:
            sf.write(f, audio.T, sample_rate, subtype=subtype, format=_format_of(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(path, f"cannot write audio ({e})") from None


def _format_of(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    formats = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "aiff": "AIFF", "aif": "AIFF", "mp3": "MP3"}
    if ext not in formats:
        raise AudioError(path, f"unknown audio extension '.{ext}' (use one of {sorted(formats)})")
    return formats[ext]


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality resampling of `[channels, frames]` float audio with soxr."""
    if from_rate == to_rate:
        return audio
    out = soxr.resample(np.ascontiguousarray(audio.T, dtype=np.float32), from_rate, to_rate, quality="HQ")
    return np.ascontiguousarray(out.T)


def force_stereo(audio: np.ndarray) -> np.ndarray:
    """Mono → duplicated, more than two channels → first two (open-unmix's force_stereo)."""
    if audio.shape[0] == 1:
        return np.repeat(audio, 2, axis=0)
    return audio[:2]


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1) → int16, rounding and clipping like libsndfile's PCM16 writer."""
    if audio.dtype == np.int16:
        return audio
    return np.clip(np.rint(audio * INT16_SCALE), -32768, 32767).astype(np.int16)


def to_float32(audio: np.ndarray) -> np.ndarray:
    """int16 → float32 in [-1, 1) (the exact values soundfile returns for PCM16)."""
    if audio.dtype == np.float32:
        return audio
    return audio.astype(np.float32) / np.float32(INT16_SCALE)


FFMPEG_HINT = "install ffmpeg (Debian: apt-get install ffmpeg)"


def ffmpeg_missing() -> str | None:
    """None where ffmpeg and ffprobe are on PATH; else which are missing. stempeg (and so musdb and
    museval, which import it) raises at import time without them; ask before importing."""
    missing = [c for c in ("ffmpeg", "ffprobe") if shutil.which(c) is None]
    return " and ".join(missing) or None


def _stempeg(path: str | Path):
    missing = ffmpeg_missing()
    if missing:
        raise AudioError(path, f".stem.mp4 files are decoded by ffmpeg; {missing} not found on PATH: {FFMPEG_HINT}")
    import stempeg

    return stempeg


def read_stems(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode every stream of a multistream `.stem.mp4` once: float32 `[stems, channels, frames]`.

    Uses stempeg (Debian's ffmpeg underneath), as the `musdb` package does.
    """
    stempeg = _stempeg(path)
    if not Path(path).is_file():
        raise AudioError(path, "file not found")
    try:
        stems, rate = stempeg.read_stems(str(path), dtype=np.float32, always_3d=True)
    except Exception as e:  # stempeg/ffmpeg raise many types; name the file either way
        raise AudioError(path, f"cannot decode stems with ffmpeg ({type(e).__name__}: {e})") from None
    return np.ascontiguousarray(stems.transpose(0, 2, 1)), _rate_of(path, rate)


def write_stems(path: str | Path, stems: np.ndarray, sample_rate: int, bitrate: int = 256000) -> None:
    """Write float `[stems, channels, frames]` as a multistream AAC `.stem.mp4` (MUSDB18's format)."""
    stempeg = _stempeg(path)

    path = Path(path)
    # ffmpeg picks the container by the name's extension, so the temp file keeps it: in a private
    # folder made exclusively (mkdtemp), where no file or link can have been planted
    private = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = private / path.name
        stempeg.write_stems(str(tmp), np.ascontiguousarray(stems.transpose(0, 2, 1)), sample_rate=sample_rate,
                            writer=stempeg.StreamsWriter(codec="aac", bitrate=bitrate))
        tmp.replace(path)
    except Exception as e:
        raise AudioError(path, f"cannot write stems with ffmpeg ({type(e).__name__}: {e})") from None
    finally:
        shutil.rmtree(private, ignore_errors=True)
