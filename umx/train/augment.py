"""Device-side augmentation on whole batches `[batch, sources, channels, time]`.

In the style of Demucs' augment.py: each augmentation is a few-line module.
They run after the int16 crops reach the device, so the CPU workers only copy
memory. Every module draws from the generator it is given, which the trainer
seeds per (seed, epoch): a resumed run repeats the same draws.
"""

from __future__ import annotations

import torch
from typing import Sequence

from torch import Tensor, nn

from .slots import TargetSlot

INT16_SCALE = 32768.0


class Gain(nn.Module):
    """Scale each source by U(low, high) — open-unmix's `gain` source augmentation,
    so the model does not learn fixed source levels."""

    def __init__(self, low: float = 0.25, high: float = 1.25):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b, s = wav.shape[:2]
        g = torch.rand(b, s, 1, 1, device=wav.device, generator=generator, dtype=wav.dtype)
        return wav * (self.low + g * (self.high - self.low))


class ChannelSwap(nn.Module):
    """Swap left and right of each source with probability p — open-unmix's
    `channelswap`, so the model does not learn a fixed stereo placement."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if wav.shape[2] != 2:
            return wav
        b, s = wav.shape[:2]
        swap = torch.rand(b, s, 1, 1, device=wav.device, generator=generator) < self.p
        return torch.where(swap, wav.flip(2), wav)


class Remix(nn.Module):
    """Random track mixing with the batch as the pool of tracks; the first `keep` slots (the
    target of a single-target run) stay with their own track.

    independent: each other slot comes from another random item (its own permutation per
    slot, Demucs' Remix) — open-unmix's `random_track_mix`; in a joint run (`keep=0`) every
    source slot, targets included, is drawn independently.
    joint: all interferer slots move together, so a sample's interferers are one other
    track's — open-unmix's `random_interferer_mix` (trackfolder_var).
    """

    def __init__(self, joint: bool = False, keep: int = 1):
        super().__init__()
        self.joint, self.keep = joint, keep

    def forward(self, wav: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b, s = wav.shape[:2]
        k = self.keep
        if b < 2 or s <= max(k, 1):
            return wav
        n = 1 if self.joint else s - k
        perms = torch.argsort(torch.rand(n, b, device=wav.device, generator=generator), dim=1)
        moved = [wav[perms[0 if self.joint else i], k + i] for i in range(s - k)]
        return torch.stack([*wav[:, :k].unbind(1), *moved], dim=1)


AUGMENTATIONS = {"gain": Gain, "channelswap": ChannelSwap}


class Augment(nn.Module):
    """int16 batch → float → [remix] → source augmentations in the given order.

    `remix` is None, "independent" or "joint" (see Remix). A stored input slot
    (aligned data, `input_slot=True`) is never augmented: such sets never are.
    """

    def __init__(self, source_augmentations: list[str] = (), remix: str | None = None, keep: int = 1):
        super().__init__()
        unknown = [a for a in source_augmentations if a not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown source augmentation(s) {unknown}; available: {sorted(AUGMENTATIONS)}")
        steps = ([Remix(joint=remix == "joint", keep=keep)] if remix else []) + [AUGMENTATIONS[a]() for a in source_augmentations]
        self.steps = nn.ModuleList(steps)

    def forward(self, pcm: Tensor, generator: torch.Generator | None = None) -> Tensor:
        wav = pcm.float() / INT16_SCALE
        for step in self.steps:
            wav = step(wav, generator)
        return wav


def mix_and_target(wav: Tensor, input_slot: bool = False, complement: bool = False,
                   targets: Sequence[TargetSlot] | None = None) -> tuple[Tensor, Tensor]:
    """`[batch, slots, channels, time]` → (model input x, target y).

    x is the sum of the sources, or the last slot where it is a stored input;
    y is slot 0, or with `complement` everything but slot 0 (musdb's accompaniment).
    With `targets`, y is every target's `[batch, targets, channels, time]`.
    """
    x = wav[:, -1] if input_slot else wav.sum(1)
    if targets is None:
        return x, (x - wav[:, 0]) if complement else wav[:, 0]
    return x, torch.stack([x - wav[:, t.slot] if t.complement else wav[:, t.slot] for t in targets], dim=1)
