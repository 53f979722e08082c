"""What Music-Source-Separation-Training (MSST) users bring: its checkpoints and its config files.

**Checkpoints.** MSST saves `{"model_state_dict": …, "optimizer_state_dict": …, …}` while training
and plain state dicts for release, of its vendored copy of these networks. The `bs-roformer`
package's modules hold the same parameters under other names, where built as MSST builds them (one
residual stream, `zero_dc`; Mel-Band: no value residual and no linear-attention layer, which shifts
the time and frequency transformers' index by one):

    layers.{i}.{t}.layers.{j}.{a}.X  →  layers.{i}.{t'}.layers.{j}.{a}.branch.X
    layers.{i}.{t}.norm.X            →  layers.{i}.{t'}.norm.X          (t' = t + 1 for Mel-Band)

BS-RoFormer's package layers also mix in the first layer's values (`to_value_residual_mix`, which
MSST's copy lacks); those start neutral (weight 0, bias -1e4: a sigmoid of exactly 0, and a zero
gradient), so the loaded network computes what MSST's does. The file is read bounded and
`weights_only` (no pickle runs); keys or shapes that do not fit are one line naming them.

**Config files** (`--config`): `config.py`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ...errors import UmxError
from ..weights import MAX_ELEMENT_BYTES, PICKLE_SLACK, read_weights

WRAPPERS = ("state", "state_dict", "model_state_dict")  # how MSST's load_start_checkpoint unwraps a file
VALUE_MIX = "to_value_residual_mix"
NEUTRAL_BIAS = -1e4
_LAYER = re.compile(r"^layers\.(\d+)\.(\d+)\.layers\.(\d+)\.(\d+)\.(.*)$")
_NORM = re.compile(r"^layers\.(\d+)\.(\d+)\.(norm\..*)$")


def package_keys(state: dict, arch: str) -> dict:
    """MSST's key names → the package's (see the module docstring)."""
    shift = 1 if arch == "mel_band_roformer" else 0
    out = {}
    for key, value in state.items():
        layer, norm = _LAYER.match(key), _NORM.match(key)
        if layer:
            i, t, j, a, rest = layer.groups()
            key = f"layers.{i}.{int(t) + shift}.layers.{j}.{a}.branch.{rest}"
        elif norm:
            i, t, rest = norm.groups()
            key = f"layers.{i}.{int(t) + shift}.{rest}"
        out[key] = value
    return out


def load_msst_checkpoint(path: Path, network: nn.Module, arch: str) -> None:
    """MSST's weights into `network` (the package's, built as MSST builds it), or one line naming the
    keys that differ."""
    live = network.state_dict()
    elements = sum(t.numel() for t in live.values())
    # a training checkpoint also holds Adam's two moments (and MSST's metrics): room for 4 copies
    raw = read_weights(path, elements * MAX_ELEMENT_BYTES * 4 + PICKLE_SLACK, f"this run's {arch}")
    for wrapper in WRAPPERS:
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) and torch.is_tensor(v)
                                                       for k, v in raw.items()):
        raise UmxError(f"{path}: not an MSST checkpoint (a state dict, or one under {', '.join(WRAPPERS)})")
    state = package_keys(raw, arch)
    for key in live:
        if VALUE_MIX in key and key not in state:  # the package's extra value mixing, neutral
            state[key] = torch.zeros_like(live[key]) if key.endswith("weight") else \
                torch.full_like(live[key], NEUTRAL_BIAS)
    missing = sorted(live.keys() - state.keys())
    unexpected = sorted(state.keys() - live.keys())
    wrong = sorted(k for k in live.keys() & state.keys() if state[k].shape != live[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} not in this network (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(wrong)} of other shapes (e.g. {wrong[0]}: {list(state[wrong[0]].shape)}, here "
                 f"{list(live[wrong[0]].shape)})" if wrong else ""]
        raise UmxError(f"{path}: does not fit this run's {arch} (--dim, --depth, bands, … and --targets must be "
                       f"the checkpoint's): keys {'; '.join(p for p in parts if p)}")
    network.load_state_dict(state, strict=True)
