"""Kaldi-style data directories: reading, writing, validating and fixing them."""
from kdtool.data.datadir import DataDir, DataDirError  # noqa: F401
