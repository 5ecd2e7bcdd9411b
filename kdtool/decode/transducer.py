"""Transducer decoding: batched greedy search, and beam search with espnet2's BeamSearchTransducer
(its joint calls ``joint_network(enc_t, dec_out)`` fit our asr_transducer JointNetwork)."""
import logging

import torch
from espnet2.asr.transducer.beam_search_transducer import BeamSearchTransducer

SEARCH_TYPES = ("default", "tsd", "alsd")  # espnet's Graves-style default, time- and alignment-length-synchronous


def _step(decoder, labels, state):
    """One prediction-network step for a batch of labels [B] -> (output [B, H], new state)."""
    out, state = decoder.rnn_forward(decoder.embed(labels[:, None]), state)
    return out[:, 0], state


def greedy_search(model, enc, enc_lens, max_symbols_per_frame=5):
    """Encoder outputs [B, T, D] -> B lists of token ids. Per frame, emit the best label until it is
    blank or ``max_symbols_per_frame`` labels were emitted (1 gives espnet's greedy search)."""
    decoder, blank = model.decoder, model.blank
    decoder.set_device(enc.device)
    batch = enc.size(0)
    # the prediction network starts from blank, as in training (TransducerModel.joint_logits)
    dec_out, state = _step(decoder, torch.full((batch,), blank, device=enc.device), decoder.init_state(batch))
    hyps = [[] for _ in range(batch)]
    for t in range(enc.size(1)):
        emitting = enc_lens > t
        for _ in range(max_symbols_per_frame):
            pred = model.joint_network(enc[:, t], dec_out).argmax(-1)
            emitting = emitting & (pred != blank)
            if not emitting.any():
                break
            for b in emitting.nonzero().squeeze(-1).tolist():
                hyps[b].append(int(pred[b]))
            # advance the prediction network only where a label was emitted
            new_out, new_state = _step(decoder, pred, state)
            dec_out = torch.where(emitting[:, None], new_out, dec_out)
            state = tuple(None if s is None else torch.where(emitting[None, :, None], n, s)
                          for n, s in zip(new_state, state))
    return hyps


class TransducerBeamSearch:
    def __init__(self, model, beam_size=4, search_type="default", max_sym_exp=2, u_max=50, score_norm=True):
        if search_type not in SEARCH_TYPES:
            raise ValueError(f"search_type: unknown {search_type!r}; choose one of {list(SEARCH_TYPES)}")
        labels = model.vocab_size - 1  # espnet's searches take the top-k over the non-blank labels
        if beam_size > labels:
            logging.warning("beam_size %d is larger than the vocabulary: using %d", beam_size, labels)
            beam_size = labels
        self.search = BeamSearchTransducer(model.decoder, model.joint_network, beam_size, search_type=search_type,
                                           max_sym_exp=max_sym_exp, u_max=u_max, score_norm=score_norm)

    def __call__(self, enc, enc_lens):
        """Encoder outputs [B, T, D] -> B lists of token ids; one utterance at a time."""
        # yseq starts with the blank the prediction network was primed with
        return [self.search(enc[b, :n])[0].yseq[1:] for b, n in enumerate(enc_lens.tolist())]
