"""The frame geometry of kdtool's features (fbank.py), without its heavy imports: scoring needs the
seconds of audio behind a count of frames."""

FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0


def audio_seconds(num_frames):
    """Seconds of audio behind ``num_frames`` 10 ms frames of 25 ms windows."""
    return (int(num_frames) - 1) * (FRAME_SHIFT_MS / 1000) + FRAME_LENGTH_MS / 1000
