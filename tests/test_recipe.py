"""The recipe pipeline end to end on the built-in corpus (--fast), and adding a corpus by copying a recipe."""
import json
import shutil
import subprocess
import sys
import textwrap

import kaldiio
import torch
import numpy as np
import pytest

from conftest import SENTENCES, copy_egs
from kdtool.data.datadir import DataDir
from kdtool.data.validate import validate_data_dir
from kdtool.kd.softlabels import SoftLabelReader
from kdtool.tokens import Tokenizer

SETS = ("train", "dev", "test", "test_unseen", "untrans")
DATA, DUMP = "data_fast", "dump_fast"  # --fast's own dirs: a full run never reads its tiny corpus
# the whole --fast recipe runs in the module fixture, charged to the first test (~6 min on 2 idle cores)
pytestmark = pytest.mark.timeout(1800)


def run(recipe, *args, check=True):
    p = subprocess.run(["./run.sh", *args], cwd=recipe, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"run.sh {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def feats_of(recipe, name, dump=DUMP):
    return dict(kaldiio.load_scp(str(recipe / dump / "fbank" / name / "feats.scp")).items())


@pytest.fixture(scope="module")
def mini_en(tmp_path_factory):
    """The whole --fast recipe, as CI runs it: tiny corpus, tiny teachers, decoding, scoring."""
    recipe = copy_egs(tmp_path_factory.mktemp("r")) / "mini_en" / "kd1"
    run(recipe, "--fast")
    return recipe


def test_stages_1_and_2_make_valid_data_features_and_tokens(mini_en):
    for name in SETS:
        for top in (DATA, f"{DUMP}/fbank"):  # both are complete Kaldi data dirs
            validate_data_dir(mini_en / top / name, check_audio=(top == DATA), sample_rate=16000,
                              require_text=(name != "untrans"), check_feats=(top != DATA))
        d = DataDir(mini_en / DUMP / "fbank" / name)
        feats = feats_of(mini_en, name)
        assert list(feats) == d.utts
        assert all(f.shape[1] == 80 and f.dtype == np.float32 for f in feats.values())
        assert {u: int(n) for u, n in d.read("utt2num_frames").items()} == {u: f.shape[0] for u, f in feats.items()}
        for f in ("text", "spk2utt"):
            if (mini_en / DATA / name / f).exists():
                assert (mini_en / DATA / name / f).read_text() == (d.path / f).read_text()
    assert kaldiio.load_mat(str(mini_en / DUMP / "fbank/train/cmvn.ark")).shape == (2, 81)
    assert not (mini_en / "data").exists() and not (mini_en / "dump").exists()  # a full run's dirs: untouched
    tok = Tokenizer(mini_en / DATA / "token_list/char")
    text = DataDir(mini_en / DATA / "train").read("text")
    assert all(tok.ids2text(tok.text2ids(t)) == t for t in text.values())
    times = [ln.split("\t")[0] for ln in (mini_en / "exp_fast/stage_times.tsv").read_text().splitlines()]
    assert times == ["1", "2", "3", "4", "5", "6", "7"]


def test_teachers_are_trained_decoded_and_scored(mini_en):
    exp = mini_en / "exp_fast"
    expected = {"ar_teacher": ["ar_beam10"], "transducer_teacher": ["transducer_beam4", "transducer_streaming"]}
    for model, decodes in expected.items():
        info = json.loads((exp / model / "model_info.json").read_text())
        assert info["params"] > 0 and (exp / model / "model.pth").exists()
        for name in decodes:
            for x in ("dev", "test", "test_unseen"):
                score = json.loads((exp / model / f"decode_{name}_{x}" / "score.json").read_text())
                assert score["n_utts"] == 30 and 0 <= score["wer"] and score["rtf"] > 0
                assert score["params"] == info["params"] and score["test_set"] == x
    # stage 4: the AR teacher's soft labels, for the transcribed set and the untranscribed pool
    labels = exp / "ar_teacher" / "soft_labels"
    for name, n, topk in (("frame_posteriors_train", 300, 8), ("frame_posteriors_untrans", 60, 8),
                          ("fb_posteriors_train", 300, 8), ("fb_posteriors_dense_train", 300, None)):
        reader = SoftLabelReader(labels / name, tokens_path=mini_en / DATA / "token_list/char/tokens.txt")
        assert len(reader) == n and reader.topk == topk
        utt = reader.keys()[0]
        assert torch.allclose(reader.dense(utt).sum(-1), torch.ones(1), atol=1e-4)
    # stage 5: a student without and one with distillation, decoded and scored like the teachers
    for student, alpha in (("ctc_student", 0.0), ("ctc_student_kd", 0.5)):
        info = json.loads((exp / student / "model_info.json").read_text())
        assert info["kind"] == "ctc" and info["alpha"] == alpha and info["teacher"] == "exp_fast/ar_teacher"
        saved = (exp / student / "config.yaml").read_text()
        assert ("ar_teacher/soft_labels/fb_posteriors_train" in saved) == (alpha > 0)  # the dump it learnt from
        score = json.loads((exp / student / "decode_ctc_greedy_test" / "score.json").read_text())
        assert score["n_utts"] == 30 and score["params"] == info["params"]
    # a Mask-CTC student learning from frame, token and sequence level at once; decoded greedy and beam
    info = json.loads((exp / "nar_student_kd" / "model_info.json").read_text())
    assert info["kind"] == "nar" and info["kd_terms"] == ["frame", "token", "seq"]
    lines = (labels / "nbest_untrans" / "nbest.jsonl").read_text().splitlines()
    assert len(lines) == 60 and all(len(json.loads(ln)["hyps"]) <= 2 for ln in lines)
    for name in ("nar_maskctc_greedy", "nar_maskctc_beam5"):
        assert json.loads((exp / "nar_student_kd" / f"decode_{name}_test" / "score.json").read_text())["n_utts"] == 30
    # progressive distillation: each stage's teacher is the previous stage's student
    for student, teacher in (("transducer_student_stage1", "transducer_teacher"),
                             ("transducer_student_stage2", "transducer_student_stage1")):
        info = json.loads((exp / student / "model_info.json").read_text())
        assert info["teacher"] == f"exp_fast/{teacher}" and info["kd_terms"] == ["lattice"]
        assert (exp / teacher / "soft_labels" / "rnnt_lattice_train" / "soft_labels.scp").is_file()
        for name in ("transducer_beam4", "transducer_streaming"):
            assert (exp / student / f"decode_{name}_test" / "score.json").is_file()
    results = (mini_en / "exp_fast" / "RESULTS.md").read_text()
    for row in ("ar_teacher", "ar_beam10", "transducer_beam4_alsd", "streaming_chunk16", "test_unseen",
                "ctc_student_kd"):
        assert row in results, row
    # results.json: the table's rows, each knowing its teacher, its twin and how it was made
    rows = {(r["name"], r["decode"]): r for r in json.loads((exp / "results.json").read_text())}
    kd = rows[("ctc_student_kd", "ctc_greedy")]
    assert (kd["teacher"], kd["twin"], kd["kd"]) == ("ar_teacher", "ctc_student", ["frame"])
    assert kd["config"] == "conf/fast/train_ctc_student_kd.yaml" and kd["soft_label_bytes_per_frame"] > 0
    assert kd["command"].startswith("python -m kdtool.bin.distill --config conf/fast/train_ctc_student_kd.yaml")
    assert kd["test_wer_rel_pct"] == pytest.approx(
        100 * (kd["test_wer"] / rows[("ctc_student", "ctc_greedy")]["test_wer"] - 1), abs=0.01)
    # paired bootstrap: the KD student against its twin and its teacher on every set, the interval in the table
    by = {(c["against"], c["set"]): c for c in kd["comparisons"]}
    assert set(by) == {(w, x) for w in ("twin", "teacher") for x in ("dev", "test", "test_unseen")}
    twin = by[("twin", "test")]
    assert twin["n_utts"] == 30 and twin["n_resamples"] == 1000 and 0 <= twin["p_improvement"] <= 1
    assert twin["wer"] == pytest.approx(kd["test_wer"], abs=1e-3) and kd["test_wer_rel_ci"] == twin["rel_pct_ci"]
    assert f"{twin['rel_pct']:+.1f}% [{twin['rel_pct_ci'][0]:+.1f}, {twin['rel_pct_ci'][1]:+.1f}]" in results
    assert "## Is the difference real? (paired bootstrap)" in results and "`<space>` token" in results
    assert rows[("ar_teacher", "ar_beam10")]["command"].startswith("python -m kdtool.bin.train")
    stage2 = [r for (name, _), r in rows.items() if name == "transducer_student_stage2"]
    assert stage2 and all(r["teacher"] == "transducer_student_stage1" and r["compression_pct"] > 0 for r in stage2)
    assert (mini_en / "exp_fast/plots/wer_vs_params.png").stat().st_size > 10_000


def test_rerunning_a_stage_alone_gives_the_same_result(mini_en):
    before = feats_of(mini_en, "dev")
    tokens = (mini_en / DATA / "token_list/char/tokens.txt").read_text()
    # the sets the checks read (dev; train for the CMVN and token list): the others would add minutes to CI
    out = run(mini_en, "--fast", "--stage", "2", "--stop_stage", "2", "--test_sets", "dev", "--untrans_set", "").stdout
    assert "Stage 1:" not in out and "Stage 2:" in out
    after = feats_of(mini_en, "dev")
    assert list(before) == list(after)
    assert all(np.array_equal(before[u], after[u]) for u in before)
    assert (mini_en / DATA / "token_list/char/tokens.txt").read_text() == tokens


def test_stage_3_installs_a_packaged_teacher_and_refuses_a_damaged_one(mini_en, tmp_path):
    """How mini_en ships its teachers, and how any recipe takes a teacher trained elsewhere."""
    pkg = tmp_path / "ar_teacher"
    subprocess.run([sys.executable, "-m", "kdtool.bin.pack_model", "--exp_dir", "exp_fast/ar_teacher",
                    "--out_dir", str(pkg)], cwd=mini_en, check=True, capture_output=True)
    out = run(mini_en, "--fast", "--stage", "3", "--stop_stage", "3", "--teacher_configs", "",
              "--teacher_packages", str(pkg), "--expdir", "exp_pkg").stdout
    assert "Stage 3: installing exp_pkg/ar_teacher" in out and "training" not in out
    trained = torch.load(mini_en / "exp_fast/ar_teacher/model.pth")
    installed = torch.load(mini_en / "exp_pkg/ar_teacher/model.pth")
    assert trained.keys() == installed.keys()
    assert all(torch.allclose(trained[k].float(), installed[k].float(), atol=1e-2, rtol=1e-2) for k in trained)
    assert (mini_en / "exp_pkg/ar_teacher/tokens/tokens.txt").read_text() == \
        (mini_en / "exp_fast/ar_teacher/tokens/tokens.txt").read_text()
    # damaged after packing: stage 3 stops before writing anything, naming the file and both sha256s
    with open(pkg / "model.fp16.pth", "ab") as f:
        f.write(b"x")
    p = run(mini_en, "--fast", "--stage", "3", "--stop_stage", "3", "--teacher_configs", "",
            "--teacher_packages", str(pkg), "--expdir", "exp_pkg2", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert f"{pkg}/model.fp16.pth: sha256 " in p.stderr and "does not match" in p.stderr
    assert not (mini_en / "exp_pkg2" / "ar_teacher").exists()


def test_decoding_a_model_that_was_never_trained_fails_clearly(mini_en):
    p = run(mini_en, "--fast", "--stage", "6", "--stop_stage", "6", "--models", "exp_fast/no_such_student",
            check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "exp_fast/no_such_student: not a trained model (no model_info.json)" in p.stderr


def test_unknown_option_fails_clearly(mini_en):
    p = run(mini_en, "--fast", "--no-such-option", "1", check=False)
    assert p.returncode != 0
    assert "unknown option --no-such-option" in p.stderr


def test_bad_audio_stops_stage_1_with_the_utterance_named(mini_en):
    recipe = mini_en.parents[1] / "broken_en" / "kd1"  # same depth: the relative links stay valid
    shutil.copytree(mini_en, recipe, symlinks=True)
    # A corpus whose data.sh yields a wav at the wrong sample rate: stage 1 validation must catch it.
    (recipe / "local" / "data.sh").write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        set -e
        sed -i 's|^\\(\\S*\\) .*|\\1 sox -n -r 8000 -b 16 -t wav - synth 0.5 sine 440 \\||' data_fast/dev/wav.scp
        """))
    p = run(recipe, "--fast", "--stop_stage", "1", check=False)
    assert p.returncode != 0
    assert "data_fast/dev/wav.scp: utterance" in p.stderr and "sample rate 8000 Hz, expected 16000 Hz" in p.stderr


def test_a_new_corpus_is_a_copied_recipe_with_its_own_data_sh(tmp_path, tiny_wavs):
    egs = copy_egs(tmp_path)
    recipe = egs / "my_corpus" / "kd1"
    recipe.parent.mkdir()
    subprocess.run(["cp", "-a", str(egs / "mini_en" / "kd1"), str(recipe)], check=True)
    wav_lines = "\n".join(f"{u} {p}" for u, p in sorted(tiny_wavs.items()))
    text_lines = "\n".join(f"{u} {t}" for u, t in sorted(SENTENCES.items()))
    (recipe / "local" / "data.sh").write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        # my_corpus: speakers spka (train) and spkb (dev and test)
        set -euo pipefail
        . ./path.sh
        mkdir -p data/all
        cat > data/all/wav.scp <<'X'
        {wav}
        X
        cat > data/all/text <<'X'
        {text}
        X
        awk '{{split($1, a, "-"); print $1, a[1]}}' data/all/wav.scp > data/all/utt2spk
        python -m kdtool.bin.fix_data_dir data/all
        for s in train dev; do mkdir -p data/$s; done
        grep ^spka data/all/wav.scp > data/train/wav.scp; grep ^spka data/all/text > data/train/text
        grep ^spkb data/all/wav.scp > data/dev/wav.scp; grep ^spkb data/all/text > data/dev/text
        for s in train dev; do awk '{{split($1, a, "-"); print $1, a[1]}}' data/$s/wav.scp > data/$s/utt2spk
          python -m kdtool.bin.fix_data_dir data/$s; done
        """).format(wav=wav_lines, text=text_lines))
    (recipe / "conf" / "pipeline.conf").write_text(textwrap.dedent("""\
        local_data_opts=""
        train_set=train
        valid_set=dev
        test_sets=dev
        untrans_set=""
        nj=2
        token_type=char
        """))
    run(recipe, "--stop_stage", "2")
    assert DataDir(recipe / "dump/fbank/train").utts == ["spka-u1", "spka-u2", "spka-u3"]
    assert len(feats_of(recipe, "dev", dump="dump")) == 3
    assert "<space>" in (recipe / "data/token_list/char/tokens.txt").read_text().split()
