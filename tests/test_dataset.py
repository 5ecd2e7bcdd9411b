"""Training data loading: feature dirs -> items -> padded batches, and length-bucketed sampling."""
import logging
from collections import Counter

import kaldiio
import numpy as np
import pytest
import torch

from kdtool.data.datadir import DataDir, DataDirError
from kdtool.features.cmvn import compute_cmvn
from kdtool.tokens import Tokenizer, build_token_list
from kdtool.train.dataset import IGNORE_ID, SpeechDataset, build_dataloader, collate
from kdtool.train.sampler import BucketBatchSampler

TEXTS = {"spka-u1": "THE QUICK BROWN FOX", "spka-u2": "JUMPS OVER THE LAZY DOG",
         "spkb-u1": "TIME FLIES", "spkb-u2": "ALL THAT GLITTERS IS NOT GOLD"}
LENGTHS = {"spka-u1": 37, "spka-u2": 52, "spkb-u1": 11, "spkb-u2": 64}
DIM = 80


def make_feat_dir(path, lengths, text=None, seed=0):
    """A feature dir as stage 2 writes it: feats.{ark,scp} (absolute paths), utt2num_frames, text."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    feats = {}
    with kaldiio.WriteHelper(f"ark,scp:{path / 'feats.ark'},{path / 'feats.scp'}") as writer:
        for utt in sorted(lengths):
            feats[utt] = rng.normal(5.0, 3.0, (lengths[utt], DIM)).astype(np.float32)
            writer(utt, feats[utt])
    DataDir.write(path, wav_scp={u: f"/corpus/{u}.wav" for u in lengths},
                  utt2spk={u: u.split("-")[0] for u in lengths}, text=text,
                  extra={"utt2num_frames": {u: str(n) for u, n in lengths.items()}})
    return feats


@pytest.fixture
def setup(tmp_path):
    train = tmp_path / "dump" / "train"
    feats = make_feat_dir(train, LENGTHS, TEXTS)
    compute_cmvn(train / "feats.scp", train / "cmvn.ark")
    build_token_list(train / "text", tmp_path / "tokens", token_type="char")
    return train, feats, Tokenizer(tmp_path / "tokens")


def test_items_have_normalized_features_and_token_ids(setup):
    train, feats, tok = setup
    ds = SpeechDataset(train, tok, cmvn_path=train / "cmvn.ark")
    assert ds.utts == sorted(TEXTS) and len(ds) == 4
    assert ds.num_frames == LENGTHS
    items = [ds[u] for u in ds.utts]
    for it in items:
        assert it["feats"].dtype == torch.float32 and it["feats"].shape == (LENGTHS[it["utt"]], DIM)
        assert it["ys"].dtype == torch.long and it["transcribed"]
        assert tok.ids2text(it["ys"].tolist()) == TEXTS[it["utt"]]
    allf = torch.cat([it["feats"] for it in items])
    assert allf.mean(0).abs().max() < 1e-4 and (allf.std(0, unbiased=False) - 1).abs().max() < 1e-4
    raw = SpeechDataset([train], tok)["spkb-u1"]["feats"].numpy()  # without CMVN: the stored features
    np.testing.assert_array_equal(raw, feats["spkb-u1"])


def test_collate_pads_and_sorts_longest_first(setup):
    train, _, tok = setup
    ds = SpeechDataset(train, tok)
    b = collate([ds[u] for u in ["spkb-u1", "spkb-u2", "spka-u1"]])
    assert b["utts"] == ["spkb-u2", "spka-u1", "spkb-u1"]  # 64, 37, 11 frames
    assert b["feats"].shape == (3, 64, DIM) and b["feats_lens"].tolist() == [64, 37, 11]
    assert (b["feats"][2, 11:] == 0).all() and (b["feats"][2, :11] != 0).any()
    lens = [len(tok.text2ids(TEXTS[u])) for u in b["utts"]]
    assert b["ys_lens"].tolist() == lens and b["ys"].shape == (3, max(lens))
    for i, n in enumerate(lens):
        assert (b["ys"][i, n:] == IGNORE_ID).all() and (b["ys"][i, :n] >= 0).all()
        assert tok.ids2text(b["ys"][i, :n].tolist()) == TEXTS[b["utts"][i]]
    assert b["transcribed"].dtype == torch.bool and b["transcribed"].all()


def test_transcribed_and_untranscribed_dirs_combine(setup, tmp_path):
    train, _, tok = setup
    pool = tmp_path / "dump" / "untrans"
    make_feat_dir(pool, {"spkc-u1": 20, "spkc-u2": 70}, text=None, seed=1)
    with pytest.raises(DataDirError, match=f"{pool}: no text file"):
        SpeechDataset([train, pool], tok)
    ds = SpeechDataset([train, pool], tok, cmvn_path=train / "cmvn.ark", require_text=False)
    assert ds.utts == sorted([*TEXTS, "spkc-u1", "spkc-u2"]) and ds.num_frames["spkc-u2"] == 70
    it = ds["spkc-u1"]
    assert not it["transcribed"] and it["ys"].dtype == torch.long and it["ys"].numel() == 0
    b = collate([ds["spkc-u1"], ds["spka-u1"], ds["spkc-u2"]])
    assert b["utts"] == ["spkc-u2", "spka-u1", "spkc-u1"]
    assert b["transcribed"].tolist() == [False, True, False] and b["ys_lens"].tolist()[0::2] == [0, 0]
    assert (b["ys"][0] == IGNORE_ID).all()


def test_duplicate_ids_across_dirs_name_both_dirs(setup, tmp_path):
    train, _, tok = setup
    other = tmp_path / "dump" / "other"
    make_feat_dir(other, {"spka-u2": 30}, {"spka-u2": "THE FOX"})
    with pytest.raises(DataDirError, match=f"utterance spka-u2 is in two feature dirs: {train} and {other}"):
        SpeechDataset([train, other], tok)


def test_empty_transcript_is_an_error(setup, tmp_path):
    _, _, tok = setup
    d = tmp_path / "dump" / "bad"
    make_feat_dir(d, {"spka-u1": 30, "spka-u2": 40}, {"spka-u1": "THE FOX", "spka-u2": "  "})
    with pytest.raises(DataDirError, match=f"{d / 'text'}: utterance spka-u2: transcript has no tokens"):
        SpeechDataset(d, tok)


def test_missing_transcript_and_frame_counts_are_errors(setup, tmp_path):
    _, _, tok = setup
    d = tmp_path / "dump" / "bad"
    make_feat_dir(d, {"spka-u1": 30, "spka-u2": 40}, {"spka-u1": "THE FOX"})
    with pytest.raises(DataDirError, match=f"{d / 'text'}: utterance spka-u2: no transcript"):
        SpeechDataset(d, tok)
    (d / "utt2num_frames").write_text("spka-u1 30\n")
    with pytest.raises(DataDirError, match=r"utt2num_frames: utterances differ from feats.scp \(e.g. \['spka-u2'\]\)"):
        SpeechDataset(d, tok, require_text=False)


def random_lengths(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return {f"utt{i:04d}": int(rng.integers(50, 1500)) for i in range(n)}


def test_sampler_covers_each_utterance_once_within_budget():
    nf = random_lengths()
    s = BucketBatchSampler(nf, batch_frames=4000, max_batch_size=16)
    batches = list(s)
    assert len(batches) == len(s)
    assert sorted(u for b in batches for u in b) == sorted(nf)
    for b in batches:
        assert max(nf[u] for u in b) * len(b) <= 4000 and len(b) <= 16
    # Bucketing: each batch's lengths are a contiguous range of the sorted lengths.
    spans = sorted((min(nf[u] for u in b), max(nf[u] for u in b)) for b in batches)
    assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:]))


def test_sampler_gives_an_overlong_utterance_its_own_batch(caplog):
    nf = {**random_lengths(50), "long1": 5000, "long2": 6000}
    with caplog.at_level(logging.WARNING):
        s = BucketBatchSampler(nf, batch_frames=4000)
    assert [r.getMessage() for r in caplog.records if "longer than batch_frames" in r.getMessage()] == [
        "2 utterances are longer than batch_frames=4000 (longest: long2, 6000 frames); each forms a batch of its own"]
    batches = list(s)
    assert ["long1"] in batches and ["long2"] in batches
    assert all(max(nf[u] for u in b) * len(b) <= 4000 for b in batches if b not in (["long1"], ["long2"]))


def test_sampler_order_is_deterministic_per_seed_and_epoch():
    nf = random_lengths()
    a, b = BucketBatchSampler(nf, 4000, seed=3), BucketBatchSampler(nf, 4000, seed=3)
    e0 = list(a)
    a.set_epoch(1)
    e1 = list(a)
    assert e0 != e1 and sorted(map(tuple, e0)) == sorted(map(tuple, e1))  # same batches, new order
    b.set_epoch(1)
    assert list(b) == e1 and list(b) == e1  # same seed + epoch, same batches, however often iterated
    assert list(BucketBatchSampler(nf, 4000, seed=4)) != e0
    unshuffled = list(BucketBatchSampler(nf, 4000, shuffle=False))
    assert [max(nf[u] for u in b) for b in unshuffled] == sorted(max(nf[u] for u in b) for b in unshuffled)


@pytest.mark.parametrize("replicas", [2, 3, 7])
def test_ddp_ranks_get_equal_counts_and_cover_everything(replicas):
    nf = random_lengths()
    n = len(BucketBatchSampler(nf, 4000))
    ranks = [BucketBatchSampler(nf, 4000, seed=1, num_replicas=replicas, rank=r) for r in range(replicas)]
    for s in ranks:
        s.set_epoch(2)
    per_rank = [list(s) for s in ranks]
    assert {len(b) for b in per_rank} == {len(s) for s in ranks} == {-(-n // replicas)}
    counts = Counter(u for batches in per_rank for b in batches for u in b)
    assert set(counts) == set(nf)
    # Padding repeats whole batches of the unsplit list: no new or partial ones.
    assert {tuple(b) for batches in per_rank for b in batches} == {tuple(b) for b in BucketBatchSampler(nf, 4000)}
    dropped = [list(BucketBatchSampler(nf, 4000, seed=1, num_replicas=replicas, rank=r, drop_last=True))
               for r in range(replicas)]
    assert {len(b) for b in dropped} == {n // replicas}
    all_batches = [tuple(b) for batches in dropped for b in batches]
    assert len(set(all_batches)) == len(all_batches)  # drop_last: no repeats


def test_ddp_with_fewer_batches_than_ranks_repeats_batches():
    ranks = [list(BucketBatchSampler({"a": 10, "b": 20}, 1000, num_replicas=4, rank=r)) for r in range(4)]
    assert all(len(b) == 1 for b in ranks) and all(b == [["a", "b"]] for b in ranks)
    with pytest.raises(ValueError, match="rank 4 is outside 0..3"):
        BucketBatchSampler({"a": 10}, 1000, num_replicas=4, rank=4)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_yields_padded_batches(setup, tmp_path, num_workers):
    train, _, tok = setup
    pool = tmp_path / "dump" / "untrans"
    make_feat_dir(pool, {"spkc-u1": 20, "spkc-u2": 70}, seed=1)
    ds = SpeechDataset([train, pool], tok, cmvn_path=train / "cmvn.ark", require_text=False)
    sampler = BucketBatchSampler(ds.num_frames, batch_frames=150)
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for b in build_dataloader(ds, sampler, num_workers=num_workers):
            assert b["feats"].shape == (len(b["utts"]), int(b["feats_lens"].max()), DIM)
            assert b["feats"].dtype == torch.float32 and b["ys"].dtype == torch.long
            assert b["feats_lens"].tolist() == sorted(b["feats_lens"].tolist(), reverse=True)
            seen += b["utts"]
    assert sorted(seen) == sorted(ds.utts * 2)
