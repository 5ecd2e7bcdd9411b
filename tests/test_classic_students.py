"""The classic framework's students (kdtool.models.classic): an LSTM and a feed-forward DNN CTC student chosen
by name in a config, on the teacher's 4x frames, distilled by the KD terms unchanged, exported to ONNX."""
import json
import re

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO
from kdtool.export.common import session
from kdtool.export.exporter import ATOL, export_model
from kdtool.features.cmvn import mean_std
from kdtool.kd.distill import DistillDataset, DistillLoss, OnlineTeacher, SoftLabelSet, distill, load_student_config
from kdtool.kd.dump import dump_job, merge_dump
from kdtool.kd.softlabels import SoftLabelReader
from kdtool.kd.terms import TERMS
from kdtool.models.asr import front_end, subsampled_length
from kdtool.models.build import ConfigError, build_model, count_params
from kdtool.models.load import load_trained
from kdtool.train.config import model_part
from kdtool.train.dataset import SpeechDataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STUDENTS = {"rnn": {"output_size": 16, "hidden_size": 16, "num_layers": 2, "subsampling_channels": 8},
            "dnn": {"output_size": 16, "num_blocks": 2, "context": 1, "subsampling_channels": 16}}


@pytest.fixture(scope="module")
def fb_dump(tiny_teacher, tiny_features, tmp_path_factory):
    """The tiny teacher's forward-backward posteriors (top-4) of the 6 utterances."""
    out = tmp_path_factory.mktemp("classic") / "fb_posteriors_tiny"
    dump_job(tiny_teacher, tiny_features["feats"], out, "fb_posteriors", 4, 1.0)
    merge_dump(out, 1)
    return out


def student(encoder, conf=None, vocab=12, feats=20):
    torch.manual_seed(0)
    conf = STUDENTS[encoder] if conf is None else conf
    return build_model({"model": "ctc", "encoder": encoder, "encoder_conf": conf}, vocab, input_size=feats)


@pytest.mark.parametrize("encoder,conf", [("rnn", None), ("dnn", None),
                                          ("rnn", {**STUDENTS["rnn"], "bidirectional": False, "rnn_type": "gru"}),
                                          ("dnn", {**STUDENTS["dnn"], "context": 0})])
def test_encoders_by_name_on_the_teachers_frames_and_independent_of_the_batch(tiny_teacher, encoder, conf):
    model = student(encoder, conf).eval()
    teacher = load_trained(tiny_teacher).model
    assert front_end(model) == front_end(teacher) == ((3, 2), (3, 2))
    assert all(subsampled_length(model, n) == subsampled_length(teacher, n) for n in range(1, 400))
    feats, lens = torch.randn(3, 90, 20), torch.tensor([61, 90, 37])  # not sorted: packing must not care
    with torch.no_grad():
        enc, enc_lens = model.encode(feats, lens)
        assert enc_lens.tolist() == [subsampled_length(teacher, n) for n in lens.tolist()] == [14, 21, 8]
        for b, n in enumerate(lens.tolist()):  # each utterance alone gives what the batch gives
            alone, _ = model.encode(feats[b:b + 1, :n], lens[b:b + 1])
            assert torch.allclose(alone[0], enc[b, :enc_lens[b]], atol=1e-5)
            assert not enc[b, enc_lens[b]:].any()
        enc2, _, (first, second) = model.encoder_layers(feats, lens, [1, 2])  # hidden-state KD's layers
    assert torch.equal(enc, enc2) and first.shape == second.shape == enc.shape and not torch.allclose(first, second)
    assert model.kd_outputs() == {"encoder", "ctc"}
    with pytest.raises(ConfigError, match="token-level KD|decoder"):
        TERMS["token"].check_student(model)


def test_bad_keys_are_named_before_training():
    with pytest.raises(ConfigError, match=r"encoder_conf \(rnn\): unknown key\(s\) \['subsample'\]"):
        student("rnn", {**STUDENTS["rnn"], "subsample": [2, 2]})  # espnet's own frames would not line up
    with pytest.raises(ConfigError, match=r"encoder_conf \(rnn\): rnn_type: unknown 'transformer'"):
        student("rnn", {**STUDENTS["rnn"], "rnn_type": "transformer"})
    with pytest.raises(ConfigError, match=r"encoder_conf \(dnn\): context must be an integer of at least 0, not -1"):
        student("dnn", {**STUDENTS["dnn"], "context": -1})
    with pytest.raises(ConfigError, match=r"encoder: unknown 'cnn'; choose one of .*'dnn'.*'rnn'"):
        student("cnn", {})


@pytest.mark.parametrize("encoder", sorted(STUDENTS))
def test_students_learn_the_teachers_frame_posteriors_and_hidden_states(tiny_teacher, tiny_features, fb_dump,
                                                                        encoder):
    t = load_trained(tiny_teacher)
    model = student(encoder, vocab=len(t.tokenizer), feats=80)
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    soft = SoftLabelSet([fb_dump], tiny_teacher / "tokens" / "tokens.txt", 1.0)
    ds = DistillDataset(base, model, {"frame": soft})
    reader = SoftLabelReader(fb_dump)
    for utt in ds.utts:  # the student's frames are the teacher's, one for one: no pooling
        assert ds[utt]["frame_ids"].shape[0] == reader.sparse(utt)[0].shape[0] == \
            subsampled_length(model, base.num_frames[utt])
    kd = {"hidden_layers": {1: 2}, "hidden_loss": "l2"}
    projection = TERMS["hidden"].trainable(model, t, kd)
    loss_fn = DistillLoss(1.0, 1.0, {"frame": 1.0, "hidden": 1.0}, kd=kd, parts={"hidden": projection},
                          teacher=OnlineTeacher(t, "frame_posteriors", 1.0, mean_std(t.cmvn)))
    opt = torch.optim.Adam([*model.parameters(), *projection.parameters()], lr=1e-2)
    batch = ds.collate([ds[u] for u in ds.utts])
    before = None
    for _ in range(15):
        loss, stats = loss_fn(model.train(), batch)
        before = before or {k: stats[f"loss_kd_{k}"].item() for k in ("frame", "hidden")}
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_fn(model.eval(), batch)[1]
    assert after["loss_kd_frame"] < 0.7 * before["frame"] and after["loss_kd_hidden"] < 0.7 * before["hidden"]


@pytest.mark.parametrize("encoder", sorted(STUDENTS))
def test_distilled_student_trains_from_a_config_and_exports_to_onnx(tiny_teacher, tiny_features, fb_dump, tmp_path,
                                                                   encoder):
    f = tiny_features
    cfg_path = tmp_path / f"train_ctc_{encoder}_student_kd.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": "ctc", "encoder": encoder, "encoder_conf": STUDENTS[encoder], "max_epoch": 2, "batch_frames": 800,
        "keep_nbest_models": 1, "scheduler_conf": {"warmup_steps": 5}, "log_interval": 1,
        "kd_conf": {"alpha": 0.5, "frame_labels": "fb_posteriors"}}))
    exp = tmp_path / "exp"
    distill(load_student_config(cfg_path), exp, f["feats"], f["feats"], tiny_teacher / "tokens", f["cmvn"],
            soft_label_dirs=[fb_dump], accelerator="cpu", devices=1)
    trained = load_trained(exp)  # strict: the saved student is the student alone
    assert trained.config["encoder"] == encoder and json.loads((exp / "model_info.json").read_text())["kind"] == "ctc"
    rows = (next((exp / "csv").glob("version_*")) / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("train/loss_kd_frame")
    kd = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert kd and all(np.isfinite(kd)) and all(v > 0 for v in kd)

    info = export_model(exp, tmp_path / "export")
    graph = info["graphs"]["model.onnx"]
    assert graph["check"]["max_abs_diff"] <= ATOL and "int8" in graph
    assert json.loads(info["metadata"]["subsampling_convs"]) == [[3, 2], [3, 2]]
    # the graph on real features (raw fbank, CMVN inside) gives PyTorch's posteriors on the teacher's frames
    raw = dict(kaldiio.load_scp(str(f["feats"] / "feats.scp")))
    utts = sorted(raw)[:3]
    lens = np.array([len(raw[u]) for u in utts])
    x = np.zeros((len(utts), lens.max(), 80), np.float32)
    for b, u in enumerate(utts):
        x[b, :lens[b]] = raw[u]
    log_probs, out_lens = session(tmp_path / "export" / "model.onnx").run(None, {"x": x, "x_lens": lens})
    mean, std = mean_std(trained.cmvn)
    model = trained.model.eval()
    for b, u in enumerate(utts):
        with torch.no_grad():
            feats = torch.from_numpy(((raw[u] - mean) / std).astype(np.float32))[None]
            enc, enc_lens = model.encode(feats, torch.tensor([lens[b]]))
            ref = model.ctc_log_probs(enc)[0].numpy()
        assert out_lens[b] == enc_lens[0] == subsampled_length(load_trained(tiny_teacher).model, int(lens[b]))
        assert np.abs(log_probs[b, :out_lens[b]] - ref).max() < ATOL


@pytest.mark.parametrize("name", ["lstm", "dnn"])
def test_mini_en_lstm_and_dnn_students_are_twins_of_their_kd_versions_at_the_size_they_state(name):
    conf = REPO / "egs/mini_en/kd1/conf"
    twin = load_student_config(conf / f"tuning/train_ctc_{name}_student.yaml")
    kd = load_student_config(conf / f"tuning/train_ctc_{name}_student_kd.yaml")
    assert sorted(k for k in set(twin) | set(kd) if twin[k] != kd[k]) == ["kd_conf"]
    assert kd["kd_conf"] == load_student_config(conf / "train_ctc_student_kd.yaml")["kd_conf"]  # the Conformer's KD
    stated = re.search(r"([\d,]+) parameters", (conf / f"tuning/train_ctc_{name}_student.yaml").read_text())
    with torch.device("meta"):
        model = build_model(model_part(twin), 31)  # mini_en's character list
    assert count_params(model) == int(stated.group(1).replace(",", "")) and 1.4e6 < count_params(model) < 1.6e6
    assert front_end(model) == ((3, 2), (3, 2))
