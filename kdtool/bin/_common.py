"""What every entry point shares: logging set-up and turning known errors into a clean exit."""
import logging
import shlex
import sys

from kdtool.errors import KdtoolError
from kdtool.utils.log import setup_logging


def command_line(module):
    """The command that is running, as a user would retype it (recorded next to what it made)."""
    return f"python -m {module} " + shlex.join(sys.argv[1:])


def run_main(main, known_errors=(KdtoolError, ValueError, RuntimeError, OSError)):
    """Call ``main()``; a known error prints one clear message and exits 1 instead of a traceback."""
    setup_logging()
    try:
        main()
    except known_errors as e:
        logging.error("%s", e)
        sys.exit(1)
