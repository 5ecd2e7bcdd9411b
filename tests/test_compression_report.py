"""RESULTS.md's compression report and its results.json fields, from hand-made decode dirs: an AR teacher
(PyTorch only), a CTC student whose int8 export errs much more than its fp32 one (marked) and a
Mask-CTC student whose int8 export is as good as fp32 (not marked)."""
import json

import pytest

from kdtool.bin.score import score_decode_dir
from kdtool.scoring.results import write_results
from test_bootstrap import corrupt, make_refs, write


def decode(exp, model, name, ref_dir, hyps, method, backend=None, seconds=0.1):
    d = exp / model / f"decode_{name}_{ref_dir.name}"
    write(d / "text", "".join(f"{u} {h}\n" for u, h in hyps.items()))
    write(d / "decode_time", "".join(f"{u} {seconds}\n" for u in hyps))
    write(d / "decode_info.json", json.dumps({"model_dir": f"exp/{model}", "method": name, "config": {"method": method},
                                              **({"backend": backend} if backend else {})}))
    score_decode_dir(ref_dir, d)


def model(exp, name, kind, params, pth_bytes, teacher=None, export=None):
    write(exp / name / "model_info.json", json.dumps({"kind": kind, "params": params, "size_mb": params * 4e-6,
                                                      "teacher": teacher, "kd_terms": ["frame"] if teacher else []}))
    with open(exp / name / "model.pth", "wb") as f:
        f.truncate(pth_bytes)
    if export:
        write(exp / name / "export" / "export_info.json",
              json.dumps({"files": {n: {"bytes": b, "sha256": "x"} for n, b in export.items()}}))


def test_compression_report(tmp_path):
    sets = {x: make_refs(tmp_path, x, n=120, seed=i) for i, x in enumerate(("dev", "test"))}
    exp = tmp_path / "exp"
    model(exp, "ar_teacher", "ar", 4_000_000, 16_100_000)
    model(exp, "ctc_student", "ctc", 1_000_000, 4_050_000, "exp/ar_teacher",
          {"model.onnx": 3_900_000, "model.int8.onnx": 1_100_000, "tokens.txt": 200, "export_info.json": 900})
    model(exp, "nar_student", "nar", 2_000_000, 8_020_000, "exp/ar_teacher",
          {"model.onnx": 6_000_000, "mlm_decoder.onnx": 1_500_000, "model.int8.onnx": 1_600_000,
           "mlm_decoder.int8.onnx": 400_000})
    for i, (x, (d, refs)) in enumerate(sets.items()):
        decode(exp, "ar_teacher", "ar_beam10", d, corrupt(refs, 0.1, 10 + i), "ar_beam")
        ctc = corrupt(refs, 0.25, 20 + i)
        decode(exp, "ctc_student", "ctc_greedy", d, ctc, "ctc_greedy", seconds=0.09)
        decode(exp, "ctc_student", "ctc_greedy_onnx", d, ctc, "ctc_greedy", "onnx", seconds=0.03)
        decode(exp, "ctc_student", "ctc_greedy_onnx_int8", d, corrupt(refs, 0.45, 30 + i), "ctc_greedy",
               "onnx_int8", seconds=0.06)
        nar = corrupt(refs, 0.2, 40 + i)
        decode(exp, "nar_student", "maskctc_greedy", d, nar, "maskctc_greedy")
        decode(exp, "nar_student", "maskctc_greedy_onnx", d, nar, "maskctc_greedy", "onnx")
        # int8 changes one word of one utterance: within the interval
        first = next(iter(nar))
        decode(exp, "nar_student", "maskctc_greedy_onnx_int8", d, {**nar, first: nar[first] + " cat"},
               "maskctc_greedy", "onnx_int8")

    out = tmp_path / "RESULTS.md"
    write_results(exp, out)
    rows = {(r["name"], r["decode"]): r for r in json.loads((exp / "results.json").read_text())}
    int8 = rows[("ctc_student", "ctc_greedy_onnx_int8")]
    assert (int8["backend"], int8["base_decode"]) == ("onnx_int8", "ctc_greedy")
    assert int8["disk_mb"] == {"pytorch": 4.05, "onnx": 3.9, "onnx_int8": 1.1}
    fp32 = rows[("ctc_student", "ctc_greedy_onnx")]
    c = next(c for c in int8["comparisons"] if c["against"] == "fp32" and c["set"] == "test")
    assert c["other"] == "ctc_student" and c["wer"] == pytest.approx(int8["test_wer"], abs=1e-3)
    assert c["wer_other"] == pytest.approx(fp32["test_wer"], abs=1e-3)
    assert c["diff_ci"][0] > 0 and int8["int8_worse_than_fp32"] is True
    nar8 = rows[("nar_student", "maskctc_greedy_onnx_int8")]
    assert nar8["int8_worse_than_fp32"] is False and nar8["disk_mb"]["onnx"] == 7.5 and nar8["disk_mb"]["onnx_int8"] == 2.0
    assert rows[("ctc_student", "ctc_greedy")]["int8_worse_than_fp32"] is None
    assert rows[("ar_teacher", "ar_beam10")]["disk_mb"] == {"pytorch": 16.1, "onnx": None, "onnx_int8": None}
    assert fp32["test_wer"] == rows[("ctc_student", "ctc_greedy")]["test_wer"]

    md = out.read_text()
    section = md.split("## Compression: PyTorch, ONNX fp32 and ONNX int8 (test = test)")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("|") and "---" not in line][1:]
    assert [line.split("|")[1] for line in table] == ["ar_teacher (teacher of nar_student, ctc_student)",
                                                      "nar_student", "ctc_student"]
    teacher, nar_line, ctc_line = (line.split("|")[1:-1] for line in table)
    w = {k: rows[("ctc_student", k)]["test_wer"] for k in ("ctc_greedy", "ctc_greedy_onnx", "ctc_greedy_onnx_int8")}
    assert ctc_line[:5] == ["ctc_student", "ctc", "1.00", "4.05 / 3.90 / 1.10", "ctc_greedy"]
    assert ctc_line[5] == f"{w['ctc_greedy']:.2f} / {w['ctc_greedy_onnx']:.2f} / {w['ctc_greedy_onnx_int8']:.2f}†"
    assert ctc_line[6] == f"{c['diff']:+.2f} [{c['diff_ci'][0]:+.2f}, {c['diff_ci'][1]:+.2f}]"
    rtf = [rows[("ctc_student", k)]["rtf"] for k in ("ctc_greedy", "ctc_greedy_onnx", "ctc_greedy_onnx_int8")]
    assert rtf[0] > rtf[2] > rtf[1] and ctc_line[7] == " / ".join(f"{x:.4f}" for x in rtf)
    assert "†" not in nar_line[5] and nar_line[3] == "8.02 / 7.50 / 2.00"
    assert teacher[3:6] == ["16.10 / - / -", "ar_beam10", f"{rows[('ar_teacher', 'ar_beam10')]['test_wer']:.2f} / - / -"]
    # the int8 decodes against fp32 are also in the table of paired bootstraps
    assert "|ctc_student|ctc_greedy_onnx_int8|ONNX fp32 (ctc_student)|test|" in md


def test_no_export_no_compression_section(tmp_path):
    d, refs = make_refs(tmp_path, "test")
    exp = tmp_path / "exp"
    model(exp, "ctc", "ctc", 1_000_000, 4_000_000)
    decode(exp, "ctc", "ctc_greedy", d, corrupt(refs, 0.2, 1), "ctc_greedy")
    write_results(exp, tmp_path / "RESULTS.md")
    assert "## Compression" not in (tmp_path / "RESULTS.md").read_text()
    assert json.loads((exp / "results.json").read_text())[0]["disk_mb"]["onnx"] is None
