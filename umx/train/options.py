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
from ..option_table import check_values, fields_with_options
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
    kind = next(t for t in (bool, int, float, str) if hint in (t, t | None, list[t], list[t] | None, tuple[t, ...]))
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
                 unset: bool = False, default_text: str | None = None) -> Callable:
    """One option field as a click option. `unset`: its default stays None on the command line (an
    architecture's option: None is "not given", so a value given to another --arch is refused)."""
    name = f.name
    flag = "--" + name.replace("_", "-")
    kw: dict = dict(group=group or opt.group, help=opt.help)
    if opt.group == "buckets":  # also from the environment: UMX_STORAGE_OPTIONS, UMX_CACHE_DIR, …
        kw.update(envvar=f"UMX_{name.upper()}", show_envvar=True)
    default = f.default if f.default is not dataclasses.MISSING and not unset else None
    if unset:
        kw["help"] = f"{opt.help} (default: {default_text if default_text is not None else f.default})"
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


@dataclasses.dataclass
class ArchitectureOption:
    """One flag of the architectures' option groups, and the architectures that take it."""

    field: dataclasses.Field
    option: config.Option
    hint: object
    archs: list[str]


def architecture_fields() -> dict[str, ArchitectureOption]:
    """Every architecture's own options but open-unmix's (which are umx-train's fields), by name. One
    flag per name: several architectures may share one (--depth), with one type and one choice list;
    each keeps its own default, which applies where the flag is not given, and its own help (the
    flag's help joins them) and range (checked by its options' dataclass). The flag is listed in its
    first architecture's section. None may be a name of umx-train's."""
    out: dict[str, ArchitectureOption] = {}
    helps: dict[str, dict[str, list[str]]] = {}  # flag → help text → the architectures saying it
    for name in registry.names():
        arch = registry.get(name)
        if arch.options_in_config:
            continue
        hints = get_type_hints(arch.options)
        for f, opt in fields_with_options(arch.options):
            if f.name in TRAIN_FIELDS:
                raise UmxError(f"architecture '{name}': its option --{f.name.replace('_', '-')} is umx-train's own")
            known = out.setdefault(f.name, ArchitectureOption(f, opt, hints[f.name], []))
            if known.hint != hints[f.name] or known.option.choices != opt.choices \
                    or known.option.nargs != opt.nargs:
                raise UmxError(f"architectures '{known.archs[0]}' and '{name}' both declare "
                               f"--{f.name.replace('_', '-')}, differently")
            known.archs.append(name)
            helps.setdefault(f.name, {}).setdefault(opt.help, []).append(name)
    for flag, texts in helps.items():
        shared = out[flag]
        if len(shared.archs) > 1:  # the flag's help: each architecture's own
            joined = "; ".join(f"{', '.join(archs)}: {text}" for text, archs in texts.items()) if len(texts) > 1 \
                else shared.option.help
            shared.option = dataclasses.replace(shared.option, help=joined, low=widest_bound(shared, "low"),
                                                high=widest_bound(shared, "high"))
    return out


def widest_bound(o: ArchitectureOption, end: str) -> float | None:
    """The widest range of a shared flag's architectures (each one's own range is checked by its
    options' dataclass): the command line takes what any of them takes."""
    values = [_declared(a)[o.field.name] for a in o.archs]
    bounds = [getattr(v, end) for v in values]
    if any(b is None for b in bounds):
        return None
    return min(bounds) if end == "low" else max(bounds)


def _declared(arch: str) -> dict[str, config.Option]:
    """One architecture's options by name."""
    return {f.name: opt for f, opt in fields_with_options(registry.get(arch).options)}


def own_fields(arch: str) -> list[str]:
    """The option names of one architecture (none for open-unmix: its are umx-train's fields)."""
    return [name for name, o in architecture_fields().items() if arch in o.archs]


def architecture_options(f: Callable) -> Callable:
    """The architectures' option groups as click options (one help section per group)."""
    decorators = []
    for o in architecture_fields().values():
        defaults = {a: registry.get(a).options.__dataclass_fields__[o.field.name].default for a in o.archs}
        shown = ", ".join(f"{a} {_shown(d)}" for a, d in defaults.items()) if len(set(map(str, defaults.values()))) > 1 \
            else _shown(next(iter(defaults.values())))
        decorators.append(field_option(o.field, o.option, o.hint, unset=True, default_text=shown))
    return apply(*decorators)(f) if decorators else f


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def architecture_sections() -> tuple[tuple[str, str], ...]:
    """One help section per option group, naming the architectures that declare it."""
    groups: dict[str, list[str]] = {}
    for o in architecture_fields().values():
        groups.setdefault(o.option.group, [])
    for name in registry.names():
        if not registry.get(name).options_in_config:
            for _, opt in fields_with_options(registry.get(name).options):
                archs = groups.setdefault(opt.group, [])
                if name not in archs:
                    archs.append(name)
    return tuple((group, f"--arch {', '.join(archs)} options") for group, archs in groups.items())


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


def train_config(params: dict, shards: str, given_names: set[str] | None = None) -> TrainConfig:
    """The TrainConfig of a command's parsed values, training from `shards`: the chosen architecture's
    own options in `arch_options` (one given to another architecture is refused); with --config, an
    MSST config file's values where `given_names` (the options given on the command line) has none."""
    arch = params.get("arch") or registry.DEFAULT
    fields = architecture_fields()
    given = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in params.items()
             if k in fields and v is not None and v != ()}  # () : a list option not given
    if params.get("config"):
        params, given = _with_config(params, given, arch, given_names if given_names is not None else set(params))
    stray = [k for k in given if arch not in fields[k].archs]
    if stray:
        owners = ", ".join(fields[stray[0]].archs)
        raise UmxError(f"--{stray[0].replace('_', '-')} is an option of --arch {owners}, not of --arch {arch}")
    arch_options = None if registry.get(arch).options_in_config else registry.get(arch).options(**given)
    if arch_options is not None:
        check_values(arch_options)
    return TrainConfig(**{**{k: v for k, v in params.items() if k in TRAIN_FIELDS}, "shards": shards,
                          "arch_options": arch_options})


def given_options(params: dict) -> set[str]:
    """The options of the running click command that were given (command line or environment), not
    defaults: they override --config's values."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {n for n in params if ctx.get_parameter_source(n) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


def _with_config(params: dict, given: dict, arch: str, given_names: set[str]) -> tuple[dict, dict]:
    """--config's values under the command line's (msst_config.py)."""
    from . import msst_config

    chosen = registry.get(arch)
    if chosen.options_in_config:
        raise UmxError(f"--config {params['config']}: an MSST config file configures an architecture MSST trains "
                       f"(--arch {', '.join(n for n in registry.names() if not registry.get(n).options_in_config)}), "
                       f"not --arch {arch}")
    hints = get_type_hints(chosen.options)
    values = msst_config.read(params["config"], hints, arch)
    msst_config.print_warnings(values)
    train, model = msst_config.merged(values, given, given_names, set(hints))
    unknown = [k for k in train if k not in TRAIN_FIELDS]
    if unknown:
        raise UmxError(f"--config: {unknown[0]} is no umx-train option")  # (a mapping of msst_config's own)
    return {**params, **train}, {**model, **given}
