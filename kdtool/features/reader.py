"""Checked reads of stage 2's features: every matrix a stage reads from a feats.scp goes through
``read_checked``, so a damaged ark, features of the wrong dimension, a frame count that disagrees
with utt2num_frames or a NaN fails with the file and the utterance instead of a numpy error (or
silently wrong numbers) further on."""
import warnings
from pathlib import Path

import kaldiio
import numpy as np

from kdtool.data.datadir import DataDirError, read_table

RERUN = "rerun stage 2 for this set"


def read_checked(read, utt, scp, dim=None, num_frames=None, dim_from=None):
    """``read()`` (which loads utterance ``utt``'s matrix of ``scp``) checked by ``check_feats``;
    a read that fails is a DataDirError naming ``scp`` and ``utt``."""
    try:
        with warnings.catch_warnings():  # kaldiio warns before it raises; the message below says it all
            warnings.simplefilter("ignore")
            feats = read()
    except Exception as e:  # kaldiio: ValueError, EOFError, AssertionError, OSError... for a damaged ark
        raise DataDirError(f"{scp}: utterance {utt}: cannot read its features ({type(e).__name__}: {e}); "
                           f"the ark is damaged or was rewritten since: {RERUN}") from None
    return check_feats(feats, utt, scp, dim, num_frames, dim_from)


def check_feats(feats, utt, scp, dim=None, num_frames=None, dim_from=None):
    """``feats`` if it is a finite 2-D matrix with ``dim`` columns and ``num_frames`` rows (each
    when given); a DataDirError naming ``scp`` and ``utt`` otherwise. ``dim_from`` says where ``dim``
    comes from (a CMVN file, a model), for the message."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise DataDirError(f"{scp}: utterance {utt}: features of shape {feats.shape}, expected frames x dim; {RERUN}")
    if dim is not None and feats.shape[1] != dim:
        raise DataDirError(f"{scp}: utterance {utt}: {feats.shape[1]}-dim features where {dim} are expected "
                           f"(as in {dim_from or 'the first utterance'}): they come from different feature "
                           f"settings; {RERUN} with the same settings")
    if num_frames is not None and feats.shape[0] != int(num_frames):
        raise DataDirError(f"{scp}: utterance {utt}: {feats.shape[0]} frames, but utt2num_frames says {num_frames}: "
                           f"the features were rewritten without it; {RERUN}")
    if not np.isfinite(feats).all():
        raise DataDirError(f"{scp}: utterance {utt}: features hold NaN or inf (from non-finite audio?); "
                           f"check the audio with validate_data_dir --audio, then {RERUN}")
    return feats


def iter_feats(feat_dir_or_scp, dim=None, dim_from=None):
    """Yield (utt, feats) for every utterance of a feats.scp (or a dir holding one), each checked:
    readable, one dimension for all (``dim`` if given), as many frames as ``utt2num_frames`` beside
    it says (if it is there), finite."""
    scp = Path(feat_dir_or_scp)
    if scp.is_dir():
        scp = scp / "feats.scp"
    if not scp.is_file():
        raise DataDirError(f"{scp}: file not found ({RERUN})")
    entries = read_table(scp)
    if not entries:
        raise DataDirError(f"{scp}: no utterances; {RERUN}")
    u2nf = scp.parent / "utt2num_frames"
    frames = read_table(u2nf) if u2nf.is_file() else {}
    if frames and set(frames) != set(entries):
        odd = sorted(set(frames) ^ set(entries))
        raise DataDirError(f"{u2nf}: utterances differ from {scp.name} (e.g. {odd[:3]}); {RERUN}")
    for utt, entry in entries.items():
        feats = read_checked(lambda: kaldiio.load_mat(entry), utt, scp, dim, frames.get(utt), dim_from)
        if dim is None:
            dim, dim_from = feats.shape[1], f"{scp}'s first utterance {utt}"
        yield utt, feats
