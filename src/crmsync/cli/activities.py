"""``crmsync activities``: the email activities in the CRM, newest first.

With ``--as USER`` only those the user's read privilege reaches (``access_filter``: ownership,
business unit depth, sharing), exactly what the user would see in the CRM.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from rich.markup import escape

from crmsync.admin.mailboxes import find_mailbox
from crmsync.cli.acting import ActAs, acting_user
from crmsync.cli.context import Context
from crmsync.cli.output import info, out, print_json, table
from crmsync.crm.activities import Email
from crmsync.crm.security import access_filter, load_principal
from crmsync.crm.tracking import TrackedMessage
from crmsync.db import session_scope
from crmsync.errors import InvalidInput


def _uuid(value: str, option: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise InvalidInput(f"{option} {value!r} is not a record id (a UUID)") from None


def activities(
    regarding: Annotated[
        str | None, typer.Option("--regarding", help="Only email regarding this record id.")
    ] = None,
    mailbox: Annotated[
        str | None,
        typer.Option("--mailbox", help="Only email tracked in this mailbox (id, address, owner)."),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=10000, help="At most this many, newest first.")
    ] = 50,
    as_user: ActAs = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List email activities, newest first: when, direction, from, subject, regarding record,
    how it was correlated, and how many mailboxes have it. With --as, only what that user may
    read."""
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        copies = (
            sa.select(sa.func.count())
            .where(TrackedMessage.email_id == Email.id)
            .correlate(Email)
            .scalar_subquery()
        )
        query = sa.select(Email, copies.label("mailboxes"))
        if as_user is not None:
            principal = load_principal(session, acting_user(session, as_user).id)
            query = query.where(access_filter(principal, "read", "email"))
        if regarding is not None:
            query = query.where(Email.regarding_id == _uuid(regarding, "--regarding"))
        if mailbox is not None:
            box_id = find_mailbox(session, mailbox).id
            query = query.where(
                Email.id.in_(
                    sa.select(TrackedMessage.email_id).where(TrackedMessage.mailbox_id == box_id)
                )
            )
        query = query.order_by(
            sa.func.coalesce(Email.received_at, Email.sent_at, Email.created_at).desc(),
            Email.created_at.desc(),  # IMAP dates have whole seconds: ties are common
            Email.id,
        ).limit(limit)
        rows: list[dict[str, Any]] = []
        for email, count in session.execute(query):
            when = email.received_at or email.sent_at or email.created_at
            rows.append(
                {
                    "id": str(email.id),
                    "at": when.isoformat() if when else None,
                    "direction": email.direction.value,
                    "from": email.sender,
                    "subject": email.subject,
                    "message_id": email.message_id,
                    "regarding_id": str(email.regarding_id) if email.regarding_id else None,
                    "regarding": email.regarding.name if email.regarding is not None else None,
                    "correlation_method": email.correlation_method.value,
                    "mailboxes": int(count or 0),
                }
            )
        session.rollback()  # a question, not a change
    if json_out:
        print_json(rows)
        return
    if not rows:
        info("no email activities match")
        return
    out.print(
        table(
            None,
            ["When (UTC)", "Dir", "From", "Subject", "Regarding", "Correlated by", "Mailboxes"],
            [
                (
                    (r["at"] or "")[:19],
                    r["direction"],
                    escape(r["from"] or ""),
                    escape(r["subject"] or ""),
                    escape(r["regarding"]) if r["regarding"] else None,
                    r["correlation_method"],
                    r["mailboxes"],
                )
                for r in rows
            ],
        )
    )
