"""A streaming Conformer encoder for transducers: espnet2's asr_transducer Encoder (causal
convolution modules, chunked self-attention, cached ``chunk_forward``) behind the interface of
kdtool's other encoders, with flat ESPnet-style options.

Training with ``dynamic_chunk_training`` draws a chunk size per batch (espnet's rule: the full
utterance about a quarter of the time, else 1..``short_chunk_size`` frames), so one model decodes
with any chunk size; evaluation is full context unless ``forward`` is given a ``chunk_size``.
Streaming decoding is in kdtool.decode.streaming.
"""
import torch
from espnet2.asr_transducer.encoder.encoder import Encoder
from espnet2.asr_transducer.utils import make_chunk_mask

SUBSAMPLING = {"conv2d2": 2, "conv2d": 4, "conv2d6": 6}  # espnet's non-VGG ConvInput factors


class StreamingConformerEncoder(torch.nn.Module):
    def __init__(self, input_size, output_size=256, attention_heads=4, linear_units=1024, num_blocks=12,
                 cnn_module_kernel=15, dropout_rate=0.1, positional_dropout_rate=0.1, attention_dropout_rate=0.1,
                 input_layer="conv2d", dynamic_chunk_training=True, short_chunk_threshold=0.75,
                 short_chunk_size=25, num_left_chunks=0, subsampling_channels=None):
        super().__init__()
        if input_layer not in SUBSAMPLING:
            raise ValueError(f"input_layer: unknown {input_layer!r}; choose one of {sorted(SUBSAMPLING)}")
        self.input_layer = input_layer
        body = {"block_type": "conformer", "num_blocks": num_blocks, "hidden_size": output_size,
                "linear_size": linear_units, "conv_mod_kernel_size": cnn_module_kernel, "heads": attention_heads,
                "dropout_rate": dropout_rate, "pos_wise_dropout_rate": dropout_rate,
                "att_dropout_rate": attention_dropout_rate}
        # espnet ties the convolution modules' causality to dynamic_chunk_training: always set it, so
        # that chunk_forward is exact; our own flag decides the masks (False: causal convolutions but
        # full-context attention in training). espnet's other chunk options only serve its own forward.
        main = {"pos_enc_dropout_rate": positional_dropout_rate, "dynamic_chunk_training": True}
        if subsampling_channels is not None and subsampling_channels < 1:
            raise ValueError(f"subsampling_channels must be 1 or more, not {subsampling_channels}")
        # subsampling_channels: the conv front-end's channels (default: output_size), as for kdtool's
        # other encoders (kdtool.models.asr.narrow_subsampling says why fewer are cheaper)
        self.encoder = Encoder(input_size, [body], {"subsampling_factor": SUBSAMPLING[input_layer],
                                                    "vgg_like": False, "conv_size": subsampling_channels}, main)
        self.dynamic_chunk_training = dynamic_chunk_training
        self.short_chunk_threshold = max(0.0, short_chunk_threshold)
        self.short_chunk_size = max(1, short_chunk_size)
        self.num_left_chunks = max(0, num_left_chunks)
        self._output_size = output_size
        self.min_frames = next(n for n in range(1, 64) if self.subsampled_length(n) > 0)

    @property
    def embed(self):
        """espnet's ConvInput. kdtool.models.asr hooks its ``conv`` layers to fix output lengths;
        forward calls it without a mask, so that hook is a no-op and lengths are computed here."""
        return self.encoder.embed

    def output_size(self):
        return self._output_size

    def subsampled_length(self, n_frames):
        """Output frames for ``n_frames`` input frames (the convolution arithmetic, padding-free)."""
        for conv in self.embed.conv:
            if isinstance(conv, torch.nn.Conv2d):
                n_frames = (n_frames - conv.kernel_size[0]) // conv.stride[0] + 1
        return n_frames

    def check_length(self, n_frames):
        if n_frames < self.min_frames:
            raise ValueError(f"utterance of {n_frames} frames is too short for {self.input_layer} "
                             f"subsampling: it needs at least {self.min_frames} frames")

    def sample_chunk_size(self, n_frames):
        """espnet's dynamic chunk rule (draws from torch's global generator)."""
        if n_frames < 2:
            return n_frames
        size = int(torch.randint(1, n_frames, (1,)))
        return n_frames if size > n_frames * self.short_chunk_threshold else size % self.short_chunk_size + 1

    def forward(self, xs, ilens, chunk_size=None):
        """[B, T, D], [B] -> ([B, T', output_size], [B], None). Attention is limited to chunks of
        ``chunk_size`` output frames (and ``num_left_chunks`` chunks to the left; 0: all); without
        it, chunks are drawn at random in training with dynamic_chunk_training, else full context."""
        self.check_length(xs.size(1))
        xs, _ = self.embed(xs, None)
        # lengths from the arithmetic: espnet slices the padded mask, which depends on the batch
        lens = self.subsampled_length(ilens).clamp(min=0)
        mask = torch.arange(xs.size(1), device=xs.device)[None, :] >= lens[:, None]  # True: padding
        if chunk_size is None and self.training and self.dynamic_chunk_training:
            chunk_size = self.sample_chunk_size(xs.size(1))
        chunk_mask = None
        if chunk_size is not None:
            chunk_mask = make_chunk_mask(xs.size(1), chunk_size, self.num_left_chunks, device=xs.device)
        hs = self.encoder.encoders(xs, self.encoder.pos_enc(xs), mask, chunk_mask=chunk_mask)
        return hs, lens, None

    def reset_cache(self, left_context, device):
        """Empty the caches before streaming an utterance; attention will see ``left_context``
        output frames before each chunk."""
        self.encoder.reset_cache(left_context, device)

    def chunk_forward(self, xs, processed_frames, left_context):
        """One chunk's input frames [1, T, D] -> its outputs [1, T', H], with the blocks' caches.
        espnet's Encoder.chunk_forward, except that it passes no mask to ``embed`` (kdtool's length
        hook rewrites masks) and keeps every output frame (espnet drops the first and the last and
        feeds overlapping windows); ``processed_frames`` output frames came before this chunk."""
        xs, _ = self.embed(xs, None)
        pos_enc = self.encoder.pos_enc(xs, left_context=left_context)
        # cache slots still empty (the oldest left_context - processed_frames) are masked out
        unfilled = torch.arange(left_context - 1, -1, -1, device=xs.device) >= processed_frames
        mask = torch.cat([unfilled, unfilled.new_zeros(xs.size(1))])[None]
        return self.encoder.encoders.chunk_forward(xs, pos_enc, mask, left_context=left_context)
