"""Every training config a recipe ships (teachers and students, conf/, conf/tuning/, conf/fast/) is
valid: its keys resolve and its model builds, before anyone spends GPU hours on it."""
import pytest
import torch

from conftest import REPO
from kdtool.kd.distill import active_terms, load_student_config
from kdtool.models import build_model, count_params
from kdtool.train.config import model_part

CONFIGS = sorted(REPO.glob("egs/*/kd1/conf/**/train_*.yaml"))


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
