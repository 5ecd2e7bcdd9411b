"""Frame-level KD: T^2 KL(teacher || student CTC posteriors at T) per student frame, from dumped frame
or forward-backward posteriors, or from the teacher run on each batch (``OnlineTeacher``); every
utterance. Teacher frames are pooled to a coarser student frame rate (kdtool.kd.losses.pool_spikes)."""
import logging
from pathlib import Path

import numpy as np
import torch

from kdtool.errors import ConfigError
from kdtool.features.cmvn import mean_std
from kdtool.kd.forward_backward import ctc_min_length, ctc_occupancies_batch
from kdtool.kd.losses import hinton_kd_loss, pool_to_grid, soften
from kdtool.kd.softlabels import FRAME_TYPES
from kdtool.kd.terms.base import Term, fit
from kdtool.models.asr import front_end


class OnlineTeacher:
    """The teacher model run on each batch (no dump): frame posteriors at temperature T, or
    forward-backward occupancies for transcribed utterances. It sees the features before SpecAugment
    (the student's augmentation is applied inside the student's encoder). An utterance whose teacher
    frames are too few for its transcript (no CTC alignment) gets no occupancies and trains without
    the frame term, as the supervised CTC loss (zero_infinity) leaves it out; ``skipped`` holds those
    seen so far, each logged once with the running count."""

    def __init__(self, trained, type, temperature, student_cmvn):
        self.model = trained.model.eval().requires_grad_(False)
        self.type, self.temperature = type, temperature
        # the student's features are normalized with its CMVN; the teacher expects its own
        s_mean, s_std = student_cmvn
        t_mean, t_std = mean_std(trained.cmvn)
        self.scale = torch.from_numpy((s_std / t_std).astype(np.float32))
        self.shift = torch.from_numpy(((s_mean - t_mean) / t_std).astype(np.float32))
        self.skipped = set()

    def features(self, batch, device):
        """The batch's features normalized as the teacher expects."""
        self.model.to(device)
        return batch["feats"] * self.scale.to(device) + self.shift.to(device)

    @torch.no_grad()
    def posteriors(self, batch, device):
        """[B, T_teacher, V] probabilities, teacher frame lengths [B], and which utterances have them."""
        enc, enc_lens = self.model.encode(self.features(batch, device), batch["feats_lens"])
        log_probs = self.model.ctc_log_probs(enc)
        if self.type == "frame_posteriors":
            return soften(log_probs, self.temperature).exp(), enc_lens, torch.ones_like(batch["transcribed"])
        has = batch["transcribed"].clone()
        lens = enc_lens.tolist()
        for b in has.nonzero().squeeze(1).tolist():
            need = max(1, ctc_min_length(batch["ys"][b, :int(batch["ys_lens"][b])]))
            if lens[b] < need:
                has[b] = False
                self._skip(batch["utts"][b], lens[b], int(batch["ys_lens"][b]), need)
        probs = torch.zeros_like(log_probs)
        if has.any():
            idx = has.nonzero().squeeze(1)
            ys = batch["ys"][idx][:, :int(batch["ys_lens"][idx].max())]
            probs[idx] = ctc_occupancies_batch(log_probs[idx], enc_lens[idx], ys, batch["ys_lens"][idx],
                                               blank=self.model.blank)
        return probs, enc_lens, has

    def _skip(self, utt, frames, tokens, need):
        if utt not in self.skipped:
            self.skipped.add(utt)
            logging.warning("online teacher: utterance %s: %d encoder frames cannot align its %d-token transcript "
                            "(CTC needs at least %d): trained without the frame term (%d utterances skipped so far)",
                            utt, frames, tokens, need, len(self.skipped))


def pool_batch(probs, teacher_lens, student_lens, teacher_front_end, student_front_end, blank=0):
    """Teacher posteriors [B, T_t, V] on the student's frames [B, T_s, V] (kdtool.kd.losses.pool_to_grid
    where the front-ends differ)."""
    if tuple(teacher_front_end) == tuple(student_front_end):
        return probs
    out = probs.new_zeros(probs.shape[0], int(student_lens.max()), probs.shape[2])
    for b, (tl, sl) in enumerate(zip(teacher_lens.tolist(), student_lens.tolist())):
        if tl > 0 and sl > 0:
            out[b, :sl] = pool_to_grid(probs[b, :tl], teacher_front_end, student_front_end, sl, blank)
    return out


class FrameTerm(Term):
    name, label = "frame", "frame"
    dump_types = ("frame_posteriors", "fb_posteriors")
    per_frame = True
    needs = "ctc"
    needs_message = ("frame-level KD trains the student's CTC head, and this {kind} student has "
                     "none (set model_conf.ctc_weight > 0)")
    defaults = {"frame_labels": "fb_posteriors", "untrans_labels": "frame_posteriors", "online": False,
                "online_type": "frame_posteriors"}
    batch_keys = ("frame_ids", "frame_probs", "has_frame")

    def check_conf(self, conf, source):
        if conf["online_type"] not in FRAME_TYPES:
            raise ConfigError(f"{source}: kd_conf: online_type must be one of {FRAME_TYPES}")
        if conf["online"] and conf["online_type"] == "fb_posteriors" and conf["temperature"] != 1:
            raise ConfigError(f"{source}: kd_conf: online_type fb_posteriors gives untempered forward-backward "
                              f"occupancies, but temperature is {conf['temperature']}; set temperature: 1, or use "
                              "online_type: frame_posteriors (kdtool.kd.teacher_data.SoftLabelSet says why)")

    def online(self, kd):
        return bool(kd["online"])

    def dump_dirs(self, kd, root, set_name, transcribed):
        return [Path(root) / f"{kd['frame_labels' if transcribed else 'untrans_labels']}_{set_name}"]

    def missing_message(self):
        return "frame_posteriors or fb_posteriors dumps (--soft_labels) or kd_conf.online: true"

    def prepare(self, source, dataset):
        source.check_front_end(dataset.front_end)

    def item(self, source, utt, item, dataset):
        n = dataset.base.num_frames[utt]
        ids, probs = source.frames(utt, dataset.student_frames(n), dataset.front_end, n)
        return {"frame_ids": ids, "frame_probs": probs}

    def loss(self, ctx, model, enc, enc_lens, batch):
        log_probs = model.ctc_log_probs(enc)
        frames = torch.arange(enc.shape[1], device=enc.device)[None, :] < enc_lens[:, None]
        if ctx.teacher is not None:
            probs, t_lens, has = ctx.teacher.posteriors(batch, enc.device)
            teacher = pool_batch(probs, t_lens, enc_lens, front_end(ctx.teacher.model), front_end(model),
                                 ctx.teacher.model.blank)
        else:
            if "frame_ids" not in batch:
                return enc.new_zeros(())
            teacher = fit(batch["frame_ids"], batch["frame_probs"], enc.shape[1], batch, enc.device)
            has = batch["has_frame"]
        return hinton_kd_loss(teacher, log_probs, ctx.temperature, frames & has.to(enc.device)[:, None])
