"""What can go wrong talking to an IMAP server, sorted for the scheduler.

Every ``ImapError`` says whether retrying later can help (``transient``): the scheduler backs off
and retries transient errors and disables the mailbox at once on permanent ones. Messages name the
server and the user and say what to do; they never contain the password (the session scrubs it
from anything a server or a library might echo back, as a second line of defence).

``PrivacyViolation`` is deliberately *not* an ``ImapError`` (nor a ``CrmsyncError``): it means a
caller asked for more of a message than its privacy plan allows, which is a bug to fix, not a
server condition to retry or to show to a user as their problem.
"""

from __future__ import annotations

from crmsync.errors import ServerError


class ImapError(ServerError):
    """Base of every IMAP adapter error; ``transient`` tells the scheduler whether to retry."""


class AuthenticationFailed(ImapError):
    """The server refused the username/password: retrying with the same password cannot help."""

    transient = False


class TlsFailure(ImapError):
    """TLS could not be set up (bad certificate, wrong host name, not a TLS port...)."""

    transient = False


class InsecureTransportRefused(TlsFailure):
    """crmsync refused to send a password in clear text to a host that is not loopback."""


class MailboxNotFound(ImapError):
    """The folder does not exist (or is not visible to this user)."""

    transient = False


class MissingCapability(ImapError):
    """The server lacks an IMAP extension that the requested operation needs."""

    transient = False

    def __init__(self, message: str, *, capability: str) -> None:
        super().__init__(message)
        self.capability = capability


class MessageNotFound(ImapError):
    """A UID has no message any more (expunged since it was listed): skip it."""

    transient = False


class ServerUnavailable(ImapError):
    """The server cannot be reached or is refusing work for now: retry later."""

    transient = True


class ConnectionTimedOut(ServerUnavailable):
    """The server did not answer within the configured timeout."""


class ConnectionLost(ServerUnavailable):
    """The connection was reset or closed in the middle of a command."""


class CommandFailed(ImapError):
    """The server answered NO or BAD to a command we expected to succeed.

    Transient unless the server said why and the reason is permanent, or the answer was BAD
    (a command the server does not understand will not be understood later either).
    """

    transient = True


class PrivacyViolation(RuntimeError):
    """A caller asked for message content its ``FetchPlan`` forbids: a programming error."""
