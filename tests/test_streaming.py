"""Streaming Conformer transducer: random chunks in training, chunked attention that really limits
context, cached chunk-by-chunk encoding equal to the chunk-masked forward, streaming greedy search."""
import pytest
import torch

from kdtool.decode.streaming import encode_chunks, full_context_encode, full_context_greedy, streaming_greedy
from kdtool.decode.transducer import greedy_search
from kdtool.decode.runner import decode_dir, resolve_decode_config
from kdtool.models import asr, build_model
from kdtool.models.streaming import StreamingConformerEncoder

V = 20
ENC = {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 2, "short_chunk_size": 4,
       "dropout_rate": 0.0, "positional_dropout_rate": 0.0, "attention_dropout_rate": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(seed=0, **enc):
    torch.manual_seed(seed)
    return build_model({"model": "transducer", "encoder": "streaming_conformer", "encoder_conf": {**ENC, **enc},
                        "decoder_conf": {"hidden_size": 32}, "joint_net_conf": {"joint_space_size": 32}}, V)


def feats(n=90, seed=0):
    return torch.randn(n, 80, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layer, expected", [("conv2d", [21, 16]), ("conv2d2", [42, 32]), ("conv2d6", [14, 10])])
def test_interface_and_exact_frame_counts(layer, expected):
    model = tiny(input_layer=layer).eval()
    assert model.encoder.output_size() == 32
    x = torch.stack([feats(90), torch.cat([feats(70, 1), torch.zeros(20, 80)])])
    enc, lens = model.encode(x, torch.tensor([90, 70]))
    assert enc.shape == (2, expected[0], 32)
    assert lens.tolist() == expected == [asr.subsampled_length(model, n) for n in (90, 70)]
    alone, alone_lens = model.encode(x[1:, :70], torch.tensor([70]))  # padding changes nothing
    assert alone_lens.tolist() == [expected[1]]
    torch.testing.assert_close(alone[0], enc[1, :expected[1]], atol=1e-5, rtol=1e-5)


def test_training_draws_random_chunk_sizes_and_eval_is_full_context():
    enc = tiny().encoder
    x, lens = feats()[None], torch.tensor([90])
    enc.train()  # no dropout in ENC: outputs differ only by the chunk mask
    sizes, outs = [], []
    for seed in range(6):
        torch.manual_seed(seed)
        outs.append(enc(x, lens)[0])
        torch.manual_seed(seed)
        sizes.append(enc.sample_chunk_size(21))  # the draw forward made
        torch.testing.assert_close(outs[-1], enc(x, lens, chunk_size=sizes[-1])[0])
    assert len(set(sizes)) > 1 and min(sizes) <= 4
    i, j = sizes.index(min(sizes)), sizes.index(max(sizes))
    assert not torch.allclose(outs[i], outs[j])
    enc.eval()
    full = enc(x, lens)[0]
    torch.testing.assert_close(full, enc(x, lens, chunk_size=21)[0])
    assert not torch.allclose(full, enc(x, lens, chunk_size=4)[0])


def test_chunked_attention_limits_context():
    model = tiny().eval()
    x = feats()
    # frames 0..7 (chunks of 4) see input frames up to 4*7 + 6 = 34: change everything after
    y = x.clone()
    y[35:] += torch.randn(55, 80)
    with torch.no_grad():
        for run in (lambda f: torch.cat(list(encode_chunks(model, f, 4))),
                    lambda f: model.encoder(f[None], torch.tensor([90]), chunk_size=4)[0][0]):
            a, b = run(x), run(y)
            torch.testing.assert_close(a[:8], b[:8])
            assert not torch.allclose(a[8:], b[8:])
        full_a, full_b = full_context_encode(model, x), full_context_encode(model, y)
        assert not torch.allclose(full_a[:8], full_b[:8])  # the change matters to a full-context encoder


@pytest.mark.parametrize("layer, num_left_chunks, chunk_size", [
    ("conv2d", 0, 1), ("conv2d", 0, 5), ("conv2d", 0, 21), ("conv2d", 2, 3), ("conv2d6", 1, 4), ("conv2d2", 0, 7)])
def test_streaming_equals_chunk_masked_forward(layer, num_left_chunks, chunk_size):
    """encode_chunks with left_context = num_left_chunks * chunk_size (all, for 0) equals the forward
    under the chunk mask training uses; the last chunk may be partial."""
    model = tiny(input_layer=layer, num_left_chunks=num_left_chunks).eval()
    x = feats()
    with torch.no_grad():
        chunks = list(encode_chunks(model, x, chunk_size))
        masked, lens, _ = model.encoder(x[None], torch.tensor([90]), chunk_size=chunk_size)
    assert [c.size(0) for c in chunks[:-1]] == [chunk_size] * (len(chunks) - 1)
    torch.testing.assert_close(torch.cat(chunks), masked[0], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def trained():
    """A tiny transducer that has learned two synthetic utterances (with random training chunks)."""
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(asr.ENCODERS, "streaming_conformer", StreamingConformerEncoder)
        mp.setitem(asr.ENCODER_DEFAULTS, "streaming_conformer", asr.ENCODER_DEFAULTS.get("streaming_conformer", {}))
        model = tiny()
    x = torch.stack([feats(80, 1), feats(80, 2)])
    lens, ys = torch.tensor([80, 64]), torch.tensor([[3, 5, 7, 9, 11], [12, 4, 8, 6, -1]])
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(60):
        loss, _ = model(x, lens, ys, torch.tensor([5, 4]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x, lens, ys


def test_streaming_greedy_matches_full_context(trained):
    model, x, lens, ys = trained
    with torch.no_grad():
        enc, enc_lens = model.encode(x, lens)
    reference = greedy_search(model, enc, enc_lens)
    for b in range(2):
        utt = x[b, :lens[b]]
        n_out = asr.subsampled_length(model, int(lens[b]))
        hyp, n = full_context_greedy(model, utt)
        assert (hyp, n) == (reference[b], n_out) and hyp  # the model learned something to emit
        for chunk_size in (n_out, 1000):  # one chunk, exactly or with room to spare
            assert streaming_greedy(model, utt, chunk_size) == (hyp, n_out)
        small, n = streaming_greedy(model, utt, 3)  # runs, with every frame; may differ from full context
        assert n == n_out and all(0 < t < V for t in small)


def test_too_short_utterance_is_a_clear_error():
    model = tiny().eval()
    for run in (lambda f: model.encode(f[None], torch.tensor([f.size(0)])), lambda f: streaming_greedy(model, f, 4)):
        with pytest.raises(ValueError, match="utterance of 6 frames is too short .* at least 7 frames"):
            run(feats(6))
    assert streaming_greedy(model, feats(7), 4)[1] == 1


def test_runner_decodes_chunk_by_chunk(tiny_features, tmp_path):
    from kdtool.train.config import resolve_config
    from kdtool.train.trainer import train

    f = tiny_features
    cfg = {"model": "transducer", "encoder": "streaming_conformer", "encoder_conf": ENC,
           "decoder_conf": {"hidden_size": 32}, "joint_net_conf": {"joint_space_size": 32},
           "max_epoch": 8, "batch_frames": 800, "keep_nbest_models": 1, "scheduler_conf": {"warmup_steps": 5}}
    train(resolve_config(cfg), tmp_path / "t", f["feats"], f["feats"], f["tokens"], f["cmvn"],
          accelerator="cpu", devices=1)

    def run(config, name):
        method, options = resolve_decode_config(config)
        info = decode_dir(tmp_path / "t", f["feats"], method, options, tmp_path / name)
        return info, (tmp_path / name / "text").read_text()

    info, one_chunk = run({"method": "transducer_streaming", "chunk_size": 1000}, "s1000")
    assert info["method"] == "streaming_chunk1000"
    assert one_chunk == run({"method": "transducer_greedy", "batch_size": 1}, "greedy")[1]
    _, small = run({"method": "transducer_streaming", "chunk_size": 2}, "s2")
    assert sorted(ln.split()[0] for ln in small.splitlines()) == sorted(ln.split()[0] for ln in one_chunk.splitlines())

    cfg2 = {**cfg, "encoder": "conformer", "encoder_conf": {"output_size": 32, "attention_heads": 2,
                                                            "linear_units": 64, "num_blocks": 1}, "max_epoch": 1}
    train(resolve_config(cfg2), tmp_path / "c", f["feats"], f["feats"], f["tokens"], f["cmvn"],
          accelerator="cpu", devices=1)
    method, options = resolve_decode_config({"method": "transducer_streaming"})
    with pytest.raises(ValueError, match="needs a streaming encoder"):
        decode_dir(tmp_path / "c", f["feats"], method, options, tmp_path / "x")
