"""Graphs of the CTC and Mask-CTC students: the encoder with its CTC head (global CMVN inside, so a
runtime feeds raw fbank) and the Mask-CTC masked-LM decoder.

``model.onnx`` is laid out as sherpa-onnx's offline CTC models (``from_zipformer_ctc``): inputs by
position x (N, T, 80) float32 and x_lens (N,) int64, outputs log_probs (N, T', V) and lengths
(N,) int64 (deploy-notes.md, section 1). A Mask-CTC student's graph has a third output, the encoder
states (N, T', D) its masked-LM decoder attends to; sherpa-onnx reads outputs 0 and 1 only.
"""
import torch

from kdtool.features.cmvn import mean_std


class CmvnEncoder(torch.nn.Module):
    """Raw fbank -> global CMVN -> the model's encoder: (encoder states, lengths)."""

    def __init__(self, model, cmvn_stats):
        super().__init__()
        self.model = model
        mean, std = mean_std(cmvn_stats)
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("inv_std", torch.from_numpy(1.0 / std))

    def forward(self, x, x_lens):
        x = (x - self.mean) * self.inv_std
        if hasattr(self.model.encoder, "chunk_forward"):  # the streaming encoder computes its own masks
            enc, enc_lens, _ = self.model.encoder(x, x_lens)
        else:
            # the padding mask from the lengths here: espnet's make_pad_mask would fix the batch's
            # longest length at trace time
            pad = torch.arange(x.size(1), device=x.device)[None, :] >= x_lens[:, None]
            enc, enc_lens, _ = self.model.encoder(x, x_lens, masks=pad)
        return enc, enc_lens


class CtcGraph(CmvnEncoder):
    """(x, x_lens) -> (log_probs, lengths[, encoder_out])."""

    def __init__(self, model, cmvn_stats, with_encoder_out=False):
        super().__init__(model, cmvn_stats)
        self.with_encoder_out = with_encoder_out

    def forward(self, x, x_lens):
        enc, enc_lens = super().forward(x, x_lens)
        log_probs = self.model.ctc.log_softmax(enc)
        return (log_probs, enc_lens, enc) if self.with_encoder_out else (log_probs, enc_lens)


class MlmDecoderGraph(torch.nn.Module):
    """The masked-LM decoder of a Mask-CTC model: (encoder_out (N, T', D), encoder_lens (N,),
    tokens (N, L) int64 with <mask> where unknown, token_lens (N,)) -> logits (N, L, V).
    espnet's MLMDecoder.forward, with its masks built from the inputs' own sizes."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, encoder_out, encoder_lens, tokens, token_lens):
        d = self.decoder
        valid = torch.arange(tokens.size(1), device=tokens.device)[None, :] < token_lens[:, None]  # (N, L)
        tgt_mask = valid[:, None, :] & valid[:, :, None]  # (N, L, L): pairs of real tokens
        memory_mask = (torch.arange(encoder_out.size(1), device=tokens.device)[None, :]
                       < encoder_lens[:, None])[:, None, :]
        x = d.embed(tokens)
        x, _, _, _ = d.decoders(x, tgt_mask, encoder_out, memory_mask)
        if d.normalize_before:
            x = d.after_norm(x)
        return d.output_layer(x)
