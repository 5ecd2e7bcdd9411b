"""Write files so that a stage killed midway never leaves a half-written output behind.

Everything kdtool writes goes to ``<path>.tmp.<pid>`` first and is renamed into place when
complete; a rename within one directory is atomic on POSIX file systems.
"""
import contextlib
import os
from pathlib import Path


def tmp_path(path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.name}.tmp.{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """Like ``open(path, mode)`` but the file appears complete or not at all."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_lines(path, lines):
    with atomic_open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
