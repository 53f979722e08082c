"""umx-train's options as click decorators, generated from TrainConfig's `Option` metadata
(config.py): the type from the field's annotation, the default from the field, click.Choice
for `choices`, click.IntRange / FloatRange for `low` / `high` / `low_open`, the help and its
section from the table. umx-bench applies the same `train_options`."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, get_type_hints

import click

from ..cli_util import Choice, apply, option
from ..layouts import options as layout
from . import config
from .config import TrainConfig

SECTIONS = (("run", "Run options"), ("training", "Training options"), ("model", "Model options"),
            ("data", "Data options"), (layout.GROUP, layout.HEADING), ("buckets", "Buckets and the shard cache"))
TRAIN_FIELDS = set(TrainConfig.__dataclass_fields__)
_FIELDS = {f.name: (f, opt) for f, opt in config.options()}


class Interval(click.ParamType):
    """N steps (an int) or a duration ("10m", "90s", "1h", kept as text): --save-every."""

    name = "N|DURATION"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        return int(text) if text.isdigit() else text


def _click_type(hint, opt: config.Option):
    if opt.kind == "interval":
        return Interval()
    kind = next(t for t in (bool, int, float, str) if hint in (t, t | None, list[t], list[t] | None))
    if opt.choices is not None:
        return Choice(opt.choices)
    if opt.low is not None and opt.low > -math.inf and kind in (int, float):
        low = opt.low
        rng = click.IntRange if kind is int else click.FloatRange
        return rng(min=low if kind is float else int(low), max=opt.high, min_open=opt.low_open)
    return {int: click.INT, float: click.FLOAT, str: click.STRING}[kind]


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
