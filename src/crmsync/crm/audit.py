"""The audit log: who did what to which mailbox, email, filter or setting, and when.

Rows are only ever added. Details never hold a secret: callers record *that* a credential
changed, never its value (``record`` refuses keys that look secret, as a last guard).
"""

from __future__ import annotations

import getpass
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from crmsync.crm.base import Base, created_at

SECRET_LOOKING = re.compile(r"pass|secret|token|credential_value|key", re.I)


class AuditEvent(Base):
    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    at: Mapped[datetime] = created_at()
    actor_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("record.id", ondelete="SET NULL")
    )
    actor_name: Mapped[str] = mapped_column(sa.String(300))
    """Kept as text so the log still says who after the user is deleted."""
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    """Dotted verb: mailbox.added, mailbox.approved, email.untracked, settings.changed ..."""
    target_type: Mapped[str] = mapped_column(sa.String(32))
    target_id: Mapped[str | None] = mapped_column(sa.String(200), index=True)
    target_name: Mapped[str | None] = mapped_column(sa.String(400))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)

    __table_args__ = (sa.Index("ix_audit_event_at", "at"),)


@dataclass(frozen=True)
class Actor:
    """Who acts: a CRM user, or the system (the CLI's operator, a sync job)."""

    name: str
    user_id: uuid.UUID | None = None

    @classmethod
    def cli_operator(cls) -> Actor:
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = "unknown"
        return cls(name=f"cli:{who}")


def record(
    session: Session,
    actor: Actor,
    action: str,
    *,
    target_type: str,
    target_id: object | None = None,
    target_name: str | None = None,
    **details: Any,
) -> AuditEvent:
    leaked = [k for k in details if SECRET_LOOKING.search(k)]
    if leaked:
        raise ValueError(f"audit details must not hold secrets: {leaked}")
    event = AuditEvent(
        actor_id=actor.user_id,
        actor_name=actor.name,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        target_name=target_name,
        details=details,
    )
    session.add(event)
    return event


def recent(
    session: Session, *, target: str | None = None, action: str | None = None, limit: int = 100
) -> list[AuditEvent]:
    query = sa.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if target is not None:
        query = query.where(
            sa.or_(AuditEvent.target_id == target, AuditEvent.target_name == target)
        )
    if action is not None:
        query = query.where(AuditEvent.action.like(action.replace("*", "%")))
    return list(session.scalars(query))
