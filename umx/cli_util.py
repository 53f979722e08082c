"""Small helpers shared by the command-line entry points."""

from __future__ import annotations

import argparse
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


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a CLI body, turning user errors into one clear line and exit code 2."""
    try:
        return main(argv)
    except UmxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
