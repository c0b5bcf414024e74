"""Activities: email, appointments and tasks, with their parties and attachments.

An activity is a record (so it has an owner and can be shared) that is optionally "regarding"
another record of any type. Its parties say who took part and how; each party is either resolved
to a CRM record or kept as the bare address it arrived with.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crmsync.core.correlate import CorrelationMethod
from crmsync.crm.base import (
    Base,
    PartyRole,
    Resolution,
    StrEnum,
    created_at,
    enum_column,
    new_id,
)
from crmsync.crm.records import Record


class ActivityStatus(StrEnum):
    OPEN = "open"
    COMPLETED = "completed"
    CANCELED = "canceled"
    SCHEDULED = "scheduled"


class Activity(Record):
    __tablename__ = "activity"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True
    )
    subject: Mapped[str] = mapped_column(sa.String(400), default="")
    description: Mapped[str | None] = mapped_column(sa.Text)
    """Plain-text body."""
    regarding_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("record.id", ondelete="SET NULL"), index=True
    )
    """The record this activity is about: any type (account, case, opportunity...)."""
    status: Mapped[ActivityStatus] = mapped_column(
        enum_column(ActivityStatus, "activity_status"), default=ActivityStatus.OPEN
    )
    priority: Mapped[int] = mapped_column(sa.SmallInteger, default=1)
    """0 low, 1 normal, 2 high."""
    scheduled_start: Mapped[datetime | None]
    scheduled_end: Mapped[datetime | None]
    actual_start: Mapped[datetime | None]
    actual_end: Mapped[datetime | None]

    regarding: Mapped[Record | None] = relationship(foreign_keys=[regarding_id], lazy="joined")
    parties: Mapped[list[ActivityParty]] = relationship(
        back_populates="activity",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="ActivityParty.position",
    )
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="activity", cascade="all, delete-orphan", lazy="select"
    )

    __table_args__ = (sa.CheckConstraint("priority BETWEEN 0 AND 2", name="priority_range"),)
    __mapper_args__ = {
        "polymorphic_identity": "activity",
        "inherit_condition": id == Record.id,
    }

    def parties_in(self, role: PartyRole) -> list[ActivityParty]:
        return [p for p in self.parties if p.role == role]


class EmailDirection(StrEnum):
    INCOMING = "incoming"
    OUTGOING = "outgoing"


class EmailStatus(StrEnum):
    """Dynamics' email status reasons, by name."""

    DRAFT = "draft"
    COMPLETED = "completed"
    SENT = "sent"
    RECEIVED = "received"
    CANCELED = "canceled"
    PENDING_SEND = "pending_send"
    SENDING = "sending"
    FAILED = "failed"


class Email(Activity):
    __tablename__ = "email"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("activity.id", ondelete="CASCADE"), primary_key=True
    )
    direction: Mapped[EmailDirection] = mapped_column(enum_column(EmailDirection, "direction"))
    email_status: Mapped[EmailStatus] = mapped_column(
        enum_column(EmailStatus, "email_status"), default=EmailStatus.DRAFT
    )
    dedupe_key: Mapped[str] = mapped_column(sa.String(1000))
    """``mid:<normalized Message-ID>``, or ``sha256:<content hash>`` for mail without one: the same
    message received by ten mailboxes is one activity."""
    message_id: Mapped[str | None] = mapped_column(sa.String(998), index=True)
    in_reply_to: Mapped[str | None] = mapped_column(sa.String(998), index=True)
    references: Mapped[str | None] = mapped_column(sa.Text)
    thread_key: Mapped[str | None] = mapped_column(sa.String(998), index=True)
    tracking_token: Mapped[str | None] = mapped_column(sa.String(40), index=True)
    correlation_method: Mapped[CorrelationMethod] = mapped_column(
        enum_column(CorrelationMethod, "correlation_method"), default=CorrelationMethod.NONE
    )
    correlated_activity_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("email.id", ondelete="SET NULL")
    )
    parent_activity_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("email.id", ondelete="SET NULL")
    )
    sender: Mapped[str | None] = mapped_column(sa.String(320))
    body_html: Mapped[str | None] = mapped_column(sa.Text)
    has_body: Mapped[bool] = mapped_column(default=True)
    """False when privacy settings kept the body out of the CRM."""
    size_bytes: Mapped[int | None]
    sent_at: Mapped[datetime | None]
    received_at: Mapped[datetime | None]
    send_after: Mapped[datetime | None]
    """'Send later': not submitted before this time."""
    delivery_attempts: Mapped[int] = mapped_column(default=0)
    failure_reason: Mapped[str | None] = mapped_column(sa.Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    """Outgoing, after a transient failure: not tried again before this time."""
    sending_mailbox_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("mailbox.id", ondelete="SET NULL"), index=True
    )
    """Outgoing: the mailbox whose server sends it (the sender's)."""
    sent_copy_at: Mapped[datetime | None]
    """Outgoing: when the copy was saved in the sending mailbox's Sent folder."""
    receiving_mailbox_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("mailbox.id", ondelete="SET NULL"), index=True
    )
    accepting_record_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("record.id", ondelete="SET NULL")
    )
    """The user or queue whose filter accepted the email."""

    __table_args__ = (
        sa.UniqueConstraint("dedupe_key", "direction"),
        # The outbox: what the dispatcher looks for every second, a handful of rows at most.
        sa.Index(
            "ix_email_outbox",
            "sending_mailbox_id",
            postgresql_where=sa.text("email_status IN ('pending_send', 'sending')"),
        ),
    )
    __mapper_args__ = {
        "polymorphic_identity": "email",
        "inherit_condition": id == Activity.id,
    }


class ShowAs(StrEnum):
    FREE = "free"
    TENTATIVE = "tentative"
    BUSY = "busy"
    OUT_OF_OFFICE = "out_of_office"


class Appointment(Activity):
    __tablename__ = "appointment"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("activity.id", ondelete="CASCADE"), primary_key=True
    )
    location: Mapped[str | None] = mapped_column(sa.String(200))
    is_all_day: Mapped[bool] = mapped_column(default=False)
    ical_uid: Mapped[str | None] = mapped_column(sa.String(500), unique=True)
    recurrence: Mapped[str | None] = mapped_column(sa.Text)
    """RRULE/EXDATE lines of a recurring series, as in iCalendar."""
    timezone: Mapped[str | None] = mapped_column(sa.String(64))
    """IANA zone the times were given in, kept so they round-trip exactly."""
    show_as: Mapped[ShowAs] = mapped_column(enum_column(ShowAs, "show_as"), default=ShowAs.BUSY)

    __mapper_args__ = {
        "polymorphic_identity": "appointment",
        "inherit_condition": id == Activity.id,
    }


class Task(Activity):
    __tablename__ = "task"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("activity.id", ondelete="CASCADE"), primary_key=True
    )
    percent_complete: Mapped[int] = mapped_column(sa.SmallInteger, default=0)
    ical_uid: Mapped[str | None] = mapped_column(sa.String(500), unique=True)

    __table_args__ = (
        sa.CheckConstraint("percent_complete BETWEEN 0 AND 100", name="percent_range"),
    )
    __mapper_args__ = {
        "polymorphic_identity": "task",
        "inherit_condition": id == Activity.id,
    }


class ActivityParty(Base):
    """One participant of an activity: resolved to a record, or an unresolved address."""

    __tablename__ = "activity_party"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    activity_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("activity.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[PartyRole] = mapped_column(enum_column(PartyRole, "party_role"))
    position: Mapped[int] = mapped_column(sa.SmallInteger, default=0)
    """Order within the role, as in the original header."""
    party_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("record.id", ondelete="SET NULL"), index=True
    )
    address: Mapped[str | None] = mapped_column(sa.String(320), index=True)
    display_name: Mapped[str | None] = mapped_column(sa.String(300))
    resolution: Mapped[Resolution] = mapped_column(
        enum_column(Resolution, "resolution"), default=Resolution.UNRESOLVED
    )

    activity: Mapped[Activity] = relationship(back_populates="parties", foreign_keys=[activity_id])
    party: Mapped[Record | None] = relationship(foreign_keys=[party_id], lazy="joined")

    __table_args__ = (
        sa.CheckConstraint("party_id IS NOT NULL OR address IS NOT NULL", name="who"),
        sa.CheckConstraint(
            "(resolution = 'resolved') = (party_id IS NOT NULL)", name="resolved_has_party"
        ),
    )


class Attachment(Base):
    __tablename__ = "attachment"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    activity_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("activity.id", ondelete="CASCADE"), index=True
    )
    filename: Mapped[str] = mapped_column(sa.String(255))
    content_type: Mapped[str] = mapped_column(sa.String(255), default="application/octet-stream")
    content_id: Mapped[str | None] = mapped_column(sa.String(255))
    """For inline parts referenced from the HTML body."""
    size_bytes: Mapped[int]
    sha256: Mapped[str] = mapped_column(sa.String(64))
    content: Mapped[bytes | None] = mapped_column(sa.LargeBinary, deferred=True)
    """Empty when privacy settings keep attachment content out of the CRM."""
    created_at: Mapped[datetime] = created_at()

    activity: Mapped[Activity] = relationship(back_populates="attachments")


class EmailMatchHash(Base):
    """Smart-matching hashes of a tracked email (Dynamics' EmailHash): one per subject word
    (``s``) and per address (``a``), so correlation finds candidates with an index look-up."""

    __tablename__ = "email_match_hash"

    email_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("email.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(sa.String(1), primary_key=True)
    hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True, index=True)

    __table_args__ = (sa.CheckConstraint("kind IN ('s', 'a')", name="kind_known"),)


class TokenSender(Base):
    """A sender's number in tracking tokens and the count of tokens it handed out.

    Tokens are ``<prefix>0<user number><counter>`` (``crmsync.core.tokens``); the number is
    given on a sender's first outgoing email (the next free one) and the counter advances under
    a row lock, so two emails sent at once never share a token."""

    __tablename__ = "token_sender"

    record_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True
    )
    user_number: Mapped[int] = mapped_column(unique=True)
    counter: Mapped[int] = mapped_column(sa.BigInteger, default=0)
