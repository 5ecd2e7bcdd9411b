"""What every KD term declares (``Term``), and the batch helpers the terms share."""
from pathlib import Path

import torch

from kdtool.errors import ConfigError
from kdtool.kd.softlabels import SoftLabelError


class Term:
    """One KD term of stage 5: what it needs from stage 4, which students it applies to, how its
    teacher data reach a batch, and its loss. A subclass sets the class attributes and overrides
    what its term does differently; ``kdtool.kd.terms.TERMS`` lists one instance per term.

    The loss gets ``ctx``, the DistillLoss: ``ctx.temperature``; ``ctx.teacher``, the frame term's online
    teacher; ``ctx.online_teacher``, the teacher any online term runs on each batch; ``ctx.kd``, the
    kd_conf (the term's own keys); ``ctx.parts[name]``, its trainable parts; ``ctx.hidden`` {layer:
    [B, T', D]}, the student's ``student_layers`` from the pass that gave ``enc``; and
    ``ctx.joint_logits``, a transducer's joint logits computed once a batch."""

    name = None               # kd_conf.<name>_weight; loss_kd_<name> in the training stats
    label = None              # its name in the results table
    dump_types = ()           # stage-4 soft-label types that feed it (kdtool.kd.softlabels.TYPES)
    reads = "soft_labels"     # soft_labels (--soft_labels dumps), nbest (--nbest lists) or None (online only)
    transcribed_only = False  # True: needs the transcript, so untranscribed utterances have none of its data
    per_frame = False         # its dumps are stored per encoder frame (the results' bytes per frame)
    needs = None              # the model output it trains (kdtool.models.asr.KD_OUTPUTS); None: any student
    needs_message = ""        # why a student without ``needs`` cannot learn it
    defaults = {}             # its own kd_conf keys and their defaults
    batch_keys = ()           # the batch keys its data fill (DistillDataset.collate pads ``<name>_ids/probs``)

    def check_conf(self, conf, source):
        """A ConfigError for a bad value of one of its ``defaults`` keys."""

    def online(self, kd):
        """True when its teacher data come from the teacher run on each batch (no dump read)."""
        return self.reads is None

    def student_layers(self, kd):
        """The student's encoder layers (1-based) its loss reads from ``ctx.hidden``, computed in the same pass."""
        return []

    def check_student(self, student, kd=None):
        if self.needs is not None and self.needs not in student.kd_outputs():
            raise ConfigError(self.needs_message.format(kind=student.kind))

    def dump_dirs(self, kd, root, set_name, transcribed):
        """The stage-4 dirs (naming convention <root>/<type>_<set>) that feed it for one data set."""
        if self.transcribed_only and not transcribed:
            return []
        return [Path(root) / f"{self.dump_types[0]}_{set_name}"]

    def missing_message(self):
        """What a run with this term's weight > 0 but none of its data must be given."""
        return f"{' or '.join(self.dump_types)} dumps (--soft_labels)"

    def open(self, dirs, tokens_path, kd):
        """The reader of its dumps: ``utt in source``, ``source.readers`` (provenance checks)."""
        from kdtool.kd.teacher_data import SoftLabelSet  # teacher_data dispatches through the registry
        return SoftLabelSet(dirs, tokens_path, kd["temperature"])

    def prepare(self, source, dataset):
        """Checks of a source against the student, once the dataset is built (DistillDataset)."""

    def item(self, source, utt, item, dataset):
        """{batch key: value} of one utterance's teacher data (``item`` is the SpeechDataset's)."""
        return {}

    def collate(self, items, batch):
        """Pad the per-utterance values into ``batch`` (default: sparse rows ``<name>_ids``/``<name>_probs``
        [B, N, K], zero probability adding nothing to a KL, and ``has_<name>`` [B])."""
        pad_sparse(self.name, items, batch)

    def trainable(self, student, teacher, kd):
        """A torch.nn.Module of its trainable parts (a projection), or None: the optimizer trains it
        beside the student, and it is not part of the saved student (model.pth)."""
        return None

    def loss(self, ctx, model, enc, enc_lens, batch):
        raise NotImplementedError


def pad_sparse(term, items, batch):
    present = [b for b in items if f"{term}_ids" in b]
    if not present:
        return
    N = max(b[f"{term}_ids"].shape[0] for b in present)
    K = max(b[f"{term}_ids"].shape[1] for b in present)
    ids, probs = torch.zeros(len(items), N, K, dtype=torch.long), torch.zeros(len(items), N, K)
    for i, b in enumerate(items):
        if f"{term}_ids" in b:
            n, k = b[f"{term}_ids"].shape
            ids[i, :n, :k], probs[i, :n, :k] = b[f"{term}_ids"], b[f"{term}_probs"]
    batch.update({f"{term}_ids": ids, f"{term}_probs": probs,
                  f"has_{term}": torch.tensor([f"{term}_ids" in b for b in items], dtype=torch.bool)})


def targets(batch, idx):
    """Transcripts of the utterances ``idx``, trimmed to their longest: (ys, ys_lens)."""
    ys_lens = batch["ys_lens"][idx.cpu()]
    return batch["ys"][idx.cpu()][:, :int(ys_lens.max())].to(idx.device), ys_lens.to(idx.device)


def fit(ids, probs, n, batch, device):
    """Padded sparse teacher rows cut or zero-padded to the student's ``n`` rows."""
    if ids.shape[1] < n:
        ids, probs = (torch.nn.functional.pad(x, (0, 0, 0, n - ids.shape[1])) for x in (ids, probs))
    elif ids.shape[1] > n and probs[:, n:].any():
        raise SoftLabelError(f"teacher data of {ids.shape[1]} rows for a student batch of {n} "
                             f"(utterances {batch['utts'][:3]})")
    return ids[:, :n].to(device), probs[:, :n].to(device)
