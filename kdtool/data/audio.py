"""Read the audio an entry of wav.scp points to: a file soundfile can read (wav, flac, ...) or
a Kaldi-style shell command ending in '|' that writes a wav file to stdout.

Every read is checked, so that bad audio fails here, naming itself, instead of turning into bad
features: the samples must be finite (a float wav can hold NaN) and as many as the header promises
(a file cut short reads without an error otherwise). A command runs with stdin closed (one that
reads it would wait forever) and a timeout: ``timeout`` seconds, by default $KDTOOL_WAV_CMD_TIMEOUT
or 300.
"""
import io
import os
import signal
import struct
import subprocess

import numpy as np
import soundfile

from kdtool.errors import KdtoolError

DEFAULT_TIMEOUT = 300.0
# Data sizes that writers to a pipe put in a header they cannot seek back to fix (sox, ffmpeg):
# they promise nothing.
_UNKNOWN_SIZE = 0x7FFFF000


class AudioError(KdtoolError, RuntimeError):
    """The audio of an utterance is missing, unreadable or not what the data dir promises."""


def cmd_timeout(timeout=None):
    """Seconds a wav.scp command may run: ``timeout``, else $KDTOOL_WAV_CMD_TIMEOUT, else 300."""
    if timeout is not None:
        return float(timeout)
    env = os.environ.get("KDTOOL_WAV_CMD_TIMEOUT")
    try:
        return float(env) if env else DEFAULT_TIMEOUT
    except ValueError:
        raise AudioError(f"KDTOOL_WAV_CMD_TIMEOUT={env!r}: not a number of seconds") from None


def run_command(cmd, timeout=None):
    """stdout of the shell command ``cmd``; an AudioError if it fails or outlives the timeout.

    It runs in a session of its own so that a timeout kills the whole pipeline, not just the shell
    (a surviving ``sleep`` would keep stdout open and the read waiting)."""
    timeout = cmd_timeout(timeout)
    proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AudioError(f"command did not finish in {timeout:g} s (raise it with --cmd_timeout or "
                         f"KDTOOL_WAV_CMD_TIMEOUT if it is only slow): {cmd}") from None
    finally:
        if proc.poll() is None:  # timed out, or interrupted: take the pipeline down with us
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise AudioError(f"command failed ({proc.returncode}): {cmd}: {' '.join(lines[-2:])}")
    if not out:
        raise AudioError(f"command wrote nothing (one that reads stdin gets it closed): {cmd}")
    return out


def _open(entry, timeout=None):
    entry = entry.strip()
    if entry.endswith("|"):
        return io.BytesIO(run_command(entry[:-1].strip(), timeout))
    if not os.path.isfile(entry):
        raise AudioError(f"audio file {entry} does not exist")
    return entry


def _header(src, size=1 << 16):
    if isinstance(src, io.BytesIO):
        return src.getvalue()[:size]
    with open(src, "rb") as f:
        return f.read(size)


def wav_declared_frames(header):
    """The number of frames a RIFF/WAVE header's data chunk promises, or None (not a wav, or a size
    left unknown by a writer that could not seek)."""
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return None
    pos, block_align = 12, None
    while pos + 8 <= len(header):
        cid, size = header[pos:pos + 4], struct.unpack("<I", header[pos + 4:pos + 8])[0]
        if cid == b"fmt " and pos + 22 <= len(header):
            block_align = struct.unpack("<H", header[pos + 20:pos + 22])[0]
        elif cid == b"data":
            if not block_align or size == 0 or size >= _UNKNOWN_SIZE:
                return None
            return size // block_align
        pos += 8 + size + (size & 1)
    return None


def load_audio(entry, expected_rate=None, timeout=None):
    """Return (samples as float32 in [-1, 1], mono, sample rate); an AudioError for audio that is
    missing, unreadable, empty, cut short, non-finite or at another rate than ``expected_rate``."""
    src = _open(entry, timeout)
    what = entry.strip()
    try:
        with soundfile.SoundFile(src) as f:
            rate, frames = f.samplerate, f.frames
            samples = f.read(dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError for unreadable data
        raise AudioError(f"cannot read audio {what}: {str(e).replace(repr(src), 'its output')}") from None
    if expected_rate is not None and rate != expected_rate:
        raise AudioError(f"audio {what} has sample rate {rate} Hz, expected {expected_rate} Hz")
    if samples.shape[0] == 0:
        raise AudioError(f"audio {what} has no samples")
    # libsndfile quietly reads what is there of a truncated wav: compare with the header ourselves
    declared = max(frames, wav_declared_frames(_header(src)) or 0)
    if samples.shape[0] < declared:
        raise AudioError(f"audio {what} is cut short: {samples.shape[0]} samples where its header promises "
                         f"{declared} (a truncated file or copy); restore the full file")
    finite = np.isfinite(samples).all(axis=1)
    if not finite.all():
        first = int(np.argmin(finite))
        raise AudioError(f"audio {what} has {int((~finite).sum())} non-finite samples (NaN or inf), the first "
                         f"at {first / rate:.3f} s; fix or drop the recording")
    return samples.mean(axis=1), rate
