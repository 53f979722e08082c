"""The optimizers architectures declare for their units, built from the run's settings."""

from __future__ import annotations

import torch
from torch import nn

from .protocol import OptimiserSettings

PLATEAU_COOLDOWN = 10  # open-unmix's ReduceLROnPlateau(cooldown=10)


def adam(network: nn.Module, settings: OptimiserSettings, adamw: bool = False) -> torch.optim.Optimizer:
    """open-unmix's Adam (or AdamW); for the graph step fused, capturable, with a device-tensor lr
    (on CUDA), so that the plateau scheduler's changes reach a captured step."""
    kind = torch.optim.AdamW if adamw else torch.optim.Adam
    if not settings.graph:
        return kind(network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    cuda = settings.device.type == "cuda"
    return kind(network.parameters(), lr=torch.tensor(settings.lr, device=settings.device) if cuda else settings.lr,
                weight_decay=settings.weight_decay, fused=True, capturable=cuda)


def plateau(optimizer: torch.optim.Optimizer, settings: OptimiserSettings) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The learning rate follows the validation loss, as in open-unmix."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=settings.lr_decay_gamma,
                                                      patience=settings.lr_decay_patience,
                                                      cooldown=PLATEAU_COOLDOWN)
