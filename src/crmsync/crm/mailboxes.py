"""Email server profiles, mailboxes, their per-folder sync cursors, and organization settings."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crmsync.core.privacy import PrivacyLevel
from crmsync.crm.base import Base, StrEnum, created_at, enum_column, new_id, utcnow
from crmsync.crm.records import Record


class ServerType(StrEnum):
    IMAP_SMTP = "imap_smtp"


class CredentialSource(StrEnum):
    """Where a mailbox's login comes from (reference §1)."""

    MAILBOX = "mailbox"
    """Credentials specified by the user or queue, stored encrypted on the mailbox."""
    PROFILE = "profile"
    """One service account on the profile."""


class EmailServerProfile(Base):
    __tablename__ = "email_server_profile"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    server_type: Mapped[ServerType] = mapped_column(
        enum_column(ServerType, "server_type"), default=ServerType.IMAP_SMTP
    )
    credential_source: Mapped[CredentialSource] = mapped_column(
        enum_column(CredentialSource, "credential_source"), default=CredentialSource.MAILBOX
    )
    incoming_url: Mapped[str | None] = mapped_column(sa.String(500))
    outgoing_url: Mapped[str | None] = mapped_column(sa.String(500))
    dav_url: Mapped[str | None] = mapped_column(sa.String(500))
    username: Mapped[str | None] = mapped_column(sa.String(320))
    credential: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    """Encrypted (crmsync.secrets), bound to this profile's id."""
    owner_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("crm_user.id", ondelete="SET NULL")
    )
    """Receives profile-level alerts."""
    min_polling_minutes: Mapped[int] = mapped_column(sa.SmallInteger, default=2)
    max_concurrent_connections: Mapped[int] = mapped_column(sa.SmallInteger, default=10)
    process_email_from: Mapped[datetime | None]
    move_failed_to_undeliverable: Mapped[bool] = mapped_column(default=False)
    failure_alert_percent: Mapped[int] = mapped_column(sa.SmallInteger, default=50)
    created_at: Mapped[datetime] = created_at()

    __table_args__ = (
        sa.CheckConstraint("min_polling_minutes BETWEEN 1 AND 12", name="min_polling_range"),
        sa.CheckConstraint("max_concurrent_connections >= 1", name="connections_positive"),
    )


class SyncMethod(StrEnum):
    NONE = "none"
    SERVER_SYNC = "server_sync"
    FORWARD_MAILBOX = "forward_mailbox"


class ApprovalStatus(StrEnum):
    EMPTY = "empty"
    APPROVED = "approved"
    PENDING = "pending"
    REJECTED = "rejected"


class MailboxState(StrEnum):
    DISABLED = "disabled"
    ENABLED = "enabled"


class TestStatus(StrEnum):
    NOT_RUN = "not_run"
    SUCCESS = "success"
    FAILURE = "failure"


class Mailbox(Base):
    """One per user or queue: where and how crmsync reaches their mail, and how syncing goes."""

    __tablename__ = "mailbox"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(200))
    owner_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), unique=True
    )
    """The user or queue: one mailbox each, and a mailbox maps to one owner only."""
    profile_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("email_server_profile.id", ondelete="SET NULL"), index=True
    )
    email_address: Mapped[str] = mapped_column(sa.String(320), index=True)

    incoming_method: Mapped[SyncMethod] = mapped_column(
        enum_column(SyncMethod, "incoming_method"), default=SyncMethod.SERVER_SYNC
    )
    outgoing_method: Mapped[SyncMethod] = mapped_column(
        enum_column(SyncMethod, "outgoing_method"), default=SyncMethod.SERVER_SYNC
    )
    act_method: Mapped[SyncMethod] = mapped_column(
        enum_column(SyncMethod, "act_method"), default=SyncMethod.NONE
    )
    """Appointments, contacts and tasks."""
    approval_status: Mapped[ApprovalStatus] = mapped_column(
        enum_column(ApprovalStatus, "approval_status"), default=ApprovalStatus.PENDING
    )
    state: Mapped[MailboxState] = mapped_column(
        enum_column(MailboxState, "mailbox_state"), default=MailboxState.DISABLED
    )
    enabled_at: Mapped[datetime | None]

    imap_url: Mapped[str | None] = mapped_column(sa.String(500))
    smtp_url: Mapped[str | None] = mapped_column(sa.String(500))
    caldav_url: Mapped[str | None] = mapped_column(sa.String(500))
    carddav_url: Mapped[str | None] = mapped_column(sa.String(500))
    username: Mapped[str | None] = mapped_column(sa.String(320))
    credential: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    """Encrypted (crmsync.secrets), bound to this mailbox's id; never stored or shown in clear."""
    process_email_received_after: Mapped[datetime | None]
    """Bounds the first sync; defaults to the moment the mailbox was enabled."""
    privacy_level: Mapped[PrivacyLevel | None] = mapped_column(
        enum_column(PrivacyLevel, "privacy_level")
    )
    """How much of each message may be taken; empty follows the organization's level, which is
    also a ceiling (crmsync.core.privacy.effective_level)."""

    incoming_status: Mapped[TestStatus] = mapped_column(
        enum_column(TestStatus, "incoming_status"), default=TestStatus.NOT_RUN
    )
    outgoing_status: Mapped[TestStatus] = mapped_column(
        enum_column(TestStatus, "outgoing_status"), default=TestStatus.NOT_RUN
    )
    act_status: Mapped[TestStatus] = mapped_column(
        enum_column(TestStatus, "act_status"), default=TestStatus.NOT_RUN
    )
    tested_at: Mapped[datetime | None]

    last_sync_started_at: Mapped[datetime | None]
    last_sync_finished_at: Mapped[datetime | None]
    next_sync_at: Mapped[datetime | None] = mapped_column(index=True)
    items_processed_last_sync: Mapped[int] = mapped_column(default=0)
    items_failed_last_sync: Mapped[int] = mapped_column(default=0)
    last_error_code: Mapped[str | None] = mapped_column(sa.String(64))
    last_error_message: Mapped[str | None] = mapped_column(sa.Text)
    last_error_count: Mapped[int] = mapped_column(default=0)
    last_error_at: Mapped[datetime | None]

    sync_history: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, default=list, server_default=sa.text("'[]'::jsonb")
    )
    """The newest runs' outcomes (``crmsync.core.schedule.RunOutcome`` as JSON, newest last):
    what the scheduling policy reads to choose the next interval."""
    schedule_code: Mapped[str | None] = mapped_column(sa.String(32))
    schedule_reason: Mapped[str | None] = mapped_column(sa.Text)
    """Why ``next_sync_at`` is what it is (or why the mailbox was disabled), as a sentence."""
    sync_requested_at: Mapped[datetime | None]
    """Someone asked for a sync now ("sync now", push); cleared when a run starts."""
    dispatched_at: Mapped[datetime | None]
    """When the scheduler last queued a sync job for this mailbox."""
    push_state: Mapped[str | None] = mapped_column(sa.String(16))
    """The IMAP IDLE watcher's state for this mailbox (``crmsync.sync.push.PushState``);
    empty when no watcher covers it."""
    push_changed_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(sa.Text)
    """Why the mailbox was disabled: an administrator, or the error that stopped it."""
    disabled_at: Mapped[datetime | None]

    created_at: Mapped[datetime] = created_at()
    modified_at: Mapped[datetime] = mapped_column(
        server_default=sa.func.now(), default=utcnow, onupdate=utcnow
    )

    owner: Mapped[Record] = relationship(lazy="joined")
    profile: Mapped[EmailServerProfile | None] = relationship(lazy="joined")
    folders: Mapped[list[MailboxFolder]] = relationship(
        back_populates="mailbox", cascade="all, delete-orphan", lazy="select"
    )

    __table_args__ = (
        sa.CheckConstraint(
            "incoming_method <> 'forward_mailbox' OR outgoing_method = 'none'",
            name="forward_has_no_outgoing",
        ),
    )


class FolderKind(StrEnum):
    IMAP = "imap"
    CALDAV = "caldav"
    CARDDAV = "carddav"


class MailboxFolder(Base):
    """Sync cursor of one folder (IMAP) or collection (CalDAV/CardDAV) of a mailbox."""

    __tablename__ = "mailbox_folder"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    mailbox_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("mailbox.id", ondelete="CASCADE"))
    kind: Mapped[FolderKind] = mapped_column(enum_column(FolderKind, "folder_kind"))
    name: Mapped[str] = mapped_column(sa.String(1000))
    """IMAP folder name, or collection href."""
    remote_id: Mapped[str | None] = mapped_column(sa.String(255))
    """The server's stable id (IMAP OBJECTID), when it offers one."""
    uidvalidity: Mapped[int | None] = mapped_column(sa.BigInteger)
    uidnext: Mapped[int | None] = mapped_column(sa.BigInteger)
    highestmodseq: Mapped[int | None] = mapped_column(sa.BigInteger)
    sync_token: Mapped[str | None] = mapped_column(sa.Text)
    last_synced_at: Mapped[datetime | None]

    mailbox: Mapped[Mailbox] = relationship(back_populates="folders")

    __table_args__ = (sa.UniqueConstraint("mailbox_id", "kind", "name"),)


class OrgSetting(Base):
    """One organization-wide setting; defaults live in code (crmsync.crm.settings)."""

    __tablename__ = "org_setting"

    key: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSONB)
    modified_at: Mapped[datetime] = mapped_column(
        server_default=sa.func.now(), default=utcnow, onupdate=utcnow
    )
