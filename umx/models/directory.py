"""The model directory's format: its file names and its bounded JSON reader, in one place.

A model directory (`<target>.pth`, `.chkpnt`, `.json`, `separator.json`, a bridged model's
`xumx.pth`, the loss-curve PNGs) is written by the train stage and read by umx-separate, umx-eval
and umx-plot. They all take its names and its reader from here, so reading a model never imports
the training stack. Its JSON comes from whoever handed the folder over: every file is read through
`read_json`, bounded by what it reads (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UmxError
from ..json_input import parse_object

SEPARATOR_JSON = "separator.json"  # open-unmix's: the STFT, rate and channels every target shares
ARCHITECTURE_KEY = "architecture"  # separator.json's key naming the architecture (absent: open-unmix)
BRIDGED_WEIGHTS = "xumx.pth"  # a bridged model's weights, every target's: not `<target>*.pth`, which openunmix globs
MAX_JSON_BYTES = 64 * 2**20  # histories of very long runs stay far below


def read_json(path: Path, hint: str) -> dict:
    """A JSON file of a model directory, or one clear error naming it (`hint`: what it should be)."""
    if not path.is_file():
        raise UmxError(f"{path}: not found ({hint})")
    with open(path, "rb") as f:  # bounded by what is read, not by a size looked up before
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise UmxError(f"{path}: larger than {MAX_JSON_BYTES // 2**20} MiB ({hint})")
    return parse_object(data, str(path), hint)
