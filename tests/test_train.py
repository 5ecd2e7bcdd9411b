"""Stage 3 training: a self-contained exp dir for every kind, resume after a kill, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import run_entry
from kdtool.errors import ConfigError
from kdtool.models.load import load_trained
from kdtool.train.config import load_config, resolve_config
from kdtool.train.plot import read_metrics
from kdtool.train.trainer import train

ENC = {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 1}
DEC = {"attention_heads": 2, "linear_units": 64, "num_blocks": 1}
KINDS = {
    "ctc": {"model": "ctc"},
    "ar": {"model": "ar", "decoder_conf": DEC},
    "nar": {"model": "nar", "decoder_conf": DEC},
    "transducer": {"model": "transducer", "decoder_conf": {"hidden_size": 32}, "joint_net_conf": {"joint_space_size": 32}},
}
TRAINING = {"encoder_conf": ENC, "max_epoch": 2, "batch_frames": 800, "keep_nbest_models": 2, "log_interval": 1,
            "scheduler_conf": {"warmup_steps": 5}}


def run_train(cfg, exp, f):
    return train(resolve_config(cfg), exp, f["feats"], f["feats"], f["tokens"], f["cmvn"], accelerator="cpu", devices=1)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_trains_into_a_loadable_exp_dir(kind, tiny_features, tmp_path):
    info = run_train({**KINDS[kind], **TRAINING}, tmp_path / kind, tiny_features)
    exp = tmp_path / kind
    loaded = load_trained(exp)
    assert loaded.model.kind == kind == info["kind"]
    assert loaded.info["params"] == info["params"] and len(info["averaged"]) == 2
    assert yaml.safe_load((exp / "config.yaml").read_text())["max_epoch"] == 2
    train_curve, valid_curve = read_metrics(exp / "csv")
    assert len(train_curve) > 2 and [e for e, _ in valid_curve] == [1, 2]
    assert (exp / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    # the averaged weights are the mean of the two kept checkpoints
    ckpts = [torch.load(exp / "checkpoints" / n, weights_only=False)["state_dict"] for n in info["averaged"]]
    name = next(k for k in loaded.model.state_dict() if k.endswith("weight"))
    expected = (ckpts[0][f"model.{name}"] + ckpts[1][f"model.{name}"]) / 2
    torch.testing.assert_close(loaded.model.state_dict()[name], expected)


def test_rerun_of_a_finished_run_changes_nothing(tiny_features, tmp_path):
    cfg = {**KINDS["ctc"], **TRAINING}
    run_train(cfg, tmp_path / "e", tiny_features)
    before = torch.load(tmp_path / "e" / "model.pth")
    run_train(cfg, tmp_path / "e", tiny_features)
    after = torch.load(tmp_path / "e" / "model.pth")
    assert all(torch.equal(before[k], after[k]) for k in before)


def train_command(cfg, f, tmp_path, *extra):
    """``kdtool.bin.train`` of config ``cfg`` on the tiny features: a function of the exp dir."""
    conf = tmp_path / "train.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    return lambda exp: [sys.executable, "-m", "kdtool.bin.train", "--config", str(conf), "--train_data",
                        str(f["feats"]), "--valid_data", str(f["feats"]), "--token_list", str(f["tokens"]),
                        "--cmvn", str(f["cmvn"]), "--exp_dir", str(exp), "--accelerator", "cpu", "--devices", "1",
                        *extra]


def test_killed_run_resumes_and_ends_where_an_uninterrupted_run_would(tiny_features, tmp_path):
    cfg = {**KINDS["ar"], **TRAINING, "max_epoch": 5, "specaug_conf": {"apply_time_warp": False,
                                                                       "time_mask_width_range": [0, 5]}}
    cmd = train_command(cfg, tiny_features, tmp_path)

    subprocess.run(cmd(tmp_path / "clean"), check=True, capture_output=True)
    # Kill the second run mid-way (after some epoch's checkpoint, before the end), then rerun it.
    proc = subprocess.Popen(cmd(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "checkpoints" / "epoch001.ckpt").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model.pth").exists(), "the kill should land before training ends"
    subprocess.run(cmd(tmp_path / "killed"), check=True, capture_output=True)
    clean, resumed = torch.load(tmp_path / "clean" / "model.pth"), torch.load(tmp_path / "killed" / "model.pth")
    assert clean.keys() == resumed.keys()
    for k in clean:
        torch.testing.assert_close(resumed[k], clean[k], rtol=0, atol=0, msg=k)
    info = json.loads((tmp_path / "killed" / "model_info.json").read_text())
    assert info["averaged"] == json.loads((tmp_path / "clean" / "model_info.json").read_text())["averaged"]
    # the learning curve spans both runs
    assert [e for e, _ in read_metrics(tmp_path / "killed" / "csv")[1]] == [1, 2, 3, 4, 5]


def test_a_training_stopped_by_sigterm_fails_and_the_rerun_resumes(tiny_features, tmp_path):
    """lightning ends a SIGTERM'd fit with exit code 0; kdtool's train must not: the stage would go on
    without a model."""
    conf = tmp_path / "train.yaml"
    conf.write_text(yaml.safe_dump({**KINDS["ctc"], **TRAINING, "max_epoch": 30}))
    f, exp = tiny_features, tmp_path / "exp"
    cmd = [sys.executable, "-m", "kdtool.bin.train", "--config", str(conf), "--train_data", str(f["feats"]),
           "--valid_data", str(f["feats"]), "--token_list", str(f["tokens"]), "--cmvn", str(f["cmvn"]),
           "--exp_dir", str(exp), "--accelerator", "cpu", "--devices", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (exp / "checkpoints" / "epoch001.ckpt").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "rerun the same command to resume" in err
    assert not (exp / "model.pth").exists()
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0 and "resuming from" in p.stderr and (exp / "model.pth").exists()


def test_the_log_of_a_training_outside_a_terminal_has_plain_lines_and_no_progress_bar(tiny_features, tmp_path):
    """What kd.sh writes to exp/*/train.log: stderr is a file, not a terminal."""
    import re
    conf = tmp_path / "train.yaml"
    conf.write_text(yaml.safe_dump({**KINDS["ctc"], **TRAINING, "log_interval": 2}))
    f = tiny_features
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-m", "kdtool.bin.train", "--config", str(conf), "--train_data",
                        str(f["feats"]), "--valid_data", str(f["feats"]), "--token_list", str(f["tokens"]), "--cmvn",
                        str(f["cmvn"]), "--exp_dir", str(tmp_path / "exp"), "--accelerator", "cpu", "--devices", "1"],
                       stdout=out, stderr=subprocess.STDOUT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = log.read_text()
    assert "\r" not in text and "it/s" not in text, text[-2000:]
    number = r"\d+\.\d+"
    steps = re.findall(rf"epoch 1/2, step (\d+)/(\d+): loss={number}, loss_ctc={number}, lr=\S+, {number} steps/s, "
                       r"\d+ frames/s", text)
    assert steps and all(int(s) % 2 == 0 for s, _ in steps), text[-2000:]
    for epoch in (1, 2):
        line = re.search(rf"epoch {epoch}/2 done in {number} s \((\d+) steps\): train loss=({number}), "
                         rf"loss_ctc={number}; valid loss=({number}), loss_ctc={number}; lr=(\S+)", text)
        assert line, text[-2000:]
        assert int(line[1]) == int(steps[0][1]) and float(line[4]) > 0
    # the epoch's validation loss is the one the checkpoints were chosen by
    valid = [v for _, v in read_metrics(tmp_path / "exp" / "csv")[1]]
    assert float(line[3]) == pytest.approx(valid[-1], abs=1e-3)


def test_unknown_config_key_fails_before_training(tmp_path, tiny_features):
    conf = tmp_path / "bad.yaml"
    conf.write_text(yaml.safe_dump({**KINDS["ctc"], **TRAINING, "max_epochs": 3}))
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key\(s\) \['max_epochs'\]"):
        load_config(conf)
    f = tiny_features
    p = run_entry("train", "--config", conf, "--train_data", f["feats"], "--valid_data", f["feats"], "--token_list",
                  f["tokens"], "--cmvn", f["cmvn"], "--exp_dir", tmp_path / "e")
    assert p.returncode == 1 and "unknown key(s) ['max_epochs']" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "e").exists()
    with pytest.raises(ConfigError, match="model: unknown kind 'rnnt'"):
        run_train({**TRAINING, "model": "rnnt"}, tmp_path / "e2", f)


def test_seed_option_replaces_the_configs_seed(tiny_features, tmp_path):
    """kd.sh --student_seeds trains one config once per seed: --seed N is that run's seed (stage 5's
    distill takes the same option), so the run starts from other weights."""
    from kdtool.bin.distill import get_parser as distill_parser

    cfg = {**KINDS["ctc"], **TRAINING, "max_epoch": 1, "keep_nbest_models": 1}
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    f = tiny_features
    p = run_entry("train", "--config", conf, "--train_data", f["feats"], "--valid_data", f["feats"], "--token_list",
                  f["tokens"], "--cmvn", f["cmvn"], "--exp_dir", tmp_path / "seed3", "--accelerator", "cpu",
                  "--seed", "3")
    assert p.returncode == 0, p.stderr
    run_train(cfg, tmp_path / "seed0", f)
    assert yaml.safe_load((tmp_path / "seed3" / "config.yaml").read_text())["seed"] == 3
    assert yaml.safe_load((tmp_path / "seed0" / "config.yaml").read_text())["seed"] == 0
    w3, w0 = (torch.load(tmp_path / e / "model.pth") for e in ("seed3", "seed0"))
    assert not all(torch.equal(w3[k], w0[k]) for k in w0)
    args = distill_parser().parse_args(["--config", "c", "--train_data", "t", "--valid_data", "v", "--token_list",
                                        "k", "--cmvn", "m", "--exp_dir", "e", "--seed", "2"])
    assert args.seed == 2


def test_empty_data_set_fails_before_training(tiny_features, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(tiny_features["feats"], empty)
    for name in ("feats.scp", "utt2num_frames", "text", "utt2spk", "spk2utt", "wav.scp"):
        (empty / name).write_text("")
    with pytest.raises(ValueError, match="the training set is empty"):
        train(resolve_config({**KINDS["ctc"], **TRAINING}), tmp_path / "e", empty, tiny_features["feats"],
              tiny_features["tokens"], tiny_features["cmvn"], accelerator="cpu", devices=1)


def test_loading_checks_weights_tokens_and_kind(tiny_features, tmp_path):
    exp = tmp_path / "e"
    run_train({**KINDS["ctc"], **TRAINING, "max_epoch": 1, "keep_nbest_models": 1}, exp, tiny_features)
    tokens = (exp / "tokens" / "tokens.txt").read_text().splitlines()
    (exp / "tokens" / "tokens.txt").write_text("\n".join(tokens[:-3] + ["<extra>"] + tokens[-2:]) + "\n")
    (exp / "tokens" / "tokens.txt").write_text("\n".join(tokens[:2] + ["X"] + tokens[2:]) + "\n")
    with pytest.raises(ValueError, match=r"tokens/tokens.txt: changed since training"):
        load_trained(exp)
    (exp / "sha256.json").unlink()  # an exp dir without the record (older kdtool) still fails on the shapes
    with pytest.raises(ValueError, match=rf"model.pth: does not fit a ctc model with the {len(tokens) + 1}-token list"):
        load_trained(exp)
    (exp / "tokens" / "tokens.txt").write_text("\n".join(tokens) + "\n")
    config = yaml.safe_load((exp / "config.yaml").read_text())
    (exp / "config.yaml").write_text(yaml.safe_dump({**config, **KINDS["ar"]}))
    with pytest.raises(ValueError, match="does not fit a ar model"):
        load_trained(exp)
    (exp / "config.yaml").write_text(yaml.safe_dump(config))
    (exp / "model.pth").unlink()
    with pytest.raises(FileNotFoundError, match=r"not a trained model dir: model.pth is missing"):
        load_trained(exp)


def test_each_epoch_sees_the_batches_in_another_order(tiny_features, tmp_path):
    seen = []

    def recording_loss(model, batch):
        if model.training:  # validation batches go through the loss too
            seen.append(tuple(batch["utts"]))
        return model(batch["feats"], batch["feats_lens"], batch["ys"], batch["ys_lens"])

    cfg = resolve_config({**KINDS["ctc"], **TRAINING, "max_epoch": 4, "batch_frames": 300})
    f = tiny_features
    train(cfg, tmp_path / "e", f["feats"], f["feats"], f["tokens"], f["cmvn"], accelerator="cpu", devices=1,
          loss_fn=recording_loss)
    n = len(seen) // 4
    epochs = [seen[i * n:(i + 1) * n] for i in range(4)]
    assert n >= 4 and all(sorted(e) == sorted(epochs[0]) for e in epochs)
    assert len(set(map(tuple, epochs))) > 1, "the batch order must change between epochs"


def test_two_process_ddp_on_cpu_uses_the_same_command(tiny_features, tmp_path):
    """DDP (gloo on CPU here; NCCL on GPUs) through lightning: `--devices 2` is all it takes."""
    conf = tmp_path / "train.yaml"
    conf.write_text(yaml.safe_dump({**KINDS["ctc"], **TRAINING}))
    f = tiny_features
    p = subprocess.run([sys.executable, "-m", "kdtool.bin.train", "--config", str(conf), "--train_data", str(f["feats"]),
                        "--valid_data", str(f["feats"]), "--token_list", str(f["tokens"]), "--cmvn", str(f["cmvn"]),
                        "--exp_dir", str(tmp_path / "ddp"), "--accelerator", "cpu", "--devices", "2"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in p.stderr
    assert load_trained(tmp_path / "ddp").model.kind == "ctc"


def test_patience_stops_a_training_whose_validation_loss_is_flat(tiny_features, tmp_path):
    # lr 0: the validation loss never improves after epoch 1, so patience 1 ends the run after epoch 2 of 20
    cfg = {**KINDS["ctc"], **TRAINING, "max_epoch": 20, "patience": 1, "keep_nbest_models": 1,
           "optim_conf": {"lr": 0.0}}
    info = run_train(cfg, tmp_path / "e", tiny_features)
    _, valid_curve = read_metrics(tmp_path / "e" / "csv")
    assert info["epochs"] == 2 and [e for e, _ in valid_curve] == [1, 2]
    assert (tmp_path / "e" / "model.pth").exists()


def test_a_run_killed_inside_an_epoch_resumes_there_and_ends_where_an_uninterrupted_run_would(tiny_features, tmp_path):
    """Epochs of a teacher on a CPU outlast a machine's loan: last.ckpt is also written inside an epoch
    (--checkpoint_minutes) and the rerun skips exactly the batches already trained."""
    cfg = {**KINDS["ctc"], **TRAINING, "max_epoch": 2, "batch_frames": 200, "keep_nbest_models": 1,
           "specaug_conf": {"apply_time_warp": False, "time_mask_width_range": [0, 5]}}
    cmd = train_command(cfg, tiny_features, tmp_path, "--checkpoint_minutes", "1e-9")

    subprocess.run(cmd(tmp_path / "clean"), check=True, capture_output=True)
    # one resume point: the epoch ends' saves and the periodic ones share last.ckpt
    assert sorted(p.name for p in (tmp_path / "clean" / "checkpoints").iterdir()) == ["epoch001.ckpt", "last.ckpt"]
    proc = subprocess.Popen(cmd(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last, deadline = tmp_path / "killed" / "checkpoints" / "last.ckpt", time.time() + 120
    while not last.exists() and time.time() < deadline:  # written after the first batch, long before epoch 1 ends
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(last, weights_only=False)
    trained = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_trained"]
    assert state["epoch"] == 0 and 0 < trained, "the kill should land inside the first epoch"
    subprocess.run(cmd(tmp_path / "killed"), check=True, capture_output=True)
    clean, resumed = torch.load(tmp_path / "clean" / "model.pth"), torch.load(tmp_path / "killed" / "model.pth")
    for k in clean:
        torch.testing.assert_close(resumed[k], clean[k], rtol=0, atol=0, msg=k)


def test_a_run_carried_elsewhere_as_last_ckpt_alone_averages_the_checkpoints_it_has(tiny_features, tmp_path):
    """A long training carried to another machine with its resume point only (the shipped teachers':
    egs/mini_en/kd1/local/teachers_in_training.sh) has a record of best epochs whose files stayed behind."""
    cfg = {**KINDS["ctc"], **TRAINING}
    run_train(cfg, tmp_path / "a", tiny_features)
    carried = tmp_path / "b"
    (carried / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "cmvn.ark", "tokens"):
        (shutil.copytree if name == "tokens" else shutil.copy2)(tmp_path / "a" / name, carried / name)
    shutil.copy2(tmp_path / "a" / "checkpoints" / "last.ckpt", carried / "checkpoints" / "last.ckpt")
    info = run_train(cfg, carried, tiny_features)
    assert list(info["averaged"]) == ["last.ckpt"]
    last = torch.load(carried / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    model = torch.load(carried / "model.pth")
    for k, v in model.items():
        torch.testing.assert_close(v, last[f"model.{k}"], msg=k)
