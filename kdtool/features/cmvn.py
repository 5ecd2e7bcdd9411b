"""Global cepstral mean and variance normalization, with statistics in Kaldi's layout:
a 2 x (dim + 1) matrix, row 0 = [sum of each dim..., frame count], row 1 = [sum of squares..., 0],
saved with kaldiio as one matrix (what ``compute-cmvn-stats scp:feats.scp cmvn.ark`` writes).

Every utterance is checked as it is read (kdtool.features.reader), and statistics that are not
finite are never written: they would normalize every later feature to NaN."""
from pathlib import Path

import kaldiio
import numpy as np
from tqdm import tqdm

from kdtool.data.datadir import DataDirError
from kdtool.features.reader import iter_feats
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
    feats = (f for _, f in iter_feats(feats_scp))
    stats = accumulate_stats(tqdm(feats, desc="cmvn", mininterval=5))
    if not np.isfinite(stats).all():  # each utterance is finite; only an overflow gets here
        raise DataDirError(f"{feats_scp}: the CMVN statistics are not finite (features too large?); not written")
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
    """The statistics of ``path``, checked: Kaldi's 2 x (dim + 1) layout, a positive frame count,
    finite numbers (a DataDirError naming the file otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise DataDirError(f"{path}: CMVN statistics not found (stage 2 writes them)")
    try:
        stats = kaldiio.load_mat(str(path))
    except Exception as e:
        raise DataDirError(f"{path}: cannot read CMVN statistics ({type(e).__name__}: {e}); "
                           "rerun compute_cmvn") from None
    stats = np.asarray(stats)
    if stats.ndim != 2 or stats.shape[0] != 2 or stats.shape[1] < 2:
        raise DataDirError(f"{path}: not CMVN statistics (shape {stats.shape}, expected 2 x (dim + 1))")
    if not np.isfinite(stats).all() or stats[0, -1] <= 0:
        raise DataDirError(f"{path}: CMVN statistics are not finite or count no frames; rerun compute_cmvn "
                           "on features that validate_data_dir --feats accepts")
    return stats
