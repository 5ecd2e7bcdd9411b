"""Mask-CTC decoding: greedy (espnet2's ``MaskCTCInference``) and beam search, batched over utterances.

Greedy, step for step what espnet2's ``MaskCTCInference`` (espnet2/asr/maskctc_model.py) does for
one utterance:

1. greedy CTC; a collapsed token's confidence is its highest frame probability;
2. tokens below ``threshold`` become ``<mask>``;
3. with M masks and K = ``n_iterations``, run N = K (if M >= K > 0) or else M passes of the
   masked-LM decoder: the first N-1 passes fill the M // N most confident masks, the last fills
   all that are left.

Each utterance keeps its own M and N; a batch runs the decoder on the utterances still
iterating, with their partial sequences padded (the padding is masked out by the decoder).

Beam search (Gong et al., "Knowledge transfer and distillation from autoregressive to
non-autoregressive speech recognition", Interspeech 2022) keeps the B best partial fillings instead
of one; see ``maskctc_beam_nbest``.
"""
import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch
from espnet2.asr.decoder.mlm_decoder import MLMDecoder


def check_model(model):
    decoder = getattr(model, "decoder", None)
    # masked_lm: the exported decoder graph in onnxruntime (kdtool.decode.onnx)
    if not (isinstance(decoder, MLMDecoder) or getattr(decoder, "masked_lm", False)):
        raise ValueError(f"maskctc decoding needs a model with a masked-LM (mlm) decoder; this {model.kind} model "
                         f"has {'none' if decoder is None else type(decoder).__name__}")


def espnet_maskctc_greedy(model, token_list, enc, enc_lens, threshold, n_iterations):
    """The reference: espnet2's own ``MaskCTCInference``, one utterance at a time, on our model's CTC
    and decoder (what a test and the benchmark compare ``maskctc_greedy`` with). B lists of token ids."""
    from espnet2.asr.maskctc_model import MaskCTCInference  # only the comparison needs it

    holder = type("MaskCTC", (), {"ctc": model.ctc, "decoder": model.decoder, "mask_token": model.mask_token,
                                  "token_list": list(token_list)})
    ref = MaskCTCInference(holder, n_iterations=n_iterations, threshold_probability=threshold)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(max(previous, logging.WARNING))  # espnet logs every iteration at INFO
    try:
        return [ref(enc[b, :n]).yseq[1:-1].tolist() for b, n in enumerate(enc_lens.tolist())]
    finally:
        logging.getLogger().setLevel(previous)


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


def _schedule(n_masks, n_iterations):
    """(decoder passes, masks filled per pass but the last) for ``n_masks`` masks: espnet's rule,
    n_iterations=0 included."""
    steps = n_iterations if n_masks >= n_iterations > 0 else n_masks
    return steps, (n_masks // steps if steps else 0)


def _masked_ctc_outputs(model, enc, enc_lens, threshold):
    """Every utterance's masked greedy CTC output: B (tokens, mask positions)."""
    probs, ids = model.ctc_log_probs(enc).exp().max(-1)
    return [_masked_ctc_output(probs[b, :n], ids[b, :n], model.blank, model.mask_token, threshold)
            for b, n in enumerate(enc_lens.tolist())]


def _decoder_logits(model, enc, enc_lens, utts, seqs):
    """One masked-LM pass over sequences ``seqs``, the i-th for utterance ``utts[i]``: padded
    logits [len(seqs), max length, V]."""
    lens = torch.tensor([len(y) for y in seqs])
    y_in = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=model.mask_token)
    t = int(enc_lens[utts].max())
    logits, _ = model.decoder(enc[utts, :t], enc_lens[utts], y_in, lens)
    return logits


def maskctc_greedy(model, enc, enc_lens, threshold=0.99, n_iterations=10):
    """Encoder outputs [B, T, D] (valid lengths ``enc_lens``) -> B lists of token ids."""
    check_model(model)
    ys, mask_idx, n_iter, n_fill = [], [], [], []
    for y, idx in _masked_ctc_outputs(model, enc, enc_lens, threshold):
        steps, fill = _schedule(len(idx), n_iterations)
        ys.append(y)
        mask_idx.append(idx)
        n_iter.append(steps)
        n_fill.append(fill)

    for step in range(max(n_iter, default=0)):
        active = [b for b in range(len(ys)) if n_iter[b] > step]
        logits = _decoder_logits(model, enc, enc_lens, active, [ys[b] for b in active])
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


# ---------------------------------------------------------------------------------------------
# Beam search
#
# Every hypothesis of an utterance starts as its masked greedy CTC output and follows the greedy
# schedule: at each pass, it fills its own n_fill most confident masks (espnet's rule: the highest
# top logit), all the rest at its last pass. Instead of the argmax there, a hypothesis is expanded
# into the k best *joint* fillings of those positions. The masked LM predicts the positions of one
# pass independently given its input, so a filling's log-probability is the sum of its positions'
# and the k best joint fillings are exact (``_kbest_fillings``). A hypothesis' score is the summed
# decoder log-probability of every token it filled; the B best are kept per pass. At the end every
# hypothesis left is rescored with ``score + ctc_weight * log P_ctc(hypothesis | utterance)``.
# Candidates are all the masked LM's outputs, as for greedy's argmax; one holding <blank> cannot be
# a CTC output (its CTC log-likelihood is -inf).
#
# Beam 1 is greedy: one hypothesis, its best filling is the argmax at each position. A larger beam
# also keeps greedy's path when it falls out of the B best (one more row then): a path pruned early
# can end up better than all that beat it (later masks may fill badly), and plain beam search
# then returns a worse score than greedy (for about 1% of utterances with random masked LMs).
# Keeping greedy's path makes the final hypothesis score at least as well as greedy's, whatever B
# and ctc_weight.
#
# Length variants: CTC may have merged or split a token where it was unsure, i.e. at a run of
# masks. With ``length_variants``, each run of masks also starts a hypothesis with one mask less and
# one with one mask more. Hypotheses of one length fill the same number of masks per pass, so
# their scores compare; those of different lengths do not (fewer masks, fewer negative terms), so
# each length keeps its own beam of B ("group"), and only the final score, with CTC, compares
# lengths: length variants need ctc_weight > 0.
# ---------------------------------------------------------------------------------------------

@dataclass
class Hypothesis:
    tokens: list  # token ids; <mask> only if the decoder predicted <mask> itself
    score: float  # summed decoder log-probability of the tokens it filled
    ctc: float  # CTC log-likelihood of the whole sequence; None when ctc_weight is 0 (not computed)
    total: float  # score + ctc_weight * ctc: what the final ranking uses


class _Partial(NamedTuple):
    tokens: torch.Tensor  # the hypothesis so far, <mask> where not yet filled
    score: float  # summed decoder log-probability of the tokens filled so far
    greedy: bool  # on greedy's path: what beam 1 would have now


@dataclass
class _Group:
    """Hypotheses of one utterance and one length: one beam, one schedule."""
    utt: int
    hyps: list  # [_Partial], best first after each pass
    n_iter: int  # decoder passes
    n_fill: int  # masks filled per pass but the last


def _kbest_fillings(logits, k):
    """The ``k`` best joint fillings of P positions from their decoder logits [P, V]: (log-probs [n],
    tokens [n, P]), best first, n <= k. Positions are merged one at a time keeping the k best
    partial sums, which is exact because the sum is monotone in each term (a position's top k
    candidates suffice). Candidates are ranked by logit, as greedy's argmax does, so k = 1 is greedy."""
    top_tok = logits.topk(min(k, logits.size(-1)), -1)[1]
    top_lp = logits.log_softmax(-1).gather(-1, top_tok)
    best, tokens = logits.new_zeros(1), top_tok.new_zeros(1, 0)
    for lp, tok in zip(top_lp, top_tok):
        total = (best[:, None] + lp[None, :]).flatten()
        best, flat = total.topk(min(k, len(total)))
        row, col = flat // len(lp), flat % len(lp)
        tokens = torch.cat([tokens[row], tok[col, None]], 1)
    return best, tokens


def _positions_to_fill(tokens, logits, mask_token, n_fill):
    """The masks one hypothesis fills in this pass: its ``n_fill`` most confident ones (highest top
    logit, as greedy), or all of them if ``n_fill`` is None (the last pass)."""
    masks = (tokens == mask_token).nonzero().squeeze(-1)
    if n_fill is None:
        return masks
    return masks[torch.topk(logits[masks].max(-1)[0], min(n_fill, len(masks)))[1]]


def _expand(group, logits, step, beam_size, mask_token):
    """One pass of one group: every hypothesis times its k best fillings; the B best kept, and greedy's path."""
    last = step == group.n_iter - 1
    candidates = []
    for hyp, pred in zip(group.hyps, logits):
        pred = pred[:len(hyp.tokens)]
        positions = _positions_to_fill(hyp.tokens, pred, mask_token, None if last else group.n_fill)
        fill_lp, fills = _kbest_fillings(pred[positions], beam_size)
        for rank, (lp, fill) in enumerate(zip(fill_lp.tolist(), fills)):
            tokens = hyp.tokens.clone()
            tokens[positions] = fill
            candidates.append(_Partial(tokens, hyp.score + lp, hyp.greedy and rank == 0))
    group.hyps = _prune(candidates, beam_size)


def _prune(candidates, beam_size):
    """The ``beam_size`` best candidates, one per token sequence (two paths can meet: e.g. two length
    variants filled alike), plus greedy's path if it is not among them. A stable sort keeps ties in
    expansion order."""
    best = {}  # token sequence -> its best candidate; dicts keep the (sorted) insertion order
    for c in sorted(candidates, key=lambda c: -c.score):
        best.setdefault(tuple(c.tokens.tolist()), c)
    ranked = list(best.values())
    kept = ranked[:beam_size]
    greedy = next((c for c in candidates if c.greedy), None)
    if greedy is not None:
        same = best[tuple(greedy.tokens.tolist())]  # greedy's tokens, with the best score any path gave them
        at = next((i for i, c in enumerate(kept) if c is same), None)
        if at is None:
            kept.append(same._replace(greedy=True))
        else:  # greedy's path goes on from there: where it goes depends on the tokens only
            kept[at] = same._replace(greedy=True)
    return kept


def _length_variants(y, mask_token):
    """(shorter, longer): ``y`` with one mask removed from / added to each run of masks."""
    is_mask = (y == mask_token).tolist()
    starts = [i for i, m in enumerate(is_mask) if m and (i == 0 or not is_mask[i - 1])]
    mask = y.new_tensor([mask_token])
    return ([torch.cat([y[:i], y[i + 1:]]) for i in starts],
            [torch.cat([y[:i], mask, y[i:]]) for i in starts])


def _start_groups(masked, mask_token, n_iterations, length_variants):
    """The groups every utterance starts with: its masked CTC output and, with ``length_variants``,
    the skeletons one token shorter and one longer (one group per length)."""
    groups = []
    for b, (y, idx) in enumerate(masked):
        starts = [(len(idx), [y])]
        if length_variants and len(idx):
            shorter, longer = _length_variants(y, mask_token)
            starts += [(len(idx) - 1, shorter), (len(idx) + 1, longer)]
        groups += [_Group(b, [_Partial(s, 0.0, s is y) for s in seqs], *_schedule(m, n_iterations))
                   for m, seqs in starts]
    return groups


def _ctc_log_likelihoods(log_probs, hyps, blank):
    """log P_ctc(y | utterance) for each token list y in ``hyps``, from one utterance's CTC
    log-probabilities [T, V]. Only blank's and the hypotheses' columns are kept, so the cost does not
    grow with the vocabulary; a hypothesis holding blank (the decoder may predict it) cannot be a CTC
    output: -inf."""
    if len(log_probs) == 0:  # no frames (ctc_loss rejects that): only the empty output is possible
        return [0.0 if not y else float("-inf") for y in hyps]
    used = sorted({t for y in hyps for t in y} - {blank})
    column = {t: i + 1 for i, t in enumerate(used)}  # blank is column 0
    small = log_probs[:, [blank] + used]
    valid = [y for y in hyps if blank not in y]
    out = dict.fromkeys(range(len(hyps)), float("-inf"))
    if valid:
        # on the log-probabilities' device: CUDA's ctc_loss takes long targets from the GPU only
        targets = torch.tensor([column[t] for y in valid for t in y], dtype=torch.long, device=small.device)
        loss = torch.nn.functional.ctc_loss(
            small[:, None].expand(-1, len(valid), -1), targets, torch.full((len(valid),), len(small)),
            torch.tensor([len(y) for y in valid]), blank=0, reduction="none", zero_infinity=False)
        rows = [i for i, y in enumerate(hyps) if blank not in y]
        out.update(zip(rows, (-loss).tolist()))
    return [out[i] for i in range(len(hyps))]


def maskctc_beam_nbest(model, enc, enc_lens, beam_size=5, threshold=0.99, n_iterations=10, ctc_weight=0.3,
                       length_variants=False):
    """Encoder outputs [B, T, D] -> per utterance, its final hypotheses (``Hypothesis``), best first.

    Each decoder pass runs once for the whole batch: every hypothesis of every utterance still
    iterating is one row."""
    check_model(model)
    _check_weights(ctc_weight, length_variants)
    groups = _start_groups(_masked_ctc_outputs(model, enc, enc_lens, threshold), model.mask_token, n_iterations,
                           length_variants)
    for step in range(max((g.n_iter for g in groups), default=0)):
        active = [g for g in groups if g.n_iter > step]
        logits = _decoder_logits(model, enc, enc_lens, [g.utt for g in active for _ in g.hyps],
                                 [hyp.tokens for g in active for hyp in g.hyps])
        rows = torch.cumsum(torch.tensor([0] + [len(g.hyps) for g in active]), 0).tolist()
        for g, start, end in zip(active, rows, rows[1:]):
            _expand(g, logits[start:end], step, beam_size, model.mask_token)
    return _rescore(model, enc, enc_lens, groups, ctc_weight)


def _rescore(model, enc, enc_lens, groups, ctc_weight):
    """Every utterance's hypotheses, all lengths together, ranked by score + ctc_weight * CTC."""
    finals = [[] for _ in range(len(enc_lens))]
    for g in groups:
        finals[g.utt] += [(hyp.tokens.tolist(), hyp.score) for hyp in g.hyps]
    log_probs = model.ctc_log_probs(enc) if ctc_weight > 0 else None
    out = []
    for b, (hyps, n) in enumerate(zip(finals, enc_lens.tolist())):
        if ctc_weight > 0:
            ctc = _ctc_log_likelihoods(log_probs[b, :n], [y for y, _ in hyps], model.blank)
            scored = [Hypothesis(y, s, c, s + ctc_weight * c) for (y, s), c in zip(hyps, ctc)]
        else:
            scored = [Hypothesis(y, s, None, s) for y, s in hyps]
        out.append(sorted(scored, key=lambda h: -h.total))  # stable: ties (-inf included) keep the beam's order
    return out


def _check_weights(ctc_weight, length_variants):
    if ctc_weight < 0:
        raise ValueError(f"maskctc_beam: ctc_weight must be >= 0, not {ctc_weight}")
    if length_variants and ctc_weight == 0:
        raise ValueError("maskctc_beam: length_variants needs ctc_weight > 0: hypotheses of different lengths "
                         "compare only with CTC (the decoder's score sums one log-probability per filled mask, so "
                         "alone it favours the shorter)")


class MaskCTCBeamSearch:
    """The runner's ``maskctc_beam`` method: options checked once, then called per batch."""

    def __init__(self, model, beam_size=5, threshold=0.99, n_iterations=10, ctc_weight=0.3, length_variants=False):
        check_model(model)
        _check_weights(ctc_weight, length_variants)  # before any feature is read
        vocab = model.vocab_size  # the masked LM's outputs: every token, <mask> included
        if beam_size > vocab:
            logging.warning("beam_size %d is larger than the vocabulary: using %d", beam_size, vocab)
            beam_size = vocab
        self.model = model
        self.options = dict(beam_size=beam_size, threshold=threshold, n_iterations=n_iterations,
                            ctc_weight=ctc_weight, length_variants=length_variants)

    def nbest(self, enc, enc_lens):
        return maskctc_beam_nbest(self.model, enc, enc_lens, **self.options)

    def __call__(self, enc, enc_lens):
        """Encoder outputs [B, T, D] -> B lists of token ids (each utterance's best hypothesis)."""
        return [hyps[0].tokens for hyps in self.nbest(enc, enc_lens)]
