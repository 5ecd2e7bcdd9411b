"""The stage-5 training loss: supervised + the weighted KD terms (see kdtool.kd.distill), each computed
by its term in kdtool.kd.terms."""
import torch

from kdtool.kd.terms import TERMS
from kdtool.kd.terms.base import targets
from kdtool.kd.terms.frame import OnlineTeacher, pool_batch  # noqa: F401 (part of this module's API)


class DistillLoss(torch.nn.Module):
    """``loss_fn(model, batch) -> (loss, stats)`` for the trainer (see kdtool.kd.distill).
    ``weights``: {term: weight} of the active KD terms (kdtool.kd.terms.TERMS); ``kd``: the kd_conf
    (the terms' own keys); ``parts``: {term: module} of the terms' trainable parts, which are this
    module's parameters: the trainer's optimizer trains them, and the saved student leaves them out.
    ``online_teacher`` (an OnlineTeacher) gives the frame term its posteriors instead of a dump;
    ``teacher`` is the one the other online terms run (default: ``online_teacher``)."""

    def __init__(self, alpha, temperature, weights=None, online_teacher=None, nbest_tau=1.0, lattice_nodes="all",
                 kd=None, parts=None, teacher=None):
        super().__init__()
        self.alpha, self.temperature, self.teacher = alpha, temperature, online_teacher
        self.online_teacher = teacher if teacher is not None else online_teacher
        self.weights = {"frame": 1.0} if weights is None else dict(weights)
        unknown = sorted(set(self.weights) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown KD term(s) {unknown}; known: {list(TERMS)}")
        defaults = {k: v for t in TERMS.values() for k, v in t.defaults.items()}
        self.kd = {**defaults, **(kd or {}), "nbest_tau": nbest_tau, "lattice_nodes": lattice_nodes}
        self.parts = torch.nn.ModuleDict(parts or {})
        self._joint, self.hidden = {}, {}

    def forward(self, model, batch):
        B = len(batch["utts"])
        layers = sorted({n for t in self.weights for n in TERMS[t].student_layers(self.kd)}) if self.alpha > 0 else []
        if layers:  # intermediate layers a term reads, from the same pass as enc
            enc, enc_lens, hidden = model.encoder_layers(batch["feats"], batch["feats_lens"], layers)
            self.hidden = dict(zip(layers, hidden))
        else:
            enc, enc_lens = model.encode(batch["feats"], batch["feats_lens"])
            self.hidden = {}
        loss, stats = enc.new_zeros(()), {}
        self._joint = {}  # a transducer's joint logits per set of rows: the RNN-T loss and the lattice term share them
        sup = batch["transcribed"]
        if self.alpha < 1 and sup.any():
            idx = sup.nonzero().squeeze(1)
            shared = {"logits": self.joint_logits(model, enc, idx, batch)} if model.kind == "transducer" else {}
            sup_loss, sup_stats = model.supervised_loss(enc[idx], enc_lens[idx], *targets(batch, idx), **shared)
            share = len(idx) / B  # supervised losses are per transcribed utterance; ours per utterance
            loss = loss + (1 - self.alpha) * share * sup_loss
            stats.update({k: v for k, v in sup_stats.items() if k != "loss"})
            stats["loss_sup"] = sup_loss.detach()
        if self.alpha > 0 and self.weights:
            kd = enc.new_zeros(())
            for term, weight in self.weights.items():
                value = TERMS[term].loss(self, model, enc, enc_lens, batch)
                kd = kd + weight * value
                stats[f"loss_kd_{term}"] = value.detach()
            loss = loss + self.alpha * kd
            stats["loss_kd"] = kd.detach()
        stats["loss"] = loss.detach()
        self._joint, self.hidden = {}, {}
        return loss, stats

    def joint_logits(self, model, enc, idx, batch):
        """A transducer's joint logits for the utterances ``idx`` against their transcripts, computed once a batch."""
        key = tuple(idx.tolist())
        if key not in self._joint:
            self._joint[key] = model.joint_logits(enc[idx], targets(batch, idx)[0])
        return self._joint[key]
