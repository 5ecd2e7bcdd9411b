"""kdtool.bin.tune_decode: a grid of decoding options over several models, ranked by mean dev WER."""
import json
import sys
from unittest import mock

import pytest
import yaml

from kdtool.bin import tune_decode
from kdtool.bin.score import score_decode_dir
from kdtool.decode import decode_dir, resolve_decode_config
from kdtool.errors import ConfigError


def run_tune(*argv):
    with mock.patch.object(sys, "argv", ["kdtool/bin/tune_decode.py", *map(str, argv)]):
        tune_decode.main()


def test_parse_grid_reads_values_as_yaml_and_rejects_bad_items():
    assert tune_decode.parse_grid(["threshold=0.3,0.5", "ctc_weight=1", "length_variants=false,true"]) == {
        "threshold": [0.3, 0.5], "ctc_weight": [1], "length_variants": [False, True]}
    assert tune_decode.combinations({"a": [1, 2], "b": [True]}) == [{"a": 1, "b": True}, {"a": 2, "b": True}]
    assert tune_decode.combination_name({"threshold": 0.3, "length_variants": False}) == \
        "threshold_0.3-length_variants_false"
    for bad in ("threshold", "=0.3", "threshold="):
        with pytest.raises(ValueError, match="expected KEY=V1,V2"):
            tune_decode.parse_grid([bad])
    with pytest.raises(ValueError, match="given twice"):
        tune_decode.parse_grid(["a=1", "a=2"])


def test_rank_orders_by_mean_wer_and_keeps_grid_order_on_ties():
    table = [({"t": 1}, {"m1": 10.0, "m2": 30.0}), ({"t": 2}, {"m1": 5.0, "m2": 15.0}), ({"t": 3}, {"m1": 15.0, "m2": 25.0})]
    assert [(c["t"], mean) for c, _, mean in tune_decode.rank(table)] == [(2, 10.0), (1, 20.0), (3, 20.0)]


def test_grid_decodes_every_combination_ranks_them_and_writes_the_best_config(models, tiny_features, tmp_path):
    data = tiny_features["feats"]
    base = {"method": "maskctc_greedy", "n_iterations": 2, "batch_size": 4}
    config = tmp_path / "decode.yaml"
    config.write_text(yaml.safe_dump(base))
    nar, ar = models / "nar", models / "ar"
    out = tmp_path / "tune"
    run_tune("--config", config, "--data", data, "--grid", "threshold=0.0,0.99", "--out_dir", out, nar)

    lines = (out / "results.tsv").read_text().splitlines()
    assert lines[0] == "threshold\tnar\tmean"
    rows = [line.split("\t") for line in lines[1:]]
    assert sorted(float(r[0]) for r in rows) == [0.0, 0.99]
    # each row's WER is its decode dir's, and rows are ranked by it
    for threshold, wer, mean in rows:
        dec = out / "nar" / f"threshold_{threshold}"
        assert json.loads((dec / "score.json").read_text())["wer"] == pytest.approx(float(wer), abs=0.005)
        assert json.loads((dec / "decode_info.json").read_text())["config"]["threshold"] == float(threshold)
        assert wer == mean
    assert float(rows[0][2]) <= float(rows[1][2])
    # threshold 0 masks nothing: the output is greedy CTC's
    method, options = resolve_decode_config({"method": "ctc_greedy"})
    decode_dir(nar, data, method, options, tmp_path / "ctc")
    ctc = score_decode_dir(data, tmp_path / "ctc")["wer"]
    assert float(next(r[1] for r in rows if float(r[0]) == 0.0)) == pytest.approx(ctc, abs=0.005)
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best == {**base, "threshold": float(rows[0][0])}

    # a rerun decodes nothing again; a new value decodes only itself
    with mock.patch.object(tune_decode, "decode_dir", side_effect=AssertionError("decoded again")):
        run_tune("--config", config, "--data", data, "--grid", "threshold=0.0,0.99", "--out_dir", out, nar)
    calls = []
    real = tune_decode.decode_dir
    with mock.patch.object(tune_decode, "decode_dir", side_effect=lambda *a, **k: calls.append(a[4]) or real(*a, **k)):
        run_tune("--config", config, "--data", data, "--grid", "threshold=0.0,0.5", "--out_dir", out, nar)
    assert calls == [out / "nar" / "threshold_0.5"]
    assert len((out / "results.tsv").read_text().splitlines()) == 3

    # an AR model cannot do maskctc: the error names the method, before any result is written
    with pytest.raises(ValueError, match="mlm"):
        run_tune("--config", config, "--data", data, "--grid", "threshold=0.5", "--out_dir", tmp_path / "t2", ar)


def test_a_bad_grid_value_fails_before_any_decoding(tmp_path):
    config = tmp_path / "decode.yaml"
    config.write_text(yaml.safe_dump({"method": "maskctc_beam"}))
    with mock.patch.object(tune_decode, "decode_dir", side_effect=AssertionError("decoded")):
        with pytest.raises(ConfigError, match="beam_size"):
            run_tune("--config", config, "--data", tmp_path, "--grid", "beam_size=5,0", "--out_dir", tmp_path / "o",
                     tmp_path / "model")
        with pytest.raises(ConfigError, match="unknown key"):
            run_tune("--config", config, "--data", tmp_path, "--grid", "beams=5", "--out_dir", tmp_path / "o",
                     tmp_path / "model")
