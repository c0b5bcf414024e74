"""The IMAP adapter: a small typed surface over imapclient (see ``session`` for the tour).

Everything a sync service needs is importable from here; the submodules hold the details.
"""

from crmsync.mail.imap.delta import Cursor, Delta, changes_since
from crmsync.mail.imap.endpoint import ImapEndpoint, Security
from crmsync.mail.imap.errors import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionLost,
    ConnectionTimedOut,
    ImapError,
    InsecureTransportRefused,
    MailboxNotFound,
    MessageNotFound,
    MissingCapability,
    PrivacyViolation,
    ServerUnavailable,
    TlsFailure,
)
from crmsync.mail.imap.fetch import FolderState, HeaderFetch, header_fetch_items
from crmsync.mail.imap.headers import Address, MessageHeaders, parse_headers
from crmsync.mail.imap.session import DEFAULT_BATCH_SIZE, DEFAULT_TIMEOUT, ImapSession
from crmsync.transport import TransportDecision, decide_transport, is_loopback_address

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_TIMEOUT",
    "Address",
    "AuthenticationFailed",
    "CommandFailed",
    "ConnectionLost",
    "ConnectionTimedOut",
    "Cursor",
    "Delta",
    "FolderState",
    "HeaderFetch",
    "ImapEndpoint",
    "ImapError",
    "ImapSession",
    "InsecureTransportRefused",
    "MailboxNotFound",
    "MessageHeaders",
    "MessageNotFound",
    "MissingCapability",
    "PrivacyViolation",
    "Security",
    "ServerUnavailable",
    "TlsFailure",
    "TransportDecision",
    "changes_since",
    "decide_transport",
    "header_fetch_items",
    "is_loopback_address",
    "parse_headers",
]
