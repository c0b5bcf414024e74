"""``crmsync alerts``: what crmsync told mailbox and profile owners, and dismissing it."""

from __future__ import annotations

import uuid
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.markup import escape

from crmsync.admin.mailboxes import find_owner
from crmsync.cli.context import Context
from crmsync.cli.output import info, out, print_json, table
from crmsync.crm.alerts import Alert
from crmsync.crm.base import utcnow
from crmsync.crm.mailboxes import Mailbox
from crmsync.crm.records import Record
from crmsync.db import session_scope
from crmsync.errors import InvalidInput, NotFound

app = typer.Typer(help="Alerts to mailbox and profile owners: list and dismiss.")

ForUser = Annotated[
    str | None,
    typer.Option("--for", help="Only this user's (username, address) or queue:NAME team's."),
]


@app.command("list")
def list_alerts(
    for_: ForUser = None,
    all_: Annotated[bool, typer.Option("--all", help="Also dismissed ones.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most this many.")] = 100,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Alerts, newest first: unread ones unless --all."""
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        query = (
            sa.select(Alert, Record.name, Mailbox.email_address)
            .join(Record, Record.id == Alert.recipient_id)
            .outerjoin(Mailbox, Mailbox.id == Alert.mailbox_id)
            .order_by(Alert.created_at.desc())
            .limit(limit)
        )
        if for_:
            query = query.where(Alert.recipient_id == find_owner(session, for_).id)
        if not all_:
            query = query.where(Alert.read_at.is_(None))
        rows = [
            {
                "id": str(alert.id),
                "at": alert.created_at.isoformat(),
                "for": name,
                "severity": alert.severity.value,
                "code": alert.code,
                "mailbox": address,
                "message": alert.message,
                "read_at": alert.read_at.isoformat() if alert.read_at else None,
            }
            for alert, name, address in session.execute(query)
        ]
    if json_out:
        print_json(rows)
        return
    if not rows:
        info("no alerts" if all_ else "no unread alerts (--all shows dismissed ones)")
        return
    out.print(
        table(
            None,
            ["When (UTC)", "For", "Severity", "Code", "Message", "Id"],
            [
                (
                    r["at"][:19],
                    escape(r["for"]),
                    r["severity"],
                    r["code"],
                    escape(r["message"]),
                    r["id"],
                )
                for r in rows
            ],
        )
    )


@app.command("dismiss")
def dismiss(
    ids: Annotated[list[str] | None, typer.Argument(help="Alert ids (from `alerts list`).")] = None,
    for_: ForUser = None,
) -> None:
    """Mark alerts read: the given ids, or with --for every unread alert of that user."""
    if not ids and not for_:
        raise InvalidInput("name the alerts to dismiss (ids from `crmsync alerts list`) or --for")
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        query = sa.update(Alert).where(Alert.read_at.is_(None)).values(read_at=utcnow())
        if ids:
            try:
                wanted = [uuid.UUID(i) for i in ids]
            except ValueError as exc:
                raise InvalidInput(f"not an alert id: {exc}") from None
            known = set(session.scalars(sa.select(Alert.id).where(Alert.id.in_(wanted))))
            unknown = [str(i) for i in wanted if i not in known]
            if unknown:
                raise NotFound(f"no such alert: {', '.join(unknown)}")
            query = query.where(Alert.id.in_(wanted))
        if for_:
            query = query.where(Alert.recipient_id == find_owner(session, for_).id)
        count = session.execute(query.execution_options(synchronize_session=False)).rowcount
    info(f"dismissed {count} alert{'s' if count != 1 else ''}")
