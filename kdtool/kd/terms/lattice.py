"""Lattice KD: T^2 KL over a transducer's output lattice of the collapsed (blank, next label, rest)
distributions (kdtool.kd.rnnt); transducer students, transcribed utterances."""
import torch

from kdtool.errors import ConfigError
from kdtool.kd.rnnt import lattice_kl, lattice_mask, lattice_occupancy, pad_lattices
from kdtool.kd.terms.base import Term, targets


class LatticeTerm(Term):
    name, label = "lattice", "lattice"
    dump_types = ("rnnt_lattice",)
    transcribed_only = True
    per_frame = True
    needs = "joint"
    needs_message = "lattice KD trains a transducer's joint network, not a {kind} student's"
    defaults = {"lattice_nodes": "all"}
    batch_keys = ("lattice",)

    def check_conf(self, conf, source):
        if conf["lattice_nodes"] not in ("all", "occupancy"):
            raise ConfigError(f"{source}: kd_conf: lattice_nodes must be all or occupancy, "
                              f"not {conf['lattice_nodes']!r}")

    def item(self, source, utt, item, dataset):
        return {"lattice": source.lattice(utt, len(item["ys"]), dataset.student_frames(dataset.base.num_frames[utt]))}

    def collate(self, items, batch):
        if any("lattice" in b for b in items):
            batch["lattice"] = [b.get("lattice") for b in items]

    def loss(self, ctx, model, enc, enc_lens, batch):
        rows = [b for b, lat in enumerate(batch.get("lattice", [])) if lat is not None]
        if not rows:
            return enc.new_zeros(())
        idx = torch.tensor(rows, device=enc.device)
        ys, ys_lens = targets(batch, idx)
        logits = ctx.joint_logits(model, enc, idx, batch)
        teacher = pad_lattices([batch["lattice"][b].to(enc.device) for b in rows], enc_lens[idx], ys_lens,
                               logits.shape[1], logits.shape[2])
        mask = lattice_mask(enc_lens[idx], ys_lens, logits.shape[1], logits.shape[2])
        weights = lattice_occupancy(teacher, enc_lens[idx], ys_lens) if ctx.kd["lattice_nodes"] == "occupancy" else None
        kd = lattice_kl(teacher, logits, ys, ys_lens, mask, ctx.temperature, weights)
        return kd * len(rows) / len(batch["utts"])
