"""The papers' table: one row per (model, decoding method), with the teacher each student learnt from,
the KD terms it used, its twin (the same student trained without KD) and what KD bought against it.

Rows are what ``exp/results.json`` holds (a plot or a benchmark can be redone from it without parsing
Markdown). Keys: name, kind, params, size_mb, teacher, kd, twin, decode, dev_wer, test_wer, test_cer, rtf,
soft_label_bytes_per_frame, config, command; plus untranscribed (the student also learnt from the
untranscribed pool), compression_pct (params saved against the teacher),
dev/test_wer_rel_pct (relative WER change against the twin, negative = better) with its paired-bootstrap
interval dev/test_wer_rel_ci, dev/test_p_improvement and dev/test_significant (see bootstrap.py), and
comparisons: every paired bootstrap of the row (against its twin, the greedy decoding of the same model,
its teacher, an int8 export's decode its fp32 one; on each set both were decoded on); backend (torch, onnx,
onnx_int8), base_decode (the PyTorch decode's name), disk_mb and int8_worse_than_fp32 (compression.py).

Relations come from the records stage 3 and 5 write into each exp dir's model_info.json, never from
the dirs' names: ``config`` (the config file, as given), ``twin_config`` (its twin's config, see
kdtool.kd.distill.twin_config), ``seed`` and ``seed_option`` (the ``--seed`` given, null: the config's),
``teacher`` and ``kd_terms``. A KD row's twin is the exp dir whose record has that config (and the same
``--set`` overrides), decoded the same way, its run of the same seed_option (else its only run without
one). A run of kd.sh --student_seeds has model (its name without ``_seed<seed_option>``) and seed; the
rows of several seeds also get the comparisons on their pooled utterances (pooled_seeds), which
RESULTS.md shows.

An exp dir trained before the record (no twin_config and seed_option in model_info.json) is named in
a warning and read as kdtool read every dir before: its seed from a name <model>_seed<N>, its twin the
KD-free row of the same kind, size and decoding sharing the longest name prefix. Retraining it writes the
record; so does adding the keys to its model_info.json by hand.
"""
import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import yaml

from kdtool.scoring import compression
from kdtool.scoring.bootstrap import paired_bootstrap, pool, read_alignment

KIND_ORDER = ("ar", "nar", "ctc", "transducer")


def _terms():
    """The KD terms' table (kdtool.kd.terms), imported when a table has KD students: it imports torch and espnet."""
    from kdtool.kd import terms
    return terms


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
            if info.get("type") in _terms().per_frame_dump_types():
                return info["bytes_per_frame"]
    return None


def _scores(model_dir):
    """{decode method: {test set: (score.json, decode dir)}} for one model dir."""
    out = {}
    for path in sorted(model_dir.glob("decode_*/score.json")):
        s = _read_json(path)
        test_set = s.get("test_set") or (Path(s["ref_dir"]).name if s.get("ref_dir") else None)
        if not test_set:  # kdtool.bin.score writes both; the dir's name cannot tell test_unseen from unseen
            raise ValueError(f"{path}: no test_set or ref_dir (not written by kdtool.bin.score); score it again: "
                             f"python -m kdtool.bin.score --ref <data dir> {path.parent}")
        out.setdefault(s.get("method") or path.parent.name, {})[test_set] = (s, path.parent)
    return out


RECORD_KEYS = ("twin_config", "seed_option")  # what stage 3/5 record beyond what older exp dirs have


def split_seed(name):
    """(model, seed) of an exp dir name: nar_student_seed2 -> (nar_student, 2); (name, None) without a seed.
    Only for exp dirs without a record (see the module's docstring)."""
    m = re.fullmatch(r"(.+)_seed(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, None)


def run_record(model_dir, info):
    """What the results table needs to know of a run, from its model_info.json: config, overrides,
    twin_config, model (the name without its seed suffix), seed (the --seed given) and whether this came
    from a record (else from the dir's name, for an exp dir trained before the record)."""
    recorded = all(k in info for k in RECORD_KEYS)
    if recorded:
        seed, model = info["seed_option"], model_dir.name
        if seed is not None and model.endswith(f"_seed{seed}"):  # kd.sh --student_seeds: one model, several runs
            model = model[:-len(f"_seed{seed}")]
    else:
        model, seed = split_seed(model_dir.name)
    return {"config": info.get("config"), "overrides": list(info.get("overrides") or []),
            "twin_config": info.get("twin_config"), "model": model, "seed": seed, "recorded": recorded}


def _same_file(a, b):
    """Whether two recorded config paths name one file (both relative to the recipe dir, as kd.sh runs)."""
    return os.path.normpath(a) == os.path.normpath(b) or Path(a).resolve() == Path(b).resolve()


def busy(score):
    """Whether a decode ran while other work kept the machine's cores busy (1-minute load average,
    at its start or end, above the CPU count: the decode shared a core, its RTF is inflated)."""
    load, cpus = score.get("load_average"), score.get("cpu_count")
    return bool(load and cpus and max(load) > cpus)


def _recorded_twin(row, rows, records, warned):
    """The row's twin from the records: the run of the recorded twin config (same overrides, same
    decoding) of the same seed; None (logged once per model, ``warned``) when that config has no scored
    exp dir."""
    rec = records[row["name"]]
    if not row["kd"] or not rec["twin_config"]:
        return None
    of_twin = [r for r in rows if records[r["name"]]["config"]
               and _same_file(records[r["name"]]["config"], rec["twin_config"])]
    same = [r for r in of_twin if records[r["name"]]["overrides"] == rec["overrides"] and r["decode"] == row["decode"]]
    if not of_twin and row["name"] not in warned:
        warned.add(row["name"])
        logging.warning("%s: its twin %s (twin_config in model_info.json) has no scored exp dir: its row has no "
                        "twin; train the twin in stage 5 (student_configs) and decode it", row["name"],
                        rec["twin_config"])
    paired = {r["name"] for r in same if r["seed"] == row["seed"]}
    if len(paired) > 1 and row["name"] not in warned:
        warned.add(row["name"])
        logging.warning("%s: several exp dirs trained its twin %s with seed %s (%s): the first is its twin",
                        row["name"], rec["twin_config"], row["seed"], ", ".join(sorted(paired)))
    run = _same_seed(row, sorted(same, key=lambda r: r["name"])) if same else None
    return run["name"] if run else None


def _named_twin(row, rows):
    """The twin of a row without a record, guessed as kdtool did before the record: a KD-free row of the
    same kind, size and decoding method (the model sharing the longest name prefix when several match),
    its run of the same seed."""
    if not row["kd"]:
        return None
    same = [r for r in rows if not r["kd"] and r["teacher"] is None and r["kind"] == row["kind"]
            and r["params"] == row["params"] and r["decode"] == row["decode"]]
    if not same:
        return None
    model = min(same, key=lambda r: (-len(os.path.commonprefix([r["model"], row["model"]])), r["model"]))["model"]
    run = _same_seed(row, [r for r in same if r["model"] == model])
    return run["name"] if run else None


def _same_seed(row, runs):
    """The run of ``runs`` (one model's rows) paired with ``row``: the same seed, else the model's only
    run when it has no seeds (a teacher, a twin trained once)."""
    paired = [r for r in runs if r["seed"] == row["seed"]]
    if paired:
        return paired[0]
    return runs[0] if len(runs) == 1 and runs[0]["seed"] is None else None


def _greedy(row, rows):
    """The greedy decoding of the same model for a beam-search row: maskctc_beam -> maskctc_greedy,
    transducer_beam -> transducer_greedy, else the CTC head's ctc_greedy."""
    method = row["method"] or row["decode"]
    if "_beam" not in method:
        return None
    same_model = [r for r in rows if r["name"] == row["name"] and r is not row and r["backend"] == row["backend"]]
    for target in (method.split("_beam")[0] + "_greedy", "ctc_greedy"):
        match = [r for r in same_model if target in (r["method"], r["decode"])]
        if match:
            return match[0]
    return None


def _teacher_row(row, rows):
    """The teacher's row with the same decoding, else the teacher's best on dev."""
    runs = [r for r in rows if r["name"] == row["teacher"]]
    same = [r for r in runs if r["decode"] == row["decode"]]
    if same or not runs:
        return same[0] if same else None
    return min(runs, key=lambda r: (r["dev_wer"] is None, r["dev_wer"] or 0.0, r["decode"]))


def _rel(value, base):
    return None if value is None or not base else round(100.0 * (value - base) / base, 2)


def model_rows(exp_dir, dev_set, test_set):
    """Every scored model under ``exp_dir`` as results.json rows, teachers before their students."""
    rows, records = [], {}
    for info_path in sorted(Path(exp_dir).glob("*/model_info.json")):
        model_dir = info_path.parent
        info = _read_json(info_path)
        config_file = model_dir / "config.yaml"
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        kd_terms = info.get("kd_terms") or []
        teacher = info.get("teacher") if kd_terms else None  # a twin is trained by stage 5 too, without KD
        kd_conf = config.get("kd_conf") or {}
        records[model_dir.name] = record = run_record(model_dir, info)
        model, seed = record["model"], record["seed"]
        disk_mb = compression.disk_mb(model_dir)
        for decode, by_set in sorted(_scores(model_dir).items()):
            dev, test = by_set.get(dev_set, ({},))[0], by_set.get(test_set, ({},))[0]
            method = (test.get("config") or dev.get("config") or {}).get("method")
            backend = compression.backend(test or dev)
            rows.append({
                "name": model_dir.name, "model": model, "seed": seed, "kind": info.get("kind"),
                "params": info.get("params"),
                "size_mb": info.get("size_mb"), "teacher": Path(teacher).name if teacher else None,
                "kd": [_terms().TERMS[t].label if t in _terms().TERMS else t for t in kd_terms], "twin": None,
                "untranscribed": bool(kd_terms and kd_conf.get("untranscribed")),
                "decode": decode, "method": method, "backend": backend,
                "base_decode": compression.base_decode(decode, backend), "disk_mb": disk_mb, "dev_wer": dev.get("wer"), "test_wer": test.get("wer"),
                "test_cer": test.get("cer"), "rtf": test.get("rtf"), "rtf_busy": busy(test),
                "soft_label_bytes_per_frame": _bytes_per_frame(config) if teacher else None,
                "config": record["config"], "command": info.get("command"),
                "compression_pct": None, "dev_wer_rel_pct": None, "test_wer_rel_pct": None,
                "decode_dirs": {x: str(d) for x, (_, d) in sorted(by_set.items())},
            })
    unrecorded = sorted(name for name, rec in records.items() if not rec["recorded"])
    if unrecorded:
        logging.warning("%s: model_info.json has no record of the twin and seed (%s; trained before kdtool wrote "
                        "them): their seeds and twins are guessed from the exp dir names; retrain them to record "
                        "them", ", ".join(str(Path(exp_dir) / n) for n in unrecorded), ", ".join(RECORD_KEYS))
    by_name, warned = {r["name"]: r for r in rows}, set()
    for row in rows:
        recorded = records[row["name"]]["recorded"]
        row["twin"] = _recorded_twin(row, rows, records, warned) if recorded else _named_twin(row, rows)
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
    add_comparisons(rows, dev_set, test_set)
    for row in rows:
        row["int8_worse_than_fp32"] = compression.int8_verdict(row, test_set) if row["backend"] == "onnx_int8" else None
    # families: a teacher with everything distilled from it (a twin joins its distilled versions' family)
    family = {r["name"]: _root(r, by_name)["name"] for r in rows}
    for row in rows:
        if row["twin"]:
            family[row["twin"]] = family[row["name"]]
    return sorted(rows, key=lambda r: _order(r, by_name[family[r["name"]]], by_name))


def _root(row, by_name):
    """The first teacher of a chain of distillations (a model trained from scratch is its own root)."""
    seen = set()
    while row["teacher"] in by_name and row["name"] not in seen:
        seen.add(row["name"])
        row = by_name[row["teacher"]]
    return row


def _kind_index(kind):
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def _order(row, root, by_name):
    # a family together (the AR teacher, its NAR and CTC students; the transducer and its chain), the
    # teacher first, bigger students first, a twin before its distilled versions, a model's seeds together
    twin = by_name.get(row["twin"])
    return (_kind_index(root["kind"]), root["name"], row["name"] != root["name"], _kind_index(row["kind"]),
            -(row["params"] or 0), twin["model"] if twin else row["model"], bool(row["kd"]), row["model"],
            row["decode"], row["seed"] or 0)


def _against(row, rows):
    """[(what, other row)] that ``row`` is compared with: its twin, its greedy decoding, its teacher, and
    an int8 export's decode its fp32 one."""
    twin = next((r for r in rows if r["name"] == row["twin"] and r["decode"] == row["decode"]), None)
    teacher = _teacher_row(row, rows) if row["teacher"] else None
    fp32 = next((r for r in rows if r["name"] == row["name"] and r["backend"] == "onnx"
                 and r["base_decode"] == row["base_decode"]), None) if row["backend"] == "onnx_int8" else None
    return [(what, other) for what, other in (("twin", twin), ("greedy", _greedy(row, rows)),
                                              ("teacher", teacher), ("fp32", fp32)) if other is not None]


def _compare(pairs, what, test_set, counts):
    """The paired bootstrap of (row, other row) ``pairs`` (one per seed) on ``test_set``; None when a
    decode dir or its alignment is missing."""
    loaded = []
    for row, other in pairs:
        dirs = [row["decode_dirs"].get(test_set), other["decode_dirs"].get(test_set)]
        if None in dirs:
            return None
        for d in dirs:
            if d not in counts:
                counts[d] = read_alignment(d)
        if counts[dirs[0]] is None or counts[dirs[1]] is None:
            return None
        loaded.append((counts[dirs[0]], counts[dirs[1]]))
    seeds = [row["seed"] for row, _ in pairs]
    return {"against": what, "other": pairs[0][1]["model"] if len(pairs) > 1 else pairs[0][1]["name"],
            "set": test_set, "pooled_seeds": seeds if len(pairs) > 1 else None,
            **paired_bootstrap(*pool(loaded))}


def add_comparisons(rows, dev_set, test_set):
    """Every row's paired bootstraps (``comparisons``; the twin's on dev and test also as flat keys),
    and those on the pooled utterances of each model's seeds, added to each of its seeds' rows."""
    counts = {}  # decode dir -> UttCounts: each alignment is read once
    start = time.perf_counter()
    for row in rows:
        row["comparisons"] = []
        for what, other in _against(row, rows):
            for x in _sets(row, other, dev_set):
                c = _compare([(row, other)], what, x, counts)
                if c:
                    row["comparisons"].append(c)
        for prefix, x in (("dev", dev_set), ("test", test_set)):
            c = next((c for c in row["comparisons"] if c["against"] == "twin" and c["set"] == x), None)
            row[f"{prefix}_wer_rel_ci"] = c and c["rel_pct_ci"]
            row[f"{prefix}_p_improvement"] = c and c["p_improvement"]
            row[f"{prefix}_significant"] = c and c["significant"]
    for group in seed_groups(rows):
        if len(group) < 2:
            continue
        pooled = []
        for what, _ in _against(group[0], rows):
            pairs = [(row, other) for row in group for w, other in _against(row, rows) if w == what]
            if len(pairs) < 2:
                continue
            for x in _sets(pairs[0][0], pairs[0][1], dev_set):
                c = _compare(pairs, what, x, counts)
                if c:
                    pooled.append(c)
        for row in group:
            row["comparisons"] += pooled
    logging.info("paired bootstrap: %d comparisons of %d rows in %.1f s", sum(len(r["comparisons"]) for r in rows),
                 len(rows), time.perf_counter() - start)


def _sets(row, other, dev_set):
    """The sets both rows were decoded on, dev first."""
    both = set(row["decode_dirs"]) & set(other["decode_dirs"])
    return sorted(both, key=lambda x: (x != dev_set, x))


def seed_groups(rows):
    """The rows grouped by (model, decoding): one group per row of RESULTS.md, the seeds' runs together,
    in the order of ``rows``."""
    groups = {}
    for row in rows:
        groups.setdefault((row["model"], row["decode"]), []).append(row)
    return list(groups.values())


def mean_std(values):
    """(mean, sample standard deviation) of the non-None ``values``; (None, None) if none, std None for one."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)
