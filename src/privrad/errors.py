"""User-facing errors.

A :class:`PrivradError` is something a user can meet and fix: its message is one sentence
that names the file, column or value and says what to do. The CLI prints it without a
traceback and exits non-zero. Anything else that escapes is a bug and keeps its traceback.
"""


class PrivradError(Exception):
    """An input or configuration problem the user can fix (one actionable sentence)."""


class DataError(PrivradError):
    """A dataset file, column or value is missing or malformed."""


class ConfigError(PrivradError):
    """A run or study configuration value is invalid."""


class PrivacyError(PrivradError):
    """A privacy target that cannot be met or a privacy parameter that is invalid."""
