"""Graphs of a streaming transducer (StreamingConformerEncoder, LSTM prediction network, joint
network), each one step of kdtool.decode.streaming with its state as explicit inputs and outputs:

encoder.onnx   x (1, T, 80) raw fbank of one chunk (its S*C new frames plus the subsampling's
               lookahead, as kdtool.decode.streaming.encode_chunks cuts them), att_cache
               (L, 1, left_context, D), conv_cache (L, 1, D, kernel - 1), processed_frames ()
               int64 (encoder frames before this chunk) -> encoder_out (1, T', D) and both caches
               updated. ``left_context`` is fixed at export: the cache's slots not yet filled are
               masked, so the first chunks see what kdtool's own decoding with that left context sees.
decoder.onnx   the prediction network's step: y (N, 1) int64, h, c (layers, N, H) -> decoder_out
               (N, H), h, c.
joiner.onnx    encoder_out (N, D), decoder_out (N, H) -> logits (N, V).
"""
import torch

from kdtool.export.onnx_ctc import CmvnEncoder


class EncoderChunkGraph(CmvnEncoder):
    """StreamingConformerEncoder.chunk_forward with the blocks' caches passed in and out."""

    def __init__(self, model, cmvn_stats, left_context):
        super().__init__(model, cmvn_stats)
        self.left_context = left_context

    def forward(self, x, att_cache, conv_cache, processed_frames):
        enc = self.model.encoder
        x = (x - self.mean) * self.inv_std
        xs, _ = enc.embed(x, None)
        pos_enc = enc.encoder.pos_enc(xs, left_context=self.left_context)
        # as StreamingConformerEncoder.chunk_forward: cache slots still empty are masked out
        unfilled = torch.arange(self.left_context - 1, -1, -1, device=xs.device) >= processed_frames
        mask = torch.cat([unfilled, torch.zeros(xs.size(1), dtype=torch.bool, device=xs.device)])[None]
        new_att, new_conv = [], []
        for i, block in enumerate(enc.encoder.encoders.blocks):
            block.cache = [att_cache[i], conv_cache[i]]
            xs, pos_enc = block.chunk_forward(xs, pos_enc, mask, left_context=self.left_context)
            new_att.append(block.cache[0])
            new_conv.append(block.cache[1])
        return enc.encoder.encoders.norm_blocks(xs), torch.stack(new_att), torch.stack(new_conv)


def cache_shapes(model, left_context):
    """(att_cache shape, conv_cache shape) for one utterance."""
    blocks = model.encoder.encoder.encoders.blocks
    dim = model.encoder.output_size()
    return (len(blocks), 1, left_context, dim), (len(blocks), 1, dim, blocks[0].conv_mod.kernel_size - 1)


class PredictorStepGraph(torch.nn.Module):
    """One step of espnet's TransducerDecoder (LSTM): the last label in, its output and state out."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, y, h, c):
        out, (h, c) = self.decoder.rnn_forward(self.decoder.embed(y), (h, c))
        return out[:, 0], h, c


class JointGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.joint_network = model.joint_network

    def forward(self, encoder_out, decoder_out):
        return self.joint_network(encoder_out, decoder_out)
