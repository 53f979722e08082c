"""Small helpers shared by the command-line entry points."""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable

from .errors import UmxError


def underscore_aliases(parser: argparse.ArgumentParser) -> None:
    """Accept `--no_cuda` for `--no-cuda` etc., as open-unmix's scripts did."""
    for action in parser._actions:
        extra = [o.replace("-", "_").replace("__", "--", 1) for o in action.option_strings
                 if o.startswith("--") and "-" in o[2:]]
        for alias in extra:
            if alias not in parser._option_string_actions:
                parser._option_string_actions[alias] = action
                action.option_strings.append(alias)


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


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
