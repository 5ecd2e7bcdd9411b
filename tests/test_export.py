"""ONNX export (kdtool.export, kdtool.bin.export), the onnx decoding backend and sherpa-onnx.

Tolerance: an exported fp32 graph's outputs (CTC log-probs, masked-LM logits, streaming encoder
states) equal PyTorch's within 1e-4 absolute (measured: ~1e-6), and its greedy hypotheses are
identical. int8 graphs are checked to run; their hypotheses are printed, not asserted.
"""
import json
import shutil
import sys
import wave
from unittest import mock

import numpy as np
import pytest
import torch
import yaml

from kdtool.bin import export as export_bin
from kdtool.data.datadir import read_table
from kdtool.decode import decode_dir
from kdtool.decode.ctc import greedy
from kdtool.decode.streaming import streaming_greedy
from kdtool.export.common import ExportError, parse_tokens_txt, session, set_metadata
from kdtool.export.exporter import export_model
from kdtool.export.runtime import load_export
from kdtool.models.build import build_model
from kdtool.models.load import load_trained
from kdtool.train.dataset import SpeechDataset, collate

ATOL = 1e-4

# recipe-like encoders (Conformer with relative positions, streaming Conformer), random weights:
# what must export faithfully is the computation, and random weights exercise every token
CONFORMER = {"encoder": "conformer", "encoder_conf": {"output_size": 32, "attention_heads": 2, "linear_units": 64,
                                                       "num_blocks": 2, "cnn_module_kernel": 15,
                                                       "subsampling_channels": 16}}
RANDOM_KINDS = {
    "ctc": {"model": "ctc", **CONFORMER},
    "nar": {"model": "nar", **CONFORMER, "decoder": "mlm",
            "decoder_conf": {"attention_heads": 2, "linear_units": 64, "num_blocks": 1}},
    "ar": {"model": "ar", **CONFORMER, "decoder": "transformer",
           "decoder_conf": {"attention_heads": 2, "linear_units": 64, "num_blocks": 1}},
    "transducer": {"model": "transducer", "encoder": "streaming_conformer",
                   "encoder_conf": {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 2,
                                    "cnn_module_kernel": 15, "subsampling_channels": 16},
                   "decoder_conf": {"hidden_size": 32}, "joint_net_conf": {"joint_space_size": 32}},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_exp_dir(root, config, features, seed=0):
    """An exp dir as training leaves it (config.yaml, tokens/, cmvn.ark, model.pth), random weights."""
    exp = root / config["model"]
    shutil.copytree(features["tokens"], exp / "tokens")
    shutil.copy(features["cmvn"], exp / "cmvn.ark")
    (exp / "config.yaml").write_text(yaml.safe_dump(config))
    n_tokens = len((exp / "tokens" / "tokens.txt").read_text().splitlines())
    torch.manual_seed(seed)
    torch.save(build_model(config, n_tokens).state_dict(), exp / "model.pth")
    return exp


@pytest.fixture(scope="module")
def exported(tiny_features, tmp_path_factory):
    """kind -> exp dir (random weights) with its export in <exp>/export."""
    root = tmp_path_factory.mktemp("export_models")
    out = {}
    for kind, config in RANDOM_KINDS.items():
        exp = random_exp_dir(root, config, tiny_features)
        export_model(exp, exp / "export", chunk_size=4)
        out[kind] = exp
    return out


def raw_batch(tiny_features, exp):
    """The 6 tiny utterances' raw fbank in one padded batch, and the same with CMVN (PyTorch's input)."""
    tok = load_trained(exp).tokenizer
    raw = SpeechDataset(tiny_features["feats"], tok)
    normed = SpeechDataset(tiny_features["feats"], tok, cmvn_path=exp / "cmvn.ark")
    return collate([raw[u] for u in raw.utts]), collate([normed[u] for u in raw.utts])


@pytest.mark.parametrize("kind", ["ctc", "nar", "ar"])
def test_ctc_graph_equals_pytorch(kind, exported, tiny_features):
    exp = exported[kind]
    model = load_trained(exp).model
    raw, normed = raw_batch(tiny_features, exp)
    with torch.no_grad():
        enc, enc_lens = model.encode(normed["feats"], normed["feats_lens"])
        ref = model.ctc_log_probs(enc)
    results = {}
    for name in ("model.onnx", "model.int8.onnx"):
        out = session(exp / "export" / name).run(None, {"x": raw["feats"].numpy(), "x_lens": raw["feats_lens"].numpy()})
        log_probs, lens = torch.from_numpy(out[0]), torch.from_numpy(out[1])
        assert lens.tolist() == enc_lens.tolist()
        results[name] = greedy(log_probs, lens)
        if name == "model.onnx":
            diff = max(float((log_probs[b, :n] - ref[b, :n]).abs().max()) for b, n in enumerate(lens.tolist()))
            assert diff < ATOL
            if kind == "nar":  # the third output: the encoder states the masked LM attends to
                assert max(float((torch.from_numpy(out[2][b, :n]) - enc[b, :n]).abs().max())
                           for b, n in enumerate(lens.tolist())) < ATOL
    assert results["model.onnx"] == greedy(ref, enc_lens)
    same = sum(a == b for a, b in zip(results["model.int8.onnx"], results["model.onnx"]))
    print(f"{kind}: int8 greedy hypotheses equal to fp32 for {same} of {len(results['model.onnx'])} utterances")


def test_mlm_decoder_graph_equals_pytorch(exported, tiny_features):
    exp = exported["nar"]
    model = load_trained(exp).model
    _, normed = raw_batch(tiny_features, exp)
    with torch.no_grad():
        enc, enc_lens = model.encode(normed["feats"], normed["feats_lens"])
        gen = torch.Generator().manual_seed(1)
        tokens = torch.randint(2, model.vocab_size - 2, (6, 9), generator=gen)
        tokens[torch.rand(6, 9, generator=gen) < 0.4] = model.mask_token
        lens = torch.tensor([9, 8, 7, 5, 3, 1])
        t = int(enc_lens.max())
        ref, _ = model.decoder(enc[:, :t], enc_lens, tokens, lens)
    sess = session(exp / "export" / "mlm_decoder.onnx")
    logits = sess.run(None, {"encoder_out": enc.numpy(), "encoder_lens": enc_lens.numpy(), "tokens": tokens.numpy(),
                             "token_lens": lens.numpy()})[0]
    for b, n in enumerate(lens.tolist()):
        assert np.abs(logits[b, :n] - ref[b, :n].numpy()).max() < ATOL
        assert logits[b, :n].argmax(-1).tolist() == ref[b, :n].argmax(-1).tolist()


def test_streaming_export_equals_kdtool_streaming(exported, tiny_features):
    """The chunk-step graphs decoded chunk by chunk = kdtool's streaming decoding, for several chunk sizes."""
    from kdtool.decode.onnx import load_onnx_model, streaming_greedy as onnx_streaming

    exp = exported["transducer"]
    model = load_trained(exp).model
    raw, normed = raw_batch(tiny_features, exp)
    onnx_model = load_onnx_model(exp / "export")
    left = int(onnx_model.export.metadata["left_context"])
    for chunk in (4, 16):
        for b, n in enumerate(raw["feats_lens"].tolist()):
            ref, _ = streaming_greedy(model, normed["feats"][b, :n], chunk, left)
            assert onnx_streaming(onnx_model, raw["feats"][b, :n], chunk) == ref
    int8 = load_onnx_model(exp / "export", int8=True)
    print("transducer int8 hypothesis lengths:", [len(onnx_streaming(int8, raw["feats"][b, :n], 16))
                                                  for b, n in enumerate(raw["feats_lens"].tolist())])


def test_export_dir_contents(exported):
    exp = exported["nar"]
    d = exp / "export"
    info = json.loads((d / "export_info.json").read_text())
    assert set(info["files"]) == {p.name for p in d.iterdir()} - {"export_info.json"}
    assert {"model.onnx", "model.int8.onnx", "mlm_decoder.onnx", "mlm_decoder.int8.onnx", "tokens.txt",
            "README.txt"} <= set(info["files"])
    for name, f in info["files"].items():
        assert (d / name).stat().st_size == f["bytes"]
    assert info["graphs"]["model.onnx"]["check"]["max_abs_diff"] < ATOL
    assert info["graphs"]["model.onnx"]["int8"]["quantized"]["MatMul"] > 0
    assert info["files"]["model.int8.onnx"]["bytes"] < info["files"]["model.onnx"]["bytes"]
    # tokens.txt in sherpa-onnx's format: <space> as U+2581, <sos/eos> as </s>, ids in order
    own = (exp / "tokens" / "tokens.txt").read_text().splitlines()
    symbols = parse_tokens_txt(d / "tokens.txt")
    assert len(symbols) == len(own) and symbols[0] == "<blank>"
    assert symbols[own.index("<space>")] == "\u2581" and symbols[own.index("<sos/eos>")] == "</s>"
    assert "kdtool.bin.decode --backend onnx" in (d / "README.txt").read_text()


DECODES = [("ctc", {"method": "ctc_greedy"}), ("nar", {"method": "maskctc_greedy", "threshold": 0.9}),
           ("nar", {"method": "maskctc_beam", "beam_size": 3, "threshold": 0.9, "length_variants": True}),
           ("ar", {"method": "ctc_greedy"}), ("transducer", {"method": "transducer_streaming", "chunk_size": 4}),
           ("transducer", {"method": "transducer_greedy", "batch_size": 3})]


@pytest.mark.parametrize("kind,config", DECODES, ids=[f"{k}-{c['method']}" for k, c in DECODES])
def test_onnx_backend_decodes_like_pytorch(kind, config, exported, tiny_features, tmp_path):
    """decode --backend onnx gives PyTorch's text, and records the backend and the graphs' size."""
    data, exp = tiny_features["feats"], exported[kind]
    opts = {**decode_defaults(config["method"]), **config}
    method, options = opts.pop("method"), opts
    texts = {}
    for backend in ("torch", "onnx", "onnx_int8"):
        info = decode_dir(exp, data, method, options, tmp_path / backend, backend=backend)
        texts[backend] = read_table(tmp_path / backend / "text", allow_empty=True)
        assert info.get("backend", "torch") == backend
    assert texts["onnx"] == texts["torch"]
    assert set(texts["onnx_int8"]) == set(texts["torch"])
    onnx_info = json.loads((tmp_path / "onnx" / "decode_info.json").read_text())
    assert onnx_info["backend"] == "onnx" and onnx_info["inputs"]["backend"] == "onnx"
    torch_info = json.loads((tmp_path / "torch" / "decode_info.json").read_text())
    assert onnx_info["method"] == torch_info["method"] + "_onnx"  # its own row in RESULTS.md
    int8_info = json.loads((tmp_path / "onnx_int8" / "decode_info.json").read_text())
    assert all(".int8." in f for f in int8_info["onnx_files"]) and int8_info["size_mb"] < onnx_info["size_mb"]


def decode_defaults(method):
    from kdtool.decode.runner import METHODS
    return dict(METHODS[method].defaults)


@pytest.mark.parametrize("kind", ["ctc", "nar"])
def test_sherpa_onnx_decodes_like_kdtool(kind, models, tiny_features, tiny_wavs, tmp_path):
    """sherpa-onnx, from the wav files with its own features, gives the text of kdtool's CTC greedy
    search on kdtool's features (a CTC and a Mask-CTC model trained on the tiny utterances; sherpa-onnx
    reads the first two outputs of the Mask-CTC graph, whose third is for the masked LM)."""
    import sherpa_onnx

    exp = tmp_path / kind
    shutil.copytree(models / kind, exp)
    export_model(exp, exp / "export")
    decode_dir(exp, tiny_features["feats"], "ctc_greedy", {"batch_size": 1}, tmp_path / "dec")
    kdtool_text = read_table(tmp_path / "dec" / "text", allow_empty=True)
    # int8 on a trained model: reported, not asserted
    decode_dir(exp, tiny_features["feats"], "ctc_greedy", {"batch_size": 1}, tmp_path / "int8", backend="onnx_int8")
    int8_text = read_table(tmp_path / "int8" / "text", allow_empty=True)
    print(kind, f"int8 text equal to PyTorch's for {sum(int8_text[u] == t for u, t in kdtool_text.items())} of "
          f"{len(kdtool_text)} utterances:", int8_text)
    rec = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
        model=str(exp / "export" / "model.onnx"), tokens=str(exp / "export" / "tokens.txt"), num_threads=1,
        sample_rate=16000, feature_dim=80, decoding_method="greedy_search")
    streams = {}
    for utt, wav in tiny_wavs.items():
        with wave.open(str(wav)) as w:
            samples = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
            rate = w.getframerate()
        streams[utt] = rec.create_stream()
        streams[utt].accept_waveform(rate, samples)
    for utt in ("spka-u1", "spkb-u3"):  # one at a time, then all 6 in one padded batch
        rec.decode_stream(streams[utt])
        assert " ".join(streams[utt].result.text.split()) == kdtool_text[utt]
    rec.decode_streams(list(streams.values()))
    sherpa_text = {utt: " ".join(s.result.text.split()) for utt, s in streams.items()}
    assert any(kdtool_text.values())  # the model has learnt something to compare
    print(kind, "sherpa-onnx:", sherpa_text)
    assert sherpa_text == kdtool_text


def test_decode_cli_with_the_onnx_backend(exported, tiny_features, tmp_path, capsys):
    from kdtool.bin import decode as decode_bin

    config = tmp_path / "ctc_greedy.yaml"
    config.write_text("method: ctc_greedy\nbatch_size: 4\n")
    argv = ["kdtool/bin/decode.py", "--model_dir", str(exported["ctc"]), "--data", str(tiny_features["feats"]),
            "--config", str(config), "--out_dir", str(tmp_path / "dec"), "--backend", "onnx_int8",
            "--skip_up_to_date"]
    for _ in range(2):
        with mock.patch.object(sys, "argv", argv):
            decode_bin.main()
    out = capsys.readouterr().out
    assert "decoded with ctc_greedy_onnx_int8" in out and "up to date" in out.splitlines()[-1]
    info = json.loads((tmp_path / "dec" / "decode_info.json").read_text())
    assert info["onnx_files"] == ["model.int8.onnx"] and "--backend onnx_int8" in info["command"]


# --- bad input -------------------------------------------------------------------------------

def run_export(*args):
    with mock.patch.object(sys, "argv", ["kdtool/bin/export.py", *map(str, args)]):
        export_bin.main()


def test_export_cli(exported, tmp_path, capsys):
    run_export("--model_dir", exported["ctc"], "--out_dir", tmp_path / "exp", "--no_int8")
    assert "max |onnx - torch|" in capsys.readouterr().out
    assert not list((tmp_path / "exp").glob("*.int8.onnx"))
    assert not list(tmp_path.glob("exp.tmp.*"))


def test_export_refuses_what_is_not_a_trained_model(exported, tmp_path):
    bad = tmp_path / "not_a_model"
    shutil.copytree(exported["ctc"], bad, ignore=shutil.ignore_patterns("model.pth", "export"))
    with pytest.raises(FileNotFoundError, match=f"{bad}: not a trained model dir: model.pth is missing"):
        export_model(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_an_offline_transducer(exported, tiny_features, tmp_path):
    config = {**RANDOM_KINDS["transducer"], "encoder": "conformer", "encoder_conf": CONFORMER["encoder_conf"]}
    exp = random_exp_dir(tmp_path, config, tiny_features)
    with pytest.raises(ExportError, match="only with a streaming encoder"):
        export_model(exp, tmp_path / "out")


def test_export_refuses_a_token_list_that_does_not_fit(exported, tmp_path):
    exp = tmp_path / "ctc"
    shutil.copytree(exported["ctc"], exp, ignore=shutil.ignore_patterns("export"))
    tokens = exp / "tokens" / "tokens.txt"
    tokens.write_text(tokens.read_text() + "extra\n")
    with pytest.raises(ValueError, match="does not fit a ctc model with the .*-token list"):
        export_model(exp, tmp_path / "out")


def test_onnx_backend_refuses_a_method_without_one(exported, tiny_features, tmp_path):
    with pytest.raises(ValueError, match="method ar_beam has no onnx backend"):
        decode_dir(exported["ar"], tiny_features["feats"], "ar_beam", decode_defaults("ar_beam"), tmp_path / "d",
                   backend="onnx")


def copy_export(exp, tmp_path):
    d = tmp_path / "export"
    shutil.copytree(exp / "export", d)
    return d


def test_loader_refuses_a_missing_export(exported, tiny_features, tmp_path):
    with pytest.raises(ExportError, match="not a kdtool export dir: export_info.json is missing"):
        load_export(tmp_path)
    exp = tmp_path / "ctc"
    shutil.copytree(exported["ctc"], exp, ignore=shutil.ignore_patterns("export"))
    with pytest.raises(ExportError, match=f"{exp / 'export'}: not a kdtool export dir"):
        decode_dir(exp, tiny_features["feats"], "ctc_greedy", {"batch_size": 1}, tmp_path / "d", backend="onnx")


def test_loader_refuses_a_tokens_txt_that_does_not_match_the_graphs(exported, tmp_path):
    d = copy_export(exported["ctc"], tmp_path)
    lines = (d / "tokens.txt").read_text().splitlines()
    (d / "tokens.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ExportError, match=r"model.onnx: does not match .*vocab_size is '\d+', expected"):
        load_export(d)
    with pytest.raises(ExportError, match=r"tokens.txt: differs from .*tokens/tokens.txt"):
        load_export(d, model_dir=exported["ctc"])


def test_loader_refuses_a_graph_of_another_export(exported, tmp_path):
    d = copy_export(exported["ctc"], tmp_path)
    shutil.copy(exported["transducer"] / "export" / "joiner.onnx", d / "model.onnx")
    with pytest.raises(ExportError, match="model.onnx: does not match .*kdtool_kind is 'transducer'"):
        load_export(d)
    shutil.copy(exported["ctc"] / "export" / "model.onnx", d / "model.onnx")
    set_metadata(d / "model.onnx", {**session(d / "model.onnx").get_modelmeta().custom_metadata_map,
                                    "tokens_sha256": "0" * 64})
    with pytest.raises(ExportError, match="tokens_sha256 is '0000"):
        load_export(d)


def test_loader_refuses_an_export_of_other_weights(exported, tmp_path):
    exp = tmp_path / "ctc"
    shutil.copytree(exported["ctc"], exp)
    state = torch.load(exp / "model.pth", weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, exp / "model.pth")
    with pytest.raises(ExportError, match="exported from other weights than .*model.pth has now; export .* again"):
        load_export(exp / "export", model_dir=exp)


def test_streaming_backend_refuses_another_left_context(exported, tiny_features, tmp_path):
    with pytest.raises(ValueError, match="exported with left_context 256, not 8"):
        decode_dir(exported["transducer"], tiny_features["feats"], "transducer_streaming",
                   {**decode_defaults("transducer_streaming"), "left_context": 8}, tmp_path / "d", backend="onnx")


def test_a_check_refuses_outputs_shaped_unlike_pytorchs():
    """A graph's outputs are compared with PyTorch's frame by frame: outputs of another shape (which numpy
    would broadcast into a diff over the wrong frames) are an ExportError naming both shapes."""
    from kdtool.export import exporter
    ref = np.zeros((61, 4), np.float32)
    with mock.patch.object(exporter, "session", lambda path: None):
        assert exporter.Check(lambda sess: [ref + 0.5], [ref], {}).max_diff("g.onnx") == 0.5
        with pytest.raises(ExportError, match=r"g.onnx: outputs of shapes \[\(1, 4\)\] against PyTorch's \[\(61, 4\)\]"):
            exporter.Check(lambda sess: [ref[:1]], [ref], {}).max_diff("g.onnx")
        with pytest.raises(ExportError, match="outputs of shapes"):
            exporter.Check(lambda sess: [], [ref], {}).max_diff("g.onnx")
