"""Stage 7: WER/CER counts against hand-computed ones and jiwer, score.json, alignments, RESULTS.md."""
import json
import logging
import platform
import random
import subprocess
import sys

import jiwer
import pytest

from kdtool.bin.score import score_decode_dir
from kdtool.scoring.results import write_results
from kdtool.scoring.wer import align, format_alignment, score

REF = "THE CAT SAT ON THE MAT"


def counts(c):
    return c.cor, c.sub, c.dele, c.ins


@pytest.mark.parametrize("hyp, expected", [
    ("THE CAT SAT ON THE MAT", (6, 0, 0, 0)),
    ("THE CAT SAT ON MAT", (5, 0, 1, 0)),             # one deletion
    ("THE CAT SAT ON THE HAT", (5, 1, 0, 0)),         # one substitution
    ("THE CAT SAT ON THE MAT TODAY", (6, 0, 0, 1)),   # one insertion
    ("A CAT DOWN SAT ON MAT", (4, 1, 1, 1)),          # one of each
    ("", (0, 0, 6, 0)),
])
def test_word_counts(hyp, expected):
    c, pairs = align(REF.split(), hyp.split())
    assert counts(c) == expected
    s = score({"u1": REF}, {"u1": hyp}).summary()
    assert (s["cor"], s["sub"], s["del"], s["ins"]) == expected
    assert s["n_words"] == 6 and s["wer"] == pytest.approx(100 * sum(expected[1:]) / 6)
    assert s["sentence_error_rate"] == (0.0 if hyp == REF else 100.0)
    # The pairs spell out both sides.
    assert [r for r, _, _ in pairs if r] == REF.split() and [h for _, h, _ in pairs if h] == hyp.split()


def test_deletion_is_placed_where_the_word_is_missing():
    _, pairs = align(REF.split(), "THE CAT SAT ON MAT".split())
    assert [op for _, _, op in pairs] == list("CCCCDC") and pairs[4] == ("THE", None, "D")


def test_mandarin_cer():
    ref = {"a1": "今天 天气 很好", "a2": "我爱北京"}
    hyp = {"a1": "今天天汽很好", "a2": "我爱北京天安门"}
    s = score(ref, hyp, cer_convention="no_space").summary()
    # Characters, spaces ignored: 1 substitution (气->汽) and 3 insertions over 10 characters.
    assert (s["n_chars"], s["char_cor"], s["char_sub"], s["char_del"], s["char_ins"]) == (10, 9, 1, 0, 3)
    assert s["cer"] == pytest.approx(40.0) and s["cer_convention"] == "no_space"
    assert s["n_words"] == 4 and s["n_utts"] == 2 and s["sentence_error_rate"] == 100.0
    # ESPnet's convention (the default): the reference's two spaces are <space> tokens, deleted in the hypothesis.
    s = score(ref, hyp).summary()
    assert (s["n_chars"], s["char_cor"], s["char_sub"], s["char_del"], s["char_ins"]) == (12, 9, 1, 2, 3)
    assert s["cer"] == pytest.approx(50.0) and s["cer_convention"] == "espnet"


def test_cer_conventions_against_jiwer():
    """ESPnet's CER counts a space like any character, as jiwer's does; no_space is jiwer's CER of the
    texts with their spaces removed."""
    rng = random.Random(3)
    for _ in range(100):
        ref = " ".join("".join(rng.choice("ab") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 5)))
        hyp = " ".join("".join(rng.choice("ab") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 5)))
        assert score({"u": ref}, {"u": hyp}).summary()["cer"] == pytest.approx(100 * jiwer.cer(ref, hyp))
        nospace = score({"u": ref}, {"u": hyp}, cer_convention="no_space").summary()["cer"]
        assert nospace == pytest.approx(100 * jiwer.cer(ref.replace(" ", ""), hyp.replace(" ", "") or " "))
    with pytest.raises(ValueError, match="unknown CER convention 'words'"):
        score({"u": "a"}, {"u": "a"}, cer_convention="words")


def test_empty_and_missing_hypotheses(caplog):
    ref = {"u1": "A B C", "u2": "D E", "u3": "F"}
    with caplog.at_level(logging.WARNING):
        res = score(ref, {"u1": "", "u3": "F"})
    s = res.summary()
    assert res.missing == ["u2"] and s["n_missing"] == 1
    assert (s["cor"], s["sub"], s["del"], s["ins"], s["n_words"]) == (1, 0, 5, 0, 6)
    # "A B C" and "D E" deleted: 5 letters and 3 <space> tokens
    assert s["char_del"] == 8 and s["sentence_error_rate"] == pytest.approx(200 / 3)
    assert "1 of 3 utterances have no hypothesis" in caplog.text and "u2" in caplog.text


def test_bad_inputs():
    with pytest.raises(ValueError, match="hypothesis for utterance u9 has no reference"):
        score({"u1": "A"}, {"u1": "A", "u9": "B"})
    with pytest.raises(ValueError, match="utterance u2: empty reference"):
        score({"u1": "A", "u2": "  "}, {"u1": "A", "u2": "B"})


def test_counts_agree_with_jiwer():
    rng = random.Random(7)
    for _ in range(300):
        ref = [rng.choice("ABCDE") for _ in range(rng.randint(1, 15))]
        hyp = [rng.choice("ABCDE") for _ in range(rng.randint(0, 15))]
        c, _ = align(ref, hyp)
        o = jiwer.process_words(" ".join(ref), " ".join(hyp))
        assert counts(c) == (o.hits, o.substitutions, o.deletions, o.insertions), (ref, hyp)
        s = score({"u": " ".join(ref)}, {"u": " ".join(hyp)}).summary()
        assert s["wer"] == pytest.approx(100 * jiwer.wer(" ".join(ref), " ".join(hyp)))


def test_alignment_block():
    _, pairs = align(REF.split(), "A CAT DOWN SAT ON MAT".split())
    assert format_alignment("utt1", pairs) == "\n".join([
        "id: utt1",
        "Scores: (#C #S #D #I) 4 1 1 1",
        "REF:  THE CAT ***  SAT ON THE MAT",
        "HYP:  A   CAT DOWN SAT ON *** MAT",
        "EVAL: S       I           D",
    ])


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def ref_dir(tmp_path):
    d = tmp_path / "dump" / "fbank" / "test"
    write(d / "text", f"u1 {REF}\nu2 HELLO WORLD\nu3 GOOD MORNING\n")
    write(d / "utt2num_frames", "u1 101\nu2 201\nu3 301\n")   # 1.025 s, 2.025 s, 3.025 s
    return d


def make_decode_dir(d, hyps, times, info):
    write(d / "text", "".join(f"{u} {h}".rstrip() + "\n" for u, h in hyps.items()))
    if times is not None:
        write(d / "decode_time", "".join(f"{u} {t}\n" for u, t in times.items()))
    if info is not None:
        write(d / "decode_info.json", json.dumps(info))
    return d


INFO = {"model_dir": "exp/teacher_ar", "method": "ar_beam10", "params": 12_345_678, "size_mb": 47.1,
        "kind": "ar", "command": "python -m kdtool.bin.decode --beam 10", "beam": 10}


def test_score_cli(tmp_path, ref_dir):
    dec = make_decode_dir(tmp_path / "exp" / "teacher_ar" / "decode_ar_beam10_test",
                          {"u1": "THE CAT SAT ON MAT", "u2": "HELLO WORD", "u3": "GOOD MORNING"},
                          {"u1": 0.5, "u2": 0.25, "u3": 1.0}, INFO)
    out = subprocess.run([sys.executable, "-m", "kdtool.bin.score", "--ref", str(ref_dir), str(dec)],
                         capture_output=True, text=True, check=True)
    assert "WER 20.00%" in out.stdout and "RTF 0.2881" in out.stdout
    s = json.loads((dec / "score.json").read_text())
    assert s["wer"] == pytest.approx(20.0) and (s["sub"], s["del"], s["ins"], s["n_words"]) == (1, 1, 0, 10)
    # Characters (38 letters, 7 <space> tokens): THE and a space deleted (4), WORLD -> WORD (1 deletion).
    assert (s["n_chars"], s["char_sub"], s["char_del"], s["char_ins"]) == (45, 0, 5, 0)
    assert s["cer"] == pytest.approx(500 / 45) and s["cer_convention"] == "espnet" and s["sentence_error_rate"] == pytest.approx(200 / 3)
    assert s["decode_seconds"] == pytest.approx(1.75) and s["audio_seconds"] == pytest.approx(6.075)
    assert s["rtf"] == pytest.approx(1.75 / 6.075)
    assert s["n_utts"] == 3 and s["n_missing"] == 0
    assert s["test_set"] == "test" and s["ref_dir"] == str(ref_dir)
    assert {k: s[k] for k in INFO} == INFO   # everything in decode_info.json, extra keys too
    blocks = (dec / "alignment.txt").read_text().split("\n\n")
    assert [b.splitlines()[0] for b in blocks if b.strip()] == ["id: u1", "id: u2", "id: u3"]
    assert "HYP:  HELLO WORD" in blocks[1] and "EVAL:       S" in blocks[1]
    assert (dec / "alignment_char.txt").read_text().startswith("id: u1\nScores: (#C #S #D #I) 18 0 4 0\n")


def test_score_without_timing_or_info(tmp_path, ref_dir, caplog):
    dec = make_decode_dir(tmp_path / "dec", {"u1": REF, "u3": ""}, None, None)
    with caplog.at_level(logging.WARNING):
        s = score_decode_dir(ref_dir, dec)
    assert s["rtf"] is None and s["decode_seconds"] is None and s["params"] is None and s["command"] is None
    assert s["audio_seconds"] == pytest.approx(1.025 + 3.025)   # decoded utterances only
    assert s["n_missing"] == 1 and s["del"] == 4 and s["wer"] == pytest.approx(40.0)
    assert "decode_time not found" in caplog.text and "decode_info.json not found" in caplog.text


def test_score_cli_errors(tmp_path, ref_dir):
    dec = make_decode_dir(tmp_path / "dec", {"u1": REF, "u7": "X"}, {"u1": 1, "u7": 1}, INFO)
    out = subprocess.run([sys.executable, "-m", "kdtool.bin.score", "--ref", str(ref_dir), str(dec)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "hypothesis for utterance u7 has no reference" in out.stderr
    assert "Traceback" not in out.stderr and not (dec / "score.json").exists()
    make_decode_dir(dec, {"u1": REF}, {"u2": 1}, INFO)
    with pytest.raises(ValueError, match="decode_time: no entry for utterance u1"):
        score_decode_dir(ref_dir, dec)


def test_make_results(tmp_path, ref_dir):
    exp = tmp_path / "exp"
    hyps = {"u1": REF, "u2": "HELLO WORLD", "u3": "GOOD MORNING"}
    times = dict.fromkeys(hyps, 0.1)
    dev = ref_dir.parent / "dev"
    dev.mkdir()
    for name in ("text", "utt2num_frames"):
        (dev / name).write_text((ref_dir / name).read_text())
    student = {**INFO, "model_dir": "exp/student_ctc", "method": "ctc_greedy", "kind": "ctc",
               "params": 1_500_000, "size_mb": 5.9, "command": "python -m kdtool.bin.decode --ctc"}
    for model, info in (("teacher_ar", INFO), ("student_ctc", student)):
        for test in (ref_dir, dev):
            d = make_decode_dir(exp / model / f"decode_{info['method']}_{test.name}", hyps, times, info)
            score_decode_dir(test, d)
    # A worse hypothesis for one row, so the table shows the scores of the right dir.
    make_decode_dir(exp / "student_ctc" / "decode_ctc_greedy_test", {**hyps, "u2": "HELLO"}, times, student)
    score_decode_dir(ref_dir, exp / "student_ctc" / "decode_ctc_greedy_test")

    out = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, "-m", "kdtool.bin.make_results", "--exp", str(exp), "--out", str(out),
                    "--title", "mini_en kd1"], check=True, capture_output=True)
    md = out.read_text()
    assert md.splitlines()[1] == "# mini_en kd1"
    assert f"- python version: `{platform.python_version()}`" in md
    for key in ("date", "pytorch version", "espnet version", "kdtool version: `0.1.0`", "git commit", "CPU",
                "CPU threads", "CPU capability (torch)"):
        assert f"- {key}" in md
    rows = [line for line in md.split("## Every test set")[1].splitlines() if line.startswith("|")]
    assert rows[0] == "|model|kind|decode|test set|params (M)|size (MB)|WER|CER|S/D/I|RTF|"
    assert rows[2:] == [
        "|student_ctc|ctc|ctc_greedy|dev|1.50|5.90|0.00|0.00|0/0/0|0.0494|",
        "|student_ctc|ctc|ctc_greedy|test|1.50|5.90|10.00|13.33|0/1/0|0.0494|",  # " WORLD": 6 of 45 characters
        "|teacher_ar|ar|ar_beam10|dev|12.35|47.10|0.00|0.00|0/0/0|0.0494|",
        "|teacher_ar|ar|ar_beam10|test|12.35|47.10|0.00|0.00|0/0/0|0.0494|",
    ]
    commands = md.split("## Decode commands")[1]
    assert commands.count("python -m kdtool.bin.decode --ctc") == 2
    assert commands.count("python -m kdtool.bin.decode --beam 10") == 2
    assert commands.index("student_ctc / dev / ctc_greedy") < commands.index("teacher_ar / test / ar_beam10")


def fake_model(exp, name, info, config=None, scores=()):
    """An exp dir as stages 3/5 and 7 leave it: model_info.json, config.yaml, decode dirs with score.json."""
    write(exp / name / "model_info.json", json.dumps(info))
    write(exp / name / "config.yaml", json.dumps(config or {}))  # JSON is YAML
    for method, test_set, wer, *extra in scores:  # extra: more score.json keys
        write(exp / name / f"decode_{method}_{test_set}" / "score.json",
              json.dumps({"method": method, "test_set": test_set, "wer": wer, "cer": wer / 3, "rtf": 0.01,
                          "sub": 1, "del": 0, "ins": 0, "model_dir": f"exp/{name}", "kind": info["kind"],
                          "load_average": [0.9, 1.1], "cpu_count": 2, **(extra[0] if extra else {})}))


def test_results_table_json_and_plots(tmp_path, monkeypatch):
    """The papers' table: twins found by kind + size + decoding, compression against the teacher, the
    relative WER change KD bought, bytes per frame of the dump used; results.json and two PNGs."""
    monkeypatch.chdir(tmp_path)  # dump paths in config.yaml are relative to the recipe dir, as in kd.sh
    exp = tmp_path / "exp"
    write(tmp_path / "exp/ar/soft_labels/fb_posteriors_train/dump_info.json",
          json.dumps({"type": "fb_posteriors", "bytes_per_frame": 64.5}))
    ctc = {"kind": "ctc", "params": 500_000, "size_mb": 2.0}
    fake_model(exp, "ar", {"kind": "ar", "params": 4_000_000, "size_mb": 16.0, "config": "conf/train_ar.yaml",
                           "command": "python -m kdtool.bin.train --config conf/train_ar.yaml"},
               scores=[("ar_beam10", "dev", 20.0), ("ar_beam10", "test", 22.0)])
    # the twin: trained by stage 5 with the teacher's dir at hand, but no KD term
    fake_model(exp, "ctc_student", {**ctc, "teacher": "exp/ar", "kd_terms": []},
               scores=[("ctc_greedy", "dev", 50.0), ("ctc_greedy", "test", 40.0)])
    fake_model(exp, "ctc_student_kd", {**ctc, "teacher": "exp/ar", "kd_terms": ["frame", "seq"]},
               {"kd_conf": {"untranscribed": True, "teacher_data": ["exp/ar/soft_labels/fb_posteriors_train"]}},
               scores=[("ctc_greedy", "dev", 45.0), ("ctc_greedy", "test", 42.0, {"load_average": [2.2, 3.0]})])
    fake_model(exp, "tiny_other", {**ctc, "params": 100_000}, scores=[("ctc_greedy", "test", 70.0)])
    write(exp / "ar/csv/version_0/metrics.csv", "epoch,step,train/loss,valid/loss\n0,10,5.0,\n0,19,,4.0\n1,20,3.0,\n")
    write(exp / "stage_times.tsv", "3\t2026-11-22T01:00:00\t100\n3\t2026-11-22T02:00:00\t120\n5\t60\n")
    write(exp / "benchmark_decode/benchmark.md", "# Decoding speed\n\n| model | RTF |\n|---|---|\n| ar | 0.1 |\n")

    out = tmp_path / "RESULTS.md"
    write(tmp_path / "local/results_notes.md", "The masked LM learns slowly here.\n")
    subprocess.run([sys.executable, "-m", "kdtool.bin.make_results", "--exp", "exp", "--out", str(out),
                    "--notes", "local/results_notes.md"], check=True, capture_output=True)
    rows = json.loads((exp / "results.json").read_text())
    assert [r["name"] for r in rows] == ["ar", "ctc_student", "ctc_student_kd", "tiny_other"]
    ar, twin, kd, other = rows
    assert ar["teacher"] is None and ar["kd"] == [] and ar["config"] == "conf/train_ar.yaml"
    assert ar["command"].startswith("python -m kdtool.bin.train") and ar["decode"] == "ar_beam10"
    assert twin["teacher"] is None and twin["twin"] is None and twin["compression_pct"] == 87.5
    assert kd["teacher"] == "ar" and kd["kd"] == ["frame", "sequence"] and kd["twin"] == "ctc_student"
    assert kd["untranscribed"] and kd["soft_label_bytes_per_frame"] == 64.5 and kd["compression_pct"] == 87.5
    assert kd["dev_wer_rel_pct"] == -10.0 and kd["test_wer_rel_pct"] == 5.0
    assert (kd["dev_wer"], kd["test_wer"], kd["rtf"]) == (45.0, 42.0, 0.01)
    assert other["dev_wer"] is None and other["twin"] is None
    assert set(KEYS) <= set(ar)
    md = out.read_text()
    assert ("|ctc_student_kd|ctc|ctc_greedy|0.50|2.00|ar|87.5|frame+sequence (+untranscribed)|45.00|42.00|14.00|"
            "0.0100*|-10.0 / +5.0|64.5|") in md  # decoded while the cores were busy
    assert "|ctc_student|ctc|ctc_greedy|0.50|2.00|-|87.5|-|50.00|40.00|13.33|0.0100|-|-|" in md
    assert kd["rtf_busy"] and not twin["rtf_busy"]
    assert "|3|2026-11-22T01:00:00|100|1.7|\n|3|2026-11-22T02:00:00|120|2.0|" in md  # every run
    assert "## Notes\n\n<!-- from local/results_notes.md -->\nThe masked LM learns slowly here.\n" in md
    assert md.index("## Notes") < md.index("## Time of each stage")
    # the decoding benchmark (exp/ is not in git): its table, one heading down, after the notes
    assert "## Decoding speed (exp/benchmark_decode/benchmark.md)\n\n| model | RTF |\n|---|---|\n| ar | 0.1 |\n" in md
    assert md.index("## Notes") < md.index("## Decoding speed") < md.index("## Time of each stage")
    assert "|all||220|3.7|" in md and "|5|" not in md  # a line that is not stage, date, seconds is skipped
    for png in ("wer_vs_params", "learning_curves"):  # linked from RESULTS.md, real PNGs beside it
        assert f"](plots/{png}.png)" in md
        assert (tmp_path / "plots" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


KEYS = ("name", "kind", "params", "size_mb", "teacher", "kd", "twin", "decode", "dev_wer", "test_wer", "test_cer",
        "rtf", "soft_label_bytes_per_frame", "config", "command")


def test_make_results_without_scores(tmp_path):
    with pytest.raises(ValueError, match="no score.json found"):
        write_results(tmp_path, tmp_path / "RESULTS.md")
    assert not (tmp_path / "RESULTS.md").exists()


def test_missing_notes_file_is_a_one_line_error_before_any_output(tmp_path):
    fake_model(tmp_path / "exp", "ctc_student", {"kind": "ctc", "params": 1000, "size_mb": 0.004},
               scores=[("ctc_greedy", "test", 40.0)])
    p = subprocess.run([sys.executable, "-m", "kdtool.bin.make_results", "--exp", str(tmp_path / "exp"),
                        "--out", str(tmp_path / "RESULTS.md"), "--notes", str(tmp_path / "no_notes.md")],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" not in p.stderr and "no_notes.md" in p.stderr
    assert not (tmp_path / "RESULTS.md").exists() and not (tmp_path / "exp/results.json").exists()


def test_wer_vs_params_keeps_key_and_legend_off_the_points():
    """The key and the legend sit right of the axes (an earlier legend inside them hid the transducer
    teacher), and the figure is wide enough for the longest key line."""
    import matplotlib.pyplot as plt

    from kdtool.scoring.plots import wer_vs_params_figure

    long_name = "transducer_student_single_nokd"
    rows = [{"name": f"{long_name}_{i}", "kind": ["ar", "nar", "ctc", "transducer"][i % 4],
             "decode": "transducer_beam4_alsd", "params": (i + 1) * 2.5e5, "test_wer": 90.0 - i,
             "kd": ["frame"] if i % 2 else [], "twin": f"{long_name}_{i - 1}" if i % 2 else None} for i in range(40)]
    fig = wer_vs_params_figure(rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes_box = fig.axes[0].get_window_extent(renderer)
    legend_box = fig.legends[0].get_window_extent(renderer)
    key = next(t for t in fig.texts if long_name in t.get_text())
    key_box = key.get_window_extent(renderer)
    fig_w, fig_h = fig.bbox.width, fig.bbox.height
    for box in (legend_box, key_box):
        assert box.x0 > axes_box.x1  # right of the axes: no point can be under it
        assert box.x1 <= fig_w and box.y0 >= 0 and box.y1 <= fig_h  # nothing cut off
    assert not key_box.overlaps(legend_box)
    assert key.get_text().count("\n") == len(rows) - 1
    plt.close(fig)
