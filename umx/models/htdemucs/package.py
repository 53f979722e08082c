"""Reading Demucs' exported model packages (and MSST's HTDemucs state dicts) without running their pickle.

Demucs exports a model (`demucs.states.serialize_model`: the solver's best.th, a release .th) as a
torch.save'd dict `{'klass': <the model class>, 'args': (), 'kwargs': {...}, 'state': {name: tensor},
'training_args': {...}}`. Its 'klass' is a class object, which torch's weights_only unpickler refuses,
and allow-listing Demucs' real class would let a hostile file call it (the unpickler calls any
allow-listed global a REDUCE names: `HTDemucs(channels=10**7, ...)`). So the allow-list maps the
*names* of Demucs' model classes to inert marker classes of ours that refuse to be made, and
`fractions.Fraction` (a release's 'segment') to a bounded constructor: nothing of demucs runs while
a package is read, and the allow-list holds only for that one torch.load."""

from __future__ import annotations

import pickle
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...errors import UmxError
from ..weights import SHOWN_GLOBAL_CHARS, check_archive, check_stored, unpickler_detail

MAX_FRACTION_CHARS = 64  # of a Fraction's string form: Fraction('1e999999999') would compute 10**999999999
MAX_FRACTION_BITS = 128  # of a Fraction's numerator and denominator
MAX_KWARGS_DEPTH = 8  # containers inside containers in 'kwargs' (Demucs' own go two deep: a list of str)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


MSST_WRAPPERS = ("state_dict", "model_state_dict", "state")  # how MSST saves (and unwraps) its weights


@dataclass(frozen=True)
class DemucsPackage:
    """What a Demucs package holds that umx uses: the model class's short name ("HTDemucs",
    "HDemucs" or "Demucs": which ones umx builds is its caller's to say), its constructor's keyword
    arguments (plain values and Fractions) and its weights (CPU tensors, memory-mapped where the file
    is a zip). A bare state dict (MSST's HTDemucs checkpoints) has no class and no arguments: None."""

    klass: str | None
    kwargs: dict[str, Any] | None
    state: dict[str, torch.Tensor]


class _Refused(Exception):
    """Raised by our stand-ins while torch unpickles: not an UnpicklingError, so that torch passes it
    on as it is (it rewrites those into a long message)."""


class _ModelClass:
    """Stands in for one of Demucs' model classes while a package is unpickled: the package names
    its class, and the class is never made (a REDUCE or NEWOBJ on it, as a whole pickled model or a
    hostile file does, is refused before anything of demucs runs)."""

    name: ClassVar[str]

    def __new__(cls, *args, **kwargs):
        raise _Refused(f"it pickles a whole {cls.name} object (torch.save(model), or code that would build one "
                       "while unpickling), and umx never runs pickled code: export the model with "
                       "demucs.states.serialize_model, as Demucs' best.th and release .th files are")


class _HTDemucs(_ModelClass):
    name = "HTDemucs"


class _HDemucs(_ModelClass):
    name = "HDemucs"


class _Demucs(_ModelClass):
    name = "Demucs"


MARKERS: dict[type[_ModelClass], str] = {  # each stand-in → the global its Demucs class is pickled as
    _HTDemucs: "demucs.htdemucs.HTDemucs",
    _HDemucs: "demucs.hdemucs.HDemucs",
    _Demucs: "demucs.demucs.Demucs",
}
_FRACTION_TEXT = re.compile(r"[-+]?[0-9]+(/[0-9]+)?")


def _fraction(numerator: object = 0, denominator: object = None) -> Fraction:
    """fractions.Fraction as unpickled: two whole numbers (how Python pickles a Fraction) or the
    string form 'n/d', bounded; never an exponent or a float (Fraction('1e999999999') does not end)."""
    def whole(value: object) -> int:
        if type(value) is not int or value.bit_length() > MAX_FRACTION_BITS:
            raise _Refused(f"it holds a Fraction of {type(value).__name__} parts or over {MAX_FRACTION_BITS} bits")
        return value

    if isinstance(numerator, str) and denominator is None:
        if len(numerator) > MAX_FRACTION_CHARS or not _FRACTION_TEXT.fullmatch(numerator):
            raise _Refused(f"it holds a Fraction written as {len(numerator)} characters, not as 'n' or 'n/d' in "
                           f"at most {MAX_FRACTION_CHARS}")
        top, _, bottom = numerator.partition("/")
        numerator, denominator = int(top), int(bottom or 1)
    numerator, denominator = whole(numerator), whole(1 if denominator is None else denominator)
    if denominator == 0:
        raise _Refused("it holds a Fraction whose denominator is 0")
    return Fraction(numerator, denominator)


ALLOWED_GLOBALS: list[tuple[object, str]] = [
    *MARKERS.items(),
    (_fraction, "fractions.Fraction"),
]
_LOADING = threading.Lock()  # the allow-list is torch's global: one load holds it at a time


def _plain(value: object, depth: int = 0) -> bool:
    """True for what a Demucs model's constructor takes: primitives, Fractions, and lists, tuples and
    str-keyed dicts of them."""
    if value is None or type(value) in (bool, int, float, str, Fraction):
        return True
    if depth >= MAX_KWARGS_DEPTH:
        return False
    if type(value) in (list, tuple):
        return all(_plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    return False


def _load(path: Path, zipped: bool) -> object:
    """torch.load with weights_only and our allow-list, which holds for this load only; every
    failure one line naming the file."""
    try:
        with _LOADING, torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except _Refused as e:
        raise UmxError(f"{path}: cannot be loaded as a Demucs package: {e}") from None
    except pickle.UnpicklingError as e:
        global_name = re.search(r"GLOBAL (\S+)", str(e))
        if global_name and global_name.group(1).startswith("omegaconf."):
            raise UmxError(f"{path}: cannot be loaded as a Demucs package: it holds an OmegaConf object "
                           f"({global_name.group(1)[:SHOWN_GLOBAL_CHARS]}), as Demucs' solver checkpoint.th "
                           "does: umx reads exported packages such as best.th or a release .th, not the solver's "
                           "checkpoint.th") from None
        if not zipped and "persistent_load" in str(e):  # the legacy format stores a module class as a record
            raise UmxError(f"{path}: cannot be loaded as a Demucs package: it is in torch's legacy format, which "
                           "stores the model class as a record (with its source code) that umx does not read: umx "
                           "reads packages in torch's zip format (what torch.save writes since torch 1.6)") from None
        raise UmxError(f"{path}: cannot be loaded as a Demucs package: refused, {unpickler_detail(str(e))} "
                       "(umx never runs pickled code: it reads tensors, plain values, Fractions and the names "
                       "of Demucs' model classes)") from None
    except Exception as e:  # a truncated or foreign file: torch raises anything
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        detail = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise UmxError(f"{path}: cannot be loaded: not a readable Demucs package ({detail})") from None


def read_demucs_package(path: Path, max_bytes: int, *,
                        declared_in: str = "umx's limit for a Demucs package") -> DemucsPackage:
    """The class name, constructor kwargs and weights of a Demucs package (`demucs.states.
    serialize_model`: best.th, a release .th), read without running its pickle: bounded by
    `max_bytes` before torch reads a byte (`check_archive`; `declared_in` names what sets it),
    tensors memory-mapped. Anything else, a diffq-quantized package, the solver's checkpoint.th or a
    whole pickled model included, is one UmxError line naming the file."""
    path = Path(path)
    zipped = check_archive(path, max_bytes, declared_in)
    package = _load(path, zipped)
    where = f"{path}: cannot be loaded as a Demucs package"
    if not isinstance(package, dict):
        raise UmxError(f"{where}: it holds a {type(package).__name__}, not the dict demucs.states.serialize_model "
                       "writes")
    if "klass" not in package and {"optimizer", "best_state"} <= set(package):
        raise UmxError(f"{where}: it is Demucs' solver checkpoint.th: umx reads exported packages such as best.th "
                       "or a release .th")
    if "klass" not in package:
        bare = _bare_state(package)
        if bare is not None:  # MSST saves its HTDemucs as a state dict, bare or under one of MSST_WRAPPERS
            _check_tensors(bare, where)
            check_stored([bare], path)
            return DemucsPackage(klass=None, kwargs=None, state=dict(bare))
    missing = [k for k in ("klass", "args", "kwargs", "state") if k not in package]
    if missing:
        raise UmxError(f"{where}: it has no {', '.join(repr(k) for k in missing)}, so it is not a package "
                       "demucs.states.serialize_model writes")
    klass = package["klass"]
    if not (isinstance(klass, type) and klass in MARKERS):
        what = f"the class {klass.__name__}" if isinstance(klass, type) else f"a {type(klass).__name__}"
        raise UmxError(f"{where}: its 'klass' is {what}, not one of Demucs' model classes "
                       f"({', '.join(MARKERS.values())})")
    args = package["args"]
    if type(args) not in (tuple, list) or len(args):
        length = f" of {len(args)}" if type(args) in (tuple, list) else ""
        raise UmxError(f"{where}: its 'args' must be empty (Demucs passes its model's settings as keyword "
                       f"arguments), got a {type(args).__name__}{length}")
    kwargs = package["kwargs"]
    if type(kwargs) is not dict:
        raise UmxError(f"{where}: its 'kwargs' is a {type(kwargs).__name__}, not a dict")
    for key, value in kwargs.items():
        if type(key) is not str:
            raise UmxError(f"{where}: its 'kwargs' has a key of type {type(key).__name__}, not str")
        if not _plain(value):
            raise UmxError(f"{where}: its kwargs[{key[:SHOWN_GLOBAL_CHARS]!r}] is not a plain value (numbers, "
                           f"strings, Fractions, and lists and dicts of them up to {MAX_KWARGS_DEPTH} deep), got "
                           f"a {type(value).__name__}")
    state = package["state"]
    if not isinstance(state, dict):
        raise UmxError(f"{where}: its 'state' is a {type(state).__name__}, not a dict of tensors")
    if state.get("__quantized") is True:
        raise UmxError(f"{where}: it is quantized with diffq: umx fine-tunes unquantized packages")
    _check_tensors(state, where)
    check_stored([state], path)
    return DemucsPackage(klass=klass.name, kwargs=dict(kwargs), state=dict(state))


def _bare_state(package: dict) -> dict | None:
    """The state dict of MSST's format: the dict itself where every key is a string naming a tensor,
    or the dict under the first of MSST_WRAPPERS that holds one; None for anything else."""
    for candidate in (package, *(package.get(w) for w in MSST_WRAPPERS)):
        if isinstance(candidate, dict) and candidate and all(
                type(k) is str and isinstance(v, torch.Tensor) for k, v in candidate.items()):
            return candidate
    return None


def _check_tensors(state: dict, where: str) -> None:
    """Every weight a dense float CPU tensor under a string name."""
    for key, tensor in state.items():
        if type(key) is not str:
            raise UmxError(f"{where}: its 'state' has a key of type {type(key).__name__}, not str")
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter) or tensor.layout != torch.strided \
                or tensor.device.type != "cpu" or tensor.dtype not in FLOAT_DTYPES:
            what = f"a {tensor.dtype} {tensor.layout} tensor on {tensor.device.type}" \
                if isinstance(tensor, torch.Tensor) else f"a {type(tensor).__name__}"
            raise UmxError(f"{where}: its state[{key[:SHOWN_GLOBAL_CHARS]!r}] is {what}, not a dense floating "
                           "point tensor")
