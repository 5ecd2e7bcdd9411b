"""CTC greedy search: the best label per frame, repeats collapsed, blanks dropped."""
import torch


def collapse(ids, blank=0):
    """Token ids of one frame-level label sequence (a 1-D tensor) after CTC's collapse rule."""
    ids = torch.unique_consecutive(ids)
    return ids[ids != blank].tolist()


def greedy(log_probs, lens, blank=0):
    """``log_probs`` [B, T, V] with valid lengths ``lens`` [B] -> B lists of token ids."""
    best = log_probs.argmax(-1)  # one argmax for the whole batch
    return [collapse(best[b, :n], blank) for b, n in enumerate(lens.tolist())]


def ctc_greedy_search(model, enc, enc_lens):
    return greedy(model.ctc_log_probs(enc), enc_lens, model.blank)
