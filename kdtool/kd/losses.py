"""Frame-level distillation losses, and pooling of teacher posteriors to the student's frame rate.

Losses are summed over valid frames and divided by the batch size, the scaling of ESPnet's CTC
loss, so that ``alpha * kd + (1 - alpha) * ctc`` mixes comparable quantities.
"""
import torch


def soften(logits, temperature):
    """log_softmax(logits / T). Log-probabilities work as logits (log_softmax ignores a shift)."""
    return torch.log_softmax(logits.float() / temperature, dim=-1)  # float32 under bf16 autocast too


def kl_div_soft(teacher, student_log_probs, mask):
    """KL(teacher || student) summed over frames where ``mask`` [B, T] is True, divided by B.

    ``teacher``: probabilities [B, T, V], or sparse ``(ids [B, T, K], probs [B, T, K])`` (top-k,
    renormalized): then only the K kept tokens count, sum p log p - sum p log q, with no dense scatter.
    """
    if isinstance(teacher, (tuple, list)):
        ids, p = teacher
        log_q = student_log_probs.gather(-1, ids)
    else:
        p, log_q = teacher, student_log_probs
    # xlogy: 0 log 0 = 0; the teacher term is a constant, kept so that identical distributions give 0.
    kl = (torch.special.xlogy(p, p) - p * log_q).sum(-1)
    return torch.where(mask, kl, 0.0).sum() / kl.shape[0]


def hinton_kd_loss(teacher, student_logits, temperature, mask, teacher_is_logits=False):
    """T^2 * KL(softmax(t / T) || softmax(s / T)) (Hinton et al. 2015), scaled as ``kl_div_soft``.

    ``teacher`` is by default what stage 4 stores: posteriors already computed at temperature T
    (dense [B, T, V] or sparse (ids, probs)); with ``teacher_is_logits`` it is softened here. The
    student is softened at the same T; the T^2 factor keeps gradient magnitudes comparable across
    temperatures (the soft gradients scale as 1/T^2).
    """
    if teacher_is_logits:
        teacher = soften(teacher, temperature).exp()
    return temperature ** 2 * kl_div_soft(teacher, soften(student_logits, temperature), mask)


def _normalize(probs):
    return probs / probs.sum(-1, keepdim=True).clamp_min(1e-30)


def pool_posteriors(probs, factor):
    """Average the probability vectors of each group of ``factor`` frames: [T, V] -> [ceil(T/factor), V].

    For an integer frame-rate ratio (teacher subsampling 4, student 8: factor 2); a last, shorter
    group is averaged over the frames it has.
    """
    T, V = probs.shape
    n = -(-T // factor)
    padded = torch.cat([probs, probs.new_zeros(n * factor - T, V)])
    counts = torch.full((n, 1), float(factor), dtype=probs.dtype, device=probs.device)
    counts[-1] = T - (n - 1) * factor
    return _normalize(padded.view(n, factor, V).sum(1) / counts)


def pool_to_length(probs, target_len):
    """Resample posteriors [T, V] to [target_len, V] for any frame-rate ratio (e.g. 6x vs 4x: 1.5).

    On a common time axis teacher frame i spans [i, i+1) and student frame j spans
    [j r, (j+1) r) with r = T / target_len; each student frame averages the teacher frames weighted
    by how much of it they overlap. Each teacher frame is covered exactly once, so mass is kept:
    sum_j r * out[j] = sum_i probs[i].
    """
    T = probs.shape[0]
    r = T / target_len
    start = torch.arange(target_len, dtype=torch.float64)[:, None] * r
    i = torch.arange(T, dtype=torch.float64)[None]
    overlap = (torch.minimum(start + r, i + 1) - torch.maximum(start, i)).clamp_min(0)  # [target_len, T]
    out = overlap.to(probs) @ probs / r
    return _normalize(out)
