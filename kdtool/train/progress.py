"""Training progress as plain log lines, the way ESPnet's and icefall's logs read.

A progress bar writes carriage returns: in ``exp/*/train.log`` (stderr is a file there) they made
lines nobody could read or grep. So the trainer shows lightning's bar only on a terminal, and
otherwise logs, every ``interval`` steps (losses averaged over those steps)::

    epoch 3/16, step 120/246: loss=23.412, loss_ctc=23.412, lr=1.234e-03, 4.21 steps/s, 5127 frames/s

and after each epoch's validation (training losses averaged over the epoch)::

    epoch 3/16 done in 58.4 s (246 steps): train loss=24.018, loss_ctc=24.018; valid loss=21.702,
    loss_ctc=21.702; lr=1.234e-03
"""
import logging
import time

import lightning as L


def _fmt(stats):
    return ", ".join(f"{k}={v:.3f}" for k, v in stats.items())


def _mean(sums, n):
    return {k: v / max(n, 1) for k, v in sums.items()}


class LogLines(L.Callback):
    """Logs the lines above on the first process. Reads the step's stats from what the training step
    returns (``{"loss": ..., "stats": {name: tensor}}``) and the validation's from the logged
    ``valid/*`` metrics; frames are the batch's input (10 ms) frames, ``batch["feats_lens"]``."""

    def __init__(self, interval, periodic=True):
        self.interval, self.periodic = max(1, int(interval)), periodic
        self.on_train_epoch_start(None, None)  # a run resumed inside an epoch starts there, without this hook

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start = self.window_start = time.perf_counter()
        self.epoch_sums, self.epoch_steps = {}, 0
        self.window_sums, self.window_steps, self.window_frames = {}, 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stats = outputs.get("stats", {}) if isinstance(outputs, dict) else {}
        for sums in (self.epoch_sums, self.window_sums):
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        self.epoch_steps += 1
        self.window_steps += 1
        self.window_frames += int(batch["feats_lens"].sum())
        if not self.periodic or self.window_steps < self.interval or not trainer.is_global_zero:
            return
        seconds = max(time.perf_counter() - self.window_start, 1e-9)
        logging.info("epoch %d/%d, step %d/%s: %s, lr=%.3e, %.2f steps/s, %.0f frames/s", trainer.current_epoch + 1,
                     trainer.max_epochs, batch_idx + 1, _total(trainer),
                     _fmt(_mean(self.window_sums, self.window_steps)), _lr(trainer), self.window_steps / seconds,
                     self.window_frames / seconds)
        self.window_start, self.window_sums, self.window_steps, self.window_frames = time.perf_counter(), {}, 0, 0

    def on_train_epoch_end(self, trainer, pl_module):
        # lightning runs the epoch's validation before this hook: its metrics are there
        if not trainer.is_global_zero:
            return
        valid = {k[len("valid/"):]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("valid/")}
        logging.info("epoch %d/%d done in %.1f s (%d steps): train %s; valid %s; lr=%.3e", trainer.current_epoch + 1,
                     trainer.max_epochs, time.perf_counter() - self.epoch_start, self.epoch_steps,
                     _fmt(_mean(self.epoch_sums, self.epoch_steps)), _fmt(valid) or "none", _lr(trainer))


def _lr(trainer):
    return trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")


def _total(trainer):
    n = trainer.num_training_batches
    return str(n) if n != float("inf") else "?"
