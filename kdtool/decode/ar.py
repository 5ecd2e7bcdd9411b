"""Joint CTC/attention beam search for the autoregressive model, with espnet's BatchBeamSearch
set up as espnet2's asr_inference sets it (it vectorizes the beam; utterances go one at a time)."""
import logging

from espnet.nets.batch_beam_search import BatchBeamSearch
from espnet.nets.scorers.ctc import CTCPrefixScorer
from espnet.nets.scorers.length_bonus import LengthBonus


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
                   "length_bonus": LengthBonus(vocab)}
        weights = {"decoder": 1.0 - ctc_weight, "ctc": ctc_weight, "length_bonus": penalty}  # weight 0: unused
        self.search = BatchBeamSearch(scorers, weights, beam_size=beam_size, vocab_size=vocab, sos=model.sos,
                                      eos=model.eos, pre_beam_score_key=None if ctc_weight == 1.0 else "full")
        # espnet logs several INFO lines per utterance: keep its warnings only
        for name in ("espnet.nets.beam_search", "espnet.nets.batch_beam_search"):
            logging.getLogger(name).setLevel(logging.WARNING)

    def __call__(self, enc, enc_lens):
        """Encoder outputs [B, T, D] -> B lists of token ids (the best hypothesis without sos/eos)."""
        out = []
        for b, n in enumerate(enc_lens.tolist()):
            hyps = self.search(enc[b, :n], maxlenratio=self.maxlenratio, minlenratio=self.minlenratio)
            # no hypothesis reached <eos> (espnet has warned): an empty output
            out.append(hyps[0].yseq[1:-1].tolist() if hyps else [])
        return out
