"""The errors a user can cause, as opposed to bugs.

Every entry point turns a :class:`UserError` into one line ``error: ...`` on stderr and
exit status 2 (:func:`meta_safe.cli.errors.run_cli`); anything else is a bug and keeps
its traceback. Messages name the key or file, the value, and what would be valid.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "RunDirError", "UserError"]


class UserError(Exception):
    """A mistake in what was asked for (a value, a file, a combination)."""


class ConfigError(UserError, ValueError):
    """An invalid configuration value or combination of values."""


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, of an unknown format, or cannot be written."""


class RunDirError(UserError):
    """A run directory that would be overwritten, or cannot be resumed."""
