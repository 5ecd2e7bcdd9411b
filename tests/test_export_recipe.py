"""kd.sh --export_students true on a tiny trained CTC model: stage 6 exports it and decodes the export
in onnxruntime (fp32 and int8) beside the PyTorch decode, stage 7 scores the three; a rerun skips the
up-to-date export and decodes. And kd.sh's list of the methods with an ONNX backend is the runner's."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import torch
import yaml

from conftest import copy_egs, run_entry
from kdtool.data.datadir import read_table
from kdtool.decode.runner import ONNX_METHODS
from kdtool.utils.files import file_sha256

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
KD_SH = Path(__file__).resolve().parents[1] / "egs" / "TEMPLATE" / "kd1" / "kd.sh"


def test_kd_sh_knows_the_methods_with_an_onnx_backend():
    listed = re.search(r'^onnx_methods="([^"]*)"', KD_SH.read_text(), re.M).group(1).split()
    assert sorted(listed) == sorted(ONNX_METHODS)


def test_export_students_exports_decodes_and_scores_the_export(tmp_path, tiny_features, tiny_teacher):
    recipe = copy_egs(tmp_path / "kdtool") / "mini_en" / "kd1"
    (recipe / "dump" / "fbank").mkdir(parents=True)
    (recipe / "dump" / "fbank" / "tiny").symlink_to(tiny_features["feats"])
    model = recipe / "exp" / "ctc_model"
    shutil.copytree(tiny_teacher, model, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "csv"))

    def kd_sh(*args):
        p = subprocess.run(["./kd.sh", "--stage", "6", "--stop_stage", "7", "--valid_set", "tiny", "--test_sets",
                            "tiny", "--results", "exp/RESULTS.md", "--results_notes", "", "--decode_jobs", "2",
                            *args], cwd=recipe, env=ENV, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout + p.stderr

    kd_sh()  # the default: no export
    assert not (model / "export").exists() and not list(model.glob("decode_*onnx*"))

    out = kd_sh("--export_students", "true")
    info = json.loads((model / "export" / "export_info.json").read_text())
    assert {"model.onnx", "model.int8.onnx", "tokens.txt"} <= set(info["files"])
    texts = {}
    for name, backend in (("ctc_greedy", None), ("ctc_greedy_onnx", "onnx"), ("ctc_greedy_onnx_int8", "onnx_int8")):
        d = model / f"decode_{name}_tiny"
        decoded = json.loads((d / "decode_info.json").read_text())
        assert decoded.get("backend") == backend and decoded["method"] == name
        assert json.loads((d / "score.json").read_text())["method"] == name  # scored by stage 7
        texts[name] = read_table(d / "text", allow_empty=True)
        assert len(texts[name]) == 6
    assert texts["ctc_greedy_onnx"] == texts["ctc_greedy"], "fp32 ONNX decodes as PyTorch does"
    rows = json.loads((recipe / "exp" / "results.json").read_text())
    assert {r["decode"] for r in rows} == {"ctc_greedy", "ctc_greedy_onnx", "ctc_greedy_onnx_int8"}

    # a rerun: the export and every decode are up to date
    before = {p: p.stat().st_mtime_ns for p in (model / "export").iterdir()}
    out = kd_sh("--export_students", "true", "--stop_stage", "6")
    assert "exp/ctc_model/export: up to date" in (model / "export.log").read_text(), out
    assert {p: p.stat().st_mtime_ns for p in (model / "export").iterdir()} == before
    for name in ("ctc_greedy", "ctc_greedy_onnx", "ctc_greedy_onnx_int8"):
        assert "up to date" in (model / f"decode_{name}_tiny" / "decode.log").read_text()


def test_export_skip_up_to_date(tmp_path, tiny_teacher, one_torch_thread):
    """--skip_up_to_date keeps an export of the same weights, tokens and options, and exports again after any
    of them changed or a file of the export did."""
    model = tmp_path / "ctc"
    shutil.copytree(tiny_teacher, model, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "csv"))

    def export(*args):  # python -m kdtool.bin.export, in this process: 8 runs without 8 imports of torch
        p = run_entry("export", "--model_dir", model, "--out_dir", model / "export", "--skip_up_to_date", *args)
        assert p.returncode == 0, p.stderr
        return "up to date" in p.stdout

    assert not export("--no_int8")
    assert export("--no_int8")
    assert not export() and export()  # int8 asked for: the fp32-only export was not enough
    graph = model / "export" / "model.int8.onnx"
    graph.write_bytes(graph.read_bytes()[:-1])  # a damaged file
    assert not export() and export()
    weights = torch.load(model / "model.pth")
    torch.save({k: v + 1e-3 if v.is_floating_point() else v for k, v in weights.items()}, model / "model.pth")
    assert not export()
    assert json.loads((model / "export" / "export_info.json").read_text())["model_sha256"] == \
        file_sha256(model / "model.pth")


def test_export_students_exports_a_streaming_transducer_and_skips_an_offline_one(tmp_path, tiny_features):
    """Random-weight transducers as training leaves them (no decoder key: the default rnn predictor): the
    streaming one is exported and its export decoded (transducer_greedy), the offline one is not."""
    from kdtool.models.build import build_model

    recipe = copy_egs(tmp_path / "kdtool") / "mini_en" / "kd1"
    (recipe / "dump" / "fbank").mkdir(parents=True)
    (recipe / "dump" / "fbank" / "tiny").symlink_to(tiny_features["feats"])
    for f in recipe.glob("conf/decode_transducer_*.yaml"):  # greedy decodes both (streaming: offline models cannot)
        f.unlink()
    (recipe / "conf" / "decode_transducer_greedy.yaml").write_text("method: transducer_greedy\n")
    enc = {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 1, "cnn_module_kernel": 7,
           "subsampling_channels": 16}
    models = {}
    for name, encoder in (("streaming", "streaming_conformer"), ("offline", "conformer")):
        exp = models[name] = recipe / "exp" / name
        config = {"model": "transducer", "encoder": encoder, "encoder_conf": enc, "decoder_conf": {"hidden_size": 32},
                  "joint_net_conf": {"joint_space_size": 32}}
        shutil.copytree(tiny_features["tokens"], exp / "tokens")
        shutil.copy(tiny_features["cmvn"], exp / "cmvn.ark")
        (exp / "config.yaml").write_text(yaml.safe_dump(config))
        (exp / "model_info.json").write_text(json.dumps({"kind": "transducer"}))
        torch.manual_seed(0)
        n_tokens = len((exp / "tokens" / "tokens.txt").read_text().splitlines())
        torch.save(build_model(config, n_tokens).state_dict(), exp / "model.pth")
    p = subprocess.run(["./kd.sh", "--stage", "6", "--stop_stage", "6", "--decode_sets", "tiny", "--decode_jobs", "2",
                        "--export_students", "true"], cwd=recipe, env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "exp/offline has no export (its kind or model); not exported" in p.stdout
    assert not (models["offline"] / "export").exists()
    assert sorted(d.name for d in models["offline"].glob("decode_*")) == ["decode_transducer_greedy_tiny"]
    texts = {}
    for name in ("transducer_greedy", "transducer_greedy_onnx", "transducer_greedy_onnx_int8"):
        d = models["streaming"] / f"decode_{name}_tiny"
        assert json.loads((d / "decode_info.json").read_text())["method"] == name
        texts[name] = read_table(d / "text", allow_empty=True)
    assert texts["transducer_greedy_onnx"] == texts["transducer_greedy"]
