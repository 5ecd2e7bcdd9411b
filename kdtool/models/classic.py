"""The students the classic (Hinton-style) KD framework names, DNN and RNN acoustic models, as encoders behind
the interface of kdtool's other encoders: ``forward(xs, ilens) -> (hs [B, T', D], lens [B], None)``,
``output_size()``, the front-end's convolutions in ``embed.conv`` (so that kdtool.models.asr.front_end and
subsampled_length describe their frames) and their blocks in ``encoders`` (the layers of hidden-state KD).

Both subsample 4x with the teachers' own time arithmetic: two convolutions of kernel 3, stride 2 along
time, T' = ((T - 1) // 2 - 1) // 2, output frame t centred on input frame 4t + 3. Their frames are then
the teachers' frames one for one, and stored frame posteriors apply without pooling.

espnet2's RNNEncoder subsamples otherwise: ``subsample: [2, 2]`` keeps every 2nd output of a layer
(``ys[:, ::2]``, lengths (n + 1) // 2), so its frame t is input frame 4t, and a 100-frame utterance has
25 frames where a conv2d teacher has 24 (57 frames: 15 against 13), centred 3 frames later; the frame
term would read it as a 1x model. ``RNNEncoder`` here therefore puts espnet's Conv2dSubsampling in front
of espnet2 RNNEncoder layers that do not subsample.

Every output frame depends on its own utterance only (lengths from the convolution arithmetic, padded
frames zeroed before any time convolution, packed sequences in the RNN), so a batch gives what each
utterance alone gives: stored soft labels line up, and batched decoding equals decoding one at a time.
"""
import torch
from espnet.nets.pytorch_backend.transformer.subsampling import Conv2dSubsampling
from espnet2.asr.encoder.rnn_encoder import RNNEncoder as EspnetRNNEncoder

from kdtool.errors import ConfigError

RNN_TYPES = ("lstm", "gru")


def conv_lengths(embed, lens):
    """Output frames of ``embed.conv``'s time convolutions for ``lens`` input frames (no padding)."""
    for m in embed.conv:
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)):
            lens = (lens - m.kernel_size[0]) // m.stride[0] + 1
    return lens


def _at_least(encoder, **values):
    """A ConfigError naming the first integer key below its minimum ({key: (value, minimum)}; None: unset)."""
    for key, (value, low) in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise ConfigError(f"encoder_conf ({encoder}): {key} must be an integer of at least {low}, not {value!r}")


def valid_frames(xs, lens):
    """[B, T] True on each utterance's frames."""
    return torch.arange(xs.size(1), device=xs.device)[None, :] < lens[:, None]


class RNNEncoder(torch.nn.Module):
    """espnet's Conv2dSubsampling (4x, no positional encoding: the recurrence knows the order) and
    ``num_layers`` recurrent layers, each an espnet2 RNNEncoder of one layer with its projection to
    ``output_size`` (espnet's RNNP), tanh and dropout between layers as RNNP has them.

    Layer n of hidden-state KD is the n-th layer's projection. espnet's RNNP applies its dropout between
    layers with F.dropout's default training=True, in evaluation too; here it is a Dropout module, off in
    evaluation. ``bidirectional: false`` gives a unidirectional LSTM (each frame sees the past only)."""

    def __init__(self, input_size, output_size=256, hidden_size=256, num_layers=3, rnn_type="lstm",
                 bidirectional=True, dropout_rate=0.1, subsampling_channels=None):
        super().__init__()
        if rnn_type not in RNN_TYPES:
            raise ConfigError(f"encoder_conf (rnn): rnn_type: unknown {rnn_type!r}; choose one of {RNN_TYPES}")
        _at_least("rnn", num_layers=(num_layers, 1), hidden_size=(hidden_size, 1), output_size=(output_size, 1),
                  subsampling_channels=(subsampling_channels, 1))
        channels = subsampling_channels or output_size
        self.embed = Conv2dSubsampling(input_size, channels, 0.0, pos_enc=torch.nn.Identity())
        if channels != output_size:  # the front-end's last linear layer gives the RNN's input width
            self.embed.out[0] = torch.nn.Linear(self.embed.out[0].in_features, output_size)
        self.encoders = torch.nn.ModuleList(RecurrentLayer(output_size, hidden_size, rnn_type, bidirectional)
                                            for _ in range(num_layers))
        self.dropout = torch.nn.Dropout(dropout_rate)
        self._output_size = output_size

    def output_size(self):
        return self._output_size

    def forward(self, xs, ilens, masks=None):
        """[B, T, D], [B] -> ([B, T', output_size], [B], None). ``masks`` is not used: the lengths are."""
        xs, _ = self.embed(xs, None)
        lens = conv_lengths(self.embed, ilens).clamp(min=0)
        # float32 even under autocast: oneDNN has no bf16 LSTM on CPUs without avx512_bf16
        with torch.autocast(xs.device.type, enabled=False):
            hs = xs.float()
            for n, layer in enumerate(self.encoders):
                if n:
                    hs = torch.tanh(self.dropout(hs))
                hs = layer(hs, lens)
        return hs, lens, None


class RecurrentLayer(torch.nn.Module):
    """One espnet2 RNNEncoder layer (an LSTM or GRU and its projection, espnet's RNNP) on a batch in any
    order: espnet packs the batch, which needs lengths sorted longest first and at least 1; this sorts,
    runs and puts the batch back, so the layer's output (hidden-state KD hooks it) is in batch order."""

    def __init__(self, size, hidden_size, rnn_type, bidirectional):
        super().__init__()
        self.rnn = EspnetRNNEncoder(size, rnn_type=rnn_type, bidirectional=bidirectional, use_projection=True,
                                    num_layers=1, hidden_size=hidden_size, output_size=size, subsample=None)

    def forward(self, xs, lens):
        order = torch.argsort(lens, descending=True)
        # its RNNP module directly: RNNEncoder.forward's padding mask mixes int32 and int64 lengths in ONNX
        hs, _, _ = self.rnn.enc[0](xs[order], lens[order].clamp(min=1))
        hs = torch.nn.functional.pad(hs, (0, 0, 0, xs.size(1) - hs.size(1)))  # packing cut to the longest
        hs = hs[torch.argsort(order)]
        return hs.masked_fill(~valid_frames(hs, lens)[..., None], 0.0)


class FeedForwardBlock(torch.nn.Module):
    """x + Dropout(ReLU(affine(LayerNorm(x)))), the affine map over ``2 * context + 1`` frames (context 0:
    each frame alone, a DNN layer; more: a TDNN layer). Padded frames are zeroed before the map, so with
    context they add what the zero padding at an utterance's ends adds. The residual path and the norm
    keep a deep stack of ReLU layers trainable as in a Conformer's feed-forward modules."""

    def __init__(self, size, context, dropout_rate):
        super().__init__()
        self.norm = torch.nn.LayerNorm(size)
        self.affine = torch.nn.Conv1d(size, size, 2 * context + 1, padding=context)
        self.dropout = torch.nn.Dropout(dropout_rate)

    def forward(self, x, valid):
        h = self.norm(x).masked_fill(~valid[..., None], 0.0)
        h = self.affine(h.transpose(1, 2)).transpose(1, 2)
        return x + self.dropout(torch.relu(h))


class Conv1dSubsampling(torch.nn.Module):
    """Frame splicing as convolutions: two 1-D convolutions over time (kernel 3, stride 2: each splices
    3 frames and maps them), ReLU after each, then a linear map to ``output_size``; an output frame sees
    7 input frames, as a hybrid DNN's spliced input does, at the conv2d front-end's positions."""

    def __init__(self, input_size, channels, output_size):
        super().__init__()
        self.conv = torch.nn.Sequential(torch.nn.Conv1d(input_size, channels, 3, 2), torch.nn.ReLU(),
                                        torch.nn.Conv1d(channels, channels, 3, 2), torch.nn.ReLU())
        self.out = torch.nn.Linear(channels, output_size)

    def forward(self, x):
        return self.out(self.conv(x.transpose(1, 2)).transpose(1, 2))


class DNNEncoder(torch.nn.Module):
    """A feed-forward encoder: the spliced-frame front-end (Conv1dSubsampling, 4x) and ``num_blocks``
    FeedForwardBlocks of width ``output_size``, each seeing ``context`` frames either side (0: a plain
    DNN), then a LayerNorm. ``subsampling_channels``: the front-end's width (default: output_size)."""

    def __init__(self, input_size, output_size=256, num_blocks=4, context=0, dropout_rate=0.1,
                 subsampling_channels=None):
        super().__init__()
        _at_least("dnn", num_blocks=(num_blocks, 1), context=(context, 0), output_size=(output_size, 1),
                  subsampling_channels=(subsampling_channels, 1))
        self.embed = Conv1dSubsampling(input_size, subsampling_channels or output_size, output_size)
        self.encoders = torch.nn.ModuleList(FeedForwardBlock(output_size, context, dropout_rate)
                                            for _ in range(num_blocks))
        self.after_norm = torch.nn.LayerNorm(output_size)
        self._output_size = output_size

    def output_size(self):
        return self._output_size

    def forward(self, xs, ilens, masks=None):
        """[B, T, D], [B] -> ([B, T', output_size], [B], None). ``masks`` is not used: the lengths are."""
        xs = self.embed(xs)
        lens = conv_lengths(self.embed, ilens).clamp(min=0)
        valid = valid_frames(xs, lens)
        for block in self.encoders:
            xs = block(xs, valid)
        return self.after_norm(xs).masked_fill(~valid[..., None], 0.0), lens, None
