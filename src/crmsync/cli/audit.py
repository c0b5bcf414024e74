"""``crmsync audit``: who did what, and when."""

from __future__ import annotations

from typing import Annotated

import typer

from crmsync.cli.context import Context
from crmsync.cli.output import info, out, print_json, table
from crmsync.crm.audit import recent
from crmsync.db import session_scope


def audit_command(
    target: Annotated[
        str | None, typer.Option(help="Only events about this id or name (mailbox address...).")
    ] = None,
    action: Annotated[
        str | None, typer.Option(help="Only these actions, e.g. 'mailbox.*' or 'email.untracked'.")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=10000, help="At most this many, newest first.")
    ] = 100,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show the audit log: approvals, enabling, tracking, untracking, setting changes."""
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        events = [
            {
                "at": e.at.isoformat(),
                "actor": e.actor_name,
                "action": e.action,
                "target_type": e.target_type,
                "target": e.target_name or e.target_id,
                "target_id": e.target_id,
                "details": e.details,
            }
            for e in recent(session, target=target, action=action, limit=limit)
        ]
    if json_out:
        print_json(events)
        return
    if not events:
        info("no audit events match")
        return
    rows = [
        (e["at"][:19], e["actor"], e["action"], e["target"], _brief(e["details"])) for e in events
    ]
    out.print(table(None, ["When (UTC)", "Who", "Action", "Target", "Details"], rows))


def _brief(details: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in details.items())
