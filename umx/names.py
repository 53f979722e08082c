"""Names from untrusted input become paths only through here.

A shard set, a bucket listing or a model directory is handed to umx by someone
else: every name in it (shard and object names, track ids, source and target
names, cache entries, evaluation outputs) may be hostile. `safe_name` checks one
path component and `safe_key` a relative key of several; `inside` joins a
checked name to a folder and confirms that the result stays in it, so a name
that slipped past a check still cannot write elsewhere (defence in depth).
`subfolder` makes the folders umx writes into below an output folder, and refuses
a symbolic link planted at one of them: it would carry every write below it out.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from pathlib import Path
from typing import Sequence

from .errors import UmxError

MAX_NAME_BYTES = 200  # below NAME_MAX (255): room for the suffixes umx adds (.json, .part, .tmp<16 hex>)
MAX_KEY_BYTES = 1024
MAX_KEY_DEPTH = 16

# Unicode categories never allowed in a name: controls (newline, NUL, …), format characters
# (bidirectional overrides that make a name display as another), surrogates, private use,
# unassigned code points, and line/paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


class UnsafeNameError(UmxError):
    """A name from a file, manifest, record, key or URL that must not become a path."""


def _problem(name: object) -> str | None:
    """Why `name` is not a safe single path component, or None if it is."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not name:
        return "is empty"
    if name in (".", ".."):
        return "is a relative folder reference"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    for c in name:
        if unicodedata.category(c) in _REFUSED_CATEGORIES:
            return f"contains the control or format character U+{ord(c):04X}"
    if name != name.strip():
        return "starts or ends with white space"
    if unicodedata.normalize("NFC", name) != name:
        return "is not in Unicode normal form NFC (another spelling of the same name would be another file)"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def _shown(name: object) -> str:
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "…"


def safe_name(name: object, what: str, where: str) -> str:
    """`name` if it is safe as one path component (a file or folder name), else
    UnsafeNameError naming `where` (the file or URL it came from) and `what` it is."""
    problem = _problem(name)
    if problem is not None:
        raise UnsafeNameError(f"{where}: {what} {_shown(name)} is not a safe name: {problem}")
    return name  # type: ignore[return-value]


def safe_key(key: object, what: str, where: str) -> str:
    """`key` if it is a safe relative path of plain names joined by '/' (a zarr object key)."""
    if not isinstance(key, str):
        raise UnsafeNameError(f"{where}: {what} {_shown(key)} is not a safe key: must be a string")
    if key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        raise UnsafeNameError(f"{where}: {what} {_shown(key)} is not a safe key: it is an absolute path")
    parts = key.split("/")
    if len(parts) > MAX_KEY_DEPTH or len(key.encode("utf-8", "replace")) > MAX_KEY_BYTES:
        raise UnsafeNameError(f"{where}: {what} {_shown(key)} is not a safe key: too deep or too long")
    for part in parts:
        problem = _problem(part)
        if problem is not None:
            raise UnsafeNameError(f"{where}: {what} {_shown(key)} is not a safe key: component "
                                  f"{_shown(part)} {problem}")
    return key


def inside(folder: str | Path, key: str, what: str = "name", where: str | None = None) -> Path:
    """`folder / key` for a checked key, confirmed to stay inside `folder` (symbolic links
    included) — the last guard before a name from outside is opened for writing."""
    folder = Path(folder)
    safe_key(key, what, where or str(folder))
    path = folder / key
    base = folder.resolve()
    if not path.resolve().is_relative_to(base):
        raise UnsafeNameError(f"{where or folder}: {what} {_shown(key)} leads outside {folder}")
    return path


def subfolder(base: str | Path, names: Sequence[str], where: str) -> Path:
    """`base/names[0]/names[1]/…`, each component a real folder (made here where missing).

    `base` is the output folder the user named (made if missing, wherever a link of theirs leads);
    below it umx follows no symbolic link: a link (or a file) planted at a component is refused,
    naming it, since every file written below would otherwise land where the link points."""
    folder = Path(base)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        folder = folder / safe_name(name, "folder name", where)
        try:
            folder.mkdir()
        except FileExistsError:
            pass
        mode = os.lstat(folder).st_mode
        if stat.S_ISLNK(mode):
            raise UnsafeNameError(f"{folder}: is a symbolic link; umx writes only into real folders below "
                                  f"{base} (remove the link, or write elsewhere)")
        if not stat.S_ISDIR(mode):
            raise UnsafeNameError(f"{folder}: exists and is not a folder (remove it, or write elsewhere)")
    return folder
