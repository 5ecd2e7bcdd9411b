"""Every training config a recipe ships (teachers and students, conf/, conf/tuning/, conf/fast/) is
valid: its keys resolve and its model builds, before anyone spends GPU hours on it."""
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from kdtool.kd.distill import active_terms, load_student_config, twin_config
from kdtool.models import build_model, count_params
from kdtool.train.config import model_part

CONFIGS = sorted([*REPO.glob("egs/*/kd1/conf/**/train_*.yaml"),
                  *REPO.glob("egs/TEMPLATE/kd1/skeleton/conf/train_*.yaml")])  # what new_recipe.sh copies


def test_there_are_configs_for_every_recipe():
    recipes = {p.relative_to(REPO / "egs").parts[0] for p in CONFIGS}
    assert {"mini_en", "librispeech", "aishell"} <= recipes


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "egs")))
def test_config_resolves_and_builds(path):
    config = load_student_config(path)  # a teacher config is a student config without kd_conf
    with torch.device("meta"):  # shapes only: no memory or time for the big ones
        model = build_model(model_part(config), 100)
    assert count_params(model) > 0 and model.kind == config["model"]
    if "kd_conf" in path.read_text():
        assert config["kd_conf"]["alpha"] == 0 or active_terms(config["kd_conf"])


def _pipeline_configs(recipe):
    """The student configs a recipe's pipelines train (student_configs and chains of conf/pipeline*.conf)."""
    out = set()
    for conf in sorted(recipe.glob("conf/pipeline*.conf")):
        text = conf.read_text()
        for key in ("student_configs", "chains"):
            m = re.search(rf'^{key}="([^"]*)"', text, re.M)
            if m:
                out |= {recipe / c for c in re.split(r"[\s,]+", m.group(1)) if c}
    return sorted(out)


def _twins(recipe):
    """[(KD student, twin)] of a recipe's pipelines, paired as stage 5 records them for the results table
    (kdtool.kd.distill.twin_config: twin: or the base: chain)."""
    pairs = []
    for p in _pipeline_configs(recipe):
        twin = twin_config(p)
        if twin:
            pairs.append((p, Path(twin)))
    return pairs


@pytest.mark.parametrize("recipe", sorted({p.parents[1] if p.parent.name == "conf" else p.parents[2]
                                           for p in CONFIGS}), ids=lambda p: str(p.relative_to(REPO / "egs")))
def test_twins_differ_only_in_kd_conf(recipe, caplog):
    """A twin is what its KD student is measured against: every other key must be the same (and no
    pipeline student's twin is left out for differing: twin_config logs that)."""
    pairs = _twins(recipe)
    assert "no twin recorded" not in caplog.text
    for student, twin in pairs:
        a, b = load_student_config(student), load_student_config(twin)
        assert a["kd_conf"] != b["kd_conf"]
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if differ == ["accum_grad", "batch_frames", "kd_conf"]:  # the same frames per update, split for memory
            assert a["batch_frames"] * a["accum_grad"] == b["batch_frames"] * b["accum_grad"], (student, twin)
            differ = ["kd_conf"]
        assert differ == ["kd_conf"], f"{student.name} against its twin {twin.name}: {differ} differ"
    if recipe.parent.name == "mini_en":  # the pairs RESULTS.md reports (fast pipeline: ctc_student)
        names = {(s.stem, t.stem) for s, t in pairs}
        assert {("train_ctc_student_kd", "train_ctc_student"),
                ("train_nar_student_kd_frame_seq", "train_nar_student"),
                ("train_nar_small_kd_frame", "train_nar_small"),
                ("train_transducer_student_single", "train_transducer_student_single_nokd")} <= names


def test_configs_that_inherit_name_their_base_in_the_recipe():
    """A config with base: resolves to the same as its base with its own keys merged over it (mini_en's
    KD students are a few lines on their twins)."""
    conf = REPO / "egs/mini_en/kd1/conf"
    kd = yaml.safe_load((conf / "train_nar_student_kd_frame.yaml").read_text())
    assert kd["base"] == "train_nar_student.yaml" and set(kd) == {"base", "kd_conf"}
    twin = load_student_config(conf / kd["base"])
    student = load_student_config(conf / "train_nar_student_kd_frame.yaml")
    assert student == {**twin, "kd_conf": {**twin["kd_conf"], **kd["kd_conf"]}}
