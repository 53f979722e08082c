"""JSON from outside (an option's value, a model directory's file): one parser, one line per problem.

Python's own errors are not one line of use: a number of over 4300 digits raises a bare ValueError,
deep nesting a RecursionError, bytes that are not UTF-8 a UnicodeDecodeError."""

from __future__ import annotations

import json

from .errors import UmxError


def parse_object(data: str | bytes, where: str, what: str) -> dict:
    """The JSON object in `data`, or UmxError naming `where`: not UTF-8, not JSON, a number too long
    for Python, nested too deeply to be `what`, or not an object (`what` then says what it should be)."""
    try:
        value = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data, parse_int=_whole_number)
    except ValueError as e:  # UnicodeDecodeError, JSONDecodeError, and a number too long (_whole_number)
        raise UmxError(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise UmxError(f"{where}: nested too deeply to be {what}") from None
    if not isinstance(value, dict):
        raise UmxError(f"{where}: must be a JSON object ({what})")
    return value


def _whole_number(text: str) -> int:
    """A JSON integer; Python reads none of over 4300 digits (and says so with a bare ValueError)."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"a whole number of {len(text.lstrip('-'))} digits, longer than Python reads") from None


def json_object(text: str | None, flag: str) -> dict:
    """An option's JSON object (`--storage-options`; {} where not given), or one line naming the option."""
    return parse_object(text, flag, "options, e.g. '{\"endpoint_url\": \"http://…\"}'") if text else {}
