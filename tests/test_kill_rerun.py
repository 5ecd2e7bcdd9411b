"""The kill-and-rerun property for decoding (stage 6) and N-best lists (stage 4): a SIGKILL at a random
point of the work, then a rerun, gives the output of an uninterrupted run. (Features, soft labels and
training have theirs in test_features, test_dump_soft_labels and test_train.)"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import torch
import yaml

from kdtool.data.datadir import read_table, write_table
from kdtool.models.build import build_model
from kdtool.models.load import write_checksums
from kdtool.train.config import resolve_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENCODER = {"encoder": "transformer", "encoder_conf": {"output_size": 16, "attention_heads": 2, "linear_units": 16,
                                                      "num_blocks": 1}}


def random_exp_dir(root, kind, tiny_features):
    """An exp dir as training leaves it, with random weights: what is decoded does not matter here,
    only that a rerun decodes it the same way."""
    exp = root / kind
    extra = {"decoder_conf": {"attention_heads": 2, "linear_units": 16, "num_blocks": 1}} if kind == "ar" else {}
    cfg = resolve_config({"model": kind, **ENCODER, **extra})
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.copytree(tiny_features["tokens"], exp / "tokens")
    shutil.copy(tiny_features["cmvn"], exp / "cmvn.ark")
    n_tokens = len((exp / "tokens" / "tokens.txt").read_text().split())
    torch.manual_seed(0)
    model = build_model({k: cfg[k] for k in ("model", "encoder", "encoder_conf", *extra)}, n_tokens)
    torch.save(model.state_dict(), exp / "model.pth")
    write_checksums(exp)
    return exp


def repeated(src, dst, copies):
    """A feature dir of the tiny utterances repeated ``copies`` times under new ids (no text)."""
    dst.mkdir()
    feats, frames = read_table(src / "feats.scp"), read_table(src / "utt2num_frames")
    ids = {f"{u}-r{i:03d}": u for u in feats for i in range(copies)}
    write_table(dst / "feats.scp", {n: feats[u] for n, u in ids.items()})
    write_table(dst / "utt2num_frames", {n: frames[u] for n, u in ids.items()})
    write_table(dst / "utt2spk", {n: n.split("-")[0] for n in ids})
    return dst


def start(cmd, log):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=ENV, start_new_session=True)


def wait_for(marker, log, proc, deadline=300):
    """Wait until the job's log shows ``marker`` (its progress bar: the work has begun)."""
    end = time.time() + deadline
    while marker not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"the job ended before it began its work: {log.read_text()[-2000:]}"
        assert time.time() < end, f"no {marker!r} in {log} after {deadline} s"
        time.sleep(0.01)


def timed_run(cmd, marker, log):
    """Run ``cmd`` to the end; return the seconds from ``marker`` to its exit."""
    proc = start(cmd, log)
    wait_for(marker, log, proc)
    begun = time.time()
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    return time.time() - begun


def kill_at_random_point(cmd, marker, log, work_seconds, seed):
    """Start ``cmd``, and SIGKILL it (its whole session) at a random point of its work."""
    proc = start(cmd, log)
    wait_for(marker, log, proc)
    time.sleep(random.Random(seed).uniform(0.05, 0.6) * work_seconds)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the kill (seed {seed}) came after the job had ended"


def test_killed_decode_reruns_to_the_uninterrupted_result(tiny_features, tmp_path, seed=1):
    exp = random_exp_dir(tmp_path, "ctc", tiny_features)
    data = repeated(tiny_features["feats"], tmp_path / "long", 50)
    conf = tmp_path / "decode.yaml"
    conf.write_text("method: ctc_greedy\nbatch_size: 1\n")

    def cmd(out):
        return [sys.executable, "-m", "kdtool.bin.decode", "--model_dir", str(exp), "--data", str(data),
                "--config", str(conf), "--out_dir", str(out)]

    seconds = timed_run(cmd(tmp_path / "clean"), "decode:", tmp_path / "clean.log")
    kill_at_random_point(cmd(tmp_path / "killed"), "decode:", tmp_path / "killed.log", seconds, seed)
    assert not (tmp_path / "killed" / "decode_info.json").exists()
    subprocess.run(cmd(tmp_path / "killed"), check=True, capture_output=True, env=ENV, timeout=600)
    clean, rerun = tmp_path / "clean", tmp_path / "killed"
    assert (rerun / "text").read_text() == (clean / "text").read_text()
    assert len(read_table(rerun / "text", allow_empty=True)) == 300
    info = [json.loads((d / "decode_info.json").read_text()) for d in (clean, rerun)]
    assert info[0]["inputs"] == info[1]["inputs"] and info[0]["utterances"] == info[1]["utterances"]


def test_killed_nbest_job_reruns_to_the_uninterrupted_lists(tiny_features, tmp_path, seed=1):
    teacher = random_exp_dir(tmp_path, "ar", tiny_features)
    data = repeated(tiny_features["feats"], tmp_path / "long", 2)

    def cmd(out):  # one job, merged at its end
        return [sys.executable, "-m", "kdtool.bin.dump_nbest", "--teacher", str(teacher), "--data", str(data),
                "--out_dir", str(out), "--nbest", "2", "--beam_size", "2", "--batch_size", "2"]

    seconds = timed_run(cmd(tmp_path / "clean"), "nbest job", tmp_path / "clean.log")
    killed = tmp_path / "killed"
    kill_at_random_point(cmd(killed), "nbest job", tmp_path / "killed.log", seconds, seed)
    assert not (killed / "nbest.1.jsonl").exists() and not (killed / "nbest.jsonl").exists()
    subprocess.run(cmd(killed), check=True, capture_output=True, env=ENV, timeout=600)
    assert (killed / "nbest.jsonl").read_text() == (tmp_path / "clean" / "nbest.jsonl").read_text()
    assert len((killed / "nbest.jsonl").read_text().splitlines()) == 12
