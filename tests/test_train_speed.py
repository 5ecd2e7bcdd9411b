"""CPU training speed-ups that must not change what training computes: fast dropout (same distribution
as nn.Dropout, keep rate quantized to 1/65536) and the fused CPU Adam (same update to float rounding;
a checkpoint saved by the unfused optimizer of an older run resumes)."""
import copy
import json

import pytest
import torch
import yaml

import kdtool.train.module as module
from kdtool.errors import ConfigError
from kdtool.models import build_model
from kdtool.models.fast_dropout import LEVELS, FastDropout, fast_dropout, keep_levels, use_fast_dropout
from kdtool.train.config import resolve_config
from kdtool.train.module import build_optimizer
from kdtool.train.plot import read_metrics
from kdtool.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENC = {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 2}
DEC = {"attention_heads": 2, "linear_units": 64, "num_blocks": 1}
MODELS = {
    "ar": {"model": "ar", "encoder_conf": ENC, "decoder_conf": DEC},
    "nar": {"model": "nar", "encoder_conf": ENC, "decoder_conf": DEC},
    "transducer": {"model": "transducer", "encoder_conf": ENC,
                   "decoder_conf": {"hidden_size": 32, "dropout": 0.1, "dropout_embed": 0.1},
                   "joint_net_conf": {"joint_space_size": 32}},
    "streaming_transducer": {"model": "transducer", "encoder": "streaming_conformer",
                             "encoder_conf": {"output_size": 32, "attention_heads": 2, "linear_units": 64,
                                              "num_blocks": 2},
                             "decoder_conf": {"hidden_size": 32}, "joint_net_conf": {"joint_space_size": 32}},
    "rnn_ctc": {"model": "ctc", "encoder": "rnn", "encoder_conf": {"output_size": 32, "hidden_size": 32,
                                                                  "num_layers": 2}},
    "dnn_ctc": {"model": "ctc", "encoder": "dnn", "encoder_conf": {"output_size": 32, "num_blocks": 2}},
}


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_fast_dropout_keeps_1_minus_p_of_the_elements_and_keeps_the_mean(p):
    torch.manual_seed(0)
    n = 2_000_000
    out = fast_dropout(torch.ones(n), p)
    keep = keep_levels(p) / LEVELS
    assert abs(keep - (1 - p)) <= 0.5 / LEVELS
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs((out == 0).float().mean().item() - p) < 5 * sigma
    assert abs(out.double().mean().item() - 1) < 5 * sigma / (1 - p)
    # kept elements are scaled by exactly 1 / keep, the others are 0
    assert out.unique().tolist() == [0.0, pytest.approx(1 / keep, rel=1e-7)]
    # the four 16-bit values of each 64-bit draw are equally likely to drop (random_() alone would leave
    # the top bit of every fourth value 0)
    for lane in range(4):
        assert abs((out[lane::4] == 0).float().mean().item() - p) < 5 * sigma * 2


def test_fast_dropout_is_reproducible_from_the_seed_and_handles_any_layout():
    x = torch.randn(6, 50, 40).transpose(0, 1)  # not contiguous
    torch.manual_seed(3)
    a = fast_dropout(x, 0.2)
    torch.manual_seed(3)
    b = fast_dropout(x, 0.2)
    c = fast_dropout(x, 0.2)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    kept = a != 0
    torch.testing.assert_close(a[kept], x[kept] * LEVELS / keep_levels(0.2), rtol=1e-6, atol=0)
    assert fast_dropout(torch.randn(0, 3), 0.5).shape == (0, 3)
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))


def test_eval_mode_and_rate_zero_are_the_identity():
    x = torch.randn(4, 7, 9)
    drop = FastDropout(0.3).eval()
    assert drop(x) is x and fast_dropout(x, 0.3, training=False) is x and fast_dropout(x, 0.0) is x


def test_gradients_reach_the_kept_elements_scaled_by_1_over_keep():
    torch.manual_seed(1)
    x = torch.randn(8, 30, 16, requires_grad=True)
    out = FastDropout(0.25).train()(x)
    g = torch.randn_like(x)
    out.backward(g)
    kept = out.detach() != 0
    scale = LEVELS / keep_levels(0.25)
    assert 0.7 < kept.float().mean().item() < 0.8
    torch.testing.assert_close(x.grad, torch.where(kept, g * scale, torch.zeros_like(g)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", MODELS)
def test_the_swap_replaces_every_dropout_module_and_changes_no_weight(kind):
    torch.manual_seed(0)
    model = build_model(MODELS[kind], 20)
    dropouts = {id(m) for m in model.modules() if type(m) is torch.nn.Dropout}
    names = [n for n, m in model.named_modules() if type(m) is torch.nn.Dropout]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    feats, lens = torch.randn(2, 60, 80), torch.tensor([60, 45])
    model.eval()
    with torch.no_grad():
        before = model.encode(feats, lens)[0]

    assert use_fast_dropout(model) == len(dropouts) > 0
    assert not [m for m in model.modules() if type(m) is torch.nn.Dropout]
    swapped = dict(model.named_modules())
    assert all(isinstance(swapped[n], FastDropout) for n in names)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():  # evaluation (decoding, ONNX export) is unchanged
        torch.testing.assert_close(model.encode(feats, lens)[0], before, rtol=0, atol=0)
    model.train()
    assert all(m.training for m in model.modules() if isinstance(m, FastDropout))


def test_fast_dropout_key_is_checked():
    assert resolve_config({"model": "ctc"})["fast_dropout"] is True
    with pytest.raises(ConfigError, match="fast_dropout"):
        resolve_config({"model": "ctc", "fast_dropout": "yes"})


CONF = {"lr": 0.01, "betas": [0.9, 0.98], "weight_decay": 1e-3}


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Tanh(), torch.nn.Linear(20, 3))


def _steps(net, opt, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad()
        net(torch.randn(16, 12, generator=g)).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_cpu_adam_gives_the_default_update(name):
    fused_net, plain_net = _net(), _net()
    fused_opt = build_optimizer(fused_net.parameters(), name, CONF)
    plain_opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](plain_net.parameters(), **CONF)
    assert fused_opt.param_groups[0]["fused"] is True and plain_opt.param_groups[0]["fused"] is None
    _steps(fused_net, fused_opt, 8)
    _steps(plain_net, plain_opt, 8)
    for a, b, init in zip(fused_net.parameters(), plain_net.parameters(), _net().parameters()):
        assert (a - init).abs().max() > 0.01  # it moved (8 steps of lr 0.01)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # optim_conf still decides where it names fused or foreach
    for conf in ({"fused": False}, {"foreach": False}):
        assert not build_optimizer(fused_net.parameters(), name, {**CONF, **conf}).param_groups[0]["fused"]


def test_an_unfused_optimizer_state_resumes_fused_and_continues_the_same_way():
    plain_net = _net()
    plain_opt = torch.optim.Adam(plain_net.parameters(), **CONF)  # as kdtool made it before: fused None
    _steps(plain_net, plain_opt, 3)
    saved = copy.deepcopy(plain_opt.state_dict())  # as read from a checkpoint: no tensor shared
    resumed_net = copy.deepcopy(plain_net)
    resumed = build_optimizer(resumed_net.parameters(), "adam", CONF)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["fused"] is True  # the checkpoint's fused=None did not switch it off
    assert saved["param_groups"][0]["fused"] is None  # nor was the caller's dict changed
    _steps(plain_net, plain_opt, 4, seed=2)
    _steps(resumed_net, resumed, 4, seed=2)
    for a, b in zip(resumed_net.parameters(), plain_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for p in plain_net.parameters():
        assert plain_opt.state[p]["step"].item() == 7


def test_a_run_saved_before_fast_dropout_and_fused_adam_resumes_with_them(tiny_features, tmp_path, monkeypatch):
    """The old code: torch's dropout, the unfused Adam, a config.yaml without fast_dropout. A run it
    left after epoch 1 of 2 resumes under the new defaults, keeping its Adam state."""
    f, exp = tiny_features, tmp_path / "exp"
    cfg = {**MODELS["ar"], "max_epoch": 2, "batch_frames": 800, "keep_nbest_models": 1, "log_interval": 1,
           "scheduler_conf": {"warmup_steps": 5}}

    def run(config):
        return train(config, exp, f["feats"], f["feats"], f["tokens"], f["cmvn"], accelerator="cpu", devices=1)

    with monkeypatch.context() as m:
        m.setattr(module, "_fused_on_cpu", lambda params: False)
        run(resolve_config({**cfg, "max_epoch": 1, "fast_dropout": False}))
    old = torch.load(exp / "checkpoints" / "last.ckpt", weights_only=False)
    assert not old["optimizer_states"][0]["param_groups"][0]["fused"] and old["epoch"] == 0
    saved = yaml.safe_load((exp / "config.yaml").read_text())
    del saved["fast_dropout"]
    saved["max_epoch"] = 2  # as if the old run had been stopped after its first epoch
    (exp / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    for name in ("model.pth", "model_info.json"):
        (exp / name).unlink()

    info = run(resolve_config(cfg))
    new = torch.load(exp / "checkpoints" / "last.ckpt", weights_only=False)
    assert new["optimizer_states"][0]["param_groups"][0]["fused"] is True
    steps = [c["optimizer_states"][0]["state"][0]["step"].item() for c in (old, new)]
    assert steps[1] == 2 * steps[0] > 0  # epoch 2 went on from epoch 1's Adam state
    assert info["epochs"] == 2 and [e for e, _ in read_metrics(exp / "csv")[1]] == [1, 2]
    assert yaml.safe_load((exp / "config.yaml").read_text())["fast_dropout"] is True
    # another learning setting is still refused
    with pytest.raises(ConfigError, match="another config"):
        run(resolve_config({**cfg, "grad_clip": 1.0}))


def test_benchmark_train_times_each_variant_against_the_baseline(tmp_path, monkeypatch, capsys):
    from kdtool.bin import benchmark_train
    conf = tmp_path / "train.yaml"
    conf.write_text(yaml.safe_dump({**MODELS["nar"], "batch_frames": 400, "kd_conf": {"alpha": 0.0}}))
    out = tmp_path / "bench"
    monkeypatch.setattr("sys.argv", ["benchmark_train", "--config", str(conf), "--steps", "2", "--steps_per_round",
                                     "1", "--batches", "2", "--warmup_steps", "1", "--variants", "both",
                                     "--out_dir", str(out)])
    benchmark_train.main()
    rows = json.loads((out / "benchmark_train.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["torch", "both"]
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] > 0 and all(r["steps"] == 2 for r in rows)
    assert rows[1]["fast_dropout"] and rows[1]["fused_adam"] and not rows[0]["fast_dropout"]
    assert "| both | True | True |" in (out / "benchmark_train.md").read_text()
    monkeypatch.setattr("sys.argv", ["benchmark_train", "--config", str(conf), "--frames", "300"])
    with pytest.raises(SystemExit):
        benchmark_train.main()
    assert "--frames: expected MIN,MAX" in capsys.readouterr().err
