"""Errors a user can act on.

Every error raised to a face (CLI, API) is a ``CrmsyncError`` whose message says what went wrong
and, where possible, what to do about it. Anything else reaching a face is a bug.
"""

from __future__ import annotations


class CrmsyncError(Exception):
    """An error with a message meant for the person running crmsync."""


class ConfigError(CrmsyncError):
    """The configuration (environment, key file, URL) is missing or invalid."""


class DatabaseError(CrmsyncError):
    """The database cannot be reached, started or migrated."""


class SecretError(CrmsyncError):
    """A stored secret cannot be encrypted or decrypted with the configured keys."""


class NotFound(CrmsyncError):
    """A named record (user, mailbox, ...) does not exist."""


class InvalidInput(CrmsyncError):
    """A value given on the command line or in a file is not acceptable."""
