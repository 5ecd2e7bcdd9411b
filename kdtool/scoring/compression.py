"""The compression report of RESULTS.md: each exported model (kd.sh --export_students true) and its
teacher, with parameters, size on disk (model.pth, the ONNX fp32 and int8 graphs) and, for each
decoding method that was also decoded from the export, test WER and RTF with PyTorch, ONNX fp32 and
ONNX int8. An int8 WER worse than fp32's by more than the paired bootstrap's 95% interval (the
interval of int8 minus fp32 lies above zero) is marked.

The numbers come from results.json's rows (summary.py): ``backend``, ``disk_mb`` and, on int8 rows,
the comparison against the fp32 decode (``against`` fp32) and ``int8_worse_than_fp32``.
"""
import json
from pathlib import Path

BACKENDS = ("torch", "onnx", "onnx_int8")
COLUMNS = ("model", "kind", "params (M)", "size MB: pth / onnx / int8", "decode", "test WER: torch / onnx / int8",
           "int8 - fp32 (points) [95% CI]", "RTF: torch / onnx / int8")


def backend(score):
    """The decode's backend (decode_info.json records it for the onnx ones)."""
    return score.get("backend") or "torch"


def base_decode(decode, backend):
    """The PyTorch decode's name of an export's decode: ctc_greedy_onnx_int8 -> ctc_greedy."""
    suffix = f"_{backend}"
    return decode[:-len(suffix)] if backend != "torch" and decode.endswith(suffix) else decode


def disk_mb(model_dir):
    """{pytorch, onnx, onnx_int8}: MB on disk of model.pth and of the export's fp32 and int8 graphs
    (export_info.json's sizes; None without an export)."""
    model_dir = Path(model_dir)
    pth = model_dir / "model.pth"
    sizes = {"pytorch": round(pth.stat().st_size / 1e6, 3) if pth.is_file() else None, "onnx": None,
             "onnx_int8": None}
    info = model_dir / "export" / "export_info.json"
    if info.is_file():
        try:
            files = json.loads(info.read_text(encoding="utf-8"))["files"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{info}: not an export_info.json ({e}); export the model again") from None
        for key, int8 in (("onnx", False), ("onnx_int8", True)):
            graphs = [f["bytes"] for n, f in files.items() if n.endswith(".onnx") and n.endswith(".int8.onnx") == int8]
            sizes[key] = round(sum(graphs) / 1e6, 3) if graphs else None
    return sizes


def int8_verdict(row, test_set):
    """Whether an int8 row's test WER is worse than fp32's beyond the bootstrap interval (None: not compared)."""
    c = next((c for c in row["comparisons"] if c["against"] == "fp32" and c["set"] == test_set
              and c["pooled_seeds"] is None), None)
    return None if c is None else c["diff_ci"][0] > 0


def _keys(rows):
    """The (model, PyTorch decode) pairs of the report, in the order of ``rows``: those decoded from an
    export, and for each teacher of an exported model that has no export itself, its decodes of the same
    methods, else its best PyTorch decode on dev."""
    exported = {(r["name"], r["base_decode"]) for r in rows if r["backend"] != "torch"}
    names = {name for name, _ in exported}
    keys = set(exported)
    for teacher in {r["teacher"] for r in rows if r["name"] in names and r["teacher"]} - names:
        own = [r for r in rows if r["name"] == teacher and r["backend"] == "torch"]
        same = [r for r in own if any((n, r["base_decode"]) in exported for n in names)]
        best = min(own, key=lambda r: (r["dev_wer"] is None, r["dev_wer"] or 0.0, r["decode"]), default=None)
        keys.update((r["name"], r["base_decode"]) for r in (same or [best] if best else []))
    return [k for k in dict.fromkeys((r["name"], r["base_decode"]) for r in rows) if k in keys]


def report(rows, test_set):
    """One entry per (model, PyTorch decode) of the report (see _keys), its three backends side by side."""
    out = []
    for name, decode in _keys(rows):
        by_backend = {b: next((r for r in rows if r["name"] == name and r["base_decode"] == decode
                               and r["backend"] == b), None) for b in BACKENDS}
        first = next(r for r in by_backend.values() if r)
        int8 = by_backend["onnx_int8"]
        comparison = next((c for c in (int8 or {}).get("comparisons", []) if c["against"] == "fp32"
                           and c["set"] == test_set and c["pooled_seeds"] is None), None)
        out.append({"name": name, "kind": first["kind"], "params": first["params"], "teacher": first["teacher"],
                    "decode": decode, "disk_mb": first["disk_mb"],
                    "test_wer": {b: r and r["test_wer"] for b, r in by_backend.items()},
                    "rtf": {b: r and r["rtf"] for b, r in by_backend.items()},
                    "rtf_busy": any(r and r["rtf_busy"] for r in by_backend.values()),
                    "int8_vs_fp32": comparison, "int8_worse_than_fp32": int8 and int8["int8_worse_than_fp32"]})
    return out


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def cells(entry):
    wer = entry["test_wer"]
    c = entry["int8_vs_fp32"]
    mark = "†" if entry["int8_worse_than_fp32"] else ""
    return {"model": entry["name"] + (f" (teacher of {entry['teacher_of']})" if entry.get("teacher_of") else ""),
            "kind": entry["kind"] or "-", "params (M)": _fmt(entry["params"] and entry["params"] / 1e6, ".2f"),
            "size MB: pth / onnx / int8": " / ".join(_fmt(entry["disk_mb"][k], ".2f")
                                                     for k in ("pytorch", "onnx", "onnx_int8")),
            "decode": entry["decode"],
            "test WER: torch / onnx / int8": f"{_fmt(wer['torch'], '.2f')} / {_fmt(wer['onnx'], '.2f')} / "
                                             f"{_fmt(wer['onnx_int8'], '.2f')}{mark}",
            "int8 - fp32 (points) [95% CI]": "-" if c is None else
            f"{c['diff']:+.2f} [{c['diff_ci'][0]:+.2f}, {c['diff_ci'][1]:+.2f}]",
            "RTF: torch / onnx / int8": " / ".join(_fmt(entry["rtf"][b], ".4f") for b in BACKENDS)
                                        + ("*" if entry["rtf_busy"] else "")}


def lines(rows, test_set):
    """RESULTS.md's compression section (no lines when no model was exported)."""
    entries = report(rows, test_set)
    if not any(e["test_wer"]["onnx"] is not None or e["test_wer"]["onnx_int8"] is not None for e in entries):
        return []
    exported = {e["name"] for e in entries if e["test_wer"]["onnx"] is not None}
    for e in entries:
        if e["name"] not in exported:  # a teacher in the report for its students
            e["teacher_of"] = ", ".join(dict.fromkeys(x["name"] for x in entries if x["teacher"] == e["name"]))
    table = [cells(e) for e in entries]
    return (["", f"## Compression: PyTorch, ONNX fp32 and ONNX int8 (test = {test_set})", "",
             "Each exported model (kd.sh --export_students true) and its teacher. size: MB on disk of model.pth and "
             "of the export's fp32 and int8 graphs (export_info.json). WER and RTF (one CPU thread) of the same "
             "decoding with PyTorch, with the fp32 graphs and with the int8 graphs in onnxruntime. int8 - fp32: "
             "the paired bootstrap of the int8 decode against the fp32 one; † marks an int8 WER worse than fp32's "
             "by more than that interval (it lies above zero). * = decoded while other work kept every core busy.",
             ""]
            + ["|" + "|".join(COLUMNS) + "|", "|" + "|".join("---" for _ in COLUMNS) + "|"]
            + ["|" + "|".join(str(c[k]).replace("|", "\\|") for k in COLUMNS) + "|" for c in table])
