"""User-facing errors: each names the thing (file, field, shard) and the problem.

CLIs catch `UmxError` and print its message instead of a traceback.
"""


class UmxError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class AudioError(UmxError):
    """An audio file could not be read or written."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ManifestError(UmxError):
    """A manifest is missing, malformed, or fails validation; names the field."""

    def __init__(self, where, field: str, problem: str):
        self.where = str(where)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.where}: field '{field}': {problem}")


class LayoutError(UmxError):
    """A dataset folder does not match the layout it was declared as."""


class ShardError(UmxError):
    """A shard is missing, damaged, or does not match its manifest entry."""


SHOWN_CHARS = 40  # of a refused value, in its error line


def shown(value) -> str:
    """A refused value as an error line quotes it: cut short, so that one line stays one short line
    (a 5001-digit number, a pasted file), and never failing itself (Python's str() of an int of over
    4300 digits raises ValueError)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"a whole number of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}… ({len(value) if isinstance(value, str) else len(text)} characters)"
