"""Shipped models: pack an exp dir (float16, sha256), install it as an exp dir, refuse damaged packages."""
import json
import subprocess
import sys

import pytest
import torch

from kdtool.models.load import load_trained
from kdtool.models.package import PackageError, install, pack
from kdtool.train.config import resolve_config
from kdtool.train.trainer import train

CFG = {"model": "ctc", "encoder_conf": {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 1},
       "max_epoch": 1, "batch_frames": 800, "keep_nbest_models": 1, "scheduler_conf": {"warmup_steps": 5}}


@pytest.fixture(scope="module")
def trained(tiny_features, tmp_path_factory):
    exp = tmp_path_factory.mktemp("exp") / "teacher"
    f = tiny_features
    train(resolve_config(CFG), exp, f["feats"], f["feats"], f["tokens"], f["cmvn"], accelerator="cpu", devices=1)
    return exp


@pytest.fixture
def package(trained, tmp_path):
    pack(trained, tmp_path / "pkg", {"train_command": "python -m kdtool.bin.train ...", "test_wer": 12.5})
    return tmp_path / "pkg"


def test_pack_and_install_give_the_same_model(trained, package, tiny_features, tmp_path):
    info = json.loads((package / "model_info.json").read_text())
    assert info["test_wer"] == 12.5 and set(info["package"]) == {"weights_sha256", "tokens_sha256", "cmvn_sha256"}
    assert (package / "model.fp16.pth").stat().st_size < 0.6 * (trained / "model.pth").stat().st_size
    install(package, tmp_path / "exp" / "teacher")
    a, b = load_trained(trained), load_trained(tmp_path / "exp" / "teacher")
    assert b.tokenizer.tokens == a.tokenizer.tokens and (b.cmvn == a.cmvn).all()
    feats = torch.randn(2, 120, 80, generator=torch.Generator().manual_seed(0))
    lens = torch.tensor([120, 90])
    with torch.no_grad():
        pa = a.model.ctc_log_probs(a.model.encode(feats, lens)[0])
        pb = b.model.ctc_log_probs(b.model.encode(feats, lens)[0])
    assert (pa - pb).abs().max() < 1e-2  # float16 weights: a rounding, not another model
    top2 = pa.topk(2, dim=-1).values
    clear = top2[..., 0] - top2[..., 1] > 0.05  # frames without a near tie pick the same token
    assert clear.sum() > 0.8 * clear.numel() and torch.equal(pa.argmax(-1)[clear], pb.argmax(-1)[clear])
    assert json.loads((tmp_path / "exp" / "teacher" / "model_info.json").read_text())["installed_from"] == str(package)
    # checked on load like an exp dir trained here: a token list edited in place is named
    tokens = tmp_path / "exp" / "teacher" / "tokens" / "tokens.txt"
    lines = tokens.read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]  # two units swapped: every id still there, each meaning another
    tokens.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"tokens.txt: changed since training"):
        load_trained(tmp_path / "exp" / "teacher")


def test_installing_again_does_nothing_and_another_model_is_not_overwritten(package, trained, tmp_path):
    exp = tmp_path / "exp"
    install(package, exp)
    mtime = (exp / "model.pth").stat().st_mtime_ns
    install(package, exp)
    assert (exp / "model.pth").stat().st_mtime_ns == mtime
    info = json.loads((exp / "model_info.json").read_text())
    info["package"]["weights_sha256"] = "0" * 64
    (exp / "model_info.json").write_text(json.dumps(info))
    with pytest.raises(PackageError, match=r"exp: already holds another model"):
        install(package, exp)


def test_a_changed_weights_file_is_refused_naming_both_sha256s(package, tmp_path):
    recorded = json.loads((package / "model_info.json").read_text())["package"]["weights_sha256"]
    with open(package / "model.fp16.pth", "ab") as f:
        f.write(b"\0")
    with pytest.raises(PackageError, match=rf"model.fp16.pth: sha256 [0-9a-f]{{64}} does not match {recorded}"):
        install(package, tmp_path / "exp")
    assert not (tmp_path / "exp").exists(), "nothing is written before the checks pass"


@pytest.mark.parametrize("name", ["tokens/tokens.txt", "cmvn.ark", "model.fp16.pth", "config.yaml"])
def test_a_missing_file_is_named(package, tmp_path, name):
    (package / name).unlink()
    with pytest.raises(PackageError, match=rf"{name}: missing"):
        install(package, tmp_path / "exp")


def test_install_entry_point_prints_one_line(package, tmp_path):
    (package / "tokens" / "tokens.txt").write_text("<blank> 0\n")
    p = subprocess.run([sys.executable, "-m", "kdtool.bin.install_model", "--package", str(package),
                        "--exp_dir", str(tmp_path / "exp")], capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "tokens.txt: sha256" in p.stderr


def test_mini_en_retrain_teachers_trains_the_shipped_configs_on_their_own_set():
    from conftest import REPO
    out = subprocess.run(["./run.sh", "--retrain_teachers", "--help"], cwd=REPO / "egs/mini_en/kd1",
                         capture_output=True, text=True, check=True).stdout
    opts = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.startswith("  --")}
    assert opts["--teacher-train-set"] == ["train_teacher"] and opts["--teacher-packages"] == []
    assert opts["--teacher-configs"] == ["conf/teachers/train_ar_teacher.yaml", "conf/teachers/train_transducer_teacher.yaml"]
    assert "--n_teacher_train" in opts["--local-data-opts"]
    for config in opts["--teacher-configs"]:
        assert (REPO / "egs/mini_en/kd1" / config).is_file()
