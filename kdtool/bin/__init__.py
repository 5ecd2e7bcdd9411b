"""Thin command-line entry points: ``python -m kdtool.bin.<name> --help``."""
