"""Bad input to stages 1-2 (and what later stages read of them): each class of it fails with one
message naming the file, the utterance and what is wrong; nothing silently writes wrong output.
(tests/test_reliability.py feeds a larger table of bad inputs through the entry points.)"""
import json
import logging
import subprocess
import sys

import kaldiio
import numpy as np
import pytest
import soundfile
import torch

from conftest import run_entry
from kdtool.data.audio import AudioError, load_audio
from kdtool.data.datadir import DataDir, DataDirError, read_table
from kdtool.data.validate import validate_data_dir
from kdtool.features.cmvn import load_cmvn
from kdtool.features.fbank import compute_fbank_job, merge_fbank_jobs
from kdtool.models.load import load_weights
from kdtool.utils.lock import LockedError, hold_lock


def cli(module, *args):
    """Run entry point ``module`` in this process as its __main__ does; return (exit code, error log)."""
    r = run_entry(module, *args)
    return r.returncode, r.stderr


def set_entry(datadir, utt, entry, name="wav.scp"):
    path = datadir.path / name
    table = read_table(path)
    table[utt] = entry
    path.write_text("".join(f"{k} {v}\n" for k, v in table.items()))


def nan_wav(path, src):
    samples, rate = load_audio(str(src))
    samples[1000:1003] = np.nan
    soundfile.write(path, samples, rate, subtype="FLOAT")
    return path


def cut_wav(path, src, keep_bytes=8000):
    path.write_bytes(src.read_bytes()[:keep_bytes])  # header intact, most samples gone
    return path


# (a) audio that would make bad features

@pytest.mark.parametrize("make", ["nan_file", "truncated_file", "truncated_pipe"])
def test_bad_audio_is_refused_by_validation_and_extraction(tiny_datadir, tiny_wavs, tmp_path, make):
    src = tiny_wavs["spkb-u2"]
    entry, expect = {
        "nan_file": (str(nan_wav(tmp_path / "nan.wav", src)), r"has 3 non-finite samples \(NaN or inf\)"),
        "truncated_file": (str(cut_wav(tmp_path / "cut.wav", src)), r"is cut short: 3978 samples where its header"),
        "truncated_pipe": (f"head -c 8000 {src} |", r"is cut short: 3978 samples where its header"),
    }[make]
    set_entry(tiny_datadir, "spkb-u2", entry)
    with pytest.raises(DataDirError, match=r"wav.scp: utterance spkb-u2: audio .*" + expect):
        validate_data_dir(tiny_datadir.path, check_audio=True)
    with pytest.raises(DataDirError, match=r"wav.scp: utterance spkb-u2: audio .*" + expect):
        compute_fbank_job(tiny_datadir.path, tmp_path / "f", 1, 1)
    assert not (tmp_path / "f" / "data" / "feats.1.scp").exists()


def test_pipe_with_unknown_length_is_not_mistaken_for_truncated(tiny_wavs):
    # sox writing to a pipe cannot seek back to fix the header: it promises 0x7ffff000 bytes
    samples, _ = load_audio(f"sox {tiny_wavs['spka-u1']} -t wav - speed 0.9 |")
    full, _ = load_audio(str(tiny_wavs["spka-u1"]))
    assert len(samples) == pytest.approx(len(full) / 0.9, rel=0.01)


def test_cmvn_refuses_non_finite_features(tiny_datadir, tmp_path):
    out = tmp_path / "f"
    compute_fbank_job(tiny_datadir.path, out, 1, 1)
    merge_fbank_jobs(tiny_datadir.path, out, 1)
    feats = dict(kaldiio.load_scp(str(out / "feats.scp")).items())
    feats["spka-u3"] = feats["spka-u3"].copy()
    feats["spka-u3"][5, 7] = np.nan
    kaldiio.save_ark(str(out / "nan.ark"), feats, scp=str(out / "feats.scp"))
    code, log = cli("compute_cmvn", out / "feats.scp", out / "cmvn.ark")
    assert code == 1 and "feats.scp: utterance spka-u3: features hold NaN or inf" in log
    assert not (out / "cmvn.ark").exists()
    # statistics written by something else are checked where they are loaded
    kaldiio.save_mat(str(out / "cmvn.ark"), np.full((2, 81), np.nan))
    with pytest.raises(DataDirError, match=r"cmvn.ark: CMVN statistics are not finite"):
        load_cmvn(out / "cmvn.ark")


# (b) stale outputs, empty data dirs, job options

def test_a_feature_job_removes_the_stale_merged_scp(tiny_datadir, tmp_path):
    out = tmp_path / "f"
    for job in (1, 2):
        compute_fbank_job(tiny_datadir.path, out, job, 2)
    merge_fbank_jobs(tiny_datadir.path, out, 2)
    assert (out / "feats.scp").exists()
    set_entry(tiny_datadir, "spka-u1", str(tiny_datadir.read("wav.scp")["spkb-u1"]))  # the data changes
    compute_fbank_job(tiny_datadir.path, out, 1, 2)  # job 2 of the new run is then killed: never runs
    assert not (out / "feats.scp").exists() and not (out / "utt2num_frames").exists()


def test_empty_data_dir_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("wav.scp", "utt2spk", "spk2utt", "text"):
        (empty / name).write_text("")
    with pytest.raises(DataDirError, match=r"empty/utt2spk: no utterances: the data dir is empty"):
        validate_data_dir(empty)
    code, log = cli("compute_fbank", empty, tmp_path / "f")
    assert code == 1 and "no utterances" in log and not (tmp_path / "f" / "feats.scp").exists()


@pytest.mark.parametrize("args, expect", [
    (["--nj", "2"], "--nj 2 without --job: run each of the 2 jobs with --job N"),
    (["--nj", "2", "--job", "0"], "--job 0: outside 1..2"),
    (["--nj", "2", "--job", "3"], "--job 3: outside 1..2"),
    (["--nj", "0"], "--nj 0: the number of jobs must be at least 1"),
    (["--nj", "2", "--merge"], "feats.1.scp: missing: feature job 1 of 2 did not finish"),
])
def test_job_options_that_would_run_the_wrong_work_are_refused(tiny_datadir, tmp_path, args, expect):
    code, log = cli("compute_fbank", *args, tiny_datadir.path, tmp_path / "f")
    assert code == 1 and expect in log
    assert not list((tmp_path / "f").glob("**/feats*.scp"))


# (c) wav.scp commands: stdin closed, a timeout, the utterance and command named

def test_a_command_that_reads_stdin_does_not_hang(tiny_datadir, tmp_path):
    set_entry(tiny_datadir, "spka-u2", "cat |")  # would wait for a terminal forever
    # run as from a terminal: our stdin stays open and silent, so a command that inherited it would wait
    with open(tmp_path / "err", "w") as err:
        cmd = [sys.executable, "-m", "kdtool.bin.validate_data_dir", "--audio", str(tiny_datadir.path)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            proc.wait(timeout=120)  # not communicate(): it would close our end of stdin
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("validate_data_dir hung on a wav.scp command that reads stdin")
        finally:
            proc.stdin.close()
    assert proc.returncode == 1
    assert "wav.scp: utterance spka-u2: command wrote nothing (one that reads stdin gets it closed): cat" in \
        (tmp_path / "err").read_text()


def test_a_command_that_never_ends_times_out(tiny_datadir, tiny_wavs, tmp_path):
    set_entry(tiny_datadir, "spka-u2", f"sleep 1000; cat {tiny_wavs['spka-u2']} |")
    code, log = cli("compute_fbank", "--cmd_timeout", "1", tiny_datadir.path, tmp_path / "f")
    assert code == 1
    assert f"wav.scp: utterance spka-u2: command did not finish in 1 s" in log
    assert f"sleep 1000; cat {tiny_wavs['spka-u2']}" in log


def test_failing_command_names_utterance_and_command(tiny_datadir, tmp_path):
    set_entry(tiny_datadir, "spkb-u1", "sox /no/such.wav -t wav - |")
    with pytest.raises(DataDirError, match=r"utterance spkb-u1: command failed \(\d+\): sox /no/such.wav -t wav -"):
        compute_fbank_job(tiny_datadir.path, tmp_path / "f", 1, 1)


# (d) tracebacks that are messages now

def test_wav_scp_missing_an_utterance(tiny_datadir, tmp_path):
    scp = tiny_datadir.path / "wav.scp"
    scp.write_text("".join(ln + "\n" for ln in scp.read_text().splitlines() if not ln.startswith("spkb-u3 ")))
    code, log = cli("compute_fbank", tiny_datadir.path, tmp_path / "f")
    assert code == 1 and "wav.scp: utterance spkb-u3 is in utt2spk but not in wav.scp" in log


def test_byte_order_mark_is_named_and_fix_removes_it(tiny_datadir, tmp_path):
    scp = tiny_datadir.path / "wav.scp"
    scp.write_bytes(b"\xef\xbb\xbf" + scp.read_bytes())
    code, log = cli("compute_fbank", tiny_datadir.path, tmp_path / "f")
    assert code == 1 and "wav.scp:1: starts with a byte-order mark" in log and "fix_data_dir" in log
    assert cli("fix_data_dir", tiny_datadir.path)[0] == 0
    assert validate_data_dir(tiny_datadir.path).utts[0] == "spka-u1"
    assert (tiny_datadir.path / ".backup" / "wav.scp").read_bytes().startswith(b"\xef\xbb\xbf")


def test_non_utf8_text_names_file_and_line(tiny_datadir):
    text = tiny_datadir.path / "text"
    text.write_bytes(text.read_bytes().replace(b"LAZY", b"L\xc4ZY"))  # Latin-1 A-umlaut
    code, log = cli("validate_data_dir", tiny_datadir.path)
    assert code == 1 and "text:2: not UTF-8 (byte 0xc4)" in log


def test_damaged_or_mismatched_features_are_named(tiny_datadir, tiny_features, tmp_path):
    from kdtool.tokens import Tokenizer
    from kdtool.train.dataset import SpeechDataset
    out = tmp_path / "f"
    compute_fbank_job(tiny_datadir.path, out, 1, 1)
    merge_fbank_jobs(tiny_datadir.path, out, 1)
    ark = out / "data" / "feats.1.ark"
    tok = Tokenizer(tiny_features["tokens"])

    # features of another dimension than the CMVN (and so the model) expects
    ds40 = out / "dim40"
    feats = {u: f[:, :40] for u, f in kaldiio.load_scp(str(out / "feats.scp")).items()}
    DataDir.write(ds40, tiny_datadir.read("wav.scp"), tiny_datadir.read("utt2spk"), tiny_datadir.read("text"),
                  extra={"utt2num_frames": {u: str(len(f)) for u, f in feats.items()}})
    kaldiio.save_ark(str(ds40 / "feats.ark"), feats, scp=str(ds40 / "feats.scp"))
    with pytest.raises(DataDirError, match=r"dim40/feats.scp: utterance spka-u1: 40-dim features where 80 are "
                                           r"expected \(as in .*cmvn.ark\)"):
        SpeechDataset(ds40, tok, cmvn_path=tiny_features["cmvn"])["spka-u1"]

    # utt2num_frames that does not describe the features
    set_entry(DataDir(out), "spka-u2", "7", name="utt2num_frames")
    with pytest.raises(DataDirError, match=r"utterance spka-u2: \d+ frames, but utt2num_frames says 7"):
        validate_data_dir(out, check_feats=True)

    # an ark cut short
    ark.write_bytes(ark.read_bytes()[:ark.stat().st_size // 2])
    last = DataDir(out).utts[-1]
    code, log = cli("compute_cmvn", out / "feats.scp", tmp_path / "cmvn.ark")
    assert code == 1 and "utterance spka-u2: " in log  # the first problem met, in file order
    with pytest.raises(DataDirError, match=rf"feats.scp: utterance {last}: cannot read its features .*the ark is "
                                           r"damaged"):
        SpeechDataset(out, tok, cmvn_path=tiny_features["cmvn"])[last]


def test_truncated_weights_name_the_file(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match=rf"{path}: cannot load the weights .*damaged or incomplete"):
        load_weights(path)


def test_exp_dir_files_changed_since_training_are_named(tiny_teacher, tmp_path, caplog):
    import shutil
    from kdtool.models.load import load_trained
    exp = tmp_path / "exp"
    shutil.copytree(tiny_teacher, exp)
    assert set(json.loads((exp / "sha256.json").read_text())) == {"model.pth", "tokens/tokens.txt", "cmvn.ark"}
    load_trained(exp)
    tokens = exp / "tokens" / "tokens.txt"
    original = tokens.read_text()
    lines = original.splitlines(True)
    lines[3], lines[4] = lines[4], lines[3]  # two units swapped: same size, every id after them means another
    tokens.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"tokens/tokens.txt: changed since training \(its sha256 differs from the "
                                         r"one in .*sha256.json\)"):
        load_trained(exp)
    tokens.write_text(original)
    kaldiio.save_mat(str(exp / "cmvn.ark"), load_cmvn(exp / "cmvn.ark") * 1.01)
    with pytest.raises(ValueError, match=r"cmvn.ark: changed since training"):
        load_trained(exp)
    shutil.copy(tiny_teacher / "cmvn.ark", exp / "cmvn.ark")
    # other weights of the same shapes: another model, not a garbled one: a warning
    torch.save({k: v * 0.5 for k, v in load_weights(exp / "model.pth").items()}, exp / "model.pth")
    with caplog.at_level(logging.WARNING):
        load_trained(exp)
    assert "model.pth: not the weights training wrote" in caplog.text


# (e) consistency, fix_data_dir's result, locks

def test_fix_data_dir_fails_when_the_result_is_still_invalid(tiny_datadir):
    set_entry(tiny_datadir, "spka-u2", "other", name="utt2spk")
    code, log = cli("fix_data_dir", tiny_datadir.path)
    assert code == 1
    assert "still not a valid data dir after fixing" in log and "speaker id other is not a prefix" in log


def test_a_second_run_into_the_same_output_is_refused(tiny_datadir, tmp_path):
    out = tmp_path / "f"
    with hold_lock(out / ".locks" / "fbank.1.lock", "the other run"):
        with pytest.raises(LockedError, match=r"f/data \(feature job 1\) is being written by another run \(pid \d+"):
            compute_fbank_job(tiny_datadir.path, out, 1, 1)
        compute_fbank_job(tiny_datadir.path, out, 2, 2)  # another job of the same run is not in the way
        with pytest.raises(LockedError, match="is being written by another run"):
            merge_fbank_jobs(tiny_datadir.path, out, 2)
    compute_fbank_job(tiny_datadir.path, out, 1, 2)  # released: the rerun goes through
    merge_fbank_jobs(tiny_datadir.path, out, 2)
    assert DataDir(out).read("utt2num_frames").keys() == set(tiny_datadir.utts)


def test_load_audio_error_is_an_expected_error(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(str(tmp_path / "none.wav"))
