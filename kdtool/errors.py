"""The base of kdtool's expected errors: bad input, a damaged or missing file, another run in the way.

Entry points (kdtool.bin._common.run_main) print such an error as its message alone and exit 1; the
message names the file, the line or utterance, what is wrong and what to do. Anything else that
escapes is a bug and keeps its traceback. Each layer's own kinds derive from KdtoolError (DataDirError,
AudioError, LockedError, SoftLabelError, StaleDumpError, ExportError, PackageError); those that also
derive from ValueError or RuntimeError do so for callers that catch the builtin.
"""


class KdtoolError(Exception):
    """An expected failure whose message is all the user needs."""


class ConfigError(KdtoolError, ValueError):
    """A config (training, decoding, kd_conf, a --set override) that cannot be used; the message names
    the file and the key."""
