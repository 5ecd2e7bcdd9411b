"""combine_data_dirs (Kaldi's combine_data.sh): the union of data dirs, sorted, spk2utt regenerated;
a duplicate id names both inputs; a file only some inputs have is left out."""
import logging
import subprocess
import sys

import pytest

from conftest import assert_c_sorted
from kdtool.data.combine import combine_data_dirs
from kdtool.data.datadir import DataDir, DataDirError, c_sorted
from kdtool.data.validate import validate_data_dir


def data_dir(path, utts, utt2num_frames=False):
    """A transcribed data dir of ``utts`` (speaker: the id up to the first '-')."""
    return DataDir.write(path, wav_scp={u: f"/audio/{u}.flac" for u in utts},
                         utt2spk={u: u.split("-")[0] for u in utts}, text={u: f"WORDS OF {u}" for u in utts},
                         extra={"utt2num_frames": {u: "100" for u in utts}} if utt2num_frames else None)


def test_union_is_sorted_with_spk2utt_regenerated(tmp_path):
    # byte order interleaves the inputs ("103-" < "1034-" < "19-" < "2-"); speaker 19 is in both
    a = data_dir(tmp_path / "a", ["19-198-0000", "103-1240-0000", "103-1240-0001"], utt2num_frames=True)
    b = data_dir(tmp_path / "b", ["2-10-0000", "1034-121-0000", "19-200-0000"], utt2num_frames=True)
    out = combine_data_dirs(tmp_path / "all", [a.path, b.path])
    utts = ["103-1240-0000", "103-1240-0001", "1034-121-0000", "19-198-0000", "19-200-0000", "2-10-0000"]
    assert out.utts == utts == c_sorted(utts)
    for name in ("wav.scp", "text", "utt2spk", "utt2num_frames"):
        assert out.read(name) == {**a.read(name), **b.read(name)}
        assert list(out.read(name)) == utts
    assert out.read("spk2utt") == {"103": "103-1240-0000 103-1240-0001", "1034": "1034-121-0000",
                                   "19": "19-198-0000 19-200-0000", "2": "2-10-0000"}
    for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2num_frames"):
        assert_c_sorted(out.path / name)
    validate_data_dir(out.path, require_text=True)


def test_duplicate_utterance_names_both_inputs_and_writes_nothing(tmp_path):
    a = data_dir(tmp_path / "a", ["19-198-0000", "19-198-0001"])
    b = data_dir(tmp_path / "b", ["19-198-0001", "2-10-0000"])
    with pytest.raises(DataDirError, match=rf"utterance 19-198-0001 is in both {a.path}/utt2spk and {b.path}/utt2spk"):
        combine_data_dirs(tmp_path / "all", [a.path, b.path])
    assert not (tmp_path / "all").exists()


def test_a_file_only_some_inputs_have_is_left_out(tmp_path, caplog):
    a = data_dir(tmp_path / "a", ["19-198-0000"], utt2num_frames=True)
    b = data_dir(tmp_path / "b", ["2-10-0000"])
    (b.path / "text").unlink()  # untranscribed
    out = tmp_path / "all"
    out.mkdir()
    (out / "text").write_text("stale-0000 FROM AN EARLIER COMBINATION\n")
    with caplog.at_level(logging.WARNING):
        d = combine_data_dirs(out, [a.path, b.path])
    assert not d.has("utt2num_frames") and not d.has("text")
    assert f"text: only in 1 of the 2 inputs ({a.path})" in caplog.text
    assert "utt2num_frames: only in 1 of the 2 inputs" in caplog.text
    validate_data_dir(d.path)  # an untranscribed dir


def test_segmented_and_unsegmented_dirs_do_not_combine(tmp_path):
    a = data_dir(tmp_path / "a", ["19-198-0000"])
    b = data_dir(tmp_path / "b", ["2-10-0000"])
    (a.path / "segments").write_text("19-198-0000 rec1 0.0 1.5\n")
    with pytest.raises(DataDirError, match=rf"{a.path}/segments exists but {b.path}/segments does not"):
        combine_data_dirs(tmp_path / "all", [a.path, b.path])


@pytest.mark.parametrize("inputs, message", [
    (["a", "a"], "a: given twice"),
    (["a", "all"], "all: an input cannot be the combined dir itself"),
    (["a", "nowhere"], "nowhere: data directory does not exist"),
])
def test_bad_inputs(tmp_path, inputs, message):
    data_dir(tmp_path / "a", ["19-198-0000"])
    data_dir(tmp_path / "all", ["2-10-0000"])
    with pytest.raises(DataDirError, match=message):
        combine_data_dirs(tmp_path / "all", [tmp_path / i for i in inputs])


def test_cli_and_its_one_line_error(tmp_path):
    a = data_dir(tmp_path / "a", ["19-198-0000"])
    b = data_dir(tmp_path / "b", ["2-10-0000"])
    cmd = [sys.executable, "-m", "kdtool.bin.combine_data_dirs", str(tmp_path / "all"), str(a.path), str(b.path)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f"{tmp_path / 'all'}: 2 utterances from 2 data dirs" in p.stdout
    p = subprocess.run(cmd + [str(a.path)], capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "given twice" in p.stderr
