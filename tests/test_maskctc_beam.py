"""Mask-CTC beam search: beam 1 is greedy, the k best fillings are exact, a larger beam scores no
lower, CTC rescoring and length variants change the answer where they should (crafted models), and
bad input."""
import copy
import itertools
import json
import logging
import math

import pytest
import torch

from conftest import REPO, all_blank, scrambled_decoder
from kdtool.data.datadir import read_table
from kdtool.decode import decode_dir, load_decode_config, resolve_decode_config
from kdtool.decode.maskctc import (MaskCTCBeamSearch, _ctc_log_likelihoods, _kbest_fillings, _length_variants,
                                   maskctc_beam_nbest, maskctc_greedy)
from kdtool.errors import ConfigError

A, B = 3, 4  # two ordinary tokens of the tiny char vocabulary (0 is blank, the last two <sos/eos>, <mask>)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def best(model, enc, lens, **options):
    with torch.no_grad():
        return [hyps[0].tokens for hyps in maskctc_beam_nbest(model, enc, lens, **options)]


def best_totals(model, enc, lens, **options):
    with torch.no_grad():
        return [hyps[0].total for hyps in maskctc_beam_nbest(model, enc, lens, **options)]


SCHEDULES = [(0.99, 10), (0.9, 3), (0.999, 4), (0.9, 1), (0.99, 0)]


@pytest.mark.parametrize("threshold,n_iterations", SCHEDULES)
def test_beam_1_without_ctc_is_greedy(threshold, n_iterations, encoded):
    model, _, enc, lens, _ = encoded["nar"]
    for m in (model, scrambled_decoder(model, 0), scrambled_decoder(model, 1)):
        with torch.no_grad():
            greedy = maskctc_greedy(m, enc, lens, threshold=threshold, n_iterations=n_iterations)
            search = MaskCTCBeamSearch(m, beam_size=1, threshold=threshold, n_iterations=n_iterations, ctc_weight=0.0)
            assert search(enc, lens) == greedy
        assert any(greedy)


def test_beam_1_without_ctc_is_greedy_through_the_runner(models, tiny_features, tmp_path):
    data = tiny_features["feats"]
    greedy = decode_dir(models / "nar", data, *resolve_decode_config({"method": "maskctc_greedy"}), tmp_path / "g")
    beam = decode_dir(models / "nar", data, *resolve_decode_config({"method": "maskctc_beam", "beam_size": 1,
                                                                    "ctc_weight": 0.0}), tmp_path / "b")
    assert read_table(tmp_path / "g" / "text", allow_empty=True) == read_table(tmp_path / "b" / "text",
                                                                               allow_empty=True)
    assert greedy["method"] == "maskctc_greedy" and beam["method"] == "maskctc_beam1"


@pytest.mark.parametrize("k", [1, 2, 4, 7, 30, 200])
def test_kbest_fillings_are_the_exact_k_best_joint_fillings(k):
    torch.manual_seed(k)
    logits = torch.randn(3, 5) * 3  # 3 positions, 5 tokens: 125 joint fillings
    lp = logits.log_softmax(-1)
    every = sorted((sum(lp[p, t] for p, t in enumerate(fill)).item() for fill in
                    itertools.product(range(5), repeat=3)), reverse=True)
    scores, fills = _kbest_fillings(logits, k)
    assert len(scores) == min(k, 125) and len({tuple(f) for f in fills.tolist()}) == len(scores)
    assert scores.tolist() == pytest.approx(every[:len(scores)], abs=1e-5)
    for score, fill in zip(scores, fills):  # each score is its filling's
        assert score.item() == pytest.approx(lp[torch.arange(3), fill].sum().item(), abs=1e-5)
    assert fills[0].tolist() == logits.argmax(-1).tolist()


def test_kbest_fillings_of_no_position_is_the_empty_filling():
    scores, fills = _kbest_fillings(torch.zeros(0, 5), 4)
    assert scores.tolist() == [0.0] and fills.shape == (1, 0)


@pytest.mark.parametrize("threshold,n_iterations", SCHEDULES)
def test_a_larger_beam_never_scores_lower(threshold, n_iterations, encoded):
    """The beam keeps greedy's path (plain beam search does not: with these scrambled decoders it
    returned a worse score than greedy for some utterance, with beam 2, 5 or 10)."""
    model, _, enc, lens, _ = encoded["nar"]
    for m in (model, scrambled_decoder(model, 1), scrambled_decoder(model, 5), scrambled_decoder(model, 9)):
        for ctc_weight in (0.0, 0.3):
            totals = {beam: best_totals(m, enc, lens, beam_size=beam, threshold=threshold,
                                        n_iterations=n_iterations, ctc_weight=ctc_weight) for beam in (1, 2, 5, 10)}
            for beam in (2, 5, 10):
                assert all(t >= t1 - 1e-4 for t, t1 in zip(totals[beam], totals[1])), (beam, ctc_weight)
    # and a larger beam does find better fillings on these utterances
    assert any(t > t1 + 1e-3 for t, t1 in zip(totals[10], totals[1]))


def test_final_hypotheses_are_ranked_by_total_score(encoded):
    model, _, enc, lens, _ = encoded["nar"]
    with torch.no_grad():
        nbest = maskctc_beam_nbest(model, enc, lens, beam_size=5, ctc_weight=0.3)
    for hyps in nbest:
        assert 1 < len(hyps) <= 5 + 1 and len({tuple(h.tokens) for h in hyps}) == len(hyps)  # + greedy's path
        assert [h.total for h in hyps] == sorted((h.total for h in hyps), reverse=True)
        for h in hyps:
            assert h.total == pytest.approx(h.score + 0.3 * h.ctc) or h.total == h.ctc == -math.inf
            assert h.score <= 0


def crafted(model, frame_probs, decoder_probs):
    """A copy of the NAR ``model`` whose CTC head gives frame t the distribution ``frame_probs[t]``
    ({token: prob}) and whose masked LM predicts ``decoder_probs`` at every position, whatever its
    input; with the encoder output (one frame per distribution) it reads them from."""
    model = copy.deepcopy(model)
    rare = math.log(1e-6)
    ctc, out = model.ctc.ctc_lo, model.decoder.output_layer
    for layer in (ctc, out):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    enc = torch.zeros(1, len(frame_probs), ctc.in_features)
    for t, probs in enumerate(frame_probs):
        enc[0, t, t] = 1.0  # frame t reads column t of the CTC head
        ctc.weight.data[:, t] = rare
        for token, p in probs.items():
            ctc.weight.data[token, t] = math.log(p)
    out.bias.data[:] = rare
    for token, p in decoder_probs.items():
        out.bias.data[token] = math.log(p)
    return model, enc, torch.tensor([len(frame_probs)])


def test_ctc_rescoring_changes_the_ranking(encoded):
    """CTC hears B in every frame, but not surely (0.6 < threshold): B is masked; the masked LM prefers
    A. Without CTC, A wins; with it, B (CTC: log P(B) - log P(A) = 2.2 > 0.69, the decoder's margin)."""
    model, enc, lens = crafted(encoded["nar"][0], [{B: 0.6, A: 0.2, 0: 0.2}] * 3, {A: 0.6, B: 0.3})
    assert best(model, enc, lens, beam_size=2, ctc_weight=0.0) == [[A]]
    assert best(model, enc, lens, beam_size=2, ctc_weight=1.0) == [[B]]
    assert best(model, enc, lens, beam_size=1, ctc_weight=1.0) == [[A]]  # CTC only ranks what the beam kept
    with torch.no_grad():
        hyps = maskctc_beam_nbest(model, enc, lens, beam_size=2, ctc_weight=1.0)[0]
    ctc = {tuple(h.tokens): h.ctc for h in hyps}
    assert ctc[(B,)] - ctc[(A,)] == pytest.approx(math.log(0.432 / 0.048), abs=1e-3)  # by hand, over 3 frames


def test_ctc_log_likelihood_is_that_of_ctc_loss_over_the_whole_vocabulary(encoded):
    model, _, enc, lens, _ = encoded["nar"]
    with torch.no_grad():
        log_probs = model.ctc_log_probs(enc)
        nbest = maskctc_beam_nbest(model, enc, lens, beam_size=3, threshold=0.9, ctc_weight=0.3)
    checked = 0
    for b, hyps in enumerate(nbest):
        n = int(lens[b])
        for h in hyps:
            full = -torch.nn.functional.ctc_loss(log_probs[b, :n], torch.tensor(h.tokens), torch.tensor([n]),
                                                 torch.tensor([len(h.tokens)]), reduction="none").item()
            if math.isfinite(full):
                assert h.ctc == pytest.approx(full, abs=1e-3)
                checked += 1
            else:  # more repeated tokens than frames allow
                assert h.ctc == -math.inf
    assert checked > 5
    frames = log_probs[0, :5]
    assert _ctc_log_likelihoods(frames, [[A, 0, B], []], model.blank)[0] == -math.inf  # blank is no CTC label
    assert _ctc_log_likelihoods(frames[:0], [[], [A]], model.blank) == [0.0, -math.inf]  # no frames


def test_length_variants_remove_or_add_one_mask_per_run_of_masks():
    m = 9
    shorter, longer = _length_variants(torch.tensor([m, 5, m, m, 6, m]), m)
    assert [s.tolist() for s in shorter] == [[5, m, m, 6, m], [m, 5, m, 6, m], [m, 5, m, m, 6]]
    assert [s.tolist() for s in longer] == [[m, m, 5, m, m, 6, m], [m, 5, m, m, m, 6, m], [m, 5, m, m, 6, m, m]]
    assert _length_variants(torch.tensor([5, 6]), m) == ([], [])


def test_length_variants_drop_a_token_ctc_does_not_believe_in(encoded):
    """Greedy CTC reads A B (B from one unsure frame, masked); the masked LM fills the mask with B. Summed
    over alignments, CTC finds A alone likelier than A B (0.51 vs 0.37): only the shorter variant gets it."""
    frames = [{A: 0.9, 0: 0.05, B: 0.05}, {B: 0.4, 0: 0.35, A: 0.25}, {0: 0.9, A: 0.05, B: 0.05}]
    model, enc, lens = crafted(encoded["nar"][0], frames, {B: 0.7, A: 0.2})
    options = dict(beam_size=3, threshold=0.5, ctc_weight=0.3)
    assert best(model, enc, lens, **options) == [[A, B]]
    assert best(model, enc, lens, **options, length_variants=True) == [[A]]


def test_length_variants_only_add_hypotheses(encoded):
    """The CTC output's own length is searched as without variants: the best total cannot get worse,
    and the other lengths are among the final hypotheses."""
    model, _, enc, lens, _ = encoded["nar"]
    options = dict(beam_size=3, threshold=0.9, n_iterations=3, ctc_weight=0.3)
    plain = best_totals(model, enc, lens, **options)
    with torch.no_grad():
        nbest = maskctc_beam_nbest(model, enc, lens, **options, length_variants=True)
        masked_lens = [len(y) for y in best(model, enc, lens, **options)]  # the lengths of CTC's output
    assert all(hyps[0].total >= t - 1e-4 for hyps, t in zip(nbest, plain))
    assert any({len(h.tokens) for h in hyps} == {n - 1, n, n + 1} for hyps, n in zip(nbest, masked_lens))


# ---- bad input ----

def test_an_utterance_without_encoder_frames_gets_an_empty_hypothesis(encoded):
    model, _, enc, lens, _ = encoded["nar"]
    empty = lens.clone()
    empty[1] = 0
    others = [0, 2, 3, 4, 5]
    for options in (dict(ctc_weight=0.0), dict(ctc_weight=0.3), dict(ctc_weight=0.3, length_variants=True)):
        out = best(model, enc, empty, beam_size=3, **options)
        assert out[1] == [] and [out[b] for b in others] == best(model, enc[others], lens[others], beam_size=3,
                                                                 **options)


def test_too_short_utterance_through_the_runner(models, data_with_a_short_utterance, tmp_path, caplog):
    out = tmp_path / "dec"
    decode_dir(models / "nar", data_with_a_short_utterance, *resolve_decode_config({"method": "maskctc_beam"}), out)
    lines = (out / "text").read_text().splitlines()
    assert len(lines) == 7 and lines[-1] == "spkc-u1"
    assert "spkc-u1 (6 frames)" in caplog.text


def test_all_blank_ctc_output_gives_empty_hypotheses(encoded):
    model, _, enc, lens, _ = encoded["nar"]
    blank = all_blank(model)
    for options in (dict(ctc_weight=0.0), dict(ctc_weight=0.3), dict(ctc_weight=0.3, length_variants=True)):
        with torch.no_grad():
            nbest = maskctc_beam_nbest(blank, enc, lens, beam_size=5, **options)
        assert [[h.tokens for h in hyps] for hyps in nbest] == [[[]]] * len(lens)
        assert all(hyps[0].score == 0.0 for hyps in nbest)


def test_beam_larger_than_the_vocabulary_is_clamped(encoded, caplog):
    model, _, enc, lens, _ = encoded["nar"]
    caplog.set_level(logging.WARNING)
    search = MaskCTCBeamSearch(model, beam_size=1000, threshold=0.9)
    assert f"beam_size 1000 is larger than the vocabulary: using {model.vocab_size}" in caplog.text
    with torch.no_grad():
        assert search(enc[:2], lens[:2]) == best(model, enc[:2], lens[:2], beam_size=model.vocab_size, threshold=0.9)


@pytest.mark.parametrize("kind,message", [("ctc", "this ctc model has none"),
                                          ("ar", "this ar model has TransformerDecoder")])
def test_a_model_without_a_masked_lm_is_a_clear_error(kind, message, encoded, models, tiny_features, tmp_path):
    model, _, enc, lens, _ = encoded[kind]
    needs = "maskctc decoding needs a model with a masked-LM \\(mlm\\) decoder; "
    with pytest.raises(ValueError, match=needs + message):
        MaskCTCBeamSearch(model)
    with pytest.raises(ValueError, match=message):
        maskctc_beam_nbest(model, enc, lens)
    with pytest.raises(ValueError, match=message):
        decode_dir(models / kind, tiny_features["feats"], *resolve_decode_config({"method": "maskctc_beam"}),
                   tmp_path / "dec")
    assert not (tmp_path / "dec").exists()


def test_bad_options(encoded, models, tiny_features, tmp_path):
    model = encoded["nar"][0]
    with pytest.raises(ValueError, match="length_variants needs ctc_weight > 0"):
        MaskCTCBeamSearch(model, ctc_weight=0.0, length_variants=True)
    with pytest.raises(ValueError, match="ctc_weight must be >= 0, not -1"):
        MaskCTCBeamSearch(model, ctc_weight=-1.0)
    with pytest.raises(ValueError, match="length_variants needs ctc_weight > 0"):  # before any decoding
        decode_dir(models / "nar", tiny_features["feats"],
                   *resolve_decode_config({"method": "maskctc_beam", "ctc_weight": 0, "length_variants": True}),
                   tmp_path / "dec")
    assert not (tmp_path / "dec").exists()
    with pytest.raises(ConfigError, match="length_variants: expected a bool, not 'yes'"):
        resolve_decode_config({"method": "maskctc_beam", "length_variants": "yes"})
    with pytest.raises(ConfigError, match="beam_size: expected an int >= 1, not 0"):
        resolve_decode_config({"method": "maskctc_beam", "beam_size": 0})


# ---- the runner ----

def test_batched_runner_output_equals_one_utterance_at_a_time(models, tiny_features, tmp_path):
    data = tiny_features["feats"]
    config = {"method": "maskctc_beam", "beam_size": 4, "threshold": 0.9, "length_variants": True}
    texts = {}
    for size in (1, 6):
        decode_dir(models / "nar", data, *resolve_decode_config({**config, "batch_size": size}), tmp_path / str(size))
        texts[size] = read_table(tmp_path / str(size) / "text", allow_empty=True)
    assert texts[1] == texts[6] and any(texts[1].values())
    info = json.loads((tmp_path / "6" / "decode_info.json").read_text())
    assert info["method"] == "maskctc_beam4_lenvar" and info["config"]["ctc_weight"] == 0.3


@pytest.mark.parametrize("recipe", ["mini_en", "librispeech", "aishell"])
def test_recipe_decode_config(recipe):
    greedy = load_decode_config(REPO / "egs" / recipe / "kd1" / "conf" / "decode_nar_maskctc_greedy.yaml")[1]
    method, options = load_decode_config(REPO / "egs" / recipe / "kd1" / "conf" / "decode_nar_maskctc_beam5.yaml")
    assert method == "maskctc_beam" and options["beam_size"] == 5
    # the same schedule as greedy; mini_en's threshold was chosen on dev for each search (0.2 greedy, 0.3 beam:
    # the lowest at which the masked LM still fills some tokens)
    tuned = {"threshold"} if recipe == "mini_en" else set()
    assert all(options[k] == v for k, v in greedy.items() if k not in tuned)
    assert recipe != "mini_en" or (greedy["threshold"], options["threshold"]) == (0.2, 0.3)
