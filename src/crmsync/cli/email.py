"""``crmsync email``: write CRM email to send through the sender's mailbox; see how it went."""

from __future__ import annotations

import mimetypes
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import sqlalchemy as sa
import typer
from rich.markup import escape

from crmsync.admin.mailboxes import find_owner
from crmsync.cli.acting import ActAs, acting_user
from crmsync.cli.context import Context
from crmsync.cli.output import info, out, print_json, table
from crmsync.core.outgoing import CANCELED, StatusError, check_transition
from crmsync.crm.activities import Email, EmailDirection, EmailStatus
from crmsync.crm.base import PartyRole
from crmsync.crm.security import load_principal
from crmsync.db import session_scope
from crmsync.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from crmsync.sync.outbox import NewAttachment

app = typer.Typer(help="Send CRM email through the sender's own mailbox; list and cancel it.")

Addresses = Annotated[list[str] | None, typer.Option(help="An address or a CRM record id; repeat.")]


def _read(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the {what} file {path}: {exc}") from None


def _attachment(path: Path) -> NewAttachment:
    from crmsync.sync.outbox import NewAttachment

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read the attachment {path}: {exc}") from None
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return NewAttachment(path.name, kind, data)


@app.command("send")
def send(
    from_: Annotated[str, typer.Option("--from", help="The sender: a user or queue:NAME.")],
    subject: Annotated[str, typer.Option(help="The subject (a tracking token is appended).")],
    to: Addresses = None,
    cc: Addresses = None,
    bcc: Addresses = None,
    body_file: Annotated[
        Path | None, typer.Option("--body-file", help="The plain-text body (UTF-8).")
    ] = None,
    html_file: Annotated[
        Path | None, typer.Option("--html-file", help="An HTML body (UTF-8).")
    ] = None,
    attach: Annotated[
        list[Path] | None, typer.Option("--attach", help="A file to attach; repeat.")
    ] = None,
    regarding: Annotated[
        str | None, typer.Option(help="The id of the record the email is about.")
    ] = None,
    send_after: Annotated[
        str | None,
        typer.Option("--send-after", help="Send later: not before this ISO time with zone."),
    ] = None,
    draft: Annotated[bool, typer.Option("--draft", help="Save as a draft, do not send.")] = False,
    as_user: ActAs = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Write an email and queue it: a running service (crmsync run) sends it within moments,
    through the sender's mailbox, and keeps a copy in its Sent folder."""
    later = None
    if send_after:
        try:
            later = datetime.fromisoformat(send_after)
        except ValueError:
            raise InvalidInput(f"--send-after {send_after!r} is not an ISO date-time") from None
    regarding_id = None
    if regarding:
        try:
            regarding_id = uuid.UUID(regarding)
        except ValueError:
            raise InvalidInput(f"--regarding needs a record id, got {regarding!r}") from None
    # here, not at the top: composing mail is needed only by this command
    from crmsync.sync.outbox import NewEmail, queue_email

    ctx = Context()
    with session_scope(ctx.engine()) as session:
        principal = None
        if as_user is not None:
            principal = load_principal(session, acting_user(session, as_user).id)
        queued = queue_email(
            session,
            NewEmail(
                sender=find_owner(session, from_),
                to=list(to or []),
                cc=list(cc or []),
                bcc=list(bcc or []),
                subject=subject,
                text_body=_read(body_file, "body"),
                html_body=_read(html_file, "HTML"),
                attachments=[_attachment(p) for p in attach or []],
                regarding_id=regarding_id,
                send_after=later,
                draft=draft,
            ),
            principal=principal,
        )
        result = {
            "id": str(queued.email.id),
            "status": queued.email.email_status.value,
            "subject": queued.email.subject,
            "message_id": queued.email.message_id,
            "warnings": queued.warnings,
        }
    if json_out:
        print_json(result)
    else:
        info(f"{result['status']}: {escape(result['subject'])} ({result['id']})")
    for warning in queued.warnings:
        info(f"[yellow]{escape(warning)}[/yellow]")


@app.command("list")
def list_emails(
    status: Annotated[
        list[str] | None,
        typer.Option(help="Only these statuses: " + ", ".join(s.value for s in EmailStatus)),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most this many.")] = 100,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Outgoing CRM email, newest first, with its status, attempts and any failure reason."""
    wanted = []
    for word in status or []:
        try:
            wanted.append(EmailStatus(word.strip().lower().replace("pending", "pending_send")))
        except ValueError:
            raise InvalidInput(
                f"unknown status {word!r}; one of: {', '.join(s.value for s in EmailStatus)}"
            ) from None
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        query = (
            sa.select(Email)
            .where(Email.direction == EmailDirection.OUTGOING)
            .order_by(Email.created_at.desc())
            .limit(limit)
        )
        if wanted:
            query = query.where(Email.email_status.in_(wanted))
        rows = [
            {
                "id": str(e.id),
                "status": e.email_status.value,
                "from": e.sender,
                "to": [p.address for p in e.parties_in(PartyRole.TO)],
                "subject": e.subject,
                "attempts": e.delivery_attempts,
                "next_attempt_at": e.next_attempt_at.isoformat() if e.next_attempt_at else None,
                "sent_at": e.sent_at.isoformat() if e.sent_at else None,
                "failure_reason": e.failure_reason,
                "message_id": e.message_id,
            }
            for e in session.scalars(query)
        ]
    if json_out:
        print_json(rows)
        return
    if not rows:
        info("no outgoing email" + (" with that status" if wanted else ""))
        return
    out.print(
        table(
            None,
            ["Status", "From", "To", "Subject", "Attempts", "Sent", "Reason"],
            [
                (
                    r["status"],
                    escape(r["from"] or ""),
                    escape(", ".join(a for a in r["to"] if a)),
                    escape(r["subject"]),
                    r["attempts"],
                    (r["sent_at"] or "")[:19],
                    escape(r["failure_reason"] or ""),
                )
                for r in rows
            ],
        )
    )


@app.command("cancel")
def cancel(email_id: Annotated[str, typer.Argument(help="The email's id.")]) -> None:
    """Cancel a draft or a pending email before it is sent."""
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        try:
            key = uuid.UUID(email_id)
        except ValueError:
            raise InvalidInput(f"not an email id: {email_id!r}") from None
        email = session.get(Email, key, with_for_update={"of": Email})
        if email is None or email.direction is not EmailDirection.OUTGOING:
            raise NotFound(f"no outgoing email with id {email_id}")
        try:
            check_transition(email.email_status.value, CANCELED)
        except StatusError as exc:
            raise InvalidInput(str(exc)) from None
        email.email_status = EmailStatus.CANCELED
    info(f"canceled {email_id}")
