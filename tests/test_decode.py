"""Stage 6 decoding: every method through the CLI on tiny overfit models, batched = unbatched,
Mask-CTC = espnet's MaskCTCInference, transducer greedy = espnet's, and bad input."""
import json
import logging
import shutil
import subprocess
import sys
from unittest import mock

import pytest
import torch
import yaml
from espnet2.asr.transducer.beam_search_transducer import BeamSearchTransducer

from conftest import all_blank as _all_blank, scrambled_decoder as _scrambled
from kdtool.bin import decode as decode_bin
from kdtool.bin.score import score_decode_dir
from kdtool.data.datadir import read_table
from kdtool.decode import decode_dir, resolve_decode_config
from kdtool.decode.ar import ARBeamSearch
from kdtool.decode.ctc import ctc_greedy_search, greedy
from kdtool.decode.maskctc import espnet_maskctc_greedy, maskctc_greedy
from kdtool.decode.transducer import TransducerBeamSearch, greedy_search
from kdtool.errors import ConfigError
from kdtool.models.load import load_trained

# The tiny trained models (fixtures ``models`` and ``encoded``) are in conftest.py: the Mask-CTC
# beam search and benchmark tests decode them too.


def write_config(path, config):
    path.write_text(yaml.safe_dump(config))
    return path


def run_decode(model_dir, data, config, out_dir, *extra):
    """``python -m kdtool.bin.decode ...`` in this process (the parser and main, no interpreter start-up)."""
    conf = write_config(out_dir.parent / f"{out_dir.name}.yaml", config)
    argv = ["kdtool/bin/decode.py", "--model_dir", str(model_dir), "--data", str(data), "--config", str(conf),
            "--out_dir", str(out_dir), *extra]
    with mock.patch.object(sys, "argv", argv):
        decode_bin.main()
    return out_dir


def scrambled_model_dir(model_dir, out):
    """A copy of a trained Mask-CTC exp dir whose masked-LM decoder has random weights."""
    shutil.copytree(model_dir, out)
    torch.save(_scrambled(load_trained(model_dir).model, 0).state_dict(), out / "model.pth")
    return out


def texts(out_dir):
    return read_table(out_dir / "text", allow_empty=True)


CLI_CASES = [
    ("ctc", {"method": "ctc_greedy"}, "ctc_greedy"),
    ("ar", {"method": "ctc_greedy", "batch_size": 4}, "ctc_greedy"),
    ("ar", {"method": "ar_beam", "beam_size": 1}, "ar_beam1"),
    ("ar", {"method": "ar_beam", "beam_size": 4, "ctc_weight": 0.5, "penalty": 0.5}, "ar_beam4"),
    ("nar", {"method": "maskctc_greedy", "threshold": 0.9, "n_iterations": 3}, "maskctc_greedy"),
    ("nar", {"method": "maskctc_beam", "beam_size": 3, "threshold": 0.9}, "maskctc_beam3"),
    ("nar", {"method": "maskctc_beam", "length_variants": True}, "maskctc_beam5_lenvar"),
    ("transducer", {"method": "ctc_greedy"}, "ctc_greedy"),
    ("transducer", {"method": "transducer_greedy"}, "transducer_greedy"),
    ("transducer", {"method": "transducer_beam", "beam_size": 3}, "transducer_beam3"),
    ("transducer", {"method": "transducer_beam", "beam_size": 3, "search_type": "tsd"}, "transducer_beam3_tsd"),
    ("transducer", {"method": "transducer_beam", "beam_size": 2, "search_type": "alsd"}, "transducer_beam2_alsd"),
]


@pytest.mark.parametrize("kind,config,name", CLI_CASES, ids=[c[2] + "-" + c[0] for c in CLI_CASES])
def test_every_method_decodes_and_scores(kind, config, name, models, tiny_features, tmp_path):
    data = tiny_features["feats"]
    out = run_decode(models / kind, data, config, tmp_path / "dec")
    hyps, ref = texts(out), read_table(data / "text")
    assert list(hyps) == sorted(ref)
    assert set(read_table(out / "decode_time")) == set(ref)
    info = json.loads((out / "decode_info.json").read_text())
    assert info["method"] == name and info["kind"] == kind and info["utterances"] == 6 and info["num_threads"] == 1
    assert info["config"] == {"method": config["method"], **resolve_decode_config(config)[1]}
    assert info["command"].startswith("python -m kdtool.bin.decode --model_dir ")
    assert info["params"] == load_trained(models / kind).info["params"]
    result = score_decode_dir(data, out)
    assert json.loads((out / "score.json").read_text())["wer"] == result["wer"]
    assert result["n_missing"] == 0 and result["rtf"] > 0 and result["method"] == name
    if name in ("ctc_greedy", "ar_beam4") and kind != "transducer":
        # the tiny models overfit their 6 utterances: most words come out right (the last word of
        # each is the hardest to learn), whole sentences too with the attention decoder
        assert result["wer"] < 50, hyps
        assert name != "ar_beam4" or any(hyps[u] == ref[u] for u in ref), hyps


def test_cli_in_a_subprocess_then_score(models, tiny_features, tmp_path):
    data, out = tiny_features["feats"], tmp_path / "decode_ar_beam2"
    conf = write_config(tmp_path / "decode.yaml", {"method": "ar_beam", "beam_size": 2})
    subprocess.run([sys.executable, "-m", "kdtool.bin.decode", "--model_dir", str(models / "ar"), "--data", str(data),
                    "--config", str(conf), "--out_dir", str(out), "--num_threads", "1"], check=True,
                   capture_output=True)
    info = json.loads((out / "decode_info.json").read_text())
    assert info["num_threads"] == 1 and info["command"].endswith(f"--out_dir {out} --num_threads 1")
    p = subprocess.run([sys.executable, "-m", "kdtool.bin.score", "--ref", str(data), str(out)], capture_output=True,
                       text=True, check=True)
    assert "WER" in p.stdout and json.loads((out / "score.json").read_text())["method"] == "ar_beam2"


@pytest.mark.parametrize("kind,config", [
    ("ctc", {"method": "ctc_greedy"}),
    ("nar", {"method": "maskctc_greedy", "threshold": 0.99, "n_iterations": 10}),
    ("nar", {"method": "maskctc_greedy", "threshold": 0.9, "n_iterations": 1}),
    ("transducer", {"method": "transducer_greedy", "max_symbols_per_frame": 3}),
    # beam searches: the encoder runs per batch, the search per utterance
    ("ar", {"method": "ar_beam", "beam_size": 3}),
    ("transducer", {"method": "transducer_beam", "beam_size": 3}),
    ("nar", {"method": "maskctc_beam", "beam_size": 3, "threshold": 0.9}),
])
def test_batched_runner_output_equals_one_utterance_at_a_time(kind, config, models, tiny_features, tmp_path):
    data, model_dir = tiny_features["feats"], models / kind
    if kind == "nar":
        # the tiny masked LM may fill every mask with a space (an empty text, as CI once saw):
        # a scrambled one fills in varied tokens, whatever the training made of the tiny model
        model_dir = scrambled_model_dir(models / "nar", tmp_path / "nar_scrambled")
    one = run_decode(model_dir, data, {**config, "batch_size": 1}, tmp_path / "one")
    batched = run_decode(model_dir, data, {**config, "batch_size": 6}, tmp_path / "six")
    assert texts(one) == texts(batched)
    assert any(texts(one).values()), "a test of empty outputs proves little"


@pytest.mark.parametrize("kind,method", [("ar", "ar_beam"), ("transducer", "transducer_beam"),
                                         ("nar", "maskctc_beam")])
def test_beam_searches_run_the_encoder_once_per_batch(kind, method, models, tiny_features, tmp_path):
    trained = load_trained(models / kind)
    config = resolve_decode_config({"method": method, "beam_size": 2, "batch_size": 4})
    with mock.patch("kdtool.decode.runner.load_trained", return_value=trained), \
            mock.patch.object(trained.model, "encode", wraps=trained.model.encode) as encode:
        decode_dir(models / kind, tiny_features["feats"], *config, tmp_path / "dec")
    assert encode.call_count == 2  # 6 utterances, 4 per batch


@pytest.mark.parametrize("kind,search", [
    ("ctc", lambda m, e, n: ctc_greedy_search(m, e, n)),
    ("nar", lambda m, e, n: maskctc_greedy(m, e, n, threshold=0.99, n_iterations=4)),
    ("transducer", lambda m, e, n: greedy_search(m, e, n, max_symbols_per_frame=2)),
])
def test_batched_method_equals_unbatched(kind, search, encoded):
    model, _, enc, lens, _ = encoded[kind]
    with torch.no_grad():
        batched = search(model, enc, lens)
        alone = [search(model, enc[b:b + 1, :n], lens[b:b + 1])[0] for b, n in enumerate(lens.tolist())]
    assert batched == alone and any(batched)


@pytest.mark.parametrize("threshold", [0.99, 0.9, 0.5])
@pytest.mark.parametrize("n_iterations", [0, 1, 3, 10])
def test_maskctc_equals_espnet_maskctc_inference(threshold, n_iterations, encoded, caplog):
    model, tokenizer, enc, lens, _ = encoded["nar"]
    caplog.set_level(logging.WARNING)  # espnet logs every iteration at INFO
    for m in (model, _scrambled(model, n_iterations)):
        with torch.no_grad():
            ours = maskctc_greedy(m, enc, lens, threshold=threshold, n_iterations=n_iterations)
            theirs = espnet_maskctc_greedy(m, tokenizer.tokens, enc, lens, threshold, n_iterations)
        assert ours == theirs
        assert any(ours)


def test_maskctc_threshold_equal_to_a_confidence_keeps_that_token_as_espnet_does(encoded):
    model, tokenizer, enc, lens, _ = encoded["nar"]
    model = _scrambled(model, 0)
    enc, lens = enc[:1, :lens[0]], lens[:1]
    with torch.no_grad():
        probs, ids = model.ctc_log_probs(enc).exp().max(-1)
        # the best non-blank frame is its token's confidence, the highest of the utterance
        threshold = float(probs[ids != model.blank].max())
        ours = maskctc_greedy(model, enc, lens, threshold=threshold, n_iterations=10)
        theirs = espnet_maskctc_greedy(model, tokenizer.tokens, enc, lens, threshold, 10)
        all_masked = maskctc_greedy(model, enc, lens, threshold=threshold + 1e-6, n_iterations=10)
    assert ours == theirs and ours != all_masked


def test_transducer_greedy_with_one_symbol_per_frame_equals_espnet(encoded):
    model, _, enc, lens, _ = encoded["transducer"]
    espnet_greedy = BeamSearchTransducer(model.decoder, model.joint_network, beam_size=1)
    with torch.no_grad():
        ours = greedy_search(model, enc, lens, max_symbols_per_frame=1)
        theirs = [espnet_greedy(enc[b, :n])[0].yseq[1:] for b, n in enumerate(lens.tolist())]
    assert ours == theirs and any(ours)


def test_ctc_greedy_collapses_repeats_and_drops_blanks():
    frames = [[0, 3, 3, 0, 3, 2, 2, 0], [1, 1, 1, 0, 0, 2, 3, 3]]  # the second: 6 frames + padding
    log_probs = torch.nn.functional.one_hot(torch.tensor(frames), 4).float().log_softmax(-1)
    assert greedy(log_probs, torch.tensor([8, 6])) == [[3, 3, 2], [1, 2]]


def test_all_blank_output_gives_empty_hypotheses(encoded):
    searches = {
        "ctc": [lambda m, e, n: ctc_greedy_search(m, e, n)],
        "nar": [lambda m, e, n: maskctc_greedy(m, e, n)],
        "ar": [lambda m, e, n: ARBeamSearch(m, beam_size=3, ctc_weight=0.3)(e, n),
               lambda m, e, n: ARBeamSearch(m, beam_size=3, ctc_weight=1.0)(e, n)],
        "transducer": [lambda m, e, n: greedy_search(m, e, n),
                       lambda m, e, n: TransducerBeamSearch(m, beam_size=3)(e, n)],
    }
    for kind, fns in searches.items():
        model, _, enc, lens, _ = encoded[kind]
        blank = _all_blank(model)
        with torch.no_grad():
            for fn in fns:
                assert fn(blank, enc, lens) == [[]] * len(lens), kind


@pytest.mark.parametrize("kind,method", [("ctc", "ctc_greedy"), ("nar", "maskctc_greedy"), ("ar", "ar_beam"),
                                         ("transducer", "transducer_beam")])
def test_too_short_utterance_gets_an_empty_hypothesis(kind, method, models, data_with_a_short_utterance, tmp_path,
                                                      caplog):
    out = run_decode(models / kind, data_with_a_short_utterance, {"method": method}, tmp_path / "dec")
    lines = (out / "text").read_text().splitlines()
    assert len(lines) == 7 and lines[-1] == "spkc-u1"
    assert read_table(out / "decode_time")["spkc-u1"] == "0.000000"
    assert "1 utterance(s) too short for the encoder's subsampling" in caplog.text
    assert "spkc-u1 (6 frames)" in caplog.text
    assert score_decode_dir(data_with_a_short_utterance, out)["n_utts"] == 7


def test_beam_larger_than_the_vocabulary_is_clamped(encoded, caplog):
    for kind, cls in (("ar", ARBeamSearch), ("transducer", TransducerBeamSearch)):
        model, _, enc, lens, _ = encoded[kind]
        with torch.no_grad():
            assert len(cls(model, beam_size=1000)(enc[:1], lens[:1])) == 1
        assert "beam_size 1000 is larger than the vocabulary" in caplog.text


@pytest.mark.parametrize("config,message", [
    ({"method": "ctc_greedy", "beam_size": 4}, r"unknown key\(s\) \['beam_size'\] for method ctc_greedy; "
                                               r"allowed: \['batch_size'\]"),
    ({"method": "beam"}, "method: unknown 'beam'; choose one of"),
    ({"beam_size": 4}, "expected a mapping with a 'method' key"),
    ({"method": "ar_beam", "beam_size": 0}, "beam_size: expected an int >= 1, not 0"),
    ({"method": "ar_beam", "ctc_weight": "high"}, "ctc_weight: expected a float, not 'high'"),
    ({"method": "maskctc_greedy", "n_iterations": -1}, "n_iterations: expected an int >= 0, not -1"),
    ({"method": "transducer_beam", "max_sym_exp": 1}, "max_sym_exp: expected an int >= 2, not 1"),
    ({"method": "transducer_beam", "search_type": "maes"}, "search_type: unknown 'maes'; choose one of"),
])
def test_bad_decode_configs(config, message):
    with pytest.raises(ConfigError, match=message):
        resolve_decode_config(config)


@pytest.mark.parametrize("kind,config,message", [
    ("ctc", {"method": "maskctc_greedy"}, "maskctc decoding needs a model with a masked-LM \\(mlm\\) decoder; "
                                          "this ctc model has none"),
    ("ar", {"method": "maskctc_greedy"}, "this ar model has TransformerDecoder"),
    ("ctc", {"method": "ar_beam"}, "ar_beam decodes ar models, not a ctc model"),
    ("nar", {"method": "transducer_greedy"}, "transducer_greedy decodes transducer models, not a nar model"),
])
def test_method_the_model_cannot_do_fails_before_decoding(kind, config, message, models, tiny_features, tmp_path):
    with pytest.raises(ValueError, match=message):
        run_decode(models / kind, tiny_features["feats"], config, tmp_path / "dec")
    assert not (tmp_path / "dec").exists()


def test_ctc_greedy_needs_a_ctc_head(models, tiny_features, tmp_path):
    trained = load_trained(models / "transducer")
    trained.model.ctc = None  # as a transducer trained with ctc_weight 0
    with mock.patch("kdtool.decode.runner.load_trained", return_value=trained):
        with pytest.raises(ValueError, match="ctc_greedy needs a CTC head; this transducer model has none"):
            decode_dir(models / "transducer", tiny_features["feats"], *resolve_decode_config({"method": "ctc_greedy"}),
                       tmp_path / "dec")


def test_cli_errors_are_one_line(models, tiny_features, tmp_path):
    conf = write_config(tmp_path / "bad.yaml", {"method": "maskctc_greedy", "threshold": 0.9, "beam_size": 3})
    base = [sys.executable, "-m", "kdtool.bin.decode", "--data", str(tiny_features["feats"]), "--out_dir",
            str(tmp_path / "dec")]
    p = subprocess.run(base + ["--model_dir", str(models / "nar"), "--config", str(conf)], capture_output=True,
                       text=True)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"{conf}: unknown key(s) ['beam_size'] for method maskctc_greedy" in p.stderr
    conf = write_config(tmp_path / "mask.yaml", {"method": "maskctc_greedy"})
    p = subprocess.run(base + ["--model_dir", str(models / "ctc"), "--config", str(conf)], capture_output=True,
                       text=True)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "needs a model with a masked-LM" in p.stderr
    assert not (tmp_path / "dec").exists()


def test_decode_info_records_the_device_and_cpu_decodes_as_the_default(models, tiny_features, tmp_path):
    data, config = tiny_features["feats"], {"method": "ctc_greedy"}
    default = run_decode(models / "ctc", data, config, tmp_path / "default")
    cpu = run_decode(models / "ctc", data, config, tmp_path / "cpu", "--device", "cpu")
    assert texts(cpu) == texts(default) and any(texts(cpu).values())
    for out in (default, cpu):
        assert json.loads((out / "decode_info.json").read_text())["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device_is_a_one_line_error_before_any_work(models, tiny_features, tmp_path):
    conf = write_config(tmp_path / "decode.yaml", {"method": "ctc_greedy"})
    p = subprocess.run([sys.executable, "-m", "kdtool.bin.decode", "--model_dir", str(models / "ctc"), "--data",
                        str(tiny_features["feats"]), "--config", str(conf), "--out_dir", str(tmp_path / "dec"),
                        "--device", "cuda"], capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "--device cuda: CUDA is not available on this machine" in p.stderr
    assert not (tmp_path / "dec").exists()


@pytest.mark.parametrize("name,message", [("tpu", "not a device"), ("cuda:x", "not a device"),
                                          ("mps", "only cpu and cuda")])
def test_unknown_devices_are_named(name, message):
    from kdtool.models.load import resolve_device
    with pytest.raises(ValueError, match=rf"--device '?{name}'?: {message}"):
        resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind,config,name", CLI_CASES, ids=[c[2] + "-" + c[0] for c in CLI_CASES])
def test_cuda_decodes_as_the_cpu_does(kind, config, name, models, tiny_features, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full float32, as on the CPU
    data = tiny_features["feats"]
    cpu = run_decode(models / kind, data, config, tmp_path / "cpu")
    gpu = run_decode(models / kind, data, config, tmp_path / "gpu", "--device", "cuda")
    assert texts(gpu) == texts(cpu)
    assert json.loads((gpu / "decode_info.json").read_text())["device"].startswith("cuda:")


def test_skip_up_to_date_decodes_again_only_when_weights_features_or_config_change(models, tiny_features, tmp_path,
                                                                                    capsys):
    data, model_dir = tiny_features["feats"], tmp_path / "ctc"
    shutil.copytree(models / "ctc", model_dir)
    out = tmp_path / "dec"

    def decode(config):
        run_decode(model_dir, data, config, out, "--skip_up_to_date")
        return "up to date" in capsys.readouterr().out

    assert not decode({"method": "ctc_greedy"})  # nothing there yet
    (out / "text").write_text("marker\n")  # a skipped decode leaves the dir as it is
    assert decode({"method": "ctc_greedy"}) and (out / "text").read_text() == "marker\n"
    assert not decode({"method": "ctc_greedy", "batch_size": 3})  # another config
    assert decode({"method": "ctc_greedy", "batch_size": 3})
    state = torch.load(model_dir / "model.pth", weights_only=True)
    state["ctc.ctc_lo.bias"] += 1.0
    torch.save(state, model_dir / "model.pth")  # retrained weights
    assert not decode({"method": "ctc_greedy", "batch_size": 3})
    info = json.loads((out / "decode_info.json").read_text())
    assert info["inputs"]["config"] == {"method": "ctc_greedy", "batch_size": 3}
    assert len(info["inputs"]["model_sha256"]) == 64 and len(info["inputs"]["feats_scp_sha256"]) == 64
    assert len(info["load_average"]) == 2 and info["cpu_count"] >= 1  # for make_results' busy-machine mark
    # without the flag a decode always runs
    run_decode(model_dir, data, {"method": "ctc_greedy", "batch_size": 3}, out)
    assert "up to date" not in capsys.readouterr().out
