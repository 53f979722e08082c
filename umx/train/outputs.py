"""The model directory, exactly the files open-unmix's train.py writes.

`<target>.pth` best weights · `<target>.chkpnt` model/optimizer/scheduler/epoch/
best loss · `<target>.json` args and histories · `separator.json` STFT
settings. Every file is written atomically, so a run killed mid-write leaves
the previous complete version.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UmxError
from ..shards.storage import atomic_writer, write_json
from .state import RunState
from .step import optimizer_state

MAX_JSON_BYTES = 64 * 2**20  # histories of very long runs stay far below


def save_torch(obj, path: Path) -> None:
    """torch.save, atomically. Serialised in memory first: torch's zip writer turns a full disk
    into 'unexpected pos …'; a plain write reports ENOSPC, naming the file (the previous
    version stays in place either way)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_writer(path) as f:
        f.write(buf.getbuffer())


def write_separator_json(folder: Path, nfft: int, nhop: int, sample_rate: int, nb_channels: int) -> None:
    write_json(folder / "separator.json",
               {"nb_channels": nb_channels, "nfft": nfft, "nhop": nhop, "sample_rate": sample_rate})


def read_json(path: Path, hint: str) -> dict:
    """A JSON file of a model directory, or one clear error naming it (`hint`: what it should be)."""
    if not path.is_file():
        raise UmxError(f"{path}: not found ({hint})")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise UmxError(f"{path}: larger than {MAX_JSON_BYTES // 2**20} MiB ({hint})")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UmxError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise UmxError(f"{path}: nested too deeply to be a model directory's JSON") from None
    if not isinstance(value, dict):
        raise UmxError(f"{path}: must hold a JSON object ({hint})")
    return value


@dataclass
class Checkpoint:
    """A `<target>.chkpnt` as read back: open-unmix's keys and the run state."""

    state_dict: dict
    optimizer: dict
    scheduler: dict
    state: RunState


def save_checkpoint(folder: Path, target: str, model, optimizer, scheduler, state: RunState) -> None:
    """`<target>.chkpnt`: open-unmix's keys (epoch, state_dict, best_loss, optimizer, scheduler) and the
    whole run state under "umx", so a kill between two output files cannot desynchronise them."""
    save_torch({"epoch": state.progress.epoch, "state_dict": model.state_dict(), "best_loss": state.best_loss,
                "optimizer": optimizer_state(optimizer), "scheduler": scheduler.state_dict(),
                "umx": state.to_dict()}, Path(folder) / f"{target}.chkpnt")


def load_checkpoint(folder: Path, target: str) -> Checkpoint:
    """The `<target>.chkpnt` of a run to resume (an open-unmix one: its state from `<target>.json`)."""
    path = Path(folder).expanduser() / f"{target}.chkpnt"
    if not path.is_file():
        raise UmxError(f"{path}: not found (is {Path(folder)} the output folder of a '{target}' run?)")
    ckpt = load_plain(path, "checkpoint")
    missing = [k for k in ("state_dict", "optimizer", "scheduler") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UmxError(f"{path}: not a training checkpoint (no {', '.join(missing)})")
    try:
        if "umx" in ckpt:
            state = RunState.from_dict(ckpt["umx"])
        else:
            state = RunState.from_results(read_json(path.with_suffix(".json"), "the results of the run to resume"))
    except (KeyError, TypeError, ValueError) as e:
        raise UmxError(f"{path}: its run state is incomplete ({type(e).__name__}: {e})") from None
    return Checkpoint(ckpt["state_dict"], ckpt["optimizer"], ckpt["scheduler"], state)


def write_results(folder: Path, target: str, args: dict, state: RunState) -> None:
    write_json(Path(folder) / f"{target}.json", state.results(args))


def load_plain(path: Path, what: str, map_location="cpu"):
    """A torch file of plain data only (tensors, numbers, strings, lists, dicts) — never a pickle
    that runs code: model directories are passed around. Anything else is one clear error."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UmxError(f"{path}: cannot be loaded: refused, this {what} holds more than plain tensors and numbers (umx loads "
                       f"model files with weights_only=True and never runs their pickled code; {first})") from None
    except Exception as e:  # a truncated or foreign file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        detail = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise UmxError(f"{path}: cannot be loaded: not a readable {what} file ({detail})") from None
