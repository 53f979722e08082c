"""The model directory, exactly the files open-unmix's train.py writes.

`<target>.pth` best weights · `<target>.chkpnt` model/optimizer/scheduler/epoch/
best loss · `<target>.json` args and histories · `separator.json` STFT
settings. Every file is written atomically, so a run killed mid-write leaves
the previous complete version.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UmxError
from ..shards.storage import atomic_writer, write_json


def save_torch(obj, path: Path) -> None:
    with atomic_writer(path) as f:
        torch.save(obj, f)


def write_separator_json(folder: Path, nfft: int, nhop: int, sample_rate: int, nb_channels: int) -> None:
    write_json(folder / "separator.json",
               {"nb_channels": nb_channels, "nfft": nfft, "nhop": nhop, "sample_rate": sample_rate})


def read_json(path: Path, hint: str) -> dict:
    """A JSON file of a model directory, or one clear error naming it (`hint`: what it should be)."""
    if not path.is_file():
        raise UmxError(f"{path}: not found ({hint})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UmxError(f"{path}: not valid JSON ({e})") from None


def read_results(folder: Path, target: str) -> tuple[dict, dict]:
    """The `<target>.json` and `<target>.chkpnt` of a run to resume."""
    folder = Path(folder).expanduser()
    results = read_json(folder / f"{target}.json", f"is {folder} the output folder of a '{target}' run?")
    return results, load_checkpoint(folder, target)


def load_checkpoint(folder: Path, target: str) -> dict:
    """The `<target>.chkpnt` of a run to resume."""
    path = Path(folder).expanduser() / f"{target}.chkpnt"
    if not path.is_file():
        raise UmxError(f"{path}: not found (is {Path(folder)} the output folder of a '{target}' run?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise UmxError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
