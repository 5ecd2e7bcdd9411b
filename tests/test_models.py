"""Model kinds built from configs: shapes, shared ids, learning on a tiny batch, config errors."""
import numpy as np
import pytest
import torch

from kdtool.errors import ConfigError
from kdtool.models import build_model, count_params, model_size_mb
from kdtool.models.asr import subsampled_length

V = 24
ENC = {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 2}
DEC = {"attention_heads": 2, "linear_units": 64, "num_blocks": 1}
CONFIGS = {
    "ctc": {"model": "ctc", "encoder_conf": ENC},
    "ar": {"model": "ar", "encoder_conf": ENC, "decoder_conf": DEC},
    "nar": {"model": "nar", "encoder_conf": ENC, "decoder_conf": DEC},
    "transducer": {"model": "transducer", "encoder_conf": ENC, "decoder_conf": {"hidden_size": 32},
                   "joint_net_conf": {"joint_space_size": 32}},
}


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 90, 80, generator=g)
    ys = torch.randint(2, V - 2, (2, 6), generator=g)
    ys[1, 4:] = -1
    return feats, torch.tensor([90, 70]), ys, torch.tensor([6, 4])


@pytest.mark.parametrize("kind", CONFIGS)
def test_each_kind_learns_a_tiny_batch(kind):
    torch.manual_seed(0)
    model = build_model(CONFIGS[kind], V)
    assert model.kind == kind
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, stats = model(*batch())
        assert torch.isfinite(loss) and stats["loss"] == loss.detach()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert model(*batch())[0].item() < 0.5 * first


@pytest.mark.parametrize("kind", CONFIGS)
def test_shared_ids_and_head_sizes(kind):
    model = build_model(CONFIGS[kind], V)
    assert (model.blank, model.sos, model.eos, model.mask_token) == (0, V - 2, V - 2, V - 1)
    feats, lens, ys, ys_lens = batch()
    enc, enc_lens = model.encode(feats, lens)
    assert enc.shape[-1] == 32 and enc_lens.tolist() == [((n - 1) // 2 - 1) // 2 for n in (90, 70)]
    assert model.ctc_log_probs(enc).shape[-1] == V  # every kind's frame posteriors line up
    if kind in ("ar",):
        logits, ys_out = model.decoder_logits(enc, enc_lens, ys, ys_lens)
        assert logits.shape == (2, 7, V) and ys_out[0, -1] == model.eos
    if kind == "nar":
        assert model.decoder.embed[0].num_embeddings == V  # <mask> is an input the MLM decoder knows
    if kind == "transducer":
        assert model.joint_logits(enc, ys).shape == (2, enc.shape[1], 7, V)


@pytest.mark.parametrize("layer, expected", [("conv2d", [21, 16]), ("conv2d6", [14, 10]), ("conv2d8", [10, 7])])
def test_frame_count_does_not_depend_on_the_batch(layer, expected):
    model = build_model({"model": "ctc", "encoder_conf": {**ENC, "input_layer": layer}}, V).eval()
    feats, lens, _, _ = batch()
    enc, enc_lens = model.encode(feats, lens)
    assert enc_lens.tolist() == expected == [subsampled_length(model, n) for n in (90, 70)]
    alone, alone_lens = model.encode(feats[1:, :70], lens[1:])
    assert alone_lens.tolist() == [expected[1]]
    # padding does not leak into valid frames (the Conformer's depthwise convolution included)
    torch.testing.assert_close(alone[0], enc[1, :expected[1]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("encoder, layer", [("conformer", "conv2d"), ("conformer", "conv2d6"),
                                            ("transformer", "conv2d8"), ("streaming_conformer", "conv2d")])
def test_a_narrow_conv_front_end_keeps_frame_counts_and_exactness_with_fewer_weights(encoder, layer):
    enc_conf = {**ENC, "input_layer": layer}
    wide = build_model({"model": "ctc", "encoder": encoder, "encoder_conf": enc_conf}, V).eval()
    narrow = build_model({"model": "ctc", "encoder": encoder,
                          "encoder_conf": {**enc_conf, "subsampling_channels": 8}}, V).eval()
    convs = [m for m in narrow.encoder.embed.conv if isinstance(m, torch.nn.Conv2d)]
    assert {c.out_channels for c in convs} == {8} and [c.in_channels for c in convs[1:]] == [8] * (len(convs) - 1)
    assert count_params(narrow) < count_params(wide)
    feats, lens, _, _ = batch()
    enc, enc_lens = narrow.encode(feats, lens)
    assert enc_lens.tolist() == wide.encode(feats, lens)[1].tolist()
    assert enc.shape[-1] == ENC["output_size"]
    if encoder != "streaming_conformer":  # padding does not leak in (the streaming encoder masks its own)
        alone, _ = narrow.encode(feats[1:, :70], lens[1:])
        torch.testing.assert_close(alone[0], enc[1, :enc_lens[1]], rtol=1e-5, atol=1e-5)


def test_param_count_and_size():
    model = build_model(CONFIGS["ar"], V)
    n = sum(p.numel() for p in model.parameters())
    assert count_params(model) == n and model_size_mb(model) == pytest.approx(4 * n / 1e6)
    bigger = build_model({**CONFIGS["ar"], "encoder_conf": {**ENC, "num_blocks": 4}}, V)
    assert count_params(bigger) > n


def test_specaug_only_in_training():
    torch.manual_seed(0)
    model = build_model({**CONFIGS["ctc"], "specaug_conf": {"apply_time_warp": False, "num_freq_mask": 2,
                                                             "freq_mask_width_range": [5, 20],
                                                             "time_mask_width_range": [5, 20]}}, V)
    feats, lens, _, _ = batch()
    model.eval()
    a, b = model.encode(feats, lens)[0], model.encode(feats, lens)[0]
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(1)
    model.encoder.eval()  # dropout off: any difference now comes from SpecAugment
    assert not torch.equal(model.encode(feats, lens)[0], a)


@pytest.mark.parametrize("config, message", [
    ({"model": "ar", "encoder_conf": ENC, "decoder_conf": DEC, "optimizer_conf": {}}, r"unknown model config key\(s\) \['optimizer_conf'\]"),
    ({"model": "rnn", "encoder_conf": ENC}, r"model: unknown kind 'rnn'"),
    ({"model": "ctc", "encoder": "lstm", "encoder_conf": ENC}, r"encoder: unknown 'lstm'"),
    ({"model": "ctc", "encoder_conf": {**ENC, "num_layers": 3}}, r"encoder_conf \(conformer\): unknown key\(s\) \['num_layers'\]"),
    ({"model": "ctc", "encoder_conf": {**ENC, "subsampling_channels": 0}}, r"subsampling_channels must be a positive integer, not 0"),
    ({"model": "ctc", "encoder_conf": {**ENC, "input_layer": "linear", "subsampling_channels": 8}}, r"subsampling_channels needs a conv2d input_layer, not 'linear'"),
    ({"model": "nar", "decoder": "transformer", "encoder_conf": ENC, "decoder_conf": DEC}, r"a nar model takes decoder: mlm"),
    ({"model": "ctc", "encoder_conf": ENC, "decoder_conf": DEC}, r"a ctc model has no decoder"),
    ({"model": "ar", "encoder_conf": ENC, "decoder_conf": {**DEC, "hidden": 3}}, r"decoder_conf \(transformer\): unknown key\(s\) \['hidden'\]"),
    ({"model": "ar", "encoder_conf": ENC, "decoder_conf": DEC, "joint_net_conf": {"joint_space_size": 8}}, r"only a transducer"),
    ({"model": "ar", "encoder_conf": ENC, "decoder_conf": DEC, "model_conf": {"ctc_wieght": 0.3}}, r"model_conf \(ar\): unknown key\(s\) \['ctc_wieght'\]"),
    ({"model": "nar", "encoder_conf": ENC, "decoder_conf": DEC, "model_conf": {"embed_init": "xavier"}}, r"embed_init must be 'scaled' or 'espnet', not 'xavier'"),
    ({"model": "ar", "encoder_conf": ENC, "decoder_conf": DEC, "model_conf": {"embed_init": "scaled"}}, r"model_conf \(ar\): unknown key\(s\) \['embed_init'\]"),
])
def test_bad_configs_fail_before_training(config, message):
    with pytest.raises(ConfigError, match=message):
        build_model(config, V)


def test_label_smoothing_loss_equals_espnets():
    from espnet.nets.pytorch_backend.transformer.label_smoothing_loss import LabelSmoothingLoss
    from kdtool.models.asr import label_smoothing_loss
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(3, 5, V, generator=g), torch.randint(0, V, (3, 5), generator=g)
    targets[1, 3:] = -1
    ref = LabelSmoothingLoss(V, -1, 0.1, normalize_length=False)(logits, targets)
    assert label_smoothing_loss(logits, targets, 0.1).sum().item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("kind", CONFIGS)
def test_per_utterance_weights_scale_each_utterance_loss(kind):
    """weights [1, 1] give the plain loss; [w, 0] gives w times the first utterance's share."""
    torch.manual_seed(0)
    model = build_model({**CONFIGS[kind], "model_conf": {"lsm_weight": 0.1}} if kind in ("ar", "nar")
                        else CONFIGS[kind], V).eval()
    feats, feats_lens, ys, ys_lens = batch()
    enc, enc_lens = model.encode(feats, feats_lens)

    def loss(weights, rows=slice(None)):
        torch.manual_seed(0)  # Mask-CTC masks at random (with numpy)
        np.random.seed(0)
        return model.supervised_loss(enc[rows], enc_lens[rows], ys[rows], ys_lens[rows], weights)[0].item()
    plain = loss(None)
    assert loss(torch.ones(2)) == pytest.approx(plain, rel=1e-5)
    if kind != "nar":  # the masking of a one-utterance batch differs from the first row of two
        first_alone = loss(None, slice(0, 1)) / 2  # losses are divided by the batch size
        assert loss(torch.tensor([3.0, 0.0])) == pytest.approx(3 * first_alone, rel=1e-4)


@pytest.mark.parametrize("kind", CONFIGS)
def test_losses_stay_float32_under_bf16_mixed_precision(kind):
    """precision: bf16-mixed (auto on a bf16 GPU) runs the layers in bf16 but every loss and posterior in
    float32: torchaudio's rnnt_loss refuses bf16 logits, and CPU autocast leaves log_softmax in bf16."""
    torch.manual_seed(0)
    model = build_model(CONFIGS[kind], V).eval()
    feats, lens, ys, ys_lens = batch()
    np.random.seed(0)
    ref = model(feats, lens, ys, ys_lens)[0]
    np.random.seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = model(feats, lens, ys, ys_lens)
        enc, _ = model.encode(feats, lens)
        assert enc.dtype == torch.bfloat16 and model.ctc_log_probs(enc).dtype == torch.float32
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in stats.values())
    assert loss.item() == pytest.approx(ref.item(), rel=0.05)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def masked_lm_accuracy_after_memorizing(embed_init, steps=150):
    """Token accuracy of a Mask-CTC decoder that learns 4 fully masked random transcripts from fixed
    random encoder outputs (the only way to tell the masks apart is their position)."""
    torch.manual_seed(0)
    model = build_model({**CONFIGS["nar"], "decoder_conf": {**DEC, "num_blocks": 2},
                         "model_conf": {"embed_init": embed_init}}, V)
    g = torch.Generator().manual_seed(1)
    enc, enc_lens = torch.randn(4, 30, 32, generator=g), torch.full((4,), 30)
    ys, lens = torch.randint(1, V - 2, (4, 12), generator=g), torch.full((4,), 12)
    ys_in = torch.full_like(ys, model.mask_token)
    opt = torch.optim.Adam(model.decoder.parameters(), lr=1e-3)
    for _ in range(steps):
        logits, _ = model.decoder(enc, enc_lens, ys_in, lens)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return (model.decoder(enc, enc_lens, ys_in, lens)[0].argmax(-1) == ys).float().mean().item()


def test_scaled_token_embeddings_let_the_masked_lm_tell_positions_apart():
    model = build_model(CONFIGS["nar"], V)
    assert model.decoder.embed[0].weight.std().item() == pytest.approx(ENC["output_size"] ** -0.5, rel=0.2)
    espnet = build_model({**CONFIGS["nar"], "model_conf": {"embed_init": "espnet"}}, V)
    assert espnet.decoder.embed[0].weight.std().item() == pytest.approx(1.0, rel=0.2)
    scaled, unscaled = masked_lm_accuracy_after_memorizing("scaled"), masked_lm_accuracy_after_memorizing("espnet")
    assert scaled > 0.7 and unscaled < 0.5, (scaled, unscaled)
