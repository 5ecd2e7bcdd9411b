"""Reliability suite: a table of bad inputs, each fed through an entry point (stages 1, 2 and 6) as a
user would, in this process. None may end in a traceback, a hang (each case has 30 s), or an exit 0
with wrong output: a case either fails with exit 1 and a message holding the given fragments (the
file, the utterance, what is wrong), or succeeds and its output is checked.

    tools/venv/bin/python -m pytest tests/test_reliability.py   # in CI, as part of the suite
    tools/venv/bin/python tests/test_reliability.py             # the table with each outcome
    tools/venv/bin/python tests/test_reliability.py --messages  # ... and the message a user sees
"""
import logging
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import conftest  # noqa: E402
from conftest import SENTENCES, speak  # noqa: E402

from kdtool.data.datadir import DataDir, read_table  # noqa: E402
from kdtool.utils.lock import hold_lock  # noqa: E402

CASE_TIMEOUT = 30


class Hang(Exception):
    pass


# --- the clean inputs every case starts from (built once) ---

class Base:
    """6 synthesized utterances: their data dir, stage 2's features, CMVN, a char token list and an
    (untrained) CTC exp dir."""

    def __init__(self, root):
        from kdtool.features.cmvn import compute_cmvn
        from kdtool.features.fbank import compute_fbank_job, merge_fbank_jobs
        from kdtool.models.build import build_model
        from kdtool.models.load import write_checksums
        from kdtool.tokens import build_token_list
        from kdtool.train.config import resolve_config

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        wavs = {u: speak(t, self.root / f"{u}.wav") for u, t in SENTENCES.items()}
        self.data = DataDir.write(self.root / "data", {u: str(p) for u, p in wavs.items()},
                                  {u: u.split("-")[0] for u in wavs}, dict(SENTENCES)).path
        self.feats = self.root / "fbank"
        compute_fbank_job(self.data, self.feats, 1, 1)
        merge_fbank_jobs(self.data, self.feats, 1)
        exp = self.exp = self.root / "exp"
        compute_cmvn(self.feats / "feats.scp", exp / "cmvn.ark")
        build_token_list(self.data / "text", exp / "tokens", "char")
        cfg = resolve_config({"model": "ctc", "encoder": "transformer",
                              "encoder_conf": {"output_size": 16, "attention_heads": 2, "linear_units": 16,
                                               "num_blocks": 1}})
        (exp / "config.yaml").write_text(yaml.safe_dump(cfg))
        n_tokens = len((exp / "tokens" / "tokens.txt").read_text().split())
        torch.manual_seed(0)
        torch.save(build_model({k: cfg[k] for k in ("model", "encoder", "encoder_conf")}, n_tokens).state_dict(),
                   exp / "model.pth")
        write_checksums(exp)  # what training records
        self.decode_conf = self.root / "decode_ctc_greedy.yaml"
        self.decode_conf.write_text("method: ctc_greedy\n")
        self.clean_feats = dict(kaldiio.load_scp(str(self.feats / "feats.scp")).items())


class World:
    """One case's private copies of the base inputs (made on first use), in ``tmp``."""

    def __init__(self, base, tmp):
        self.base, self.tmp = base, Path(tmp)
        self._data = self._feats = self._exp = None

    @property
    def data(self):
        if self._data is None:
            self._data = self.tmp / "data"
            shutil.copytree(self.base.data, self._data)
        return self._data

    @property
    def feats(self):
        """A feature dir with its own ark (feats.scp rewritten to point at the copy)."""
        if self._feats is None:
            self._feats = self.tmp / "fbank"
            shutil.copytree(self.base.feats, self._feats)
            scp = self._feats / "feats.scp"
            scp.write_text(scp.read_text().replace(str(self.base.feats.resolve()), str(self._feats.resolve())))
        return self._feats

    @property
    def exp(self):
        if self._exp is None:
            self._exp = self.tmp / "exp"
            shutil.copytree(self.base.exp, self._exp)
        return self._exp

    @property
    def wav(self):
        return self.base.data.parent / "spka-u2.wav"

    def audio(self, name, samples, rate=16000, subtype="PCM_16"):
        path = self.tmp / name
        soundfile.write(path, samples, rate, subtype=subtype)
        return path

    def samples(self):
        return soundfile.read(self.wav, dtype="float32")[0]


def set_line(path, key, value):
    """Set (value: str), or drop (value None), the entry ``key`` of a table file."""
    table = read_table(path, allow_empty=True)
    if value is None:
        table.pop(key)
    else:
        table[key] = value
    path.write_text("".join(f"{k} {v}\n" for k, v in table.items()))


def set_wav(w, entry, utt="spka-u2"):
    set_line(w.data / "wav.scp", utt, str(entry))
    return w.data


def prepend(path, data):
    path.write_bytes(data + path.read_bytes())


def replace_bytes(path, old, new):
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def write(path, data):
    path.write_bytes(data)
    return path


def append(path, line):
    """Append ``line`` to a data dir's file; return the data dir."""
    with open(path, "a") as f:
        f.write(line)
    return path.parent


def cut_copy(w, keep=9000):
    """A copy of w's wav cut after ``keep`` bytes: the header intact, most samples gone."""
    return write(w.tmp / "cut.wav", w.wav.read_bytes()[:keep])


def set_feats(w, utt, feats, frames=None):
    """Replace one utterance's features (in a new ark) in w's feature dir."""
    d = w.feats
    all_feats = dict(kaldiio.load_scp(str(d / "feats.scp")).items())
    all_feats[utt] = feats
    kaldiio.save_ark(str((d / "new.ark").resolve()), all_feats, scp=str(d / "feats.scp"))
    if frames is not None:
        set_line(d / "utt2num_frames", utt, str(frames))
    return d


def first_ark(d):
    return d / "data" / "feats.1.ark"


# --- the table ---

@dataclass
class Case:
    name: str
    entry: str                   # kdtool.bin.<entry>
    setup: object                # World -> argument list (after it has broken its inputs)
    expect: tuple = ()           # fragments of the error message; empty: the run must succeed
    check: object = None         # World -> None: asserts the outcome (output right, or nothing left)
    tags: list = field(default_factory=list)


def validate(*opts):
    return lambda make: (lambda w: [*opts, make(w)])


def nan_audio(w, value=np.nan):
    s = w.samples()
    s[500:510] = value
    return set_wav(w, w.audio("nan.wav", s, subtype="FLOAT"))


def fbank_args(w, *extra):
    return [*extra, w.data, w.tmp / "out"]


def no_features(w):
    assert not (w.tmp / "out" / "feats.scp").exists(), "a failed extraction left a feats.scp"


def same_features_as_clean(w):
    got = dict(kaldiio.load_scp(str(w.tmp / "out" / "feats.scp")).items())
    assert list(got) == list(w.base.clean_feats)
    for u, f in got.items():
        np.testing.assert_array_equal(f, w.base.clean_feats[u])


def cmvn_args(w):
    return [w.feats / "feats.scp", w.tmp / "cmvn.ark"]


def no_cmvn(w):
    assert not (w.tmp / "cmvn.ark").exists(), "statistics were written"


def decode_args(w, feats=None):
    return ["--model_dir", w.exp, "--data", feats or w.base.feats, "--config", w.base.decode_conf,
            "--out_dir", w.tmp / "dec"]


def no_decode(w):
    assert not (w.tmp / "dec" / "text").exists(), "a failed decode left a text"


def stale_merged_scp(w):
    from kdtool.features.fbank import compute_fbank_job, merge_fbank_jobs
    out = w.tmp / "out"
    for job in (1, 2):
        compute_fbank_job(w.data, out, job, 2)
    merge_fbank_jobs(w.data, out, 2)
    set_line(w.data / "wav.scp", "spka-u1", str(w.base.data.parent / "spkb-u1.wav"))  # the data changes
    return ["--nj", "2", "--job", "1", w.data, out]  # ... and the new run's job 2 never runs


def locked_output(w):
    w.lock = hold_lock(w.tmp / "out" / ".locks" / "fbank.1.lock", "the other run")
    w.lock.__enter__()
    return fbank_args(w)


def combine(w, *dirs):
    return [w.tmp / "comb", *dirs]


def untranscribed(w):
    (w.data / "text").unlink()
    return w.data


def wrong_dim(w):
    d = w.feats
    feats = {u: f[:, :40] for u, f in kaldiio.load_scp(str(d / "feats.scp")).items()}
    kaldiio.save_ark(str((d / "new.ark").resolve()), feats, scp=str(d / "feats.scp"))
    return decode_args(w, d)


def other_token_list(w):
    """Weights of a model with another vocabulary, in an exp dir without sha256.json (older ones)."""
    from kdtool.models.build import build_model
    (w.exp / "sha256.json").unlink()
    cfg = yaml.safe_load((w.exp / "config.yaml").read_text())
    torch.save(build_model({k: cfg[k] for k in ("model", "encoder", "encoder_conf")}, 50).state_dict(),
               w.exp / "model.pth")
    return decode_args(w)


def modified(fn, then):
    """Run ``fn(w)`` for its side effect, then return ``then(w)``."""
    def setup(w):
        fn(w)
        return then(w)
    return setup


WS = "wav.scp: utterance spka-u2"
V = ["--audio", "--sample-rate", "16000"]
CASES = [
    # stage 1: validate_data_dir --audio on broken audio
    Case("nan samples", "validate_data_dir", lambda w: [*V, nan_audio(w)], (WS, "10 non-finite samples")),
    Case("inf samples", "validate_data_dir", lambda w: [*V, nan_audio(w, np.inf)], (WS, "non-finite samples")),
    Case("wav cut short", "validate_data_dir", lambda w: [*V, set_wav(w, cut_copy(w))],
         (WS, "is cut short", "where its header promises")),
    Case("pipe cut short", "validate_data_dir", lambda w: [*V, set_wav(w, f"head -c 9000 {w.wav} |")],
         (WS, "is cut short")),
    Case("missing audio file", "validate_data_dir", lambda w: [*V, set_wav(w, w.tmp / "gone.wav")],
         (WS, "gone.wav does not exist")),
    Case("garbage bytes", "validate_data_dir", lambda w: [*V, set_wav(w, write(w.tmp / "g.wav", b"RIFF" + bytes(60)))],
         (WS, "cannot read audio")),
    Case("wav with no samples", "validate_data_dir",
         lambda w: [*V, set_wav(w, w.audio("empty.wav", np.zeros(0, dtype=np.float32)))], (WS, "has no samples")),
    Case("8 kHz audio", "validate_data_dir",
         lambda w: [*V, set_wav(w, w.audio("8k.wav", w.samples()[::2], rate=8000))],
         (WS, "sample rate 8000 Hz, expected 16000 Hz")),
    Case("failing command", "validate_data_dir", lambda w: [*V, set_wav(w, "sox /no/such.wav -t wav - |")],
         (WS, "command failed", "sox /no/such.wav")),
    Case("command reading stdin", "validate_data_dir", lambda w: [*V, set_wav(w, "cat |")],
         (WS, "command wrote nothing (one that reads stdin gets it closed): cat")),
    Case("command that never ends", "validate_data_dir",
         lambda w: [*V, "--cmd_timeout", "1", set_wav(w, f"sleep 600; cat {w.wav} |")],
         (WS, "did not finish in 1 s", "sleep 600")),
    Case("command writing nothing", "validate_data_dir", lambda w: [*V, set_wav(w, "true |")],
         (WS, "command wrote nothing")),
    Case("command writing text", "validate_data_dir", lambda w: [*V, set_wav(w, "echo hello |")],
         (WS, "cannot read audio echo hello |: Error opening its output: Format not recognised")),
    Case("float wav out of range is still audio", "validate_data_dir",
         lambda w: [*V, set_wav(w, w.audio("loud.wav", w.samples() * 1.5, subtype="FLOAT"))]),
    # stage 1: the data dir's files
    Case("wav.scp missing an utterance", "validate_data_dir",
         lambda w: [set_line(w.data / "wav.scp", "spkb-u3", None) or w.data],
         ("wav.scp: utterance spkb-u3 is in utt2spk but not in wav.scp",)),
    Case("wav.scp with an extra utterance", "validate_data_dir",
         lambda w: [set_line(w.data / "wav.scp", "spkc-u9", str(w.wav)) or w.data],
         ("utterance spkc-u9 is in wav.scp but not in utt2spk",)),
    Case("BOM in wav.scp", "validate_data_dir", lambda w: [prepend(w.data / "wav.scp", b"\xef\xbb\xbf") or w.data],
         ("wav.scp:1: starts with a byte-order mark", "fix_data_dir")),
    Case("BOM in text", "validate_data_dir", lambda w: [prepend(w.data / "text", b"\xef\xbb\xbf") or w.data],
         ("text:1: starts with a byte-order mark",)),
    Case("Latin-1 text", "validate_data_dir",
         lambda w: [replace_bytes(w.data / "text", b"LAZY", b"L\xc4ZY") or w.data], ("text:2: not UTF-8",)),
    Case("Latin-1 utt2spk", "validate_data_dir",
         lambda w: [replace_bytes(w.data / "utt2spk", b"spkb-u1 spkb", b"spkb-u1 spk\xe9") or w.data],
         ("utt2spk:4: not UTF-8",)),
    Case("duplicate id", "validate_data_dir",
         lambda w: [append(w.data / "text", "spkb-u3 AGAIN\n")], ("text:7:", "duplicate id")),
    Case("empty line", "validate_data_dir",
         lambda w: [replace_bytes(w.data / "wav.scp", b"\nspkb-u1", b"\n\nspkb-u1") or w.data],
         ("wav.scp:4: empty line",)),
    Case("id without a value", "validate_data_dir",
         lambda w: [replace_bytes(w.data / "wav.scp", b"spka-u2 ", b"spka-u2\n#") or w.data],
         ("wav.scp:2: spka-u2: no value",)),
    Case("CRLF line ends", "validate_data_dir",
         lambda w: [*V, (w.data / "wav.scp").write_bytes((w.data / "wav.scp").read_bytes().replace(b"\n", b"\r\n"))
                    and w.data]),
    Case("unsorted wav.scp", "validate_data_dir",
         lambda w: [(w.data / "wav.scp").write_text("".join(reversed((w.data / "wav.scp").read_text()
                                                                     .splitlines(True)))) and w.data],
         ("wav.scp: not sorted with LC_ALL=C",)),
    Case("spk2utt out of date", "validate_data_dir",
         lambda w: [set_line(w.data / "spk2utt", "spka", "spka-u1") or w.data], ("spk2utt: does not match utt2spk",)),
    Case("speaker not a prefix", "validate_data_dir",
         lambda w: [set_line(w.data / "utt2spk", "spka-u2", "other") or w.data],
         ("utterance spka-u2: speaker id other is not a prefix",)),
    Case("empty transcript", "validate_data_dir",
         lambda w: [set_line(w.data / "text", "spka-u2", "") or w.data],
         ("utterance spka-u2 has an empty transcript",)),
    Case("empty data dir", "validate_data_dir",
         lambda w: [[(w.data / n).write_text("") for n in ("wav.scp", "text", "utt2spk", "spk2utt")] and w.data],
         ("utt2spk: no utterances: the data dir is empty",)),
    Case("no utt2spk", "validate_data_dir", lambda w: [(w.data / "utt2spk").unlink() or w.data], ("missing utt2spk",)),
    Case("no wav.scp", "validate_data_dir", lambda w: [(w.data / "wav.scp").unlink() or w.data], ("missing wav.scp",)),
    Case("no such dir", "validate_data_dir", lambda w: [w.tmp / "nowhere"],
         ("nowhere: data directory does not exist",)),
    Case("bad utt2num_frames", "validate_data_dir",
         lambda w: [(w.data / "utt2num_frames").write_text("".join(f"{u} {'abc' if u == 'spka-u2' else 9}\n"
                                                                   for u in SENTENCES)) and w.data],
         ("utterance spka-u2: bad frame count 'abc'",)),
    Case("transcripts required, none there", "validate_data_dir",
         lambda w: ["--require-text", untranscribed(w)], ("missing text",)),
    # stage 2: compute_fbank
    Case("fbank: nan samples", "compute_fbank", lambda w: fbank_args(w) if nan_audio(w) else None,
         (WS, "non-finite samples"), no_features),
    Case("fbank: pipe cut short", "compute_fbank",
         lambda w: fbank_args(w) if set_wav(w, f"head -c 9000 {w.wav} |") else None, (WS, "is cut short"), no_features),
    Case("fbank: wav.scp missing an utterance", "compute_fbank",
         lambda w: set_line(w.data / "wav.scp", "spkb-u3", None) or fbank_args(w),
         ("utterance spkb-u3 is in utt2spk but not in wav.scp",), no_features),
    Case("fbank: BOM in wav.scp", "compute_fbank",
         lambda w: prepend(w.data / "wav.scp", b"\xef\xbb\xbf") or fbank_args(w),
         ("wav.scp:1: starts with a byte-order",), no_features),
    Case("fbank: --nj 2 without --job", "compute_fbank", lambda w: fbank_args(w, "--nj", "2"),
         ("--nj 2 without --job",), no_features),
    Case("fbank: --job 0", "compute_fbank", lambda w: fbank_args(w, "--nj", "2", "--job", "0"),
         ("--job 0: outside 1..2",), no_features),
    Case("fbank: --job 3 of 2", "compute_fbank", lambda w: fbank_args(w, "--nj", "2", "--job", "3"),
         ("--job 3: outside 1..2",), no_features),
    Case("fbank: --nj 0", "compute_fbank", lambda w: fbank_args(w, "--nj", "0"), ("--nj 0",), no_features),
    Case("fbank: merge before the jobs", "compute_fbank", lambda w: fbank_args(w, "--nj", "2", "--merge"),
         ("feats.1.scp: missing: feature job 1 of 2 did not finish",), no_features),
    Case("fbank: empty data dir", "compute_fbank",
         lambda w: [(w.data / n).write_text("") for n in ("wav.scp", "text", "utt2spk", "spk2utt")] and fbank_args(w),
         ("no utterances",), no_features),
    Case("fbank: command that never ends", "compute_fbank",
         lambda w: set_wav(w, f"sleep 600; cat {w.wav} |") and fbank_args(w, "--cmd_timeout", "1"),
         (WS, "did not finish in 1 s"), no_features),
    Case("fbank: 8 kHz expected", "compute_fbank", lambda w: fbank_args(w, "--fs", "8000"),
         ("wav.scp: utterance spka-u1", "expected 8000 Hz"), no_features),
    Case("fbank: audio shorter than a frame", "compute_fbank",
         lambda w: set_wav(w, w.audio("tiny.wav", w.samples()[:40])) and fbank_args(w),
         (WS, "audio too short: 40 samples, one 25 ms window needs 400"), no_features),
    Case("fbank: another run writes the output", "compute_fbank", locked_output,
         ("out/data (feature job 1) is being written by another run (pid",), no_features),
    Case("fbank: stale merged scp after the data changed", "compute_fbank", stale_merged_scp, (),
         no_features),
    Case("fbank: CRLF wav.scp", "compute_fbank",
         lambda w: (w.data / "wav.scp").write_bytes((w.data / "wav.scp").read_bytes().replace(b"\n", b"\r\n"))
         and fbank_args(w), (), same_features_as_clean),
    Case("fbank: audio through a pipe of unknown length", "compute_fbank",
         lambda w: set_wav(w, f"sox {w.wav} -t wav - |") and fbank_args(w), (), same_features_as_clean),
    # stage 2: compute_cmvn
    Case("cmvn: NaN features", "compute_cmvn",
         lambda w: set_feats(w, "spka-u2", np.full((50, 80), np.nan, np.float32), 50) and cmvn_args(w),
         ("feats.scp: utterance spka-u2: features hold NaN or inf",), no_cmvn),
    Case("cmvn: inf features", "compute_cmvn",
         lambda w: set_feats(w, "spka-u2", np.full((50, 80), np.inf, np.float32), 50) and cmvn_args(w),
         ("utterance spka-u2: features hold NaN or inf",), no_cmvn),
    Case("cmvn: ark cut short", "compute_cmvn",
         lambda w: truncate(first_ark(w.feats), 100_000) or cmvn_args(w), ("cannot read its features", "damaged"),
         no_cmvn),
    Case("cmvn: ark missing", "compute_cmvn", lambda w: first_ark(w.feats).unlink() or cmvn_args(w),
         ("utterance spka-u1: cannot read its features",), no_cmvn),
    Case("cmvn: no feats.scp", "compute_cmvn", lambda w: [w.tmp / "none" / "feats.scp", w.tmp / "cmvn.ark"],
         ("none/feats.scp: file not found",), no_cmvn),
    Case("cmvn: one utterance of another dimension", "compute_cmvn",
         lambda w: set_feats(w, "spkb-u1", np.zeros((50, 40), np.float32), 50) and cmvn_args(w),
         ("utterance spkb-u1: 40-dim features where 80 are expected",), no_cmvn),
    Case("cmvn: utt2num_frames disagrees", "compute_cmvn",
         lambda w: set_line(w.feats / "utt2num_frames", "spka-u2", "7") or cmvn_args(w),
         ("utterance spka-u2:", "utt2num_frames says 7"), no_cmvn),
    Case("cmvn: empty feats.scp", "compute_cmvn", lambda w: (w.feats / "feats.scp").write_text("") or cmvn_args(w),
         ("feats.scp: no utterances",), no_cmvn),
    # features checked by validate_data_dir --feats
    Case("feats: ark cut short", "validate_data_dir",
         lambda w: truncate(first_ark(w.feats), 100_000) or ["--feats", w.feats], ("cannot read its features",)),
    Case("feats: utt2num_frames disagrees", "validate_data_dir",
         lambda w: set_line(w.feats / "utt2num_frames", "spkb-u2", "9") or ["--feats", w.feats],
         ("utterance spkb-u2:", "utt2num_frames says 9")),
    Case("feats: NaN", "validate_data_dir",
         lambda w: set_feats(w, "spka-u3", np.full((5, 80), np.nan, np.float32), 5) and ["--feats", w.feats],
         ("utterance spka-u3: features hold NaN",)),
    # stage 1: fix_data_dir, combine_data_dirs, speed_perturb
    Case("fix: result still invalid", "fix_data_dir",
         lambda w: [set_line(w.data / "utt2spk", "spka-u2", "other") or w.data],
         ("still not a valid data dir after fixing", "speaker id other is not a prefix")),
    Case("fix: duplicate ids", "fix_data_dir",
         lambda w: [append(w.data / "text", "spkb-u3 AGAIN\n")], ("duplicate id",)),
    Case("fix: no utt2spk", "fix_data_dir", lambda w: [(w.data / "utt2spk").unlink() or w.data],
         ("utt2spk: file not found",)),
    Case("fix: BOM removed", "fix_data_dir", lambda w: [prepend(w.data / "text", b"\xef\xbb\xbf") or w.data], (),
         lambda w: DataDir(w.data).read("text")["spka-u1"] == SENTENCES["spka-u1"] or pytest.fail("BOM kept")),
    Case("combine: an utterance in two inputs", "combine_data_dirs", lambda w: combine(w, w.data, w.base.data),
         ("utterance spka-u1 is in both",)),
    Case("combine: input missing", "combine_data_dirs", lambda w: combine(w, w.data, w.tmp / "nowhere"),
         ("nowhere: data directory does not exist",)),
    Case("combine: input with a BOM", "combine_data_dirs",
         lambda w: prepend(w.data / "utt2spk", b"\xef\xbb\xbf") or combine(w, w.data),
         ("utt2spk:1: starts with a byte-order mark",)),
    Case("combine: an input with an utterance missing from its text", "combine_data_dirs",
         lambda w: set_line(w.data / "text", "spkb-u1", None) or combine(w, w.data),
         ("text: utterance spkb-u1 is in utt2spk but not in text",)),
    Case("combine: output is an input", "combine_data_dirs", lambda w: [w.data, w.data],
         ("an input cannot be the combined dir itself",)),
    Case("speed perturb: untranscribed", "speed_perturb", lambda w: [untranscribed(w), w.tmp / "sp"],
         ("needs a transcribed data dir",)),
    Case("speed perturb: Latin-1 text", "speed_perturb",
         lambda w: replace_bytes(w.data / "text", b"FOX", b"F\xd6X") or [w.data, w.tmp / "sp"], ("text:1: not UTF-8",)),
    Case("speed perturb: wav.scp missing an utterance", "speed_perturb",
         lambda w: set_line(w.data / "wav.scp", "spkb-u3", None) or [w.data, w.tmp / "sp"],
         ("wav.scp: utterance spkb-u3 is in utt2spk but not in wav.scp",)),
    Case("speed perturb: output is the input", "speed_perturb", lambda w: [w.data, w.data],
         ("cannot replace its source",)),
    # stage 6: what decoding reads of stages 2 and 3
    Case("decode: model.pth cut short", "decode", lambda w: truncate(w.exp / "model.pth", 3000) or decode_args(w),
         ("exp/model.pth: cannot load the weights", "damaged or incomplete"), no_decode),
    Case("decode: model.pth of another token list", "decode", other_token_list,
         ("model.pth: does not fit a ctc model",), no_decode),
    Case("decode: token list edited in place", "decode",
         lambda w: replace_bytes(w.exp / "tokens" / "tokens.txt", b"\nE\nT\n", b"\nT\nE\n") or decode_args(w),
         ("tokens/tokens.txt: changed since training",), no_decode),
    Case("decode: model.pth missing", "decode", lambda w: (w.exp / "model.pth").unlink() or decode_args(w),
         ("model.pth is missing",), no_decode),
    Case("decode: NaN CMVN", "decode",
         lambda w: [kaldiio.save_mat(str(w.exp / "cmvn.ark"), np.full((2, 81), np.nan)), *decode_args(w)][1:],
         ("cmvn.ark: CMVN statistics are not finite",), no_decode),
    Case("decode: features of another dimension", "decode", wrong_dim,
         ("fbank/feats.scp: utterance spk", "40-dim features where 80 are expected", "cmvn.ark"), no_decode),
    Case("decode: ark cut short", "decode",
         lambda w: truncate(first_ark(w.feats), 100_000) or decode_args(w, w.feats),
         ("cannot read its features", "damaged"), no_decode),
    Case("decode: utt2num_frames disagrees", "decode",
         lambda w: set_line(w.feats / "utt2num_frames", "spka-u2", "7") or decode_args(w, w.feats),
         ("utterance spka-u2:", "utt2num_frames says 7"), no_decode),
]


# --- running a case ---

def run_entry(module, args):
    """``python -m kdtool.bin.<module> args`` in this process: (exit code, what it logged)."""
    r = conftest.run_entry(module, *args)
    return r.returncode, r.stderr


def on_alarm(signum, frame):
    raise Hang(f"no result in {CASE_TIMEOUT} s")


def run_case(case, base, tmp, messages=None):
    """Run one case; return None if it behaved, else what went wrong. ``messages``: a list that gets
    what the entry point logged."""
    Path(tmp).mkdir(parents=True, exist_ok=True)
    w = World(base, tmp)
    args = case.setup(w)
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(CASE_TIMEOUT)
    try:
        code, log = run_entry(case.entry, args)
    except Hang as e:
        return f"hang: {e}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        if hasattr(w, "lock"):
            w.lock.__exit__(None, None, None)
    if messages is not None:
        messages.append(log.strip())
    if case.expect:
        if code == 0:
            return f"exit 0 where it should have failed with {case.expect}"
        missing = [e for e in case.expect if e not in log]
        if code != 1 or missing:
            return f"exit {code}, message lacks {missing}: {log.strip()[-500:]}"
    elif code != 0:
        return f"exit {code} where it should have succeeded: {log.strip()[-500:]}"
    if case.check:
        case.check(w)
    return None


@pytest.fixture(scope="module")
def base(tmp_path_factory, one_torch_thread):
    return Base(tmp_path_factory.mktemp("reliability"))


def test_the_table_is_large_enough():
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, base, tmp_path):
    problem = run_case(case, base, tmp_path)
    assert problem is None, problem


if __name__ == "__main__":
    logging.getLogger().addHandler(logging.NullHandler())  # entry points log to the table's capture only
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base = Base(Path(tmp) / "base")
        failed = 0
        for i, case in enumerate(CASES):
            start = time.time()
            messages = []
            try:
                problem = run_case(case, base, Path(tmp) / f"case{i}", messages)
            except Exception as e:  # a traceback, or a failed check
                problem = f"{type(e).__name__}: {e}"
            failed += problem is not None
            print(f"{'ok  ' if problem is None else 'FAIL'} {time.time() - start:5.2f}s {case.entry:18s} {case.name}"
                  + (f"\n     {problem}" if problem else ""))
            if "--messages" in sys.argv and messages and messages[0]:
                print("     " + messages[0].replace(tmp, "$TMP").replace("\n", "\n     "))
        print(f"{len(CASES) - failed} of {len(CASES)} bad inputs handled")
        sys.exit(1 if failed else 0)
