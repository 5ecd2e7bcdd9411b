"""Compact top-k soft labels (format 2, kdtool/kd/softlabels.py): ids in 1-3 bytes, cumulative
probabilities in 1/255 steps; format-1 dumps (float32 ids and probabilities) still read."""
import json

import kaldiio
import numpy as np
import pytest
import torch

from kdtool.kd.losses import kl_div_soft
from kdtool.kd.softlabels import (PROB_STEPS, SoftLabelReader, SoftLabelWriter, bytes_per_frame, id_bytes,
                                  merge_jobs, to_topk)

torch.set_num_threads(1)


def peaked_posteriors(frames, V, seed, sharpness=4.0):
    """CTC-like rows: a few likely tokens per frame, a long tail."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(frames, V, generator=g), -1)


def write_dump(out, V, utts, topk=8, nj=1):
    tokens = out.parent / f"tokens_{V}.txt"
    tokens.write_text("".join(f"t{i}\n" for i in range(V)))
    meta = dict(type="frame_posteriors", topk=topk, vocab_size=V, temperature=1.0, tokens_sha256="0" * 64,
                teacher="exp/teacher", subsampling=4, frame_shift_ms=40)
    names = sorted(utts)
    for job in range(1, nj + 1):
        with SoftLabelWriter(out, meta, job=job) as w:
            for utt in names[job - 1::nj]:
                w.write(utt, utts[utt])
    merge_jobs(out, nj)
    return SoftLabelReader(out)


@pytest.mark.parametrize("V", [31, 5000, 70000])
def test_topk_round_trip_within_one_probability_step(tmp_path, V):
    utts = {f"spk-u{i}": peaked_posteriors(20 + 7 * i, V, seed=i) for i in range(4)}
    reader = write_dump(tmp_path / "d", V, utts, nj=2)
    assert reader.meta["format_version"] == 2
    for utt, probs in utts.items():
        want_ids, want_p = to_topk(probs, 8)
        ids, p = reader.sparse(utt)
        assert torch.equal(ids, want_ids), utt  # ids exact, most probable first, at any vocabulary size
        assert (p - want_p).abs().max() <= 1 / PROB_STEPS + 1e-6
        torch.testing.assert_close(p.sum(-1), torch.ones(len(p)), atol=1e-6, rtol=0)  # rows sum to 1 exactly
        assert (p >= 0).all()
        # the KD term it feeds (sparse KL against a student) moves by under 1%
        student = torch.log_softmax(torch.randn(len(p), V, generator=torch.Generator().manual_seed(9)), -1)[None]
        mask = torch.ones(1, len(p), dtype=torch.bool)
        stored, exact = (kl_div_soft((i[None], q[None]), student, mask) for i, q in ((ids, p), (want_ids, want_p)))
        assert abs(stored - exact) <= 0.01 * exact, (float(stored), float(exact))
        dense = reader.dense(utt)
        assert dense.shape == probs.shape and torch.equal(dense.gather(1, ids), p)


def test_top8_takes_at_most_24_bytes_per_frame(tmp_path):
    # a 5000-token BPE list (2-byte ids), utterances of 1-4 s at 40 ms frames: 16 id bytes + 7 probability bytes
    # per frame and ~30 bytes per utterance (key, Kaldi header); format 1 took 64 + 12 per utterance
    assert (id_bytes(256), id_bytes(257), id_bytes(65536), id_bytes(65537)) == (1, 2, 2, 3)
    utts = {f"spk-u{i:02d}": peaked_posteriors(25 + 5 * i, 5000, seed=i) for i in range(16)}
    reader = write_dump(tmp_path / "d", 5000, utts)
    assert bytes_per_frame(tmp_path / "d") <= 24
    assert sum(reader.num_frames(u) for u in utts) == sum(len(p) for p in utts.values())
    small = write_dump(tmp_path / "c", 31, utts={u: peaked_posteriors(len(p), 31, 0) for u, p in utts.items()})
    assert bytes_per_frame(small.dir) <= 16  # a character list: 1-byte ids


def write_format1_dump(out, V, utts, topk):
    """A dump in the layout of format 1, as kdtool wrote it before format 2: float32 [N, 2K] matrices
    (ids as floats, then probabilities) and no provenance in soft_labels.json."""
    out.mkdir(parents=True)
    (out / "soft_labels.json").write_text(json.dumps(dict(
        type="fb_posteriors", topk=topk, vocab_size=V, temperature=1.0, tokens_sha256="0" * 64,
        teacher="/old/exp/teacher", subsampling=4, frame_shift_ms=40, format_version=1)))
    with kaldiio.WriteHelper(f"ark,scp:{out / 'soft_labels.1.ark'},{out / 'soft_labels.1.scp'}") as w:
        for utt, probs in sorted(utts.items()):
            ids, p = to_topk(probs, topk)
            w(utt, torch.cat([ids.float(), p], -1).numpy())
    (out / "soft_labels.scp").write_text((out / "soft_labels.1.scp").read_text())


def test_a_format_1_dump_still_reads(tmp_path):
    utts = {f"spk-u{i}": peaked_posteriors(12 + i, 40, seed=i) for i in range(3)}
    write_format1_dump(tmp_path / "old", 40, utts, topk=4)
    reader = SoftLabelReader(tmp_path / "old")
    assert reader.meta["format_version"] == 1 and reader.topk == 4
    for utt, probs in utts.items():
        want_ids, want_p = to_topk(probs, 4)
        ids, p = reader.sparse(utt)
        assert torch.equal(ids, want_ids) and torch.equal(p, want_p)  # float32: exact
        assert torch.equal(reader.dense(utt).gather(1, ids), want_p)
        assert reader.num_frames(utt) == len(probs)
    assert 8 * 4 <= bytes_per_frame(tmp_path / "old") < 8 * 4 + 12  # what format 1 cost


def test_unknown_format_version_and_corrupt_ids_are_one_line_errors(tmp_path):
    from kdtool.kd.softlabels import SoftLabelError
    reader = write_dump(tmp_path / "d", 300, {"spk-u1": peaked_posteriors(10, 300, 0)})
    meta = json.loads((reader.dir / "soft_labels.json").read_text())
    (reader.dir / "soft_labels.json").write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(SoftLabelError, match=r"format_version 3 is not one of \(1, 2\).*rerun stage 4"):
        SoftLabelReader(reader.dir)
    # a byte flipped in a 2-byte id: an id beyond the list is caught, not scattered out of range
    (reader.dir / "soft_labels.json").write_text(json.dumps(meta))
    ark = reader.dir / "soft_labels.1.ark"
    mat = np.array(kaldiio.load_mat(reader.scp["spk-u1"]))
    mat[3, 1] = 255  # high byte of the first id
    with kaldiio.WriteHelper(f"ark:{ark}", compression_method=6) as w:
        w("spk-u1", mat)
    with pytest.raises(SoftLabelError, match=r"utterance spk-u1: token id \d+ is outside the 300-token list"):
        SoftLabelReader(reader.dir).dense("spk-u1")
