"""Stage 5: distillation of a student from a teacher's stored knowledge (or the teacher itself).

The student trains on stage 3's trainer with this loss, every term summed over utterances and
divided by the batch size::

    loss = (1 - alpha) * supervised  +  alpha * KD          (supervised: transcribed utterances only)
    KD   = frame_weight * frame + token_weight * token + seq_weight * seq + lattice_weight * lattice

    frame    T^2 KL(teacher || student CTC posteriors at T) per student frame, from frame or
             forward-backward posteriors (stage 4 dumps, or an online teacher); every utterance
    token    T^2 KL(AR teacher's decoder posteriors || student decoder at T) per position: an AR
             student's every position, a Mask-CTC student's masked ones; transcribed utterances
    seq      the student's supervised loss on the teacher's N-best hypotheses, hypothesis n weighted
             by softmax(score / nbest_tau) over its list; every utterance with a list
    lattice  T^2 KL over a transducer's output lattice of the collapsed (blank, next label, rest)
             distributions (kdtool.kd.rnnt); transducer students, transcribed utterances

so an untranscribed utterance learns from the teacher alone. Where teacher and student encoders
subsample differently (4x against 6x or 8x), frame posteriors are pooled to the student's frame
rate (``kdtool.kd.losses.pool_to_length``).

The student config is a training config (kdtool.train.config) plus::

    kd_conf:
      alpha: 0.5              # weight of KD; 0 trains the student on its transcripts alone
      temperature: 1.0        # T: the student is softened at T, terms scaled by T^2; frame, token and
                              # lattice dumps must have been made at the same T (fb posteriors: any)
      frame_weight: 1.0       # the KD terms' weights (a term of weight 0 reads nothing)
      token_weight: 0.0
      seq_weight: 0.0
      lattice_weight: 0.0
      nbest_tau: 1.0          # sharpness of the N-best weights
      frame_labels: fb_posteriors     # with --soft_label_dir: the stage-4 dumps that feed each term are
      untrans_labels: frame_posteriors  # <dir>/<name>_<set>: frame_labels_<training set>,
                              # untrans_labels_<untranscribed set>, token_posteriors_<set>,
                              # rnnt_lattice_<set>, nbest_<set>
      untranscribed: false    # true: also train on --untrans_data (teacher knowledge only)
      online: false           # true: the frame term from the teacher run on each batch, not a dump
      online_type: frame_posteriors   # or fb_posteriors (online, transcribed utterances only)
      missing: error          # error | skip: an utterance without some term's teacher data trains
                              # without that term (untranscribed ones with nothing are left out)
    init_conf:                # optional: start from the teacher's weights
      first_n_blocks: 4       # embed + the first N encoder blocks (+ CTC head if it fits), or
      name_map: {encoder.embed: encoder.embed}   # student prefix -> teacher prefix
"""
import copy
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from kdtool.features.cmvn import load_cmvn, mean_std
from kdtool.kd.forward_backward import ctc_occupancies_batch
from kdtool.kd.losses import hinton_kd_loss, pool_to_length, soften
from kdtool.kd.nbest import NBestSet, nbest_weights
from kdtool.kd.rnnt import from_matrix, lattice_kl, lattice_mask, pad_lattices
from kdtool.kd.softlabels import FRAME_TYPES, SoftLabelError, SoftLabelReader, to_topk, tokens_sha256
from kdtool.models.asr import IGNORE_ID, subsampled_length, subsampling_factor
from kdtool.models.build import ConfigError, build_model, read_yaml
from kdtool.models.load import load_trained
from kdtool.tokens import Tokenizer
from kdtool.train.config import model_part, resolve_config
from kdtool.train.dataset import collate
from kdtool.train.trainer import train

TERMS = ("frame", "token", "seq", "lattice")
KD_DEFAULTS = {"alpha": 0.5, "temperature": 1.0, "frame_weight": 1.0, "token_weight": 0.0, "seq_weight": 0.0,
               "lattice_weight": 0.0, "nbest_tau": 1.0, "frame_labels": "fb_posteriors",
               "untrans_labels": "frame_posteriors", "untranscribed": False, "online": False,
               "online_type": "frame_posteriors", "missing": "error"}
INIT_KEYS = ("first_n_blocks", "name_map")
DUMP_TERM = {"frame_posteriors": "frame", "fb_posteriors": "frame", "token_posteriors": "token",
             "rnnt_lattice": "lattice"}


def resolve_kd_conf(conf, source="config"):
    """kd_conf with defaults filled in; unknown keys or bad values are a ConfigError."""
    conf = {**KD_DEFAULTS, **(conf or {})}
    unknown = sorted(set(conf) - set(KD_DEFAULTS))
    if unknown:
        raise ConfigError(f"{source}: kd_conf: unknown key(s) {unknown}; allowed: {sorted(KD_DEFAULTS)}")
    if not 0 <= conf["alpha"] <= 1:
        raise ConfigError(f"{source}: kd_conf: alpha must be in [0, 1], not {conf['alpha']}")
    for key in ("temperature", "nbest_tau"):
        if not conf[key] > 0:
            raise ConfigError(f"{source}: kd_conf: {key} must be positive, not {conf[key]}")
    for term in TERMS:
        if conf[f"{term}_weight"] < 0:
            raise ConfigError(f"{source}: kd_conf: {term}_weight must be 0 or more")
    if conf["online_type"] not in FRAME_TYPES:
        raise ConfigError(f"{source}: kd_conf: online_type must be one of {FRAME_TYPES}")
    if conf["missing"] not in ("error", "skip"):
        raise ConfigError(f"{source}: kd_conf: missing must be error or skip, not {conf['missing']!r}")
    return conf


def active_terms(kd):
    """The KD terms this config trains with (none when alpha is 0)."""
    return [t for t in TERMS if kd["alpha"] > 0 and kd[f"{t}_weight"] > 0]


# --------------------------------------------------------------------------- teacher data from dumps
class SoftLabelSet:
    """Stage-4 dumps of one term read as one (e.g. forward-backward posteriors of the training set
    and frame posteriors of the untranscribed pool). Checked when opened: every dump was made with
    the student's token list, and (except forward-backward posteriors) at the KD temperature."""

    def __init__(self, dump_dirs, tokens_path, temperature):
        self.readers = [SoftLabelReader(d, tokens_path=tokens_path) for d in dump_dirs]
        self._where = {}
        for r in self.readers:
            if r.type != "fb_posteriors" and not math.isclose(r.meta["temperature"], temperature):
                raise SoftLabelError(f"{r.dir}: {r.type} dumped at temperature {r.meta['temperature']}, "
                                     f"but kd_conf.temperature is {temperature}; redump at T={temperature} "
                                     "(stage 4, soft_label_temperature) or change kd_conf.temperature")
            for utt in r.scp:
                if utt in self._where:
                    raise SoftLabelError(f"utterance {utt} has soft labels in two dumps: "
                                         f"{self._where[utt].dir} and {r.dir}")
                self._where[utt] = r

    def __contains__(self, utt):
        return utt in self._where

    def dirs(self):
        return ", ".join(str(r.dir) for r in self.readers)

    def frames(self, utt, student_frames, student_subsampling):
        """Frame posteriors (ids [T_s, K], probs [T_s, K]) on the student's ``student_frames`` frames."""
        r = self._where[utt]
        ids, probs = r.sparse(utt)
        if ids.shape[0] == student_frames:
            return ids, probs
        if r.meta["subsampling"] == student_subsampling:
            raise SoftLabelError(f"{r.dir}: utterance {utt}: {ids.shape[0]} frames of soft labels, but the student "
                                 f"gives {student_frames} with the same subsampling ({student_subsampling}x); "
                                 "were the features recomputed after stage 4? Rerun stage 4")
        dense = torch.zeros(ids.shape[0], r.width).scatter_(1, ids, probs)
        pooled = pool_to_length(dense, student_frames)
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
    term: ``frame_ids``/``frame_probs`` (on the student's frames), ``token_ids``/``token_probs``,
    ``nbest`` [(ids, score)], ``lattice`` [T_s, U+1, 3]; a key is absent where there is nothing."""

    def __init__(self, base, student, sources, missing="error"):
        self.base, self.sources = base, sources
        self.subsampling = subsampling_factor(student)
        self._student_frames = lambda n: subsampled_length(student, n)
        self.missing = {}
        untranscribed = [u for u in base.utts if u not in base._ys]
        for term, source in sources.items():
            needs = base.utts if term in ("frame", "seq") else [u for u in base.utts if u in base._ys]
            lacking = [u for u in needs if u not in source]
            self.missing[term] = len(lacking)
            if not lacking:
                continue
            where = source.dirs() if hasattr(source, "dirs") else str(source.dir)
            if missing == "error":
                raise SoftLabelError(f"{len(lacking)} of {len(needs)} training utterances have no {term}-level "
                                     f"teacher data in {where} (first: {lacking[0]} from {base._dir[lacking[0]]}); "
                                     "dump them in stage 4, or set kd_conf.missing: skip to train those without "
                                     "that term")
            logging.warning("%d training utterances have no %s-level teacher data in %s: trained without that term",
                            len(lacking), term, where)
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
        frames = self._student_frames(self.base.num_frames[utt])
        n_tokens = len(item["ys"])
        for term, source in self.sources.items():
            if utt not in source or (term in ("token", "lattice") and not item["transcribed"]):
                continue
            if term == "frame":
                item["frame_ids"], item["frame_probs"] = source.frames(utt, frames, self.subsampling)
            elif term == "token":
                item["token_ids"], item["token_probs"] = source.tokens(utt, n_tokens)
            elif term == "seq":
                item["nbest"] = source[utt]
            else:
                item["lattice"] = source.lattice(utt, n_tokens, frames)
        return item

    @staticmethod
    def collate(items):
        """``collate`` plus, per term present, padded teacher data: ``<term>_ids``/``<term>_probs``
        [B, N, K] (zero probability adds nothing to a KL) and ``has_<term>`` [B]; ``nbest`` (a list
        per utterance, empty where none); ``lattice`` (a list, None where none)."""
        items = sorted(items, key=lambda b: -b["feats"].shape[0])  # the order collate gives
        batch = collate(items)
        for term in ("frame", "token"):
            present = [b for b in items if f"{term}_ids" in b]
            if not present:
                continue
            N = max(b[f"{term}_ids"].shape[0] for b in present)
            K = max(b[f"{term}_ids"].shape[1] for b in present)
            ids, probs = torch.zeros(len(items), N, K, dtype=torch.long), torch.zeros(len(items), N, K)
            for i, b in enumerate(items):
                if f"{term}_ids" in b:
                    n, k = b[f"{term}_ids"].shape
                    ids[i, :n, :k], probs[i, :n, :k] = b[f"{term}_ids"], b[f"{term}_probs"]
            batch.update({f"{term}_ids": ids, f"{term}_probs": probs,
                          f"has_{term}": torch.tensor([f"{term}_ids" in b for b in items], dtype=torch.bool)})
        if any("nbest" in b for b in items):
            batch["nbest"] = [b.get("nbest", []) for b in items]
        if any("lattice" in b for b in items):
            batch["lattice"] = [b.get("lattice") for b in items]
        return batch


# --------------------------------------------------------------------------- online teacher
class OnlineTeacher:
    """The teacher model run on each batch (no dump): frame posteriors at temperature T, or
    forward-backward occupancies for transcribed utterances. It sees the features before SpecAugment
    (the student's augmentation is applied inside the student's encoder)."""

    def __init__(self, trained, type, temperature, student_cmvn):
        self.model = trained.model.eval().requires_grad_(False)
        self.type, self.temperature = type, temperature
        # the student's features are normalized with its CMVN; the teacher expects its own
        s_mean, s_std = student_cmvn
        t_mean, t_std = mean_std(trained.cmvn)
        self.scale = torch.from_numpy((s_std / t_std).astype(np.float32))
        self.shift = torch.from_numpy(((s_mean - t_mean) / t_std).astype(np.float32))
        self.subsampling = subsampling_factor(self.model)

    @torch.no_grad()
    def posteriors(self, batch, device):
        """[B, T_teacher, V] probabilities, teacher frame lengths [B], and which utterances have them."""
        self.model.to(device)
        feats = batch["feats"] * self.scale.to(device) + self.shift.to(device)
        enc, enc_lens = self.model.encode(feats, batch["feats_lens"])
        log_probs = self.model.ctc_log_probs(enc)
        if self.type == "frame_posteriors":
            return soften(log_probs, self.temperature).exp(), enc_lens, torch.ones_like(batch["transcribed"])
        has = batch["transcribed"]
        probs = torch.zeros_like(log_probs)
        if has.any():
            idx = has.nonzero().squeeze(1)
            ys = batch["ys"][idx][:, :int(batch["ys_lens"][idx].max())]
            probs[idx] = ctc_occupancies_batch(log_probs[idx], enc_lens[idx], ys, batch["ys_lens"][idx],
                                               blank=self.model.blank)
        return probs, enc_lens, has


def pool_batch(probs, teacher_lens, student_lens):
    """Teacher posteriors [B, T_t, V] on the student's frames [B, T_s, V] (pooled where lengths differ)."""
    out = probs.new_zeros(probs.shape[0], int(student_lens.max()), probs.shape[2])
    for b, (tl, sl) in enumerate(zip(teacher_lens.tolist(), student_lens.tolist())):
        p = probs[b, :tl]
        out[b, :sl] = p if tl == sl else pool_to_length(p, sl)
    return out


# --------------------------------------------------------------------------- the loss
class DistillLoss:
    """``loss_fn(model, batch) -> (loss, stats)`` for the trainer (see the module docstring).
    ``weights``: {term: weight} of the active KD terms."""

    def __init__(self, alpha, temperature, weights=None, online_teacher=None, nbest_tau=1.0):
        self.alpha, self.temperature, self.teacher, self.nbest_tau = alpha, temperature, online_teacher, nbest_tau
        self.weights = {"frame": 1.0} if weights is None else dict(weights)

    def __call__(self, model, batch):
        B = len(batch["utts"])
        enc, enc_lens = model.encode(batch["feats"], batch["feats_lens"])
        loss, stats = enc.new_zeros(()), {}
        sup = batch["transcribed"]
        if self.alpha < 1 and sup.any():
            idx = sup.nonzero().squeeze(1)
            sup_loss, sup_stats = model.supervised_loss(enc[idx], enc_lens[idx], *_targets(batch, idx))
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
        return loss, stats

    def frame_kd(self, model, enc, enc_lens, batch):
        log_probs = model.ctc_log_probs(enc)
        frames = torch.arange(enc.shape[1], device=enc.device)[None, :] < enc_lens[:, None]
        if self.teacher is not None:
            probs, t_lens, has = self.teacher.posteriors(batch, enc.device)
            teacher = pool_batch(probs, t_lens, enc_lens)
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
        kd = hinton_kd_loss(teacher, torch.log_softmax(logits, -1), self.temperature, ys_out != IGNORE_ID)
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
        ys, ys_lens = (x.to(enc.device) for x in _targets(batch, idx))
        logits = model.joint_logits(enc[idx], ys)
        teacher = pad_lattices([batch["lattice"][b].to(enc.device) for b in rows], enc_lens[idx], ys_lens,
                               logits.shape[1], logits.shape[2])
        mask = lattice_mask(enc_lens[idx], ys_lens, logits.shape[1], logits.shape[2])
        kd = lattice_kl(teacher, logits, ys, ys_lens, mask, self.temperature)
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


# --------------------------------------------------------------------------- initialisation from the teacher
def init_from_teacher(student, teacher, init_conf):
    """Copy teacher weights into the student (see the module docstring); returns the copied names.
    A name or shape that does not fit is a ConfigError naming it."""
    init_conf = dict(init_conf or {})
    unknown = sorted(set(init_conf) - set(INIT_KEYS))
    if unknown:
        raise ConfigError(f"init_conf: unknown key(s) {unknown}; allowed: {list(INIT_KEYS)}")
    s_state, t_state = student.state_dict(), teacher.state_dict()
    name_map = dict(init_conf.get("name_map") or {})
    n = init_conf.get("first_n_blocks")
    if n is not None:
        t_blocks = len(getattr(teacher.encoder, "encoders", []))
        s_blocks = len(getattr(student.encoder, "encoders", []))
        if not 1 <= n <= min(t_blocks, s_blocks):
            raise ConfigError(f"init_conf: first_n_blocks {n} must be in 1..{min(t_blocks, s_blocks)} "
                              f"(teacher has {t_blocks} encoder blocks, student {s_blocks})")
        name_map.update({"encoder.embed": "encoder.embed",
                         **{f"encoder.encoders.{i}.": f"encoder.encoders.{i}." for i in range(n)}})
        if student.ctc is not None and teacher.ctc is not None and \
                s_state["ctc.ctc_lo.weight"].shape == t_state["ctc.ctc_lo.weight"].shape:
            name_map["ctc."] = "ctc."
    copied = {}
    for s_prefix, t_prefix in name_map.items():
        names = [k for k in s_state if k.startswith(s_prefix)]
        if not names:
            raise ConfigError(f"init_conf: no student parameter starts with {s_prefix!r}")
        for k in names:
            t_key = t_prefix + k[len(s_prefix):]
            if t_key not in t_state:
                raise ConfigError(f"init_conf: student {k} maps to teacher {t_key}, which the teacher lacks")
            if t_state[t_key].shape != s_state[k].shape:
                raise ConfigError(f"init_conf: student {k} {list(s_state[k].shape)} does not fit teacher "
                                  f"{t_key} {list(t_state[t_key].shape)}")
            copied[k] = t_state[t_key]
    student.load_state_dict(copied, strict=False)
    return sorted(copied)


# --------------------------------------------------------------------------- stage 5
def load_student_config(path):
    """A student config file -> resolved config with ``kd_conf`` (defaults filled) and ``init_conf``."""
    raw = read_yaml(path, "config file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    raw = copy.deepcopy(raw)
    kd, init = raw.pop("kd_conf", None), raw.pop("init_conf", None)
    config = resolve_config(raw, source=str(path))
    config["kd_conf"] = resolve_kd_conf(kd, source=str(path))
    config["init_conf"] = init
    return config


def dump_term(dump_dir):
    """Which KD term a stage-4 dump feeds, from its soft_labels.json."""
    meta = Path(dump_dir) / "soft_labels.json"
    if not meta.is_file():
        raise SoftLabelError(f"{meta}: missing: not a soft-label dump (or stage 4 did not finish)")
    return DUMP_TERM[read_yaml(meta, "soft-label metadata")["type"]]


def conventional_dumps(kd, terms, soft_label_dir, train_dirs, untrans_dirs):
    """(soft-label dirs, N-best dirs) named by stage 4's convention <soft_label_dir>/<name>_<set>,
    for the active terms; a dir that does not exist is a ConfigError naming the stage to run."""
    root, soft, nbest = Path(soft_label_dir), [], []
    sets = [(Path(d).name, True) for d in train_dirs] + [(Path(d).name, False) for d in untrans_dirs]
    for term in terms:
        for name, transcribed in sets:
            if term == "frame":
                dirs = [root / f"{kd['frame_labels' if transcribed else 'untrans_labels']}_{name}"]
            elif term == "seq":
                dirs = [root / f"nbest_{name}"]
            elif transcribed:
                dirs = [root / f"{'token_posteriors' if term == 'token' else 'rnnt_lattice'}_{name}"]
            else:
                continue  # token posteriors and lattices need a transcript
            for d in dirs:
                if not d.is_dir():
                    raise ConfigError(f"kd_conf: the {term}-level term needs {d}, which stage 4 has not made "
                                      "(see soft_label_types / nbest in the recipe)")
            (nbest if term == "seq" else soft).extend(dirs)
    return soft, nbest


def check_student(student, terms):
    """A student that cannot learn one of the active terms is a ConfigError saying why."""
    if "frame" in terms and getattr(student, "ctc", None) is None:
        raise ConfigError(f"frame-level KD trains the student's CTC head, and this {student.kind} student has "
                          "none (set model_conf.ctc_weight > 0)")
    if "token" in terms and not hasattr(student, "decoder_logits"):
        raise ConfigError(f"token-level KD trains a decoder (an ar or nar student's); this {student.kind} student "
                          "has none")
    if "lattice" in terms and student.kind != "transducer":
        raise ConfigError(f"lattice KD trains a transducer's joint network, not a {student.kind} student's")


def distill(config, exp_dir, train_dirs, valid_dir, token_dir, cmvn_path, soft_label_dirs=(), nbest_dirs=(),
            teacher_dir=None, soft_label_dir=None, untrans_dirs=(), devices="auto", num_nodes=1, accelerator="auto"):
    """Train a student with the KD loss into ``exp_dir`` (the trainer's layout; config.yaml also
    records the teacher and the dumps it used). Every input is checked before training starts.

    Teacher data: explicit ``soft_label_dirs`` / ``nbest_dirs``, and/or those of the stage-4
    naming convention under ``soft_label_dir`` (see ``conventional_dumps``). ``untrans_dirs`` join
    the training data when kd_conf.untranscribed is true."""
    kd, init = config["kd_conf"], config.get("init_conf")
    terms = active_terms(kd)
    online = kd["online"] and "frame" in terms
    train_dirs = [train_dirs] if isinstance(train_dirs, (str, Path)) else list(train_dirs)
    untrans_dirs = list(untrans_dirs) if kd["untranscribed"] else []
    if kd["untranscribed"] and not untrans_dirs:
        raise ConfigError("kd_conf.untranscribed: true needs the untranscribed set (--untrans_data)")
    if kd["untranscribed"] and not terms:
        raise ConfigError("kd_conf.untranscribed: true with no KD term: untranscribed speech would teach nothing")
    if soft_label_dir is not None:
        more_soft, more_nbest = conventional_dumps(kd, [t for t in terms if not (t == "frame" and online)],
                                                   soft_label_dir, train_dirs, untrans_dirs)
        soft_label_dirs, nbest_dirs = [*soft_label_dirs, *more_soft], [*nbest_dirs, *more_nbest]
    if (online or init) and not teacher_dir:
        raise ConfigError("kd_conf.online / init_conf need the teacher: give --teacher_dir")
    dumps = {}
    for d in soft_label_dirs:
        dumps.setdefault(dump_term(d), []).append(d)
    for term in terms:
        given = nbest_dirs if term == "seq" else dumps.get(term)
        if not given and not (term == "frame" and online):
            what = {"frame": "frame_posteriors or fb_posteriors dumps (--soft_labels) or kd_conf.online: true",
                    "token": "token_posteriors dumps (--soft_labels)", "seq": "N-best lists (--nbest)",
                    "lattice": "rnnt_lattice dumps (--soft_labels)"}[term]
            raise ConfigError(f"kd_conf.{term}_weight > 0 needs {what}, from stage 4")
    tokens_path = Path(token_dir) / "tokens.txt"
    tokenizer = Tokenizer(token_dir)
    trained = load_trained(teacher_dir) if teacher_dir else None
    if trained is not None and tokens_sha256(Path(teacher_dir) / "tokens" / "tokens.txt") != tokens_sha256(tokens_path):
        raise SoftLabelError(f"{tokens_path}: token list differs from the teacher's "
                             f"({Path(teacher_dir) / 'tokens' / 'tokens.txt'}); teacher and student must share it")
    torch.manual_seed(config["seed"])  # the same config gives the same initial student
    student = build_model(model_part(config), len(tokenizer), input_size=load_cmvn(cmvn_path).shape[1] - 1)
    check_student(student, terms)
    copied = init_from_teacher(student, trained.model, init) if init else []
    if copied:
        logging.info("initialized %d student tensors from %s", len(copied), teacher_dir)

    sources, used = {}, []
    for term in terms:
        if term == "seq":
            sources[term], used = NBestSet(nbest_dirs, tokens_path), used + list(nbest_dirs)
        elif not (term == "frame" and online):
            sources[term], used = SoftLabelSet(dumps[term], tokens_path, kd["temperature"]), used + dumps[term]
    teacher = OnlineTeacher(trained, kd["online_type"], kd["temperature"],
                            mean_std(load_cmvn(cmvn_path))) if online else None
    wrap = (lambda ds: DistillDataset(ds, student, sources, kd["missing"])) if sources else None  # noqa: E731
    config = {**config, "kd_conf": {**kd, "teacher": str(teacher_dir) if teacher_dir else None,
                                    "teacher_data": [str(d) for d in used]}}
    loss = DistillLoss(kd["alpha"], kd["temperature"], {t: kd[f"{t}_weight"] for t in terms}, teacher,
                       kd["nbest_tau"])
    return train(config, exp_dir, train_dirs + untrans_dirs, valid_dir, token_dir, cmvn_path, devices=devices,
                 num_nodes=num_nodes, accelerator=accelerator, model=student, wrap_train_set=wrap, loss_fn=loss,
                 extra_info={"teacher": str(teacher_dir) if teacher_dir else None, "alpha": kd["alpha"],
                             "kd_terms": terms, "initialized_from_teacher": len(copied)})
