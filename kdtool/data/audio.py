"""Read the audio an entry of wav.scp points to: a file soundfile can read (wav, flac, ...) or
a Kaldi-style shell command ending in '|' that writes a wav file to stdout."""
import io
import os
import subprocess

import soundfile


class AudioError(RuntimeError):
    """The audio of an utterance is missing, unreadable or not what the data dir promises."""


def _open(entry):
    entry = entry.strip()
    if entry.endswith("|"):
        proc = subprocess.run(entry[:-1], shell=True, capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise AudioError(f"command failed ({proc.returncode}): {entry[:-1]}: {' '.join(err[-2:])}")
        return io.BytesIO(proc.stdout)
    if not os.path.isfile(entry):
        raise AudioError(f"audio file {entry} does not exist")
    return entry


def load_audio(entry, expected_rate=None):
    """Return (samples as float32 in [-1, 1], mono, sample rate)."""
    try:
        samples, rate = soundfile.read(_open(entry), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError for unreadable data
        raise AudioError(f"cannot read audio {entry.strip()}: {e}") from None
    if expected_rate is not None and rate != expected_rate:
        raise AudioError(f"audio {entry.strip()} has sample rate {rate} Hz, expected {expected_rate} Hz")
    if samples.shape[0] == 0:
        raise AudioError(f"audio {entry.strip()} has no samples")
    return samples.mean(axis=1), rate


def audio_info(entry):
    """Return (sample rate, number of samples) without decoding a plain file."""
    src = _open(entry)
    try:
        info = soundfile.info(src)
    except Exception as e:
        raise AudioError(f"cannot read audio {entry.strip()}: {e}") from None
    return info.samplerate, info.frames

