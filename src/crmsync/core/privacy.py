"""How much of a message crmsync may take from a mailbox: decided before anything is fetched.

Privacy is enforced at ingestion, not at display: a mailbox at ``metadata`` never asks the
server for a subject or a body, so they never cross the wire, never reach memory, and cannot leak
from the database later. The organization's level is a ceiling: a mailbox may be stricter, never
looser.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PrivacyLevel(enum.StrEnum):
    METADATA = "metadata"
    """Addresses, dates, sizes, message ids and threading headers only."""
    SUBJECT = "subject"
    """Metadata plus the subject line."""
    EVERYTHING = "everything"
    """The whole message: subject, bodies, attachments."""

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {PrivacyLevel.METADATA: 0, PrivacyLevel.SUBJECT: 1, PrivacyLevel.EVERYTHING: 2}

DEFAULT_ORG_LEVEL = PrivacyLevel.EVERYTHING

# Headers needed to decide whether to track and to correlate, and nothing personal beyond the
# addresses themselves. Subject is deliberately not here.
METADATA_HEADERS = (
    "Message-ID",
    "In-Reply-To",
    "References",
    "Date",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "List-Id",
    "List-Unsubscribe",
    "Auto-Submitted",
    "Precedence",
    "X-Auto-Response-Suppress",
)


def effective_level(org: PrivacyLevel | str, mailbox: PrivacyLevel | str | None) -> PrivacyLevel:
    """The stricter of the organization's ceiling and the mailbox's own setting."""
    # Coerce: levels read back from the database or JSON are plain strings, and an identity
    # comparison against the enum would silently fail open.
    org = PrivacyLevel(org)
    if mailbox is None:
        return org
    mailbox = PrivacyLevel(mailbox)
    return org if org.rank <= mailbox.rank else mailbox


@dataclass(frozen=True)
class FetchPlan:
    """What the IMAP adapter may request for one message."""

    header_fields: tuple[str, ...]
    """Header fields to fetch with BODY.PEEK[HEADER.FIELDS (...)] for the tracking decision."""
    full_message: bool
    """Whether the whole message (bodies, attachments) may be fetched once it is to be tracked."""

    @property
    def subject(self) -> bool:
        return "Subject" in self.header_fields


def fetch_plan(level: PrivacyLevel | str) -> FetchPlan:
    level = PrivacyLevel(level)  # a stored string must not fail open (see effective_level)
    if level is PrivacyLevel.METADATA:
        return FetchPlan(header_fields=METADATA_HEADERS, full_message=False)
    headers = (*METADATA_HEADERS, "Subject")
    return FetchPlan(header_fields=headers, full_message=level is PrivacyLevel.EVERYTHING)
