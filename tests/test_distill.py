"""Stage 5: frame-level distillation (kdtool.kd.distill, kdtool.bin.distill) on the tiny corpus."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import run_entry
from kdtool.data.datadir import read_table, write_table
from kdtool.kd.distill import (DistillDataset, DistillLoss, OnlineTeacher, SoftLabelSet, distill,
                               init_from_teacher, load_student_config)
from kdtool.kd.dump import dump_job, merge_dump
from kdtool.kd.softlabels import SoftLabelError
from kdtool.features.cmvn import mean_std
from kdtool.models.asr import subsampled_length
from kdtool.errors import ConfigError
from kdtool.models.build import build_model
from kdtool.models.load import load_trained
from kdtool.train.dataset import SpeechDataset, collate

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENC = {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dump(teacher, data, out, type="frame_posteriors", topk=None, temperature=1.0):
    dump_job(teacher, data, out, type, topk, temperature)
    merge_dump(out, 1)
    return out


@pytest.fixture(scope="module")
def dumps(tiny_teacher, tiny_features, tmp_path_factory):
    root = tmp_path_factory.mktemp("dumps")
    d = tiny_features["feats"]
    return {"dense": dump(tiny_teacher, d, root / "dense"),
            "top4": dump(tiny_teacher, d, root / "top4", topk=4),
            "fb": dump(tiny_teacher, d, root / "fb", type="fb_posteriors", topk=4),
            "fb_dense": dump(tiny_teacher, d, root / "fb_dense", type="fb_posteriors"),
            "T2": dump(tiny_teacher, d, root / "T2", temperature=2.0)}


def student_config(tmp_path, **kd):
    cfg = {"model": "ctc", "encoder_conf": ENC, "max_epoch": 2, "batch_frames": 800, "keep_nbest_models": 1,
           "scheduler_conf": {"warmup_steps": 5}, "log_interval": 1, "kd_conf": kd}
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_student_config(path)


def batch_of(ds, utts=None):
    return ds.collate([ds[u] for u in (utts or ds.utts)])


def subset(src, dst, utts, text=True):
    """A copy of feature dir ``src`` with only ``utts`` (and no text file unless ``text``)."""
    dst.mkdir()
    for name in ("feats.scp", "utt2num_frames", "text") if text else ("feats.scp", "utt2num_frames"):
        table = read_table(src / name)
        write_table(dst / name, {u: table[u] for u in utts})
    return dst


def teacher_copy(tiny_teacher):
    """The teacher itself as the student (eval mode: no dropout, no SpecAugment)."""
    return load_trained(tiny_teacher).model.eval()


def test_student_equal_to_its_teacher_has_zero_kd_loss(tiny_teacher, tiny_features, dumps):
    t = load_trained(tiny_teacher)
    student = teacher_copy(tiny_teacher)
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    for name in ("dense", "top4"):
        soft = SoftLabelSet([dumps[name]], tiny_teacher / "tokens" / "tokens.txt", 1.0)
        ds = DistillDataset(base, student, {"frame": soft})
        loss, stats = DistillLoss(alpha=1.0, temperature=1.0)(student, batch_of(ds))
        # top-k: the student's mass outside the teacher's 4 tokens makes KL(renormalized || student) > 0
        assert stats["loss_kd"] == pytest.approx(0.0, abs=1e-4) if name == "dense" else stats["loss_kd"] > 0
    # a different student is farther from the teacher
    other = build_model({"model": "ctc", "encoder_conf": ENC}, len(t.tokenizer)).eval()
    soft = SoftLabelSet([dumps["dense"]], tiny_teacher / "tokens" / "tokens.txt", 1.0)
    _, stats = DistillLoss(1.0, 1.0)(other, batch_of(DistillDataset(base, other, {"frame": soft})))
    assert stats["loss_kd"] > 1.0


def test_loss_mixes_supervised_and_kd_and_untranscribed_utterances_give_kd_only(tiny_teacher, tiny_features,
                                                                                dumps, tmp_path):
    t = load_trained(tiny_teacher)
    student = build_model({"model": "ctc", "encoder_conf": ENC}, len(t.tokenizer)).eval()
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    soft = SoftLabelSet([dumps["dense"]], tiny_teacher / "tokens" / "tokens.txt", 1.0)
    ds = DistillDataset(base, student, {"frame": soft})
    batch = batch_of(ds)
    sup, _ = student(batch["feats"], batch["feats_lens"], batch["ys"], batch["ys_lens"])
    _, kd_only = DistillLoss(1.0, 1.0)(student, batch)
    loss, stats = DistillLoss(0.3, 1.0)(student, batch)
    assert loss.item() == pytest.approx(0.7 * sup.item() + 0.3 * kd_only["loss_kd"].item(), rel=1e-5)

    # the same utterances with two of them in an untranscribed set: those lose their supervised term only
    gone = base.utts[:2]
    keep = [u for u in base.utts if u not in gone]
    dirs = [subset(tiny_features["feats"], tmp_path / "trans", keep),
            subset(tiny_features["feats"], tmp_path / "untrans", gone, text=False)]
    mixed = SpeechDataset(dirs, t.tokenizer, tiny_features["cmvn"], require_text=False)
    mbatch = batch_of(DistillDataset(mixed, student, {"frame": soft}))
    assert mbatch["transcribed"].sum() == 4
    keep = [u for u in base.utts if u not in gone]
    sub = collate([base[u] for u in keep])
    sup4, _ = student(sub["feats"], sub["feats_lens"], sub["ys"], sub["ys_lens"])
    mloss, mstats = DistillLoss(0.3, 1.0)(student, mbatch)
    assert mstats["loss_kd"].item() == pytest.approx(kd_only["loss_kd"].item(), rel=1e-5)
    assert mloss.item() == pytest.approx(0.7 * sup4.item() * 4 / 6 + 0.3 * kd_only["loss_kd"].item(), rel=1e-5)


def test_online_teacher_equals_the_dump(tiny_teacher, tiny_features, dumps):
    t = load_trained(tiny_teacher)
    student = build_model({"model": "ctc", "encoder_conf": ENC}, len(t.tokenizer)).eval()
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    for name, type, T in (("T2", "frame_posteriors", 2.0), ("fb_dense", "fb_posteriors", 1.0)):
        soft = SoftLabelSet([dumps[name]], tiny_teacher / "tokens" / "tokens.txt", T)
        offline = DistillLoss(1.0, T)(student, batch_of(DistillDataset(base, student, {"frame": soft})))[1]["loss_kd"]
        teacher = OnlineTeacher(t, type, T, mean_std(t.cmvn))
        online = DistillLoss(1.0, T, None, teacher)(student, batch_of(DistillDataset(base, student, {"frame": soft})))[1]["loss_kd"]
        assert online.item() == pytest.approx(offline.item(), rel=1e-4)


def test_online_fb_teacher_skips_and_counts_an_utterance_too_short_for_its_transcript(tiny_teacher, tiny_features,
                                                                                     tmp_path, caplog):
    t = load_trained(tiny_teacher)
    student = build_model({"model": "ctc", "encoder_conf": ENC}, len(t.tokenizer)).eval()
    src = tiny_features["feats"]
    frames = read_table(src / "utt2num_frames")
    utts = sorted(frames)
    short = utts[0]
    data = subset(src, tmp_path / "long_text", utts)
    text = read_table(data / "text")
    text[short] = " ".join([text[short]] * (int(frames[short]) // 4 // len(text[short]) + 2))  # > its teacher frames
    write_table(data / "text", text)
    base = SpeechDataset(data, t.tokenizer, tiny_features["cmvn"])
    teacher = OnlineTeacher(t, "fb_posteriors", 1.0, mean_std(t.cmvn))
    batch = collate([base[u] for u in utts])
    with caplog.at_level("WARNING"):
        loss, stats = DistillLoss(1.0, 1.0, None, teacher)(student, batch)
        DistillLoss(1.0, 1.0, None, teacher)(student, batch)  # seen again: not counted twice
    assert torch.isfinite(loss) and teacher.skipped == {short}
    warnings = [r.getMessage() for r in caplog.records if "online teacher" in r.getMessage()]
    assert len(warnings) == 1 and short in warnings[0] and "(1 utterances skipped so far)" in warnings[0]
    # the others' frame term is what it is without that utterance (KL summed over utterances, / batch size)
    others = collate([base[u] for u in utts[1:]])
    rest = DistillLoss(1.0, 1.0, None, teacher)(student, others)[1]["loss_kd"]
    assert stats["loss_kd"].item() * len(utts) == pytest.approx(rest.item() * (len(utts) - 1), rel=1e-4)


@pytest.mark.parametrize("input_layer,factor", [("conv2d6", 6), ("conv2d8", 8)])
def test_soft_labels_are_pooled_to_a_coarser_student(tiny_teacher, tiny_features, dumps, input_layer, factor):
    t = load_trained(tiny_teacher)
    student = build_model({"model": "ctc", "encoder_conf": {**ENC, "input_layer": input_layer}}, len(t.tokenizer))
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    soft = SoftLabelSet([dumps["top4"]], tiny_teacher / "tokens" / "tokens.txt", 1.0)
    ds = DistillDataset(base, student, {"frame": soft})
    assert ds.subsampling == factor
    for utt in ds.utts:
        item = ds[utt]
        assert item["frame_ids"].shape[0] == subsampled_length(student, base.num_frames[utt])
        assert torch.allclose(item["frame_probs"].sum(-1), torch.ones(item["frame_ids"].shape[0]), atol=1e-5)
    loss, stats = DistillLoss(1.0, 1.0)(student.train(), batch_of(ds))
    loss.backward()
    assert torch.isfinite(loss) and stats["loss_kd"] > 0
    # the online teacher puts its posteriors on the student's frames the same way
    student.eval()
    soft = SoftLabelSet([dumps["dense"]], tiny_teacher / "tokens" / "tokens.txt", 1.0)
    dense = DistillDataset(base, student, {"frame": soft})
    offline = DistillLoss(1.0, 1.0)(student, batch_of(dense))[1]["loss_kd"]
    online = DistillLoss(1.0, 1.0, None, OnlineTeacher(t, "frame_posteriors", 1.0, mean_std(t.cmvn)))(
        student, batch_of(dense))[1]["loss_kd"]
    assert online.item() == pytest.approx(offline.item(), rel=1e-4)


def test_init_from_teacher_first_blocks_and_name_map(tiny_teacher):
    teacher = load_trained(tiny_teacher).model
    V = teacher.vocab_size
    student = build_model({"model": "nar", "encoder_conf": ENC, "decoder_conf": {"attention_heads": 2,
                                                                                  "linear_units": 32,
                                                                                  "num_blocks": 1}}, V)
    copied = init_from_teacher(student, teacher, {"first_n_blocks": 1})
    s, t = student.state_dict(), teacher.state_dict()
    assert "encoder.encoders.0.feed_forward.w_1.weight" in copied and "ctc.ctc_lo.weight" in copied
    assert not any(k.startswith("encoder.encoders.1.") or k.startswith("decoder.") for k in copied)
    for k in copied:
        assert torch.equal(s[k], t[k])
    small = build_model({"model": "ctc", "encoder_conf": {**ENC, "output_size": 16}}, V)
    with pytest.raises(ConfigError, match=r"does not fit teacher encoder.embed"):
        init_from_teacher(small, teacher, {"first_n_blocks": 1})
    with pytest.raises(ConfigError, match=r"first_n_blocks 3 must be in 1..1"):
        init_from_teacher(student, teacher, {"first_n_blocks": 3})
    with pytest.raises(ConfigError, match=r"no student parameter starts with 'encoder.nothing'"):
        init_from_teacher(student, teacher, {"name_map": {"encoder.nothing": "encoder.embed"}})
    assert init_from_teacher(student, teacher, {"name_map": {"ctc.": "ctc."}}) == ["ctc.ctc_lo.bias",
                                                                                 "ctc.ctc_lo.weight"]


def test_slice_width_starts_a_narrower_student_from_the_teachers_leading_channels():
    V = 12
    conf = {"model": "transducer", "encoder_conf": {**ENC, "output_size": 32, "attention_heads": 4, "num_blocks": 2},
            "decoder_conf": {"hidden_size": 16}, "joint_net_conf": {"joint_space_size": 16}}
    teacher = build_model(conf, V).eval()
    # the same architecture: the same model, so the same outputs
    twin = build_model(conf, V).eval()
    init_from_teacher(twin, teacher, {"slice_width": True})
    feats, lens = torch.randn(2, 40, 80), torch.tensor([40, 31])
    assert torch.allclose(twin.encode(feats, lens)[0], teacher.encode(feats, lens)[0])

    narrow = build_model({**conf, "encoder_conf": {**conf["encoder_conf"], "output_size": 16, "linear_units": 32,
                                                    "num_blocks": 1},
                          "decoder_conf": {"hidden_size": 8}, "joint_net_conf": {"joint_space_size": 8}}, V)
    copied = init_from_teacher(narrow, teacher, {"slice_width": True})
    s, t = narrow.state_dict(), teacher.state_dict()
    assert set(copied) == set(s) and not any(k.startswith("encoder.encoders.1.") for k in copied)
    w = "encoder.encoders.0.feed_forward.w_1.weight"  # plain: the leading rows and columns
    assert torch.equal(s[w], t[w][:32, :16])
    lstm = next(k for k in s if k.endswith("weight_hh_l0"))  # gate by gate: [4 x 16, 16] -> [4 x 8, 8]
    for gate in range(4):
        assert torch.equal(s[lstm][gate * 8:(gate + 1) * 8], t[lstm][gate * 16:gate * 16 + 8, :8])
    q = "encoder.encoders.0.self_attn.linear_q.weight"  # head by head: 4 heads of 8 -> 4 heads of 4
    out = "encoder.encoders.0.self_attn.linear_out.weight"
    for head in range(4):
        assert torch.equal(s[q][head * 4:(head + 1) * 4], t[q][head * 8:head * 8 + 4, :16])
        assert torch.equal(s[out][:, head * 4:(head + 1) * 4], t[out][:16, head * 8:head * 8 + 4])

    wide = build_model({**conf, "encoder_conf": {**conf["encoder_conf"], "output_size": 64}}, V)
    with pytest.raises(ConfigError, match=r"slice_width: student encoder\.embed\.\S+ \[.*\] is not a part of"):
        init_from_teacher(wide, teacher, {"slice_width": True})
    with pytest.raises(ConfigError, match=r"leave out \['first_n_blocks'\]"):
        init_from_teacher(narrow, teacher, {"slice_width": True, "first_n_blocks": 1})
    with pytest.raises(ConfigError, match=r"slice_width: the teacher has no parameter of the student's names"):
        init_from_teacher(narrow, torch.nn.Linear(4, 4), {"slice_width": True})


def cli(*args):
    return subprocess.run([sys.executable, "-m", "kdtool.bin.distill", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=300)


def entry(*args):
    """The same command line in this process: what its errors and warnings say, without a torch import each."""
    return run_entry("distill", *args)


def cli_args(f, teacher, cfg, exp, *soft):
    return ["--config", cfg, "--train_data", f["feats"], "--valid_data", f["feats"], "--token_list",
            teacher / "tokens", "--cmvn", f["cmvn"], "--exp_dir", exp, "--teacher_dir", teacher,
            "--accelerator", "cpu", "--devices", "1", *(["--soft_labels", *soft] if soft else [])]


def write_cfg(path, **kd):
    cfg = {"model": "ctc", "encoder_conf": ENC, "max_epoch": 2, "batch_frames": 800, "keep_nbest_models": 1,
           "scheduler_conf": {"warmup_steps": 5}, "log_interval": 1, "kd_conf": kd}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_trains_a_student_that_decodes(tiny_teacher, tiny_features, dumps, tmp_path):
    cfg = write_cfg(tmp_path / "s.yaml", alpha=0.5)
    exp = tmp_path / "student"
    p = cli(*cli_args(tiny_features, tiny_teacher, cfg, exp, dumps["fb"]))
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((exp / "model_info.json").read_text())
    assert info["kind"] == "ctc" and info["alpha"] == 0.5 and info["epochs"] == 2
    saved = yaml.safe_load((exp / "config.yaml").read_text())
    assert saved["kd_conf"]["teacher_data"] == [str(dumps["fb"])] and saved["kd_conf"]["alpha"] == 0.5
    metrics = (next((exp / "csv").glob("version_*")) / "metrics.csv").read_text()
    assert "train/loss_kd" in metrics and "train/loss_sup" in metrics and "valid/loss_ctc" in metrics
    out = tmp_path / "decode"
    (tmp_path / "decode.yaml").write_text("method: ctc_greedy\n")
    d = subprocess.run([sys.executable, "-m", "kdtool.bin.decode", "--model_dir", exp, "--data",
                        tiny_features["feats"], "--config", tmp_path / "decode.yaml", "--out_dir", out],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert d.returncode == 0, d.stderr[-2000:]
    assert len(read_table(out / "text", allow_empty=True)) == 6


def test_same_config_trains_the_same_student_with_or_without_online_teacher(tiny_teacher, tiny_features,
                                                                            dumps, tmp_path):
    f = tiny_features
    w, losses = {}, {}
    for online in (False, True):
        cfg = load_student_config(write_cfg(tmp_path / f"{online}.yaml", alpha=0.7, temperature=2.0,
                                            online=online))
        exp = tmp_path / f"exp_{online}"
        distill(cfg, exp, f["feats"], f["feats"], tiny_teacher / "tokens", f["cmvn"],
                soft_label_dirs=[] if online else [dumps["T2"]], teacher_dir=tiny_teacher,
                accelerator="cpu", devices=1)
        w[online] = torch.load(exp / "model.pth", weights_only=True)
        rows = (next((exp / "csv").glob("version_*")) / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        losses[online] = [float(r.split(",")[header.index("train/loss_kd")]) for r in rows[1:]
                          if r.split(",")[header.index("train/loss_kd")]]
    # the same steps see the same targets (up to float rounding, which Adam's normalized steps
    # can magnify for near-zero gradients)
    assert len(losses[False]) == 4 and losses[True] == pytest.approx(losses[False], rel=1e-4)
    for k in w[False]:
        assert torch.allclose(w[False][k], w[True][k], atol=5e-3), k


def one_line_error(p, pattern):
    import re
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert re.search(pattern, p.stderr), p.stderr[-3000:]


def test_error_paths_fail_before_training(tiny_teacher, tiny_features, dumps, tmp_path):
    f, cfg = tiny_features, write_cfg(tmp_path / "s.yaml", alpha=0.5)
    # soft labels made with another token list
    other_tokens = tmp_path / "tokens"
    shutil.copytree(tiny_teacher / "tokens", other_tokens)
    with open(other_tokens / "tokens.txt", "a") as fh:
        fh.write("EXTRA\n")
    args = cli_args(f, tiny_teacher, cfg, tmp_path / "e1", dumps["top4"])
    args[args.index("--token_list") + 1] = other_tokens
    # both sha256 values (prefixes), the student's first
    ours, theirs = (hashlib.sha256((d / "tokens.txt").read_bytes()).hexdigest()[:16] for d in (other_tokens, tiny_teacher / "tokens"))
    one_line_error(entry(*args), rf"token list differs from the teacher's .*sha256 {ours}\.\.\. against {theirs}\.\.\.")
    # utterances missing from the dump: an error naming the count, or skipped and counted
    part = tmp_path / "part"
    shutil.copytree(dumps["top4"], part)
    scp = read_table(part / "soft_labels.scp")
    write_table(part / "soft_labels.scp", dict(list(scp.items())[1:]))
    missing = sorted(scp)[0]
    one_line_error(entry(*cli_args(f, tiny_teacher, cfg, tmp_path / "e2", part)),
                   rf"1 of 6 training utterances have no frame-level teacher data in .*part \(first: {missing}")
    skip = write_cfg(tmp_path / "skip.yaml", alpha=0.5, missing="skip")
    p = entry(*cli_args(f, tiny_teacher, skip, tmp_path / "ok", part))
    assert p.returncode == 0 and "1 training utterances have no frame-level teacher data" in p.stderr
    # frame posteriors dumped at another temperature
    one_line_error(entry(*cli_args(f, tiny_teacher, cfg, tmp_path / "e3", dumps["T2"])),
                   r"dumped at temperature 2.0, but kd_conf.temperature is 1.0")
    # KD without soft labels or an online teacher; a teacher dir without weights
    one_line_error(entry(*cli_args(f, tiny_teacher, cfg, tmp_path / "e4")), r"kd_conf.frame_weight > 0 needs frame_posteriors or fb_posteriors dumps")
    broken = tmp_path / "broken_teacher"
    shutil.copytree(tiny_teacher, broken, ignore=shutil.ignore_patterns("model.pth", "checkpoints"))
    online = write_cfg(tmp_path / "online.yaml", alpha=0.5, online=True)
    one_line_error(entry(*cli_args(f, broken, online, tmp_path / "e5")), r"broken_teacher: not a trained model dir: "
                                                                       r"model.pth is missing")
    # unknown kd_conf key, a student without a CTC head
    one_line_error(entry(*cli_args(f, tiny_teacher, write_cfg(tmp_path / "k.yaml", alpah=0.5), tmp_path / "e6",
                                 dumps["top4"])), r"kd_conf: unknown key\(s\) \['alpah'\]")
    rnnt = tmp_path / "rnnt.yaml"
    rnnt.write_text(yaml.safe_dump({"model": "transducer", "encoder_conf": ENC, "model_conf": {"ctc_weight": 0.0},
                                    "decoder_conf": {"hidden_size": 16}, "joint_net_conf": {"joint_space_size": 16},
                                    "kd_conf": {"alpha": 0.5}}))
    one_line_error(entry(*cli_args(f, tiny_teacher, rnnt, tmp_path / "e7", dumps["top4"])),
                   r"this transducer student has none \(set model_conf.ctc_weight > 0\)")
    for e in ("e1", "e2", "e3", "e4", "e5", "e6", "e7"):
        assert not (tmp_path / e / "checkpoints").exists()


def test_fb_posteriors_are_refused_at_a_temperature_other_than_1(tiny_teacher, tiny_features, dumps, tmp_path):
    from kdtool.kd.distill import resolve_kd_conf
    tokens = tiny_teacher / "tokens" / "tokens.txt"
    assert len(SoftLabelSet([dumps["fb"]], tokens, 1.0).readers) == 1  # T = 1: used as they are
    with pytest.raises(SoftLabelError, match=r"fb: fb_posteriors are CTC forward-backward occupancies, made at "
                                             r"temperature 1.0 \(untempered\), but kd_conf.temperature is 2.0; "
                                             r"set kd_conf.temperature: 1, or use frame_posteriors dumped at T=2.0"):
        SoftLabelSet([dumps["fb"]], tokens, 2.0)
    # through the command line: one line, before training
    cfg = write_cfg(tmp_path / "t2.yaml", alpha=0.5, temperature=2.0)
    one_line_error(entry(*cli_args(tiny_features, tiny_teacher, cfg, tmp_path / "e", dumps["fb"])),
                   r"fb_posteriors are CTC forward-backward occupancies, .* but kd_conf.temperature is 2.0")
    assert not (tmp_path / "e" / "checkpoints").exists()
    # the online teacher's occupancies: refused in the config
    with pytest.raises(ConfigError, match=r"s.yaml: kd_conf: online_type fb_posteriors gives untempered "
                                          r"forward-backward occupancies, but temperature is 2.0; set temperature: 1"):
        resolve_kd_conf({"online": True, "online_type": "fb_posteriors", "temperature": 2.0}, "s.yaml")
    assert resolve_kd_conf({"online": True, "online_type": "frame_posteriors", "temperature": 2.0})


def test_corrupt_ark_names_the_ark_and_utterance(tiny_teacher, tiny_features, dumps, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(dumps["top4"], bad)
    scp = read_table(bad / "soft_labels.scp")
    write_table(bad / "soft_labels.scp", {u: v.replace(str(dumps["top4"]), str(bad)) for u, v in scp.items()})
    ark = bad / "soft_labels.1.ark"
    ark.write_bytes(ark.read_bytes()[: ark.stat().st_size // 2])
    t = load_trained(tiny_teacher)
    student = build_model({"model": "ctc", "encoder_conf": ENC}, len(t.tokenizer))
    ds = DistillDataset(SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"]),
                        student, {"frame": SoftLabelSet([bad], tiny_teacher / "tokens" / "tokens.txt", 1.0)})
    last = max(scp, key=lambda u: int(scp[u].rsplit(":", 1)[1]))
    with pytest.raises(SoftLabelError, match=rf"soft_labels.1.ark: utterance {last}: unreadable, truncated"):
        ds[last]


# --------------------------------------------------------------------------- token- and sequence-level KD
DEC = {"attention_heads": 2, "linear_units": 32, "num_blocks": 1}


def train_tiny(kind, tiny_features, exp, **extra):
    from kdtool.train.config import resolve_config
    from kdtool.train.trainer import train
    f = tiny_features
    cfg = resolve_config({"model": kind, "encoder_conf": ENC, "max_epoch": 3, "batch_frames": 800,
                          "keep_nbest_models": 1, "scheduler_conf": {"warmup_steps": 5}, **extra})
    train(cfg, exp, f["feats"], f["feats"], f["tokens"], f["cmvn"], accelerator="cpu", devices=1)
    return exp


@pytest.fixture(scope="module")
def ar_teacher(tiny_features, tmp_path_factory):
    return train_tiny("ar", tiny_features, tmp_path_factory.mktemp("ar") / "ar_teacher", decoder_conf=DEC)


@pytest.fixture(scope="module")
def ar_dumps(ar_teacher, tiny_features, tmp_path_factory):
    from kdtool.kd.nbest import dump_nbest_job, merge_nbest
    root = tmp_path_factory.mktemp("ar_dumps")
    nbest = root / "nbest"
    dump_nbest_job(ar_teacher, tiny_features["feats"], nbest, nbest=3, beam_size=4, job=1, nj=2)
    dump_nbest_job(ar_teacher, tiny_features["feats"], nbest, nbest=3, beam_size=4, job=2, nj=2)
    merge_nbest(nbest, 2)
    return {"token": dump(ar_teacher, tiny_features["feats"], root / "token", type="token_posteriors"),
            "token_top4": dump(ar_teacher, tiny_features["feats"], root / "token4", type="token_posteriors", topk=4),
            "nbest": nbest}


def test_token_posteriors_are_the_teacher_forced_decoder_distribution(ar_teacher, tiny_features, ar_dumps):
    from kdtool.kd.softlabels import SoftLabelReader
    t = load_trained(ar_teacher)
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    reader = SoftLabelReader(ar_dumps["token"])
    with torch.no_grad():
        for utt in base.utts:
            item = base[utt]
            enc, enc_lens = t.model.encode(item["feats"][None], torch.tensor([item["feats"].shape[0]]))
            logits, _ = t.model.decoder_logits(enc, enc_lens, item["ys"][None], torch.tensor([len(item["ys"])]))
            assert torch.allclose(reader.dense(utt), logits[0].softmax(-1), atol=1e-5)  # tokens + <eos> rows


def test_nbest_lists_round_trip_and_match_the_beam_search(ar_teacher, tiny_features, ar_dumps):
    from kdtool.decode.ar import ARBeamSearch
    from kdtool.kd.nbest import NBestReader
    t = load_trained(ar_teacher)
    reader = NBestReader(ar_dumps["nbest"], ar_teacher / "tokens" / "tokens.txt")
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    search = ARBeamSearch(t.model, beam_size=4, ctc_weight=0.3)
    lines = (ar_dumps["nbest"] / "nbest.jsonl").read_text().splitlines()
    assert [json.loads(ln)["utt"] for ln in lines] == base.utts  # sorted, every utterance once
    with torch.no_grad():
        for utt in base.utts:
            item = base[utt]
            enc, enc_lens = t.model.encode(item["feats"][None], torch.tensor([item["feats"].shape[0]]))
            expected = [(h, s) for h, s in search.nbest(enc, enc_lens, 3)[0] if h]
            got = reader[utt] if utt in reader else []
            assert [h for h, _ in got] == [h for h, _ in expected]
            assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-4)
            assert all(s1 >= s2 for (_, s1), (_, s2) in zip(got, got[1:]))


def nar_student(V):
    return build_model({"model": "nar", "encoder_conf": ENC, "decoder_conf": DEC}, V)


def test_token_level_kl_only_touches_masked_positions(ar_teacher, tiny_features, ar_dumps):
    import numpy as np
    t = load_trained(ar_teacher)
    student = nar_student(len(t.tokenizer)).eval()
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    soft = SoftLabelSet([ar_dumps["token"]], ar_teacher / "tokens" / "tokens.txt", 1.0)
    batch = batch_of(DistillDataset(base, student, {"token": soft}))
    loss_fn = DistillLoss(1.0, 1.0, {"token": 1.0})

    def token_kd(b):
        np.random.seed(3)  # Mask-CTC picks its masks with numpy
        return loss_fn(student, b)[1]["loss_kd_token"].item()
    np.random.seed(3)
    _, ys_out = student.decoder_logits(*student.encode(batch["feats"], batch["feats_lens"]),
                                       batch["ys"], batch["ys_lens"])
    masked = ys_out != -1
    assert masked.any() and (~masked & (batch["ys"] != -1)).any()
    before = token_kd(batch)
    assert before > 0
    # another teacher distribution where the student did not mask: the loss stays
    changed = dict(batch, token_probs=batch["token_probs"].clone())
    changed["token_probs"][:, :masked.shape[1]][~masked] = changed["token_probs"][:, :masked.shape[1]][~masked].roll(1, -1)
    assert token_kd(changed) == pytest.approx(before, rel=1e-6)
    # ... and where it did, the loss moves
    one_hot = torch.zeros_like(changed["token_probs"][:, :masked.shape[1]][masked])
    one_hot[:, 0] = 1.0  # all the mass on the teacher's best token
    changed["token_probs"][:, :masked.shape[1]][masked] = one_hot
    assert token_kd(changed) != pytest.approx(before, rel=1e-2)


def test_token_level_kl_of_an_ar_student_equal_to_its_teacher_is_zero(ar_teacher, tiny_features, ar_dumps):
    t = load_trained(ar_teacher)
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    soft = SoftLabelSet([ar_dumps["token"]], ar_teacher / "tokens" / "tokens.txt", 1.0)
    batch = batch_of(DistillDataset(base, t.model, {"token": soft}))
    assert DistillLoss(1.0, 1.0, {"token": 1.0})(t.model, batch)[1]["loss_kd_token"].item() == \
        pytest.approx(0.0, abs=1e-4)


def test_sequence_level_loss_on_a_one_hypothesis_nbest_is_the_supervised_loss_on_it(ar_teacher, tiny_features,
                                                                                     tmp_path):
    from kdtool.kd.nbest import FORMAT_VERSION, NBestSet
    from kdtool.kd.softlabels import tokens_sha256
    t = load_trained(ar_teacher)
    student = build_model({"model": "ar", "encoder_conf": ENC, "decoder_conf": DEC}, len(t.tokenizer)).eval()
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    hyps = {u: t.tokenizer.text2ids(text) for u, text in
            zip(base.utts, ["A DOG", "THE FOX", "SMOKE", "TIME FLIES", "GOLD IS", "A LITTLE THING"])}
    nb = tmp_path / "nb"
    nb.mkdir()
    (nb / "nbest.json").write_text(json.dumps({"tokens_sha256": tokens_sha256(ar_teacher / "tokens" / "tokens.txt"),
                                               "vocab_size": len(t.tokenizer), "format_version": FORMAT_VERSION}))
    (nb / "nbest.jsonl").write_text("".join(json.dumps({"utt": u, "hyps": [{"tokens": h, "score": -1.0}]}) + "\n"
                                            for u, h in hyps.items()))
    batch = batch_of(DistillDataset(base, student, {"seq": NBestSet([nb], ar_teacher / "tokens" / "tokens.txt")}))
    seq = DistillLoss(1.0, 1.0, {"seq": 1.0})(student, batch)[1]["loss_kd_seq"]
    ys = pad_sequence_ids([hyps[u] for u in batch["utts"]])
    expected, _ = student(batch["feats"], batch["feats_lens"], ys, torch.tensor([len(hyps[u]) for u in batch["utts"]]))
    assert seq.item() == pytest.approx(expected.item(), rel=1e-5)


def pad_sequence_ids(seqs):
    return torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in seqs], batch_first=True, padding_value=-1)


def test_nbest_weights_follow_the_scores():
    from kdtool.kd.nbest import nbest_weights
    w = nbest_weights([-1.0, -2.0, -4.0])
    assert w.sum().item() == pytest.approx(1.0) and w[0] > w[1] > w[2]
    assert nbest_weights([-1.0, -2.0], tau=100.0)[0].item() == pytest.approx(0.5, abs=0.01)


def write_nbest(path, teacher, lines, vocab=None):
    from kdtool.kd.nbest import FORMAT_VERSION
    from kdtool.kd.softlabels import tokens_sha256
    path.mkdir()
    V = vocab or len((teacher / "tokens" / "tokens.txt").read_text().splitlines())
    (path / "nbest.json").write_text(json.dumps({"tokens_sha256": tokens_sha256(teacher / "tokens" / "tokens.txt"),
                                                 "vocab_size": V, "format_version": FORMAT_VERSION}))
    (path / "nbest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_bad_nbest_and_token_kd_errors_come_before_training(ar_teacher, tiny_features, ar_dumps, tmp_path):
    f = tiny_features
    utts = sorted(read_table(f["feats"] / "feats.scp"))
    seq_cfg = write_cfg(tmp_path / "seq.yaml", alpha=0.5, frame_weight=0.0, seq_weight=1.0)

    def run(cfg, exp, nbest=None, soft=()):
        args = cli_args(f, ar_teacher, cfg, tmp_path / exp, *soft)
        return entry(*args, *(["--nbest", nbest] if nbest else []))
    one_line_error(run(seq_cfg, "e1", write_nbest(tmp_path / "n1", ar_teacher, [
        {"utt": u, "hyps": [{"tokens": [3, 4], "score": -1.0}]} for u in utts[1:]])),
        rf"1 of 6 training utterances have no seq-level teacher data in .*n1 \(first: {utts[0]}")
    one_line_error(run(seq_cfg, "e2", write_nbest(tmp_path / "n2", ar_teacher, [
        {"utt": u, "hyps": [{"tokens": [3, 4], "score": -1.0}, {"tokens": [], "score": -2.0}]} for u in utts])),
        rf"n2/nbest.jsonl: utterance {utts[0]}: hypothesis 2 is empty")
    V = len((ar_teacher / "tokens" / "tokens.txt").read_text().splitlines())
    one_line_error(run(seq_cfg, "e3", write_nbest(tmp_path / "n3", ar_teacher, [
        {"utt": u, "hyps": [{"tokens": [3, V + 5], "score": -1.0}]} for u in utts])),
        rf"utterance {utts[0]}: hypothesis 1 has token id {V + 5}, not a token of the {V}-entry list")
    one_line_error(run(seq_cfg, "e4"), r"kd_conf.seq_weight > 0 needs N-best lists \(--nbest\)")
    token_cfg = write_cfg(tmp_path / "tok.yaml", alpha=0.5, frame_weight=0.0, token_weight=1.0)  # a ctc student
    one_line_error(run(token_cfg, "e5", soft=[ar_dumps["token"]]),
                   r"token-level KD trains a decoder \(an ar or nar student's\); this ctc student has none")
    for e in ("e1", "e2", "e3", "e4", "e5"):
        assert not (tmp_path / e / "checkpoints").exists()


def test_a_nar_student_trains_with_every_term_through_the_cli(ar_teacher, tiny_features, ar_dumps, tmp_path):
    cfg = tmp_path / "nar.yaml"
    cfg.write_text(yaml.safe_dump({"model": "nar", "encoder_conf": ENC, "decoder_conf": DEC, "max_epoch": 1,
                                   "batch_frames": 800, "keep_nbest_models": 1, "log_interval": 1,
                                   "kd_conf": {"alpha": 0.5, "frame_weight": 1.0, "token_weight": 1.0,
                                               "seq_weight": 1.0}}))
    frame = dump(ar_teacher, tiny_features["feats"], tmp_path / "frame", topk=4)
    exp = tmp_path / "nar"
    p = entry(*cli_args(tiny_features, ar_teacher, cfg, exp, frame, ar_dumps["token_top4"]), "--nbest",
              ar_dumps["nbest"])
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((exp / "model_info.json").read_text())
    assert info["kd_terms"] == ["frame", "token", "seq"]
    metrics = (next((exp / "csv").glob("version_*")) / "metrics.csv").read_text()
    for name in ("loss_kd_frame", "loss_kd_token", "loss_kd_seq", "loss_mlm"):
        assert f"train/{name}" in metrics


def test_a_nar_student_learns_from_a_batch_whose_longest_utterance_is_untranscribed(ar_teacher, tiny_features,
                                                                                   tmp_path):
    # the masked LM then sees the transcribed rows' encoder output, padded to the untranscribed one's
    # length: espnet's MLMDecoder does not pad its memory mask, so that padding has to go
    t = load_trained(ar_teacher)
    student = build_model({"model": "nar", "encoder_conf": ENC, "decoder_conf": DEC}, len(t.tokenizer)).eval()
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    longest = max(base.utts, key=lambda u: base.num_frames[u])
    keep = [u for u in base.utts if u != longest]
    dirs = [subset(tiny_features["feats"], tmp_path / "trans", keep),
            subset(tiny_features["feats"], tmp_path / "untrans", [longest], text=False)]
    soft = SoftLabelSet([dump(ar_teacher, tiny_features["feats"], tmp_path / "frame", topk=4)],
                        ar_teacher / "tokens" / "tokens.txt", 1.0)
    mixed = DistillDataset(SpeechDataset(dirs, t.tokenizer, tiny_features["cmvn"], require_text=False), student,
                           {"frame": soft})
    batch = batch_of(mixed)
    assert not batch["transcribed"][batch["utts"].index(longest)]
    enc, enc_lens = student.encode(batch["feats"], batch["feats_lens"])
    assert enc_lens[batch["transcribed"]].max() < enc.shape[1]  # the case: the subset is shorter than the batch
    np.random.seed(0)  # espnet's mask_uniform masks at random, with numpy
    loss, stats = DistillLoss(0.3, 1.0)(student, batch)
    np.random.seed(0)
    idx = batch["transcribed"].nonzero().squeeze(1)
    ys_lens = batch["ys_lens"][idx]
    alone = student.supervised_loss(enc[idx, :int(enc_lens[idx].max())], enc_lens[idx],
                                    batch["ys"][idx][:, :int(ys_lens.max())], ys_lens)[0]
    assert torch.isfinite(loss) and stats["loss_sup"].item() == pytest.approx(alone.item(), rel=1e-5)
    loss.backward()
    assert student.decoder.embed[0].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- transducer lattice KD
RNNT = {"decoder_conf": {"hidden_size": 16}, "joint_net_conf": {"joint_space_size": 16}}


@pytest.fixture(scope="module")
def rnnt_teacher(tiny_features, tmp_path_factory):
    return train_tiny("transducer", tiny_features, tmp_path_factory.mktemp("rnnt") / "rnnt_teacher", **RNNT)


def test_lattice_kd_of_a_transducer_against_itself_is_zero(rnnt_teacher, tiny_features, tmp_path):
    lattice = dump(rnnt_teacher, tiny_features["feats"], tmp_path / "lat", type="rnnt_lattice")
    t = load_trained(rnnt_teacher)
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    soft = SoftLabelSet([lattice], rnnt_teacher / "tokens" / "tokens.txt", 1.0)
    batch = batch_of(DistillDataset(base, t.model, {"lattice": soft}))
    assert all(lat.shape[1:] == (len(base[u]["ys"]) + 1, 3) for u, lat in zip(batch["utts"], batch["lattice"]))
    same = DistillLoss(1.0, 1.0, {"lattice": 1.0})(t.model, batch)[1]["loss_kd_lattice"]
    assert same.item() == pytest.approx(0.0, abs=1e-4)
    other = build_model({"model": "transducer", "encoder_conf": ENC, **RNNT}, len(t.tokenizer)).eval()
    assert DistillLoss(1.0, 1.0, {"lattice": 1.0})(other, batch)[1]["loss_kd_lattice"] > 0.1
    # weighted by the teacher's node occupancy (each weight <= 1, T + U in all): 0 again, and below all nodes'
    occupancy = DistillLoss(1.0, 1.0, {"lattice": 1.0}, lattice_nodes="occupancy")
    assert occupancy(t.model, batch)[1]["loss_kd_lattice"].item() == pytest.approx(0.0, abs=1e-4)
    all_nodes = DistillLoss(1.0, 1.0, {"lattice": 1.0})(other, batch)[1]["loss_kd_lattice"]
    assert 0 < occupancy(other, batch)[1]["loss_kd_lattice"] < all_nodes


def test_the_rnnt_loss_and_the_lattice_term_share_one_pass_of_the_joint_network(rnnt_teacher, tiny_features, tmp_path):
    lattice = dump(rnnt_teacher, tiny_features["feats"], tmp_path / "lat", type="rnnt_lattice")
    t = load_trained(rnnt_teacher)
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    batch = batch_of(DistillDataset(base, t.model, {"lattice": SoftLabelSet([lattice], rnnt_teacher / "tokens" /
                                                                            "tokens.txt", 1.0)}))
    torch.manual_seed(1)
    student = build_model({"model": "transducer", "encoder_conf": ENC, **RNNT}, len(t.tokenizer)).eval()
    calls = []
    student.joint_network.register_forward_hook(lambda *_: calls.append(1))
    loss, stats = DistillLoss(0.5, 1.0, {"lattice": 1.0})(student, batch)
    assert len(calls) == 1
    # the same as each term on its own joint pass
    sup = student(batch["feats"], batch["feats_lens"], batch["ys"], batch["ys_lens"])[0]
    lat = DistillLoss(1.0, 1.0, {"lattice": 1.0})(student, batch)[1]["loss_kd_lattice"]
    assert len(calls) == 3 and loss.item() == pytest.approx(0.5 * sup.item() + 0.5 * lat.item(), rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.joint_network.parameters())


def test_lattice_dump_with_other_transcripts_is_caught(rnnt_teacher, tiny_features, tmp_path):
    lattice = dump(rnnt_teacher, tiny_features["feats"], tmp_path / "lat", type="rnnt_lattice")
    changed = tmp_path / "feats"
    shutil.copytree(tiny_features["feats"], changed)
    text = read_table(changed / "text")
    first = sorted(text)[0]
    write_table(changed / "text", {**text, first: text[first] + " AND MORE"})
    t = load_trained(rnnt_teacher)
    ds = DistillDataset(SpeechDataset(changed, t.tokenizer, tiny_features["cmvn"]), t.model,
                        {"lattice": SoftLabelSet([lattice], rnnt_teacher / "tokens" / "tokens.txt", 1.0)})
    with pytest.raises(SoftLabelError, match=rf"lat: utterance {first}: .*transcript"):
        ds[first]


def test_nbest_larger_than_the_beam_is_an_error(ar_teacher, tiny_features, tmp_path):
    from kdtool.kd.nbest import dump_nbest_job
    with pytest.raises(ValueError, match=r"--nbest 5 must be in 1..beam_size \(4\)"):
        dump_nbest_job(ar_teacher, tiny_features["feats"], tmp_path / "nb", nbest=5, beam_size=4)


def test_lattice_nodes_is_all_or_occupancy():
    from kdtool.kd.distill import resolve_kd_conf
    assert resolve_kd_conf({})["lattice_nodes"] == "all"
    assert resolve_kd_conf({"lattice_nodes": "occupancy"}, "s.yaml")["lattice_nodes"] == "occupancy"
    with pytest.raises(ConfigError, match=r"s.yaml: kd_conf: lattice_nodes must be all or occupancy, not 'best'"):
        resolve_kd_conf({"lattice_nodes": "best"}, "s.yaml")
