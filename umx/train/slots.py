"""Slots: how a track becomes the `[slots, channels, time]` rows of a batch.

The target first, then the interferers (zero-padded to a fixed count), then the stored
input where it is the model input. What each slot holds comes from the manifest's
sampling section, never from the layout name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UmxError
from ..shards.manifest import Manifest
from ..shards.records import TrackRecord


@dataclass(frozen=True)
class TargetSlot:
    """Where a training target comes from: slot `slot`, or with `complement` the sum of every
    slot but that one (open-unmix's musdb `accompaniment`: the mixture minus the vocals)."""

    name: str
    slot: int
    complement: bool = False


@dataclass(frozen=True)
class Slots:
    """How a record becomes `[slots, channels, time]`: the targets' sources first (`required`
    of them), then interferers (zero-padded to a fixed count), then the stored input where it
    is the model input.

    `complement`: the (first) target is the sum of every source but `order[0]` (open-unmix's
    musdb `accompaniment`): slot 0 holds the vocals and the trainer takes y = x - vocals.
    `targets`: every target of the run and its slot (see `target_slots`).
    """

    order: tuple[str, ...]
    n_interferers: int
    input_slot: bool
    complement: bool
    silence_missing: bool
    targets: tuple[TargetSlot, ...] = ()
    required: int = 1  # leading slots that hold the targets' sources

    @property
    def target_slots(self) -> tuple[TargetSlot, ...]:
        return self.targets or (TargetSlot(self.order[0], 0, self.complement),)

    def names(self, sources: list[str]) -> list[str | None] | None:
        """What every slot holds for a track with these sources: a source name, "mixture"
        (the stored input), or None for a silent slot; None for the whole track if training
        leaves it out (open-unmix leaves tracks without the target out)."""
        if not self.usable(sources):
            return None
        firsts = self.order[:self.required]
        others = [s for s in self.order[self.required:] if s in sources] + \
            sorted(s for s in sources if s not in self.order)
        pad = self.n_interferers + 1 - self.required - len(others)
        names = [*(s if s in sources else None for s in firsts), *others, *[None] * pad]
        return names + ["mixture"] if self.input_slot else names

    def parts(self, record: TrackRecord) -> list[np.ndarray | None] | None:
        """The record's `[channels, time]` array of every slot, None for a silent slot
        (or None for the whole record, if training leaves it out)."""
        names = self.names(list(record.sources))
        if names is None:
            return None
        if self.input_slot and record.mixture is None:
            raise UmxError(f"record '{record.id}' has no stored input mixture")
        return [None if n is None else record.mixture if n == "mixture" else record.sources[n] for n in names]

    @property
    def count(self) -> int:
        """Slots per sample: target, interferers, and the stored input where there is one."""
        return 1 + self.n_interferers + int(self.input_slot)

    def usable(self, source_names: list[str]) -> bool:
        """Does training use a record with these sources (see `parts`)? One with every target."""
        return self.silence_missing or all(s in source_names for s in self.order[:self.required])

    def stack(self, record: TrackRecord) -> np.ndarray | None:
        """The record as one int16 `[slots, channels, time]` array."""
        parts = self.parts(record)
        return None if parts is None else fill_arrays(np.empty((1, len(parts), *shape_of(parts)), np.int16), [parts])[0]

    def without_input(self) -> "Slots":
        """The same slots without the stored input (validation reads that apart)."""
        return dataclasses.replace(self, input_slot=False)


def make_slots(manifest: Manifest, targets: str | Sequence[str], silence_missing: bool = False) -> Slots:
    """The slot layout for the run's target(s), or an error naming a target and what the set has."""
    targets = [targets] if isinstance(targets, str) else list(targets)
    sources, complement = list(manifest.sources), manifest.sampling.complement
    firsts: list[str] = []
    for target in targets:
        is_complement = complement is not None and target == complement.name
        if target not in sources and not is_complement:
            extra = f", {complement.name}" if complement is not None and len(sources) > 1 else ""
            raise UmxError(f"{manifest.location}: target '{target}' is not a source of this shard set "
                           f"(sources: {', '.join(sources)}{extra})")
        first = complement.of if is_complement else target
        if first not in firsts:
            firsts.append(first)
    order = (*firsts, *[s for s in sources if s not in firsts])
    slot_of = {s: i for i, s in enumerate(order)}
    target_slots = tuple(TargetSlot(t, slot_of[complement.of], True) if complement is not None and
                         t == complement.name else TargetSlot(t, slot_of[t]) for t in targets)
    if manifest.sampling.remix == "joint":  # variable source sets: pad to the largest record
        n_interferers = max(manifest.split(s).max_sources for s in manifest.splits())
    else:
        n_interferers = len(sources) - 1
    return Slots(order, n_interferers, manifest.sampling.train_input == "mixture", target_slots[0].complement,
                 silence_missing, target_slots, len(firsts))


def shape_of(parts: list[np.ndarray | None]) -> tuple[int, ...]:
    """The `[channels, time]` shape of a track's slots (the first that is not silent)."""
    return next(p for p in parts if p is not None).shape


def fill_arrays(buf: np.ndarray, items: list[list[np.ndarray | None]]) -> np.ndarray:
    """Copy each item's slot arrays into `buf[item, slot]` (zeros where a slot is silent)."""
    for i, parts in enumerate(items):
        for j, part in enumerate(parts):
            if part is None:
                buf[i, j] = 0
            else:
                buf[i, j] = part
    return buf
