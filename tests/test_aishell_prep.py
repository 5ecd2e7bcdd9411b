"""egs/aishell/kd1/local/data.sh on a tiny fake AISHELL-1 in the real layout, with Mandarin
synthesized by espeak-ng and stored as 16 kHz wav, as the real corpus is."""
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import assert_c_sorted, copy_egs
from conftest import run_data_sh as run_recipe_data_sh
from kdtool.data.audio import load_audio
from kdtool.data.datadir import DataDir, c_sorted
from kdtool.data.validate import validate_data_dir

TRANSCRIPT = "aishell_transcript_v0.8.txt"
SENTENCES = ["而 对 楼市 成交 抑制 作用 最 大 的 限 购", "也 成为 地方 政府 的 眼中 钉",
             "自 六月 底 呼和浩特 市 率先 宣布 取消 限 购 后", "各地 政府 便 纷纷 跟进"]
SPEAKERS = {"train": ["S0002", "S0003"], "dev": ["S0724", "S0725"], "test": ["S0764", "S0765"]}
UNTRANSCRIBED = "BAC009S0003W0499"  # a wav in train/ with no transcript line: skipped

pytestmark = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                reason="needs espeak-ng and sox")


def synth(sentence, path, rate):
    subprocess.run(f'espeak-ng -v cmn --stdout "{sentence}" | sox -t wav - -r {rate} -b 16 {path}',
                   shell=True, check=True, capture_output=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """One synthesized 16 kHz wav per sentence, copied into every fake corpus."""
    d = tmp_path_factory.mktemp("clips")
    out = []
    for i, sentence in enumerate(SENTENCES):
        synth(sentence, d / f"{i}.wav", 16000)
        out.append(d / f"{i}.wav")
    return out


def make_corpus(root, clips):
    """Write <root>/data_aishell/{wav/<set>/<spk>/<utt>.wav,transcript/aishell_transcript_v0.8.txt};
    return {set: {utt: words with spaces}}."""
    data_aishell = root / "data_aishell"
    expected, lines, k = {}, [], 0
    for set_name, speakers in SPEAKERS.items():
        expected[set_name] = {}
        for spk in speakers:
            d = data_aishell / "wav" / set_name / spk
            d.mkdir(parents=True)
            for i in (121, 122):
                utt = f"BAC009{spk}W{i:04d}"
                shutil.copy(clips[k % len(clips)], d / f"{utt}.wav")
                expected[set_name][utt] = SENTENCES[k % len(SENTENCES)]
                lines.append(f"{utt} {SENTENCES[k % len(SENTENCES)]}")
                k += 1
    shutil.copy(clips[0], data_aishell / "wav" / "train" / "S0003" / f"{UNTRANSCRIBED}.wav")
    lines.append("BAC009S0916W0300 这 句 没有 音频")  # a transcript line with no wav: ignored
    (data_aishell / "transcript").mkdir()
    (data_aishell / "transcript" / TRANSCRIPT).write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
    return expected


@pytest.fixture
def recipe(tmp_path):
    """A copy of the recipes in a tree like the repository's, so that path.sh finds tools/venv."""
    return copy_egs(tmp_path / "kdtool") / "aishell" / "kd1"


def run_data_sh(recipe, *args, env=None):
    return run_recipe_data_sh(recipe, *args, env=env, unset=("AISHELL",))


def test_prepares_train_dev_test(tmp_path, recipe, clips):
    db = tmp_path / "aishell"
    expected = make_corpus(db, clips)
    rc, out = run_data_sh(recipe, "--aishell", str(db))
    assert rc == 0, out

    data = recipe / "data"
    assert sorted(p.name for p in data.iterdir()) == ["dev", "test", "train"]
    for set_name, exp in expected.items():
        d = DataDir(data / set_name)
        assert d.utts == c_sorted(exp) and len(exp) == 4
        text = d.read("text")
        assert text == {u: words.replace(" ", "") for u, words in exp.items()}
        assert all(" " not in t for t in text.values())
        assert d.read("utt2spk") == {u: u[:11] for u in exp}
        assert d.read("spk2utt") == {f"BAC009{s}": f"BAC009{s}W0121 BAC009{s}W0122" for s in SPEAKERS[set_name]}
        for f in ("wav.scp", "text", "utt2spk", "spk2utt"):
            assert_c_sorted(d.path / f)
        for utt, path in d.read("wav.scp").items():
            assert Path(path) == db / "data_aishell" / "wav" / set_name / utt[6:11] / f"{utt}.wav"
            samples, rate = load_audio(path, expected_rate=16000)
            assert rate == 16000 and len(samples) > 1600
        validate_data_dir(d.path, check_audio=True, sample_rate=16000, require_text=True)
    # the text file is UTF-8, the Chinese characters as they are
    assert "BAC009S0002W0121 而对楼市成交抑制作用最大的限购\n" in (data / "train" / "text").read_text(encoding="utf-8")
    # the wav without a transcript line is skipped, and counted in the log
    assert UNTRANSCRIBED not in DataDir(data / "train").read("wav.scp")
    assert "skipped 1 audio file(s) without a transcript line" in out and UNTRANSCRIBED in out
    assert "4 utterances, 2 speakers" in out


def test_db_is_data_aishell_from_db_sh(tmp_path, recipe, clips):
    db = tmp_path / "aishell"
    expected = make_corpus(db, clips)
    rc, out = run_data_sh(recipe, "--check_audio", "false", env={"AISHELL": str(db / "data_aishell")})
    assert rc == 0, out
    for set_name, exp in expected.items():
        assert DataDir(recipe / "data" / set_name).utts == c_sorted(exp)


@pytest.mark.parametrize("how", ["option", "db.sh"])
def test_missing_corpus(tmp_path, recipe, how):
    missing = tmp_path / "no" / "such" / "aishell"
    if how == "option":
        rc, out = run_data_sh(recipe, "--aishell", str(missing))
    else:
        rc, out = run_data_sh(recipe, env={"AISHELL": str(missing)})
    assert rc == 1
    assert str(missing) in out and "db.sh" in out and "--aishell" in out
    assert not (recipe / "data").exists()


def test_not_extracted(tmp_path, recipe):
    """The download has per-speaker archives in data_aishell/wav/ that must be extracted first."""
    data_aishell = tmp_path / "aishell" / "data_aishell"
    (data_aishell / "wav").mkdir(parents=True)
    (data_aishell / "wav" / "S0002.tar.gz").write_bytes(b"")
    (data_aishell / "transcript").mkdir()
    (data_aishell / "transcript" / TRANSCRIPT).write_text("BAC009S0002W0122 而 对\n", encoding="utf-8")
    rc, out = run_data_sh(recipe, "--aishell", str(tmp_path / "aishell"))
    assert rc == 1
    assert f"{data_aishell / 'wav' / 'train'}: folder for the train set does not exist" in out
    assert "1 .tar.gz archive(s): extract them there first" in out


def test_empty_transcript_line(tmp_path, recipe, clips):
    db = tmp_path / "aishell"
    make_corpus(db, clips)
    transcript = db / "data_aishell" / "transcript" / TRANSCRIPT
    lines = transcript.read_text(encoding="utf-8").splitlines()
    n = next(i for i, line in enumerate(lines) if line.startswith("BAC009S0724W0122"))
    lines[n] = "BAC009S0724W0122 "
    transcript.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc, out = run_data_sh(recipe, "--aishell", str(db))
    assert rc == 1
    assert f"{transcript}:{n + 1}: utterance BAC009S0724W0122: transcript has no text" in out
    assert not (recipe / "data" / "train").exists()


def test_8khz_wav_fails_validation(tmp_path, recipe, clips):
    db = tmp_path / "aishell"
    make_corpus(db, clips)
    wav = db / "data_aishell" / "wav" / "dev" / "S0725" / "BAC009S0725W0121.wav"
    synth(SENTENCES[0], wav, 8000)
    rc, out = run_data_sh(recipe, "--aishell", str(db))
    assert rc == 1
    assert "utterance BAC009S0725W0121: sample rate 8000 Hz, expected 16000 Hz" in out
    assert "BAC009S0725W0122" not in out.split("problem(s)")[-1]  # only the bad one is reported
    assert (recipe / "data" / "train").is_dir() and not (recipe / "data" / "test").exists()  # stopped at dev
