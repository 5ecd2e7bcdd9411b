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


def _fused_on_cpu(params):
    """Whether all ``params`` are float CPU tensors and torch has a fused CPU Adam (torch >= 2.4)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        cpu = "cpu" in _get_fused_kernels_supported_devices()
    except ImportError:  # a private helper: an older or newer torch may not have it
        return False
    return cpu and all(p.device.type == "cpu" and p.is_floating_point() for p in params)


def _keep_own_kernel_flags(optimizer, state_dict):
    """Load-state hook: a checkpoint's param groups would replace this optimizer's ``fused``/``foreach``
    flags with those it was saved with; keep this run's (a run saved unfused resumes fused, and back)."""
    saved = state_dict["param_groups"]
    if len(saved) != len(optimizer.param_groups):
        return None  # torch's load_state_dict names the mismatch
    return {**state_dict, "param_groups": [{**group, "fused": own["fused"], "foreach": own["foreach"]}
                                           for own, group in zip(optimizer.param_groups, saved)]}


def build_optimizer(params, name, conf, allow_fused=True):
    """Adam or AdamW over ``params`` with ``conf`` (the config's optim_conf). On a CPU, torch's default
    is a loop over tensors (neither foreach nor fused); its fused kernel gives the same update (to float
    rounding) in less time, so CPU parameters get it unless ``conf`` names ``fused`` or ``foreach``
    itself. GPU parameters keep torch's default (foreach)."""
    params = list(params)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    conf = dict(conf)
    if allow_fused and "fused" not in conf and "foreach" not in conf and _fused_on_cpu(params):
        conf["fused"] = True
    opt = cls(params, **conf)
    opt.register_load_state_dict_pre_hook(_keep_own_kernel_flags)
    return opt


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
        params = list(self.model.parameters())
        if isinstance(self.loss_fn, torch.nn.Module):  # a KD term's trainable parts (a projection): trained
            params += list(self.loss_fn.parameters())  # too, but not saved with the model (trainer keeps model.*)
        # a gradient scaler (16-mixed) and gradient clipping refuse a fused optimizer in lightning
        opt = build_optimizer(params, c["optim"], c["optim_conf"],
                              allow_fused=getattr(self._trainer and self.trainer.precision_plugin, "scaler", None) is None)
        if c["scheduler"] in (None, "none"):
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lr_lambda(c["scheduler_conf"]["warmup_steps"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
