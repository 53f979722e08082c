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
from ..names import safe_name

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


MAX_TARGETS = 64  # of a one-network model directory


def read_targets_and_rate(conf: dict, path: Path) -> tuple[tuple[str, ...], int]:
    """separator.json's `targets` (different names, each safe as a file name) and `sample_rate`, checked,
    for the architectures whose one network separates every target."""
    targets = conf.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets) \
            or len(set(targets)) != len(targets) or len(targets) > MAX_TARGETS:
        raise UmxError(f"{path}: targets must be a list of up to {MAX_TARGETS} different target names")
    for t in targets:
        safe_name(t, "target", str(path))
    rate = conf.get("sample_rate")
    if type(rate) is not int or not 8000 <= rate <= 384000:
        raise UmxError(f"{path}: sample_rate must be a whole number in [8000, 384000], got {rate!r:.40}")
    return tuple(targets), rate
