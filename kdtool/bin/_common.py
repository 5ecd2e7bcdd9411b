"""What every entry point shares: logging set-up and turning known errors into a clean exit."""
import logging
import shlex
import sys

from kdtool.errors import KdtoolError
from kdtool.utils.log import setup_logging


def command_line(module):
    """The command that is running, as a user would retype it (recorded next to what it made)."""
    return f"python -m {module} " + shlex.join(sys.argv[1:])


def run_main(main, known_errors=(KdtoolError, ValueError, OSError)):
    """Call ``main()``; a known error prints one clear message and exits 1 instead of a traceback.

    Known: kdtool's own errors (kdtool.errors.KdtoolError), the plain ValueErrors that still name bad
    input, and OSError (a file that cannot be read or written, which names the file). Not RuntimeError:
    kdtool raises none of its own (AudioError and LockedError are KdtoolErrors), so one that escapes comes
    from torch or a library (a shape mismatch, out of memory) and its traceback is what finds the bug."""
    setup_logging()
    try:
        main()
    except known_errors as e:
        logging.error("%s", e)
        sys.exit(1)
