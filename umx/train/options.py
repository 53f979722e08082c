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
from ..models import registry
from ..option_table import fields_with_options
from . import config
from .config import TrainConfig

SECTIONS = (("run", "Run options"), ("training", "Training options"), ("model", "Model options"),
            ("data", "Data options"), (layout.GROUP, layout.HEADING), ("buckets", "Buckets and the shard cache"))
# (plugin architectures add a section each: architecture_sections())
TRAIN_FIELDS = {f.name for f, _ in config.options()}
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
    return field_option(f, opt, get_type_hints(TrainConfig)[name], group)


def field_option(f: dataclasses.Field, opt: config.Option, hint, group: str | None = None,
                 unset: bool = False) -> Callable:
    """One option field as a click option. `unset`: its default stays None on the command line (an
    architecture's option: None is "not given", so a value given to another --arch is refused)."""
    name = f.name
    flag = "--" + name.replace("_", "-")
    kw: dict = dict(group=group or opt.group, help=opt.help)
    if opt.group == "buckets":  # also from the environment: UMX_STORAGE_OPTIONS, UMX_CACHE_DIR, …
        kw.update(envvar=f"UMX_{name.upper()}", show_envvar=True)
    default = f.default if f.default is not dataclasses.MISSING and not unset else None
    if unset:
        kw["help"] = f"{opt.help} (default: {f.default})"
    if hint is bool and unset:
        return option(f"{flag}/--no-{flag[2:]}", default=None, **kw)
    if hint is bool:
        return option(flag, is_flag=True, default=default, **kw)
    if hint == bool | None:
        return option(f"{flag}/--no-{flag[2:]}", default=None, **kw)
    if opt.nargs:
        return option(flag, nargs=opt.nargs, type=_click_type(hint, opt), **kw)
    if default == "":
        kw["show_default"] = False
    return option(flag, type=_click_type(hint, opt), default=default, **kw)


def plugin_fields() -> dict[str, list[tuple[dataclasses.Field, config.Option, object]]]:
    """Every installed plugin architecture's own options (arch name → its fields with metadata and
    type), for the command line; one flag per name, so two architectures may not declare one name
    differently, nor a name of umx-train's own."""
    out, seen = {}, {}
    for name in registry.names():
        arch = registry.get(name)
        if arch.options_in_config:
            continue
        hints = get_type_hints(arch.options)
        out[name] = []
        for f, opt in fields_with_options(arch.options):
            if f.name in TRAIN_FIELDS:
                raise UmxError(f"architecture '{name}': its option --{f.name.replace('_', '-')} is umx-train's own")
            other = seen.setdefault(f.name, (name, f.default, opt))
            if other[1:] != (f.default, opt):
                raise UmxError(f"architectures '{other[0]}' and '{name}' both declare --{f.name.replace('_', '-')}, "
                               "differently")
            out[name].append((f, opt, hints[f.name]))
    return out


def architecture_options(f: Callable) -> Callable:
    """The plugin architectures' option groups (one section each)."""
    decorators, done = [], set()
    for name, fields in plugin_fields().items():
        for fld, opt, hint in fields:
            if fld.name not in done:
                done.add(fld.name)
                decorators.append(field_option(fld, opt, hint, group=f"arch:{name}", unset=True))
    return apply(*decorators)(f) if decorators else f


def architecture_sections() -> tuple[tuple[str, str], ...]:
    return tuple((f"arch:{name}", f"--arch {name} options") for name in plugin_fields())


def train_options(f: Callable) -> Callable:
    """Every umx-train option: open-unmix's `--dataset/--root/--audio-backend`, the TrainConfig
    fields (but the dataset ones), the plugin architectures' option groups and the layout options."""
    return apply(
        option("--dataset", type=Choice(layout.LAYOUTS), group="run",
               help="open-unmix's dataset layout of --root (default: musdb)"),
        option("--root", group="run", help="open-unmix's dataset folder: prepared once into a cache, then streamed"),
        option("--audio-backend", group="run", help="accepted for open-unmix compatibility and ignored: "
               "umx-prep decodes audio once (soundfile, ffmpeg for .stem.mp4)"),
        *[config_option(fld.name) for fld, opt in config.options() if not opt.layout],
        architecture_options,
        layout.layout_click_options(training=True),
    )(f)


def train_config(params: dict, shards: str) -> TrainConfig:
    """The TrainConfig of a command's parsed values, training from `shards`: the chosen plugin
    architecture's options in `arch_options`; one given to another architecture is refused."""
    arch = params.get("arch") or registry.DEFAULT
    arch_options = None
    for name, fields in plugin_fields().items():
        given = {f.name: params[f.name] for f, _, _ in fields if params.get(f.name) is not None}
        if name == arch:
            arch_options = registry.get(name).options(**given)
        else:
            own = {f.name for f, _, _ in plugin_fields().get(arch, [])}
            stray = [k for k in given if k not in own]
            if stray:
                raise UmxError(f"--{stray[0].replace('_', '-')} is an option of --arch {name}, not of --arch {arch}")
    return TrainConfig(**{**{k: v for k, v in params.items() if k in TRAIN_FIELDS}, "shards": shards,
                          "arch_options": arch_options})
