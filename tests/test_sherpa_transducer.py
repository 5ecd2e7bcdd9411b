"""The stateless prediction network (decoder: stateless, kdtool.models.stateless) and the streaming
transducer export in sherpa-onnx's icefall conformer layout (kdtool.export.onnx_sherpa): kdtool's
searches run it, the export equals kdtool's streaming decoding, and sherpa-onnx's OnlineRecognizer
decodes a wav to the tokens of kdtool's streaming greedy search on kdtool's features."""
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kdtool.decode.streaming import streaming_greedy
from kdtool.decode.transducer import TransducerBeamSearch, greedy_search
from kdtool.export.common import ExportError, parse_tokens_txt, read_file_metadata
from kdtool.export.exporter import export_model
from kdtool.features.cmvn import mean_std
from kdtool.features.fbank import fbank
from kdtool.models.build import MODEL_KEYS, build_model
from kdtool.models.load import load_trained
from kdtool.train.dataset import SpeechDataset, collate

REPO = Path(__file__).resolve().parent.parent

ENC = {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 2, "cnn_module_kernel": 7,
       "subsampling_channels": 16, "dropout_rate": 0.0, "positional_dropout_rate": 0.0,
       "attention_dropout_rate": 0.0, "short_chunk_size": 8}
STATELESS = {"model": "transducer", "encoder": "streaming_conformer", "encoder_conf": ENC,
             "decoder": "stateless", "decoder_conf": {"hidden_size": 32, "context_size": 2},
             "joint_net_conf": {"joint_space_size": 32}, "specaug_conf": None}
CHUNK = 4  # encoder frames a chunk: sherpa-onnx reads T = 4*3 + 7 = 19 frames every 16


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def exp_dir(root, features, config, state=None, seed=0):
    """An exp dir as training leaves it (config.yaml, tokens/, cmvn.ark, model.pth)."""
    exp = root / "stateless"
    shutil.copytree(features["tokens"], exp / "tokens")
    shutil.copy(features["cmvn"], exp / "cmvn.ark")
    (exp / "config.yaml").write_text(yaml.safe_dump(config))
    if state is None:
        torch.manual_seed(seed)
        n_tokens = len((exp / "tokens" / "tokens.txt").read_text().splitlines())
        state = build_model(config, n_tokens).state_dict()
    torch.save(state, exp / "model.pth")
    return exp


def batch(features, exp):
    """The 6 tiny utterances with CMVN, one padded batch."""
    data = SpeechDataset(features["feats"], load_trained(exp).tokenizer, cmvn_path=exp / "cmvn.ark")
    return collate([data[u] for u in data.utts])


@pytest.fixture(scope="module")
def trained(tiny_features, tmp_path_factory):
    """A tiny streaming transducer with the stateless predictor trained 140 steps on the 6 tiny utterances
    (random chunk sizes; about 20 s): its greedy hypotheses come near the transcripts (measured: 60 steps
    still emit nothing but blank)."""
    root = tmp_path_factory.mktemp("stateless")
    exp = exp_dir(root, tiny_features, STATELESS)
    model = load_trained(exp).model
    b = batch(tiny_features, exp)
    optim = torch.optim.Adam(model.parameters(), lr=5e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(140):
        loss, _ = model(b["feats"], b["feats_lens"], b["ys"], b["ys_lens"])
        optim.zero_grad()
        loss.backward()
        optim.step()
    torch.save(model.state_dict(), exp / "model.pth")
    return exp


def test_stateless_decoder_is_icefalls():
    """The prediction network sees exactly the last context_size labels, blank (and -1) embed to zero,
    its training-time forward equals stepping it label by label, and every search runs it."""
    torch.manual_seed(0)
    model = build_model(STATELESS, 12).eval()
    dec = model.decoder
    assert dec.embed.weight[0].abs().sum() == 0  # blank: the padding embedding
    labels = torch.tensor([[0, 5, 3, 7, 7, 2]])
    with torch.no_grad():
        full = dec(labels)  # [1, 6, H]: what joint_logits trains
        steps = [dec.label_step(torch.tensor([[int(labels[0, i - 1]) if i else -1, int(labels[0, i])]]))
                 for i in range(6)]
        torch.testing.assert_close(full[0], torch.cat(steps))
        # only the last two labels matter
        torch.testing.assert_close(dec.label_step(torch.tensor([[3, 7]])), dec.label_step(torch.tensor([[3, 7]])))
        assert torch.equal(dec.label_step(torch.tensor([[-1, 0]])), dec.label_step(torch.tensor([[0, 0]])))
        x = torch.randn(2, 90, 80, generator=torch.Generator().manual_seed(1))
        enc, enc_lens = model.encode(x, torch.tensor([90, 70]))
        greedy = greedy_search(model, enc, enc_lens)
        assert greedy == [greedy_search(model, enc[b:b + 1, :n], enc_lens[b:b + 1])[0]
                          for b, n in enumerate(enc_lens.tolist())]  # batched = alone
        for search_type in ("default", "alsd", "tsd"):
            hyps = TransducerBeamSearch(model, beam_size=3, search_type=search_type)(enc, enc_lens)
            assert len(hyps) == 2 and all(0 not in h for h in hyps)
    # RNN-T loss and its gradient reach the predictor (what lattice KD trains through joint_logits)
    model.train()
    loss, stats = model(x, torch.tensor([90, 70]), torch.tensor([[3, 4, 5], [6, 7, -1]]), torch.tensor([3, 2]))
    loss.backward()
    assert torch.isfinite(loss) and dec.conv.weight.grad.abs().sum() > 0 and dec.embed.weight.grad[0].abs().sum() == 0


def test_bad_stateless_configs_are_named():
    with pytest.raises(ValueError, match="context_size must be 1 or more"):
        build_model({**STATELESS, "decoder_conf": {"hidden_size": 8, "context_size": 0}}, 12)
    with pytest.raises(ValueError, match=r"decoder_conf \(stateless\): unknown key\(s\) \['rnn_type'\]"):
        build_model({**STATELESS, "decoder_conf": {"rnn_type": "lstm"}}, 12)
    with pytest.raises(ValueError, match="a transducer model takes decoder: rnn or stateless, not 'mlm'"):
        build_model({**STATELESS, "decoder": "mlm"}, 12)


def test_stateless_student_config_changes_only_the_decoder():
    """mini_en's stateless student is the single-stage transducer student with another prediction network:
    naming decoder: stateless drops the base's LSTM options (rnn_type, num_layers, dropout)."""
    from kdtool.train.config import read_config

    conf = REPO / "egs" / "mini_en" / "kd1" / "conf"
    base = read_config(conf / "train_transducer_student_single.yaml")
    new = read_config(conf / "tuning" / "train_transducer_student_single_stateless.yaml")
    assert {k for k in base.keys() | new.keys() if base.get(k) != new.get(k)} == {"decoder", "decoder_conf"}
    assert new["decoder_conf"] == {"hidden_size": 128, "context_size": 2, "dropout_embed": 0.1}
    model = build_model({k: v for k, v in new.items() if k in MODEL_KEYS}, 50)
    assert model.decoder.dtype == "stateless" and model.joint_network.lin_dec.in_features == 128


def test_export_equals_kdtool_streaming(tiny_features, tmp_path):
    """Random weights: the sherpa-layout graphs, decoded chunk by chunk by kdtool's onnx backend, give
    kdtool's streaming greedy hypotheses for several chunk sizes; the metadata sherpa-onnx reads is there."""
    from kdtool.decode.onnx import load_onnx_model, streaming_greedy as onnx_streaming

    exp = exp_dir(tmp_path, tiny_features, STATELESS)
    info = export_model(exp, exp / "export", chunk_size=CHUNK)
    assert info["metadata"]["layout"] == "sherpa" and info["graphs"]["encoder.onnx"]["check"]["max_abs_diff"] < 1e-4
    meta = read_file_metadata(exp / "export" / "encoder.onnx")
    assert {k: meta[k] for k in ("model_type", "T", "decode_chunk_len", "pad_length", "num_encoder_layers",
                                 "left_context", "encoder_dim", "cnn_module_kernel")} == {
        "model_type": "conformer", "T": "19", "decode_chunk_len": "16", "pad_length": "3", "num_encoder_layers": "2",
        "left_context": "256", "encoder_dim": "32", "cnn_module_kernel": "7"}
    dec_meta = read_file_metadata(exp / "export" / "decoder.onnx")
    assert dec_meta["context_size"] == "2" and int(dec_meta["vocab_size"]) == len(
        parse_tokens_txt(exp / "export" / "tokens.txt"))
    model = load_trained(exp).model
    b = batch(tiny_features, exp)
    raw = SpeechDataset(tiny_features["feats"], load_trained(exp).tokenizer)
    onnx_model = load_onnx_model(exp / "export", model_dir=exp)
    for chunk in (CHUNK, 16):
        for i, (utt, n) in enumerate(zip(b["utts"], b["feats_lens"].tolist())):
            ref, _ = streaming_greedy(model, b["feats"][i, :n], chunk, 256)
            assert onnx_streaming(onnx_model, raw[utt]["feats"], chunk) == ref
    assert "OnlineRecognizer.from_transducer" in (exp / "export" / "README.txt").read_text()


def read_wav(path):
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768, w.getframerate()


def test_sherpa_onnx_decodes_like_kdtool(trained, tiny_wavs, tmp_path):
    """sherpa-onnx's OnlineRecognizer, from the wav (its own features, chunk by chunk, two streams in one
    batch), emits the tokens of kdtool's streaming greedy search (one label a frame, as sherpa's) over
    the same audio's kdtool features: the whole chunks sherpa decodes, T + decode_chunk_len frames of
    silence after the audio flushing the last."""
    import sherpa_onnx

    exp = tmp_path / "exp"
    shutil.copytree(trained, exp)
    export_model(exp, exp / "export", chunk_size=CHUNK)
    trained_model = load_trained(exp)
    model, tokens = trained_model.model, parse_tokens_txt(exp / "export" / "tokens.txt")
    mean, std = mean_std(trained_model.cmvn)
    d = exp / "export"
    rec = sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=str(d / "tokens.txt"), encoder=str(d / "encoder.onnx"), decoder=str(d / "decoder.onnx"),
        joiner=str(d / "joiner.onnx"), num_threads=1, sample_rate=16000, feature_dim=80,
        decoding_method="greedy_search")
    T, shift = 19, 16
    expected, streams = {}, {}
    for utt in ("spka-u1", "spkb-u3"):
        samples, rate = read_wav(tiny_wavs[utt])
        audio = np.concatenate([samples, np.zeros((T + shift) * 160, np.float32)])
        feats = fbank(audio)
        chunks = (len(feats) - T - 1) // shift + 1  # sherpa decodes a chunk once more than T frames are ready
        feats = (feats[:shift * (chunks - 1) + T] - mean) / std
        hyp, _ = streaming_greedy(model, torch.from_numpy(feats).float(), CHUNK, 256, max_symbols_per_frame=1)
        expected[utt] = [tokens[t] for t in hyp]
        streams[utt] = rec.create_stream()
        streams[utt].accept_waveform(rate, audio)
        streams[utt].input_finished()
    while any(rec.is_ready(s) for s in streams.values()):
        rec.decode_streams([s for s in streams.values() if rec.is_ready(s)])
    got = {utt: [t.replace(" ", "\u2581") for t in rec.get_result_all(s).tokens] for utt, s in streams.items()}
    print("sherpa-onnx:", {utt: rec.get_result(s) for utt, s in streams.items()})
    assert all(len(h) >= 5 for h in expected.values())  # the model emits: there is something to compare
    assert got == expected


def test_sherpa_layout_refuses_an_lstm_predictor(tiny_features, tmp_path):
    """A transducer with espnet's LSTM prediction network cannot take sherpa-onnx's layout: the error
    says why and names the option that makes one that can."""
    config = {**STATELESS, "decoder": "rnn", "decoder_conf": {"hidden_size": 32}}
    exp = exp_dir(tmp_path, tiny_features, config)
    with pytest.raises(ExportError, match=r"sherpa layout .* needs a stateless prediction network, and this "
                                          r"model's is an LSTM \(decoder: rnn\).*no recurrent state.*"
                                          r"decoder: stateless.*--layout kdtool"):
        export_model(exp, tmp_path / "out", layout="sherpa")
    assert not (tmp_path / "out").exists()
    stateless = exp_dir(tmp_path / "s", tiny_features, STATELESS)
    with pytest.raises(ExportError, match="predictor is 'stateless': export it with --layout sherpa"):
        export_model(stateless, tmp_path / "out", layout="kdtool")
