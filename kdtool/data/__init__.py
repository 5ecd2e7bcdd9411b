"""Kaldi-style data directories: reading and writing their tables (datadir), validating (validate), fixing
(fix), combining (combine), speed perturbation (perturb) and reading the audio wav.scp points to (audio)."""
from kdtool.data.datadir import DataDir, DataDirError  # noqa: F401
