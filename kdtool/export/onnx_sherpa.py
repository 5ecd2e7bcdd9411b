"""Graphs of a streaming transducer with a stateless prediction network (kdtool.models.stateless) in
the layout of sherpa-onnx's icefall ``conformer`` streaming model (its
csrc/online-conformer-transducer-model.cc and online-recognizer-transducer-impl.h; deploy-notes.md
section 2), so that ``sherpa_onnx.OnlineRecognizer.from_transducer`` decodes it from raw audio:

encoder.onnx  x (N, T, 80) raw fbank, attn_cache (L, left_context, N, D), cnn_cache (L, kernel - 1, N, D),
              processed_frames (N,) int64 (feature frames before this chunk) -> encoder_out (N, T', J),
              the two caches updated. sherpa feeds T = S*(C-1) + R frames from ``processed_frames`` and
              then advances by decode_chunk_len = S*C (subsampling factor S, receptive field R, C encoder
              frames a chunk): exactly the pieces kdtool.decode.streaming.encode_chunks cuts, so each
              call yields C new encoder frames. The joint network's encoder projection is applied here.
decoder.onnx  y (N, context_size) int64, the last labels (sherpa starts from [-1, ..., -1, 0]; -1 embeds
              to zero as blank does) -> decoder_out (N, J), the decoder projection applied. One output:
              what makes sherpa take its stateless (icefall) path.
joiner.onnx   encoder_out (N, J), decoder_out (N, J) -> logits (N, V).

The metadata sherpa reads: encoder model_type=conformer, num_encoder_layers, T, decode_chunk_len,
left_context, encoder_dim, pad_length, cnn_module_kernel; decoder vocab_size, context_size. Blank is
id 0 in both. sherpa's greedy search emits at most one label a frame and treats ``<unk>`` as blank.
"""
import torch

from kdtool.export.onnx_ctc import CmvnEncoder


class SherpaEncoderGraph(CmvnEncoder):
    """StreamingConformerEncoder.chunk_forward for a batch of streams, caches in sherpa's layout."""

    def __init__(self, model, cmvn_stats, left_context, subsampling):
        super().__init__(model, cmvn_stats)
        self.left_context, self.subsampling = left_context, subsampling

    def forward(self, x, attn_cache, cnn_cache, processed_frames):
        enc = self.model.encoder
        x = (x - self.mean) * self.inv_std
        xs, _ = enc.embed(x, None)
        pos_enc = enc.encoder.pos_enc(xs, left_context=self.left_context)
        # cache slots still empty (older than the stream's first encoder frame) are masked out, per stream
        done = torch.div(processed_frames, self.subsampling, rounding_mode="floor")
        unfilled = torch.arange(self.left_context - 1, -1, -1, device=xs.device)[None, :] >= done[:, None]
        mask = torch.cat([unfilled, torch.zeros(xs.size(0), xs.size(1), dtype=torch.bool, device=xs.device)], 1)
        new_attn, new_cnn = [], []
        for i, block in enumerate(enc.encoder.encoders.blocks):
            # espnet's block caches: attention (N, left_context, D), convolution (N, D, kernel - 1)
            block.cache = [attn_cache[i].transpose(0, 1), cnn_cache[i].permute(1, 2, 0)]
            xs, pos_enc = block.chunk_forward(xs, pos_enc, mask, left_context=self.left_context)
            new_attn.append(block.cache[0].transpose(0, 1))
            new_cnn.append(block.cache[1].permute(2, 0, 1))
        out = self.model.joint_network.lin_enc(enc.encoder.encoders.norm_blocks(xs))
        return out, torch.stack(new_attn), torch.stack(new_cnn)


def sherpa_cache_shapes(model, left_context, batch=1):
    """(attn_cache shape, cnn_cache shape) of ``batch`` streams: (L, left_context, N, D), (L, kernel - 1, N, D)."""
    blocks = model.encoder.encoder.encoders.blocks
    dim = model.encoder.output_size()
    return (len(blocks), left_context, batch, dim), (len(blocks), blocks[0].conv_mod.kernel_size - 1, batch, dim)


class StatelessDecoderGraph(torch.nn.Module):
    """The last context_size labels -> the stateless prediction network's output, projected for the joiner."""

    def __init__(self, model):
        super().__init__()
        self.decoder, self.lin_dec = model.decoder, model.joint_network.lin_dec

    def forward(self, y):
        return self.lin_dec(self.decoder.label_step(y))


class ProjectedJointGraph(torch.nn.Module):
    """The joint network on projected encoder and decoder outputs."""

    def __init__(self, model):
        super().__init__()
        self.joint_network = model.joint_network

    def forward(self, encoder_out, decoder_out):
        return self.joint_network(encoder_out, decoder_out, no_projection=True)
