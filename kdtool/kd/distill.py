"""Stage 5: distillation of a student from a teacher's stored knowledge (or the teacher itself).

The student trains on stage 3's trainer with this loss, every term summed over utterances and
divided by the batch size::

    loss = (1 - alpha) * supervised  +  alpha * KD          (supervised: transcribed utterances only)
    KD   = frame_weight * frame + token_weight * token + seq_weight * seq + lattice_weight * lattice
           + hidden_weight * hidden

    frame    T^2 KL(teacher || student CTC posteriors at T) per student frame, from frame or
             forward-backward posteriors (stage 4 dumps, or an online teacher); every utterance
    token    T^2 KL(AR teacher's decoder posteriors || student decoder at T) per position: an AR
             student's every position, a Mask-CTC student's masked ones; transcribed utterances
    seq      the student's supervised loss on the teacher's N-best hypotheses, hypothesis n weighted
             by softmax(score / nbest_tau) over its list; every utterance with a list
    lattice  T^2 KL over a transducer's output lattice of the collapsed (blank, next label, rest)
             distributions (kdtool.kd.rnnt); transducer students, transcribed utterances
    hidden   L2 or cosine from chosen teacher encoder layers to the student's, through a learned
             projection where widths differ; the teacher run on each batch (kdtool.kd.terms.hidden)

so an untranscribed utterance learns from the teacher alone. Each term is one module of
kdtool.kd.terms, registered in its ``TERMS`` table: what it reads from stage 4, which students it
applies to, its batch keys, its loss and any trainable parts; this module only asks the table.
Where teacher and student encoders subsample differently (4x against 6x or 8x), frame posteriors
are pooled to the student's frame rate so that a CTC spike stays a spike
(``kdtool.kd.losses.pool_spikes``).

The student config is a training config (kdtool.train.config) plus::

    kd_conf:
      alpha: 0.5              # weight of KD; 0 trains the student on its transcripts alone
      temperature: 1.0        # T: the student is softened at T, terms scaled by T^2; frame, token and
                              # lattice dumps must have been made at the same T; fb posteriors (dumped
                              # or online) only at T = 1 (kdtool.kd.teacher_data.SoftLabelSet says why)
      frame_weight: 1.0       # the KD terms' weights (a term of weight 0 reads nothing)
      token_weight: 0.0
      seq_weight: 0.0
      lattice_weight: 0.0
      hidden_weight: 0.0
      hidden_layers: null     # {student layer: teacher layer} (encoder blocks, 1-based); null: encoder outputs
      hidden_loss: l2         # or cosine
      nbest_tau: 1.0          # sharpness of the N-best weights
      lattice_nodes: all      # all: every lattice node's KL counts 1; occupancy: weighted by how often the
                              # teacher's alignments pass the node (sums T + U nodes' worth, not T * (U+1))
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
      name_map: {encoder.embed: encoder.embed}   # student prefix -> teacher prefix, or
      slice_width: true       # every parameter cut to the student's width (see kdtool.kd.init)
    twin: train_x.yaml        # optional: the twin, this student trained without KD (see twin_config)

Stage 5 records in the exp dir's model_info.json what the results table reads (kdtool.scoring.summary):
the config (as given), its twin's config (``twin_config``), the seed used and the ``--seed`` given
(``seed_option``) and the teacher dir.
"""
import logging
import os
from pathlib import Path

import torch

from kdtool.errors import ConfigError
from kdtool.features.cmvn import load_cmvn, mean_std
from kdtool.kd.distill_loss import DistillLoss, OnlineTeacher  # noqa: F401 (part of this module's API)
from kdtool.kd.init import init_from_teacher
from kdtool.kd.softlabels import SoftLabelError, tokens_sha256
from kdtool.kd.teacher_data import DistillDataset, SoftLabelSet  # noqa: F401
from kdtool.kd.terms import TERMS as TERM_TABLE, term_of_dump_type
from kdtool.models.build import MODEL_KEYS, build_model
from kdtool.models.load import load_trained
from kdtool.tokens import Tokenizer
from kdtool.train.config import TRAIN_KEYS, config_chain, config_source, model_part, read_config, resolve_config
from kdtool.train.trainer import train
from kdtool.utils.provenance import check_dumps
from kdtool.utils.yamlfile import read_yaml

TERMS = tuple(TERM_TABLE)  # the KD terms' names, in the order of the sum (kdtool.kd.terms)
# kd_conf: the shared keys, each term's weight (only frame's on by default), then the terms' own keys
KD_DEFAULTS = {"alpha": 0.5, "temperature": 1.0, **{f"{t}_weight": 1.0 if t == "frame" else 0.0 for t in TERMS},
               **{k: v for t in TERM_TABLE.values() for k, v in t.defaults.items()},
               "untranscribed": False, "missing": "error"}


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
    for term in TERMS:
        if conf[f"{term}_weight"] < 0:
            raise ConfigError(f"{source}: kd_conf: {term}_weight must be 0 or more")
    for term in TERM_TABLE.values():
        term.check_conf(conf, source)
    if conf["missing"] not in ("error", "skip"):
        raise ConfigError(f"{source}: kd_conf: missing must be error or skip, not {conf['missing']!r}")
    return conf


def active_terms(kd):
    """The KD terms this config trains with (none when alpha is 0)."""
    return [t for t in TERMS if kd["alpha"] > 0 and kd[f"{t}_weight"] > 0]


# --------------------------------------------------------------------------- stage 5
def load_student_config(path, overrides=()):
    """A student config file (``base:`` and ``KEY=VALUE`` overrides as kdtool.train.config reads them)
    -> resolved config with ``kd_conf`` (defaults filled) and ``init_conf``."""
    raw = read_config(path, overrides, known=MODEL_KEYS | TRAIN_KEYS | {"kd_conf", "init_conf"})
    kd, init = raw.pop("kd_conf", None), raw.pop("init_conf", None)
    source = config_source(path, overrides)
    config = resolve_config(raw, source=source)
    config["kd_conf"] = resolve_kd_conf(kd, source=source)
    config["init_conf"] = init
    return config


def _differing_keys(student, twin):
    """The keys of two resolved configs that differ besides kd_conf (the same frames per update split
    otherwise, batch_frames x accum_grad, count as the same)."""
    keys = sorted(k for k in set(student) | set(twin) if k != "kd_conf" and student.get(k) != twin.get(k))
    if keys == ["accum_grad", "batch_frames"] and (student["batch_frames"] * student["accum_grad"]
                                                   == twin["batch_frames"] * twin["accum_grad"]):
        return []
    return keys


def twin_config(path, overrides=()):
    """The config of this student's twin (the same student trained without KD), named as ``path`` is (a
    relative path stays relative); None for a student that trains without KD itself, or has no twin.

    The twin is the nearest of: a ``twin: <file>`` in the config or in a config up its ``base:`` chain
    (relative to the file that names it), or a config up the chain that trains without KD (a KD student
    written as ``base: <twin>`` plus kd_conf needs nothing more). The twin, with the same ``overrides``,
    must train without KD and differ from the student in kd_conf only: a ``twin:`` of the config itself
    that does not is a ConfigError; an inherited or derived one is logged and left out (a tuning file on a
    KD student, with another architecture, has no twin on record)."""
    student = load_student_config(path, overrides)
    if not active_terms(student["kd_conf"]):
        return None
    chain = config_chain(path)
    for depth, (file, raw) in enumerate(chain):
        if raw.get("twin") is not None:
            if not isinstance(raw["twin"], str) or not (file.parent / raw["twin"]).is_file():
                raise ConfigError(f"{file}: twin: {raw['twin']!r} is not a config file relative to {file.parent}")
            candidate, named = file.parent / raw["twin"], depth == 0
            break
        if depth and not active_terms(load_student_config(file, overrides)["kd_conf"]):
            candidate, named = file, False
            break
    else:
        return None
    twin = load_student_config(candidate, overrides)
    differ = _differing_keys(student, twin)
    problem = ("trains with KD" if active_terms(twin["kd_conf"])
               else f"differs from it in {differ}, not only in kd_conf" if differ else None)
    if problem is None:
        return os.path.normpath(candidate)
    message = f"{config_source(path, overrides)}: its twin {os.path.normpath(candidate)} {problem}"
    if named:
        raise ConfigError(f"{message}; name the same student without KD, or remove twin:")
    logging.warning("%s; no twin recorded (name one with twin: in %s)", message, path)
    return None


def dump_term(dump_dir):
    """Which KD term a stage-4 dump feeds, from its soft_labels.json."""
    meta = Path(dump_dir) / "soft_labels.json"
    if not meta.is_file():
        raise SoftLabelError(f"{meta}: missing: not a soft-label dump (or stage 4 did not finish)")
    return term_of_dump_type(read_yaml(meta, "soft-label metadata")["type"])


def conventional_dumps(kd, terms, soft_label_dir, train_dirs, untrans_dirs):
    """(soft-label dirs, N-best dirs) named by stage 4's convention <soft_label_dir>/<name>_<set>,
    for the active terms; a dir that does not exist is a ConfigError naming the stage to run."""
    root, soft, nbest = Path(soft_label_dir), [], []
    sets = [(Path(d).name, True) for d in train_dirs] + [(Path(d).name, False) for d in untrans_dirs]
    for term in terms:
        for name, transcribed in sets:
            dirs = TERM_TABLE[term].dump_dirs(kd, root, name, transcribed)  # none where it needs a transcript
            for d in dirs:
                if not d.is_dir():
                    raise ConfigError(f"kd_conf: the {term}-level term needs {d}, which stage 4 has not made "
                                      "(see soft_label_types / nbest in the recipe)")
            (nbest if TERM_TABLE[term].reads == "nbest" else soft).extend(dirs)
    return soft, nbest


def check_student(student, terms, kd=None):
    """A student that cannot learn one of the active terms is a ConfigError saying why."""
    for term in terms:
        TERM_TABLE[term].check_student(student, kd)


def distill(config, exp_dir, train_dirs, valid_dir, token_dir, cmvn_path, soft_label_dirs=(), nbest_dirs=(),
            teacher_dir=None, soft_label_dir=None, untrans_dirs=(), devices="auto", num_nodes=1, accelerator="auto",
            extra_info=None):
    """Train a student with the KD loss into ``exp_dir`` (the trainer's layout; config.yaml also
    records the teacher and the dumps it used). Every input is checked before training starts.

    Teacher data: explicit ``soft_label_dirs`` / ``nbest_dirs``, and/or those of the stage-4
    naming convention under ``soft_label_dir`` (see ``conventional_dumps``). ``untrans_dirs`` join
    the training data when kd_conf.untranscribed is true."""
    kd, init = config["kd_conf"], config.get("init_conf")
    terms = active_terms(kd)
    online = [t for t in terms if TERM_TABLE[t].online(kd)]  # computed from the teacher on each batch
    train_dirs = [train_dirs] if isinstance(train_dirs, (str, Path)) else list(train_dirs)
    untrans_dirs = list(untrans_dirs) if kd["untranscribed"] else []
    if kd["untranscribed"] and not untrans_dirs:
        raise ConfigError("kd_conf.untranscribed: true needs the untranscribed set (--untrans_data)")
    if kd["untranscribed"] and not terms:
        raise ConfigError("kd_conf.untranscribed: true with no KD term: untranscribed speech would teach nothing")
    if soft_label_dir is not None:
        more_soft, more_nbest = conventional_dumps(kd, [t for t in terms if t not in online],
                                                   soft_label_dir, train_dirs, untrans_dirs)
        soft_label_dirs, nbest_dirs = [*soft_label_dirs, *more_soft], [*nbest_dirs, *more_nbest]
    if (online or init) and not teacher_dir:
        raise ConfigError("kd_conf.online / init_conf need the teacher: give --teacher_dir")
    dumps = {}
    for d in soft_label_dirs:
        dumps.setdefault(dump_term(d), []).append(d)
    for term in terms:
        given = nbest_dirs if TERM_TABLE[term].reads == "nbest" else dumps.get(term)
        if not given and term not in online:
            raise ConfigError(f"kd_conf.{term}_weight > 0 needs {TERM_TABLE[term].missing_message()}, from stage 4")
    tokens_path = Path(token_dir) / "tokens.txt"
    tokenizer = Tokenizer(token_dir)
    trained = load_trained(teacher_dir) if teacher_dir else None
    teacher_tokens = Path(teacher_dir) / "tokens" / "tokens.txt" if trained is not None else None
    if teacher_tokens and (ours := tokens_sha256(tokens_path)) != (theirs := tokens_sha256(teacher_tokens)):
        raise SoftLabelError(f"{tokens_path}: token list differs from the teacher's ({teacher_tokens}): sha256 "
                             f"{ours[:16]}... against {theirs[:16]}...; teacher and student must share it")
    torch.manual_seed(config["seed"])  # the same config gives the same initial student
    student = build_model(model_part(config), len(tokenizer), input_size=load_cmvn(cmvn_path).shape[1] - 1)
    check_student(student, terms, kd)
    copied = init_from_teacher(student, trained.model, init) if init else []
    if copied:
        logging.info("initialized %d student tensors from %s", len(copied), teacher_dir)

    sources, used = {}, []
    for term in terms:
        if term not in online:
            dirs = list(nbest_dirs) if TERM_TABLE[term].reads == "nbest" else dumps[term]
            sources[term], used = TERM_TABLE[term].open(dirs, tokens_path, kd), used + dirs
    # a dump of another teacher, or of data changed since stage 4, is refused here, before training
    check_dumps([r for s in sources.values() for r in s.readers], teacher_dir, train_dirs + untrans_dirs)
    teacher = OnlineTeacher(trained, kd["online_type"], kd["temperature"],
                            mean_std(load_cmvn(cmvn_path))) if online else None
    wrap = (lambda ds: DistillDataset(ds, student, sources, kd["missing"])) if sources else None  # noqa: E731
    config = {**config, "kd_conf": {**kd, "teacher": str(teacher_dir) if teacher_dir else None,
                                    "teacher_data": [str(d) for d in used]}}
    parts = {t: TERM_TABLE[t].trainable(student, trained, kd) for t in terms}
    loss = DistillLoss(kd["alpha"], kd["temperature"], {t: kd[f"{t}_weight"] for t in terms},
                       teacher if "frame" in online else None, kd["nbest_tau"], kd["lattice_nodes"], kd=kd,
                       parts={t: p for t, p in parts.items() if p is not None}, teacher=teacher)
    return train(config, exp_dir, train_dirs + untrans_dirs, valid_dir, token_dir, cmvn_path, devices=devices,
                 num_nodes=num_nodes, accelerator=accelerator, model=student, wrap_train_set=wrap, loss_fn=loss,
                 extra_info={"teacher": str(teacher_dir) if teacher_dir else None, "alpha": kd["alpha"],
                             "kd_terms": terms, "initialized_from_teacher": len(copied),
                             **(extra_info or {})})
