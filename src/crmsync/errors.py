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


class ServerError(CrmsyncError):
    """A mail or calendar server failed us. ``transient`` says whether retrying later can help:
    the scheduler backs off and retries transient errors, and disables the mailbox at once on
    permanent ones (docs/scheduling.md). Each protocol adapter (IMAP, SMTP, DAV) derives its own
    taxonomy from it; a class sets its default, an instance may override it."""

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient
