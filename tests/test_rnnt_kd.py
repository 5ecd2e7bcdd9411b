"""Transducer lattice distillation (kdtool.kd.rnnt): collapsed posteriors, lattice KL, storage, stage-4 helper."""
import pytest
import torch

from kdtool.kd.rnnt import (BLANK, collapsed_log_probs, from_matrix, lattice_kl, lattice_mask, lattice_occupancy, pad_lattices,
                            teacher_lattice_posteriors, to_matrix)
from kdtool.models.asr import subsampled_length
from kdtool.models.build import build_model

torch.set_num_threads(1)
V = 7
# A padded batch: utterance 0 has 5 frames and 3 labels, utterance 1 has 3 frames and 1 label.
YS = torch.tensor([[3, 1, 5], [2, -1, -1]])
YS_LENS = torch.tensor([3, 1])
ENC_LENS = torch.tensor([5, 3])
T, U1 = 5, 4


def rand_logits(seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(2, T, U1, V, generator=g)


def brute_force(logits, temperature=1.0):
    """Collapsed probabilities by loops, in float64: {(b, t, u): [p_blank, p_label, p_other]} at valid nodes."""
    out = {}
    for b in range(logits.shape[0]):
        for t in range(int(ENC_LENS[b])):
            for u in range(int(YS_LENS[b]) + 1):
                p = torch.softmax(logits[b, t, u].double() / temperature, -1)
                label = p[YS[b, u]].item() if u < YS_LENS[b] else 0.0
                out[b, t, u] = [p[0].item(), label, 1 - p[0].item() - label]
    return out


def test_lattice_mask_marks_frames_below_enc_lens_and_labels_up_to_U():
    mask = lattice_mask(ENC_LENS, YS_LENS, T, U1)
    assert mask.shape == (2, T, U1) and mask.dtype == torch.bool
    assert set(zip(*[i.tolist() for i in mask.nonzero(as_tuple=True)])) == set(brute_force(rand_logits(0)))
    assert mask.sum() == 5 * 4 + 3 * 2


def test_collapsed_probs_sum_to_one_and_match_brute_force():
    logits = rand_logits(1)
    lp = collapsed_log_probs(logits, YS, YS_LENS)
    assert lp.shape == (2, T, U1, 3)
    mask = lattice_mask(ENC_LENS, YS_LENS, T, U1)
    valid = lp.exp()[mask]
    assert not torch.isnan(lp[mask]).any()
    assert torch.allclose(valid.sum(-1), torch.ones(len(valid)), atol=1e-5)
    for (b, t, u), expected in brute_force(logits).items():
        assert torch.allclose(lp[b, t, u].exp().double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5), (b, t, u)
    # No next label at u = U: its log-probability is -inf, the other labels hold all non-blank mass.
    assert lp[0, :, 3, 1].eq(float("-inf")).all() and lp[1, :3, 1, 1].eq(float("-inf")).all()


def test_other_labels_column_is_accurate_when_tiny():
    """log(1 - p_blank - p_y) by subtraction would be log(0) = -inf here; the logsumexp keeps it."""
    logits = torch.full((1, 1, 2, V), -60.0)
    logits[..., 0] = 40.0  # blank
    logits[0, 0, 0, 4] = 30.0  # the next label
    lp = collapsed_log_probs(logits, torch.tensor([[4]]), torch.tensor([1]))
    # 5 other labels at -60 against blank at 40: log(5 e^-100) - log(1 + e^-10 + ...).
    assert lp[0, 0, 0, 2].item() == pytest.approx(torch.tensor(5.0).log().item() - 100 - 4.54e-5, abs=1e-3)
    assert lp[0, 0, 1, 2].item() == pytest.approx(torch.tensor(6.0).log().item() - 100, abs=1e-3)


def test_transcript_with_blank_is_rejected():
    with pytest.raises(ValueError, match="contains the blank id 0"):
        collapsed_log_probs(rand_logits(0), torch.tensor([[3, 0, 5], [2, -1, -1]]), YS_LENS)


def test_lattice_kl_is_zero_against_itself_and_grows_as_distributions_part():
    s, t = rand_logits(2), rand_logits(3)
    mask = lattice_mask(ENC_LENS, YS_LENS, T, U1)
    teacher = collapsed_log_probs(t, YS, YS_LENS)
    assert lattice_kl(teacher, t, YS, YS_LENS, mask).abs() < 1e-5
    # Student = mixture (1-a) teacher + a other over V tokens: its collapsed distribution is the same
    # mixture of the collapsed ones, so KL(teacher || it) is convex in a, 0 at a=0: it increases.
    p_t, p_s = torch.softmax(t, -1), torch.softmax(s, -1)
    kls = [lattice_kl(teacher, ((1 - a) * p_t + a * p_s).log(), YS, YS_LENS, mask).item()
           for a in torch.linspace(0, 1, 6)]
    assert kls[0] < 1e-5 and all(b > a for a, b in zip(kls, kls[1:])), kls


def test_lattice_kl_equals_direct_computation_with_T2_scaling_and_masking():
    s, t = rand_logits(4), rand_logits(5)
    mask = lattice_mask(ENC_LENS, YS_LENS, T, U1)
    for temp in (1.0, 2.5):
        p, q = brute_force(t, temp), brute_force(s, temp)
        direct = sum(pi * (torch.tensor(pi).log() - torch.tensor(qi).log()).item()
                     for node in p for pi, qi in zip(p[node], q[node]) if pi > 0) / 2
        teacher = collapsed_log_probs(t, YS, YS_LENS, temperature=temp)
        loss = lattice_kl(teacher, s, YS, YS_LENS, mask, temperature=temp)
        assert loss.item() == pytest.approx(temp ** 2 * direct, rel=1e-4)
    # Padding nodes do not count, whatever the teacher holds there.
    garbage = teacher.masked_fill(~mask[..., None], float("nan"))
    assert lattice_kl(garbage, s, YS, YS_LENS, mask, temperature=temp).item() == pytest.approx(loss.item(), rel=1e-6)


def test_gradients_flow_to_the_student_only_and_are_finite():
    s, t = rand_logits(6).requires_grad_(), rand_logits(7).requires_grad_()
    mask = lattice_mask(ENC_LENS, YS_LENS, T, U1)
    loss = lattice_kl(collapsed_log_probs(t, YS, YS_LENS, temperature=2.0), s, YS, YS_LENS, mask, temperature=2.0)
    loss.backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad[mask].abs().sum() > 0
    assert s.grad[~mask].abs().sum() == 0  # padding nodes get no gradient


def test_matrix_round_trip_and_mismatched_transcript_is_caught():
    probs = collapsed_log_probs(rand_logits(8), YS, YS_LENS)[0].exp()  # [T=5, U+1=4, 3]
    mat = to_matrix(probs)
    assert mat.shape == (20, 3) and torch.equal(mat[2 * 4 + 3], probs[2, 3])
    assert torch.equal(from_matrix(mat, 3), probs)
    assert torch.equal(from_matrix(mat.numpy(), 3, num_frames=5), probs)
    with pytest.raises(ValueError, match=r"20 rows, not a multiple of U\+1 = 3: the transcript \(2 labels\) "
                                         r"does not match the lattice dump"):
        from_matrix(mat, 2)
    with pytest.raises(ValueError, match="stored lattice has 10 frames for a transcript of 1 labels, the model 5"):
        from_matrix(mat, 1, num_frames=5)
    with pytest.raises(ValueError, match=r"\[T\*\(U\+1\), 3\] matrix, got \[20, 4\]"):
        from_matrix(torch.zeros(20, 4), 3)
    with pytest.raises(ValueError, match=r"utterance 1 of the batch: teacher lattice \[3, 3, 3\], student expects \[3, 2, 3\]"):
        pad_lattices([probs, probs[:3, :3]], ENC_LENS, YS_LENS, T, U1)


@pytest.fixture(scope="module")
def tiny_transducer():
    torch.manual_seed(0)
    model = build_model({"model": "transducer", "encoder_conf": {"output_size": 16, "attention_heads": 2,
                                                                 "linear_units": 32, "num_blocks": 1},
                         "decoder_conf": {"hidden_size": 16}, "joint_net_conf": {"joint_space_size": 16}},
                        vocab_size=12)
    feats, feats_lens = torch.randn(2, 90, 80), torch.tensor([90, 70])
    ys, ys_lens = torch.tensor([[3, 4, 5, 6], [7, 8, -1, -1]]), torch.tensor([4, 2])
    return model.eval(), feats, feats_lens, ys, ys_lens


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_teacher_lattice_posteriors_match_the_models_joint_logits(tiny_transducer, temperature):
    model, feats, feats_lens, ys, ys_lens = tiny_transducer
    lattices = teacher_lattice_posteriors(model, feats, feats_lens, ys, ys_lens, temperature)
    assert [list(p.shape) for p in lattices] == [[subsampled_length(model, 90), 5, 3],
                                                 [subsampled_length(model, 70), 3, 3]]
    assert not any(p.requires_grad for p in lattices)
    with torch.no_grad():
        enc, enc_lens = model.encode(feats, feats_lens)
        direct = collapsed_log_probs(model.joint_logits(enc, ys), ys, ys_lens, temperature=temperature).exp()
    for b, p in enumerate(lattices):
        assert torch.allclose(p.sum(-1), torch.ones(p.shape[:2]), atol=1e-5)
        assert torch.allclose(p, direct[b, :enc_lens[b], :ys_lens[b] + 1], atol=1e-5)
    # Through storage and batching, the teacher against its own joint logits: KL 0.
    stored = [from_matrix(to_matrix(p).numpy(), int(n)) for p, n in zip(lattices, ys_lens)]
    with torch.no_grad():
        logits = model.joint_logits(enc, ys)
    teacher = pad_lattices(stored, enc_lens, ys_lens, logits.shape[1], logits.shape[2])
    mask = lattice_mask(enc_lens, ys_lens, logits.shape[1], logits.shape[2])
    assert lattice_kl(teacher, logits, ys, ys_lens, mask, temperature).abs() < 1e-4


def brute_force_occupancy(probs, T_b, U_b):
    """Node occupancy by enumerating every path of one lattice [T, U+1, 3] (probabilities): {(t, u): gamma}."""
    import itertools
    visits, total = {}, 0.0
    for labels_at in itertools.combinations(range(T_b - 1 + U_b), U_b):  # which of the first T_b-1+U_b steps emit a label
        t = u = 0
        p, nodes = 1.0, []
        for step in range(T_b - 1 + U_b):
            nodes.append((t, u))
            if step in labels_at:
                p, u = p * probs[t, u, 1].item(), u + 1
            else:
                p, t = p * probs[t, u, 0].item(), t + 1
        nodes.append((t, u))
        p *= probs[t, u, 0].item()  # the final blank at (T_b-1, U_b)
        total += p
        for node in nodes:
            visits[node] = visits.get(node, 0.0) + p
    return {node: v / total for node, v in visits.items()}


def test_lattice_occupancy_matches_path_enumeration_and_sums_to_T_plus_U():
    teacher = collapsed_log_probs(rand_logits(6, scale=1.5), YS, YS_LENS)
    gamma = lattice_occupancy(teacher, ENC_LENS, YS_LENS)
    mask = lattice_mask(ENC_LENS, YS_LENS, T, U1)
    assert (gamma[~mask] == 0).all() and (gamma >= 0).all()
    for b in range(2):
        T_b, U_b = int(ENC_LENS[b]), int(YS_LENS[b])
        assert gamma[b].sum().item() == pytest.approx(T_b + U_b, rel=1e-5)
        want = brute_force_occupancy(teacher[b].exp().double(), T_b, U_b)
        for t in range(T_b):
            for u in range(U_b + 1):
                assert gamma[b, t, u].item() == pytest.approx(want.get((t, u), 0.0), abs=1e-5), (b, t, u)
    # the start and the last node are on every path; a probability stored as 0 leaves the rest finite
    assert gamma[0, 0, 0].item() == pytest.approx(1.0) and gamma[1, 2, 1].item() == pytest.approx(1.0)
    zeroed = teacher.clone()
    zeroed[0, 1, 0, BLANK] = float("-inf")
    g = lattice_occupancy(zeroed, ENC_LENS, YS_LENS)
    assert torch.isfinite(g).all() and g[0, 2, 0].item() == pytest.approx(0.0, abs=1e-6)  # reached only by that blank
    assert g[0].sum().item() == pytest.approx(5 + 3, rel=1e-5)


def test_occupancy_weighted_lattice_kl_is_zero_against_itself_and_weights_each_node():
    s, t = rand_logits(7), rand_logits(8)
    mask = lattice_mask(ENC_LENS, YS_LENS, T, U1)
    teacher = collapsed_log_probs(t, YS, YS_LENS)
    gamma = lattice_occupancy(teacher, ENC_LENS, YS_LENS)
    assert lattice_kl(teacher, t, YS, YS_LENS, mask, node_weights=gamma).abs() < 1e-5
    # weight one node only: the loss is that node's KL
    one = torch.zeros_like(gamma)
    one[0, 2, 1] = 1.0
    p, q = teacher[0, 2, 1].exp(), collapsed_log_probs(s, YS, YS_LENS)[0, 2, 1].exp()
    direct = (p * (p.log() - q.log())).sum().item() / 2
    assert lattice_kl(teacher, s, YS, YS_LENS, mask, node_weights=one).item() == pytest.approx(direct, rel=1e-4)
