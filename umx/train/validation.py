"""The validation set: the same every epoch, loaded once (full tracks, or seeded crops)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import UmxError
from ..shards.manifest import Manifest
from ..shards.reader import ShardReader, SkippedShard
from .crops import source_files
from .slots import make_slots


@dataclass
class ValidItem:
    """One validation example: source slots (target first) and the stored input, if any."""

    id: str
    sources: torch.Tensor  # int16 [slots, channels, frames]
    mixture: torch.Tensor | None  # int16 [channels, frames]


def load_validation(manifest: Manifest, target: str | Sequence[str], split: str = "valid", silence_missing: bool = False,
                    nb_samples: int = 100, seq_len: int | None = None,
                    reader: ShardReader | None = None) -> list[ValidItem]:
    """The validation set: full tracks, or for unaligned sources `nb_samples` crops that are
    the same every epoch (each seeded by its index, as open-unmix seeds them)."""
    slots = make_slots(manifest, target, silence_missing)
    use_mixture = manifest.sampling.valid_input == "mixture"
    slots_no_input = slots.without_input()
    if manifest.sampling.valid == "crops":
        files = source_files(manifest, split, slots.order, seq_len, reader)
        items = []
        for index in range(nb_samples):
            parts = []
            for source in slots.order:
                r = random.Random(index)
                _, pcm = r.choice(files[source])
                start = int(r.uniform(0, pcm.shape[-1] - seq_len)) if seq_len else 0
                parts.append(pcm[:, start: start + seq_len] if seq_len else pcm)
            items.append(ValidItem(f"sample_{index}", torch.from_numpy(np.stack(parts)), None))
        return items
    items = []
    reader = reader or ShardReader(manifest)
    for entry in manifest.shards(split):
        try:
            records = list(reader.guarded(entry))
        except SkippedShard:
            continue
        for record in records:
            stack = slots_no_input.stack(record)
            if stack is None:
                continue
            mix = torch.from_numpy(record.mixture) if use_mixture and record.mixture is not None else None
            items.append(ValidItem(record.id, torch.from_numpy(stack), mix))
    if not items:
        names = "', '".join([target] if isinstance(target, str) else target)
        raise UmxError(f"{manifest.location}: the '{split}' split has no track with target '{names}'"
                       + ("" if silence_missing else " (--silence-missing-targets would keep them)"))
    return items
