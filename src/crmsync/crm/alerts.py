"""Alerts: what crmsync tells a mailbox's owner and a profile's owner when syncing stops or fails.

The reference (§5, §10) alerts the mailbox owner when a mailbox is disabled by an error and the
profile owner when a mailbox of the profile fails, and again when most of a profile's mailboxes
fail. An alert is a row per recipient (a user, or the team that owns a queue), so each person
sees and dismisses their own. ``raise_alert`` refuses to repeat an unread alert with the same
code for the same subject: a mailbox failing every 5 minutes raises one alert, not 288 a day.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from crmsync.crm.base import Base, StrEnum, created_at, enum_column, new_id, utcnow

REPEAT_AFTER = timedelta(hours=24)
"""An unread alert with the same code and subject is not raised again within this time."""


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Alert(Base):
    __tablename__ = "alert"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    created_at: Mapped[datetime] = created_at()
    recipient_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), index=True
    )
    """The user (or the team owning a queue) who is told."""
    severity: Mapped[Severity] = mapped_column(enum_column(Severity, "alert_severity"))
    code: Mapped[str] = mapped_column(sa.String(64))
    """Stable: ``mailbox.disabled``, ``mailbox.error``, ``profile.failing``."""
    message: Mapped[str] = mapped_column(sa.Text)
    mailbox_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("mailbox.id", ondelete="CASCADE"), index=True
    )
    profile_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("email_server_profile.id", ondelete="CASCADE")
    )
    read_at: Mapped[datetime | None]


def raise_alert(
    session: Session,
    *,
    recipients: Iterable[uuid.UUID | None],
    severity: Severity,
    code: str,
    message: str,
    mailbox_id: uuid.UUID | None = None,
    profile_id: uuid.UUID | None = None,
    now: datetime | None = None,
) -> list[Alert]:
    """One alert per distinct recipient (``None`` entries skipped: a profile without an owner),
    unless that recipient has an unread one with this code and subject from the last day."""
    now = now or utcnow()
    made: list[Alert] = []
    for recipient in dict.fromkeys(r for r in recipients if r is not None):
        repeat = session.scalar(
            sa.select(Alert.id)
            .where(
                Alert.recipient_id == recipient,
                Alert.code == code,
                Alert.mailbox_id.is_(None)
                if mailbox_id is None
                else Alert.mailbox_id == mailbox_id,
                Alert.profile_id.is_(None)
                if profile_id is None
                else Alert.profile_id == profile_id,
                Alert.read_at.is_(None),
                Alert.created_at > now - REPEAT_AFTER,
            )
            .limit(1)
        )
        if repeat is not None:
            continue
        alert = Alert(
            recipient_id=recipient,
            severity=severity,
            code=code,
            message=message,
            mailbox_id=mailbox_id,
            profile_id=profile_id,
            created_at=now,
        )
        session.add(alert)
        made.append(alert)
    session.flush()
    return made
