"""Stage 2 pieces: fbank in parallel jobs, resumable after a kill; CMVN; speed perturbation."""
import os
import signal
import subprocess
import sys
import time

import kaldiio
import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from kdtool.data.audio import load_audio
from kdtool.data.datadir import DataDir, DataDirError
from kdtool.data.perturb import speed_perturb
from kdtool.data.validate import validate_data_dir
from kdtool.features.cmvn import accumulate_stats, apply_cmvn, compute_cmvn, load_cmvn
from kdtool.features.fbank import compute_fbank_job, fbank, merge_fbank_jobs
from kdtool.utils.jobs import job_slice


def load_feats(out_dir):
    return {k: v for k, v in kaldiio.load_scp(str(out_dir / "feats.scp")).items()}


def extract(data_dir, out_dir, nj):
    for job in range(1, nj + 1):
        compute_fbank_job(data_dir, out_dir, job, nj)
    merge_fbank_jobs(data_dir, out_dir, nj)
    return load_feats(out_dir)


def test_fbank_matches_what_sherpa_onnx_computes(tiny_wavs):
    """sherpa-onnx computes kaldi-native-fbank with these options from audio in [-1, 1]; a model
    decoded there from raw audio must have been trained on the same numbers."""
    import kaldi_native_fbank as knf
    samples, rate = load_audio(str(tiny_wavs["spka-u1"]))
    feats = fbank(samples, rate)
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = rate
    opts.frame_opts.dither = 0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20
    opts.mel_opts.high_freq = -400
    online = knf.OnlineFbank(opts)
    online.accept_waveform(rate, samples.tolist())
    online.input_finished()
    ref = np.stack([online.get_frame(i) for i in range(online.num_frames_ready)])
    # snip_edges false: frames centred every 10 ms, T = round(samples / 160)
    assert feats.shape == ref.shape == ((len(samples) + 80) // 160, 80)
    np.testing.assert_allclose(feats, ref, atol=2e-3)
    # the int16 scale (kdtool before) is a different feature: log(32768^2) = 20.8 higher everywhere
    old = kaldi.fbank(torch.from_numpy(samples)[None] * 32768, num_mel_bins=80, dither=0.0, snip_edges=False,
                      high_freq=-400)
    assert np.abs(old.numpy() - feats).mean() > 20


def test_job_slices_cover_everything_in_order():
    items = list(range(10))
    parts = [job_slice(items, j, 3) for j in (1, 2, 3)]
    assert sum(parts, []) == items and all(parts)
    with pytest.raises(ValueError, match="job 4 is outside 1..3"):
        job_slice(items, 4, 3)


def test_parallel_jobs_give_the_same_features_as_one(tiny_datadir, tmp_path):
    one = extract(tiny_datadir.path, tmp_path / "one", 1)
    three = extract(tiny_datadir.path, tmp_path / "three", 3)
    assert list(one) == list(three) == tiny_datadir.utts
    for utt in one:
        np.testing.assert_array_equal(one[utt], three[utt])
    out = DataDir(tmp_path / "three")
    assert {u: int(n) for u, n in out.read("utt2num_frames").items()} == {u: f.shape[0] for u, f in one.items()}
    validate_data_dir(out.path, require_text=True)  # the dump dir is a complete data dir of its own


def test_merge_refuses_unfinished_jobs(tiny_datadir, tmp_path):
    compute_fbank_job(tiny_datadir.path, tmp_path / "f", 1, 2)
    with pytest.raises(DataDirError, match=r"feats.2.scp: missing: feature job 2 of 2 did not finish"):
        merge_fbank_jobs(tiny_datadir.path, tmp_path / "f", 2)


def test_wrong_sample_rate_names_the_utterance(tiny_datadir, tmp_path):
    with pytest.raises(DataDirError, match=r"wav.scp: utterance spka-u1: audio .* has sample rate 16000 Hz, "
                                           r"expected 8000 Hz"):
        compute_fbank_job(tiny_datadir.path, tmp_path / "f", 1, 1, sample_rate=8000)
    assert not list((tmp_path / "f" / "data").glob("*")), "a failed job must leave no output behind"


def test_killed_extraction_reruns_to_the_clean_result(tiny_datadir, tmp_path):
    # Many utterances (each audio read through a slow pipe) so the kill lands mid-job.
    d = DataDir(tiny_datadir.path)
    scp = {f"{u}-{i:02d}": f"sleep 0.05; cat {p} |" for i in range(12) for u, p in d.read("wav.scp").items()}
    many = DataDir.write(tmp_path / "many", scp, {u: u.split("-")[0] for u in scp})
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "kdtool.bin.compute_fbank", "--nj", "1", "--job", "1", str(many.path), str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while not list((out / "data").glob("feats.1.ark.tmp.*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "data" / "feats.1.scp").exists(), "the kill should have landed mid-job"
    subprocess.run(cmd, check=True, capture_output=True)
    merge_fbank_jobs(many.path, out, 1)
    rerun, clean = load_feats(out), extract(many.path, tmp_path / "clean", 1)
    assert list(rerun) == list(clean) and len(rerun) == 72
    for utt in clean:
        np.testing.assert_array_equal(rerun[utt], clean[utt])


def test_cmvn_stats_and_normalization(tiny_datadir, tmp_path):
    feats = extract(tiny_datadir.path, tmp_path / "f", 2)
    stats = compute_cmvn(tmp_path / "f" / "feats.scp", tmp_path / "f" / "cmvn.ark")
    allf = np.concatenate(list(feats.values())).astype(np.float64)
    np.testing.assert_allclose(load_cmvn(tmp_path / "f" / "cmvn.ark"), stats)
    assert stats.shape == (2, 81) and stats[0, -1] == len(allf)
    np.testing.assert_allclose(stats[0, :-1], allf.sum(0), rtol=1e-6)
    np.testing.assert_allclose(stats[1, :-1], (allf ** 2).sum(0), rtol=1e-6)
    normed = apply_cmvn(allf, stats)
    np.testing.assert_allclose(normed.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(normed.std(0), 1, atol=1e-3)
    with pytest.raises(ValueError, match="no features"):
        accumulate_stats([])


def test_speed_perturbation(tiny_datadir, tmp_path):
    sp = speed_perturb(tiny_datadir.path, tmp_path / "sp", factors=(0.9, 1.0, 1.1))
    validate_data_dir(sp.path, check_audio=True, sample_rate=16000, require_text=True)
    assert len(sp.utts) == 18
    assert sp.read("utt2spk")["sp0.9-spka-u1"] == "sp0.9-spka"
    assert sp.read("text")["sp1.1-spkb-u2"] == "TIME FLIES LIKE AN ARROW"
    n = {f: len(load_audio(sp.read("wav.scp")[f"sp{f}-spka-u3"])[0]) for f in (0.9, 1.0, 1.1)}
    assert n[0.9] == pytest.approx(n[1.0] / 0.9, rel=0.01)  # slower speech is longer, same sample rate
    assert n[1.1] == pytest.approx(n[1.0] / 1.1, rel=0.01)
    (tiny_datadir.path / "text").unlink()
    with pytest.raises(DataDirError, match="needs a transcribed data dir"):
        speed_perturb(tiny_datadir.path, tmp_path / "sp2")
