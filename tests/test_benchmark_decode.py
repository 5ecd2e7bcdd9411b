"""The decoding benchmark on the tiny models: the rows each kind allows, sane numbers, the same
hypotheses as stage 6, and its command-line errors. Timings on a busy machine are noisy: only facts
with a wide margin are asserted."""
import json
import sys
from pathlib import Path
from unittest import mock

import pytest

from kdtool.bin import benchmark_decode as benchmark_bin
from kdtool.data.datadir import read_table
from kdtool.decode import decode_dir, resolve_decode_config
from kdtool.decode.benchmark import same_as_espnet
from kdtool.decode.runner import build_search, decode_dataset
from kdtool.models.load import load_trained
from kdtool.scoring.wer import score
from kdtool.train.dataset import SpeechDataset

EXPECTED = {  # the rows of each kind, in order
    "nar": ["encoder", "ctc_greedy", "maskctc_greedy", "maskctc_beam1", "maskctc_beam5", "maskctc_beam10"],
    "ar": ["encoder", "ctc_greedy", "ar_beam10"],
    "transducer": ["encoder", "ctc_greedy", "transducer_beam4"],
    "ctc": ["encoder", "ctc_greedy"],
}
# searches that cost far more than the encoder of these tiny models (10 to 100 times as measured)
SEARCH_HEAVY = {"maskctc_beam5", "maskctc_beam10", "ar_beam10", "transducer_beam4"}


def run_benchmark_cli(*args):
    with mock.patch.object(sys, "argv", ["kdtool/bin/benchmark_decode.py", *map(str, args)]):
        benchmark_bin.main()


# the recipe's decode settings: they replace the defaults, but beam and batch size stay the benchmark's;
# the beam's threshold masks nearly every token, so that it costs clearly more than the encoder
SETTINGS = {"maskctc_greedy": "method: maskctc_greedy\nthreshold: 0.5\nn_iterations: 3\n",
            "maskctc_beam": "method: maskctc_beam\nthreshold: 0.999\nctc_weight: 2.0\nbeam_size: 7\nbatch_size: 2\n"}


@pytest.fixture(scope="module")
def benchmark(models, tiny_features, tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    confs = []
    for method, text in SETTINGS.items():
        confs.append(out.parent / f"decode_{method}.yaml")
        confs[-1].write_text(text)
    run_benchmark_cli("--data", tiny_features["feats"], "--out_dir", out, "--max_utts", 3, "--repeats", 2,
                      *(models / kind for kind in EXPECTED), "--decode_configs", *confs)
    return out, json.loads((out / "benchmark.json").read_text())


def test_rows_are_the_methods_each_kind_allows(benchmark):
    _, result = benchmark
    got = [(Path(r["model_dir"]).name, r["method"]) for r in result["rows"]]
    assert got == [(kind, method) for kind, methods in EXPECTED.items() for method in methods]
    beams = [r["config"]["beam_size"] for r in result["rows"] if r["config"].get("method") == "maskctc_beam"]
    assert beams == [1, 5, 10]
    assert all(r["config"]["batch_size"] == 16 for r in result["rows"])
    for r in result["rows"]:  # the decode configs' settings, on every row of their method
        if r["config"].get("method") == "maskctc_greedy":
            assert (r["config"]["threshold"], r["config"]["n_iterations"]) == (0.5, 3)
        if r["config"].get("method") == "maskctc_beam":
            assert (r["config"]["threshold"], r["config"]["ctc_weight"], r["config"]["n_iterations"]) == (0.999, 2.0, 10)
    assert result["settings"] == {"maskctc_greedy": {"threshold": 0.5, "n_iterations": 3},
                                  "maskctc_beam": {"threshold": 0.999, "ctc_weight": 2.0}}
    assert result["num_threads"] == 1 and result["max_utts"] == 3 and result["repeats"] == 2
    assert result["command"].startswith("python -m kdtool.bin.benchmark_decode --data ")


def test_numbers_are_sane(benchmark):
    _, result = benchmark
    rows = result["rows"]
    audio = rows[0]["audio_seconds"]
    for r in rows:
        assert r["n_utts"] == 3 and r["audio_seconds"] == audio > 1.0 and r["params"] > 0
        assert r["decode_seconds"] > 0 and r["rtf"] == pytest.approx(r["decode_seconds"] / audio) and r["rtf"] > 0
        if r["method"] == "encoder":
            assert r["x_encoder"] == 1.0 and r["wer"] is None
        else:
            assert r["x_encoder"] > 0 and 0 <= r["wer"] <= 300
        if r["method"] in SEARCH_HEAVY:
            assert r["x_encoder"] > 1
        # espnet's MaskCTCInference agrees with our batched greedy on every utterance
        assert r["same_as_espnet"] == (3 if r["method"] == "maskctc_greedy" else None)


def test_same_as_espnet_counts_disagreements(models, tiny_features):
    trained = load_trained(models / "nar")
    ds = SpeechDataset(tiny_features["feats"], trained.tokenizer, cmvn_path=models / "nar" / "cmvn.ark")
    method, options = resolve_decode_config({"method": "maskctc_greedy"})
    hyps, _ = decode_dataset(trained.model, trained.tokenizer, ds, build_search(trained.model, method, options)[0], 4)
    assert same_as_espnet(trained.model, trained.tokenizer, ds, hyps, options, 4) == len(ds.utts)
    first = sorted(hyps)[0]
    hyps[first] += " X"
    assert same_as_espnet(trained.model, trained.tokenizer, ds, hyps, options, 4) == len(ds.utts) - 1


def test_wer_is_that_of_the_same_hypotheses_decoded_by_stage_6(benchmark, models, tiny_features, tmp_path):
    _, result = benchmark
    data = tiny_features["feats"]
    ref = read_table(data / "text")
    first3 = sorted(ref)[:3]
    for kind, method in (("nar", "maskctc_beam5"), ("ar", "ctc_greedy")):
        config = ({"method": "maskctc_beam", "beam_size": 5, "threshold": 0.999, "ctc_weight": 2.0}
                  if method == "maskctc_beam5" else {"method": method})
        decode_dir(models / kind, data, *resolve_decode_config(config), tmp_path / method)
        hyps = read_table(tmp_path / method / "text", allow_empty=True)
        wer = score({u: ref[u] for u in first3}, {u: hyps[u] for u in first3}).summary()["wer"]
        row = next(r for r in result["rows"] if Path(r["model_dir"]).name == kind and r["method"] == method)
        assert row["wer"] == pytest.approx(wer)


def test_markdown_table(benchmark):
    out, result = benchmark
    lines = (out / "benchmark.md").read_text().splitlines()
    assert lines[0] == "# Decoding speed"
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| model | kind | params (M) | method | options | RTF | x encoder | WER | same as espnet |"
    assert len(table) == 1 + len(result["rows"])
    for line, r in zip(table[1:], result["rows"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:2] == [Path(r["model_dir"]).name, r["kind"]] and cells[3] == r["method"]
        if r["method"] == "maskctc_greedy":
            assert cells[4] == "threshold 0.5, n_iterations 3"
        assert float(cells[5]) == pytest.approx(r["rtf"], abs=1e-4)
        assert cells[7] == ("-" if r["wer"] is None else f"{r['wer']:.2f}")
        assert cells[8] == ("3/3" if r["method"] == "maskctc_greedy" else "-")
    assert any(line.startswith("- command: `python -m kdtool.bin.benchmark_decode") for line in lines)


@pytest.mark.parametrize("args,message", [(["--max_utts", "0"], "--max_utts must be 1 or more, not 0"),
                                          (["--repeats", "0"], "--repeats must be 1 or more, not 0")])
def test_bad_arguments(args, message, models, tiny_features, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_benchmark_cli("--data", tiny_features["feats"], "--out_dir", tmp_path / "b", *args, models / "nar")
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("texts,message", [
    (["method: maskctc_greedy\nthreshhold: 0.5\n"], "unknown key(s) ['threshhold'] for method maskctc_greedy"),
    (["method: maskctc_greedy\n", "method: maskctc_greedy\nthreshold: 0.3\n"],
     "a second decode config for maskctc_greedy")])
def test_bad_decode_configs_fail_before_any_decoding(texts, message, models, tiny_features, tmp_path, capsys):
    confs = []
    for i, text in enumerate(texts):
        confs.append(tmp_path / f"decode{i}.yaml")
        confs[-1].write_text(text)
    with pytest.raises(SystemExit):
        run_benchmark_cli("--data", tiny_features["feats"], "--out_dir", tmp_path / "b", models / "nar",
                          "--decode_configs", *confs)
    err = capsys.readouterr().err
    assert message in err and str(confs[-1]) in err
    assert not (tmp_path / "b").exists()


def test_not_a_model_dir_is_a_clear_error(tiny_features, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a trained model dir: config.yaml is missing"):
        run_benchmark_cli("--data", tiny_features["feats"], "--out_dir", tmp_path / "b", tmp_path)
