"""Kaldi-style data directories: reading, writing, validating, fixing and combining them."""
from kdtool.data.datadir import DataDir, DataDirError  # noqa: F401
