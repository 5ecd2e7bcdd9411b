"""The lightning module every kdtool model trains in: loss, logging, optimizer and schedule."""
import random

import lightning as L
import numpy as np
import torch


def warmup_lr_lambda(warmup_steps):
    """ESPnet's WarmupLR (Noam): linear warm-up to the base rate, then decay as 1/sqrt(step)."""
    def f(step):
        step = step + 1
        return warmup_steps ** 0.5 * min(step ** -0.5, step * warmup_steps ** -1.5)
    return f


def supervised_loss(model, batch):
    return model(batch["feats"], batch["feats_lens"], batch["ys"], batch["ys_lens"])


class ASRTask(L.LightningModule):
    """Wraps a kdtool model. ``loss_fn(model, batch) -> (loss, stats)`` is the training loss and
    defaults to the supervised one; distillation plugs its own in. Validation always uses the
    supervised loss: checkpoints are chosen (and averaged) by how well they transcribe."""

    def __init__(self, model, config, loss_fn=None):
        super().__init__()
        self.model, self.config = model, config
        self.loss_fn = loss_fn or supervised_loss

    def on_train_epoch_start(self):
        # lightning sets the epoch of a loader's sampler, not of a batch sampler such as ours.
        sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.current_epoch)

    def on_train_batch_start(self, batch, batch_idx):
        # Randomness (dropout, SpecAugment, Mask-CTC masking, which uses numpy) depends only on the
        # step: a run resumed from a checkpoint continues exactly as the uninterrupted run would,
        # whatever else drew random numbers in between.
        seed = (self.config["seed"] + 7919 * self.global_step + 104729 * self.global_rank) % 2**32
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def training_step(self, batch, _):
        loss, stats = self.loss_fn(self.model, batch)
        n = len(batch["utts"])
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=n, prog_bar=False)
        self.log("loss", stats["loss"], batch_size=n, prog_bar=True, logger=False)
        return {"loss": loss, "stats": stats}  # stats: for kdtool.train.progress.LogLines

    def validation_step(self, batch, _):
        loss, stats = supervised_loss(self.model, batch)
        self.log_dict({f"valid/{k}": v for k, v in stats.items()}, batch_size=len(batch["utts"]),
                      on_epoch=True, sync_dist=True, prog_bar=(False))
        return loss

    def configure_optimizers(self):
        c = self.config
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[c["optim"]]
        params = list(self.model.parameters())
        if isinstance(self.loss_fn, torch.nn.Module):  # a KD term's trainable parts (a projection): trained
            params += list(self.loss_fn.parameters())  # too, but not saved with the model (trainer keeps model.*)
        opt = cls(params, **c["optim_conf"])
        if c["scheduler"] in (None, "none"):
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lr_lambda(c["scheduler_conf"]["warmup_steps"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
