"""The option table's vocabulary: what a command line needs to know of one option, in one place.

umx-train's options (`train.config.TrainConfig`) and every architecture's own option group
(`models.protocol.Architecture.options`) are dataclass fields carrying an `Option`; the command
lines are generated from them (`train/options.py`), and their values are checked by the same
`range_problem`, so no flag, default or range is spelled twice."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import UmxError, shown


@dataclass(frozen=True)
class Option:
    """What a command line needs to know of one field."""

    help: str
    group: str
    choices: tuple | None = None
    low: float | None = None  # the smallest value allowed: every number has both bounds (options.py)
    high: float | None = None
    low_open: bool = False  # the smallest value itself is excluded
    high_open: bool = False  # the largest value itself is excluded
    nargs: str | None = None  # "*" for lists
    kind: str | None = None  # a value syntax of its own ("interval": N steps or a duration), see options.py
    layout: bool = False  # one of open-unmix's dataset options, shared with umx-prep (layouts/options.py)


def option(default: Any, help: str, group: str, **kw) -> Any:
    return field(default=default, metadata={"option": Option(help, group, **kw)})


def describe_range(opt: Option) -> str:
    """An option's range as its error line says it: `>= 1 and <= 65536`."""
    low = f"{'>' if opt.low_open else '>='} {_number(opt.low)}"
    return f"{low} and {'<' if opt.high_open else '<='} {_number(opt.high)}"


def range_problem(value: Any, opt: Option) -> str | None:
    """What is wrong with one value of a numeric option (None: nothing): not a number, not finite,
    or outside the option's range (`Option.low` … `high`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {shown(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    below = value <= opt.low if opt.low_open else value < opt.low
    above = value >= opt.high if opt.high_open else value > opt.high
    return f"must be {describe_range(opt)}, got {shown(value)}" if below or above else None


def _number(x: float) -> str:
    """A bound as people write it: 4294967295, 0.5, 1e+09 (not 4.29497e+09)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"




def fields_with_options(cls: type) -> list[tuple[dataclasses.Field, Option]]:
    """The fields of a dataclass that are options, with their metadata, in declaration order."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]


def check_values(obj: Any, flag_prefix: str = "--") -> None:
    """Refuse a value outside its option's choices or range, in one line naming the option."""
    for f, opt in fields_with_options(type(obj)):
        value = getattr(obj, f.name)
        flag = flag_prefix + f.name.replace("_", "-")
        if value is None:
            continue
        if opt.choices is not None and not isinstance(value, (list, tuple)) and value not in opt.choices:
            raise UmxError(f"{flag} must be one of {', '.join(map(str, opt.choices))}, not '{value}'")
        if opt.low is None or opt.kind == "interval":
            continue
        for number in value if isinstance(value, (list, tuple)) else [value]:
            problem = range_problem(number, opt)
            if problem:
                raise UmxError(f"{flag} {problem}")


MAX_LIST = 4096  # the longest list option a file may give


def options_from_json(cls: type, raw: Any, where: str) -> Any:
    """An options dataclass from a JSON object (a model directory's): known keys only, each of its
    field's type (a list option: a list of its element type, empty only where its default is) and
    range; `where` begins every error line."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    if not isinstance(raw, dict):
        raise UmxError(f"{where}: must be an object")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UmxError(f"{where}: unknown option {unknown[0]!r:.60}")
    values = {}
    for name, value in raw.items():
        default = fields[name].default
        if isinstance(default, tuple):
            element = typing.get_args(hints[name])[0]
            if not isinstance(value, list) or (not value and default) or len(value) > MAX_LIST \
                    or not all(_is(v, element) for v in value):
                raise UmxError(f"{where}.{name}: must be a list of {'whole ' if element is int else ''}numbers")
            value = tuple(element(v) for v in value)
        elif not _is(value, type(default)):
            raise UmxError(f"{where}.{name}: must be {type(default).__name__}, got {value!r:.40}")
        values[name] = value
    options = cls(**values)
    check_values(options, flag_prefix=f"{where}.")
    return options


def _is(value: Any, kind: type) -> bool:
    """JSON's value of an option of type `kind` (a whole number stands for a float)."""
    if kind is float:
        return type(value) in (int, float)
    return type(value) is kind
