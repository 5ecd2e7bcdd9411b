"""Stage 4: dump_soft_labels writes a teacher's frame / forward-backward posteriors, in jobs."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from kdtool.data.datadir import read_table, write_table
from kdtool.kd.dump import dump_job, merge_dump
from kdtool.kd.forward_backward import ctc_occupancies
from kdtool.kd.softlabels import SoftLabelReader, to_topk, tokens_sha256
from kdtool.models.asr import subsampled_length
from kdtool.models.build import MODEL_KEYS, build_model
from kdtool.models.load import load_trained
from kdtool.train.dataset import SpeechDataset

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
T = 2.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return tiny_teacher


@pytest.fixture(scope="module")
def expected(teacher, tiny_features):
    """The teacher's CTC logits per utterance, computed one utterance at a time, and the transcripts."""
    t = load_trained(teacher)
    ds = SpeechDataset(tiny_features["feats"], t.tokenizer, cmvn_path=teacher / "cmvn.ark")
    logits, ys = {}, {}
    with torch.no_grad():
        for utt in ds.utts:
            item = ds[utt]
            enc, _ = t.model.encode(item["feats"][None], torch.tensor([item["feats"].shape[0]]))
            logits[utt] = t.model.ctc.ctc_lo(enc)[0]
            assert logits[utt].shape[0] == subsampled_length(t.model, ds.num_frames[utt])
            ys[utt] = item["ys"]
    return {"logits": logits, "ys": ys, "model": t.model}


def cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "kdtool.bin.dump_soft_labels", *map(str, args)],
                       capture_output=True, text=True, env=ENV, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def common(teacher, data, out, *extra):
    return ["--teacher", teacher, "--data", data, "--out_dir", out, *extra]


@pytest.fixture(scope="module")
def dense_dump(teacher, tiny_features, tmp_path_factory):
    out = tmp_path_factory.mktemp("dumps") / "dense"
    args = common(teacher, tiny_features["feats"], out, "--type", "frame_posteriors", "--temperature", T, "--nj", 2)
    for job in (1, 2):
        cli(*args, "--job", job)
    assert not (out / "soft_labels.scp").exists()
    cli(*args, "--merge")
    return out


def test_dense_frame_posteriors_through_the_cli_in_two_jobs(dense_dump, teacher, expected):
    reader = SoftLabelReader(dense_dump, tokens_path=teacher / "tokens" / "tokens.txt")
    assert reader.topk is None and reader.meta["type"] == "frame_posteriors" and reader.meta["temperature"] == T
    assert reader.meta["tokens_sha256"] == tokens_sha256(teacher / "tokens" / "tokens.txt")
    assert reader.meta["subsampling"] == 4 and reader.meta["frame_shift_ms"] == 40
    assert Path(reader.meta["teacher"]) == teacher.resolve()
    assert sorted(reader.keys()) == sorted(expected["logits"])
    assert (dense_dump / "soft_labels.1.scp").is_file() and (dense_dump / "soft_labels.2.scp").is_file()
    for utt, logits in expected["logits"].items():
        probs = reader.dense(utt)
        assert probs.shape == logits.shape
        torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)), atol=1e-5, rtol=0)
        torch.testing.assert_close(probs, torch.softmax(logits / T, -1), atol=1e-5, rtol=1e-4)
    info = json.loads((dense_dump / "dump_info.json").read_text())
    V = reader.vocab_size
    assert info["utterances"] == 6 and info["skipped"] == 0 and info["nj"] == 2
    assert info["frames"] == sum(len(x) for x in expected["logits"].values())
    assert info["dense_bytes_per_frame"] == 4 * V and 4 * V <= info["bytes_per_frame"] < 4 * V + 20
    assert info["seconds"] > 0 and info["frames_per_second"] > 0
    assert (info["type"], info["topk"], info["temperature"], info["vocab_size"]) == ("frame_posteriors", None, T, V)


def test_topk_frame_posteriors_and_their_storage(dense_dump, teacher, tiny_features, expected, tmp_path):
    out = tmp_path / "top3"
    args = common(teacher, tiny_features["feats"], out, "--topk", 3, "--temperature", T, "--nj", 2)
    cli(*args, "--job", 2)
    cli(*args, "--job", 1)
    cli(*args, "--merge")
    reader = SoftLabelReader(out)
    assert reader.topk == 3
    for utt, logits in expected["logits"].items():
        ids, probs = reader.sparse(utt)
        want_ids, want_probs = to_topk(torch.softmax(logits / T, -1), 3)
        assert torch.equal(ids, want_ids), utt
        torch.testing.assert_close(probs, want_probs, atol=1 / 255 + 1e-5, rtol=0)  # stored in 1/255 steps
    info, dense = (json.loads((d / "dump_info.json").read_text()) for d in (out, dense_dump))
    assert info["bytes_per_frame"] < dense["bytes_per_frame"] and info["bytes_per_frame"] < 8 * 3 + 20
    assert info["topk"] == 3 and info["frames"] == dense["frames"]
    # --topk 0 means dense
    cli(*common(teacher, tiny_features["feats"], tmp_path / "k0", "--topk", 0))
    assert SoftLabelReader(tmp_path / "k0").topk is None


def test_fb_posteriors_equal_ctc_occupancies(teacher, tiny_features, expected, tmp_path):
    out = tmp_path / "fb"
    info = dump_job(teacher, tiny_features["feats"], out, "fb_posteriors", temperature=3.0, batch_size=4)
    assert info["utterances"] == 6
    merge_dump(out, 1)
    reader = SoftLabelReader(out)
    assert reader.meta["type"] == "fb_posteriors" and reader.meta["temperature"] == 1.0
    for utt, logits in expected["logits"].items():
        probs = reader.dense(utt)
        torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)), atol=1e-4, rtol=0)
        want = ctc_occupancies(torch.log_softmax(logits, -1), expected["ys"][utt])
        torch.testing.assert_close(probs, want, atol=1e-4, rtol=1e-3)
    assert json.loads((out / "dump_info.json").read_text())["temperature"] == 1.0


def test_teacher_without_weights_is_a_one_line_error(teacher, tiny_features, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.yaml", "cmvn.ark", "tokens"):
        (shutil.copytree if name == "tokens" else shutil.copy)(teacher / name, bare / name)
    p = cli(*common(bare, tiny_features["feats"], tmp_path / "out"), check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "not a trained model dir: model.pth is missing" in p.stderr


def test_teacher_without_ctc_head_is_an_error(teacher, tiny_features, tmp_path):
    exp = tmp_path / "rnnt"
    shutil.copytree(teacher, exp, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "csv"))
    config = {**yaml.safe_load((teacher / "config.yaml").read_text()), "model": "transducer", "model_conf": {"ctc_weight": 0.0},
              "decoder_conf": {"hidden_size": 16}, "joint_net_conf": {"joint_space_size": 16}}
    (exp / "config.yaml").write_text(yaml.safe_dump(config))
    V = len((teacher / "tokens" / "tokens.txt").read_text().splitlines())
    model = build_model({k: v for k, v in config.items() if k in MODEL_KEYS}, V, input_size=80)
    torch.save(model.state_dict(), exp / "model.pth")
    with pytest.raises(ValueError, match=r"has no CTC head \(ctc_weight 0\?\)"):
        dump_job(exp, tiny_features["feats"], tmp_path / "out")


def test_fb_posteriors_need_transcripts(teacher, tiny_features, tmp_path):
    untrans = tmp_path / "untrans"
    shutil.copytree(tiny_features["feats"], untrans)
    (untrans / "text").unlink()
    p = cli(*common(teacher, untrans, tmp_path / "out", "--type", "fb_posteriors"), check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "no text file: --type fb_posteriors needs transcripts" in p.stderr
    # frame posteriors need none
    cli(*common(teacher, untrans, tmp_path / "fp"))
    assert len(SoftLabelReader(tmp_path / "fp")) == 6


def test_unalignable_utterance_fails_or_is_skipped(teacher, tiny_features, tmp_path):
    data = tmp_path / "long_text"
    shutil.copytree(tiny_features["feats"], data)
    text = read_table(data / "text")
    text["spkb-u2"] = " ".join(["ALL THAT GLITTERS IS NOT GOLD"] * 12)
    write_table(data / "text", text)
    args = common(teacher, data, tmp_path / "out", "--type", "fb_posteriors")
    p = cli(*args, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "utterance spkb-u2:" in p.stderr and "cannot align" in p.stderr and "--skip_bad true" in p.stderr
    assert not (tmp_path / "out" / "soft_labels.scp").exists()
    info = dump_job(teacher, data, tmp_path / "out", "fb_posteriors", skip_bad=True)
    assert info["skipped"] == 1 and info["skipped_utts"] == ["spkb-u2"] and info["utterances"] == 5
    merged = merge_dump(tmp_path / "out", 1)
    assert merged["skipped"] == 1 and merged["utterances"] == 5
    reader = SoftLabelReader(tmp_path / "out")
    assert "spkb-u2" not in reader and len(reader) == 5


def test_killed_job_reruns_to_complete_identical_arks(teacher, tiny_features, tmp_path):
    # many utterances: the 6 tiny ones repeated under new ids, no text (frame posteriors need none)
    src = tiny_features["feats"]
    data = tmp_path / "long"
    data.mkdir()
    feats, frames = read_table(src / "feats.scp"), read_table(src / "utt2num_frames")
    copies = {f"{u}-r{i:03d}": u for u in feats for i in range(150)}
    write_table(data / "feats.scp", {n: feats[u] for n, u in copies.items()})
    write_table(data / "utt2num_frames", {n: frames[u] for n, u in copies.items()})
    write_table(data / "utt2spk", {n: n.split("-")[0] for n in copies})

    def cmd(out):
        return [sys.executable, "-m", "kdtool.bin.dump_soft_labels",
                *map(str, common(teacher, data, out, "--batch_size", 2, "--temperature", T))]

    subprocess.run(cmd(tmp_path / "clean"), check=True, capture_output=True, env=ENV, timeout=120)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if any(p.stat().st_size > 0 for p in killed.glob("soft_labels.1.ark.tmp.*")):
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the kill should land while the job writes"
    assert list(killed.glob("soft_labels.1.ark.tmp.*")), "the job had started writing"
    for name in ("soft_labels.1.ark", "soft_labels.1.scp", "soft_labels.scp", "dump_info.json"):
        assert not (killed / name).exists(), name
    subprocess.run(cmd(killed), check=True, capture_output=True, env=ENV, timeout=120)
    clean, rerun = SoftLabelReader(tmp_path / "clean"), SoftLabelReader(killed)
    assert clean.keys() == rerun.keys() and len(rerun) == len(copies)
    for utt in rerun.keys():
        assert torch.equal(clean.dense(utt), rerun.dense(utt)), utt
    # repeats of an utterance got the same posteriors as the original
    torch.testing.assert_close(rerun.dense("spka-u1-r007"), rerun.dense("spka-u1-r000"), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("type, need", [("token_posteriors", "ar"), ("rnnt_lattice", "transducer")])
def test_teacher_of_the_wrong_kind_is_an_error(teacher, tiny_features, tmp_path, type, need):
    with pytest.raises(ValueError, match=rf"ctc_teacher: {type} come from an {need} teacher, not a ctc model"):
        dump_job(teacher, tiny_features["feats"], tmp_path / "out", type=type)


def test_nbest_needs_an_ar_teacher_and_nbest_within_the_beam(teacher, tiny_features, tmp_path):
    from kdtool.kd.nbest import dump_nbest_job
    with pytest.raises(ValueError, match=r"ctc_teacher: N-best lists come from an ar teacher, not a ctc model"):
        dump_nbest_job(teacher, tiny_features["feats"], tmp_path / "nb")
    assert not (tmp_path / "nb").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("module", ["dump_soft_labels", "dump_nbest"])
def test_unavailable_device_is_a_one_line_error_before_any_work(teacher, tiny_features, tmp_path, module):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", f"kdtool.bin.{module}",
                        *map(str, common(teacher, tiny_features["feats"], out)), "--device", "cuda"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "--device cuda: CUDA is not available on this machine" in p.stderr
    assert not out.exists()


def test_merge_needs_no_device(dense_dump, teacher, tiny_features, tmp_path):
    """kd.sh merges on the machine that runs it, which may have no GPU: --merge ignores --device."""
    from unittest import mock

    from kdtool.bin import dump_soft_labels
    out = tmp_path / "copy"
    shutil.copytree(dense_dump, out)
    (out / "dump_info.json").unlink()
    argv = ["dump_soft_labels", *map(str, common(teacher, tiny_features["feats"], out)), "--nj", "2", "--merge",
            "--device", "cuda:7"]
    with mock.patch.object(sys, "argv", argv):
        dump_soft_labels.main()
    assert json.loads((out / "dump_info.json").read_text())["utterances"] == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("type", ["frame_posteriors", "fb_posteriors"])
def test_cuda_dump_equals_the_cpu_dump(teacher, tiny_features, tmp_path, monkeypatch, type):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full float32, as on the CPU
    for device in ("cpu", "cuda"):
        dump_job(teacher, tiny_features["feats"], tmp_path / device, type, temperature=T, device=device)
        merge_dump(tmp_path / device, 1)
    cpu, gpu = SoftLabelReader(tmp_path / "cpu"), SoftLabelReader(tmp_path / "cuda")
    assert sorted(gpu.keys()) == sorted(cpu.keys()) and len(cpu) == 6
    for utt in cpu.keys():
        torch.testing.assert_close(gpu.dense(utt), cpu.dense(utt), atol=1e-4, rtol=1e-3)
