"""Hidden-state KD (kdtool.kd.terms.hidden): online from the teacher, through a learned projection that
trains with the student and is not part of the saved student."""
import pytest
import torch
import yaml

from kdtool.features.cmvn import mean_std
from kdtool.kd.distill import DistillLoss, OnlineTeacher, distill, load_student_config
from kdtool.kd.terms import TERMS
from kdtool.errors import ConfigError
from kdtool.models.build import build_model
from kdtool.models.load import load_trained
from kdtool.train.config import resolve_config
from kdtool.train.dataset import SpeechDataset, collate
from kdtool.train.module import ASRTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ENC = {"output_size": 16, "attention_heads": 2, "linear_units": 32, "num_blocks": 2}  # the teacher's width is 32


def config(tmp_path, **kd):
    cfg = {"model": "ctc", "encoder_conf": ENC, "max_epoch": 2, "batch_frames": 800, "keep_nbest_models": 1,
           "scheduler_conf": {"warmup_steps": 5}, "log_interval": 1,
           "kd_conf": {"alpha": 0.5, "frame_weight": 0.0, "hidden_weight": 1.0, **kd}}
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_student_config(path)


@pytest.mark.parametrize("kind", ["l2", "cosine"])
def test_hidden_state_loss_trains_student_and_projection(tiny_teacher, tiny_features, kind):
    t = load_trained(tiny_teacher)
    torch.manual_seed(0)
    student = build_model({"model": "ctc", "encoder_conf": ENC}, len(t.tokenizer))
    kd = {"alpha": 1.0, "hidden_layers": {1: 2}, "hidden_loss": kind}
    teacher = OnlineTeacher(t, "frame_posteriors", 1.0, mean_std(t.cmvn))
    projection = TERMS["hidden"].trainable(student, t, kd)
    assert isinstance(projection[0], torch.nn.Linear) and projection[0].weight.shape == (32, 16)
    loss_fn = DistillLoss(1.0, 1.0, {"hidden": 1.0}, kd=kd, parts={"hidden": projection}, teacher=teacher)
    task = ASRTask(student, resolve_config({"model": "ctc", "encoder_conf": ENC}), loss_fn)
    opt = torch.optim.Adam(task.parameters(), lr=3e-3)
    base = SpeechDataset(tiny_features["feats"], t.tokenizer, tiny_features["cmvn"])
    batch = collate([base[u] for u in base.utts])
    before, w0 = None, projection[0].weight.detach().clone()
    for _ in range(15):
        loss, stats = loss_fn(student.train(), batch)
        before = stats["loss_kd_hidden"].item() if before is None else before
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_fn(student, batch)[1]["loss_kd_hidden"].item()
    assert after < 0.7 * before
    assert not torch.equal(projection[0].weight, w0)  # the projection learnt too
    assert all(p.grad is None for p in t.model.parameters())  # the teacher is left alone


def test_distill_with_hidden_state_kd_saves_a_student_without_its_projection(tiny_teacher, tiny_features, tmp_path):
    f = tiny_features
    cfg = config(tmp_path, hidden_layers={2: 1})
    exp = tmp_path / "exp"
    distill(cfg, exp, f["feats"], f["feats"], tiny_teacher / "tokens", f["cmvn"], teacher_dir=tiny_teacher,
            accelerator="cpu", devices=1)
    ckpt = torch.load(exp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert ckpt["loss_fn.parts.hidden.0.weight"].shape == (32, 16)  # trained beside the student, resumable
    student = load_trained(exp)  # strict: model.pth holds the student's weights only
    assert not any("parts" in k for k in student.model.state_dict())
    rows = (next((exp / "csv").glob("version_*")) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = [float(r.split(",")[header.index("train/loss_kd_hidden")]) for r in rows[1:]
              if r.split(",")[header.index("train/loss_kd_hidden")]]
    assert values and all(v > 0 for v in values)
    info = yaml.safe_load((exp / "model_info.json").read_text())
    assert info["kd_terms"] == ["hidden"]


def test_hidden_state_kd_names_a_layer_the_models_lack(tiny_teacher, tiny_features, tmp_path):
    f = tiny_features
    with pytest.raises(ConfigError, match=r"kd_conf.hidden_layers: the student's encoder has layers 1..2, not \[5\]"):
        distill(config(tmp_path, hidden_layers={5: 1}), tmp_path / "a", f["feats"], f["feats"],
                tiny_teacher / "tokens", f["cmvn"], teacher_dir=tiny_teacher, accelerator="cpu", devices=1)
    with pytest.raises(ConfigError, match=r"kd_conf.hidden_layers: the teacher \(.*\)'s encoder has layers 1..2, "
                                          r"not \[3\]"):
        distill(config(tmp_path, hidden_layers={1: 3}), tmp_path / "b", f["feats"], f["feats"],
                tiny_teacher / "tokens", f["cmvn"], teacher_dir=tiny_teacher, accelerator="cpu", devices=1)
    with pytest.raises(ConfigError, match=r"student.yaml: kd_conf: hidden_loss must be one of"):
        config(tmp_path, hidden_loss="l1")
    with pytest.raises(ConfigError, match=r"kd_conf.online / init_conf need the teacher"):
        distill(config(tmp_path), tmp_path / "c", f["feats"], f["feats"], tiny_teacher / "tokens", f["cmvn"],
                accelerator="cpu", devices=1)
