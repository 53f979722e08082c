"""The architectures umx knows, chosen in one place: by name, from an allow-list.

umx's own architectures are listed here; others come from installed packages that register in the
`umx.architectures` entry-point group (the packaging convention for plugins):

    [project.entry-points."umx.architectures"]
    mymodel = "mypackage.umx_arch:ARCHITECTURE"

A run names its architecture with `--arch`; a model directory names it in `separator.json`
("architecture"; absent: open-unmix's own directories). Either is only ever a key into this list:
a name that is not installed and registered is refused, and no module path from a file is ever
imported, so an untrusted model directory cannot make umx import code (docs/security.md).
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Sequence

import torch

from ..errors import UmxError
from ..names import safe_name
from .directory import ARCHITECTURE_KEY, SEPARATOR_JSON, read_json
from .protocol import Architecture, Separation, SeparationOptions

GROUP = "umx.architectures"
DEFAULT = "openunmix"
BUILTIN = {DEFAULT: ("umx.models.openunmix", "ARCHITECTURE"),  # name → (module, attribute): umx's own
           "bs_roformer": ("umx.models.roformer", "BS_ROFORMER"),
           "mel_band_roformer": ("umx.models.roformer", "MEL_BAND_ROFORMER"),
           "htdemucs": ("umx.models.htdemucs", "ARCHITECTURE")}


@lru_cache(maxsize=1)
def _plugins() -> dict:
    """Installed plugins by name (their entry points, not loaded: nothing is imported here)."""
    return {ep.name: ep for ep in entry_points(group=GROUP) if ep.name not in BUILTIN}


def names() -> tuple[str, ...]:
    """Every architecture that can be chosen: umx's own first, then the installed plugins (sorted)."""
    return (*BUILTIN, *sorted(_plugins()))


def get(name: str, where: str = "--arch") -> Architecture:
    """The architecture registered as `name`; one line naming `where` for any other name."""
    if isinstance(name, str) and name in BUILTIN:  # without scanning the installed packages' entry points
        module, attribute = BUILTIN[name]
        return vars(importlib.import_module(module))[attribute]
    if not isinstance(name, str) or name not in _plugins():
        raise UmxError(f"{where}: unknown architecture {str(name)[:80]!r} (installed: {', '.join(names())})")
    return _load_plugin(name)


@lru_cache(maxsize=None)
def _load_plugin(name: str) -> Architecture:
    try:
        return _plugins()[name].load()
    except Exception as e:  # noqa: BLE001 (a broken plugin: say which)
        raise UmxError(f"architecture '{name}': its plugin {_plugins()[name].value} failed to load "
                       f"({type(e).__name__}: {e})") from None


def directory_architecture(model_dir: str | Path) -> Architecture:
    """The architecture a model directory names in its `separator.json` (open-unmix's, which name
    none, are open-unmix's)."""
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise UmxError(f"{folder}: model directory not found")
    path = folder / SEPARATOR_JSON
    if not path.is_file():
        return get(DEFAULT)
    name = read_json(path, "a model directory's separator settings").get(ARCHITECTURE_KEY, DEFAULT)
    if not isinstance(name, str):
        raise UmxError(f"{path}: {ARCHITECTURE_KEY} must be an architecture's name, got {name!r:.80}")
    safe_name(name, ARCHITECTURE_KEY, str(path))
    return get(name, f"{path}: {ARCHITECTURE_KEY}")


def load_separation(model_dir: str | Path, targets: Sequence[str] | None, how: SeparationOptions,
                    device: str | torch.device = "cpu") -> Separation:
    """A model directory's whole-track separation, frozen, on `device` (umx-separate, umx-eval)."""
    folder = Path(model_dir).expanduser()
    return directory_architecture(folder).separation(folder, list(targets) if targets else None, how,
                                                     torch.device(device))


def directory_targets(model_dir: str | Path) -> list[str]:
    """The targets a model directory separates."""
    folder = Path(model_dir).expanduser()
    return directory_architecture(folder).directory_targets(folder)
