"""Mask-CTC greedy decoding, batched over utterances, step for step what espnet2's
``MaskCTCInference`` (espnet2/asr/maskctc_model.py) does for one utterance:

1. greedy CTC; a collapsed token's confidence is its highest frame probability;
2. tokens below ``threshold`` become ``<mask>``;
3. with M masks and K = ``n_iterations``, run N = K (if M >= K > 0) or else M passes of the
   masked-LM decoder: the first N-1 passes fill the M // N most confident masks, the last fills
   all that are left.

Each utterance keeps its own M and N; a batch runs the decoder on the utterances still
iterating, with their partial sequences padded (the padding is masked out by the decoder).
"""
import torch
from espnet2.asr.decoder.mlm_decoder import MLMDecoder


def check_model(model):
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, MLMDecoder):
        raise ValueError(f"maskctc decoding needs a model with a masked-LM (mlm) decoder; this {model.kind} model "
                         f"has {'none' if decoder is None else type(decoder).__name__}")


def _masked_ctc_output(probs, ids, blank, mask_token, threshold):
    """One utterance's greedy CTC tokens with the low-confidence ones replaced by <mask>."""
    tok, counts = torch.unique_consecutive(ids, return_counts=True)
    run = torch.repeat_interleave(torch.arange(len(tok), device=ids.device), counts)
    # float64, as espnet compares numpy float64 confidences with the threshold
    conf = torch.zeros(len(tok), dtype=torch.float64, device=ids.device).scatter_reduce(
        0, run, probs.double(), "amax", include_self=False)
    keep = tok != blank
    tok, conf = tok[keep], conf[keep]
    masked = conf < threshold
    return torch.where(masked, torch.full_like(tok, mask_token), tok), masked.nonzero().squeeze(-1)


def maskctc_greedy(model, enc, enc_lens, threshold=0.99, n_iterations=10):
    """Encoder outputs [B, T, D] (valid lengths ``enc_lens``) -> B lists of token ids."""
    check_model(model)
    probs, ids = model.ctc_log_probs(enc).exp().max(-1)
    ys, mask_idx, n_iter, n_fill = [], [], [], []
    for b, n in enumerate(enc_lens.tolist()):
        y, idx = _masked_ctc_output(probs[b, :n], ids[b, :n], model.blank, model.mask_token, threshold)
        m = len(idx)
        steps = n_iterations if m >= n_iterations > 0 else m  # espnet's rule, n_iterations=0 included
        ys.append(y)
        mask_idx.append(idx)
        n_iter.append(steps)
        n_fill.append(m // steps if steps else 0)

    for step in range(max(n_iter, default=0)):
        active = [b for b in range(len(ys)) if n_iter[b] > step]
        lens = torch.tensor([len(ys[b]) for b in active])
        y_in = torch.nn.utils.rnn.pad_sequence([ys[b] for b in active], batch_first=True,
                                               padding_value=model.mask_token)
        t = int(enc_lens[active].max())
        logits, _ = model.decoder(enc[active, :t], enc_lens[active], y_in, lens)
        for row, b in enumerate(active):
            pred, idx = logits[row, :len(ys[b])], mask_idx[b]
            if step < n_iter[b] - 1:  # fill the most confident masks
                score, pred_id = pred[idx].max(-1)
                cand = torch.topk(score, min(n_fill[b], len(idx)))[1]
                ys[b][idx[cand]] = pred_id[cand]
                mask_idx[b] = (ys[b] == model.mask_token).nonzero().squeeze(-1)
            else:  # last pass: fill all that are left
                ys[b][idx] = pred[idx].argmax(-1)
    return [y.tolist() for y in ys]
