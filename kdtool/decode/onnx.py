"""The ``onnx`` decoding backend: the exported graphs (kdtool.export) run in onnxruntime, from raw
fbank (CMVN is inside the graphs), behind the interface kdtool's searches call on a model, so that
CTC greedy and Mask-CTC greedy/beam are the very same search code as with PyTorch; the streaming
transducer is decoded chunk by chunk with its cache-carrying graphs.

For a Mask-CTC export, what ``encode`` returns is the CTC log-probs and the encoder states side by
side ([B, T', V + D]): the searches slice it by utterance and frame, which keeps both aligned;
``ctc_log_probs`` and the masked-LM ``decoder`` each take their part.
"""
import json

import numpy as np
import torch

from kdtool.export.runtime import load_export


class OnnxMlmDecoder:
    """The masked-LM decoder graph, called as kdtool's Mask-CTC search calls espnet's MLMDecoder."""

    masked_lm = True  # kdtool.decode.maskctc.check_model

    def __init__(self, session, vocab_size):
        self.session, self.vocab_size = session, vocab_size

    def __call__(self, enc, enc_lens, tokens, token_lens):
        logits = self.session.run(None, {"encoder_out": enc[..., self.vocab_size:].contiguous().numpy(),
                                         "encoder_lens": enc_lens.numpy().astype(np.int64),
                                         "tokens": tokens.numpy().astype(np.int64),
                                         "token_lens": token_lens.numpy().astype(np.int64)})[0]
        return torch.from_numpy(logits), None


class OnnxModel:
    """An export in onnxruntime with the attributes kdtool's searches use on a model."""

    device = torch.device("cpu")

    def __init__(self, export):
        self.export = export
        self.kind = export.kind
        self.vocab_size = export.meta_int("vocab_size")
        self.blank, self.mask_token = export.meta_int("blank_id"), export.meta_int("mask_id")
        self.convs = json.loads(export.metadata["subsampling_convs"])
        self.ctc = True if "ctc" in export.sessions else None  # has a CTC head, as the methods' checks ask
        if "mlm_decoder" in export.sessions:
            self.decoder = OnnxMlmDecoder(export.sessions["mlm_decoder"], self.vocab_size)

    def subsampled_length(self, n_frames):
        for kernel, stride in self.convs:
            n_frames = (n_frames - kernel) // stride + 1
        return n_frames

    def encode(self, feats, feats_lens):
        """Raw fbank [B, T, 80] -> (CTC log-probs [B, T', V] (Mask-CTC: with the encoder states beside
        them), lengths [B])."""
        outputs = self.export.sessions["ctc"].run(None, {"x": feats.numpy(), "x_lens": feats_lens.numpy()})
        enc = np.concatenate([outputs[0], outputs[2]], -1) if len(outputs) > 2 else outputs[0]
        return torch.from_numpy(enc), torch.from_numpy(outputs[1])

    def ctc_log_probs(self, enc):
        return enc[..., :self.vocab_size]


def load_onnx_model(export_dir, int8=False, num_threads=1, model_dir=None):
    return OnnxModel(load_export(export_dir, int8=int8, num_threads=num_threads, model_dir=model_dir))


def streaming_greedy(model, feats, chunk_size, max_symbols_per_frame=5):
    """One utterance's raw fbank [T, 80] -> token ids, decoded chunk by chunk with the exported
    streaming transducer: kdtool.decode.streaming.streaming_greedy's search (per frame, the best label
    until blank or ``max_symbols_per_frame``; the prediction network starts from blank), with the
    encoder's caches and the LSTM state carried between graph calls (an export in sherpa-onnx's layout:
    the last context_size labels instead of the LSTM state, ``sherpa_streaming_greedy``)."""
    if model.export.layout == "sherpa":
        return sherpa_streaming_greedy(model, feats, chunk_size, max_symbols_per_frame)
    s, meta = model.export.sessions, model.export.metadata
    layers, hidden = int(meta["pred_rnn_layers"]), int(meta["pred_hidden"])
    left, dim, blocks = int(meta["left_context"]), int(meta["encoder_dim"]), int(meta["num_encoder_layers"])
    kernel, field = int(meta["cnn_module_kernel"]), int(meta["subsampling_receptive_field"])
    sub = int(meta["subsampling_factor"])
    att = np.zeros((blocks, 1, left, dim), np.float32)
    conv = np.zeros((blocks, 1, dim, kernel - 1), np.float32)
    state = (np.zeros((layers, 1, hidden), np.float32), np.zeros((layers, 1, hidden), np.float32))

    def advance(label, state):
        out, h, c = s["predictor"].run(None, {"y": np.array([[label]], np.int64), "h": state[0], "c": state[1]})
        return out, (h, c)

    dec_out, state = advance(model.blank, state)
    feats, hyp = feats.numpy(), []
    n_out = model.subsampled_length(len(feats))
    for start in range(0, n_out, chunk_size):  # the chunks of kdtool.decode.streaming.encode_chunks
        end = min(start + chunk_size, n_out)
        piece = feats[None, sub * start: sub * (end - 1) + field]
        enc, att, conv = s["encoder_chunk"].run(None, {"x": piece, "att_cache": att, "conv_cache": conv,
                                                       "processed_frames": np.array(start, np.int64)})
        for frame in enc[0]:
            for _ in range(max_symbols_per_frame):
                label = int(s["joiner"].run(None, {"encoder_out": frame[None], "decoder_out": dec_out})[0].argmax())
                if label == model.blank:
                    break
                hyp.append(label)
                dec_out, state = advance(label, state)
    return hyp


def sherpa_streaming_greedy(model, feats, chunk_size, max_symbols_per_frame=5):
    """streaming_greedy on an export in sherpa-onnx's layout (kdtool.export.onnx_sherpa): the same chunks
    and search; the encoder's caches are (L, left_context, 1, D) and (L, kernel - 1, 1, D), its
    processed_frames counts feature frames, and the prediction network reruns on the last context_size
    labels (starting from [-1, ..., -1, blank], as sherpa-onnx does)."""
    s, meta = model.export.sessions, model.export.metadata
    left, dim, blocks = int(meta["left_context"]), int(meta["encoder_dim"]), int(meta["num_encoder_layers"])
    kernel, field = int(meta["cnn_module_kernel"]), int(meta["subsampling_receptive_field"])
    sub, context = int(meta["subsampling_factor"]), int(meta["context_size"])
    attn = np.zeros((blocks, left, 1, dim), np.float32)
    cnn = np.zeros((blocks, kernel - 1, 1, dim), np.float32)
    labels = [-1] * (context - 1) + [model.blank]

    def predict():
        return s["stateless_predictor"].run(None, {"y": np.array([labels[-context:]], np.int64)})[0]

    dec_out, feats, hyp = predict(), feats.numpy(), []
    n_out = model.subsampled_length(len(feats))
    for start in range(0, n_out, chunk_size):
        end = min(start + chunk_size, n_out)
        enc, attn, cnn = s["sherpa_encoder"].run(None, {
            "x": feats[None, sub * start: sub * (end - 1) + field], "attn_cache": attn, "cnn_cache": cnn,
            "processed_frames": np.array([sub * start], np.int64)})
        for frame in enc[0]:
            for _ in range(max_symbols_per_frame):
                logits = s["sherpa_joiner"].run(None, {"encoder_out": frame[None], "decoder_out": dec_out})[0]
                label = int(logits.argmax())
                if label == model.blank:
                    break
                hyp.append(label)
                labels.append(label)
                dec_out = predict()
    return hyp
