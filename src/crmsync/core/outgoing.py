"""Outgoing email's rules, with no I/O: the status flow, retries, recipients and size limits.

An email activity written in the CRM moves (reference §4, Dynamics' status reasons by name):

    draft ──queue──▶ pending_send ──claim──▶ sending ──250──▶ sent
      │                  │   ▲                  │
      └──cancel──▶ canceled ◀┘   └──transient───┘──permanent──▶ failed ──requeue──▶ pending_send

- ``sending`` is recorded *before* the message goes to the server (the intent), so a crash
  leaves a trace that the next run resolves by looking for the message in the mailbox's Sent
  folder before sending again (``crmsync.sync.outgoing``).
- A transient failure (4xx, server down) goes back to ``pending_send`` with the next attempt
  after :data:`RETRY_MINUTES`; after :data:`MAX_ATTEMPTS` attempts the email fails.
- A permanent failure (5xx, refused login) fails the email at once, with the server's reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

DRAFT, PENDING, SENDING, SENT, FAILED, CANCELED = (
    "draft",
    "pending_send",
    "sending",
    "sent",
    "failed",
    "canceled",
)
TRANSITIONS: dict[str, frozenset[str]] = {
    DRAFT: frozenset({PENDING, CANCELED}),
    PENDING: frozenset({SENDING, CANCELED, DRAFT}),
    SENDING: frozenset({SENT, FAILED, PENDING}),
    FAILED: frozenset({PENDING, DRAFT}),
    SENT: frozenset(),
    CANCELED: frozenset(),
}
"""Which status may follow which. Anything else is refused with :class:`StatusError`."""

RETRY_MINUTES = (1, 2, 5, 10, 15, 30, 60)
"""Waits after the 1st, 2nd... transient failure: quick at first (a busy server), then slower."""
MAX_ATTEMPTS = len(RETRY_MINUTES) + 1
"""Attempts before a transiently failing email is given up as failed (8: about two hours)."""
DEFAULT_ATTACHMENT_KB = 5120
MAX_ATTACHMENT_KB = 131072
"""Dynamics: attachments default 5 MB (5,120 KB), at most 128 MB (131,072 KB) (reference §4)."""


class StatusError(ValueError):
    """A status change the flow does not allow; the message says what is allowed."""


def check_transition(current: str, target: str) -> None:
    allowed = TRANSITIONS.get(current)
    if allowed is None:
        raise StatusError(f"unknown email status {current!r}")
    if target not in allowed:
        could = ", ".join(sorted(allowed)) or "nothing (it is final)"
        raise StatusError(
            f"an email that is {current} cannot become {target}; it can become: {could}"
        )


def next_attempt(attempts: int, failed_at: datetime) -> datetime | None:
    """When to try again after ``attempts`` attempts, the last of which failed transiently at
    ``failed_at``; ``None``: give up (the email fails)."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    if attempts >= MAX_ATTEMPTS:
        return None
    return failed_at + timedelta(minutes=RETRY_MINUTES[attempts - 1])


@dataclass(frozen=True, slots=True)
class Recipient:
    """One To/Cc/Bcc party as the CRM has it: a record (contact, lead, user...) with its
    primary address, or a bare address that no record has."""

    role: str
    address: str | None
    record_name: str | None = None
    """None: no CRM record has this address (an *unresolved* recipient)."""


def recipient_problems(recipients: Sequence[Recipient], *, allow_unresolved: bool) -> list[str]:
    """Why the email cannot be sent to these recipients (empty: it can)."""
    problems: list[str] = []
    if not any(r.role in ("to", "cc", "bcc") for r in recipients):
        problems.append("the email has no recipient (To, Cc or Bcc)")
    for r in recipients:
        if r.record_name is not None and not r.address:
            problems.append(
                f"{r.record_name} has no primary email address; add one to the record or "
                "remove the recipient"
            )
        elif r.record_name is None and not allow_unresolved:
            problems.append(
                f"{r.address} is not the address of any CRM record, and the organization does "
                "not allow unresolved recipients (crmsync settings set "
                "allow_unresolved_recipients true)"
            )
    return problems


def attachment_problem(sizes: Sequence[int], limit_kb: int) -> str | None:
    """Dynamics' limit applies per attachment; ``None`` when every attachment fits."""
    limit = limit_kb * 1024
    for size in sizes:
        if size > limit:
            return (
                f"an attachment of {size:,} bytes is larger than the organization's limit of "
                f"{limit_kb:,} KB (crmsync settings set max_attachment_kb N, at most "
                f"{MAX_ATTACHMENT_KB:,})"
            )
    return None
