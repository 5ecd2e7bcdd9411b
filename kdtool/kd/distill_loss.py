"""The stage-5 training loss: supervised + the weighted KD terms (see kdtool.kd.distill), and the
online teacher that gives the frame term without a dump."""
import logging

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from kdtool.features.cmvn import mean_std
from kdtool.kd.forward_backward import ctc_min_length, ctc_occupancies_batch
from kdtool.kd.losses import hinton_kd_loss, pool_to_grid, soften
from kdtool.kd.nbest import nbest_weights
from kdtool.kd.rnnt import lattice_kl, lattice_mask, lattice_occupancy, pad_lattices
from kdtool.kd.softlabels import SoftLabelError
from kdtool.models.asr import IGNORE_ID, front_end


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

    @torch.no_grad()
    def posteriors(self, batch, device):
        """[B, T_teacher, V] probabilities, teacher frame lengths [B], and which utterances have them."""
        self.model.to(device)
        feats = batch["feats"] * self.scale.to(device) + self.shift.to(device)
        enc, enc_lens = self.model.encode(feats, batch["feats_lens"])
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


class DistillLoss:
    """``loss_fn(model, batch) -> (loss, stats)`` for the trainer (see the module docstring).
    ``weights``: {term: weight} of the active KD terms."""

    def __init__(self, alpha, temperature, weights=None, online_teacher=None, nbest_tau=1.0, lattice_nodes="all"):
        self.alpha, self.temperature, self.teacher, self.nbest_tau = alpha, temperature, online_teacher, nbest_tau
        self.lattice_nodes = lattice_nodes
        self.weights = {"frame": 1.0} if weights is None else dict(weights)

    def __call__(self, model, batch):
        B = len(batch["utts"])
        enc, enc_lens = model.encode(batch["feats"], batch["feats_lens"])
        loss, stats = enc.new_zeros(()), {}
        self._joint = {}  # a transducer's joint logits per set of rows: the RNN-T loss and the lattice term share them
        sup = batch["transcribed"]
        if self.alpha < 1 and sup.any():
            idx = sup.nonzero().squeeze(1)
            shared = {"logits": self.joint_logits(model, enc, idx, batch)} if model.kind == "transducer" else {}
            sup_loss, sup_stats = model.supervised_loss(enc[idx], enc_lens[idx], *_targets(batch, idx), **shared)
            share = len(idx) / B  # supervised losses are per transcribed utterance; ours per utterance
            loss = loss + (1 - self.alpha) * share * sup_loss
            stats.update({k: v for k, v in sup_stats.items() if k != "loss"})
            stats["loss_sup"] = sup_loss.detach()
        if self.alpha > 0 and self.weights:
            kd = enc.new_zeros(())
            for term, weight in self.weights.items():
                value = getattr(self, f"{term}_kd")(model, enc, enc_lens, batch)
                kd = kd + weight * value
                stats[f"loss_kd_{term}"] = value.detach()
            loss = loss + self.alpha * kd
            stats["loss_kd"] = kd.detach()
        stats["loss"] = loss.detach()
        self._joint = {}
        return loss, stats

    def joint_logits(self, model, enc, idx, batch):
        """A transducer's joint logits for the utterances ``idx`` against their transcripts, computed once a batch."""
        key = tuple(idx.tolist())
        if key not in self._joint:
            self._joint[key] = model.joint_logits(enc[idx], _targets(batch, idx)[0])
        return self._joint[key]

    def frame_kd(self, model, enc, enc_lens, batch):
        log_probs = model.ctc_log_probs(enc)
        frames = torch.arange(enc.shape[1], device=enc.device)[None, :] < enc_lens[:, None]
        if self.teacher is not None:
            probs, t_lens, has = self.teacher.posteriors(batch, enc.device)
            teacher = pool_batch(probs, t_lens, enc_lens, front_end(self.teacher.model), front_end(model),
                                 self.teacher.model.blank)
        else:
            if "frame_ids" not in batch:
                return enc.new_zeros(())
            teacher = _fit(batch["frame_ids"], batch["frame_probs"], enc.shape[1], batch, enc.device)
            has = batch["has_frame"]
        return hinton_kd_loss(teacher, log_probs, self.temperature, frames & has.to(enc.device)[:, None])

    def token_kd(self, model, enc, enc_lens, batch):
        if "token_ids" not in batch:
            return enc.new_zeros(())
        idx = (batch["has_token"] & batch["transcribed"]).nonzero().squeeze(1)
        if len(idx) == 0:
            return enc.new_zeros(())
        # the student's decoder on the transcript: an AR student predicts every position (and <eos>),
        # a Mask-CTC student the positions it masked; only those count (ys_out != IGNORE_ID)
        logits, ys_out = model.decoder_logits(enc[idx], enc_lens[idx], *_targets(batch, idx))
        n = logits.shape[1]  # a Mask-CTC decoder has no <eos> position: the teacher's last row goes unused
        teacher = _fit(batch["token_ids"][idx, :n], batch["token_probs"][idx, :n], n, batch, enc.device)
        kd = hinton_kd_loss(teacher, logits, self.temperature, ys_out != IGNORE_ID)
        return kd * len(idx) / len(batch["utts"])

    def seq_kd(self, model, enc, enc_lens, batch):
        rows, hyps, weights = [], [], []
        for b, nbest in enumerate(batch.get("nbest", [])):
            if nbest:
                rows += [b] * len(nbest)
                hyps += [torch.tensor(tokens) for tokens, _ in nbest]
                weights.append(nbest_weights([score for _, score in nbest], self.nbest_tau))
        if not rows:
            return enc.new_zeros(())
        idx = torch.tensor(rows, device=enc.device)
        ys = pad_sequence(hyps, batch_first=True, padding_value=IGNORE_ID).to(enc.device)
        ys_lens = torch.tensor([len(h) for h in hyps], device=enc.device)
        loss, _ = model.supervised_loss(enc[idx], enc_lens[idx], ys, ys_lens, torch.cat(weights).to(enc.device))
        return loss * len(rows) / len(batch["utts"])  # supervised losses are divided by their rows

    def lattice_kd(self, model, enc, enc_lens, batch):
        rows = [b for b, lat in enumerate(batch.get("lattice", [])) if lat is not None]
        if not rows:
            return enc.new_zeros(())
        idx = torch.tensor(rows, device=enc.device)
        ys, ys_lens = _targets(batch, idx)
        logits = self.joint_logits(model, enc, idx, batch)
        teacher = pad_lattices([batch["lattice"][b].to(enc.device) for b in rows], enc_lens[idx], ys_lens,
                               logits.shape[1], logits.shape[2])
        mask = lattice_mask(enc_lens[idx], ys_lens, logits.shape[1], logits.shape[2])
        weights = lattice_occupancy(teacher, enc_lens[idx], ys_lens) if self.lattice_nodes == "occupancy" else None
        kd = lattice_kl(teacher, logits, ys, ys_lens, mask, self.temperature, weights)
        return kd * len(rows) / len(batch["utts"])


def _targets(batch, idx):
    """Transcripts of the utterances ``idx``, trimmed to their longest: (ys, ys_lens)."""
    ys_lens = batch["ys_lens"][idx.cpu()]
    return batch["ys"][idx.cpu()][:, :int(ys_lens.max())].to(idx.device), ys_lens.to(idx.device)


def _fit(ids, probs, n, batch, device):
    """Padded sparse teacher rows cut or zero-padded to the student's ``n`` rows."""
    if ids.shape[1] < n:
        ids, probs = (torch.nn.functional.pad(x, (0, 0, 0, n - ids.shape[1])) for x in (ids, probs))
    elif ids.shape[1] > n and probs[:, n:].any():
        raise SoftLabelError(f"teacher data of {ids.shape[1]} rows for a student batch of {n} "
                             f"(utterances {batch['utts'][:3]})")
    return ids[:, :n].to(device), probs[:, :n].to(device)
