"""kd.sh's stages 4 and 6 on a tiny CTC teacher: a complete dump is skipped on rerun, a half-done one
is redone, and gpu_inference hands the entry points --device cuda (which fails cleanly without CUDA);
and stage 3's trainings side by side (train_jobs), whose logs a rerun keeps."""
import json
import os
import shutil
import subprocess

import pytest
import torch
import yaml

from conftest import copy_egs
from kdtool.utils import provenance

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SKIPPED = "Stage 4: {} is complete and up to date; skipped"


@pytest.fixture
def recipe(tmp_path, tiny_features):
    """A copy of the mini_en recipe whose dump/fbank/tiny is the tiny feature dir."""
    recipe = copy_egs(tmp_path / "kdtool") / "mini_en" / "kd1"
    (recipe / "dump" / "fbank").mkdir(parents=True)
    (recipe / "dump" / "fbank" / "tiny").symlink_to(tiny_features["feats"])
    return recipe


def kd_sh(recipe, teacher, *args):
    """kd.sh with the tiny teacher on the tiny set; returns the finished process (stdout + stderr)."""
    p = subprocess.run(["./kd.sh", "--nj", "2", "--train_set", "tiny", "--decode_sets", "tiny", "--kd_teacher",
                        str(teacher), "--soft_label_dir", "soft", "--soft_label_types", "frame_posteriors", *args],
                       cwd=recipe, env=ENV, capture_output=True, text=True, timeout=300)
    p.out = p.stdout + p.stderr
    return p


def mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_complete_dumps_are_skipped_and_half_done_ones_redone(recipe, tiny_teacher):
    stage4 = ("--stage", "4", "--stop_stage", "4")
    p = kd_sh(recipe, tiny_teacher, *stage4)
    assert p.returncode == 0, p.out
    frames = recipe / "soft" / "frame_posteriors_tiny"
    assert json.loads((frames / "dump_info.json").read_text())["utterances"] == 6
    # a complete N-best dir (merged nbest.jsonl) of this teacher and data: the CTC teacher could not make one,
    # so a run would fail
    nbest = recipe / "soft" / "nbest_tiny"
    nbest.mkdir()
    made = provenance.record(tiny_teacher, recipe / "dump" / "fbank" / "tiny", uses_text=False)
    (nbest / "nbest.json").write_text(json.dumps({**provenance.nbest_options(2, 10, 0.3), **made}))
    (nbest / "nbest.1.jsonl").write_text("")
    (nbest / "nbest.jsonl").write_text("")
    before = mtimes(recipe / "soft")

    p = kd_sh(recipe, tiny_teacher, *stage4, "--nbest", "2")
    assert p.returncode == 0, p.out
    assert SKIPPED.format("soft/frame_posteriors_tiny") in p.out and SKIPPED.format("soft/nbest_tiny") in p.out
    assert mtimes(recipe / "soft") == before, "nothing was rewritten"

    # jobs killed before the merge: no dump_info.json, no nbest.jsonl; both are redone
    for f in (frames / "dump_info.json", frames / "soft_labels.scp", frames / "soft_labels.2.stats.json",
              nbest / "nbest.jsonl"):
        f.unlink()
    p = kd_sh(recipe, tiny_teacher, *stage4, "--nbest", "2")
    assert "is complete" not in p.out
    assert json.loads((frames / "dump_info.json").read_text())["utterances"] == 6
    assert (frames / "soft_labels.1.ark").stat().st_mtime_ns > before[frames / "soft_labels.1.ark"]
    # the N-best jobs ran (and failed: a CTC teacher has no N-best lists)
    assert p.returncode != 0 and "N-best lists come from an ar teacher, not a ctc model" in p.out, p.out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_inference_passes_the_cuda_device_to_stages_4_and_6(recipe, tiny_teacher, tmp_path):
    model = tmp_path / "ctc_model"  # stage 6 writes its decode dirs into the model's dir
    shutil.copytree(tiny_teacher, model, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "csv"))
    p = kd_sh(recipe, tiny_teacher, "--stage", "4", "--stop_stage", "4", "--gpu_inference", "true")
    assert p.returncode != 0 and "--device cuda: CUDA is not available on this machine" in p.out, p.out
    assert [f.name for f in (recipe / "soft" / "frame_posteriors_tiny").iterdir()] == ["log"]

    stage6 = ("--stage", "6", "--stop_stage", "6", "--models", str(model))
    p = kd_sh(recipe, tiny_teacher, *stage6, "--gpu_inference", "true")
    assert p.returncode != 0 and "--device cuda: CUDA is not available on this machine" in p.out, p.out
    decoded = model / "decode_ctc_greedy_tiny"
    assert [f.name for f in decoded.iterdir()] == ["decode.log"]
    # the default decodes on the CPU
    p = kd_sh(recipe, tiny_teacher, *stage6)
    assert p.returncode == 0, p.out
    assert json.loads((decoded / "decode_info.json").read_text())["device"] == "cpu"


def test_decode_configs_choose_the_decodes_of_stage_6(recipe, tiny_teacher, tmp_path):
    """--decode_configs: stage 6 decodes each model with the listed configs of its kind only (here one of two
    CTC configs, and an AR one it skips); a listed file that is missing or misnamed fails before decoding."""
    model = tmp_path / "ctc_model"
    shutil.copytree(tiny_teacher, model, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "csv"))
    (recipe / "conf" / "decode_ctc_greedy_b4.yaml").write_text("method: ctc_greedy\nbatch_size: 4\n")
    stage6 = ("--stage", "6", "--stop_stage", "6", "--models", str(model))
    for bad, message in [("conf/decode_ctc_nothere.yaml", "conf/decode_ctc_nothere.yaml: no such file"),
                         ("conf/pipeline.conf", "conf/pipeline.conf: not named decode_<kind>_<name>.yaml")]:
        p = kd_sh(recipe, tiny_teacher, *stage6, "--decode_configs", bad)
        assert p.returncode != 0 and message in p.out, p.out
    assert not list(model.glob("decode_*"))
    p = kd_sh(recipe, tiny_teacher, *stage6, "--decode_configs", "conf/decode_ar_beam10.yaml conf/decode_ctc_greedy_b4.yaml")
    assert p.returncode == 0, p.out
    assert sorted(d.name for d in model.glob("decode_*")) == ["decode_ctc_greedy_b4_tiny"]
    # the default: every conf/decode_ctc_*.yaml
    p = kd_sh(recipe, tiny_teacher, *stage6)
    assert p.returncode == 0, p.out
    assert sorted(d.name for d in model.glob("decode_*")) == ["decode_ctc_greedy_b4_tiny", "decode_ctc_greedy_tiny"]


def test_trainings_run_side_by_side_and_one_that_fails_fails_the_stage(recipe, tiny_features):
    fbank = recipe / "dump" / "fbank" / "tiny"
    fbank.unlink()
    shutil.copytree(tiny_features["feats"], fbank)
    shutil.copy(tiny_features["cmvn"], fbank / "cmvn.ark")
    (recipe / "data" / "token_list").mkdir(parents=True)
    (recipe / "data" / "token_list" / "char").symlink_to(tiny_features["tokens"])
    good = {"model": "ctc", "encoder_conf": {"output_size": 16, "attention_heads": 2, "linear_units": 32,
                                             "num_blocks": 1}, "max_epoch": 2, "batch_frames": 800}
    for name, cfg in [("a", good), ("b", good), ("bad", {**good, "encoder_conf": {"num_layers": 2}})]:
        (recipe / "conf" / f"train_{name}.yaml").write_text(yaml.safe_dump(cfg))
    p = subprocess.run(["./kd.sh", "--stage", "3", "--stop_stage", "3", "--train_set", "tiny", "--valid_set", "tiny",
                        "--token_type", "char", "--train_jobs", "2",
                        "--teacher_configs", "conf/train_a.yaml conf/train_b.yaml conf/train_bad.yaml"],
                       cwd=recipe, env=ENV, capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "1 job(s) failed" in out and "exp/bad/train.log" in out, out
    assert "unknown key(s) ['num_layers']" in (recipe / "exp" / "bad" / "train.log").read_text()
    spans = {}
    for name in ("a", "b"):  # both trained, at the same time: each started before the other ended
        assert (recipe / "exp" / name / "model.pth").is_file()
        log = recipe / "exp" / name / "train.log"
        elapsed = int(log.read_text().split("# Accounting: time=")[1].split()[0])
        spans[name] = (log.stat().st_mtime - elapsed, log.stat().st_mtime)
    assert spans["a"][0] < spans["b"][1] - 1 and spans["b"][0] < spans["a"][1] - 1, spans

    # a rerun keeps the earlier run's log beside its own
    first_log = (recipe / "exp" / "a" / "train.log").read_text()
    p = subprocess.run(["./kd.sh", "--stage", "3", "--stop_stage", "3", "--train_set", "tiny", "--valid_set", "tiny",
                        "--token_type", "char", "--teacher_configs", "conf/train_a.yaml"],
                       cwd=recipe, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (recipe / "exp" / "a" / "train.log.1").read_text() == first_log
    assert "already trained (model.pth); nothing to do" in (recipe / "exp" / "a" / "train.log").read_text()


def test_a_student_config_twice_is_refused_when_trainings_run_side_by_side(recipe):
    p = subprocess.run(["./kd.sh", "--stage", "5", "--stop_stage", "5", "--train_jobs", "2",
                        "--student_configs", "conf/train_ctc_student.yaml",
                        "--chains", "conf/train_ctc_student.yaml,conf/train_ctc_student_kd.yaml"],
                       cwd=recipe, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0, p.stdout + p.stderr
    assert "exp/ctc_student: trained by more than one job of stage 5; with --train_jobs 2" in p.stderr
    assert not (recipe / "exp" / "ctc_student").exists()  # refused before anything started


def test_student_seeds_train_one_exp_dir_per_seed(recipe, tiny_features, tiny_teacher):
    """--student_seeds "1 2": the config trained twice, into exp/<name>_seed1 and _seed2, each with its seed
    (--seeded_students: only the configs named; another trains once, as without seeds); a seed that is not a
    number, or a seeded student that is not trained, fails before any training."""
    fbank = recipe / "dump" / "fbank" / "tiny"
    fbank.unlink()
    shutil.copytree(tiny_features["feats"], fbank)
    shutil.copy(tiny_features["cmvn"], fbank / "cmvn.ark")
    (recipe / "data" / "token_list").mkdir(parents=True)
    (recipe / "data" / "token_list" / "char").symlink_to(tiny_features["tokens"])
    args = ["./kd.sh", "--stage", "5", "--stop_stage", "5", "--train_set", "tiny", "--valid_set", "tiny",
            "--token_type", "char", "--kd_teacher", str(tiny_teacher), "--soft_label_dir", "soft",
            "--student_configs", "conf/fast/train_ctc_student.yaml"]
    p = subprocess.run([*args, "--student_seeds", "1 x"], cwd=recipe, env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and "--student_seeds: 'x' is not a seed (integers >= 0" in p.stderr, p.stderr
    assert not (recipe / "exp").exists() or not any((recipe / "exp").glob("ctc_student*"))
    p = subprocess.run([*args, "--student_seeds", "1 2", "--seeded_students", "conf/fast/train_ctc_other.yaml"],
                       cwd=recipe, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "--seeded_students: conf/fast/train_ctc_other.yaml is not one of" in p.stderr, p.stderr
    # a second KD-free config, trained once
    (recipe / "conf" / "fast" / "train_ctc_other.yaml").write_text("base: train_ctc_student.yaml\nmax_epoch: 1\n")
    args[-1] += " conf/fast/train_ctc_other.yaml"
    p = subprocess.run([*args, "--student_seeds", "1 2", "--seeded_students", "conf/fast/train_ctc_student.yaml"],
                       cwd=recipe, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(d.name for d in (recipe / "exp").glob("ctc_*")) == ["ctc_other", "ctc_student_seed1",
                                                                       "ctc_student_seed2"]
    weights = {}
    for seed in (1, 2):
        exp = recipe / "exp" / f"ctc_student_seed{seed}"
        assert yaml.safe_load((exp / "config.yaml").read_text())["seed"] == seed
        assert f"--seed {seed}" in json.loads((exp / "model_info.json").read_text())["command"]
        weights[seed] = torch.load(exp / "model.pth")
    assert not all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])


def test_student_args_override_the_config_of_a_run(recipe, tiny_features, tiny_teacher):
    """--student_args "KEY=VALUE ...": every stage-5 training's config overridden (kdtool.bin.distill --set), the
    exp dir's config.yaml the result; an unknown key fails the training with the file and the key named."""
    fbank = recipe / "dump" / "fbank" / "tiny"
    fbank.unlink()
    shutil.copytree(tiny_features["feats"], fbank)
    shutil.copy(tiny_features["cmvn"], fbank / "cmvn.ark")
    args = ["./kd.sh", "--stage", "5", "--stop_stage", "5", "--train_set", "tiny", "--valid_set", "tiny",
            "--token_type", "char", "--kd_teacher", str(tiny_teacher), "--soft_label_dir", "soft",
            "--student_configs", "conf/fast/train_ctc_student.yaml"]
    p = subprocess.run([*args, "--student_args", "max_epoch=1 kd_conf.alpah=0.3"], cwd=recipe, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0, p.stdout + p.stderr
    log = (recipe / "exp" / "ctc_student" / "train.log").read_text()
    assert ("conf/fast/train_ctc_student.yaml (with --set max_epoch=1 kd_conf.alpah=0.3): kd_conf: unknown key(s) "
            "['alpah']") in log, log[-2000:]
    assert not (recipe / "exp" / "ctc_student" / "checkpoints").exists()
    p = subprocess.run([*args, "--student_args", "max_epoch=1 encoder_conf.linear_units=24"], cwd=recipe, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    saved = yaml.safe_load((recipe / "exp" / "ctc_student" / "config.yaml").read_text())
    assert saved["max_epoch"] == 1 and saved["encoder_conf"]["linear_units"] == 24
