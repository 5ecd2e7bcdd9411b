"""Acoustic features: Kaldi-compatible fbank written to ark/scp, and global CMVN."""
