"""egs/librispeech/kd1/local/data.sh on a tiny fake LibriSpeech in the real layout, with speech
synthesized by espeak-ng and stored as 16 kHz flac, as the real corpus is."""
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import assert_c_sorted, copy_egs
from conftest import run_data_sh as run_recipe_data_sh
from kdtool.data.audio import load_audio
from kdtool.data.datadir import DataDir, c_sorted
from kdtool.data.validate import validate_data_dir

SENTENCES = ["CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED", "THE DOG SAT BY THE FIRE",
             "HE WENT HOME EARLY THAT NIGHT", "IT WAS A VERY COLD MORNING"]
# "19" and "103", "198" and "1240": numeric order and byte (LC_ALL=C) order disagree.
SPEAKERS = {"19": ["198", "1240"], "103": ["1240", "1241"]}
# the other training subsets have other readers, as the real corpus does; in byte order they
# interleave with the first's ("103-" < "1034-" < "19-" < "2-")
SUBSET_SPEAKERS = {"train-clean-360": {"1034": ["121", "122"], "2": ["10", "11"]},
                   "train-other-500": {"1089": ["134686", "134691"], "20": ["205", "206"]}}

pytestmark = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                reason="needs espeak-ng and sox")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """One synthesized 16 kHz flac per sentence, copied into every fake corpus."""
    d = tmp_path_factory.mktemp("clips")
    out = []
    for i, sentence in enumerate(SENTENCES):
        path = d / f"{i}.flac"
        subprocess.run(f'espeak-ng -v en-us -s 160 --stdout "{sentence}" | sox -t wav - -r 16000 -b 16 {path}',
                       shell=True, check=True, capture_output=True)
        out.append(path)
    return out


def make_corpus(root, clips, subsets=("train-clean-100", "train-clean-360", "dev-clean", "dev-other", "test-clean")):
    """Write <root>/<subset>/<spk>/<chapter>/{<spk>-<chapter>.trans.txt,<utt>.flac}; return what to expect:
    {subset: {utt: (speaker-chapter, words)}}."""
    expected = {}
    for subset in subsets:
        expected[subset] = {}
        k = 0
        for spk, chapters in SUBSET_SPEAKERS.get(subset, SPEAKERS).items():
            for chap in chapters:
                d = root / subset / spk / chap
                d.mkdir(parents=True)
                lines = []
                for i in range(2):
                    utt = f"{spk}-{chap}-{i:04d}"
                    shutil.copy(clips[k % len(clips)], d / f"{utt}.flac")
                    lines.append(f"{utt} {SENTENCES[k % len(SENTENCES)]}")
                    expected[subset][utt] = (f"{spk}-{chap}", SENTENCES[k % len(SENTENCES)])
                    k += 1
                (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return expected


@pytest.fixture
def recipe(tmp_path):
    """A copy of the recipes in a tree like the repository's, so that path.sh finds tools/venv."""
    return copy_egs(tmp_path / "kdtool") / "librispeech" / "kd1"


def run_data_sh(recipe, *args, env=None):
    return run_recipe_data_sh(recipe, *args, env=env, unset=("LIBRISPEECH",))


def test_prepares_train_dev_test(tmp_path, recipe, clips):
    db = tmp_path / "LibriSpeech"
    expected = make_corpus(db, clips)
    rc, out = run_data_sh(recipe, "--librispeech", str(db))
    assert rc == 0, out

    data = recipe / "data"
    # the default training set, and every dev/test set the corpus has; not train-clean-360 (not asked for)
    assert sorted(p.name for p in data.iterdir()) == ["dev_clean", "dev_other", "test_clean", "train_clean_100"]
    for subset, name in [("train-clean-100", "train_clean_100"), ("dev-clean", "dev_clean"),
                         ("dev-other", "dev_other"), ("test-clean", "test_clean")]:
        d = DataDir(data / name)
        exp = expected[subset]
        assert d.utts == c_sorted(exp) and len(exp) == 8
        assert d.read("text") == {u: words for u, (_, words) in exp.items()}
        assert d.read("utt2spk") == {u: spk for u, (spk, _) in exp.items()}
        assert d.read("spk2utt") == {
            f"{s}-{c}": " ".join(c_sorted(f"{s}-{c}-{i:04d}" for i in range(2)))
            for s, chapters in SPEAKERS.items() for c in chapters}
        for f in ("wav.scp", "text", "utt2spk", "spk2utt"):
            assert_c_sorted(d.path / f)
        for utt, path in d.read("wav.scp").items():
            assert Path(path).is_absolute()
            assert Path(path) == db / subset / utt.split("-")[0] / utt.split("-")[1] / f"{utt}.flac"
            samples, rate = load_audio(path, expected_rate=16000)
            assert rate == 16000 and len(samples) > 1600
        validate_data_dir(d.path, check_audio=True, sample_rate=16000, require_text=True)
    # byte order, not numeric: speaker 103 before 19, chapter 1240 before 198
    assert DataDir(data / "dev_clean").utts[0] == "103-1240-0000"
    assert DataDir(data / "dev_clean").utts[4:6] == ["19-1240-0000", "19-1240-0001"]
    assert "8 utterances, 4 speaker-chapters (2 readers)" in out


def test_train_sets_option_and_db_sh(tmp_path, recipe, clips):
    db = tmp_path / "corpora" / "LibriSpeech"
    expected = make_corpus(db, clips, subsets=("train-clean-100", "train-clean-360", "dev-clean", "test-clean"))
    # the corpus path from db.sh via the environment; the folder above LibriSpeech/ is accepted too
    rc, out = run_data_sh(recipe, "--train-sets", "train-clean-100 train-clean-360", "--check_audio", "false",
                          env={"LIBRISPEECH": str(db.parent)})
    assert rc == 0, out
    data = recipe / "data"
    assert sorted(p.name for p in data.iterdir()) == ["dev_clean", "test_clean", "train_460", "train_clean_100",
                                                      "train_clean_360"]
    assert DataDir(data / "train_clean_360").utts == c_sorted(expected["train-clean-360"])


def test_several_training_subsets_are_combined(tmp_path, recipe, clips):
    db = tmp_path / "LibriSpeech"
    subsets = ("train-clean-100", "train-clean-360", "train-other-500")
    expected = make_corpus(db, clips, subsets=subsets + ("dev-clean", "test-clean"))
    # commas: the form that passes through kd.sh's local_data_opts in one word
    rc, out = run_data_sh(recipe, "--librispeech", str(db), "--train_sets", ",".join(subsets), "--check_audio", "false")
    assert rc == 0, out
    data = recipe / "data"
    assert sorted(p.name for p in data.iterdir()) == ["dev_clean", "test_clean", "train_960", "train_clean_100",
                                                      "train_clean_360", "train_other_500"]
    union = {u: v for s in subsets for u, v in expected[s].items()}
    d = validate_data_dir(data / "train_960", require_text=True)
    assert d.utts == c_sorted(union) and len(union) == 24
    assert d.utts[:6] == ["103-1240-0000", "103-1240-0001", "103-1241-0000", "103-1241-0001", "1034-121-0000",
                          "1034-121-0001"]
    assert d.read("text") == {u: words for u, (_, words) in union.items()}
    assert d.read("spk2utt")["1089-134686"] == "1089-134686-0000 1089-134686-0001"
    for s in subsets:
        part = DataDir(data / s.replace("-", "_"))
        assert {u: d.read("wav.scp")[u] for u in part.utts} == part.read("wav.scp")
    for f in ("wav.scp", "text", "utt2spk", "spk2utt"):
        assert_c_sorted(d.path / f)
    assert "combining train-clean-100 train-clean-360 train-other-500 into data/train_960" in out
    assert ("local/data.sh: done: data/train_clean_100 data/train_clean_360 data/train_other_500 data/dev_clean "
            "data/test_clean data/train_960\n") in out


def test_combined_dir_needs_subsets_named_by_their_hours(tmp_path, recipe, clips):
    db = tmp_path / "LibriSpeech"
    make_corpus(db, clips, subsets=("train-clean-100", "dev-clean", "test-clean"))
    rc, out = run_data_sh(recipe, "--librispeech", str(db), "--train_sets", "train-clean-100,dev-clean")
    assert rc == 1
    assert "cannot name the combined training dir: dev-clean does not end in its hours (-<number>)" in out
    assert not (recipe / "data").exists()


@pytest.mark.parametrize("how", ["option", "db.sh"])
def test_missing_corpus(tmp_path, recipe, how):
    missing = tmp_path / "no" / "such" / "LibriSpeech"
    if how == "option":
        rc, out = run_data_sh(recipe, "--librispeech", str(missing))
    else:
        rc, out = run_data_sh(recipe, env={"LIBRISPEECH": str(missing)})
    assert rc == 1
    assert str(missing) in out and "db.sh" in out and "--librispeech" in out
    assert not (recipe / "data").exists()


def test_missing_dev_clean(tmp_path, recipe, clips):
    db = tmp_path / "LibriSpeech"
    make_corpus(db, clips, subsets=("train-clean-100", "test-clean"))
    rc, out = run_data_sh(recipe, "--librispeech", str(db))
    assert rc == 1
    assert f"dev-clean is required but {db / 'dev-clean'} does not exist" in out
    assert not (recipe / "data").exists()


def test_unknown_train_set(tmp_path, recipe, clips):
    db = tmp_path / "LibriSpeech"
    make_corpus(db, clips, subsets=("train-clean-100", "dev-clean", "test-clean"))
    rc, out = run_data_sh(recipe, "--librispeech", str(db), "--train_sets", "train-clean-100 train-other-500")
    assert rc == 1
    assert f"training set train-other-500 not found: {db / 'train-other-500'}" in out


def test_transcript_without_audio(tmp_path, recipe, clips):
    db = tmp_path / "LibriSpeech"
    make_corpus(db, clips, subsets=("train-clean-100", "dev-clean", "test-clean"))
    (db / "dev-clean" / "103" / "1241" / "103-1241-0001.flac").unlink()
    rc, out = run_data_sh(recipe, "--librispeech", str(db))
    assert rc == 1
    trans = db / "dev-clean" / "103" / "1241" / "103-1241.trans.txt"
    assert f"{trans}:2: utterance 103-1241-0001: audio" in out and "does not exist" in out
    assert not (recipe / "data" / "dev_clean").exists()


def test_audio_without_transcript(tmp_path, recipe, clips):
    db = tmp_path / "LibriSpeech"
    make_corpus(db, clips, subsets=("train-clean-100", "dev-clean", "test-clean"))
    trans = db / "test-clean" / "19" / "198" / "19-198.trans.txt"
    trans.write_text(trans.read_text().splitlines()[0] + "\n")  # drop the line of 19-198-0001
    rc, out = run_data_sh(recipe, "--librispeech", str(db))
    assert rc == 1
    assert f"{trans.parent / '19-198-0001.flac'}: no line for utterance 19-198-0001 in {trans}" in out
    assert not (recipe / "data" / "test_clean").exists()


def test_empty_transcript_line(tmp_path, recipe, clips):
    db = tmp_path / "LibriSpeech"
    make_corpus(db, clips, subsets=("train-clean-100", "dev-clean", "test-clean"))
    trans = db / "train-clean-100" / "19" / "1240" / "19-1240.trans.txt"
    lines = trans.read_text().splitlines()
    trans.write_text(lines[0] + "\n19-1240-0001 \n")
    rc, out = run_data_sh(recipe, "--librispeech", str(db))
    assert rc == 1
    assert f"{trans}:2: utterance 19-1240-0001: transcript has no words" in out
    assert not (recipe / "data" / "train_clean_100").exists()
