"""A run's files besides the architecture's own (models.protocol: its weights and separator.json).

Per optimisation unit (open-unmix: per target, exactly the files its train.py writes):
`<unit>.chkpnt` model/optimizer/scheduler/epoch/best loss and the run state ·
`<unit>.json` args and histories. Every file is written atomically, so a run
killed mid-write leaves the previous complete version.
"""

from __future__ import annotations

import copy
import errno
import os
import pickle
import stat
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UmxError
from ..models.directory import read_json
from ..models.weights import MAX_ELEMENT_BYTES, read_weights, save_torch
from ..shards.storage import write_json
from .state import Bounds, RunState, StateError
from .step import optimizer_state

CHECKPOINT_SLACK = 256 * 2**20  # a checkpoint's bytes besides its tensors: the pickled run state

@dataclass
class Checkpoint:
    """A `<target>.chkpnt` as read back: open-unmix's keys and umx's payload (None: open-unmix's own)."""

    state_dict: dict
    optimizer: dict
    scheduler: dict
    payload: dict | None
    ema: dict | None = None  # --ema: label → the target's averaged state dict
    path: Path | None = None  # the file it was read from
    scaler: dict | None = None  # --precision fp16: the GradScaler's state


@dataclass
class TargetParts:
    """What a target's checkpoint holds besides the run state."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    ema: dict | None = None  # --ema: label → averaged state dict
    scaler: dict | None = None  # --precision fp16: the GradScaler's state


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
                                 **({"ema": p.ema} if p.ema else {}), **({"scaler": p.scaler} if p.scaler else {})})
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


def load_checkpoints(folder: Path, targets: list[str], bounds: Bounds | None = None,
                     settle: bool = True, max_bytes: dict[str, int] | None = None
                     ) -> tuple[dict[str, Checkpoint], RunState]:
    """The checkpoints of a run to resume, one per target, and its state (an open-unmix
    checkpoint: the state from `<target>.json`), every field of it checked and held against
    `bounds` (the resuming run). Refuses checkpoints of different steps. `settle`: the folder is
    the run's output, where an interrupted generation is finished or dropped; a folder only read
    (`--checkpoint` of another run) is never written: its settled files are read where they are.
    `max_bytes`: per target, the most its checkpoint may hold once read (`checkpoint_bytes`); the
    file is checked against it before torch reads it (no compressed member inflates past it)."""
    folder = Path(folder).expanduser()
    paths = settled_generation(folder, targets, settle)
    ckpts = {t: _load_one(paths[t], t, (max_bytes or {}).get(t)) for t in targets}
    payloads = {t: c.payload for t, c in ckpts.items() if c.payload is not None}
    try:
        if not payloads:
            if len(targets) > 1:
                raise UmxError(f"{folder}: open-unmix checkpoints resume one target at a time")
            t = targets[0]
            results = read_json(folder / f"{t}.json", "the results of the run to resume")
            try:
                return ckpts, RunState.from_results(t, results, bounds)
            except StateError as e:
                raise UmxError(f"{folder / f'{t}.json'}: field '{e.name}' {e.problem}") from None
        generations = {_present(p.get("generation")) for p in payloads.values()}  # several targets: one, present
        if len(payloads) < len(targets) or (len(targets) > 1 and (len(generations) != 1 or None in generations)):
            raise UmxError(f"{folder}: the checkpoints of {', '.join(targets)} are not of the same step "
                           "(written by different runs?)")
        return ckpts, RunState.from_payloads(payloads, bounds)
    except StateError as e:
        raise UmxError(f"{paths[e.target or targets[0]]}: its run state (\"umx\") field '{e.name}' "
                       f"{e.problem}") from None


def _present(generation: object) -> str | None:
    """A generation id as umx writes it (a non-empty string), else None: no generation at all."""
    return generation if isinstance(generation, str) and generation else None


def settled_generation(folder: Path, targets: list[str], settle: bool) -> dict[str, Path]:
    """Each target's checkpoint file after a save interrupted while renaming: the new files where
    every target's file of that one, present generation is complete (written as `.next`, or renamed
    already), else the previous ones. With `settle` (the output folder only) the new files are
    renamed into place, or dropped when incomplete; a `.next` of no generation is none of umx's
    saves and is left alone, never put in place."""
    current = {t: folder / f"{t}.chkpnt" for t in targets}
    pending = {t: folder / f"{t}.chkpnt{NEXT}" for t in targets if (folder / f"{t}.chkpnt{NEXT}").is_file()}
    if not pending:
        return current
    found = {t: _generation(p) for t, p in pending.items()}
    ids = set(found.values())
    generation = ids.pop() if len(ids) == 1 else None
    complete = generation is not None and all(t in pending or _generation(current[t]) == generation for t in targets)
    if not settle:
        return {t: pending[t] if complete and t in pending else current[t] for t in targets}
    if complete:
        for t, path in pending.items():
            os.replace(path, current[t])
    else:
        for t, path in pending.items():
            if found[t] is not None:  # an interrupted save of this folder's run: the previous one stands
                path.unlink()
    return current


def _generation(path: Path) -> str | None:
    """The generation id of a checkpoint file (None: no file, no id, or no readable checkpoint)."""
    if not path.is_file():
        return None
    try:
        ckpt = load_plain(path, "checkpoint")
    except UmxError:
        return None
    umx = ckpt.get("umx") if isinstance(ckpt, dict) else None
    return _present(umx.get("generation")) if isinstance(umx, dict) else None


def checkpoint_bytes(network: torch.nn.Module, averages: int) -> int:
    """The most a checkpoint of `network` may hold once read: its weights, Adam's two moments and
    `averages` --ema copies, each at 8 bytes an element, plus room for the pickled run state (its
    loss rows grow with the epoch's steps)."""
    elements = sum(t.numel() for t in network.state_dict().values())
    return elements * MAX_ELEMENT_BYTES * (3 + averages) + CHECKPOINT_SLACK


def _load_one(path: Path, target: str, max_bytes: int | None = None) -> Checkpoint:
    if not path.is_file():
        raise UmxError(f"{path}: not found (is {path.parent} the output folder of a '{target}' run?)")
    if max_bytes is None:
        ckpt = load_plain(path, "checkpoint")
    else:  # bounded by this run's networks before torch reads a byte of it
        ckpt = read_weights(path, max_bytes, f"this run's '{target}' network")
    missing = [k for k in ("state_dict", "optimizer", "scheduler") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UmxError(f"{path}: not a training checkpoint (no {', '.join(missing)})")
    for key in ("state_dict", "optimizer", "scheduler", "umx", "ema", "scaler"):
        if key in ckpt and not isinstance(ckpt[key], dict) and not (key in ("umx", "ema", "scaler") and ckpt[key] is None):
            raise UmxError(f"{path}: field '{key}' must be a mapping, not {type(ckpt[key]).__name__}")
    return Checkpoint(ckpt["state_dict"], ckpt["optimizer"], ckpt["scheduler"], ckpt.get("umx"), ckpt.get("ema"), path,
                      ckpt.get("scaler"))


def append_to(path: Path):
    """`path` opened to append text line by line (a killed run's lines are on disk), created if
    absent. Never through a link, and never anything but a regular file: a symbolic link planted at
    that name (say, to a file elsewhere) is refused with one line, not followed (O_NOFOLLOW); a FIFO
    is refused without blocking on it (O_NONBLOCK)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise UmxError(f"{path}: is a symbolic link: refused (umx appends only to a regular file it "
                           "can open without following a link)") from None
        if e.errno in (errno.ENXIO, errno.EISDIR, errno.ENOTDIR):
            raise UmxError(f"{path}: is not a regular file: refused") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UmxError(f"{path}: is not a regular file: refused")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", buffering=1)


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
