"""Reading weights and checkpoints that come from elsewhere: bounded before torch reads a byte.

Every architecture's model directory and every checkpoint is read through here: the file's size and
its zip members are held against what the reader's own networks can hold (`check_archive`), tensors
are memory-mapped and never run a pickle (`read_weights`), and views that claim more elements than the
file stores are refused (`check_stored`). docs/security.md says why."""

from __future__ import annotations

import io
import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import UmxError
from ..shards.storage import atomic_writer

@dataclass(frozen=True)
class Range:
    """The sane whole numbers for one size: each size's one definition (umx-train's options
    should take the same, so that what it trains always loads)."""

    low: int
    high: int

    def check(self, value: object, what: str) -> int:
        """`value` as an int, if it is a whole number in range (a whole float too: open-unmix may
        write 44100.0), else UmxError `what must be …` (`what`: the file and key, or the option)."""
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number) or number != int(number) \
                or not self.low <= number <= self.high:
            raise UmxError(f"{what} must be a whole number in [{self.low}, {self.high}], got {value!r}")
        return int(number)



MAX_ELEMENT_BYTES = 8  # a weights file may store its tensors as float64 at most
PICKLE_SLACK = 2**20  # a weights file's bytes besides its tensors: the pickled state dict, torch's records


def tied_keys(module: nn.Module) -> list[set[str]]:
    """The state-dict keys that name one tensor of `module` (a module used in several places, as a
    RoFormer's rotary embedding is): the only keys a weights file may store once."""
    groups: dict[int, set[str]] = {}
    for key, value in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(value), set()).add(key)
    return [g for g in groups.values() if len(g) > 1]


def check_stored(states: list[dict[str, Tensor]], path: Path, tied: list[set[str]] = ()) -> None:
    """Refuse tensors whose elements are not all in the file: views (zero strides, storages shared
    between tensors or networks) would let a small file pass for a network of any size. Keys the
    network itself ties (`tied_keys`) count once."""
    skipped = {key for group in tied for key in sorted(group)[1:]}
    tensors = [t for state in states for k, t in state.items() if k not in skipped]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    if sum(t.numel() * t.element_size() for t in tensors) > sum(storages.values()):
        raise UmxError(f"{path}: cannot be loaded: its tensors are views claiming more elements than the file "
                       "stores")


def check_archive(path: Path, max_bytes: int, declared_in: str) -> bool:
    """Refuse a weights file that would take more than `max_bytes` (what `declared_in` declares) once
    read, before torch reads it; True for torch's zip format. torch.save stores members
    uncompressed, so a compressed member is refused (1.6 MB can inflate to gigabytes), and the
    members' sizes must add up to `max_bytes` at most. torch's legacy format is read as it lies."""
    where = f"{path}: cannot be loaded with the sizes in {declared_in}"
    size = path.stat().st_size
    if size > max_bytes:
        raise UmxError(f"{where}: the file has {size} bytes, more than the {max_bytes} they allow")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # how torch.load tells its zip format from the legacy one
            return False
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
        raise UmxError(f"{path}: cannot be loaded: not a readable zip archive ({e})") from None
    total = 0
    for m in members:
        if m.compress_type != zipfile.ZIP_STORED or m.compress_size != m.file_size:
            raise UmxError(f"{path}: cannot be loaded: its member {m.filename!r} is compressed (torch.save stores "
                           "every member as it is; a compressed one may inflate to far more than the file)")
        total += m.file_size
        if total > max_bytes:
            raise UmxError(f"{where}: its members hold more than the {max_bytes} bytes they allow")
    return True


SHOWN_GLOBAL_CHARS = 120  # of a refused global's name, in its error line


def unpickler_detail(message: str) -> str:
    """The part of torch's weights_only refusal that says what was refused (torch wraps it in advice
    to load the file unsafely, with terminal colour codes)."""
    found = re.search(r"GLOBAL (\S+)", message)
    if found:
        return f"it pickles the global {found.group(1)[:SHOWN_GLOBAL_CHARS]}"
    tail = message.rpartition("WeightsUnpickler error:")[2].strip() or message.strip()
    return tail.splitlines()[0][:200] if tail else "the unpickler refused it"


def read_weights(path: Path, max_bytes: int, declared_in: str) -> object:
    """The plain data of a weights file (`check_archive` first): tensors memory-mapped, not read,
    so their shapes are checked before anything of their size is allocated; never a pickle that
    runs code (weights_only). Anything else is one clear line naming the file."""
    zipped = check_archive(path, max_bytes, declared_in)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        raise UmxError(f"{path}: cannot be loaded: refused, this model holds more than plain tensors and numbers "
                       f"(umx loads model files with weights_only=True and never runs their pickled code; "
                       f"{unpickler_detail(str(e))})") from None
    except Exception as e:  # a truncated or foreign file: torch raises anything
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        detail = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise UmxError(f"{path}: cannot be loaded: not a readable model file ({detail})") from None


def read_state(path: Path, expected: nn.Module, declared_in: str, what: str) -> dict[str, Tensor]:
    """A state dict file for the network `expected` (built on the meta device from what
    `declared_in` describes): bounded by that network's size before torch reads it, then exactly its
    keys and shapes, and no views claiming more than the file stores. `what`: the model directory's
    kind, for the line a missing file gets."""
    shapes, tied = {k: v.shape for k, v in expected.state_dict().items()}, tied_keys(expected)
    if not path.is_file():
        raise UmxError(f"{path}: not found (is {path.parent} {what}?)")
    limit = sum(s.numel() for s in shapes.values()) * MAX_ELEMENT_BYTES + PICKLE_SLACK
    state = read_weights(path, limit, declared_in)
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UmxError(f"{path}: not a state dict (a mapping of names to tensors)")
    for key in shapes.keys() - state.keys():
        raise UmxError(f"{path}: does not hold the network {declared_in} describes (no {key})")
    for key in state.keys() - shapes.keys():
        raise UmxError(f"{path}: does not hold the network {declared_in} describes (unexpected {key:.80})")
    for key, shape in shapes.items():
        if state[key].shape != shape:
            raise UmxError(f"{path}: {key} is {list(state[key].shape)}, {declared_in} gives {list(shape)}")
    check_stored([state], path, tied)
    return state


def save_torch(obj, path: Path) -> None:
    """torch.save, atomically. Serialised in memory first: torch's zip writer turns a full disk
    into 'unexpected pos …'; a plain write reports ENOSPC, naming the file (the previous
    version stays in place either way)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_writer(path) as f:
        f.write(buf.getbuffer())
