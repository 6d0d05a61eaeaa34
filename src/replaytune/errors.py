"""The one exception type the command line turns into a one-line message (no traceback)."""


class ReplaytuneError(Exception):
    """A user-facing error: the message names the file, line or field and how to fix it."""


class DataError(ReplaytuneError, ValueError):
    """Bad input data: missing file, empty source, malformed line, mismatched store."""


class ConfigError(ReplaytuneError, ValueError):
    """A config field with a wrong value; the message names the field and allowed values."""
