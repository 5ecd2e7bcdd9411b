"""Acoustic features: Kaldi-compatible fbank written to ark/scp (fbank), its frame geometry (frames:
frames to seconds, without torch), checked reads of feats.scp (reader) and global CMVN (cmvn)."""
