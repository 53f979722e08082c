"""`umx-train`, SIGKILLed at a given step: `python tests/killed_at.py EPOCH STEP [umx-train args]`.

Each rank kills itself when it is about to take rank step STEP of epoch EPOCH, once the checkpoints
written so far are on disk (a lost node: no cleanup, no last save). Deterministic where a test
polling for a checkpoint would race a fast run.
"""

import os
import signal
import sys

from umx.train import trainer as trainer_mod
from umx.train.cli import main

epoch_at, step_at = int(sys.argv[1]), int(sys.argv[2])
del sys.argv[1:3]
train_step = trainer_mod.Trainer.train_step
steps = {}


def killed(self, pcm, epoch, index, *rest):
    steps[epoch] = steps.get(epoch, -1) + 1  # this rank's step in the epoch (the index is global)
    if (epoch, steps[epoch]) == (epoch_at, step_at):
        self.writer.wait()
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(self, pcm, epoch, index, *rest)


trainer_mod.Trainer.train_step = killed
sys.exit(main())
