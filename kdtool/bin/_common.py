"""What every entry point shares: logging set-up and turning known errors into a clean exit."""
import logging
import shlex
import sys

from kdtool.errors import KdtoolError
from kdtool.utils import provenance
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


def dump_jobs_and_check(parser, args, record, done, options):
    """What the dump entry points share before any work: ``--nj N`` needs ``--job`` or ``--merge``, and
    ``--check`` (kd.sh asks it before every dump, so it runs before torch is imported) prints whether
    ``--out_dir`` is complete and made from this teacher, data and ``options``, and exits 0 (yes) or 1."""
    if args.job is None and not args.merge and not args.check and args.nj > 1:
        parser.error(f"--nj {args.nj} needs --job (one of the jobs) or --merge")
    if args.check:
        why = provenance.check_up_to_date(args.out_dir, record, done, options, args.teacher, args.data)
        print(f"{args.out_dir}: {why or 'up to date'}")
        sys.exit(1 if why else 0)
