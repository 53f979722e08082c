"""Exponential moving averages of the weights (`--ema 0.999 …`), as Demucs and MSST keep them.

One shadow copy of every unit's network (models.protocol: open-unmix's targets) per decay, updated on the device after each optimizer
step (`torch._foreach_lerp_`, no host sync, so it lives inside the captured CUDA graph too):
p_ema ← decay · p_ema + (1 - decay) · p, for every floating-point entry of the state dict, BatchNorm's
running statistics included (as Demucs does: averaged weights with the live statistics disagree);
integer counters are copied. The trainer validates every set next to the raw weights
each epoch and writes the best as `<target>.pth`; the shadows travel in the checkpoint, so a
resumed run continues the very averages.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor

from ..models.protocol import Trainable


def label(decay: float | None) -> str:
    """How `<target>.json` names a weight set: "raw", or "ema0.999"."""
    return "raw" if decay is None else f"ema{decay:g}"


class EMA:
    """The moving averages of a model's units, one set per decay."""

    def __init__(self, model: Trainable, decays: list[float]):
        self.model, self.decays = model, list(decays)
        self.shadows: dict[float, dict[str, dict[str, Tensor]]] = {
            d: {t: {k: v.detach().clone() for k, v in m.state_dict().items()} for t, m in model.units.items()}
            for d in self.decays}
        # per (decay, target): the tensors each step averages or copies, found once (the live tensors are
        # the modules' own, which training and load_state_dict change in place)
        self._pairs = {}
        for d, shadow in self.shadows.items():
            for t, m in model.units.items():
                live = m.state_dict()
                floats = [k for k, v in live.items() if v.is_floating_point()]
                others = [k for k in live if k not in floats]
                self._pairs[d, t] = ([shadow[t][k] for k in floats], [live[k] for k in floats],
                                     [shadow[t][k] for k in others], [live[k] for k in others])

    @torch.no_grad()
    def update(self, names: list[str]) -> None:
        """One step of every average, for the networks that just stepped."""
        for decay in self.decays:
            for target in names:
                avg, live, avg_other, live_other = self._pairs[decay, target]
                torch._foreach_lerp_(avg, live, 1.0 - decay)
                for a, v in zip(avg_other, live_other):
                    a.copy_(v)

    @contextlib.contextmanager
    def swapped(self, decay: float, names: list[str]) -> Iterator[None]:
        """The networks `names` hold the `decay` averages inside the block, their own weights after."""
        saved = {t: {k: v.detach().clone() for k, v in self.model.units[t].state_dict().items()} for t in names}
        try:
            with torch.no_grad():
                for t in names:
                    for k, v in self.model.units[t].state_dict().items():
                        v.copy_(self.shadows[decay][t][k])
            yield
        finally:
            with torch.no_grad():
                for t in names:
                    for k, v in self.model.units[t].state_dict().items():
                        v.copy_(saved[t][k])

    def weights(self, decay: float | None, target: str) -> dict[str, Tensor]:
        """A target's state dict of one weight set (None: the raw weights)."""
        return self.model.units[target].state_dict() if decay is None else self.shadows[decay][target]

    def snapshot(self) -> dict:
        return {d: {t: {k: v.clone() for k, v in s.items()} for t, s in sh.items()} for d, sh in self.shadows.items()}

    @torch.no_grad()
    def restore(self, snap: dict) -> None:
        for d, sh in snap.items():
            for t, s in sh.items():
                for k, v in s.items():
                    self.shadows[d][t][k].copy_(v)

    def target_state(self, target: str) -> dict:
        """A target's averages for its checkpoint: label → state dict."""
        return {label(d): self.shadows[d][target] for d in self.decays}

    @torch.no_grad()
    def load_target_state(self, target: str, state: dict | None) -> None:
        """A target's averages from its checkpoint (label → state dict): every entry present, a tensor
        of the live entry's shape (copy_ would broadcast a smaller one), and finite where it is
        averaged. KeyError: an average is missing; ValueError: one does not fit (checked whole before
        anything is copied)."""
        checked = {}
        for d in self.decays:
            saved = state.get(label(d)) if isinstance(state, dict) else None
            if saved is None:
                raise KeyError(f"no {label(d)} average of '{target}' in the checkpoint")
            if not isinstance(saved, dict):
                raise ValueError(f"its {label(d)} average of '{target}' is not a state dict")
            for k, v in self.shadows[d][target].items():
                value = saved.get(k)
                if not torch.is_tensor(value) or value.shape != v.shape or value.is_floating_point() != v.is_floating_point():
                    raise ValueError(f"its {label(d)} average of '{target}' has no {k} of shape {list(v.shape)}")
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise ValueError(f"its {label(d)} average of '{target}' holds a value that is not finite in {k}")
                checked[d, k] = value
        for d in self.decays:
            for k, v in self.shadows[d][target].items():
                v.copy_(checked[d, k])
