"""Joint CTC/attention beam search for the autoregressive model, with espnet's BatchBeamSearch
set up as espnet2's asr_inference sets it (it vectorizes the beam; utterances go one at a time)."""
import logging

import torch
from espnet.nets.batch_beam_search import BatchBeamSearch
from espnet.nets.scorer_interface import BatchScorerInterface
from espnet.nets.scorers.ctc import CTCPrefixScorer
from espnet.nets.scorers.length_bonus import LengthBonus


class NeverEmit(BatchScorerInterface):
    """Rules out tokens no hypothesis may hold: <blank> and <mask> share the AR decoder's output
    layer with the real tokens (one token list for every kind) but are never its targets; an
    undertrained decoder could still pick them."""

    def __init__(self, n_vocab, ids):
        self.penalty = torch.zeros(n_vocab)
        self.penalty[list(ids)] = -1e10  # not -inf: espnet adds weighted scores and sorts them

    def score(self, y, state, x):
        return self.penalty.to(x.device, x.dtype), None

    def batch_score(self, ys, states, xs):
        return self.penalty.to(xs.device, xs.dtype).expand(ys.shape[0], -1), None


class ARBeamSearch:
    def __init__(self, model, beam_size=10, ctc_weight=0.3, penalty=0.0, maxlenratio=0.0, minlenratio=0.0):
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be within [0, 1], not {ctc_weight}")
        vocab = model.vocab_size
        if beam_size > vocab:
            logging.warning("beam_size %d is larger than the vocabulary: using %d", beam_size, vocab)
            beam_size = vocab
        self.maxlenratio, self.minlenratio = maxlenratio, minlenratio
        scorers = {"decoder": model.decoder, "ctc": CTCPrefixScorer(ctc=model.ctc, eos=model.eos),
                   "length_bonus": LengthBonus(vocab), "never": NeverEmit(vocab, (model.blank, model.mask_token))}
        weights = {"decoder": 1.0 - ctc_weight, "ctc": ctc_weight, "length_bonus": penalty,  # weight 0: unused
                   "never": 1.0}
        self.search = BatchBeamSearch(scorers, weights, beam_size=beam_size, vocab_size=vocab, sos=model.sos,
                                      eos=model.eos, pre_beam_score_key=None if ctc_weight == 1.0 else "full")
        # espnet logs several INFO lines per utterance: keep its warnings only
        for name in ("espnet.nets.beam_search", "espnet.nets.batch_beam_search"):
            logging.getLogger(name).setLevel(logging.WARNING)

    def __call__(self, enc, enc_lens):
        """Encoder outputs [B, T, D] -> B lists of token ids (the best hypothesis without sos/eos)."""
        # no hypothesis reached <eos> (espnet has warned): an empty output
        return [hyps[0][0] if hyps else [] for hyps in self.nbest(enc, enc_lens, 1)]

    def nbest(self, enc, enc_lens, n):
        """B lists of up to ``n`` (token ids, score) pairs, best first; the score is the weighted sum
        of decoder, CTC prefix and length-bonus log-scores that ranked the beam."""
        out = []
        for b, frames in enumerate(enc_lens.tolist()):
            hyps = self.search(enc[b, :frames], maxlenratio=self.maxlenratio, minlenratio=self.minlenratio)
            out.append([(h.yseq[1:-1].tolist(), float(h.score)) for h in hyps[:n]])
        return out
