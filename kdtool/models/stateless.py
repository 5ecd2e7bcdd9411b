"""A stateless prediction network for transducers (icefall's ``Decoder``, Ghodsi et al. 2020): an
embedding of the last ``context_size`` labels mixed by a depthwise Conv1d (no bias) and a ReLU.

It is what sherpa-onnx's icefall streaming path runs (a decoder rerun on the last ``context_size``
labels, no recurrent state; deploy-notes.md section 2), so a streaming transducer with it loads there.
The blank (id 0) is the padding: its embedding is zero and never trained (``padding_idx``), so the
labels before the first one, blank or "none" (sherpa's -1), all embed to zero, as icefall's do.

It sits behind espnet's TransducerDecoder interface, which kdtool's searches and espnet's
BeamSearchTransducer call: the "state" is the previous ``context_size - 1`` label embeddings
(``(prev [context_size - 1, B, H], None)``, shaped like an RNN's ``(h, c)`` with ``dlayers =
context_size - 1``), ``rnn_forward`` mixes them with the new ones, and select/batch/score work unchanged.
"""
import torch
from espnet2.asr.decoder.transducer_decoder import TransducerDecoder


class StatelessDecoder(TransducerDecoder):
    def __init__(self, vocab_size: int, hidden_size: int = 256, context_size: int = 2, dropout_embed: float = 0.0,
                 embed_pad: int = 0):
        if context_size < 1:
            raise ValueError(f"context_size must be 1 or more, not {context_size}")
        torch.nn.Module.__init__(self)  # not TransducerDecoder's: it would build LSTMs
        self.embed = torch.nn.Embedding(vocab_size, hidden_size, padding_idx=embed_pad)
        self.dropout_embed = torch.nn.Dropout(p=dropout_embed)
        # each channel mixes its own embedding over the context (icefall's groups=decoder_dim)
        self.conv = torch.nn.Conv1d(hidden_size, hidden_size, context_size, groups=hidden_size, bias=False)
        self.context_size = context_size
        self.dlayers = context_size - 1  # rows of the "state": the previous label embeddings
        self.dunits = hidden_size
        self.dtype = "stateless"
        self.odim = vocab_size
        self.ignore_id = -1
        self.blank_id = embed_pad
        self.device = self.embed.weight.device

    def rnn_forward(self, sequence, state):
        """Label embeddings [B, L, H] after the state's previous ``context_size - 1`` ones -> outputs
        [B, L, H] (output i sees embeddings i - context_size + 1 .. i) and the new state."""
        x = torch.cat([state[0].transpose(0, 1).to(sequence.dtype), sequence], dim=1)  # [B, c - 1 + L, H]
        out = torch.relu(self.conv(x.transpose(1, 2)).transpose(1, 2))
        return out, (x[:, x.size(1) - self.dlayers:].transpose(0, 1), None)

    def label_step(self, labels):
        """The output for the last ``context_size`` labels of each row of ``labels`` [N, context_size]
        (ids < 0 embed to zero, as blank does): [N, H]. What sherpa-onnx's decoder.onnx computes."""
        emb = self.embed(labels.clamp(min=0)) * (labels >= 0).unsqueeze(-1).to(self.embed.weight.dtype)
        return torch.relu(self.conv(emb.transpose(1, 2)))[..., -1]
