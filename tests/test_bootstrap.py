"""Paired bootstrap confidence intervals in stage 7: the statistics against a plain-Python bootstrap,
decode dirs that cannot be compared, and what RESULTS.md and results.json show (twins, greedy
decodings, teachers, seeds)."""
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from kdtool.bin.score import score_decode_dir
from kdtool.scoring.bootstrap import check_paired, paired_bootstrap, read_alignment
from kdtool.scoring.results import write_results

VOCAB = "the a cat dog sat ran on in under mat box red big small one two".split()


def test_a_system_against_itself():
    rng = np.random.default_rng(1)
    words = rng.integers(3, 20, 200)
    errors = rng.binomial(words, 0.3)
    c = paired_bootstrap(errors, errors, words)
    assert c["diff"] == 0 and c["diff_ci"] == [0, 0] and c["rel_pct"] == 0 and c["rel_pct_ci"] == [0, 0]
    assert c["p_improvement"] == 0.5 and not c["significant"]  # every resample a tie, counted half
    assert c["wer"] == c["wer_other"] == pytest.approx(100 * errors.sum() / words.sum(), abs=1e-4)


def test_a_known_difference_is_inside_the_interval():
    """2,000 utterances of 10 words, A errs on each word with probability 0.2, B with 0.3: the true
    difference is -10 points, -33.3% relative."""
    rng = np.random.default_rng(2)
    words = np.full(2000, 10)
    a, b = rng.binomial(words, 0.2), rng.binomial(words, 0.3)
    c = paired_bootstrap(a, b, words)
    assert c["diff_ci"][0] < -10 < c["diff_ci"][1] and c["diff_ci"][0] < c["diff"] < c["diff_ci"][1]
    assert c["rel_pct_ci"][0] < -100 / 3 < c["rel_pct_ci"][1]
    # the interval is as wide as the binomial variance says: sd of the difference sqrt(0.16 + 0.21) / sqrt(20000)
    assert c["diff_ci"][1] - c["diff_ci"][0] == pytest.approx(2 * 1.96 * 100 * np.sqrt(0.37 / 20000), rel=0.15)
    assert c["p_improvement"] == 1.0 and c["significant"]
    flipped = paired_bootstrap(b, a, words)
    assert flipped["p_improvement"] == 0.0 and flipped["diff_ci"] == [-c["diff_ci"][1], -c["diff_ci"][0]]


def plain_bootstrap(a, b, words, n, seed):
    """The same statistics with Python's random module and a loop: an independent implementation."""
    rng = random.Random(seed)
    diffs, wins = [], 0.0
    for _ in range(n):
        pick = [rng.randrange(len(words)) for _ in words]
        ea, eb, nw = (sum(x[i] for i in pick) for x in (a, b, words))
        diffs.append(100 * (ea - eb) / nw)
        wins += 1.0 if ea < eb else 0.5 if ea == eb else 0.0
    return np.percentile(diffs, [2.5, 97.5]), wins / n


def test_matches_a_plain_python_bootstrap_within_monte_carlo_error():
    rng = np.random.default_rng(3)
    words = rng.integers(2, 15, 80)
    a = rng.binomial(words, 0.35)
    b = np.minimum(words + 2, a + rng.integers(-2, 3, 80))  # close to A: improvement neither certain nor absent
    ours = paired_bootstrap(a, b, words, n_resamples=4000)
    (lo, hi), p = plain_bootstrap(a.tolist(), b.tolist(), words.tolist(), 4000, seed=11)
    # the 2.5% and 97.5% points of 4,000 resamples each vary by ~0.07 of the interval's width
    assert ours["diff_ci"] == pytest.approx([lo, hi], abs=0.12 * (hi - lo))
    assert 0.05 < p < 0.95 and ours["p_improvement"] == pytest.approx(p, abs=0.04)  # sd of each ~0.008


def test_a_rerun_gives_identical_numbers_and_the_seed_matters():
    rng = np.random.default_rng(4)
    words = rng.integers(2, 15, 300)
    a, b = rng.binomial(words, 0.3), rng.binomial(words, 0.32)
    assert paired_bootstrap(a, b, words) == paired_bootstrap(a, b, words)
    assert paired_bootstrap(a, b, words, seed=1)["diff_ci"] != paired_bootstrap(a, b, words)["diff_ci"]
    assert paired_bootstrap(a, b, words)["n_resamples"] == 1000


# --- decode dirs, as stages 6 and 7 leave them -------------------------------------------------------

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def make_refs(root, name, n=60, seed=0):
    rng = random.Random(seed)
    refs = {f"spk1-u{i:03d}": " ".join(rng.choice(VOCAB) for _ in range(rng.randint(4, 9))) for i in range(n)}
    d = root / "dump" / name
    write(d / "text", "".join(f"{u} {t}\n" for u, t in refs.items()))
    write(d / "utt2num_frames", "".join(f"{u} 300\n" for u in refs))
    return d, refs


def corrupt(refs, p, seed):
    """Hypotheses with about a share ``p`` of the words substituted."""
    rng = random.Random(seed)
    return {u: " ".join(rng.choice(VOCAB) if rng.random() < p else w for w in t.split()) for u, t in refs.items()}


def decode(exp, model, method, ref_dir, hyps, config_method=None):
    d = exp / model / f"decode_{method}_{ref_dir.name}"
    write(d / "text", "".join(f"{u} {h}\n" for u, h in hyps.items()))
    write(d / "decode_time", "".join(f"{u} 0.1\n" for u in hyps))
    write(d / "decode_info.json", json.dumps({"model_dir": f"exp/{model}", "method": method,
                                              "config": {"method": config_method or method}}))
    score_decode_dir(ref_dir, d)
    return d


def model(exp, name, kind, params, teacher=None, kd_terms=()):
    write(exp / name / "model_info.json", json.dumps({"kind": kind, "params": params, "size_mb": params * 4e-6,
                                                      "teacher": teacher, "kd_terms": list(kd_terms)}))


@pytest.fixture
def sets(tmp_path):
    return {x: make_refs(tmp_path, x, seed=i) for i, x in enumerate(("dev", "test"))}


def test_mismatched_decode_dirs_fail_naming_both_and_the_utterance(tmp_path, sets):
    dev, refs = sets["dev"]
    exp = tmp_path / "exp"
    a = decode(exp, "a", "ctc_greedy", dev, corrupt(refs, 0.2, 1))
    other, other_refs = make_refs(tmp_path / "other", "dev", seed=9)  # the same ids, other sentences
    b = decode(exp, "b", "ctc_greedy", other, corrupt(other_refs, 0.2, 2))
    with pytest.raises(ValueError,
                       match=f"{a} and {b} cannot be compared: utterance spk1-u000 has different references"):
        check_paired(read_alignment(a), read_alignment(b))
    # the same sentences, one utterance fewer: the first missing one is named, not left out silently
    fewer, _ = make_refs(tmp_path / "fewer", "dev", n=59)
    c = decode(exp, "c", "ctc_greedy", fewer, {u: refs[u] for u in list(refs)[:59]})
    with pytest.raises(ValueError, match=f"{a} and {c} cannot be compared: utterance spk1-u059 is only in the first"):
        check_paired(read_alignment(a), read_alignment(c))
    with pytest.raises(ValueError, match=f"{c} and {a} cannot be compared: utterance spk1-u059 is only in the second"):
        check_paired(read_alignment(c), read_alignment(a))

    # in stage 7: a KD student scored on other references than its twin fails make_results, in one line
    model(exp, "a", "ctc", 1000)
    model(exp, "b", "ctc", 1000, teacher="exp/t", kd_terms=["frame"])
    p = subprocess.run([sys.executable, "-m", "kdtool.bin.make_results", "--exp", str(exp), "--out",
                        str(tmp_path / "RESULTS.md")], capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert f"{b} and {a} cannot be compared: utterance spk1-u000 has different references" in p.stderr
    assert not (tmp_path / "RESULTS.md").exists()


def build_exp(tmp_path, sets, seeds=(None,)):
    """An AR teacher (beam), a Mask-CTC twin and its KD version (greedy and beam), per seed, and a KD
    student without a twin; KD makes a third fewer word errors."""
    exp = tmp_path / "exp"
    model(exp, "ar_teacher", "ar", 4_000_000)
    for i, (x, (d, refs)) in enumerate(sets.items()):
        decode(exp, "ar_teacher", "ar_beam10", d, corrupt(refs, 0.15, 100 + i), "ar_beam")
        for seed in seeds:
            tag = "" if seed is None else f"_seed{seed}"
            s = 10 * (seed or 0) + i
            for name, p, kd in (("nar_student", 0.45, ()), ("nar_student_kd_frame", 0.3, ("frame",))):
                model(exp, name + tag, "nar", 1_000_000, "exp/ar_teacher", kd)
                decode(exp, name + tag, "maskctc_greedy", d, corrupt(refs, p, s + 200 * len(name)))
                decode(exp, name + tag, "maskctc_beam5", d, corrupt(refs, p - 0.02, s + 300 * len(name)),
                       "maskctc_beam")
        model(exp, "ctc_lonely_kd", "ctc", 500_000, "exp/ar_teacher", ["frame"])
        decode(exp, "ctc_lonely_kd", "ctc_greedy", d, corrupt(refs, 0.5, 7 + i))
    return exp


def test_results_show_intervals_for_twins_greedy_and_teachers(tmp_path, sets):
    exp = build_exp(tmp_path, sets)
    out = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, "-m", "kdtool.bin.make_results", "--exp", str(exp), "--out", str(out)],
                   check=True, capture_output=True)
    rows = {(r["name"], r["decode"]): r for r in json.loads((exp / "results.json").read_text())}
    kd = rows[("nar_student_kd_frame", "maskctc_greedy")]
    assert kd["twin"] == "nar_student" and kd["test_wer_rel_pct"] < -15
    lo, hi = kd["test_wer_rel_ci"]
    assert lo < kd["test_wer_rel_pct"] < hi < 0 and kd["test_significant"] and kd["test_p_improvement"] > 0.97
    by = {(c["against"], c["set"]): c for c in kd["comparisons"]}
    assert set(by) == {(w, x) for w in ("twin", "teacher") for x in ("dev", "test")}
    assert by[("teacher", "dev")]["other"] == "ar_teacher" and by[("teacher", "dev")]["diff"] > 0
    assert by[("twin", "test")]["rel_pct_ci"] == [lo, hi] and by[("twin", "test")]["n_utts"] == 60
    # each count is the alignments': the WERs agree with score.json's
    assert by[("twin", "dev")]["wer"] == pytest.approx(kd["dev_wer"], abs=1e-3)
    twin_dev_wer = rows[("nar_student", "maskctc_greedy")]["dev_wer"]
    assert by[("twin", "dev")]["wer_other"] == pytest.approx(twin_dev_wer, abs=1e-3)
    beam = rows[("nar_student_kd_frame", "maskctc_beam5")]
    greedy = [c for c in beam["comparisons"] if c["against"] == "greedy"]
    assert [(c["other"], c["set"]) for c in greedy] == [("nar_student_kd_frame", x) for x in ("dev", "test")]
    assert greedy[0]["wer_other"] == pytest.approx(kd["dev_wer"], abs=1e-3)
    assert rows[("ctc_lonely_kd", "ctc_greedy")]["twin"] is None  # its row says so, the stage goes on

    md = out.read_text()
    table = md.split("## Models")[1].split("![")[0]
    cell = f"**{kd['dev_wer_rel_pct']:+.1f}% [{kd['dev_wer_rel_ci'][0]:+.1f}, {kd['dev_wer_rel_ci'][1]:+.1f}]**"
    assert f"|{cell} / **{kd['test_wer_rel_pct']:+.1f}% [{lo:+.1f}, {hi:+.1f}]**|" in table
    assert "|ctc_lonely_kd|ctc|ctc_greedy|" in table and "|no twin|" in table
    assert "95% paired bootstrap confidence interval (1,000 resamples" in md
    assert "CER counts each space between words as a `<space>` token (ESPnet's convention)" in md
    section = md.split("## Is the difference real? (paired bootstrap)")[1].split("\n## ")[0]
    assert "|nar_student_kd_frame|maskctc_beam5|greedy decoding (nar_student_kd_frame)|test|" in section
    assert "|nar_student|maskctc_greedy|teacher (ar_teacher)|dev|" not in section  # a twin has no teacher
    assert section.count("|twin (nar_student)|") == 4 and section.count("|teacher (ar_teacher)|") == 6

    # a rerun: the same numbers, byte for byte
    first = (exp / "results.json").read_bytes()
    write_results(exp, out)
    assert (exp / "results.json").read_bytes() == first


def test_seeds_mean_std_and_the_pooled_bootstrap(tmp_path, sets):
    exp = build_exp(tmp_path, sets, seeds=(1, 2, 3))
    out = tmp_path / "RESULTS.md"
    write_results(exp, out)
    rows = json.loads((exp / "results.json").read_text())
    kd = [r for r in rows if r["model"] == "nar_student_kd_frame" and r["decode"] == "maskctc_greedy"]
    assert [(r["name"], r["seed"], r["twin"]) for r in kd] == [
        (f"nar_student_kd_frame_seed{s}", s, f"nar_student_seed{s}") for s in (1, 2, 3)]  # each seed's row, paired
    pooled = [c for c in kd[0]["comparisons"] if c["pooled_seeds"] and c["against"] == "twin" and c["set"] == "test"]
    assert len(pooled) == 1 and pooled[0]["pooled_seeds"] == [1, 2, 3] and pooled[0]["n_utts"] == 180
    assert pooled[0] in kd[2]["comparisons"]
    own = [c for c in kd[0]["comparisons"] if c["against"] == "twin" and c["set"] == "test" and not c["pooled_seeds"]]
    assert own[0]["n_utts"] == 60 and own[0]["other"] == "nar_student_seed1"
    md = out.read_text()
    wers = [r["test_wer"] for r in kd]
    cell = f"|{np.mean(wers):.2f} ± {np.std(wers, ddof=1):.2f}|"
    row = next(ln for ln in md.splitlines() if ln.startswith("|nar_student_kd_frame (seeds 1,2,3)|nar|maskctc_greedy|"))
    assert cell in row and f"{pooled[0]['rel_pct']:+.1f}% [{pooled[0]['rel_pct_ci'][0]:+.1f}, " in row
    assert "|nar_student_seed1|" not in md.split("## Is the difference real?")[0]  # one row per model
