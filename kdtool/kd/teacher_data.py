"""What a student reads about each training utterance from stage 4's dumps: frame or token
posteriors, collapsed lattices (``SoftLabelSet``), N-best lists (kdtool.kd.nbest.NBestSet), put
on the student's frames and batched by ``DistillDataset``."""
import logging
import math

import torch

from kdtool.kd.losses import FRONT_ENDS, conv_length, frame_grid, pool_to_grid
from kdtool.kd.rnnt import from_matrix
from kdtool.kd.softlabels import SoftLabelError, SoftLabelReader, index_by_utterance, to_topk
from kdtool.models.asr import front_end, subsampled_length, subsampling_factor
from kdtool.train.dataset import collate


class SoftLabelSet:
    """Stage-4 dumps of one term read as one (e.g. forward-backward posteriors of the training set
    and frame posteriors of the untranscribed pool). Checked when opened: every dump was made with
    the student's token list, and at the KD temperature.

    Forward-backward posteriors are used at T = 1 only, and refused at any other T: they are
    occupancies of the alignments of the transcript, not a softmax of logits, so they are exactly 0
    on every token outside the transcript. Tempering them (p^(1/T), renormalized) would add none of
    the knowledge that T exists for, only blur the alignment between blank and the transcript's
    labels; using them untempered against a student softened at T (what kdtool did before) pulls the
    student toward a target sharper than its own, with the T^2 scaling meant for softened targets,
    and mixes them inconsistently with T-tempered frame posteriors of the untranscribed pool. At
    T != 1, frame posteriors dumped at T carry what tempering is for."""

    def __init__(self, dump_dirs, tokens_path, temperature):
        self.readers = [SoftLabelReader(d, tokens_path=tokens_path) for d in dump_dirs]
        for r in self.readers:
            if r.type == "fb_posteriors" and not math.isclose(temperature, 1.0):
                raise SoftLabelError(f"{r.dir}: fb_posteriors are CTC forward-backward occupancies, made at "
                                     f"temperature {r.meta['temperature']} (untempered), but kd_conf.temperature "
                                     f"is {temperature}; set kd_conf.temperature: 1, or use frame_posteriors "
                                     f"dumped at T={temperature} (kd_conf.frame_labels: frame_posteriors, stage 4's "
                                     "soft_label_temperature)")
            if r.type != "fb_posteriors" and not math.isclose(r.meta["temperature"], temperature):
                raise SoftLabelError(f"{r.dir}: {r.type} dumped at temperature {r.meta['temperature']}, "
                                     f"but kd_conf.temperature is {temperature}; redump at T={temperature} "
                                     "(stage 4, soft_label_temperature) or change kd_conf.temperature")
        self._where = index_by_utterance(self.readers, lambda r: r.scp)

    def __contains__(self, utt):
        return utt in self._where

    def dirs(self):
        return ", ".join(str(r.dir) for r in self.readers)

    def check_front_end(self, student_front_end):
        """A dump whose teacher frames cannot be put on the student's is a SoftLabelError naming both rates."""
        student = frame_grid(student_front_end)[1]
        for r in self.readers:
            sub = r.meta["subsampling"]
            if sub != student and sub not in FRONT_ENDS:
                raise SoftLabelError(f"{r.dir}: made by a teacher that subsamples {sub}x, whose frame positions "
                                     f"kdtool does not know (espnet's conv2d front-ends: {sorted(FRONT_ENDS)}x), "
                                     f"for a student that subsamples {student}x; give the student the teacher's "
                                     "input_layer")

    def frames(self, utt, student_frames, student_front_end, input_frames):
        """Frame posteriors (ids [T_s, K], probs [T_s, K]) on the student's ``student_frames`` frames, put on
        its grid where the teacher subsamples differently (kdtool.kd.losses.pool_to_grid)."""
        r = self._where[utt]
        ids, probs = r.sparse(utt)
        sub = r.meta["subsampling"]
        same = sub == frame_grid(student_front_end)[1]
        expected = student_frames if same else conv_length(FRONT_ENDS[sub], input_frames)
        if ids.shape[0] != expected:
            raise SoftLabelError(f"{r.dir}: utterance {utt}: {ids.shape[0]} frames of soft labels, but its "
                                 f"{input_frames} input frames give {expected} at the teacher's subsampling "
                                 f"({sub}x); were the features recomputed after stage 4? Rerun stage 4")
        if same:
            return ids, probs
        dense = torch.zeros(ids.shape[0], r.width).scatter_(1, ids, probs)
        pooled = pool_to_grid(dense, FRONT_ENDS[sub], student_front_end, student_frames)
        ratio = ids.shape[0] / student_frames  # teacher frames per student frame: the support can grow that much
        k = min(r.width, ids.shape[1] * (math.ceil(ratio) + 1))
        return to_topk(pooled, k)

    def tokens(self, utt, n_tokens):
        """Token posteriors (ids [L+1, K], probs [L+1, K]) for a transcript of ``n_tokens`` tokens."""
        r = self._where[utt]
        ids, probs = r.sparse(utt)
        if ids.shape[0] != n_tokens + 1:
            raise SoftLabelError(f"{r.dir}: utterance {utt}: {ids.shape[0]} rows of token posteriors, but its "
                                 f"transcript has {n_tokens} tokens (+ <eos>); was the text changed after stage 4?")
        return ids, probs

    def lattice(self, utt, n_tokens, student_frames):
        """Collapsed lattice probabilities [T_s, U+1, 3]."""
        r = self._where[utt]
        try:
            return from_matrix(r.dense(utt), n_tokens, num_frames=student_frames)
        except ValueError as e:
            raise SoftLabelError(f"{r.dir}: utterance {utt}: {e}") from None


class DistillDataset(torch.utils.data.Dataset):
    """A SpeechDataset whose items also carry what the teacher says about them, for each active
    term (``sources``: {term: its reader}; each term of kdtool.kd.terms says what its items and
    batch keys are: ``frame_ids``/``frame_probs`` on the student's frames, ``token_ids``/``token_probs``,
    ``nbest`` [(ids, score)], ``lattice`` [T_s, U+1, 3]); a key is absent where there is nothing."""

    def __init__(self, base, student, sources, missing="error"):
        from kdtool.kd.terms import TERMS  # the terms read their dumps with this module's SoftLabelSet
        self.base, self.sources = base, sources
        self.terms = {name: TERMS[name] for name in sources}
        self.subsampling, self.front_end = subsampling_factor(student), front_end(student)
        self.student_frames = lambda n: subsampled_length(student, n)
        self.missing = {}
        untranscribed = [u for u in base.utts if u not in base._ys]
        for name, source in sources.items():
            self.terms[name].prepare(source, self)
        for name, source in sources.items():
            term = self.terms[name]
            needs = [u for u in base.utts if u in base._ys] if term.transcribed_only else base.utts
            lacking = [u for u in needs if u not in source]
            self.missing[name] = len(lacking)
            if not lacking:
                continue
            where = source.dirs() if hasattr(source, "dirs") else str(source.dir)
            if missing == "error":
                raise SoftLabelError(f"{len(lacking)} of {len(needs)} training utterances have no {name}-level "
                                     f"teacher data in {where} (first: {lacking[0]} from {base._dir[lacking[0]]}); "
                                     "dump them in stage 4, or set kd_conf.missing: skip to train those without "
                                     "that term")
            logging.warning("%d training utterances have no %s-level teacher data in %s: trained without that term",
                            len(lacking), name, where)
        # an untranscribed utterance with no teacher data at all has nothing to teach
        useless = {u for u in untranscribed if not any(u in s for s in sources.values())}
        if useless:
            logging.warning("%d untranscribed utterances have no teacher data: left out", len(useless))
        self.utts = [u for u in base.utts if u not in useless]
        self.num_frames = {u: base.num_frames[u] for u in self.utts}

    def __len__(self):
        return len(self.utts)

    def __getitem__(self, utt):
        item = self.base[utt]
        for name, source in self.sources.items():
            term = self.terms[name]
            if utt in source and (item["transcribed"] or not term.transcribed_only):
                item.update(term.item(source, utt, item, self))
        return item

    @staticmethod
    def collate(items):
        """``collate`` plus, per term present, its padded teacher data (kdtool.kd.terms.base.Term.collate:
        ``<term>_ids``/``<term>_probs`` [B, N, K] and ``has_<term>`` [B]; ``nbest``, a list per utterance,
        empty where none; ``lattice``, a list, None where none)."""
        from kdtool.kd.terms import TERMS
        items = sorted(items, key=lambda b: -b["feats"].shape[0])  # the order collate gives
        batch = collate(items)
        for term in TERMS.values():
            term.collate(items, batch)
        return batch
