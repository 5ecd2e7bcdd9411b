"""CTC forward-backward occupancies: per-frame token posteriors given the transcript.

For the extended label sequence l' = (blank, y1, blank, y2, ..., yU, blank) of length S = 2U+1,
alpha_t(s) sums the paths through l'_s at frame t (emissions up to and including t), beta_t(s)
the paths from t+1 to the end, so gamma_t(s) = alpha_t(s) + beta_t(s) - log p(y | x) is the
posterior of being at s at frame t. A token's occupancy at t sums gamma over the positions that
carry it (blank included), so each row sums to 1. Used as distillation targets: no gradient.
"""
import torch

NEG_INF = float("-inf")


def ctc_min_length(target):
    """Fewest frames a CTC alignment of ``target`` needs: one per label, plus a blank between repeats."""
    target = torch.as_tensor(target)
    return len(target) + int((target[1:] == target[:-1]).sum())


def _shift(x, n):
    """x[:, s - n] at position s (-inf where s - n < 0); n < 0 shifts the other way."""
    pad = torch.full_like(x[:, :abs(n)], NEG_INF)  # at most the width of x
    return torch.cat([pad, x[:, :-n]], 1) if n > 0 else torch.cat([x[:, -n:], pad], 1)


@torch.no_grad()
def ctc_occupancies_batch(log_probs, lengths, targets, target_lengths, blank=0):
    """Batched occupancies: log_probs [B, T, V], lengths [B], targets [B, U] (padded), target_lengths [B]
    -> [B, T, V] (rows past an utterance's length are 0). Raises ValueError for an impossible alignment."""
    B, T, V = log_probs.shape
    lp = log_probs.detach().double()  # long sums of log-probabilities: keep the precision
    lengths, target_lengths = torch.as_tensor(lengths).tolist(), torch.as_tensor(target_lengths).tolist()
    for b in range(B):
        need = ctc_min_length(targets[b, :target_lengths[b]])
        if lengths[b] < max(need, 1):
            raise ValueError(f"batch item {b}: {lengths[b]} frames cannot align {target_lengths[b]} labels "
                             f"(CTC needs at least {max(need, 1)})")
    U = targets.shape[1]
    valid = torch.arange(U, device=lp.device) < torch.tensor(target_lengths, device=lp.device)[:, None]
    S = 2 * U + 1
    ext = torch.full((B, S), blank, dtype=torch.long, device=lp.device)
    ext[:, 1::2] = torch.where(valid, targets, blank)  # padding (e.g. -1) -> blank, never reached
    # A skip s-2 -> s is allowed into a label that differs from the label two positions back.
    skip = (ext != blank) & (ext != torch.cat([ext[:, :2], ext[:, :-2]], 1))
    skip[:, :2] = False
    emit = lp.gather(2, ext.unsqueeze(1).expand(B, T, S))  # [B, T, S]: log p_t(l'_s)
    S_b = torch.tensor([2 * u + 1 for u in target_lengths], device=lp.device)
    pos = torch.arange(S, device=lp.device)

    alpha = torch.full((B, T, S), NEG_INF, dtype=lp.dtype, device=lp.device)
    alpha[:, 0, :2] = emit[:, 0, :2]
    if S > 1:
        alpha[:, 0, 1] = torch.where(S_b > 1, alpha[:, 0, 1], NEG_INF)  # empty target: blank only
    for t in range(1, T):
        a = alpha[:, t - 1]
        prev = torch.stack([a, _shift(a, 1), torch.where(skip, _shift(a, 2), NEG_INF)]).logsumexp(0)
        alpha[:, t] = prev + emit[:, t]

    beta = torch.full((B, T, S), NEG_INF, dtype=lp.dtype, device=lp.device)
    last = torch.tensor([n - 1 for n in lengths], device=lp.device)
    final = torch.where((pos == S_b[:, None] - 1) | (pos == S_b[:, None] - 2), 0.0, NEG_INF).to(lp.dtype)
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            nxt = beta[:, t + 1] + emit[:, t + 1]
            step = torch.stack([nxt, _shift(nxt, -1), _shift(torch.where(skip, nxt, NEG_INF), -2)]).logsumexp(0)
        else:
            step = torch.full_like(final, NEG_INF)
        beta[:, t] = torch.where((last == t)[:, None], final, torch.where((last > t)[:, None], step, NEG_INF))

    b_idx = torch.arange(B, device=lp.device)
    a_last = alpha[b_idx, last]  # [B, S]
    log_like = torch.where((pos == S_b[:, None] - 1) | (pos == S_b[:, None] - 2), a_last, NEG_INF).logsumexp(1)
    if not torch.isfinite(log_like).all():
        raise ValueError(f"batch item {int((~torch.isfinite(log_like)).nonzero()[0])}: the transcript has "
                         "probability 0 under these log-probabilities")
    gamma = (alpha + beta - log_like[:, None, None]).exp()  # [B, T, S], 0 outside each utterance
    occ = torch.zeros(B, T, V, dtype=lp.dtype, device=lp.device)
    occ.scatter_add_(2, ext.unsqueeze(1).expand(B, T, S), gamma)
    return occ.to(log_probs.dtype)


def ctc_occupancies(log_probs, target, blank=0):
    """Occupancies [T, V] of one utterance: log_probs [T, V] (log-softmax outputs), target [U] long."""
    target = torch.as_tensor(target, dtype=torch.long)
    return ctc_occupancies_batch(log_probs[None], [log_probs.shape[0]], target[None], [len(target)], blank)[0]
