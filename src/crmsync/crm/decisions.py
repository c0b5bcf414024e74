"""The decision trace: what crmsync decided about every message it saw in a mailbox, and why.

One row per message copy (mailbox, folder, UIDVALIDITY, UID). It is what ``crmsync explain``
prints, what makes a sync resumable (a message with a row is not decided again after a crash),
and where a message that could not be fetched, parsed or stored waits to be retried
(``quarantined``, with its error and the time of the next attempt).

The trace holds metadata only (addresses, ids, reason codes), never a subject or a body, so it
may be kept for every message of a metadata-only mailbox too.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from crmsync.crm.base import Base, StrEnum, created_at, enum_column, new_id, utcnow


class Outcome(StrEnum):
    TRACKED = "tracked"
    """A new email activity was created from this message."""
    LINKED = "linked"
    """The message was an activity already (another mailbox tracked it); this copy links to it."""
    NOT_TRACKED = "not_tracked"
    QUARANTINED = "quarantined"
    """It could not be fetched, parsed or stored; retried with back-off on later syncs."""
    FAILED = "failed"
    """Quarantined too often: no more automatic retries (``crmsync explain`` says why)."""


class ServiceReason(StrEnum):
    """Reason codes of the sync service itself (the tracking decision's are ``ReasonCode``)."""

    RECEIVED_BEFORE_START = "received_before_start"
    FETCH_FAILED = "fetch_failed"
    PARSE_FAILED = "parse_failed"
    STORE_FAILED = "store_failed"
    INTERNAL_ERROR = "internal_error"
    REMAPPED = "remapped"
    """The folder's UIDVALIDITY changed and this copy was re-mapped to its earlier decision."""


class MessageDecision(Base):
    __tablename__ = "message_decision"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    mailbox_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("mailbox.id", ondelete="CASCADE"))
    folder: Mapped[str] = mapped_column(sa.String(1000))
    uidvalidity: Mapped[int] = mapped_column(sa.BigInteger)
    uid: Mapped[int] = mapped_column(sa.BigInteger)
    message_id: Mapped[str | None] = mapped_column(sa.String(998), index=True)
    """Normalized (crmsync.core.correlate.normalize_message_id)."""
    dedupe_key: Mapped[str] = mapped_column(sa.String(1000), index=True)
    sender: Mapped[str | None] = mapped_column(sa.String(320))
    received_at: Mapped[datetime | None]
    """The server's INTERNALDATE."""
    size_bytes: Mapped[int | None]

    outcome: Mapped[Outcome] = mapped_column(enum_column(Outcome, "decision_outcome"))
    reason: Mapped[str] = mapped_column(sa.String(64))
    """A ``crmsync.core.promote.ReasonCode`` or a ``ServiceReason``."""
    detail: Mapped[str] = mapped_column(sa.Text, default="")
    accepted_by_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("record.id", ondelete="SET NULL")
    )
    correlation_method: Mapped[str | None] = mapped_column(sa.String(32))
    correlation_detail: Mapped[str | None] = mapped_column(sa.Text)
    parties: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB(none_as_null=True))
    """Resolved parties: role, address, resolution, record ids and why."""
    email_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("email.id", ondelete="SET NULL"), index=True
    )
    defects: Mapped[list[str] | None] = mapped_column(JSONB(none_as_null=True))
    """What was odd about the message (bad encodings, broken parts) and was worked around."""

    attempts: Mapped[int] = mapped_column(default=0)
    """Failed attempts so far (quarantine)."""
    next_attempt_at: Mapped[datetime | None]
    marked: Mapped[bool] = mapped_column(default=False)
    """The tracked keyword is set on the server's copy."""
    decided_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = mapped_column(
        server_default=sa.func.now(), default=utcnow, onupdate=utcnow
    )

    __table_args__ = (
        sa.UniqueConstraint("mailbox_id", "folder", "uidvalidity", "uid"),
        sa.Index(
            "ix_message_decision_retry",
            "mailbox_id",
            "next_attempt_at",
            postgresql_where=sa.text("outcome = 'quarantined'"),
        ),
        sa.Index(
            "ix_message_decision_unmarked",
            "mailbox_id",
            postgresql_where=sa.text("outcome IN ('tracked', 'linked') AND NOT marked"),
        ),
    )
