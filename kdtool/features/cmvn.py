"""Global cepstral mean and variance normalization, with statistics in Kaldi's layout:
a 2 x (dim + 1) matrix, row 0 = [sum of each dim..., frame count], row 1 = [sum of squares..., 0],
saved with kaldiio as one matrix (what ``compute-cmvn-stats scp:feats.scp cmvn.ark`` writes)."""
import kaldiio
import numpy as np
from tqdm import tqdm

from kdtool.utils.atomic import atomic_path


def accumulate_stats(feats_iter):
    stats = None
    for feats in feats_iter:
        feats = feats.astype(np.float64)
        if stats is None:
            stats = np.zeros((2, feats.shape[1] + 1))
        stats[0, :-1] += feats.sum(0)
        stats[1, :-1] += (feats ** 2).sum(0)
        stats[0, -1] += feats.shape[0]
    if stats is None:
        raise ValueError("no features to compute CMVN statistics from")
    return stats


def compute_cmvn(feats_scp, out_path):
    reader = kaldiio.load_scp(str(feats_scp))
    stats = accumulate_stats(reader[k] for k in tqdm(reader.keys(), desc="cmvn", mininterval=5))
    with atomic_path(out_path) as tmp:
        kaldiio.save_mat(str(tmp), stats)
    return stats


def mean_std(stats, eps=1e-20):
    count = stats[0, -1]
    mean = stats[0, :-1] / count
    var = np.maximum(stats[1, :-1] / count - mean ** 2, eps)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def apply_cmvn(feats, stats, norm_vars=True):
    mean, std = mean_std(stats)
    out = feats - mean
    return out / std if norm_vars else out


def load_cmvn(path):
    return kaldiio.load_mat(str(path))
