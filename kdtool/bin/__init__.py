"""Thin command-line entry points, one per command (``python -m kdtool.bin.<name> --help``): they parse
options and call the layers below; nothing outside bin/ imports them."""
