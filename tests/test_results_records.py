"""The results table from records (issue 26, item 4): stage 3/5 write each run's config, its twin's config,
its seed and its teacher into model_info.json, and stage 7 reads those, never the exp dirs' names. The
twin is the twin: of a config or found up its base: chain (kdtool.kd.distill.twin_config); exp dirs from
before the record are read from their names, as before, with a warning."""
import json
import logging
import os
import subprocess
import sys

import pytest
import yaml

from kdtool.errors import ConfigError
from kdtool.kd.distill import load_student_config, twin_config
from kdtool.scoring.results import write_results
from test_bootstrap import build_exp, corrupt, decode, make_refs, sets, write  # noqa: F401 (sets: a fixture)

# build_exp's models: (config, twin's config)
CONFIGS = {"ar_teacher": ("conf/train_ar_teacher.yaml", None),
           "nar_student": ("conf/train_nar_student.yaml", None),
           "nar_student_kd_frame": ("conf/train_nar_student_kd_frame.yaml", "conf/train_nar_student.yaml"),
           "ctc_lonely_kd": ("conf/train_ctc_lonely_kd.yaml", "conf/train_ctc_lonely.yaml")}  # twin not trained


def add_records(exp, recorded):
    """Each of build_exp's model_info.json as stage 3/5 write it now (``recorded``), or as an exp dir of
    before the record (the config alone, recorded since stage 7's first table)."""
    for path in exp.glob("*/model_info.json"):
        model, _, seed = path.parent.name.partition("_seed")
        config, twin = CONFIGS[model]
        info = {**json.loads(path.read_text()), "config": config, "overrides": []}
        if recorded:
            info.update(twin_config=twin, seed=int(seed or 0), seed_option=int(seed) if seed else None)
        path.write_text(json.dumps(info))


@pytest.mark.parametrize("seeds", [(None,), (1, 2)], ids=["one run", "two seeds"])
def test_records_give_the_table_names_gave(tmp_path, sets, seeds, caplog):
    out = {}
    for how in ("names", "records"):
        exp = build_exp(tmp_path / how, sets, seeds)
        add_records(exp, recorded=how == "records")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            write_results(exp, tmp_path / how / "RESULTS.md")
        md = (tmp_path / how / "RESULTS.md").read_text().replace(str(tmp_path / how), "ROOT")
        rows = (exp / "results.json").read_text().replace(str(tmp_path / how), "ROOT")
        out[how] = {"md": [ln for ln in md.splitlines() if not ln.startswith("- date:")], "rows": json.loads(rows),
                    "log": caplog.text}
    assert out["records"]["md"] == out["names"]["md"]
    assert out["records"]["rows"] == out["names"]["rows"]
    tag = "" if seeds == (None,) else "_seed1"
    kd = next(r for r in out["records"]["rows"] if r["name"] == f"nar_student_kd_frame{tag}")
    assert kd["twin"] == f"nar_student{tag}" and kd["seed"] == (None if tag == "" else 1)
    assert kd["model"] == "nar_student_kd_frame" and kd["config"] == "conf/train_nar_student_kd_frame.yaml"
    # older exp dirs: named in one warning, read from their names
    assert "model_info.json has no record of the twin and seed" in out["names"]["log"]
    assert str(tmp_path / "names" / "exp" / f"nar_student_kd_frame{tag}") in out["names"]["log"]
    assert "no record" not in out["records"]["log"]
    # a recorded twin that was never trained: said once, its row says "no twin"
    assert out["records"]["log"].count("ctc_lonely_kd: its twin conf/train_ctc_lonely.yaml (twin_config in "
                                       "model_info.json) has no scored exp dir") == 1


def recorded_model(exp, name, config, twin=None, kd_terms=(), seed_option=None, overrides=()):
    write(exp / name / "model_info.json", json.dumps({
        "kind": "ctc", "params": 500_000, "size_mb": 2.0, "teacher": "exp/ar_teacher" if kd_terms else None,
        "kd_terms": list(kd_terms), "config": config, "overrides": list(overrides), "twin_config": twin,
        "seed": seed_option or 0, "seed_option": seed_option}))


def test_the_twin_comes_from_the_record_where_names_mislead(tmp_path, sets):
    """ctc_big_kd was written on conf/train_ctc_base.yaml, trained in exp/zz_base: by names its twin would
    be ctc_big (the longest shared prefix; another config of the same size), by the record it is
    zz_base. zz_base_lr ran the same config with other --set overrides: not the twin either. A dir named
    like a seed run (ctc_big_kd_seed7) that was trained without --seed is a model of its own."""
    exp = tmp_path / "exp"
    recorded_model(exp, "ctc_big_kd", "conf/train_ctc_big_kd.yaml", "conf/train_ctc_base.yaml", ["frame"])
    recorded_model(exp, "ctc_big_kd_seed7", "conf/train_ctc_big_kd.yaml", "conf/train_ctc_base.yaml", ["frame"])
    recorded_model(exp, "ctc_big", "conf/train_ctc_big_lr.yaml")
    recorded_model(exp, "zz_base", "conf/tuning/../train_ctc_base.yaml")  # the same file, written another way
    recorded_model(exp, "zz_base_lr", "conf/train_ctc_base.yaml", overrides=["optim_conf.lr=0.01"])
    errors = {"ctc_big_kd": 0.3, "ctc_big_kd_seed7": 0.32, "ctc_big": 0.2, "zz_base": 0.5, "zz_base_lr": 0.45}
    unseen = make_refs(tmp_path, "test_unseen", seed=5)
    for i, (x, (d, refs)) in enumerate([*sets.items(), ("test_unseen", unseen)]):
        for n, (name, p) in enumerate(errors.items()):
            decode(exp, name, "ctc_greedy", d, corrupt(refs, p, 10 * n + i))
    rows = {r["name"]: r for r in write_results(exp, tmp_path / "RESULTS.md")}
    kd = rows["ctc_big_kd"]
    assert kd["twin"] == "zz_base" and rows["ctc_big_kd_seed7"]["twin"] == "zz_base"
    base = rows["zz_base"]["dev_wer"]
    assert kd["dev_wer_rel_pct"] == round(100 * (kd["dev_wer"] - base) / base, 2)
    assert {c["other"] for c in kd["comparisons"] if c["against"] == "twin"} == {"zz_base"}
    assert {c["set"] for c in kd["comparisons"] if c["against"] == "twin"} == {"dev", "test", "test_unseen"}
    assert (rows["ctc_big_kd_seed7"]["model"], rows["ctc_big_kd_seed7"]["seed"]) == ("ctc_big_kd_seed7", None)
    assert rows["ctc_big"]["twin"] is None and rows["zz_base"]["twin"] is None
    # the same dirs without their records: the names pick ctc_big, which is why the records exist
    for name in errors:
        path = exp / name / "model_info.json"
        info = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in info.items() if k not in ("twin_config", "seed_option")}))
    named = {r["name"]: r for r in write_results(exp, tmp_path / "RESULTS.md")}
    assert named["ctc_big_kd"]["twin"] == "ctc_big" and named["ctc_big_kd_seed7"]["seed"] == 7


def test_the_test_set_comes_from_score_json(tmp_path, sets):
    """test_unseen stays test_unseen (the dir name's last part would say unseen); a score.json naming
    neither its set nor its reference dir is an error naming the file and the fix."""
    exp = tmp_path / "exp"
    recorded_model(exp, "m", "conf/train_m.yaml")
    d, refs = make_refs(tmp_path, "test_unseen", seed=3)
    score = decode(exp, "m", "ctc_greedy", d, refs) / "score.json"
    s = json.loads(score.read_text())
    score.write_text(json.dumps({k: v for k, v in s.items() if k != "test_set"}))
    (row,) = write_results(exp, tmp_path / "RESULTS.md", test_set="test_unseen")
    assert list(row["decode_dirs"]) == ["test_unseen"] and row["test_wer"] == 0.0
    score.write_text(json.dumps({k: v for k, v in s.items() if k not in ("test_set", "ref_dir")}))
    with pytest.raises(ValueError, match=f"{score}: no test_set or ref_dir .*python -m kdtool.bin.score --ref"):
        write_results(exp, tmp_path / "RESULTS.md")


# --- the twin of a config ---

TWIN = {"model": "ctc", "encoder_conf": {"output_size": 32, "attention_heads": 2, "linear_units": 64,
                                         "num_blocks": 1},
        "max_epoch": 1, "batch_frames": 800, "keep_nbest_models": 1, "scheduler_conf": {"warmup_steps": 5},
        "kd_conf": {"alpha": 0.0}}


def write_yaml(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content))
    return path


def test_twin_from_the_base_chain_or_named(tmp_path, monkeypatch, caplog):
    conf = tmp_path / "conf"
    write_yaml(conf / "train_twin.yaml", TWIN)
    write_yaml(conf / "train_kd.yaml", {"base": "train_twin.yaml", "kd_conf": {"alpha": 0.3}})
    write_yaml(conf / "tuning" / "train_kd_t2.yaml", {"base": "../train_kd.yaml", "kd_conf": {"temperature": 2.0}})
    write_yaml(conf / "train_other.yaml", TWIN)  # the same student, another file
    write_yaml(conf / "train_kd_named.yaml", {"base": "train_kd.yaml", "twin": "train_other.yaml"})
    write_yaml(conf / "tuning" / "train_kd_wide.yaml", {"base": "../train_kd_named.yaml",
                                                        "encoder_conf": {"linear_units": 96}})
    monkeypatch.chdir(tmp_path)  # as kd.sh runs stage 5: config paths relative to the recipe
    assert twin_config("conf/train_twin.yaml") is None  # trains without KD: it is a twin
    assert twin_config("conf/train_kd.yaml") == "conf/train_twin.yaml"
    assert twin_config("conf/tuning/train_kd_t2.yaml") == "conf/train_twin.yaml"  # the nearest KD-free base
    assert twin_config("conf/train_kd.yaml", ["max_epoch=2"]) == "conf/train_twin.yaml"  # overrides: both
    assert twin_config("conf/train_kd_named.yaml") == "conf/train_other.yaml"
    assert "twin" not in load_student_config("conf/train_kd_named.yaml")  # not a training key
    # inherited from a base, but the architecture differs: logged, no twin on record
    with caplog.at_level(logging.WARNING):
        assert twin_config("conf/tuning/train_kd_wide.yaml") is None
    assert ("conf/tuning/train_kd_wide.yaml: its twin conf/train_other.yaml differs from it in ['encoder_conf'], "
            "not only in kd_conf; no twin recorded") in caplog.text


@pytest.mark.parametrize("twin, content, error", [
    ("train_wide.yaml", {**TWIN, "max_epoch": 3}, r"train_bad.yaml: its twin conf/train_wide.yaml differs from it "
                                                  r"in \['max_epoch'\], not only in kd_conf; name the same student"),
    ("train_kd2.yaml", {**TWIN, "kd_conf": {"alpha": 0.5}}, "train_bad.yaml: its twin conf/train_kd2.yaml trains "
                                                            "with KD"),
    ("train_missing.yaml", None, "train_bad.yaml: twin: 'train_missing.yaml' is not a config file relative to"),
])
def test_a_bad_twin_is_a_config_error(tmp_path, monkeypatch, twin, content, error):
    conf = tmp_path / "conf"
    write_yaml(conf / "train_twin.yaml", TWIN)
    if content:
        write_yaml(conf / twin, content)
    write_yaml(conf / "train_bad.yaml", {"base": "train_twin.yaml", "twin": twin, "kd_conf": {"alpha": 0.3}})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=error):
        twin_config("conf/train_bad.yaml")


def test_distill_records_twin_seed_and_teacher(tiny_teacher, tiny_features, tmp_path):
    """kdtool.bin.distill (stage 5) writes the record the table reads; the teacher run online, so no dumps."""
    f = tiny_features
    write_yaml(tmp_path / "conf" / "train_twin.yaml", TWIN)
    write_yaml(tmp_path / "conf" / "train_kd.yaml", {"base": "train_twin.yaml",
                                                     "kd_conf": {"alpha": 0.5, "online": True}})
    p = subprocess.run([sys.executable, "-m", "kdtool.bin.distill", "--config", "conf/train_kd.yaml",
                        "--train_data", str(f["feats"]), "--valid_data", str(f["feats"]),
                        "--token_list", str(tiny_teacher / "tokens"), "--cmvn", str(f["cmvn"]),
                        "--teacher_dir", str(tiny_teacher), "--exp_dir", "exp/kd_seed3", "--seed", "3",
                        "--accelerator", "cpu", "--devices", "1"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((tmp_path / "exp" / "kd_seed3" / "model_info.json").read_text())
    assert info["config"] == "conf/train_kd.yaml" and info["twin_config"] == "conf/train_twin.yaml"
    assert (info["seed"], info["seed_option"], info["teacher"]) == (3, 3, str(tiny_teacher))
    assert info["kd_terms"] == ["frame"]
