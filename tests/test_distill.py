"""Stage 5: frame-level distillation (kdtool.kd.distill, kdtool.bin.distill) on the tiny corpus."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from kdtool.data.datadir import read_table, write_table
from kdtool.kd.distill import (DistillDataset, DistillLoss, OnlineTeacher, SoftLabelSet, distill,
                               init_from_teacher, load_student_config)
from kdtool.kd.dump import dump_job, merge_dump
from kdtool.kd.softlabels import SoftLabelError
from kdtool.features.cmvn import mean_std
from kdtool.models.asr import subsampled_length
from kdtool.models.build import ConfigError, build_model
from kdtool.models.load import load_trained
from kdtool.train.dataset import SpeechDataset, collate

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENC = {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
        ds = DistillDataset(base, soft, student)
        loss, stats = DistillLoss(alpha=1.0, temperature=1.0)(student, batch_of(ds))
        # top-k: the student's mass outside the teacher's 4 tokens makes KL(renormalized || student) > 0
        assert stats["loss_kd"] == pytest.approx(0.0, abs=1e-4) if name == "dense" else stats["loss_kd"] > 0
    # a different student is farther from the teacher
    other = build_model({"model": "ctc", "encoder_conf": ENC}, len(t.tokenizer)).eval()
    soft = SoftLabelSet([dumps["dense"]], tiny_teacher / "tokens" / "tokens.txt", 1.0)
    _, stats = DistillLoss(1.0, 1.0)(other, batch_of(DistillDataset(base, soft, other)))
    assert stats["loss_kd"] > 1.0


def test_loss_mixes_supervised_and_kd_and_untranscribed_utterances_give_kd_only(tiny_teacher, tiny_features,
                                                                                dumps, tmp_path):
    t = load_trained(tiny_teacher)
    student = build_model({"model": "ctc", "encoder_conf": ENC}, len(t.tokenizer)).eval()
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    soft = SoftLabelSet([dumps["dense"]], tiny_teacher / "tokens" / "tokens.txt", 1.0)
    ds = DistillDataset(base, soft, student)
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
    mbatch = batch_of(DistillDataset(mixed, soft, student))
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
        offline = DistillLoss(1.0, T)(student, batch_of(DistillDataset(base, soft, student)))[1]["loss_kd"]
        teacher = OnlineTeacher(t, type, T, mean_std(t.cmvn))
        online = DistillLoss(1.0, T, teacher)(student, batch_of(DistillDataset(base, soft, student)))[1]["loss_kd"]
        assert online.item() == pytest.approx(offline.item(), rel=1e-4)


@pytest.mark.parametrize("input_layer,factor", [("conv2d6", 6), ("conv2d8", 8)])
def test_soft_labels_are_pooled_to_a_coarser_student(tiny_teacher, tiny_features, dumps, input_layer, factor):
    t = load_trained(tiny_teacher)
    student = build_model({"model": "ctc", "encoder_conf": {**ENC, "input_layer": input_layer}}, len(t.tokenizer))
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    soft = SoftLabelSet([dumps["top4"]], tiny_teacher / "tokens" / "tokens.txt", 1.0)
    ds = DistillDataset(base, soft, student)
    assert ds.subsampling == factor
    for utt in ds.utts:
        item = ds[utt]
        assert item["soft_ids"].shape[0] == subsampled_length(student, base.num_frames[utt])
        assert torch.allclose(item["soft_probs"].sum(-1), torch.ones(item["soft_ids"].shape[0]), atol=1e-5)
    loss, stats = DistillLoss(1.0, 1.0)(student.train(), batch_of(ds))
    loss.backward()
    assert torch.isfinite(loss) and stats["loss_kd"] > 0


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


def cli(*args):
    return subprocess.run([sys.executable, "-m", "kdtool.bin.distill", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=300)


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
    assert saved["kd_conf"]["soft_labels"] == [str(dumps["fb"])] and saved["kd_conf"]["alpha"] == 0.5
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
    one_line_error(cli(*args), r"token list differs from the teacher's")
    # utterances missing from the dump: an error naming the count, or skipped and counted
    part = tmp_path / "part"
    shutil.copytree(dumps["top4"], part)
    scp = read_table(part / "soft_labels.scp")
    write_table(part / "soft_labels.scp", dict(list(scp.items())[1:]))
    missing = sorted(scp)[0]
    one_line_error(cli(*cli_args(f, tiny_teacher, cfg, tmp_path / "e2", part)),
                   rf"1 of 6 training utterances have no soft labels in .*part \(first: {missing}")
    skip = write_cfg(tmp_path / "skip.yaml", alpha=0.5, missing="skip")
    p = cli(*cli_args(f, tiny_teacher, skip, tmp_path / "ok", part))
    assert p.returncode == 0 and "1 training utterances have no soft labels: trained without KD" in p.stderr
    # frame posteriors dumped at another temperature
    one_line_error(cli(*cli_args(f, tiny_teacher, cfg, tmp_path / "e3", dumps["T2"])),
                   r"dumped at temperature 2.0, but kd_conf.temperature is 1.0")
    # KD without soft labels or an online teacher; a teacher dir without weights
    one_line_error(cli(*cli_args(f, tiny_teacher, cfg, tmp_path / "e4")), r"needs soft labels \(--soft_labels")
    broken = tmp_path / "broken_teacher"
    shutil.copytree(tiny_teacher, broken, ignore=shutil.ignore_patterns("model.pth", "checkpoints"))
    online = write_cfg(tmp_path / "online.yaml", alpha=0.5, online=True)
    one_line_error(cli(*cli_args(f, broken, online, tmp_path / "e5")), r"broken_teacher: not a trained model dir: "
                                                                       r"model.pth is missing")
    # unknown kd_conf key, a student without a CTC head
    one_line_error(cli(*cli_args(f, tiny_teacher, write_cfg(tmp_path / "k.yaml", alpah=0.5), tmp_path / "e6",
                                 dumps["top4"])), r"kd_conf: unknown key\(s\) \['alpah'\]")
    rnnt = tmp_path / "rnnt.yaml"
    rnnt.write_text(yaml.safe_dump({"model": "transducer", "encoder_conf": ENC, "model_conf": {"ctc_weight": 0.0},
                                    "decoder_conf": {"hidden_size": 16}, "joint_net_conf": {"joint_space_size": 16},
                                    "kd_conf": {"alpha": 0.5}}))
    one_line_error(cli(*cli_args(f, tiny_teacher, rnnt, tmp_path / "e7", dumps["top4"])),
                   r"this transducer student has none \(set model_conf.ctc_weight > 0\)")
    for e in ("e1", "e2", "e3", "e4", "e5", "e6", "e7"):
        assert not (tmp_path / e / "checkpoints").exists()


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
                        SoftLabelSet([bad], tiny_teacher / "tokens" / "tokens.txt", 1.0), student)
    last = max(scp, key=lambda u: int(scp[u].rsplit(":", 1)[1]))
    with pytest.raises(SoftLabelError, match=rf"soft_labels.1.ark: utterance {last}: unreadable, truncated"):
        ds[last]
