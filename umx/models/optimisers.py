"""The optimizers architectures declare for their units, built from the run's settings."""

from __future__ import annotations

import torch
from torch import nn

from .protocol import OptimiserSettings

PLATEAU_COOLDOWN = 10  # open-unmix's ReduceLROnPlateau(cooldown=10)


def adam(network: nn.Module, settings: OptimiserSettings, adamw: bool = False,
         groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """open-unmix's Adam (or AdamW); for the graph step fused, capturable, with a device-tensor lr
    (on CUDA), so that the plateau scheduler's changes reach a captured step. `groups`: parameter
    groups with options of their own (each group's lr a device tensor too for the graph step),
    instead of all of the network's parameters with the run's."""
    kind = torch.optim.AdamW if adamw else torch.optim.Adam
    params = groups if groups is not None else network.parameters()
    if not settings.graph:
        return kind(params, lr=settings.lr, weight_decay=settings.weight_decay)
    cuda = settings.device.type == "cuda"
    if cuda and groups is not None:
        params = [{**g, "lr": torch.tensor(g["lr"], device=settings.device)} if "lr" in g else g for g in groups]
    return kind(params, lr=torch.tensor(settings.lr, device=settings.device) if cuda else settings.lr,
                weight_decay=settings.weight_decay, fused=True, capturable=cuda)


def plateau(optimizer: torch.optim.Optimizer, settings: OptimiserSettings) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The learning rate follows the validation loss, as in open-unmix."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=settings.lr_decay_gamma,
                                                      patience=settings.lr_decay_patience,
                                                      cooldown=PLATEAU_COOLDOWN)
