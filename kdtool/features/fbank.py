"""80-dim log-mel filterbank, the features sherpa-onnx and kaldi-native-fbank compute from raw audio
(so a model trained on them runs in those runtimes unchanged), computed for a slice of a data dir
and stored with kaldiio."""
import contextlib
import logging
import os
from pathlib import Path

import kaldiio
import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
from tqdm import tqdm

from kdtool.data.audio import AudioError, load_audio
from kdtool.data.datadir import DataDirError, read_table, write_table
from kdtool.data.validate import validate_data_dir
from kdtool.features.frames import FRAME_LENGTH_MS, FRAME_SHIFT_MS
from kdtool.utils.jobs import check_jobs, job_slice
from kdtool.utils.lock import hold_lock

# The one definition of kdtool's features; every model, dump and export depends on it.
# These are the options of kaldi-native-fbank as sherpa-onnx sets them (../shared/deploy-notes.md):
# audio in [-1, 1] (not the int16 scale), frames centred on 10 ms steps (snip_edges false: T =
# round(samples / 160)), mel bins from 20 Hz to Nyquist - 400 Hz, no dither (same input, same output).
# Everything else is Kaldi's default: 25 ms Povey window, pre-emphasis 0.97, DC offset removed,
# log of mel power floored at float epsilon. tests/test_features.py checks it against kaldi-native-fbank.
FBANK_OPTS = dict(frame_length=FRAME_LENGTH_MS, frame_shift=FRAME_SHIFT_MS, dither=0.0, snip_edges=False,
                  low_freq=20.0, high_freq=-400.0, energy_floor=0.0)


def fbank(samples, sample_rate=16000, num_mel_bins=80):
    """samples: float32 numpy array in [-1, 1]. Returns a float32 numpy array (frames, num_mel_bins)."""
    wav = torch.from_numpy(samples).unsqueeze(0)
    feats = kaldi.fbank(wav, num_mel_bins=num_mel_bins, sample_frequency=sample_rate, **FBANK_OPTS)
    return feats.numpy()


def job_paths(out_dir, job):
    d = Path(out_dir).resolve() / "data"  # absolute in feats.scp, as Kaldi's make_fbank.sh: readable from anywhere
    return d / f"feats.{job}.ark", d / f"feats.{job}.scp", d / f"utt2num_frames.{job}"


def job_lock(out_dir, job):
    """Held by the job while it writes, and by the merge for every job: a second run into the same
    dir is refused, naming the first."""
    return hold_lock(Path(out_dir) / ".locks" / f"fbank.{job}.lock", f"{Path(out_dir) / 'data'} (feature job {job})")


def remove_stale(out_dir, job):
    """Remove what a new job replaces: the merged feats.scp and utt2num_frames (they would point into
    the ark this job rewrites), this job's earlier outputs and the temp files of a killed run."""
    out = Path(out_dir)
    ark, scp, u2nf = job_paths(out, job)
    stale = [out / "feats.scp", out / "utt2num_frames", ark, scp, u2nf]
    stale += [p for p in ark.parent.glob(f"*.{job}.*.tmp.*")] + list(ark.parent.glob(f"utt2num_frames.{job}.tmp.*"))
    for p in stale:
        p.unlink(missing_ok=True)


def checked_data_dir(data_dir):
    """The data dir, validated (structure, not audio: each job reads its own audio) and with wav.scp."""
    data = validate_data_dir(data_dir, quiet=True)
    if not data.has("wav.scp"):
        raise DataDirError(f"{data.path / 'wav.scp'}: file not found (features are computed from it)")
    return data


def compute_fbank_job(data_dir, out_dir, job, nj, sample_rate=16000, num_mel_bins=80, cmd_timeout=None):
    """Write ``out_dir/data/feats.<job>.{ark,scp}`` and ``utt2num_frames.<job>`` for one slice.

    The ark and scp are written under temporary names and renamed at the end, so a killed job
    leaves nothing that a later step could mistake for complete output. The data dir is validated
    first, every utterance's audio is checked as it is read (kdtool.data.audio.load_audio), and a
    wav.scp command runs at most ``cmd_timeout`` seconds.
    """
    check_jobs(nj, job)
    torch.set_num_threads(1)  # parallelism comes from the jobs
    data = checked_data_dir(data_dir)
    wav_scp = data.read("wav.scp")
    utts = job_slice(data.utts, job, nj)
    ark, scp, u2nf = job_paths(out_dir, job)
    ark.parent.mkdir(parents=True, exist_ok=True)
    with job_lock(out_dir, job):
        remove_stale(out_dir, job)
        num_frames = _write_job(data, wav_scp, utts, ark, scp, f"{job}/{nj}", sample_rate, num_mel_bins, cmd_timeout)
        write_table(u2nf, num_frames)
    logging.info("%s job %d/%d: %d utterances, %d frames", data.path, job, nj, len(utts),
                 sum(int(n) for n in num_frames.values()))


def _write_job(data, wav_scp, utts, ark, scp, name, sample_rate, num_mel_bins, cmd_timeout):
    tmp_ark, tmp_scp = ark.with_name(ark.name + f".tmp.{os.getpid()}"), scp.with_name(scp.name + f".tmp.{os.getpid()}")
    num_frames = {}
    try:
        with kaldiio.WriteHelper(f"ark,scp:{tmp_ark},{tmp_scp}") as writer:
            for utt in tqdm(utts, desc=f"fbank {data.path.name} job {name}", mininterval=5):
                where = f"{data.path / 'wav.scp'}: utterance {utt}"
                try:
                    samples, _ = load_audio(wav_scp[utt], expected_rate=sample_rate, timeout=cmd_timeout)
                except AudioError as e:
                    raise DataDirError(f"{where}: {e}") from None
                window = int(sample_rate * FBANK_OPTS["frame_length"] / 1000)
                if len(samples) < window:  # torchaudio asserts on it; no frame could hold speech anyway
                    raise DataDirError(f"{where}: audio too short: {len(samples)} samples, one "
                                       f"{FBANK_OPTS['frame_length']:g} ms window needs {window}; drop the utterance")
                feats = fbank(samples, sample_rate, num_mel_bins)
                if feats.shape[0] == 0:
                    raise DataDirError(f"{where}: audio too short for one 10 ms frame")
                if not np.isfinite(feats).all():
                    raise DataDirError(f"{where}: its features hold NaN or inf; check the audio")
                writer(utt, feats)
                num_frames[utt] = str(feats.shape[0])
        # The scp points at the temporary ark name; the byte offsets stay valid after the rename.
        lines = tmp_scp.read_text().replace(f"{tmp_ark}:", f"{ark}:")
        tmp_scp.write_text(lines)
        os.replace(tmp_ark, ark)
        os.replace(tmp_scp, scp)
    finally:
        for t in (tmp_ark, tmp_scp):
            if t.exists():
                t.unlink()
    return num_frames


def merge_fbank_jobs(data_dir, out_dir, nj):
    """Join the jobs' outputs into ``out_dir/feats.scp`` + ``utt2num_frames`` and copy the data
    dir's files next to them, so ``out_dir`` is a complete data dir of its own. Refused while
    another run writes one of the jobs."""
    check_jobs(nj)
    data, out = checked_data_dir(data_dir), Path(out_dir)
    with contextlib.ExitStack() as locks:
        for job in range(1, nj + 1):
            locks.enter_context(job_lock(out, job))
        _merge(data, out, nj)


def _merge(data, out, nj):
    feats, frames = {}, {}
    for job in range(1, nj + 1):
        _, scp, u2nf = job_paths(out, job)
        if not scp.exists() or not u2nf.exists():
            raise DataDirError(f"{scp}: missing: feature job {job} of {nj} did not finish; rerun the stage")
        feats.update(read_table(scp))
        frames.update(read_table(u2nf))
    if set(feats) != set(data.utts) or set(frames) != set(feats):
        extra, missing = sorted(set(feats) - set(data.utts)), sorted(set(data.utts) - set(feats))
        raise DataDirError(f"{out}/data: features do not match {data.path} "
                           f"(missing: {missing[:3]}, not in data dir: {extra[:3]}); rerun the stage")
    for name in ("wav.scp", "text", "utt2spk", "spk2utt"):
        if data.has(name):
            write_table(out / name, data.read(name, allow_empty=(name == "text")))
    write_table(out / "utt2num_frames", frames)
    write_table(out / "feats.scp", feats)
    n = sum(int(v) for v in frames.values())
    logging.info("%s: %d utterances, %d frames (%.2f hours)", out, len(feats), n, n / 100 / 3600)
