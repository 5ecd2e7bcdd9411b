"""Frame-level distillation foundations: soft-label storage, CTC forward-backward, KD losses, pooling."""
import itertools
import json
import math
import re

import pytest
import torch

from kdtool.kd.forward_backward import ctc_occupancies, ctc_occupancies_batch
from kdtool.kd.losses import (FRONT_ENDS, conv_length, frame_grid, frame_groups, hinton_kd_loss, kl_div_soft,
                              pool_to_grid, soften)
from kdtool.kd.softlabels import (MissingSoftLabelError, SoftLabelError, SoftLabelReader, SoftLabelWriter,
                                  bytes_per_frame, merge_jobs, to_topk, tokens_sha256)
from kdtool.models.asr import front_end, subsampled_length
from kdtool.models.build import build_model

torch.set_num_threads(1)
V = 6


def rand_probs(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(*shape, generator=g), -1)


# ---- losses -------------------------------------------------------------------------------------

def test_kl_is_zero_for_identical_and_grows_as_distributions_part():
    p, q = rand_probs(2, 5, V, seed=1), rand_probs(2, 5, V, seed=2)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert kl_div_soft(p, p.log(), mask).abs() < 1e-6
    kls = [kl_div_soft(p, ((1 - a) * p + a * q).log(), mask).item() for a in torch.linspace(0, 1, 6)]
    assert all(b > a for a, b in zip(kls, kls[1:])), kls


def test_kl_masks_frames_and_divides_by_batch():
    p, q = rand_probs(2, 5, V, seed=1), rand_probs(2, 5, V, seed=2)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    per_frame = (p * (p.log() - q.log())).sum(-1)
    expected = (per_frame[0, :3].sum() + per_frame[1].sum()) / 2
    assert torch.allclose(kl_div_soft(p, q.log(), mask), expected, atol=1e-5)


def test_sparse_kl_equals_dense_when_k_is_V():
    p, q = rand_probs(2, 4, V, seed=3), rand_probs(2, 4, V, seed=4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    ids, probs = to_topk(p.view(-1, V), V)
    sparse = (ids.view(2, 4, V), probs.view(2, 4, V))
    assert torch.allclose(kl_div_soft(sparse, q.log(), mask), kl_div_soft(p, q.log(), mask), atol=1e-5)


def test_hinton_loss_is_T2_times_kl_at_T_and_zero_for_identical_logits():
    t_logits, s_logits = 3 * torch.randn(2, 5, V), 3 * torch.randn(2, 5, V)
    mask = torch.ones(2, 5, dtype=torch.bool)
    T = 2.5
    p_T = torch.softmax(t_logits / T, -1)
    expected = T ** 2 * (p_T * (p_T.log() - torch.log_softmax(s_logits / T, -1))).sum() / 2
    assert torch.allclose(hinton_kd_loss(t_logits, s_logits, T, mask, teacher_is_logits=True), expected, atol=1e-4)
    assert torch.allclose(hinton_kd_loss(p_T, s_logits, T, mask), expected, atol=1e-4)  # stored posteriors
    assert hinton_kd_loss(s_logits, s_logits, T, mask, teacher_is_logits=True).abs() < 1e-5
    # Log-probabilities soften like logits (log_softmax is shift-invariant).
    assert torch.allclose(soften(torch.log_softmax(s_logits, -1), T), soften(s_logits, T), atol=1e-5)


# ---- CTC forward-backward -----------------------------------------------------------------------

def collapse(path, blank=0):
    return [k for k, _ in itertools.groupby(path) if k != blank]


def brute_force_occupancies(probs, target):
    """Sum over every length-T label sequence that collapses to ``target``: all CTC alignments."""
    T, Vs = probs.shape
    occ = torch.zeros(T, Vs, dtype=torch.float64)
    for path in itertools.product(range(Vs), repeat=T):
        if collapse(path) == target:
            w = math.prod(probs[t, v].item() for t, v in enumerate(path))
            for t, v in enumerate(path):
                occ[t, v] += w
    return occ / occ.sum(1, keepdim=True)


@pytest.mark.parametrize("target", [[1, 2], [2, 2], [3], [], [1, 1, 1]])
def test_occupancies_match_brute_force_over_all_alignments(target):
    probs = rand_probs(5, 4, seed=len(target) + sum(target)).double()
    occ = ctc_occupancies(probs.log(), torch.tensor(target, dtype=torch.long))
    assert occ.shape == (5, 4)
    assert torch.allclose(occ.sum(1), torch.ones(5, dtype=occ.dtype), atol=1e-9)
    assert torch.allclose(occ, brute_force_occupancies(probs, target), atol=1e-9)


def test_batched_occupancies_match_one_at_a_time():
    log_probs = torch.log_softmax(torch.randn(3, 7, V), -1)
    targets = torch.tensor([[1, 2, 2], [3, -1, -1], [4, 4, -1]])  # -1: padding
    lengths, target_lengths = [7, 4, 6], [3, 1, 2]
    occ = ctc_occupancies_batch(log_probs, lengths, targets, target_lengths)
    for b in range(3):
        single = ctc_occupancies(log_probs[b, :lengths[b]], targets[b, :target_lengths[b]])
        assert torch.allclose(occ[b, :lengths[b]], single, atol=1e-5)
        assert occ[b, lengths[b]:].abs().sum() == 0


def test_impossible_alignment_raises():
    log_probs = torch.log_softmax(torch.randn(3, V), -1)
    ctc_occupancies(log_probs, torch.tensor([1, 1]))  # 1 blank 1: exactly 3 frames, fine
    with pytest.raises(ValueError, match="3 frames cannot align 3 labels.*at least 5"):
        ctc_occupancies(log_probs, torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="cannot align"):
        ctc_occupancies(log_probs, torch.tensor([1, 2, 3, 4]))


# ---- soft-label storage -------------------------------------------------------------------------

UTTS = {f"spk-u{i}": rand_probs(3 + i, V, seed=10 + i) for i in range(5)}


@pytest.fixture
def tokens(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("<blank>\n<unk>\na\nb\n<sos/eos>\n<mask>\n")
    return path


def make_meta(tokens, topk):
    return dict(type="frame_posteriors", topk=topk, vocab_size=V, temperature=1.0,
                tokens_sha256=tokens_sha256(tokens), teacher="exp/ar_teacher", subsampling=4, frame_shift_ms=10)


def dump(out_dir, tokens, topk, nj=2):
    utts = sorted(UTTS)
    for job in range(1, nj + 1):
        with SoftLabelWriter(out_dir, make_meta(tokens, topk), job=job) as w:
            for utt in utts[job - 1::nj]:
                w.write(utt, UTTS[utt])
    merge_jobs(out_dir, nj)
    return out_dir


def test_dense_dump_round_trips(tmp_path, tokens):
    reader = SoftLabelReader(dump(tmp_path / "dense", tokens, None), tokens_path=tokens)
    assert reader.keys() == sorted(UTTS) and len(reader) == len(UTTS) and "spk-u0" in reader
    assert json.loads((tmp_path / "dense" / "soft_labels.json").read_text())["format_version"] == 2
    for utt, probs in UTTS.items():
        assert torch.equal(reader.dense(utt), probs)
        ids, p = reader.sparse(utt)
        assert torch.allclose(torch.zeros_like(probs).scatter_(1, ids, p), probs)


def test_topk_dump_round_trips_renormalized(tmp_path, tokens):
    reader = SoftLabelReader(dump(tmp_path / "top2", tokens, 2), tokens_path=tokens)
    assert reader.topk == 2
    for utt, probs in UTTS.items():
        ids, p = reader.sparse(utt)
        ref_ids, ref_p = to_topk(probs, 2)
        # the kept tokens are the most probable ones, in proportion to the teacher's probabilities
        # (stored in 1/255 steps: tests/test_softlabels_compact.py)
        assert torch.equal(ids, ref_ids) and torch.allclose(p, ref_p, atol=1 / 255, rtol=0)
        assert torch.allclose(p.sum(1), torch.ones(len(p)))
        assert torch.equal(ids[:, 0], probs.argmax(1))
        dense = reader.dense(utt)
        assert dense.shape == probs.shape and torch.allclose(dense.gather(1, ids), p)
        assert (dense > 0).sum(1).le(2).all()


def test_topk_costs_fewer_bytes_per_frame(tmp_path, tokens):
    dense, top2 = bytes_per_frame(dump(tmp_path / "d", tokens, None)), bytes_per_frame(dump(tmp_path / "k", tokens, 2))
    assert top2 < dense
    assert dense >= 4 * V and top2 >= 2 + 1  # 2 one-byte ids and one cumulative probability per frame


def test_token_list_mismatch_names_both_files(tmp_path, tokens):
    out = dump(tmp_path / "d", tokens, None)
    other = tmp_path / "student_tokens.txt"
    other.write_text("<blank>\n<unk>\nb\na\n<sos/eos>\n<mask>\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(other))}.*differs.*soft_labels\.json"):
        SoftLabelReader(out, tokens_path=other)


def test_missing_utterance_names_dump_and_utterance(tmp_path, tokens):
    reader = SoftLabelReader(dump(tmp_path / "d", tokens, 2))
    with pytest.raises(KeyError) as e:
        reader.dense("spk-nope")
    assert isinstance(e.value, MissingSoftLabelError)
    assert str(tmp_path / "d") in str(e.value) and "spk-nope" in str(e.value)


def test_truncated_ark_names_ark_and_utterance(tmp_path, tokens):
    out = dump(tmp_path / "d", tokens, None, nj=1)
    ark = out / "soft_labels.1.ark"
    ark.write_bytes(ark.read_bytes()[:-10])
    reader = SoftLabelReader(out)
    last = reader.keys()[-1]
    reader.dense(reader.keys()[0])  # earlier utterances are intact
    with pytest.raises(SoftLabelError, match=rf"{re.escape(str(ark))}: utterance {last}: .*truncated or corrupt"):
        reader.dense(last)


def test_merge_names_the_missing_job(tmp_path, tokens):
    out = tmp_path / "d"
    with SoftLabelWriter(out, make_meta(tokens, None), job=1) as w:
        w.write("spk-u0", UTTS["spk-u0"])
    with pytest.raises(SoftLabelError, match=r"soft_labels\.2\.scp: missing: soft-label job 2 of 3"):
        merge_jobs(out, 3)
    assert not (out / "soft_labels.scp").exists()


def test_killed_writer_leaves_no_scp(tmp_path, tokens):
    out = dump(tmp_path / "d", tokens, None)  # a complete earlier dump, then a rerun of job 2 dies
    with pytest.raises(RuntimeError):
        with SoftLabelWriter(out, make_meta(tokens, None), job=2) as w:
            w.write("spk-u1", UTTS["spk-u1"])
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["soft_labels.1.ark", "soft_labels.1.scp",
                                                    "soft_labels.2.ark", "soft_labels.json"]
    with pytest.raises(SoftLabelError, match="incomplete"):
        SoftLabelReader(out)
    with pytest.raises(SoftLabelError, match="job 2 of 2"):
        merge_jobs(out, 2)


def test_writer_rejects_log_probabilities(tmp_path, tokens):
    with pytest.raises(SoftLabelError, match="spk-u0: rows are not probability distributions"):
        with SoftLabelWriter(tmp_path / "d", make_meta(tokens, 2)) as w:
            w.write("spk-u0", UTTS["spk-u0"].log())


# ---- pooling to the student's frame grid --------------------------------------------------------

def spike_probs(n, label, at, seed=0):
    """n frames of CTC-like posteriors: blank 0.97 and the rest spread at random, but frame ``at``: a spike
    of ``label`` at 0.9, blank 0.08."""
    g = torch.Generator().manual_seed(seed)
    rest = torch.rand(n, V, generator=g)
    rest[:, 0] = 0
    probs = 0.03 * rest / rest.sum(1, keepdim=True)
    probs[:, 0] = 0.97
    probs[at] = 0.02 * rest[at] / rest[at].sum()
    probs[at, 0], probs[at, label] = 0.08, 0.9
    return probs / probs.sum(1, keepdim=True)


@pytest.mark.parametrize("factor", [6, 8])
def test_a_one_frame_spike_pooled_to_a_coarser_student_stays_the_argmax_of_its_student_frame(factor):
    n_input = 403
    n_t, n_s = conv_length(FRONT_ENDS[4], n_input), conv_length(FRONT_ENDS[factor], n_input)
    s_offset = {6: 5, 8: 7}[factor]  # espnet conv2d6 / conv2d8: student frame j is centred on input 6j+5 / 8j+7
    for i in range(n_t):
        label = 1 + i % (V - 1)
        pooled = pool_to_grid(spike_probs(n_t, label, i, seed=i), FRONT_ENDS[4], FRONT_ENDS[factor], n_s)
        holder = min(n_s - 1, max(0, math.floor((4 * i + 3 - s_offset) / factor + 0.5)))  # nearest centre
        assert pooled.shape == (n_s, V)
        assert pooled[holder].argmax() == label, (i, pooled[holder])
        others = [j for j in range(n_s) if j != holder]
        assert (pooled[others].argmax(1) == 0).all()  # the spike appears nowhere else


@pytest.mark.parametrize("teacher,student", [(4, 6), (4, 8), (6, 8), (8, 4), (4, 2), (4, 4)])
def test_pooled_rows_stay_normalized_and_a_frame_alone_in_its_group_is_kept(teacher, student):
    n_input = 257
    n_t, n_s = conv_length(FRONT_ENDS[teacher], n_input), conv_length(FRONT_ENDS[student], n_input)
    probs = rand_probs(n_t, V, seed=teacher * student)
    pooled = pool_to_grid(probs, FRONT_ENDS[teacher], FRONT_ENDS[student], n_s)
    assert pooled.shape == (n_s, V) and (pooled >= 0).all()
    assert torch.allclose(pooled.sum(1), torch.ones(n_s), atol=1e-6)
    groups = frame_groups(FRONT_ENDS[teacher], FRONT_ENDS[student], n_t, n_s)
    alone = groups.sum(1) == 1  # none from 4x to 8x
    assert torch.allclose(pooled[alone], groups[alone] @ probs, atol=1e-6)
    if teacher == student:
        assert torch.equal(groups, torch.eye(n_t)) and torch.allclose(pooled, probs, atol=1e-6)


def test_two_frames_of_blank_half_pool_to_blank_a_quarter():
    probs = torch.tensor([[0.5, 0.5, 0, 0, 0, 0], [0.5, 0, 0.5, 0, 0, 0]])
    pooled = pool_to_grid(probs, FRONT_ENDS[4], FRONT_ENDS[8], 1)
    assert torch.allclose(pooled, torch.tensor([[0.25, 0.375, 0.375, 0, 0, 0]]))


def test_the_frame_map_lines_up_frame_centres():
    # 4x -> 8x: student frame j (centre 8j+7) holds teacher frames 2j, 2j+1 (centres 8j+3, 8j+7); its last
    # frame also takes the teacher frame past it
    n_t, n_s = conv_length(FRONT_ENDS[4], 400), conv_length(FRONT_ENDS[8], 400)
    assert (n_t, n_s) == (99, 49)
    groups = frame_groups(FRONT_ENDS[4], FRONT_ENDS[8], n_t, n_s)
    held = [g.nonzero().squeeze(1).tolist() for g in groups]
    assert held[:-1] == [[2 * j, 2 * j + 1] for j in range(n_s - 1)] and held[-1] == [96, 97, 98]
    # 4x -> 6x: {0, 1}, {2}, {3, 4}, {5}, ...: no teacher frame is split between two student frames
    groups = frame_groups(FRONT_ENDS[4], FRONT_ENDS[6], 99, conv_length(FRONT_ENDS[6], 400))
    assert [g.nonzero().squeeze(1).tolist() for g in groups[:4]] == [[0, 1], [2], [3, 4], [5]]
    assert torch.equal(groups.sum(0), torch.ones(99))
    # every teacher frame lies within half a student frame of the centre of the frame that holds it
    for teacher, student in ((4, 6), (4, 8), (6, 8), (2, 4)):
        n_t, n_s = conv_length(FRONT_ENDS[teacher], 400), conv_length(FRONT_ENDS[student], 400)
        (t_off, t_str), (s_off, s_str) = frame_grid(FRONT_ENDS[teacher]), frame_grid(FRONT_ENDS[student])
        holder = frame_groups(FRONT_ENDS[teacher], FRONT_ENDS[student], n_t, n_s).argmax(0)
        inside = (t_off + t_str * torch.arange(n_t) - (s_off + s_str * holder)).abs() <= s_str / 2
        assert inside[:-3].all(), (teacher, student)  # the last few go to the student's last frame


@pytest.mark.parametrize("input_layer,factor", [("conv2d2", 2), ("conv2d", 4), ("conv2d6", 6), ("conv2d8", 8)])
def test_frame_grid_is_the_centre_of_espnets_front_end_receptive_fields(input_layer, factor):
    enc = {"output_size": 8, "attention_heads": 2, "linear_units": 8, "num_blocks": 1, "input_layer": input_layer}
    model = build_model({"model": "ctc", "encoder_conf": enc}, V, input_size=16)
    assert front_end(model) == FRONT_ENDS[factor]
    assert conv_length(FRONT_ENDS[factor], 103) == subsampled_length(model, 103)
    conv = model.encoder.embed.conv
    for m in conv:
        if isinstance(m, torch.nn.Conv2d):  # positive weights: every input frame of the field shows in the gradient
            torch.nn.init.constant_(m.weight, 0.1)
            torch.nn.init.zeros_(m.bias)
    x = torch.ones(1, 1, 103, 16, requires_grad=True)
    out = conv(x)  # [1, C, T', F']
    offset, stride = frame_grid(front_end(model))
    for t in range(out.shape[2]):
        (field,) = torch.autograd.grad(out[0, :, t].sum(), x, retain_graph=True)
        frames = field[0, 0].sum(1).nonzero().squeeze(1).float()
        assert (frames.min() + frames.max()) / 2 == offset + stride * t
