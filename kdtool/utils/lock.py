"""Refuse to write an output that another run is writing: two runs into one dir would each exit 0
and the last rename would silently win. A lock is an flock on a small file that says who holds it;
the kernel drops it when its process dies (a killed run never blocks its rerun)."""
import contextlib
import fcntl
import os
import shlex
import sys
import time
from pathlib import Path

from kdtool.errors import KdtoolError


class LockedError(KdtoolError, RuntimeError):
    """Another run holds the lock."""


@contextlib.contextmanager
def hold_lock(path, what):
    """Hold the lock ``path`` for the block, or raise LockedError naming the run that holds it.
    ``what``: the output being written, for the message."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that has not written its name yet"
            raise LockedError(f"{what} is being written by another run ({holder}; lock {path}); "
                              "wait for it to finish or stop it, then rerun") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{shlex.join([os.path.basename(sys.executable)] + sys.argv)}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()  # released: nobody to name (the flock goes with the close)
