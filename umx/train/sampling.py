"""Seeded random streams: every draw is a function of (seed, purpose, epoch, …) — the global
batch index for the crops of the global plan and for a step's augmentation and dropout,
(rank, worker) for the pool plan's crops.

Because nothing depends on how far a previous run got, a run resumed from a
checkpoint at epoch e draws exactly what an uninterrupted run draws at epoch e.
"""

from __future__ import annotations

import numpy as np
import torch

# purpose tags keep independent streams apart for the same (seed, epoch)
SHARD_ORDER, CROPS, AUGMENT, DROPOUT = 1, 2, 3, 4
STEP = DROPOUT  # a training step's draws: its batch's augmentation, then dropout (one default-generator seed)


def rng(seed: int, *keys: int) -> np.random.Generator:
    """A numpy generator determined by the seed and the keys."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *keys])))


def torch_seed(seed: int, *keys: int) -> int:
    """A 63-bit torch seed determined by the seed and the keys."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def torch_generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(torch_seed(seed, *keys))
    return g
