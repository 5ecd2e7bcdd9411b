"""Transducer (RNN-T) distillation over the output lattice, as in Panchapagesan et al. 2021,
"Efficient knowledge distillation for RNN-transducer models".

A transducer's joint network gives, at every lattice node (t, u) (frame t, u labels emitted), a
distribution over V tokens. Distilling all V entries at all T x (U+1) nodes is costly to store and
to compute, so the distribution is *collapsed* to three events that are what the transducer loss
depends on:

    0  blank                  p(blank | t, u)             move to (t+1, u)
    1  the correct next label p(y_{u+1} | t, u)           move to (t, u+1)
    2  any other label        1 - p(blank) - p(y_{u+1})   leaves the reference alignment lattice

At u = U there is no next label: column 1 holds probability 0 (log-probability -inf) and column 2
all non-blank tokens, so the three entries still sum to 1. Every function here handles that -inf
without producing NaN (values or gradients).

The distillation loss is T^2 * sum over valid nodes of KL(teacher || student) / B, the scaling of
``kdtool.kd.losses`` (summed over valid positions, divided by the batch size, Hinton T^2). Summed
over all T x (U+1) nodes it grows with T * U while the RNN-T loss grows with T + U, and most nodes lie
far from any likely alignment; ``lattice_occupancy`` weights each node by how often the teacher's
alignments pass it (kd_conf ``lattice_nodes: occupancy``), so the term sums T + U nodes' worth.

Stage 4 calls ``teacher_lattice_posteriors`` and stores ``to_matrix`` of each utterance's lattice
as its soft-label matrix ([T*(U+1), 3], rows sum to 1); stage 5 reads them back with
``from_matrix``, batches them with ``pad_lattices`` and calls ``lattice_kl`` on the student's
``joint_logits``. Teacher and student must have the same number of encoder frames (the same
subsampling): the lattices are compared node by node.
"""
import torch

from kdtool.models.asr import IGNORE_ID

BLANK, LABEL, OTHER = 0, 1, 2


def lattice_mask(enc_lens, ys_lens, T, U1):
    """bool [B, T, U1] (U1 = U+1): True at the nodes (t, u) with t < enc_lens[b] and u <= ys_lens[b]."""
    t = torch.arange(T, device=enc_lens.device)[None, :, None] < enc_lens[:, None, None]
    u = torch.arange(U1, device=ys_lens.device)[None, None, :] <= ys_lens[:, None, None]
    return t & u


def _next_labels(ys, ys_lens, U1):
    """The label y_{u+1} that follows node u, [B, U1] long, and whether there is one (u < ys_lens[b])."""
    ys = ys[:, :U1 - 1]
    labels = torch.nn.functional.pad(ys, (0, U1 - ys.size(1)), value=IGNORE_ID)  # node U has no next label
    has = torch.arange(U1, device=ys.device)[None, :] < ys_lens[:, None]
    return torch.where(has, labels, 0).long(), has


def collapsed_log_probs(logits, ys, ys_lens, blank=0, temperature=1.0):
    """Log-probabilities [B, T, U+1, 3] of (blank, next label, other labels) under softmax(logits / T).

    ``logits``: joint-network outputs [B, T, U+1, V] (float; computed in float32); ``ys``: labels
    [B, >= U] padded with -1; ``ys_lens``: [B]. At u >= ys_lens[b] column 1 is -inf (no next label).
    Column 2 is a logsumexp over the remaining tokens, not log(1 - p_blank - p_y), so it stays
    accurate when it is tiny. Nodes outside ``lattice_mask`` hold finite or -inf don't-care values.
    """
    B, T, U1, V = logits.shape
    labels, has = _next_labels(ys, ys_lens, U1)
    if (has & (labels == blank)).any():
        raise ValueError(f"a transcript contains the blank id {blank}; the collapsed lattice needs labels != blank")
    z = logits.float() / temperature
    lse = z.logsumexp(-1)
    idx = labels[:, None, :, None].expand(B, T, U1, 1)
    log_blank = z[..., blank] - lse
    log_label = (z.gather(-1, idx).squeeze(-1) - lse).masked_fill(~has[:, None, :], float("-inf"))
    excluded = torch.nn.functional.one_hot(labels, V).bool() & has[..., None]  # [B, U1, V]: y_{u+1}, if any
    excluded[..., blank] = True
    log_other = z.masked_fill(excluded[:, None], float("-inf")).logsumexp(-1) - lse
    return torch.stack([log_blank, log_label, log_other], dim=-1)


def lattice_occupancy(log_probs, enc_lens, ys_lens):
    """How often the teacher's alignments pass each node: gamma [B, T, U+1] (float32, 0 off the lattice).

    ``log_probs`` [B, T, U+1, 3]: collapsed log-probabilities (only blank and next label are used).
    A forward-backward pass over the reference lattice, as in the RNN-T loss: alpha(t, u) sums the
    paths from (0, 0) to the node, beta(t, u) the paths from it to the final blank at (T_b-1, U_b), and
    gamma = alpha * beta / P(y | x). Every path visits T_b + U_b nodes, so gamma sums to T_b + U_b.
    Rows are done at once (a log-cumsum-exp along u), in float64 with log-probabilities floored at
    -1e4 so that a probability stored as 0 stays finite; the teacher's values are not differentiated.
    """
    B, T, U1, _ = log_probs.shape
    valid = lattice_mask(enc_lens, ys_lens, T, U1)
    lp = torch.where(valid[..., None], log_probs.detach().double(), -1e4).clamp(min=-1e4)  # padding: whatever it holds
    lb, ll = lp[..., BLANK], lp[..., LABEL]
    u = torch.arange(U1, device=lp.device)
    # C[b, t, u] = sum_{j < u} ll[b, t, j]: the log-probability of emitting labels j..u-1 at frame t
    C = torch.nn.functional.pad(ll.cumsum(-1)[..., :-1], (1, 0))
    alpha = torch.full_like(lb, float("-inf"))
    into = torch.where(u == 0, 0.0, float("-inf")).expand(B, U1)  # alpha enters row 0 at (0, 0)
    for t in range(T):
        alpha[:, t] = C[:, t] + torch.logcumsumexp(into - C[:, t], -1)
        into = alpha[:, t] + lb[:, t]
    beta = torch.full_like(lb, float("-inf"))
    t_idx = torch.arange(T, device=lp.device)
    end = torch.where(u[None] == ys_lens[:, None], 0.0, float("-inf"))  # [B, U1]: leaving (T_b-1, U_b) ends the path
    below = torch.full((B, U1), float("-inf"), dtype=lp.dtype, device=lp.device)
    for t in reversed(range(T)):
        nxt = torch.where((t_idx[t] == enc_lens - 1)[:, None], end, below)  # beta(t+1, .), or the end
        out = torch.where((t_idx[t] < enc_lens)[:, None], nxt + lb[:, t], float("-inf"))
        x = out + C[:, t]  # beta(t, u) = -C(u) + logsumexp_{k >= u} (out(k) + C(k))
        beta[:, t] = torch.logcumsumexp(x.flip(-1), -1).flip(-1) - C[:, t]
        below = beta[:, t]
    log_z = beta[:, 0, 0]
    gamma = (alpha + beta - log_z[:, None, None]).exp()
    return torch.where(valid, gamma, 0.0).float()


def lattice_kl(teacher_log_probs, student_logits, ys, ys_lens, mask, temperature=1.0, node_weights=None):
    """T^2 * sum over nodes where ``mask`` [B, T, U+1] of KL(teacher || student) / B: a scalar.
    ``node_weights`` [B, T, U+1] (e.g. ``lattice_occupancy``) weight each node's KL; None: all nodes 1.

    ``teacher_log_probs`` [B, T, U+1, 3]: the teacher's collapsed log-probabilities, already at
    temperature T (what stage 4 stores, logged); it is detached, so gradients reach the student only.
    ``student_logits`` [B, T, U+1, V]: the student's joint logits, collapsed here at temperature T.
    Entries with teacher probability 0 contribute 0 (0 log 0 = 0, as xlogy), even where the
    student's log-probability is -inf (column 1 at u = U); masked nodes contribute 0 whatever the
    teacher holds there (padding).
    """
    m = mask[..., None]
    log_p = torch.where(m, teacher_log_probs.detach().float(), float("-inf"))
    p = log_p.exp()
    log_q = collapsed_log_probs(student_logits, ys, ys_lens, temperature=temperature)
    # 0 * (-inf) is NaN where p = 0; the where drops it, and its backward sends 0 * p = 0 to log_q there.
    kl = torch.where(p > 0, p * (log_p - log_q), 0.0)
    if node_weights is not None:
        kl = kl * node_weights[..., None]
    return temperature ** 2 * kl.sum() / student_logits.shape[0]


def to_matrix(probs):
    """[T_b, U_b+1, 3] -> [T_b*(U_b+1), 3], row t*(U_b+1) + u = node (t, u): one soft-label matrix."""
    if probs.ndim != 3 or probs.shape[-1] != 3:
        raise ValueError(f"a collapsed lattice is [T, U+1, 3], got {list(probs.shape)}")
    return probs.reshape(-1, 3)


def from_matrix(mat, U_b, num_frames=None):
    """[T_b*(U_b+1), 3] -> [T_b, U_b+1, 3] for a transcript of ``U_b`` labels.

    Raises ValueError when the rows do not split into nodes (t, 0..U_b), that is when the
    transcript length does not match the stored lattice, or, given ``num_frames``, when T_b differs.
    """
    mat = torch.as_tensor(mat)
    if mat.ndim != 2 or mat.shape[1] != 3:
        raise ValueError(f"a stored lattice is a [T*(U+1), 3] matrix, got {list(mat.shape)}")
    rows, U1 = mat.shape[0], U_b + 1
    if rows == 0 or rows % U1:
        raise ValueError(f"stored lattice has {rows} rows, not a multiple of U+1 = {U1}: the transcript "
                         f"({U_b} labels) does not match the lattice dump (dumped with other transcripts?)")
    if num_frames is not None and rows != num_frames * U1:
        raise ValueError(f"stored lattice has {rows // U1} frames for a transcript of {U_b} labels, the "
                         f"model {num_frames}: teacher and student frame rates (or data) differ")
    return mat.reshape(rows // U1, U1, 3)


def pad_lattices(lattices, enc_lens, ys_lens, T, U1):
    """Batch per-utterance teacher probabilities [T_b, U_b+1, 3] into log-probabilities [B, T, U1, 3]
    for ``lattice_kl`` (padding -inf, masked anyway). Each lattice must have exactly enc_lens[b]
    frames and ys_lens[b]+1 columns (the student's), else ValueError."""
    out = torch.full((len(lattices), T, U1, 3), float("-inf"), device=enc_lens.device)
    for b, lat in enumerate(lattices):
        want = (int(enc_lens[b]), int(ys_lens[b]) + 1, 3)
        if tuple(lat.shape) != want:
            raise ValueError(f"utterance {b} of the batch: teacher lattice {list(lat.shape)}, student expects "
                             f"{list(want)} (frames, labels+1, 3): frame rates or transcripts differ")
        out[b, :want[0], :want[1]] = lat.to(out).log()
    return out


@torch.no_grad()
def teacher_lattice_posteriors(model, feats, feats_lens, ys, ys_lens, temperature=1.0):
    """Stage 4: the teacher's collapsed probabilities, a list of B tensors [T_b, U_b+1, 3] (T_b its
    encoder frames), rows summing to 1, on the model's device, without grad. Put the model in eval().

    The encoder runs on the batch; the joint network runs one utterance at a time, unpadded, since
    its logits take T_b * (U_b+1) * V * 4 bytes (about 3x that at peak with the softmax temporaries):
    e.g. 250 frames, 100 labels, V = 5000: 0.5 GB per utterance. The stored lattice is 3 floats a node.
    """
    enc, enc_lens = model.encode(feats, feats_lens)
    out = []
    for b in range(enc.size(0)):
        T_b, U_b = int(enc_lens[b]), int(ys_lens[b])
        logits = model.joint_logits(enc[b:b + 1, :T_b], ys[b:b + 1, :U_b])
        out.append(collapsed_log_probs(logits, ys[b:b + 1, :U_b], ys_lens[b:b + 1], model.blank, temperature)[0].exp())
    return out
