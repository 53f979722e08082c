"""umx-train: streaming loader (CPU workers) → device augmentation → the run's architecture.

config (TrainConfig: the options) → build (process set-up, data, the architecture's model,
optimisation) → trainer (the run) → outputs (checkpoints and histories; the architecture writes
its model directory: models.protocol); the data side is
streams (plan → crops → batches) over the shard set's crop source.
"""

from .build import build_trainer, train
from .config import TrainConfig
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "build_trainer", "train"]
