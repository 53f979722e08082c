"""A minimal soundfile-based stand-in for the torchaudio I/O API open-unmix 1.3.0 imports.

Registered only by tests and benchmarks that compare against the `openunmix`
package (installed with --no-deps); umx itself never imports torchaudio.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import soundfile as sf
import torch


@dataclass
class _Info:
    sample_rate: int
    num_frames: int
    num_channels: int


def _info(path):
    i = sf.info(str(path))
    return _Info(i.samplerate, i.frames, i.channels)


def _load(path, frame_offset=0, num_frames=-1, **_):
    data, rate = sf.read(str(path), start=frame_offset, frames=num_frames, dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), rate


def _save(path, tensor, sample_rate, **_):
    sf.write(str(path), tensor.detach().cpu().numpy().T, sample_rate)


def register() -> types.ModuleType:
    """Install the stand-in as `torchaudio` (unless a real one is importable)."""
    if "torchaudio" in sys.modules:
        return sys.modules["torchaudio"]
    mod = types.ModuleType("torchaudio")
    mod.info, mod.load, mod.save = _info, _load, _save
    mod.get_audio_backend = lambda: "soundfile"
    mod.set_audio_backend = lambda name: None
    mod.transforms = types.ModuleType("torchaudio.transforms")
    sys.modules["torchaudio"] = mod
    sys.modules["torchaudio.transforms"] = mod.transforms
    return mod
