"""The KD terms' table (kdtool.kd.terms) and the model interface they use (kdtool.models.asr)."""
import pytest
import torch

from kdtool.kd.distill import KD_DEFAULTS, DistillLoss, resolve_kd_conf
from kdtool.kd.terms import TERMS, Term, term_of_dump_type
from kdtool.models.asr import KD_OUTPUTS
from kdtool.models.build import build_model
from kdtool.train.config import resolve_config
from kdtool.train.module import ASRTask
from kdtool.train.trainer import average_checkpoints

ENC = {"output_size": 16, "attention_heads": 2, "linear_units": 32, "num_blocks": 2}
DEC = {"attention_heads": 2, "linear_units": 32, "num_blocks": 1}
RNNT = {"decoder_conf": {"hidden_size": 16}, "joint_net_conf": {"joint_space_size": 16}}
V, FEATS = 12, 20
KINDS = {"ctc": ({}, {"encoder", "ctc"}),
         "ar": ({"decoder_conf": DEC}, {"encoder", "ctc", "decoder"}),
         "nar": ({"decoder_conf": DEC}, {"encoder", "ctc", "decoder"}),
         "transducer": (RNNT, {"encoder", "ctc", "joint"})}


def test_each_term_is_one_module_registered_once_with_its_kd_conf_keys():
    for name, term in TERMS.items():
        assert isinstance(term, Term) and term.name == name
        assert type(term).__module__ == f"kdtool.kd.terms.{name}"
        assert term.needs is None or term.needs in KD_OUTPUTS
        assert all(term_of_dump_type(t) == name for t in term.dump_types)
        assert KD_DEFAULTS[f"{name}_weight"] == (1.0 if name == "frame" else 0.0)
        assert all(KD_DEFAULTS[k] == v for k, v in term.defaults.items())
    assert term_of_dump_type("nbest") is None
    conf = resolve_kd_conf({"seq_weight": 0.5, "nbest_tau": 2.0})
    assert conf["seq_weight"] == 0.5 and conf["nbest_tau"] == 2.0 and conf["lattice_nodes"] == "all"


def tiny(kind, encoder="conformer"):
    extra, _ = KINDS[kind]
    torch.manual_seed(0)
    return build_model({"model": kind, "encoder": encoder, "encoder_conf": ENC, **extra}, V, input_size=FEATS).eval()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_declares_its_kd_outputs_and_gives_its_encoder_layers(kind):
    model = tiny(kind)
    assert model.kd_outputs() == KINDS[kind][1]
    feats, lens = torch.randn(2, 60, FEATS), torch.tensor([60, 41])
    enc, enc_lens = model.encode(feats, lens)
    enc2, enc_lens2, (first, last) = model.encoder_layers(feats, lens, [1, 2])
    assert torch.equal(enc, enc2) and torch.equal(enc_lens, enc_lens2)
    assert first.shape == last.shape == enc.shape and not torch.allclose(first, last)
    # the encoder output is the last block's output through the final layer norm (normalize_before)
    assert torch.allclose(model.encoder.after_norm(last), enc, atol=1e-6)
    with pytest.raises(ValueError, match=r"encoder layer\(s\) \[3\]: this .* model's encoder has layers 1..2"):
        model.encoder_layers(feats, lens, [3])


def test_a_streaming_encoder_gives_its_layers_too():
    model = tiny("ctc", "streaming_conformer")
    feats, lens = torch.randn(2, 60, FEATS), torch.tensor([60, 41])
    enc, _, (first, second) = model.encoder_layers(feats, lens, [1, 2])
    assert first.shape == second.shape == enc.shape and not torch.allclose(first, second)


def test_a_terms_trainable_parts_are_optimized_but_not_part_of_the_saved_student(tmp_path):
    model = tiny("ctc")
    projection = torch.nn.Linear(16, 8)
    loss = DistillLoss(0.5, 1.0, {"frame": 1.0}, parts={"frame": projection})
    task = ASRTask(model, resolve_config({"model": "ctc", "encoder_conf": ENC}), loss)
    optimized = {id(p) for group in task.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    assert {id(p) for p in projection.parameters()} | {id(p) for p in model.parameters()} == optimized
    assert "loss_fn.parts.frame.weight" in task.state_dict()  # a checkpoint keeps it: a resumed run trains it on
    torch.save({"state_dict": task.state_dict()}, tmp_path / "epoch1.ckpt")
    saved = average_checkpoints([tmp_path / "epoch1.ckpt"])  # what model.pth holds
    assert set(saved) == set(model.state_dict())
    build_model({"model": "ctc", "encoder_conf": ENC}, V, input_size=FEATS).load_state_dict(saved)  # strict
