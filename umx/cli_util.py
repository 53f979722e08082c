"""What the command lines share: the click command class, options with a help group and
open-unmix's variadic form, and the error handling of every entry point.

`UmxCommand` (a public-API `click.Command` subclass) does three things click leaves out:
- open-unmix's variadic options: `parse_args` rewrites `--interferer-files a b c` into
  `--interferer-files a --interferer-files b --interferer-files c` for options declared
  with `option(..., nargs="+" | "*")` (click's `multiple=True`); an empty `--opt` (nargs "*")
  is recorded as an empty list, an absent one as None;
- underscore spellings (`--no_cuda`, `--input_file`) through click's `token_normalize_func`;
- `--help` in sections, one per option group (`format_options`), defaults shown.

`IntRange` / `FloatRange`: click's, refusing NaN and quoting a refused value cut short (a
5001-digit number is one short line); every number option takes one (train/options.py).

`run_command` runs one with `standalone_mode=False` and turns every failure into one line:
a value click's types refuse (`--epochs 0`, a choice not offered) and `UmxError` as `error: …`
(exit 2), an `OSError` of the machine as `error: <path>: no space left on device` etc. (exit 1);
the other usage errors (no such option, a missing argument) as click prints them (exit 2).
"""

from __future__ import annotations

import errno
import sys
from typing import Any, Callable

import click

from .errors import UmxError, shown


def normalize_token(token: str) -> str:
    """`no_cuda` → `no-cuda`: open-unmix spells some options with underscores."""
    return token.replace("_", "-")


CONTEXT_SETTINGS = dict(token_normalize_func=normalize_token, show_default=True,
                        help_option_names=["-h", "--help"], max_content_width=110)


class UmxOption(click.Option):
    """A click option with a help section (`group`) and, optionally, open-unmix's variadic
    form (`variadic` "+": one or more values, "*": zero or more)."""

    def __init__(self, *args, group: str | None = None, variadic: str | None = None, **kw):
        super().__init__(*args, **kw)
        self.group = group
        self.variadic = variadic

    def make_metavar(self, ctx: click.Context) -> str:
        metavar = super().make_metavar(ctx)
        return f"{metavar} ..." if self.variadic else metavar


class Choice(click.Choice):
    """click.Choice matching the choices as spelled (`trackfolder_fix`): the underscore
    normalization is for option names only."""

    def normalize_choice(self, choice, ctx):
        return super().normalize_choice(choice, None)


class _Bounded:
    """click's IntRange / FloatRange, but refusing NaN where there is a range (NaN compares as inside
    any) and quoting a refused value cut short (`errors.shown`): a 5001-digit `--seed` gives one
    short line. Without bounds, a number parsed for a library function to range-check."""

    kind: type = float
    what = "number"

    def convert(self, value, param, ctx):
        number = value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                number = self.kind(value)  # int(): ValueError for over 4300 digits too
            except (TypeError, ValueError):
                self.fail(f"{shown(value)} is not a {self.what}.", param, ctx)
        below = self.min is not None and (number <= self.min if self.min_open else number < self.min)
        above = self.max is not None and (number >= self.max if self.max_open else number > self.max)
        if (number != number and (self.min is not None or self.max is not None)) or below or above:
            low = "" if self.min is None else f"{self.min}{'<' if self.min_open else '<='}"
            high = "" if self.max is None else f"{'<' if self.max_open else '<='}{self.max}"
            self.fail(f"{shown(number)} is not in the range {low}x{high}.", param, ctx)
        return self.kind(number)


class IntRange(_Bounded, click.IntRange):
    """A whole-number option within a range."""

    kind, what = int, "whole number"


class FloatRange(_Bounded, click.FloatRange):
    """A number option within a range (finite: the range's bounds are)."""

    kind, what = float, "number"


def _as_list(ctx: click.Context, param: click.Parameter, value):
    """A multiple option's tuple as a list, or None where it was not given."""
    return list(value) if value else None


def option(*decls: str, group: str | None = None, nargs: str | None = None, **kw) -> Callable:
    """`click.option` with a help group; `nargs="+"`/`"*"` for open-unmix's `--opt a b c`."""
    if nargs in ("+", "*"):
        kw.update(multiple=True, variadic=nargs, callback=_as_list, default=None)
    return click.option(*decls, cls=UmxOption, group=group, **kw)


def argument(*decls: str, **kw) -> Callable:
    """`click.argument`; `nargs=-1` values come as a list."""
    if kw.get("nargs") == -1:
        kw.setdefault("callback", lambda ctx, param, value: list(value))
    return click.argument(*decls, **kw)


def apply(*decorators: Callable) -> Callable:
    """Several option decorators as one, in the order given (the first is listed first)."""
    def decorate(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return decorate


def _looks_like_option(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)  # a negative number is a value
        return False
    except ValueError:
        return True


class UmxCommand(click.Command):
    """A click command with open-unmix's variadic options and grouped help.

    `sections`: (group, heading) pairs in the order --help lists them; options of
    other groups follow under their group's name, the rest under "Options"."""

    def __init__(self, *args, sections: tuple[tuple[str, str], ...] = (), **kw):
        settings = dict(CONTEXT_SETTINGS)
        settings.update(kw.pop("context_settings", None) or {})
        super().__init__(*args, context_settings=settings, **kw)
        self.sections = tuple(sections)

    def _variadic(self) -> dict[str, UmxOption]:
        return {name: p for p in self.params if isinstance(p, UmxOption) and p.variadic
                for name in p.opts + p.secondary_opts if name.startswith("--")}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        variadic = self._variadic()
        rewritten: list[str] = []
        empty: list[UmxOption] = []
        i = 0
        while i < len(args):
            token = args[i]
            i += 1
            if token == "--":
                rewritten += args[i - 1:]
                break
            p = variadic.get("--" + normalize_token(token[2:])) if token.startswith("--") else None
            if p is None or "=" in token:
                rewritten.append(token)
                continue
            values = []
            while i < len(args) and not _looks_like_option(args[i]):
                values.append(args[i])
                i += 1
            if not values:
                if p.variadic == "+":
                    raise click.BadOptionUsage(p.name, f"Option '{token}' requires at least one value.", ctx=ctx)
                empty.append(p)
            for v in values:
                rewritten += [token, v]
        rest = super().parse_args(ctx, rewritten)
        for p in empty:  # `--source-augmentations` alone: none (not the shard set's default)
            if not ctx.params.get(p.name):
                ctx.params[p.name] = []
        return rest

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: dict[str, list[tuple[str, str]]] = {}
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx)
            if record is not None:
                rows.setdefault(getattr(p, "group", None) or "", []).append(record)
        titles = dict(self.sections)
        order = [g for g, _ in self.sections if g in rows] + [g for g in rows if g not in titles and g]
        for g in order + ([""] if "" in rows and "" not in titles else []):
            with formatter.section(titles.get(g, g) if g else "Options"):
                formatter.write_dl(rows[g])


def command(name: str, **kw) -> Callable:
    """`@click.command(name, cls=UmxCommand, …)`."""
    return click.command(name, cls=UmxCommand, **kw)


_OS_PROBLEMS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "not a folder",
    errno.EISDIR: "is a folder",
    errno.EEXIST: "already exists",
    errno.ENOENT: "not found",
}


def os_error_line(e: OSError) -> str:
    """One line for a failure of the machine rather than of umx: the path and what went wrong."""
    what = _OS_PROBLEMS.get(e.errno or 0, e.strerror or type(e).__name__)
    path = e.filename if e.filename is not None else "(unknown path)"
    return f"{path}: {what}"


def run_cli(main: Callable[[Any], int], argv: Any = None) -> int:
    """Run a CLI body, turning errors into one clear line: exit code 2 for a problem with
    the input or options (UmxError), 1 for one of the machine (disk full, read-only, …)."""
    try:
        return main(argv)
    except UmxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno is None:
            raise
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, click.Abort):
        print("interrupted", file=sys.stderr)
        return 130


def run_command(cmd: click.Command, argv: list[str] | None, prog_name: str) -> int:
    """`cmd` on `argv` (default: sys.argv[1:]) as an exit code: a refused value as one line
    `error: Invalid value for '--epochs': …` (exit 2), click's other usage errors in click's form
    (exit 2), the others as `run_cli` reports them. Shell completion is click's
    (`_UMX_TRAIN_COMPLETE=bash_source umx-train`)."""
    def body(args):
        try:
            rv = cmd.main(args=args, prog_name=prog_name, standalone_mode=False)
        except click.BadParameter as e:  # a bad value is bad input: one line, like UmxError
            print(f"error: {e.format_message()}", file=sys.stderr)
            return e.exit_code
        except click.ClickException as e:
            e.show()
            return e.exit_code
        return rv if isinstance(rv, int) else 0
    return run_cli(body, argv)
