"""Chunk-by-chunk streaming decoding of a transducer with a StreamingConformerEncoder
(kdtool.models.streaming): the encoder blocks run espnet2's cached ``chunk_forward`` on each chunk, and
greedy search consumes each chunk's frames with the prediction network carried across chunks.

A chunk of C encoder frames needs S*C new input frames plus the subsampling's lookahead of R - S
frames (factor S, receptive field R: 3 frames for conv2d), which overlap the next chunk.
With ``left_context`` = num_left_chunks * C (or, for num_left_chunks 0, the whole utterance so far)
the outputs equal the full forward with ``chunk_size=C`` (up to float rounding). The model must be
in eval mode.
"""
import torch


def full_context_encode(model, feats):
    """feats [T, D] -> encoder output [T', H] over the whole utterance."""
    enc, _ = model.encode(feats[None], torch.tensor([feats.size(0)], device=feats.device))
    return enc[0]


def encode_chunks(model, feats, chunk_size, left_context=None):
    """Yield the encoder output [<= chunk_size, H] of each chunk of one utterance (feats [T, D])."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1 encoder frame, not {chunk_size}")
    enc = model.encoder
    enc.check_length(feats.size(0))
    n_out = enc.subsampled_length(feats.size(0))
    if left_context is None:  # what the model was trained to see
        left_context = enc.num_left_chunks * chunk_size if enc.num_left_chunks else n_out
    sub, field = enc.embed.subsampling_factor, enc.min_frames  # output frame t sees inputs sub*t .. sub*t+field-1
    enc.reset_cache(left_context, feats.device)
    for start in range(0, n_out, chunk_size):
        end = min(start + chunk_size, n_out)
        piece = feats[None, sub * start: sub * (end - 1) + field]  # exactly the inputs of frames start..end-1
        yield enc.chunk_forward(piece, start, left_context)[0]


class GreedySearch:
    """Transducer greedy search fed frame by frame: per frame, emit the best label until it is
    blank or ``max_symbols_per_frame`` were emitted (kdtool.decode.transducer.greedy_search's rule)."""

    def __init__(self, model, max_symbols_per_frame=5):
        self.model, self.max_symbols = model, max_symbols_per_frame
        self.hyp = []
        device = next(model.parameters()).device
        model.decoder.set_device(device)
        # the prediction network starts from blank, as in training
        self.state = model.decoder.init_state(1)
        self._advance(torch.tensor([model.blank], device=device))

    def _advance(self, label):
        out, self.state = self.model.decoder.rnn_forward(self.model.decoder.embed(label[:, None]), self.state)
        self.dec_out = out[0, 0]

    def __call__(self, frames):
        """Consume encoder frames [n, H]; returns the hypothesis so far."""
        for frame in frames:
            for _ in range(self.max_symbols):
                label = self.model.joint_network(frame, self.dec_out).argmax(-1)
                if int(label) == self.model.blank:
                    break
                self.hyp.append(int(label))
                self._advance(label.view(1))
        return self.hyp


@torch.no_grad()
def streaming_greedy(model, feats, chunk_size, left_context=None, max_symbols_per_frame=5):
    """One utterance's features [T, D] (CMVN applied) -> (token ids, encoder frames produced),
    decoded chunk by chunk with ``chunk_size`` encoder frames per chunk."""
    search = GreedySearch(model, max_symbols_per_frame)
    n_frames = 0
    for enc in encode_chunks(model, feats, chunk_size, left_context):
        search(enc)
        n_frames += enc.size(0)
    return search.hyp, n_frames


@torch.no_grad()
def full_context_greedy(model, feats, max_symbols_per_frame=5):
    """The same search over the full-context encoder output (the offline reference)."""
    enc = full_context_encode(model, feats)
    return GreedySearch(model, max_symbols_per_frame)(enc), enc.size(0)
