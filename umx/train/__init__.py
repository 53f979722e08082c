"""umx-train: streaming loader (CPU workers) → device augmentation → OpenUnmix.

config (TrainConfig: the options) → build (process set-up, data, model, optimisation) →
trainer (the run) → outputs (open-unmix's model directory); the data side is
streams (plan → crops → batches) over the shard set's crop source.
"""

from .build import build_trainer, train
from .config import TrainConfig
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "build_trainer", "train"]
