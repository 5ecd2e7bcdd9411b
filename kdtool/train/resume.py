"""Resuming a training in the middle of an epoch, exactly.

An epoch of a teacher on a CPU can take longer than the time a machine is held; with checkpoints at
epoch ends only, a stop loses the epoch. ``PeriodicCheckpoint`` writes ``last.ckpt`` every few
minutes, and ``ResumableLoader`` records in it how many batches of the epoch were trained, so the
resumed run skips exactly those (lightning fast-forwards a loader that has ``state_dict`` /
``load_state_dict``). Weights, optimizer, scheduler and the per-step random seeds come back from
the checkpoint, so the resumed run ends where an uninterrupted one would.
"""
import os
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader over a BucketBatchSampler whose state is the number of batches of the current
    epoch already trained (``trained()``, read from the trainer when a checkpoint is saved)."""

    trained = None  # set by the trainer: a function returning the batches of this epoch already trained

    def state_dict(self):
        return {"batches_trained": int(self.trained()) if self.trained else 0}

    def load_state_dict(self, state):
        self.batch_sampler.skip_next(state.get("batches_trained", 0))


class PeriodicCheckpoint(Callback):
    """Save ``path`` (the resume point) every ``minutes`` of training, atomically."""

    def __init__(self, path, minutes):
        self.path, self.seconds, self.last = Path(path), minutes * 60, time.monotonic()

    def on_train_batch_end(self, trainer, *args):
        if self.seconds <= 0 or time.monotonic() - self.last < self.seconds:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self.last = time.monotonic()
