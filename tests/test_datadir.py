"""Data dirs: every rule of Kaldi's format is checked, and each bad input gets a message that
names the file, the utterance and the problem."""
import subprocess
import sys

import pytest

from conftest import speak
from kdtool.data.datadir import DataDir, DataDirError, read_table
from kdtool.data.fix import fix_data_dir
from kdtool.data.validate import validate_data_dir


def rewrite(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def lines(path):
    return path.read_text().splitlines()


def test_valid_dir_passes(tiny_datadir):
    d = validate_data_dir(tiny_datadir.path, check_audio=True, sample_rate=16000, require_text=True)
    assert d.utts == sorted(d.utts)
    assert d.read("spk2utt") == {"spka": "spka-u1 spka-u2 spka-u3", "spkb": "spkb-u1 spkb-u2 spkb-u3"}


def test_missing_dir():
    with pytest.raises(DataDirError, match="nowhere/at/all: data directory does not exist"):
        validate_data_dir("/nowhere/at/all")


def test_missing_audio(tiny_datadir):
    scp = tiny_datadir.path / "wav.scp"
    rewrite(scp, [ln.replace("spkb-u2.wav", "gone.wav") for ln in lines(scp)])
    with pytest.raises(DataDirError, match=r"wav.scp: utterance spkb-u2: audio file .*gone.wav does not exist"):
        validate_data_dir(tiny_datadir.path, check_audio=True)


def test_unreadable_audio(tiny_datadir, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00not really a wav file at all")
    scp = tiny_datadir.path / "wav.scp"
    rewrite(scp, [f"spka-u1 {bad}" if ln.startswith("spka-u1 ") else ln for ln in lines(scp)])
    with pytest.raises(DataDirError, match=r"utterance spka-u1: cannot read audio .*broken.wav"):
        validate_data_dir(tiny_datadir.path, check_audio=True)


def test_wrong_sample_rate(tiny_datadir, tmp_path):
    wav8k = speak("EIGHT KILOHERTZ", tmp_path / "8k.wav", rate=8000)
    scp = tiny_datadir.path / "wav.scp"
    rewrite(scp, [f"spka-u3 {wav8k}" if ln.startswith("spka-u3 ") else ln for ln in lines(scp)])
    with pytest.raises(DataDirError, match=r"wav.scp: utterance spka-u3: sample rate 8000 Hz, expected 16000 Hz"):
        validate_data_dir(tiny_datadir.path, check_audio=True, sample_rate=16000)


def test_empty_transcript(tiny_datadir):
    text = tiny_datadir.path / "text"
    rewrite(text, ["spkb-u1" if ln.startswith("spkb-u1 ") else ln for ln in lines(text)])
    with pytest.raises(DataDirError, match=r"text: utterance spkb-u1 has an empty transcript"):
        validate_data_dir(tiny_datadir.path)


def test_duplicate_ids(tiny_datadir):
    text = tiny_datadir.path / "text"
    rewrite(text, lines(text) + ["spkb-u3 ALL THAT GLITTERS AGAIN"])
    with pytest.raises(DataDirError, match=r"text:7: utterance spkb-u3: duplicate id"):
        validate_data_dir(tiny_datadir.path)
    with pytest.raises(DataDirError, match="duplicate id"):
        fix_data_dir(tiny_datadir.path)  # duplicates are not guessed at


def test_unsorted_file_and_fix(tiny_datadir):
    scp = tiny_datadir.path / "wav.scp"
    rewrite(scp, list(reversed(lines(scp))))
    with pytest.raises(DataDirError, match=r"wav.scp: not sorted with LC_ALL=C .*fix_data_dir"):
        validate_data_dir(tiny_datadir.path)
    assert fix_data_dir(tiny_datadir.path) == 0
    validate_data_dir(tiny_datadir.path)
    # Kaldi's byte order, which is what `LC_ALL=C sort` checks.
    subprocess.run(["sort", "-c", str(scp)], env={"LC_ALL": "C"}, check=True)
    assert (tiny_datadir.path / ".backup" / "wav.scp").read_text().splitlines()[0].startswith("spkb-u3")


def test_speaker_must_prefix_utterance(tiny_datadir):
    u2s = tiny_datadir.path / "utt2spk"
    rewrite(u2s, [ln.replace("spka-u2 spka", "spka-u2 other") for ln in lines(u2s)])
    with pytest.raises(DataDirError, match=r"utterance spka-u2: speaker id other is not a prefix"):
        validate_data_dir(tiny_datadir.path)


def test_spk2utt_must_match_utt2spk(tiny_datadir):
    s2u = tiny_datadir.path / "spk2utt"
    rewrite(s2u, ["spka spka-u1 spka-u2", "spkb spkb-u1 spkb-u2 spkb-u3"])
    with pytest.raises(DataDirError, match=r"spk2utt: does not match utt2spk for speaker spka"):
        validate_data_dir(tiny_datadir.path)
    fix_data_dir(tiny_datadir.path)
    assert read_table(s2u)["spka"] == "spka-u1 spka-u2 spka-u3"


def test_ids_missing_from_a_file_are_reported_then_fixed(tiny_datadir):
    text = tiny_datadir.path / "text"
    rewrite(text, [ln for ln in lines(text) if not ln.startswith("spka-u1 ")])
    with pytest.raises(DataDirError, match=r"text: utterance spka-u1 is in utt2spk but not in text"):
        validate_data_dir(tiny_datadir.path)
    assert fix_data_dir(tiny_datadir.path) == 1
    d = validate_data_dir(tiny_datadir.path)
    assert "spka-u1" not in d.utts and len(d.utts) == 5
    assert "spka-u1" not in d.read("spk2utt")["spka"]


def test_fix_drops_empty_transcripts(tiny_datadir):
    text = tiny_datadir.path / "text"
    rewrite(text, ["spkb-u1 " if ln.startswith("spkb-u1 ") else ln for ln in lines(text)])
    assert fix_data_dir(tiny_datadir.path) == 1
    assert "spkb-u1" not in validate_data_dir(tiny_datadir.path).utts


def test_untranscribed_dir_is_valid_unless_text_required(tiny_datadir):
    (tiny_datadir.path / "text").unlink()
    validate_data_dir(tiny_datadir.path)
    with pytest.raises(DataDirError, match="missing text"):
        validate_data_dir(tiny_datadir.path, require_text=True)


def test_cli_reports_every_problem_and_exits_1(tiny_datadir):
    scp = tiny_datadir.path / "wav.scp"
    rewrite(scp, [ln.replace("spkb-u2.wav", "gone.wav") for ln in lines(scp)])
    text = tiny_datadir.path / "text"
    rewrite(text, ["spka-u2" if ln.startswith("spka-u2 ") else ln for ln in lines(text)])
    p = subprocess.run([sys.executable, "-m", "kdtool.bin.validate_data_dir", "--audio", str(tiny_datadir.path)],
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert "2 problem(s)" in p.stderr
    assert "utterance spka-u2 has an empty transcript" in p.stderr
    assert "utterance spkb-u2: audio file" in p.stderr
    assert "Traceback" not in p.stderr


def test_write_sorts_in_byte_order(tmp_path):
    # 'B' < 'a' in byte order but not in a case-insensitive locale.
    d = DataDir.write(tmp_path / "d", wav_scp={"a-1": "x", "B-1": "y"}, utt2spk={"a-1": "a", "B-1": "B"})
    assert lines(d.path / "wav.scp") == ["B-1 y", "a-1 x"]
    assert lines(d.path / "spk2utt") == ["B B-1", "a a-1"]
