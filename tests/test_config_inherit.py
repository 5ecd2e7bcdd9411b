"""Training configs that inherit (base:) and per-run overrides (--set KEY=VALUE): merged as documented
in kdtool.train.config, every bad input a ConfigError naming the file and the key, before training."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from kdtool.kd.distill import load_student_config
from kdtool.errors import ConfigError
from kdtool.train.config import load_config, merge, read_config

BASE = {"model": "ctc", "encoder": "conformer", "encoder_conf": {"output_size": 64, "num_blocks": 2},
        "specaug_conf": {"freq_mask_width_range": [0, 15], "num_freq_mask": 2},
        "max_epoch": 8, "optim_conf": {"lr": 0.002}, "kd_conf": {"alpha": 0.0, "temperature": 2.0}}


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content))
    return path


def test_merge_merges_mappings_and_replaces_the_rest():
    out = merge(BASE, {"encoder_conf": {"num_blocks": 4}, "specaug_conf": {"freq_mask_width_range": [0, 5]},
                       "max_epoch": 3})
    assert out["encoder_conf"] == {"output_size": 64, "num_blocks": 4}
    assert out["specaug_conf"] == {"freq_mask_width_range": [0, 5], "num_freq_mask": 2}  # a list replaces
    assert out["max_epoch"] == 3 and BASE["max_epoch"] == 8 and BASE["encoder_conf"]["num_blocks"] == 2


def test_a_chain_of_bases_relative_to_each_config_dir(tmp_path):
    write(tmp_path / "train_twin.yaml", BASE)
    write(tmp_path / "train_kd.yaml", {"base": "train_twin.yaml", "kd_conf": {"alpha": 0.3}})
    variant = write(tmp_path / "tuning" / "train_kd_e4.yaml", {"base": "../train_kd.yaml", "max_epoch": 4})
    config = load_student_config(variant)
    assert config["kd_conf"]["alpha"] == 0.3 and config["kd_conf"]["temperature"] == 2.0
    assert config["max_epoch"] == 4 and config["encoder_conf"] == BASE["encoder_conf"]
    assert "base" not in config
    twin = load_student_config(tmp_path / "train_twin.yaml")
    assert {k for k in config if config[k] != twin[k]} == {"kd_conf", "max_epoch"}


def test_overrides_for_a_run(tmp_path):
    path = write(tmp_path / "train_kd.yaml", BASE)
    config = load_student_config(path, ["kd_conf.alpha=0.3", "max_epoch=5", "kd_conf.frame_labels=fb_posteriors",
                                        "specaug_conf.freq_mask_width_range=[0,10]", "grad_clip=1"])
    assert config["kd_conf"]["alpha"] == 0.3 and config["kd_conf"]["temperature"] == 2.0
    assert config["kd_conf"]["frame_labels"] == "fb_posteriors"
    assert config["max_epoch"] == 5 and config["grad_clip"] == 1  # a default's key may be set too
    assert config["specaug_conf"] == {"freq_mask_width_range": [0, 10], "num_freq_mask": 2}
    teacher = write(tmp_path / "train_teacher.yaml", {k: v for k, v in BASE.items() if k != "kd_conf"})
    assert load_config(teacher, ["optim_conf.lr=0.001"])["optim_conf"]["lr"] == 0.001


@pytest.mark.parametrize("content, message", [
    ({"base": "train_missing.yaml", "max_epoch": 2}, ["train_bad.yaml: base:", "train_missing.yaml does not exist"]),
    ({"base": "train_bad.yaml"}, ["train_bad.yaml: base: train_bad.yaml forms a cycle"]),
    ({"base": "train_loop.yaml"}, ["base:", "forms a cycle", "train_loop.yaml", "train_bad.yaml"]),
    ({"base": ["train_twin.yaml"]}, ["train_bad.yaml: base: expected a config file name"]),
    ({"base": "train_twin.yaml", "max_epochs": 3}, ["train_bad.yaml: unknown key(s) ['max_epochs']"]),
    ({"base": "train_twin.yaml", "kd_conf": {"alpah": 0.3}}, ["train_bad.yaml: kd_conf: unknown key(s) ['alpah']"]),
])
def test_bad_bases_are_named(tmp_path, content, message):
    write(tmp_path / "train_twin.yaml", BASE)
    write(tmp_path / "train_loop.yaml", {"base": "train_bad.yaml"})
    bad = write(tmp_path / "train_bad.yaml", content)
    with pytest.raises(ConfigError) as e:
        load_student_config(bad)
    assert all(m in str(e.value) for m in message), str(e.value)


@pytest.mark.parametrize("item, message", [
    ("max_epochs=3", "--set 'max_epochs=3': no config key 'max_epochs'"),
    ("kd_conf.alpah=0.3", "(with --set kd_conf.alpah=0.3): kd_conf: unknown key(s) ['alpah']"),
    ("max_epoch.x=3", "--set 'max_epoch.x=3': max_epoch is 8, not a mapping"),
    ("kd_conf.alpha", "--set 'kd_conf.alpha': expected KEY=VALUE"),
    ("kd_conf.alpha=[0", "--set 'kd_conf.alpha=[0': the value is not valid YAML"),
    ("kd_conf.alpha=1.5", "(with --set kd_conf.alpha=1.5): kd_conf: alpha must be in [0, 1]"),
])
def test_bad_overrides_are_named(tmp_path, item, message):
    path = write(tmp_path / "train_kd.yaml", BASE)
    with pytest.raises(ConfigError) as e:
        load_student_config(path, [item])
    assert str(path) in str(e.value) and message in str(e.value), str(e.value)


def test_a_teacher_config_takes_no_kd_override(tmp_path):
    teacher = write(tmp_path / "train_teacher.yaml", {k: v for k, v in BASE.items() if k != "kd_conf"})
    with pytest.raises(ConfigError, match="no config key 'kd_conf'"):
        read_config(teacher, ["kd_conf.alpha=0.3"])


def test_train_cli_saves_the_resolved_config_and_refuses_a_bad_override(tiny_features, tmp_path):
    f = tiny_features
    twin = write(tmp_path / "train_twin.yaml", {"model": "ctc", "max_epoch": 3, "batch_frames": 800,
                                                "keep_nbest_models": 1, "scheduler_conf": {"warmup_steps": 5},
                                                "encoder_conf": {"output_size": 32, "attention_heads": 2,
                                                                 "linear_units": 64, "num_blocks": 1}})
    child = write(tmp_path / "train_child.yaml", {"base": twin.name, "encoder_conf": {"linear_units": 48}})

    def train(exp, *overrides):
        return subprocess.run([sys.executable, "-m", "kdtool.bin.train", "--config", str(child), "--train_data",
                               str(f["feats"]), "--valid_data", str(f["feats"]), "--token_list", str(f["tokens"]),
                               "--cmvn", str(f["cmvn"]), "--exp_dir", str(exp), "--accelerator", "cpu",
                               "--devices", "1", "--set", *overrides], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    bad = train(tmp_path / "bad", "optim_conf.lr=0.001", "max_epochs=1")
    assert bad.returncode != 0 and f"{child}: --set 'max_epochs=1': no config key 'max_epochs'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
    bad = train(tmp_path / "bad", "encoder_conf.num_layers=2")  # a model key: found by building it
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
    assert (f"{child} (with --set encoder_conf.num_layers=2): encoder_conf (conformer): unknown key(s) "
            "['num_layers']") in bad.stderr
    p = train(tmp_path / "exp", "max_epoch=1", "optim_conf.lr=0.001")
    assert p.returncode == 0, p.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert saved["max_epoch"] == 1 and saved["optim_conf"]["lr"] == 0.001 and "base" not in saved
    assert saved["encoder_conf"] == {"output_size": 32, "attention_heads": 2, "linear_units": 48, "num_blocks": 1}
    info = json.loads((tmp_path / "exp" / "model_info.json").read_text())
    assert info["overrides"] == ["max_epoch=1", "optim_conf.lr=0.001"] and info["config"] == str(child)
    # the record stage 7 reads: a model trained by stage 3 has no twin and no teacher; the config's seed
    assert (info["twin_config"], info["teacher"], info["seed"], info["seed_option"]) == (None, None, 0, None)
