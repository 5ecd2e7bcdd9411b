"""A trained exp dir -> a self-contained export dir that runs without kdtool:

    tokens.txt          ``symbol id`` lines (sherpa-onnx's format; ``<space>`` written as U+2581)
    model.onnx          ctc, nar, ar: raw fbank -> CTC log-probs (kdtool.export.onnx_ctc)
    mlm_decoder.onnx    nar: the masked-LM decoder
    encoder.onnx, decoder.onnx, joiner.onnx
                        streaming transducer: chunk step, prediction-network step, joint network; with
                        an LSTM predictor in kdtool's layout (kdtool.export.onnx_transducer), with a
                        stateless one in sherpa-onnx's (kdtool.export.onnx_sherpa: OnlineRecognizer)
    *.int8.onnx         each graph with dynamic int8 quantization (kdtool.export.quantize)
    export_info.json    model dir, kind, opset, versions, the token-list hash, every file's size and
                        sha256, each graph's check against PyTorch and what int8 quantized
    README.txt          how to run it

Each graph's metadata holds the kind, the graph's role, vocab_size and the token list's sha256, so
that kdtool's loader (kdtool.export.runtime) refuses graphs that do not belong to their tokens.txt.
Every fp32 graph is checked against PyTorch on the same input before the dir is written.
"""
import importlib.metadata
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kdtool.decode.streaming import encode_chunks
from kdtool.export.common import (OPSET, ExportError, export_graph, read_file_metadata, session, set_metadata,
                                  tokens_txt)
from kdtool.export.onnx_ctc import CtcGraph, MlmDecoderGraph
from kdtool.export.onnx_sherpa import (ProjectedJointGraph, SherpaEncoderGraph, StatelessDecoderGraph,
                                       sherpa_cache_shapes)
from kdtool.export.onnx_transducer import EncoderChunkGraph, JointGraph, PredictorStepGraph, cache_shapes
from kdtool.export.quantize import quantize
from kdtool.features.cmvn import mean_std
from kdtool.features.fbank import FBANK_OPTS
from kdtool.models.asr import front_end, subsampling_factor
from kdtool.models.load import load_trained
from kdtool.utils.atomic import atomic_open
from kdtool.utils.files import file_sha256

# fp32 graphs must match PyTorch within this (absolute, on log-probs / logits / encoder states);
# measured on tiny and recipe-sized models: about 1e-6
ATOL = 1e-4
DEFAULT_LEFT_CONTEXT = 256  # encoder frames (10.24 s with conv2d) a streaming export's attention sees
DEFAULT_CHUNK_SIZE = 16  # encoder frames per chunk the export is checked with (the recipe's decoding)
# a streaming transducer's graph layouts: kdtool's (LSTM state in and out of decoder.onnx) and sherpa-onnx's
# icefall conformer one (a stateless predictor rerun on the last labels); None picks the predictor's
LAYOUTS = ("kdtool", "sherpa")


def export_model(model_dir, out_dir, int8=True, left_context=None, chunk_size=DEFAULT_CHUNK_SIZE, layout=None):
    """Export ``model_dir`` into ``out_dir`` (replaced whole once everything is written and checked);
    returns export_info as a dict. ``layout`` (transducers): kdtool or sherpa, default the one the
    prediction network fits (sherpa for decoder: stateless); in the sherpa layout ``chunk_size`` is the
    chunk sherpa-onnx decodes with."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    trained = load_trained(model_dir)  # a FileNotFoundError / ValueError naming the dir if it is not a model
    model = trained.model
    kind = model.kind
    streaming = hasattr(model.encoder, "chunk_forward")
    if kind == "transducer" and not streaming:
        raise ExportError(f"{model_dir}: a transducer exports only with a streaming encoder "
                          f"(encoder: streaming_conformer), not {trained.config.get('encoder')!r}")
    if kind == "transducer":
        layout = check_layout(model_dir, model, layout)
    if kind != "transducer" and getattr(model, "ctc", None) is None:
        raise ExportError(f"{model_dir}: a {kind} model exports its CTC head, and this one has none")

    tmp = out_dir.with_name(f"{out_dir.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / "tokens.txt").write_text(tokens_txt(trained.tokenizer.tokens), encoding="utf-8")
        meta = base_metadata(trained)
        rng = np.random.default_rng(0)
        if kind == "transducer":
            left_context = left_context or (model.encoder.num_left_chunks * chunk_size or DEFAULT_LEFT_CONTEXT)
            meta["layout"] = layout
            export = export_sherpa_transducer if layout == "sherpa" else export_transducer
            graphs = export(trained, tmp, meta, rng, left_context, chunk_size)
        else:
            graphs = export_ctc(trained, tmp, meta, rng)
        if int8:
            for name, g in graphs.items():
                g.update(quantize_graph(tmp, name, g))
        (tmp / "README.txt").write_text(readme(kind, model_dir, meta), encoding="utf-8")
        info = write_info(trained, tmp, graphs, meta)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def check_layout(model_dir, model, layout):
    """The layout a transducer exports in, or an ExportError saying why it cannot."""
    predictor = getattr(model.decoder, "dtype", None)  # lstm, gru (espnet's rnn decoder) or stateless
    layout = layout or ("sherpa" if predictor == "stateless" else "kdtool")
    if layout not in LAYOUTS:
        raise ExportError(f"{model_dir}: unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    if layout == "sherpa" and predictor != "stateless":
        raise ExportError(
            f"{model_dir}: the sherpa layout (sherpa-onnx's streaming icefall conformer transducer) needs a "
            f"stateless prediction network, and this model's is an {predictor.upper()} (decoder: rnn): sherpa-onnx "
            "reruns decoder.onnx on the last context_size labels and carries no recurrent state between them. "
            "Train the model with decoder: stateless (decoder_conf: hidden_size, context_size), or export this "
            "one with --layout kdtool for kdtool's onnx backend")
    if layout == "kdtool" and predictor != "lstm":
        raise ExportError(f"{model_dir}: the kdtool layout carries an LSTM prediction network's state, and this "
                          f"model's predictor is {predictor!r}" + (": export it with --layout sherpa"
                                                                   if predictor == "stateless" else ""))
    return layout


def base_metadata(trained):
    model = trained.model
    return {"kdtool_kind": model.kind, "vocab_size": str(model.vocab_size),
            "tokens_sha256": file_sha256(trained.exp_dir / "tokens" / "tokens.txt"),
            "model_sha256": file_sha256(trained.exp_dir / "model.pth"), "blank_id": str(model.blank),
            "mask_id": str(model.mask_token), "feature_dim": str(trained.cmvn.shape[1] - 1),
            "subsampling_factor": str(subsampling_factor(model)), "cmvn": "global, inside the graph",
            # (kernel, stride) of each subsampling convolution: a runtime's output-length arithmetic
            "subsampling_convs": json.dumps([list(c) for c in front_end(model)]),
            "fbank": json.dumps({**FBANK_OPTS, "sample_rate": 16000, "audio": "[-1, 1]"})}


def fbank_like(trained, rng, lens):
    """Random raw-fbank-like features (CMVN stats' mean and std), zero-padded: (x, x_lens)."""
    mean, std = mean_std(trained.cmvn)
    x = np.zeros((len(lens), max(lens), len(mean)), np.float32)
    for b, n in enumerate(lens):
        x[b, :n] = mean + std * rng.standard_normal((n, len(mean)))
    return x, np.array(lens, np.int64)


@dataclass
class Check:
    """How a graph is compared with PyTorch: ``run`` (an onnxruntime session -> outputs) and
    PyTorch's ``reference`` outputs, both over valid frames only."""
    run: Callable
    reference: list
    about: dict  # the input, for export_info.json

    def max_diff(self, path):
        outputs = [np.asarray(o, np.float64) for o in self.run(session(path))]
        reference = [np.asarray(r, np.float64) for r in self.reference]
        shapes = [(o.shape, r.shape) for o, r in zip(outputs, reference) if o.shape != r.shape]
        if len(outputs) < len(reference) or shapes:  # never broadcast: a diff over the wrong frames hides errors
            raise ExportError(f"{path}: outputs of shapes {[o.shape for o in outputs]} against PyTorch's "
                              f"{[r.shape for r in reference]}")
        return max(float(np.abs(o - r).max()) for o, r in zip(outputs, reference))


def plain_check(inputs, reference, valid=None):
    """A Check that runs the graph once on ``inputs``; ``valid``: the first output's valid length
    per utterance (padded frames carry no meaning)."""
    def trim(outputs):
        outputs = list(outputs)
        if valid is not None:
            outputs[0] = np.concatenate([o[:n] for o, n in zip(outputs[0], valid)])
        return outputs
    return Check(lambda sess: trim(sess.run(None, inputs)), trim(reference),
                 {k: list(v.shape) for k, v in inputs.items()})


def verified(path, check):
    """The fp32 graph's check result; an ExportError if it differs from PyTorch by more than ATOL."""
    diff = check.max_diff(path)
    if diff > ATOL:
        raise ExportError(f"{path}: onnxruntime's outputs differ from PyTorch's by {diff:.3g} (> {ATOL}); "
                          "the graph was not exported faithfully")
    return {"check": {"input": check.about, "max_abs_diff": diff, "atol": ATOL}, "_check": check}


def export_ctc(trained, out, meta, rng):
    """model.onnx (and mlm_decoder.onnx for nar): returns {file: graph info} with the check's result."""
    model, kind = trained.model, trained.model.kind
    graph = CtcGraph(model, trained.cmvn, with_encoder_out=kind == "nar").eval()
    names = ["log_probs", "lengths"] + (["encoder_out"] if kind == "nar" else [])
    axes = {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, "log_probs": {0: "N", 1: "T_out"}, "lengths": {0: "N"},
            "encoder_out": {0: "N", 1: "T_out"}}
    x, x_lens = fbank_like(trained, rng, [357, 251])  # two lengths: padding must not change the valid frames
    export_graph(graph, (torch.from_numpy(x), torch.from_numpy(x_lens)), out / "model.onnx", ["x", "x_lens"],
                 names, {k: v for k, v in axes.items() if k in names + ["x", "x_lens"]}, {**meta, "graph": "ctc"})
    with torch.no_grad():
        ref = [t.numpy() for t in graph(torch.from_numpy(x), torch.from_numpy(x_lens))]
    graphs = {"model.onnx": verified(out / "model.onnx", plain_check({"x": x, "x_lens": x_lens}, ref, ref[1]))}
    if kind == "nar":
        graphs["mlm_decoder.onnx"] = export_mlm_decoder(model, out, meta, rng, ref)
    return graphs


def export_mlm_decoder(model, out, meta, rng, ctc_outputs):
    enc_lens, enc = torch.from_numpy(ctc_outputs[1]), torch.from_numpy(ctc_outputs[2])
    lens = torch.tensor([12, 7])
    tokens = torch.from_numpy(rng.integers(2, model.vocab_size - 2, (2, 12)))
    tokens[torch.from_numpy(rng.random((2, 12)) < 0.5)] = model.mask_token
    graph = MlmDecoderGraph(model).eval()
    names = ["encoder_out", "encoder_lens", "tokens", "token_lens"]
    axes = {"encoder_out": {0: "N", 1: "T_out"}, "encoder_lens": {0: "N"}, "tokens": {0: "N", 1: "L"},
            "token_lens": {0: "N"}, "logits": {0: "N", 1: "L"}}
    export_graph(graph, (enc, enc_lens, tokens, lens), out / "mlm_decoder.onnx", names, ["logits"], axes,
                 {**meta, "graph": "mlm_decoder"})
    with torch.no_grad():
        ref = graph(enc, enc_lens, tokens, lens).numpy()
        # the graph's module must compute what espnet's decoder (kdtool's Mask-CTC decoding) does
        own = model.decoder(enc, enc_lens, tokens, lens)[0].numpy()
    if max(np.abs(ref[b, :n] - own[b, :n]).max() for b, n in enumerate(lens.tolist())) > ATOL:
        raise ExportError(f"{out}: the masked-LM decoder graph's module differs from espnet's MLMDecoder")
    inputs = dict(zip(names, (enc.numpy(), enc_lens.numpy(), tokens.numpy(), lens.numpy())))
    return verified(out / "mlm_decoder.onnx", plain_check(inputs, [ref], lens.numpy()))


def export_transducer(trained, out, meta, rng, left_context, chunk_size):
    """encoder.onnx, decoder.onnx, joiner.onnx in kdtool's layout; adds the streaming keys to ``meta``."""
    model = trained.model
    enc = model.encoder
    att_shape, conv_shape = cache_shapes(model, left_context)
    sub, field = enc.embed.subsampling_factor, enc.min_frames
    meta.update({"left_context": str(left_context), "chunk_size": str(chunk_size),
                 "encoder_dim": str(enc.output_size()), "num_encoder_layers": str(att_shape[0]),
                 "cnn_module_kernel": str(conv_shape[3] + 1), "subsampling_receptive_field": str(field),
                 "pred_rnn_layers": str(model.decoder.dlayers), "pred_hidden": str(model.decoder.dunits)})
    x, _ = fbank_like(trained, rng, [sub * 60 + field])  # 61 encoder frames: a short last chunk
    feats = x[0]
    graph = EncoderChunkGraph(model, trained.cmvn, left_context).eval()
    first = torch.from_numpy(feats[None, :sub * (chunk_size - 1) + field])
    export_graph(graph, (first, torch.zeros(att_shape), torch.zeros(conv_shape), torch.tensor(0)),
                 out / "encoder.onnx", ["x", "att_cache", "conv_cache", "processed_frames"],
                 ["encoder_out", "att_cache_out", "conv_cache_out"],
                 {"x": {1: "T"}, "encoder_out": {1: "T_out"}}, {**meta, "graph": "encoder_chunk"})
    # the reference: kdtool's own streaming encoder (CMVN applied outside), chunk by chunk
    mean, std = mean_std(trained.cmvn)
    with torch.no_grad():
        enc_ref = torch.cat(list(encode_chunks(model, torch.from_numpy((feats - mean) / std), chunk_size,
                                               left_context))).numpy()

    def stream(sess):  # also rerun on the int8 graph later: enc_ref must stay the encoder's reference
        att, conv = np.zeros(att_shape, np.float32), np.zeros(conv_shape, np.float32)
        chunks = []
        for start, piece in chunk_pieces(feats, len(enc_ref), chunk_size, sub, field):
            o, att, conv = sess.run(None, {"x": piece[None], "att_cache": att, "conv_cache": conv,
                                           "processed_frames": np.array(start, np.int64)})
            chunks.append(o[0])
        return [np.concatenate(chunks)]
    graphs = {"encoder.onnx": verified(out / "encoder.onnx", Check(stream, [enc_ref], {
        "frames": len(feats), "chunk_size": chunk_size, "left_context": left_context}))}

    model.decoder.set_device(torch.device("cpu"))
    layers, hidden = model.decoder.dlayers, model.decoder.dunits
    y = torch.from_numpy(rng.integers(0, model.vocab_size, (3, 1)))
    h, c = (torch.from_numpy(rng.standard_normal((layers, 3, hidden)).astype(np.float32)) for _ in range(2))
    pred = PredictorStepGraph(model).eval()
    export_graph(pred, (y, h, c), out / "decoder.onnx", ["y", "h", "c"], ["decoder_out", "h_out", "c_out"],
                 {"y": {0: "N"}, "h": {1: "N"}, "c": {1: "N"}, "decoder_out": {0: "N"}, "h_out": {1: "N"},
                  "c_out": {1: "N"}}, {**meta, "graph": "predictor"})
    with torch.no_grad():
        ref = [t.numpy() for t in pred(y, h, c)]
    graphs["decoder.onnx"] = verified(out / "decoder.onnx",
                                      plain_check({"y": y.numpy(), "h": h.numpy(), "c": c.numpy()}, ref))

    graphs["joiner.onnx"] = export_joiner(JointGraph(model), enc.output_size(), ref[0], out, rng, "logits",
                                          {**meta, "graph": "joiner"})
    return graphs


def export_sherpa_transducer(trained, out, meta, rng, left_context, chunk_size):
    """encoder.onnx, decoder.onnx, joiner.onnx in sherpa-onnx's icefall conformer layout
    (kdtool.export.onnx_sherpa); adds its keys to ``meta``. The encoder is checked as sherpa runs it:
    chunks of T frames every decode_chunk_len, two streams in one batch, the second a chunk behind (so
    their processed_frames differ), against kdtool's streaming encoder."""
    model = trained.model
    enc = model.encoder
    sub, field = enc.embed.subsampling_factor, enc.min_frames
    attn_shape, cnn_shape = sherpa_cache_shapes(model, left_context)
    T, shift = sub * (chunk_size - 1) + field, sub * chunk_size
    meta.update({"model_type": "conformer", "num_encoder_layers": str(attn_shape[0]), "T": str(T),
                 "decode_chunk_len": str(shift), "left_context": str(left_context), "encoder_dim": str(attn_shape[3]),
                 "pad_length": str(T - shift), "cnn_module_kernel": str(cnn_shape[1] + 1),
                 "chunk_size": str(chunk_size), "subsampling_receptive_field": str(field),
                 "context_size": str(model.decoder.context_size), "pred_hidden": str(model.decoder.dunits)})
    graph = SherpaEncoderGraph(model, trained.cmvn, left_context, sub).eval()
    x, _ = fbank_like(trained, rng, [T, T])
    init = [np.zeros(s[:2] + (2,) + s[3:], np.float32) for s in (attn_shape, cnn_shape)]
    export_graph(graph, (torch.from_numpy(x), *map(torch.from_numpy, init), torch.tensor([0, shift])),
                 out / "encoder.onnx", ["x", "attn_cache", "cnn_cache", "processed_frames"],
                 ["encoder_out", "new_attn_cache", "new_cnn_cache"],
                 {"x": {0: "N", 1: "T"}, "attn_cache": {2: "N"}, "cnn_cache": {2: "N"}, "processed_frames": {0: "N"},
                  "encoder_out": {0: "N", 1: "T_out"}, "new_attn_cache": {2: "N"}, "new_cnn_cache": {2: "N"}},
                 {**meta, "graph": "sherpa_encoder"})
    # two streams of 4 whole chunks; the reference: kdtool's streaming encoder (CMVN outside), projected
    streams = list(fbank_like(trained, rng, [shift * 3 + T] * 2)[0])
    mean, std = mean_std(trained.cmvn)
    with torch.no_grad():
        ref = [model.joint_network.lin_enc(torch.cat(list(encode_chunks(
            model, torch.from_numpy((f - mean) / std), chunk_size, left_context)))).numpy() for f in streams]
    graphs = {"encoder.onnx": verified(out / "encoder.onnx", Check(
        lambda sess: sherpa_streams(sess, streams, T, shift, attn_shape, cnn_shape), ref,
        {"frames": len(streams[0]), "streams": 2, "T": T, "decode_chunk_len": shift, "left_context": left_context}))}

    y = torch.from_numpy(rng.integers(0, model.vocab_size, (3, model.decoder.context_size)))
    y[0, :-1] = -1  # sherpa's start: [-1, ..., -1, blank]
    y[0, -1] = model.blank
    pred = StatelessDecoderGraph(model).eval()
    export_graph(pred, (y,), out / "decoder.onnx", ["y"], ["decoder_out"], {"y": {0: "N"}, "decoder_out": {0: "N"}},
                 {**meta, "graph": "stateless_predictor"})
    with torch.no_grad():
        ref = [pred(y).numpy()]
    graphs["decoder.onnx"] = verified(out / "decoder.onnx", plain_check({"y": y.numpy()}, ref))

    # sherpa feeds the joiner the encoder output already projected (the encoder graph does it): decoder width
    graphs["joiner.onnx"] = export_joiner(ProjectedJointGraph(model), ref[0].shape[1], ref[0], out, rng, "logit",
                                          {**meta, "graph": "sherpa_joiner"})
    return graphs


def export_joiner(joint, enc_dim, decoder_out, out, rng, output_name, meta):
    """joiner.onnx from ``joint`` (encoder_out [N, enc_dim], decoder_out [N, D]) -> logits, checked on three
    random encoder frames against the predictor's reference outputs ``decoder_out``."""
    joint = joint.eval()
    e = torch.from_numpy(rng.standard_normal((len(decoder_out), enc_dim)).astype(np.float32))
    d = torch.from_numpy(decoder_out)
    export_graph(joint, (e, d), out / "joiner.onnx", ["encoder_out", "decoder_out"], [output_name],
                 {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, output_name: {0: "N"}}, meta)
    with torch.no_grad():
        ref = [joint(e, d).numpy()]
    return verified(out / "joiner.onnx", plain_check({"encoder_out": e.numpy(), "decoder_out": d.numpy()}, ref))


def sherpa_streams(sess, streams, T, shift, attn_shape, cnn_shape):
    """Run the sherpa-layout encoder as sherpa-onnx's recognizer does (T frames from processed_frames, then
    decode_chunk_len on), stream b starting b calls late, every stream with a chunk ready in one batch
    (caches stacked along dim 2); returns each stream's encoder_out frames."""
    n_chunks = [(len(f) - T) // shift + 1 for f in streams]
    state = [(np.zeros(attn_shape, np.float32), np.zeros(cnn_shape, np.float32)) for _ in streams]
    outs = [[] for _ in streams]
    for step in range(max(b + n for b, n in enumerate(n_chunks))):
        active = [b for b, n in enumerate(n_chunks) if 0 <= step - b < n]
        starts = [(step - b) * shift for b in active]
        o, attn, cnn = sess.run(None, {
            "x": np.stack([streams[b][s:s + T] for b, s in zip(active, starts)]),
            "attn_cache": np.concatenate([state[b][0] for b in active], 2),
            "cnn_cache": np.concatenate([state[b][1] for b in active], 2),
            "processed_frames": np.array(starts, np.int64)})
        for i, b in enumerate(active):
            outs[b].append(o[i])
            state[b] = (attn[:, :, i:i + 1], cnn[:, :, i:i + 1])
    return [np.concatenate(o) for o in outs]


def chunk_pieces(feats, n_out, chunk_size, sub, field):
    """(first encoder frame, input frames) of each chunk, cut as kdtool.decode.streaming.encode_chunks does."""
    for start in range(0, n_out, chunk_size):
        end = min(start + chunk_size, n_out)
        yield start, feats[sub * start: sub * (end - 1) + field]


def quantize_graph(out, name, graph):
    """Quantize one graph; measure how far the int8 graph's outputs are from PyTorch's on the check input."""
    int8_name = name.replace(".onnx", ".int8.onnx")
    q = quantize(out / name, out / int8_name)
    set_metadata(out / int8_name, read_file_metadata(out / name))  # quantize_dynamic does not keep it
    return {"int8": {"file": int8_name, **q, "max_abs_diff": graph["_check"].max_diff(out / int8_name)}}


def write_info(trained, out, graphs, meta):
    files = sorted(p.name for p in out.iterdir())
    info = {"model_dir": str(trained.exp_dir), **{k: meta[k] for k in ("kdtool_kind", "tokens_sha256", "model_sha256")},
            "params": trained.info["params"], "opset": OPSET, "atol": ATOL,
            "versions": {p: importlib.metadata.version(p) for p in ("torch", "onnx", "onnxruntime")},
            "metadata": meta,
            "graphs": {name: {k: v for k, v in g.items() if not k.startswith("_")} for name, g in graphs.items()},
            "files": {f: {"bytes": (out / f).stat().st_size, "sha256": file_sha256(out / f)} for f in files}}
    with atomic_open(out / "export_info.json", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return info


def readme(kind, model_dir, meta):
    """README.txt: what the files are and the commands that run them."""
    lines = [f"kdtool export of {model_dir} ({kind}); tokens.txt is sherpa-onnx's format.",
             "Features: 80-dim kaldi fbank exactly as sherpa-onnx / kaldi-native-fbank compute them "
             "(16 kHz, audio in [-1, 1], snip_edges false, high_freq -400, dither 0); CMVN is inside the graphs.", ""]
    if kind == "transducer" and meta.get("layout") == "sherpa":
        # sherpa decodes a chunk once T frames past it are ready: silence after the audio flushes the last one
        tail = (int(meta["T"]) + int(meta["decode_chunk_len"])) / 100
        lines += ["Streaming transducer in sherpa-onnx's icefall conformer layout (stateless prediction network):",
                  f"encoder.onnx (chunks of {meta['T']} frames every {meta['decode_chunk_len']}, caches in and out), "
                  "decoder.onnx (the last context_size labels), joiner.onnx; *.int8.onnx: int8.",
                  "", "With nothing but sherpa-onnx installed (pip install sherpa-onnx==2.0.1):",
                  "  python3 -c \"import sherpa_onnx, wave, numpy as np",
                  "  rec = sherpa_onnx.OnlineRecognizer.from_transducer(tokens='tokens.txt', encoder='encoder.onnx',",
                  "      decoder='decoder.onnx', joiner='joiner.onnx', num_threads=1, sample_rate=16000,",
                  "      feature_dim=80, decoding_method='greedy_search')",
                  "  w = wave.open('utt.wav'); s = np.frombuffer(w.readframes(w.getnframes()), np.int16) / 32768.0",
                  "  st = rec.create_stream(); st.accept_waveform(w.getframerate(), s.astype(np.float32))",
                  f"  st.accept_waveform(16000, np.zeros({int(tail * 16000)}, np.float32)); st.input_finished()",
                  "  while rec.is_ready(st): rec.decode_stream(st)",
                  "  print(rec.get_result(st))\"",
                  "", "With kdtool (WER/RTF like any decode dir):",
                  "  python -m kdtool.bin.decode --backend onnx --model_dir MODEL_DIR --data FEATS "
                  "--config conf/decode_transducer_streaming.yaml --out_dir OUT"]
    elif kind == "transducer":
        lines += ["Streaming transducer: encoder.onnx (one chunk, caches in and out), decoder.onnx (LSTM prediction",
                  "network step), joiner.onnx; *.int8.onnx: int8. Decode chunk by chunk with kdtool:",
                  "  python -m kdtool.bin.decode --backend onnx --model_dir MODEL_DIR --data FEATS "
                  "--config conf/decode_transducer_streaming.yaml --out_dir OUT",
                  "sherpa-onnx cannot load it (its streaming transducers rerun a stateless prediction network): "
                  "train the model with decoder: stateless for an export sherpa-onnx decodes (kdtool's README)."]
    else:
        lines += ["model.onnx: x (N,T,80) float32, x_lens (N,) int64 -> log_probs (N,T',V), lengths (N,) int64;",
                  "model.int8.onnx: the same with int8 weights."]
        if kind == "nar":
            lines += ["mlm_decoder.onnx: the Mask-CTC masked-LM decoder (encoder_out, encoder_lens, tokens, "
                      "token_lens) -> logits;", "model.onnx's third output is encoder_out."]
        lines += ["", "With nothing but sherpa-onnx installed (pip install sherpa-onnx==2.0.1):",
                  "  python3 -c \"import sherpa_onnx, wave, numpy as np",
                  "  rec = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(model='model.onnx', tokens='tokens.txt',",
                  "      num_threads=1, sample_rate=16000, feature_dim=80, decoding_method='greedy_search')",
                  "  w = wave.open('utt.wav'); s = np.frombuffer(w.readframes(w.getnframes()), np.int16) / 32768.0",
                  "  st = rec.create_stream(); st.accept_waveform(w.getframerate(), s.astype(np.float32))",
                  "  rec.decode_stream(st); print(st.result.text)\"",
                  "", "With kdtool (WER/RTF like any decode dir):",
                  "  python -m kdtool.bin.decode --backend onnx --model_dir MODEL_DIR --data FEATS "
                  "--config conf/decode_ctc_greedy.yaml --out_dir OUT   (--backend onnx_int8: the int8 graphs)"]
    return "\n".join(lines) + "\n"


def replace_dir(new, dst):
    """Put the complete dir ``new`` at ``dst`` (an older export there is removed only then)."""
    old = dst.with_name(f"{dst.name}.old.{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(new, dst)
    shutil.rmtree(old, ignore_errors=True)
    logging.info("%s: exported", dst)
