"""Sequence-level KD: the student's supervised loss on the teacher's N-best hypotheses, hypothesis n
weighted by softmax(score / nbest_tau) over its list; every utterance with a list."""
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from kdtool.errors import ConfigError
from kdtool.kd.nbest import NBestSet, nbest_weights
from kdtool.kd.terms.base import Term
from kdtool.models.asr import IGNORE_ID


class SeqTerm(Term):
    name, label = "seq", "sequence"
    reads = "nbest"
    defaults = {"nbest_tau": 1.0}
    batch_keys = ("nbest",)

    def check_conf(self, conf, source):
        if not conf["nbest_tau"] > 0:
            raise ConfigError(f"{source}: kd_conf: nbest_tau must be positive, not {conf['nbest_tau']}")

    def dump_dirs(self, kd, root, set_name, transcribed):
        return [Path(root) / f"nbest_{set_name}"]

    def missing_message(self):
        return "N-best lists (--nbest)"

    def open(self, dirs, tokens_path, kd):
        return NBestSet(dirs, tokens_path)

    def item(self, source, utt, item, dataset):
        return {"nbest": source[utt]}

    def collate(self, items, batch):
        if any("nbest" in b for b in items):
            batch["nbest"] = [b.get("nbest", []) for b in items]

    def loss(self, ctx, model, enc, enc_lens, batch):
        rows, hyps, weights = [], [], []
        for b, nbest in enumerate(batch.get("nbest", [])):
            if nbest:
                rows += [b] * len(nbest)
                hyps += [torch.tensor(tokens) for tokens, _ in nbest]
                weights.append(nbest_weights([score for _, score in nbest], ctx.kd["nbest_tau"]))
        if not rows:
            return enc.new_zeros(())
        idx = torch.tensor(rows, device=enc.device)
        ys = pad_sequence(hyps, batch_first=True, padding_value=IGNORE_ID).to(enc.device)
        ys_lens = torch.tensor([len(h) for h in hyps], device=enc.device)
        loss, _ = model.supervised_loss(enc[idx], enc_lens[idx], ys, ys_lens, torch.cat(weights).to(enc.device))
        return loss * len(rows) / len(batch["utts"])  # supervised losses are divided by their rows
