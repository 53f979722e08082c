"""The model directory, exactly the files open-unmix's train.py writes.

`<target>.pth` best weights · `<target>.chkpnt` model/optimizer/scheduler/epoch/
best loss · `<target>.json` args and histories · `separator.json` STFT
settings, one set per target of the run. Every file is written atomically, so a
run killed mid-write leaves the previous complete version. A bridged (X-UMX) run
writes its best weights as one `xumx.pth` instead, which openunmix cannot load.
"""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import threading
import uuid
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


BRIDGED_WEIGHTS = "xumx.pth"  # a bridged model's weights, every target's: not `<target>*.pth`, which openunmix globs


def write_separator_json(folder: Path, nfft: int, nhop: int, sample_rate: int, nb_channels: int,
                         bridged_targets: list[str] | None = None) -> None:
    """open-unmix's `separator.json`; for a bridged model also its targets (openunmix ignores the key)."""
    conf = {"nb_channels": nb_channels, "nfft": nfft, "nhop": nhop, "sample_rate": sample_rate}
    if bridged_targets:
        conf.update(bridged_targets=list(bridged_targets), weights=BRIDGED_WEIGHTS)
    write_json(folder / "separator.json", conf)


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
    """A `<target>.chkpnt` as read back: open-unmix's keys and umx's payload (None: open-unmix's own)."""

    state_dict: dict
    optimizer: dict
    scheduler: dict
    payload: dict | None
    ema: dict | None = None  # --ema: label → the target's averaged state dict


@dataclass
class TargetParts:
    """What a target's checkpoint holds besides the run state."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    ema: dict | None = None  # --ema: label → averaged state dict


NEXT = ".next"  # a checkpoint written, not yet in place (see save_checkpoints)


def checkpoint_objects(parts: dict[str, TargetParts], state: RunState) -> dict[str, dict]:
    """Every target's checkpoint as plain objects, detached from training: tensors copied to the CPU
    (the optimizer updates its state in place), the run state as plain data; one generation id."""
    generation = uuid.uuid4().hex
    out = {}
    for target, p in parts.items():
        payload = copy.deepcopy({**state.payload(target), "generation": generation})
        out[target] = _detached({"epoch": state.progress.epoch, "state_dict": p.model.state_dict(),
                                 "best_loss": payload["best_loss"], "optimizer": optimizer_state(p.optimizer),
                                 "scheduler": p.scheduler.state_dict(), "umx": payload,
                                 **({"ema": p.ema} if p.ema else {})})
    return out


def write_checkpoints(folder: Path, objects: dict[str, dict]) -> None:
    """Several targets' files are one generation: all are written complete as `<target>.chkpnt.next`
    first, then renamed; `load_checkpoints` finishes or drops a generation a kill interrupted."""
    folder = Path(folder)
    for target, obj in objects.items():
        save_torch(obj, folder / f"{target}.chkpnt{NEXT}")
    for target in objects:
        os.replace(folder / f"{target}.chkpnt{NEXT}", folder / f"{target}.chkpnt")


def save_checkpoints(folder: Path, parts: dict[str, TargetParts], state: RunState) -> None:
    """Every target's `<target>.chkpnt`: open-unmix's keys (epoch, state_dict, best_loss, optimizer,
    scheduler) and the run state under "umx", so a kill between two output files cannot
    desynchronise them; written now (CheckpointWriter writes in the background)."""
    write_checkpoints(folder, checkpoint_objects(parts, state))


class CheckpointWriter:
    """Checkpoints written by a background thread: training only waits for the copy of the weights
    and optimizer state to the CPU; serialising and writing overlap the next steps. One write at a
    time (a new save waits for the previous one); an error of a write is raised by the next
    `save` or `wait`, so a full disk still stops the run with one line."""

    def __init__(self, background: bool = True):
        self.background = background
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def save(self, folder: Path, parts: dict[str, TargetParts], state: RunState) -> None:
        self.wait()
        objects = checkpoint_objects(parts, state)
        if not self.background:
            write_checkpoints(folder, objects)
            return
        self.thread = threading.Thread(target=self._write, args=(folder, objects), name="umx-checkpoint")
        self.thread.start()

    def _write(self, folder: Path, objects: dict) -> None:
        try:
            write_checkpoints(folder, objects)
        except BaseException as e:  # noqa: BLE001 (handed to the training thread)
            self.error = e

    def wait(self) -> None:
        """Until the last checkpoint is on disk; its error, if it failed."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _detached(obj):
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _detached(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detached(v) for v in obj)
    return obj


def load_checkpoints(folder: Path, targets: list[str]) -> tuple[dict[str, Checkpoint], RunState]:
    """The checkpoints of a run to resume, one per target, and its state (an open-unmix
    checkpoint: the state from `<target>.json`). Refuses checkpoints of different steps."""
    folder = Path(folder).expanduser()
    _settle_generation(folder, targets)
    ckpts = {t: _load_one(folder / f"{t}.chkpnt", t) for t in targets}
    payloads = {t: c.payload for t, c in ckpts.items() if c.payload is not None}
    try:
        if not payloads:
            if len(targets) > 1:
                raise UmxError(f"{folder}: open-unmix checkpoints resume one target at a time")
            t = targets[0]
            return ckpts, RunState.from_results(t, read_json(folder / f"{t}.json", "the results of the run to resume"))
        if len(payloads) < len(targets) or len({p.get("generation") for p in payloads.values()}) > 1:
            raise UmxError(f"{folder}: the checkpoints of {', '.join(targets)} are not of the same step "
                           "(written by different runs?)")
        return ckpts, RunState.from_payloads(payloads)
    except (KeyError, TypeError, ValueError) as e:
        raise UmxError(f"{folder}: the run state in its checkpoints is incomplete ({type(e).__name__}: {e})") from None


def _settle_generation(folder: Path, targets: list[str]) -> None:
    """A save interrupted while renaming: finish it if every target's file of that generation is
    complete, else drop the new files (the previous generation is still all in place)."""
    pending = {t: folder / f"{t}.chkpnt{NEXT}" for t in targets if (folder / f"{t}.chkpnt{NEXT}").is_file()}
    if not pending:
        return
    generation = {_generation(p) for p in pending.values()}
    if len(generation) == 1 and all(t in pending or _generation(folder / f"{t}.chkpnt") in generation
                                    for t in targets):
        for t, path in pending.items():
            os.replace(path, folder / f"{t}.chkpnt")
    else:
        for path in pending.values():
            path.unlink()


def _generation(path: Path) -> str | None:
    if not path.is_file():
        return None
    ckpt = load_plain(path, "checkpoint")
    umx = ckpt.get("umx") if isinstance(ckpt, dict) else None
    return umx.get("generation") if isinstance(umx, dict) else None


def _load_one(path: Path, target: str) -> Checkpoint:
    if not path.is_file():
        raise UmxError(f"{path}: not found (is {path.parent} the output folder of a '{target}' run?)")
    ckpt = load_plain(path, "checkpoint")
    missing = [k for k in ("state_dict", "optimizer", "scheduler") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UmxError(f"{path}: not a training checkpoint (no {', '.join(missing)})")
    payload = ckpt.get("umx")
    if payload is not None and not isinstance(payload, dict):
        raise UmxError(f"{path}: its run state is not a mapping")
    return Checkpoint(ckpt["state_dict"], ckpt["optimizer"], ckpt["scheduler"], payload, ckpt.get("ema"))


def write_results(folder: Path, target: str, args: dict, state: RunState) -> None:
    write_json(Path(folder) / f"{target}.json", state.target(target).results(args))


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
