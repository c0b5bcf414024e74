"""``crmsync status``: the administrator's overview."""

from __future__ import annotations

from typing import Annotated

import typer

from crmsync.admin.status import collect_status
from crmsync.cli.context import Context
from crmsync.cli.mailbox import mailbox_table
from crmsync.cli.output import out, print_json


def status(
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show the database, what the CRM holds, and the state of every mailbox."""
    ctx = Context()
    report = collect_status(ctx.engine(), embedded=ctx.embedded)
    if json_out:
        print_json(report)
        return
    db = report["database"]
    where = "embedded" if db["embedded"] else "external"
    out.print(f"[bold]Database[/bold] {db['url']} ({where}), schema {db['schema_revision']}")
    records = report["records"]
    summary = ", ".join(f"{n} {t}" for t, n in records.items()) or "empty"
    out.print(f"[bold]Records[/bold] {summary}")
    svc = report["service"]
    push = ", ".join(f"{n} {s}" for s, n in svc["push"].items()) or "none"
    workers = svc["live_workers"]
    running = (
        f"{workers} live worker{'s' if workers != 1 else ''}"
        if workers
        else "[yellow]no worker running (start one: crmsync run)[/yellow]"
    )
    out.print(
        f"[bold]Service[/bold] {running}; {svc['queued_jobs']} queued, "
        f"{svc['running_jobs']} running; {svc['overdue_mailboxes']} overdue; push: {push}; "
        f"{svc['unread_alerts']} unread alerts"
        + (" (crmsync alerts list)" if svc["unread_alerts"] else "")
    )
    boxes = report["mailboxes"]
    states = ", ".join(f"{n} {s}" for s, n in boxes["by_state"].items()) or "none"
    approval = "required" if boxes["approval_required"] else "not required"
    out.print(f"[bold]Mailboxes[/bold] {boxes['total']} ({states}); approval {approval}")
    if boxes["items"]:
        out.print(mailbox_table(boxes["items"]))
