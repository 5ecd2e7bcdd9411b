"""The papers' table: one row per (model, decoding method), with the teacher each student learnt from,
the KD terms it used, its twin (the same student trained without KD) and what KD bought against it.

Rows are what ``exp/results.json`` holds (a plot or a benchmark can be redone from it without parsing
Markdown). Keys: name, kind, params, size_mb, teacher, kd, twin, decode, dev_wer, test_wer, test_cer, rtf,
soft_label_bytes_per_frame, config, command; plus untranscribed (the student also learnt from the
untranscribed pool), compression_pct (params saved against the teacher) and
dev/test_wer_rel_pct (relative WER change against the twin, negative = better).
"""
import json
import os
from pathlib import Path

import yaml

KD_TERM_NAMES = {"frame": "frame", "token": "token", "seq": "sequence", "lattice": "lattice"}
KIND_ORDER = ("ar", "nar", "ctc", "transducer")
FRAME_DUMP_TYPES = ("fb_posteriors", "frame_posteriors", "rnnt_lattice")


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _bytes_per_frame(config):
    """Bytes per frame of the first frame- or lattice-level dump the student learnt from (None if none)."""
    for d in (config.get("kd_conf") or {}).get("teacher_data") or []:
        info = Path(d) / "dump_info.json"
        if info.is_file():
            info = _read_json(info)
            if info.get("type") in FRAME_DUMP_TYPES:
                return info["bytes_per_frame"]
    return None


def _config_path(model_dir, info):
    """The config the model was trained from: recorded by stage 3/5, else the recipe's naming rule."""
    if info.get("config"):
        return info["config"]
    guess = Path("conf") / f"train_{model_dir.name}.yaml"
    return str(guess) if guess.is_file() else None


def _scores(model_dir):
    """{decode method: {test set: score.json}} for one model dir."""
    out = {}
    for path in sorted(model_dir.glob("decode_*/score.json")):
        s = _read_json(path)
        test_set = s.get("test_set") or path.parent.name.rsplit("_", 1)[-1]
        out.setdefault(s.get("method") or path.parent.name, {})[test_set] = s
    return out


def busy(score):
    """Whether a decode ran while other work kept the machine's cores busy (1-minute load average,
    at its start or end, above the CPU count: the decode shared a core, its RTF is inflated)."""
    load, cpus = score.get("load_average"), score.get("cpu_count")
    return bool(load and cpus and max(load) > cpus)


def _twin(row, rows):
    """The same student trained without KD: a KD-free row of the same kind, size and decoding method
    (the one sharing the longest name prefix when several match)."""
    if not row["kd"]:
        return None
    same = [r for r in rows if not r["kd"] and r["teacher"] is None and r["kind"] == row["kind"]
            and r["params"] == row["params"] and r["decode"] == row["decode"]]
    same.sort(key=lambda r: (-len(os.path.commonprefix([r["name"], row["name"]])), r["name"]))
    return same[0]["name"] if same else None


def _rel(value, base):
    return None if value is None or not base else round(100.0 * (value - base) / base, 2)


def model_rows(exp_dir, dev_set, test_set):
    """Every scored model under ``exp_dir`` as results.json rows, teachers before their students."""
    rows = []
    for info_path in sorted(Path(exp_dir).glob("*/model_info.json")):
        model_dir = info_path.parent
        info = _read_json(info_path)
        config_file = model_dir / "config.yaml"
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        kd_terms = info.get("kd_terms") or []
        teacher = info.get("teacher") if kd_terms else None  # a twin is trained by stage 5 too, without KD
        kd_conf = config.get("kd_conf") or {}
        for decode, by_set in sorted(_scores(model_dir).items()):
            dev, test = by_set.get(dev_set, {}), by_set.get(test_set, {})
            rows.append({
                "name": model_dir.name, "kind": info.get("kind"), "params": info.get("params"),
                "size_mb": info.get("size_mb"), "teacher": Path(teacher).name if teacher else None,
                "kd": [KD_TERM_NAMES.get(t, t) for t in kd_terms], "twin": None,
                "untranscribed": bool(kd_terms and kd_conf.get("untranscribed")),
                "decode": decode, "dev_wer": dev.get("wer"), "test_wer": test.get("wer"),
                "test_cer": test.get("cer"), "rtf": test.get("rtf"), "rtf_busy": busy(test),
                "soft_label_bytes_per_frame": _bytes_per_frame(config) if teacher else None,
                "config": _config_path(model_dir, info), "command": info.get("command"),
                "compression_pct": None, "dev_wer_rel_pct": None, "test_wer_rel_pct": None,
            })
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        row["twin"] = _twin(row, rows)
    for row in rows:
        teacher = by_name.get(row["teacher"])
        if teacher and row["params"] and teacher["params"]:
            row["compression_pct"] = round(100.0 * (1 - row["params"] / teacher["params"]), 1)
    for row in rows:
        twin = next((r for r in rows if r["name"] == row["twin"] and r["decode"] == row["decode"]), None)
        if twin is None:
            continue
        if twin["compression_pct"] is None:  # the twin is as small as the distilled student
            twin["compression_pct"] = row["compression_pct"]
        row["dev_wer_rel_pct"] = _rel(row["dev_wer"], twin["dev_wer"])
        row["test_wer_rel_pct"] = _rel(row["test_wer"], twin["test_wer"])
    # families: a teacher with everything distilled from it (a twin joins its distilled versions' family)
    family = {r["name"]: _root(r, by_name)["name"] for r in rows}
    for row in rows:
        if row["twin"]:
            family[row["twin"]] = family[row["name"]]
    return sorted(rows, key=lambda r: _order(r, by_name[family[r["name"]]]))


def _root(row, by_name):
    """The first teacher of a chain of distillations (a model trained from scratch is its own root)."""
    seen = set()
    while row["teacher"] in by_name and row["name"] not in seen:
        seen.add(row["name"])
        row = by_name[row["teacher"]]
    return row


def _kind_index(kind):
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def _order(row, root):
    # a family together (the AR teacher, its NAR and CTC students; the transducer and its chain), the
    # teacher first, bigger students first, a twin before its distilled versions
    return (_kind_index(root["kind"]), root["name"], row["name"] != root["name"], _kind_index(row["kind"]),
            -(row["params"] or 0), row["name"].split("_kd")[0], bool(row["kd"]), row["name"], row["decode"])
