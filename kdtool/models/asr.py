"""The four model kinds kdtool trains and distills, each a thin composition of espnet2 blocks.

All kinds share one token list (see kdtool.tokens): ``<blank>`` = 0, ``<sos/eos>`` = V-2,
``<mask>`` = V-1, and every CTC head has V outputs, so a teacher's and a student's frame
posteriors line up whatever their kinds. ``forward`` returns ``(loss, stats)``; losses are summed
over tokens and divided by the batch size, as ESPnet does.
"""
import torch
import torchaudio
from espnet.nets.pytorch_backend.maskctc.add_mask_token import mask_uniform
from espnet.nets.pytorch_backend.transformer.add_sos_eos import add_sos_eos
from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.mlm_decoder import MLMDecoder
from espnet2.asr.decoder.transducer_decoder import TransducerDecoder
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
from espnet2.asr.specaug.specaug import SpecAug
from espnet2.asr_transducer.joint_network import JointNetwork

from kdtool.models.classic import DNNEncoder, RNNEncoder
from kdtool.models.stateless import StatelessDecoder
from kdtool.models.streaming import StreamingConformerEncoder

ENCODERS = {"conformer": ConformerEncoder, "transformer": TransformerEncoder,
            "streaming_conformer": StreamingConformerEncoder, "rnn": RNNEncoder, "dnn": DNNEncoder}
# espnet's own encoders, which kdtool fixes up (narrow_subsampling, _exact_padding); the others take
# subsampling_channels themselves and compute exact lengths
ESPNET_ENCODERS = ("conformer", "transformer")
# espnet's own defaults keep legacy positional encodings and no macaron/conv module; these are
# what its Conformer recipes set. flash attention is not installed (nor needed on CPU).
ENCODER_DEFAULTS = {
    "conformer": dict(use_flash_attn=False, pos_enc_layer_type="rel_pos", selfattention_layer_type="rel_selfattn",
                      rel_pos_type="latest", macaron_style=True, use_cnn_module=True, cnn_module_kernel=15,
                      activation_type="swish"),
    "transformer": dict(use_flash_attn=False),
    "streaming_conformer": {}, "rnn": {}, "dnn": {},  # their own constructors' defaults
}
DECODERS = {"transformer": TransformerDecoder, "mlm": MLMDecoder, "rnn": TransducerDecoder,
            "stateless": StatelessDecoder}
IGNORE_ID = -1
KD_OUTPUTS = ("encoder", "ctc", "decoder", "joint")  # what a KD term may train (ASRModel.kd_outputs)
EMBED_INITS = ("scaled", "espnet")  # a Mask-CTC decoder's token embeddings (NARModel)


class ASRModel(torch.nn.Module):
    """Encoder (+ SpecAugment in training) and the ids every kind shares."""

    kind = None

    def __init__(self, vocab_size, input_size, encoder, encoder_conf, specaug_conf=None):
        super().__init__()
        self.vocab_size = vocab_size
        self.blank, self.sos, self.eos, self.mask_token = 0, vocab_size - 2, vocab_size - 2, vocab_size - 1
        self.specaug = SpecAug(**specaug_conf) if specaug_conf else None
        encoder_conf = {**ENCODER_DEFAULTS[encoder], **encoder_conf}
        channels = encoder_conf.pop("subsampling_channels", None) if encoder in ESPNET_ENCODERS else None
        self.encoder = ENCODERS[encoder](input_size=input_size, **encoder_conf)
        if encoder in ESPNET_ENCODERS:
            if channels:
                narrow_subsampling(self.encoder.embed, channels)
            _exact_padding(self.encoder)

    def forward(self, feats, feats_lens, ys, ys_lens):
        """Supervised training loss: ``(loss, stats)``. Each kind's ``supervised_loss(enc, enc_lens,
        ys, ys_lens, weights=None)`` takes optional per-utterance weights [B] (sequence-level
        distillation weighs the teacher's N-best hypotheses by their scores)."""
        enc, enc_lens = self.encode(feats, feats_lens)
        return self.supervised_loss(enc, enc_lens, ys, ys_lens)

    def encode(self, feats, feats_lens):
        if self.specaug is not None and self.training:
            feats, feats_lens = self.specaug(feats, feats_lens)
        enc, enc_lens, _ = self.encoder(feats, feats_lens)
        return enc, enc_lens

    def ctc_log_probs(self, enc):
        """Frame posteriors (log) of the CTC head: [B, T', V]."""
        with fp32(enc):
            return self.ctc.log_softmax(enc.float())

    def ctc_loss(self, enc, enc_lens, ys, ys_lens, weights=None):
        """The CTC head's loss, summed over utterances (optionally weighted), divided by the batch size."""
        with fp32(enc):
            return _weighted_sum(self.ctc(enc.float(), enc_lens, ys, ys_lens), weights)

    # ------------------------------------------------------------------ the KD interface
    # What the KD terms (kdtool.kd.terms) use of a model, and all they use: a new kind that provides
    # these (and front_end / subsampled_length below work on its encoder) gets every applicable term.
    #   encode(feats, feats_lens) -> (enc [B, T', D], enc_lens [B])           every kind ("encoder")
    #   encoder_layers(feats, feats_lens, layers) -> (enc, enc_lens, [hidden [B, T', D] per layer])
    #   ctc_log_probs(enc) -> [B, T', V]                                       "ctc"
    #   decoder_logits(enc, enc_lens, ys, ys_lens) -> (logits [B, L', V], targets [B, L'], IGNORE_ID
    #                                                  where a position does not count)  "decoder"
    #   joint_logits(enc, ys) -> [B, T', U+1, V]                               "joint"
    #   supervised_loss(enc, enc_lens, ys, ys_lens, weights=None) -> (loss, stats)
    def kd_outputs(self):
        """Which of KD_OUTPUTS this model has (a term declares the one it trains)."""
        have = {"encoder"}
        if getattr(self, "ctc", None) is not None:
            have.add("ctc")
        for name, method in (("decoder", "decoder_logits"), ("joint", "joint_logits")):
            if callable(getattr(self, method, None)):
                have.add(name)
        return have

    def encoder_blocks(self):
        """The encoder's blocks in order (layer n of encoder_layers is the output of block n, 1-based)."""
        inner = getattr(self.encoder, "encoder", None)  # StreamingConformerEncoder wraps espnet's Encoder
        return list(inner.encoders.blocks if inner is not None else self.encoder.encoders)

    def encoder_layers(self, feats, feats_lens, layers):
        """``encode`` plus the hidden states [B, T', D] that the encoder blocks ``layers`` (1-based) output."""
        blocks = self.encoder_blocks()
        bad = [n for n in layers if not 1 <= n <= len(blocks)]
        if bad:
            raise ValueError(f"encoder layer(s) {bad}: this {self.kind} model's encoder has layers 1..{len(blocks)}")
        hidden, hooks = {}, []

        def keep(n):
            def hook(module, inputs, output):
                while isinstance(output, (tuple, list)):
                    output = output[0]  # espnet blocks return (x, mask) or ((x, pos_emb), mask)
                hidden[n] = output
            return hook
        try:
            hooks = [blocks[n - 1].register_forward_hook(keep(n)) for n in set(layers)]
            enc, enc_lens = self.encode(feats, feats_lens)
        finally:
            for h in hooks:
                h.remove()
        return enc, enc_lens, [hidden[n] for n in layers]


class CTCModel(ASRModel):
    kind = "ctc"

    def __init__(self, vocab_size, input_size, encoder, encoder_conf, specaug_conf=None):
        super().__init__(vocab_size, input_size, encoder, encoder_conf, specaug_conf)
        self.ctc = CTC(vocab_size, self.encoder.output_size(), reduce=False)  # per utterance, / B

    def supervised_loss(self, enc, enc_lens, ys, ys_lens, weights=None):
        """The loss of encoder outputs against transcripts (distillation adds its terms beside it)."""
        loss = self.ctc_loss(enc, enc_lens, ys, ys_lens, weights)
        return loss, {"loss": loss.detach(), "loss_ctc": loss.detach()}


class HybridModel(CTCModel):
    """CTC plus a decoder trained beside it: loss = ctc_weight * CTC + (1 - ctc_weight) * decoder.
    A subclass builds its decoder and says what the decoder sees (``decoder_logits``)."""

    decoder_loss = None  # name of the decoder's loss in the stats

    def __init__(self, vocab_size, input_size, encoder, encoder_conf, decoder_conf, specaug_conf=None,
                 ctc_weight=0.3, lsm_weight=0.1):
        super().__init__(vocab_size, input_size, encoder, encoder_conf, specaug_conf)
        self.ctc_weight = ctc_weight
        self.decoder = self.build_decoder(vocab_size, decoder_conf)
        self.lsm_weight = lsm_weight

    def supervised_loss(self, enc, enc_lens, ys, ys_lens, weights=None):
        loss_ctc = self.ctc_loss(enc, enc_lens, ys, ys_lens, weights)
        logits, ys_out = self.decoder_logits(enc, enc_lens, ys, ys_lens)
        loss_dec = _weighted_sum(label_smoothing_loss(logits, ys_out, self.lsm_weight), weights)
        loss = self.ctc_weight * loss_ctc + (1 - self.ctc_weight) * loss_dec
        return loss, {"loss": loss.detach(), "loss_ctc": loss_ctc.detach(), self.decoder_loss: loss_dec.detach(),
                      "acc": _accuracy(logits, ys_out)}


class ARModel(HybridModel):
    """Hybrid CTC/attention: the autoregressive teacher."""

    kind = "ar"
    decoder_loss = "loss_att"

    def build_decoder(self, vocab_size, decoder_conf):
        return TransformerDecoder(vocab_size, self.encoder.output_size(), **decoder_conf)

    def decoder_logits(self, enc, enc_lens, ys, ys_lens):
        """Teacher-forced decoder outputs and the targets they predict (ys + <eos>)."""
        ys_in, ys_out = add_sos_eos(ys, self.sos, self.eos, IGNORE_ID)
        logits, _ = self.decoder(enc, enc_lens, ys_in, ys_lens + 1)
        return logits, ys_out


class NARModel(HybridModel):
    """Mask-CTC: CTC plus a masked-LM decoder that refines low-confidence CTC tokens.

    ``embed_init``: "scaled" (default) draws the decoder's token embeddings with std d^-0.5, so that
    after the positional encoding's sqrt(d) scaling they are as large as the positional encoding;
    "espnet" keeps torch's N(0, 1), as espnet does. Every <mask> has the same embedding, so its
    position is all that tells one masked slot from another: at N(0, 1) the embedding is ~8x larger
    than the position (d = 64) and the masked LM learns very slowly (measured: a decoder memorizing 4
    fully masked utterances reached 17% token accuracy in 300 steps with N(0, 1), 90% scaled)."""

    kind = "nar"
    decoder_loss = "loss_mlm"

    def __init__(self, vocab_size, input_size, encoder, encoder_conf, decoder_conf, specaug_conf=None,
                 ctc_weight=0.3, lsm_weight=0.1, embed_init="scaled"):
        super().__init__(vocab_size, input_size, encoder, encoder_conf, decoder_conf, specaug_conf, ctc_weight,
                         lsm_weight)
        if embed_init == "scaled":  # build_model has checked it is one of EMBED_INITS
            embed = self.decoder.embed[0]
            torch.nn.init.normal_(embed.weight, std=embed.embedding_dim ** -0.5)

    def build_decoder(self, vocab_size, decoder_conf):
        # MLMDecoder adds the <mask> slot itself: give it the vocabulary without <mask>.
        return MLMDecoder(vocab_size - 1, self.encoder.output_size(), **decoder_conf)

    def decoder_logits(self, enc, enc_lens, ys, ys_lens):
        """Masked-LM outputs for randomly masked transcripts; targets only where masked."""
        ys_in, ys_out = mask_uniform(ys, self.mask_token, self.eos, IGNORE_ID)
        # espnet's MLMDecoder masks memory up to max(enc_lens) (its TransformerDecoder pads the mask
        # to the memory): cut the padding a subset of a batch (e.g. its transcribed utterances) leaves
        enc = enc[:, :int(enc_lens.max())]
        logits, _ = self.decoder(enc, enc_lens, ys_in, ys_lens)
        return logits, ys_out


class TransducerModel(ASRModel):
    """RNN-T: encoder, prediction network (``decoder``: rnn, espnet's LSTM/GRU one; stateless, icefall's
    kdtool.models.stateless, which sherpa-onnx's streaming path runs) and joint network; loss from
    torchaudio's rnnt_loss. An auxiliary CTC head (ctc_weight > 0) helps training and carries frame-level
    distillation."""

    kind = "transducer"

    def __init__(self, vocab_size, input_size, encoder, encoder_conf, decoder_conf, joint_net_conf,
                 specaug_conf=None, ctc_weight=0.3, decoder="rnn"):
        super().__init__(vocab_size, input_size, encoder, encoder_conf, specaug_conf)
        self.ctc_weight = ctc_weight
        self.decoder = DECODERS[decoder](vocab_size, embed_pad=self.blank, **decoder_conf)
        self.joint_network = JointNetwork(vocab_size, self.encoder.output_size(), self.decoder.dunits,
                                          **joint_net_conf)
        self.ctc = CTC(vocab_size, self.encoder.output_size(), reduce=False) if ctc_weight > 0 else None

    def joint_logits(self, enc, ys):
        """Logits over the whole output lattice: [B, T', U+1, V]; the prediction network starts from blank."""
        self.decoder.set_device(enc.device)
        labels = torch.where(ys == IGNORE_ID, self.blank, ys)
        # the prediction network (small) in float32 even under autocast: oneDNN has no bf16 LSTM on CPUs
        # without avx512_bf16 ("could not create a primitive descriptor for the LSTM forward propagation")
        with torch.autocast(enc.device.type, enabled=False):
            dec = self.decoder(torch.nn.functional.pad(labels, (1, 0), value=self.blank))
        return self.joint_network(enc.unsqueeze(2), dec.unsqueeze(1))

    def supervised_loss(self, enc, enc_lens, ys, ys_lens, weights=None, logits=None):
        """``logits``: ``joint_logits(enc, ys)`` where the caller has it already (distillation's lattice term
        needs the same: the joint network is about a third of a training step)."""
        logits = self.joint_logits(enc, ys) if logits is None else logits
        targets = torch.where(ys == IGNORE_ID, self.blank, ys).int()
        per_utt = torchaudio.functional.rnnt_loss(logits.float(), targets, enc_lens.int(), ys_lens.int(),
                                                  blank=self.blank, reduction="none") / enc.size(0)
        loss_rnnt = _weighted_sum(per_utt, weights)
        stats = {"loss_rnnt": loss_rnnt.detach()}
        loss = loss_rnnt
        if self.ctc is not None:
            loss_ctc = self.ctc_loss(enc, enc_lens, ys, ys_lens, weights)
            loss = (1 - self.ctc_weight) * loss_rnnt + self.ctc_weight * loss_ctc
            stats["loss_ctc"] = loss_ctc.detach()
        stats["loss"] = loss.detach()
        return loss, stats


def narrow_subsampling(embed, channels):
    """Give an espnet conv subsampling (conv2d, conv2d6, conv2d8) ``channels`` channels instead of the
    encoder's width, keeping its kernels, strides and parameter names. Its second convolution costs
    width^2 * 9 multiply-adds per output position over all frequency bins: at width 144 with 80
    bins that is about as much compute as six Conformer blocks (measured: 46% of the encoder's
    training time); 64 channels make it a quarter of that and, on the built-in corpus, learnt as well
    (32 did not; README)."""
    convs = [m for m in getattr(embed, "conv", []) if isinstance(m, torch.nn.Conv2d)]
    out = getattr(embed, "out", None)  # Linear, or Sequential(Linear, positional encoding)
    linear = out[0] if isinstance(out, torch.nn.Sequential) else out
    if not convs or not isinstance(linear, torch.nn.Linear):
        raise ValueError(f"subsampling_channels applies to a conv2d input layer, not {type(embed).__name__}")
    if channels < 1:
        raise ValueError(f"subsampling_channels must be 1 or more, not {channels}")
    bins = linear.in_features // convs[-1].out_channels  # frequency bins left after the convolutions
    layers, in_ch = [], 1
    for m in embed.conv:
        if isinstance(m, torch.nn.Conv2d):
            m = torch.nn.Conv2d(in_ch, channels, m.kernel_size, m.stride)
            in_ch = channels
        layers.append(m)
    embed.conv = torch.nn.Sequential(*layers)
    linear = torch.nn.Linear(channels * bins, linear.out_features)
    if isinstance(out, torch.nn.Sequential):
        out[0] = linear
    else:
        embed.out = linear


def _exact_padding(encoder):
    """Make an espnet Conformer/Transformer encoder's output for an utterance independent of the
    batch it is in, so that stored soft labels line up with a student's frames and batched decoding
    equals one-at-a-time decoding:
    - the conv subsampling slices the padded mask to get output lengths (70 frames alone: 16 out;
      padded to 90: 18): recompute the mask from the convolution arithmetic;
    - the Conformer convolution module does not mask padding, so padded frames leak into valid ones
      through its depthwise convolution: zero them first, as WeNet does.
    Hooks keep espnet's parameter names, so its checkpoints still load."""
    embed = encoder.embed
    convs = [m for m in getattr(embed, "conv", []) if isinstance(m, torch.nn.Conv2d)]
    state = {}

    def embed_hook(module, inputs, output):
        xs, mask = output
        if mask is None or not convs:
            state["mask"] = mask
            return output
        lens = inputs[1].squeeze(1).sum(-1)
        for conv in convs:
            lens = (lens - conv.kernel_size[0]) // conv.stride[0] + 1
        mask = (torch.arange(mask.size(-1), device=mask.device)[None, :] < lens[:, None]).unsqueeze(1)
        state["mask"] = mask
        return xs, mask

    def zero_padding(module, args):
        mask = state.get("mask")  # [B, 1, T'] True where valid; the conv input is [B, C, T']
        if mask is not None and mask.size(-1) == args[0].size(-1):
            return (args[0].masked_fill(~mask, 0.0),)

    embed.register_forward_hook(embed_hook)
    for layer in getattr(encoder, "encoders", []):
        conv_module = getattr(layer, "conv_module", None)
        if conv_module is not None:
            conv_module.depthwise_conv.register_forward_pre_hook(zero_padding)


def subsampled_length(model, n_frames):
    """Encoder output frames for an input of ``n_frames`` (no padding)."""
    for kernel, stride in front_end(model):
        n_frames = (n_frames - kernel) // stride + 1
    return n_frames


def front_end(model):
    """The (kernel, stride) along time of each convolution of the encoder's front-end (2-D, or the dnn
    encoder's 1-D): where its frames lie (kdtool.kd.losses.frame_grid); () without a conv front-end."""
    return tuple((m.kernel_size[0], m.stride[0]) for m in getattr(model.encoder.embed, "conv", [])
                 if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)))


def subsampling_factor(model, n=100000):
    """Input frames per encoder frame (4 for conv2d, 6 for conv2d6, 8 for conv2d8, 1 without subsampling)."""
    return max(1, round(n / subsampled_length(model, n)))


def fp32(x):
    """Autocast off for the block, on ``x``'s device: losses and posteriors are computed in float32 under
    bf16-mixed training (on a CPU, autocast would leave log_softmax in bf16: 3 significant digits)."""
    return torch.autocast(x.device.type, enabled=False)


def _weighted_sum(per_utt, weights=None):
    """Per-utterance losses (already divided by the batch size) -> their (weighted) sum."""
    return per_utt.sum() if weights is None else (per_utt * weights.to(per_utt)).sum()


def label_smoothing_loss(logits, targets, smoothing):
    """ESPnet's LabelSmoothingLoss (normalize_length=False) per utterance: KL from the smoothed
    one-hot target to softmax(logits), summed over the utterance's tokens, divided by the batch
    size. ``targets`` [B, L] is IGNORE_ID where a position does not count. -> [B]."""
    ignore = targets == IGNORE_ID
    log_q = torch.log_softmax(logits.float(), dim=-1)
    true = torch.full_like(log_q, smoothing / (logits.size(-1) - 1))
    true.scatter_(-1, targets.masked_fill(ignore, 0).unsqueeze(-1), 1 - smoothing)
    kl = (torch.special.xlogy(true, true) - true * log_q).sum(-1)
    return kl.masked_fill(ignore, 0).sum(-1) / logits.size(0)


def _accuracy(logits, targets):
    mask = targets != IGNORE_ID
    if not mask.any():
        return torch.tensor(0.0)
    return ((logits.argmax(-1) == targets) & mask).sum().float().detach() / mask.sum()


MODEL_CLASSES = {"ctc": CTCModel, "ar": ARModel, "nar": NARModel, "transducer": TransducerModel}
