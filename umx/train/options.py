"""umx-train's options as click decorators, generated from TrainConfig's `Option` metadata
(config.py): the type from the field's annotation, the default from the field, click.Choice
for `choices`, cli_util.IntRange / FloatRange for `low` / `high` (every number has both) /
`low_open` / `high_open`, the help and its section from the table. umx-bench applies the same
`train_options`; the layout options take their types from here too (`field_type`)."""

from __future__ import annotations

import dataclasses
from typing import Callable, get_type_hints

import click

from ..cli_util import Choice, FloatRange, IntRange, apply, option
from ..errors import UmxError
from ..layouts import options as layout
from . import config
from .config import TrainConfig

SECTIONS = (("run", "Run options"), ("training", "Training options"), ("model", "Model options"),
            ("data", "Data options"), (layout.GROUP, layout.HEADING), ("buckets", "Buckets and the shard cache"))
TRAIN_FIELDS = set(TrainConfig.__dataclass_fields__)
_FIELDS = {f.name: (f, opt) for f, opt in config.options()}


class Interval(click.ParamType):
    """N steps (an int) or a duration ("10m", "90s", "1h", kept as text): --save-every, refused here
    as TrainConfig refuses it (config.parse_interval), so umx-bench takes no value umx-train refuses."""

    name = "N|DURATION"

    def __init__(self, opt: config.Option):
        self.opt = opt

    def convert(self, value, param, ctx):
        try:
            steps, _ = config.parse_interval(value, self.opt, flag="")
        except UmxError as e:
            self.fail(str(e), param, ctx)
        text = str(value).strip()
        return steps if text.isdigit() else text


def _click_type(hint, opt: config.Option):
    """The click type of one field: every number is range-checked (config.Option's low … high)."""
    if opt.kind == "interval":
        return Interval(opt)
    kind = next(t for t in (bool, int, float, str) if hint in (t, t | None, list[t], list[t] | None))
    if opt.choices is not None:
        return Choice(opt.choices)
    return range_type(kind, opt) if kind in (int, float) else click.STRING


def range_type(kind: type, opt: config.Option) -> click.ParamType:
    """The click type of a number option of range `opt` (also umx-prep's and the layout options)."""
    if opt.low is None or opt.high is None:
        raise TypeError(f"a number option needs both bounds in its Option, got {opt}")
    if kind is int:
        return IntRange(min=int(opt.low), max=int(opt.high), min_open=opt.low_open, max_open=opt.high_open)
    return FloatRange(min=opt.low, max=opt.high, min_open=opt.low_open, max_open=opt.high_open)


def field_type(name: str) -> click.ParamType:
    """The click type of one TrainConfig field (the layout options take theirs from here)."""
    return _click_type(get_type_hints(TrainConfig)[name], _FIELDS[name][1])


def config_option(name: str, group: str | None = None) -> Callable:
    """One TrainConfig field as a click option (umx-prep shares `--storage-options`)."""
    f, opt = _FIELDS[name]
    hint = get_type_hints(TrainConfig)[name]
    flag = "--" + name.replace("_", "-")
    kw: dict = dict(group=group or opt.group, help=opt.help)
    if opt.group == "buckets":  # also from the environment: UMX_STORAGE_OPTIONS, UMX_CACHE_DIR, …
        kw.update(envvar=f"UMX_{name.upper()}", show_envvar=True)
    default = f.default if f.default is not dataclasses.MISSING else None
    if hint is bool:
        return option(flag, is_flag=True, default=default, **kw)
    if hint == bool | None:
        return option(f"{flag}/--no-{flag[2:]}", default=None, **kw)
    if opt.nargs:
        return option(flag, nargs=opt.nargs, type=_click_type(hint, opt), **kw)
    if default == "":
        kw["show_default"] = False
    return option(flag, type=_click_type(hint, opt), default=default, **kw)


def train_options(f: Callable) -> Callable:
    """Every umx-train option: open-unmix's `--dataset/--root/--audio-backend`, the TrainConfig
    fields (but the dataset ones) and the layout options."""
    return apply(
        option("--dataset", type=Choice(layout.LAYOUTS), group="run",
               help="open-unmix's dataset layout of --root (default: musdb)"),
        option("--root", group="run", help="open-unmix's dataset folder: prepared once into a cache, then streamed"),
        option("--audio-backend", group="run", help="accepted for open-unmix compatibility and ignored: "
               "umx-prep decodes audio once (soundfile, ffmpeg for .stem.mp4)"),
        *[config_option(fld.name) for fld, opt in config.options() if not opt.layout],
        layout.layout_click_options(training=True),
    )(f)


def train_config(params: dict, shards: str) -> TrainConfig:
    """The TrainConfig of a command's parsed values, training from `shards`."""
    return TrainConfig(**{**{k: v for k, v in params.items() if k in TRAIN_FIELDS}, "shards": shards})
