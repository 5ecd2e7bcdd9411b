"""The built-in corpus: deterministic, evaluation sentences and held-out voices never in training,
an untranscribed pool, a restricted vocabulary."""
import hashlib
import subprocess
import sys

import pytest

from conftest import REPO
from kdtool.data.datadir import DataDir
from kdtool.data.validate import validate_data_dir

SYNTH = REPO / "egs" / "mini_en" / "kd1" / "local" / "synth_corpus.py"
SIZES = ["--n_train", "60", "--n_dev", "8", "--n_test", "8", "--n_test_unseen", "8", "--n_untrans", "12",
         "--vocab_size", "200", "--n_heldout_voices", "5"]


def build(corpus, data, *plan_opts, nj=2):
    run = lambda *a: subprocess.run([sys.executable, str(SYNTH), *a], check=True, capture_output=True, text=True)
    run("plan", *SIZES, *plan_opts, str(corpus))
    for job in range(1, nj + 1):
        run("synth", "--job", str(job), "--nj", str(nj), str(corpus))
    run("datadirs", str(corpus), str(data))
    return {s: DataDir(data / s) for s in ("train", "dev", "test", "test_unseen", "untrans")}


def digest(d):
    h = hashlib.sha256()
    for utt, path in d.read("wav.scp").items():
        h.update(utt.encode() + open(path, "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mini")
    return tmp, build(tmp / "corpus", tmp / "data")


def test_sets_are_valid_kaldi_dirs(corpus):
    _, sets = corpus
    for name, d in sets.items():
        validate_data_dir(d.path, check_audio=True, sample_rate=16000, require_text=(name != "untrans"))
    assert [len(sets[s].utts) for s in ("train", "dev", "test", "test_unseen", "untrans")] == [60, 8, 8, 8, 12]
    assert not sets["untrans"].transcribed


def test_no_evaluation_sentence_or_heldout_voice_in_training(corpus):
    tmp, sets = corpus
    voices = dict(line.split("\t")[::3] for line in (tmp / "corpus" / "voices.tsv").read_text().splitlines())
    train_text = set(sets["train"].read("text").values())
    train_voices = set(sets["train"].read("utt2spk").values()) | set(sets["untrans"].read("utt2spk").values())
    for name in ("dev", "test", "test_unseen"):
        assert not set(sets[name].read("text").values()) & train_text, name
    assert not set(sets["test_unseen"].read("utt2spk").values()) & train_voices
    for name in ("dev", "test"):  # training voices (a tiny train need not hear them all)
        assert {voices[v] for v in sets[name].read("utt2spk").values()} == {"train"}, name
    assert {voices[v] for v in sets["test_unseen"].read("utt2spk").values()} == {"heldout"}
    assert len(train_voices) > 20, "many voices in training: voice variety is what generalizes"


def test_vocabulary_is_restricted(corpus):
    tmp, sets = corpus
    vocab = set((tmp / "corpus" / "vocab.txt").read_text().split())
    assert len(vocab) == 200
    words = {w for d in sets.values() if d.transcribed for t in d.read("text").values() for w in t.split()}
    assert words <= vocab


def test_same_options_same_corpus_and_reruns_resume(corpus, tmp_path):
    tmp, sets = corpus
    again = build(tmp_path / "corpus", tmp_path / "data", nj=3)  # another job split, same result
    for name in sets:
        assert digest(again[name]) == digest(sets[name]), name
        assert again[name].read("utt2spk") == sets[name].read("utt2spk")
    # Remove some wavs as a killed run would leave them: the rerun makes exactly those again.
    before = digest(again["train"])
    wavs = sorted((tmp_path / "corpus" / "wav").rglob("*.wav"))
    for w in wavs[::7]:
        w.unlink()
    rebuilt = build(tmp_path / "corpus", tmp_path / "data")
    assert digest(rebuilt["train"]) == before


def test_another_seed_gives_another_corpus(corpus, tmp_path):
    _, sets = corpus
    other = build(tmp_path / "c2", tmp_path / "d2", "--seed", "7")
    assert other["train"].read("text") != sets["train"].read("text")


def test_a_changed_plan_replaces_old_audio(tmp_path):
    first = digest(build(tmp_path / "c", tmp_path / "d")["test"])
    second = build(tmp_path / "c", tmp_path / "d", "--seed", "3")  # same dirs, other plan
    fresh = build(tmp_path / "c3", tmp_path / "d3", "--seed", "3")
    assert digest(second["test"]) == digest(fresh["test"]) != first


def test_training_sizes_change_no_evaluation_set_and_cut_one_stream(corpus, tmp_path):
    """A teacher's corpus (--n_teacher_train) holds the very audio of a smaller students' corpus:
    the same dev/test utterances whatever the sizes, train and untrans cuts of one stream."""
    _, small = corpus
    sizes = ["--n_train", "30", "--n_untrans", "10", "--n_teacher_train", "80"]
    big = build(tmp_path / "corpus", tmp_path / "data", *sizes)
    for name in ("dev", "test", "test_unseen"):
        assert digest(big[name]) == digest(small[name]), name
    teacher = DataDir(tmp_path / "data" / "train_teacher")
    assert len(teacher.utts) == 80
    stream = sorted(set(small["train"].utts) | set(small["untrans"].utts), key=lambda u: u.split("-")[1])
    # the small corpus's 60 + 12 utterances are the stream's first 72; the big one cuts it at 30 and 40
    assert sorted(big["train"].utts + big["untrans"].utts, key=lambda u: u.split("-")[1]) == stream[:40]
    assert set(stream) <= set(teacher.utts)
    t_scp, s_scp = teacher.read("wav.scp"), small["train"].read("wav.scp")
    for utt in small["train"].utts[:5]:
        assert open(t_scp[utt], "rb").read() == open(s_scp[utt], "rb").read()
