"""User-facing errors and warnings.

A :class:`PrivradError` is something a user can meet and fix: its message is one sentence
that names the file, column or value and says what to do. The CLI prints it without a
traceback and exits non-zero. Anything else that escapes is a bug and keeps its traceback.

A :class:`PrivradWarning` is one sentence too, printed as ``privrad: <sentence>`` — in a
terminal and in a notebook's output alike — without Python's ``file:line: Category:`` prefix
and the source line it would add (:func:`install_warning_format`, done on ``import privrad``).
"""

import warnings


class PrivradError(Exception):
    """An input or configuration problem the user can fix (one actionable sentence)."""


class DataError(PrivradError):
    """A dataset file, column or value is missing or malformed."""


class ConfigError(PrivradError):
    """A run or study configuration value is invalid."""


class PrivacyError(PrivradError):
    """A privacy target that cannot be met or a privacy parameter that is invalid."""


class PrivradWarning(UserWarning):
    """Something a user should know that does not stop the work (one sentence)."""


_python_formatwarning = warnings.formatwarning


def _formatwarning(message, category, filename, lineno, line=None):
    if isinstance(category, type) and issubclass(category, PrivradWarning):
        return f"privrad: {message}\n"
    return _python_formatwarning(message, category, filename, lineno, line)


def install_warning_format() -> None:
    """Show privrad's own warnings as one line, ``privrad: <sentence>``; others as Python does."""
    warnings.formatwarning = _formatwarning
