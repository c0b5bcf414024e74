"""Which mailboxes hold a tracked email, and who tracked it there.

One email activity can be tracked from several mailboxes (ten recipients, one activity). Each
mailbox's copy is linked by a ``TrackedMessage`` row; that link is what "untrack" removes for
someone who does not own the activity (reference §7: the CRM copy is deleted only by its owner).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from crmsync.crm.activities import Email
from crmsync.crm.audit import Actor, record
from crmsync.crm.base import Base, StrEnum, created_at, enum_column, new_id
from crmsync.crm.mailboxes import Mailbox
from crmsync.crm.records import User
from crmsync.crm.security import load_principal, require_can
from crmsync.errors import InvalidInput


class TrackedHow(StrEnum):
    AUTOMATIC = "automatic"
    """The owner's incoming filter accepted it."""
    MANUAL = "manual"
    """Tracked by a person (pane, API, CLI)."""
    FOLDER = "folder"
    CATEGORY = "category"
    SENT = "sent"
    """Sent by crmsync through this mailbox."""


class TrackedMessage(Base):
    __tablename__ = "tracked_message"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    email_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("email.id", ondelete="CASCADE"))
    mailbox_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("mailbox.id", ondelete="CASCADE"), index=True
    )
    folder: Mapped[str | None] = mapped_column(sa.String(1000))
    uidvalidity: Mapped[int | None] = mapped_column(sa.BigInteger)
    uid: Mapped[int | None] = mapped_column(sa.BigInteger)
    how: Mapped[TrackedHow] = mapped_column(enum_column(TrackedHow, "tracked_how"))
    tracked_by_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("crm_user.id", ondelete="SET NULL")
    )
    """The person who tracked it by hand; empty for automatic tracking."""
    created_at: Mapped[datetime] = created_at()

    __table_args__ = (sa.UniqueConstraint("email_id", "mailbox_id"),)


# --- untrack --------------------------------------------------------------------------------


class UntrackOutcome(StrEnum):
    DELETED = "deleted"
    """The owner untracked it: the CRM copy is gone (reference §7)."""
    UNLINKED = "unlinked"
    """Someone else untracked it: only their mailbox's link went; the activity stays."""


@dataclass(frozen=True)
class UntrackResult:
    outcome: UntrackOutcome
    email_id: uuid.UUID
    unlinked_mailboxes: tuple[uuid.UUID, ...] = ()


def untrack(session: Session, user: User, email: Email, *, actor: Actor) -> UntrackResult:
    """Stop tracking ``email`` for ``user``.

    The owner's untrack deletes the activity (with its parties, attachments and every mailbox
    link) — and needs the delete privilege, like any delete. Anyone else's untrack removes only
    the links of their own mailboxes and keeps the activity for everyone who can see it. Either
    way the user must be able to read the email in the first place: an email one cannot see
    cannot be untracked, and the refusal does not say whether it exists.
    """
    principal = load_principal(session, user.id)
    require_can(principal, "read", email, session=session)
    if email.owner_id == user.id:
        require_can(principal, "delete", email, session=session)
        email_id, subject = email.id, email.subject
        session.delete(email)
        session.flush()
        record(
            session,
            actor,
            "email.untracked",
            target_type="email",
            target_id=email_id,
            target_name=subject,
            outcome=UntrackOutcome.DELETED.value,
        )
        return UntrackResult(UntrackOutcome.DELETED, email_id)

    own_mailboxes = sa.select(Mailbox.id).where(Mailbox.owner_id == user.id)
    links = list(
        session.scalars(
            sa.select(TrackedMessage).where(
                TrackedMessage.email_id == email.id, TrackedMessage.mailbox_id.in_(own_mailboxes)
            )
        )
    )
    if not links:
        raise InvalidInput(
            f"the email {email.subject!r} is not tracked in {user.name}'s mailbox, and "
            f"{user.name} does not own it; only its owner can remove it from the CRM"
        )
    for link in links:
        session.delete(link)
    session.flush()
    unlinked = tuple(link.mailbox_id for link in links)
    record(
        session,
        actor,
        "email.untracked",
        target_type="email",
        target_id=email.id,
        target_name=email.subject,
        outcome=UntrackOutcome.UNLINKED.value,
        mailboxes=[str(m) for m in unlinked],
    )
    return UntrackResult(UntrackOutcome.UNLINKED, email.id, unlinked)
