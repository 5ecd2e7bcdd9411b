"""Stage 5: frame-level distillation of a student from a teacher's soft labels (or the teacher itself).

The student trains on stage 3's trainer with this loss::

    loss = ((1 - alpha) * sum_{transcribed u} supervised_u  +  alpha * sum_u KD_u) / batch size
    KD_u = T^2 * sum over the student's frames of KL(teacher_t || softmax(student CTC logits_t / T))

so an untranscribed utterance contributes its KD term only. The teacher's distributions come from
stage 4's dumps (``SoftLabelSet``; frame or forward-backward posteriors, dense or top-k) or, in
online mode, from the teacher model run on the batch (``OnlineTeacher``). Where the two encoders
subsample differently (4x against 6x or 8x), the teacher's posteriors are pooled to the student's
frame rate (``kdtool.kd.losses.pool_to_length``).

The student config is a training config (kdtool.train.config) plus::

    kd_conf:
      alpha: 0.5              # weight of the KD term; 0 trains the student on its transcripts alone
      temperature: 1.0        # T: the student is softened at T, the loss scaled by T^2; a
                              # frame_posteriors dump must have been made at the same T
      online: false           # true: run the teacher on each batch instead of reading dumps
      online_type: frame_posteriors   # or fb_posteriors (online, transcribed utterances only)
      missing: error          # error | skip: utterances without soft labels train without KD
                              # (untranscribed ones are then left out), and are counted
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

from kdtool.features.cmvn import load_cmvn, mean_std
from kdtool.kd.forward_backward import ctc_occupancies_batch
from kdtool.kd.losses import hinton_kd_loss, pool_to_length, soften
from kdtool.kd.softlabels import SoftLabelError, SoftLabelReader, to_topk, tokens_sha256
from kdtool.models.asr import subsampled_length, subsampling_factor
from kdtool.models.build import ConfigError, build_model, read_yaml
from kdtool.models.load import load_trained
from kdtool.tokens import Tokenizer
from kdtool.train.config import model_part, resolve_config
from kdtool.train.dataset import collate
from kdtool.train.trainer import train

KD_DEFAULTS = {"alpha": 0.5, "temperature": 1.0, "online": False, "online_type": "frame_posteriors",
               "missing": "error"}
INIT_KEYS = ("first_n_blocks", "name_map")


def resolve_kd_conf(conf, source="config"):
    """kd_conf with defaults filled in; unknown keys or bad values are a ConfigError."""
    conf = {**KD_DEFAULTS, **(conf or {})}
    unknown = sorted(set(conf) - set(KD_DEFAULTS))
    if unknown:
        raise ConfigError(f"{source}: kd_conf: unknown key(s) {unknown}; allowed: {sorted(KD_DEFAULTS)}")
    if not 0 <= conf["alpha"] <= 1:
        raise ConfigError(f"{source}: kd_conf: alpha must be in [0, 1], not {conf['alpha']}")
    if not conf["temperature"] > 0:
        raise ConfigError(f"{source}: kd_conf: temperature must be positive, not {conf['temperature']}")
    if conf["online_type"] not in ("frame_posteriors", "fb_posteriors"):
        raise ConfigError(f"{source}: kd_conf: online_type must be frame_posteriors or fb_posteriors")
    if conf["missing"] not in ("error", "skip"):
        raise ConfigError(f"{source}: kd_conf: missing must be error or skip, not {conf['missing']!r}")
    return conf



# --------------------------------------------------------------------------- soft labels from dumps
class SoftLabelSet:
    """Several stage-4 dumps read as one (e.g. forward-backward posteriors of the training set and
    frame posteriors of the untranscribed pool). Checked when opened: every dump was made with the
    student's token list, and frame posteriors at the KD temperature."""

    def __init__(self, dump_dirs, tokens_path, temperature):
        self.readers = [SoftLabelReader(d, tokens_path=tokens_path) for d in dump_dirs]
        self._where = {}
        for r in self.readers:
            if r.meta["type"] == "frame_posteriors" and not math.isclose(r.meta["temperature"], temperature):
                raise SoftLabelError(f"{r.dir}: frame posteriors dumped at temperature {r.meta['temperature']}, "
                                     f"but kd_conf.temperature is {temperature}; redump at T={temperature} "
                                     "(stage 4, soft_label_temperature) or change kd_conf.temperature")
            for utt in r.scp:
                if utt in self._where:
                    raise SoftLabelError(f"utterance {utt} has soft labels in two dumps: "
                                         f"{self._where[utt].dir} and {r.dir}")
                self._where[utt] = r

    def __contains__(self, utt):
        return utt in self._where

    def get(self, utt, student_frames, student_subsampling):
        """(ids [T_s, K], probs [T_s, K]) on the student's ``student_frames`` frames."""
        r = self._where[utt]
        ids, probs = r.sparse(utt)
        if ids.shape[0] == student_frames:
            return ids, probs
        if r.meta["subsampling"] == student_subsampling:
            raise SoftLabelError(f"{r.dir}: utterance {utt}: {ids.shape[0]} frames of soft labels, but the student "
                                 f"gives {student_frames} with the same subsampling ({student_subsampling}x); "
                                 "were the features recomputed after stage 4? Rerun stage 4")
        dense = torch.zeros(ids.shape[0], r.vocab_size).scatter_(1, ids, probs)
        pooled = pool_to_length(dense, student_frames)
        ratio = ids.shape[0] / student_frames  # teacher frames per student frame: the support can grow that much
        k = min(r.vocab_size, ids.shape[1] * (math.ceil(ratio) + 1))
        return to_topk(pooled, k)


class DistillDataset(torch.utils.data.Dataset):
    """A SpeechDataset whose items also carry the teacher's soft labels on the student's frames
    (``soft_ids``, ``soft_probs``; absent for an utterance trained without KD)."""

    def __init__(self, base, soft_labels, student, missing="error"):
        self.base, self.soft = base, soft_labels
        self.subsampling = subsampling_factor(student)
        self._student_frames = lambda n: subsampled_length(student, n)
        lacking = [u for u in base.utts if u not in soft_labels]
        self.missing = len(lacking)
        if lacking and missing == "error":
            dirs = ", ".join(str(r.dir) for r in soft_labels.readers)
            raise SoftLabelError(f"{len(lacking)} of {len(base.utts)} training utterances have no soft labels in "
                                 f"{dirs} (first: {lacking[0]} from {base._dir[lacking[0]]}); dump them in "
                                 "stage 4, or set kd_conf.missing: skip to train those without KD")
        untranscribed = {u for u in lacking if u not in base._ys}
        if lacking:
            logging.warning("%d training utterances have no soft labels: trained without KD (%d untranscribed "
                            "ones left out)", len(lacking), len(untranscribed))
        self.utts = [u for u in base.utts if u not in untranscribed]
        self.num_frames = {u: base.num_frames[u] for u in self.utts}

    def __len__(self):
        return len(self.utts)

    def __getitem__(self, utt):
        item = self.base[utt]
        if utt in self.soft:
            ids, probs = self.soft.get(utt, self._student_frames(self.base.num_frames[utt]), self.subsampling)
            item["soft_ids"], item["soft_probs"] = ids, probs
        return item

    @staticmethod
    def collate(items):
        """``collate`` plus ``soft_ids`` / ``soft_probs`` [B, T', K] (zero-padded; zero probability
        adds nothing to the KL) and ``has_soft`` [B]."""
        items = sorted(items, key=lambda b: -b["feats"].shape[0])  # the order collate gives
        batch = collate(items)
        with_soft = [b for b in items if "soft_ids" in b]
        T = max((b["soft_ids"].shape[0] for b in with_soft), default=1)
        K = max((b["soft_ids"].shape[1] for b in with_soft), default=1)
        ids, probs = torch.zeros(len(items), T, K, dtype=torch.long), torch.zeros(len(items), T, K)
        for i, b in enumerate(items):
            if "soft_ids" in b:
                t, k = b["soft_ids"].shape
                ids[i, :t, :k], probs[i, :t, :k] = b["soft_ids"], b["soft_probs"]
        batch.update(soft_ids=ids, soft_probs=probs,
                     has_soft=torch.tensor(["soft_ids" in b for b in items], dtype=torch.bool))
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
    """``loss_fn(model, batch) -> (loss, stats)`` for the trainer (see the module docstring)."""

    def __init__(self, alpha, temperature, online_teacher=None):
        self.alpha, self.temperature, self.teacher = alpha, temperature, online_teacher

    def __call__(self, model, batch):
        B = len(batch["utts"])
        enc, enc_lens = model.encode(batch["feats"], batch["feats_lens"])
        loss, stats = enc.new_zeros(()), {}
        sup = batch["transcribed"]
        if self.alpha < 1 and sup.any():
            idx = sup.nonzero().squeeze(1)
            ys = batch["ys"][idx][:, :int(batch["ys_lens"][idx].max())]
            sup_loss, sup_stats = model.supervised_loss(enc[idx], enc_lens[idx], ys, batch["ys_lens"][idx])
            share = len(idx) / B  # supervised losses are per transcribed utterance; ours per utterance
            loss = loss + (1 - self.alpha) * share * sup_loss
            stats.update({k: v for k, v in sup_stats.items() if k != "loss"})
            stats["loss_sup"] = sup_loss.detach()
        if self.alpha > 0:
            kd = self.kd_loss(model, enc, enc_lens, batch)
            loss = loss + self.alpha * kd
            stats["loss_kd"] = kd.detach()
        stats["loss"] = loss.detach()
        return loss, stats

    def kd_loss(self, model, enc, enc_lens, batch):
        log_probs = model.ctc_log_probs(enc)
        frames = torch.arange(enc.shape[1], device=enc.device)[None, :] < enc_lens[:, None]
        if self.teacher is not None:
            probs, t_lens, has = self.teacher.posteriors(batch, enc.device)
            teacher = pool_batch(probs, t_lens, enc_lens)
        else:
            teacher = (batch["soft_ids"].to(enc.device), batch["soft_probs"].to(enc.device))
            has = batch["has_soft"]
            T = teacher[0].shape[1]
            if T < enc.shape[1]:  # soft labels are padded to their own longest utterance
                teacher = tuple(torch.nn.functional.pad(x, (0, 0, 0, enc.shape[1] - T)) for x in teacher)
            elif T > enc.shape[1]:
                raise SoftLabelError(f"soft labels of {T} frames for a student batch of {enc.shape[1]} frames "
                                     f"(utterances {batch['utts'][:3]})")
        mask = frames & has.to(enc.device)[:, None]
        return hinton_kd_loss(teacher, log_probs, self.temperature, mask)


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


def distill(config, exp_dir, train_dirs, valid_dir, token_dir, cmvn_path, soft_label_dirs=(), teacher_dir=None,
            devices="auto", num_nodes=1, accelerator="auto"):
    """Train a student with the KD loss into ``exp_dir`` (the trainer's layout; config.yaml also
    records the teacher and dumps). Every input is checked before training starts."""
    kd = config["kd_conf"]
    online, init = kd["online"] and kd["alpha"] > 0, config.get("init_conf")
    if (online or init) and not teacher_dir:
        raise ConfigError(f"kd_conf.online / init_conf need the teacher: give --teacher_dir")
    if kd["alpha"] > 0 and not online and not soft_label_dirs:
        raise ConfigError("kd_conf.alpha > 0 needs soft labels (--soft_labels, from stage 4) or kd_conf.online: true")
    tokenizer = Tokenizer(token_dir)
    trained = load_trained(teacher_dir) if teacher_dir else None
    if trained is not None and tokens_sha256(Path(teacher_dir) / "tokens" / "tokens.txt") != \
            tokens_sha256(Path(token_dir) / "tokens.txt"):
        raise SoftLabelError(f"{Path(token_dir) / 'tokens.txt'}: token list differs from the teacher's "
                             f"({Path(teacher_dir) / 'tokens' / 'tokens.txt'}); teacher and student must share it")
    torch.manual_seed(config["seed"])  # the same config gives the same initial student
    student = build_model(model_part(config), len(tokenizer), input_size=load_cmvn(cmvn_path).shape[1] - 1)
    if kd["alpha"] > 0 and getattr(student, "ctc", None) is None:
        raise ConfigError(f"frame-level KD trains the student's CTC head, and this {student.kind} student has "
                          "none (set model_conf.ctc_weight > 0)")
    copied = init_from_teacher(student, trained.model, init) if init else []
    if copied:
        logging.info("initialized %d student tensors from %s", len(copied), teacher_dir)

    wrap, teacher = None, None
    if online:
        teacher = OnlineTeacher(trained, kd["online_type"], kd["temperature"], mean_std(load_cmvn(cmvn_path)))
    elif kd["alpha"] > 0:
        soft = SoftLabelSet(soft_label_dirs, Path(token_dir) / "tokens.txt", kd["temperature"])
        wrap = lambda ds: DistillDataset(ds, soft, student, kd["missing"])  # noqa: E731
    config = {**config, "kd_conf": {**kd, "teacher": str(teacher_dir) if teacher_dir else None,
                                    "soft_labels": [str(d) for d in soft_label_dirs]}}
    return train(config, exp_dir, train_dirs, valid_dir, token_dir, cmvn_path, devices=devices,
                 num_nodes=num_nodes, accelerator=accelerator, model=student, wrap_train_set=wrap,
                 loss_fn=DistillLoss(kd["alpha"], kd["temperature"], teacher),
                 extra_info={"teacher": str(teacher_dir) if teacher_dir else None, "alpha": kd["alpha"],
                             "initialized_from_teacher": len(copied)})
