"""``crmsync sync --once``: sync mailboxes' incoming email now, then exit; ``--now``: ask the
running service to do it at once.

Every syncable mailbox (enabled, with an incoming server, approved when the organization requires
it), or the named ones. One mailbox failing never stops the others; the exit code is 1 when any
failed, 0 otherwise (a mailbox another run is syncing is noted, not failed).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from rich.markup import escape
from rich.progress import Progress, TaskID
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.admin.mailboxes import find_mailbox, list_mailboxes
from crmsync.cli.context import Context
from crmsync.cli.output import err, out, print_json, progress_bar, table
from crmsync.crm.base import utcnow
from crmsync.crm.mailboxes import ApprovalStatus, Mailbox, MailboxState, SyncMethod
from crmsync.crm.settings import get_setting
from crmsync.db import session_scope
from crmsync.errors import InvalidInput
from crmsync.scheduler.dispatch import request_sync
from crmsync.sync.incoming import SyncReport, sync_mailboxes, syncable_mailboxes


def note(message: str) -> None:
    """A message on stderr, never folded (a command in it must stay copyable)."""
    err.print(message, soft_wrap=True)


NO_SERVICE = (
    "say how: --once syncs in this process and exits; --now asks the running service "
    "(`crmsync run` or `crmsync worker`) to sync at once"
)


class BarProgress:
    """The SyncProgress protocol as one rich progress bar per folder (on stderr)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def folder_started(self, mailbox: str, folder: str, total: int) -> None:
        self.task = self.progress.add_task(f"{escape(mailbox)} {escape(folder)}", total=total)

    def advanced(self, count: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, count)


def why_not_syncable(mailbox: Mailbox, *, approval_required: bool) -> str | None:
    """Why ``mailbox`` is not synced, with the command that fixes it; None if it is synced."""
    address = mailbox.email_address
    if mailbox.incoming_method is not SyncMethod.SERVER_SYNC or not mailbox.imap_url:
        return (
            "no incoming (IMAP) server; add one with: crmsync mailbox add --owner OWNER "
            "--imap URL --update"
        )
    if approval_required and mailbox.approval_status is not ApprovalStatus.APPROVED:
        return (
            f"not approved ({mailbox.approval_status.value}) and the organization processes "
            f"email only for approved mailboxes; approve it: crmsync mailbox approve {address}"
        )
    if mailbox.state is not MailboxState.ENABLED:
        why = f" ({mailbox.disabled_reason})" if mailbox.disabled_reason else ""
        return f"disabled{why}; enable it: crmsync mailbox enable {address}"
    return None


def _chosen(session: Session, refs: list[str]) -> list[uuid.UUID]:
    if not refs:
        return [m.id for m in syncable_mailboxes(session)]
    required = bool(get_setting(session, "process_email_only_for_approved_mailboxes"))
    ids: list[uuid.UUID] = []
    problems: list[str] = []
    for ref in refs:
        mailbox = find_mailbox(session, ref)
        why = why_not_syncable(mailbox, approval_required=required)
        if why is not None:
            problems.append(f"mailbox {mailbox.email_address} is not synced: {why}")
        elif mailbox.id not in ids:
            ids.append(mailbox.id)
    if problems:
        raise InvalidInput("; ".join(problems))
    return ids


def _none_syncable(session: Session) -> None:
    mailboxes = list_mailboxes(session)
    if not mailboxes:
        note(
            "nothing to sync: there are no mailboxes yet; add one with: "
            "crmsync mailbox add --owner USER --imap URL"
        )
        return
    required = bool(get_setting(session, "process_email_only_for_approved_mailboxes"))
    note("nothing to sync: no mailbox qualifies (enabled, with an incoming server, approved):")
    for mailbox in mailboxes:
        why = why_not_syncable(mailbox, approval_required=required) or "syncable"
        note(f"  {escape(mailbox.email_address)}: {escape(why)}")


def report_dict(report: SyncReport) -> dict[str, Any]:
    return {
        "mailbox": report.mailbox,
        "mailbox_id": str(report.mailbox_id),
        "ok": report.ok,
        "busy": report.busy,
        "folders": report.folders,
        "modes": report.modes,
        "seen": report.seen,
        "tracked": report.tracked,
        "linked": report.linked,
        "remapped": report.remapped,
        "quarantined": report.quarantined,
        "skipped": dict(report.skipped.most_common()),
        "uidvalidity_changed": report.uidvalidity_changed,
        "error": report.error,
        "error_code": report.error_code,
        "transient": report.transient,
        "seconds": round(report.seconds, 3),
        "next_sync": report.next_sync_at.isoformat() if report.next_sync_at else None,
        "schedule": report.schedule,
        "disabled": report.disabled,
    }


def skipped_text(skipped: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in skipped.items()) or "—"


def _folders_text(r: dict[str, Any]) -> str:
    return ", ".join(f"{f} ({r['modes'].get(f, '?')})" for f in r["folders"]) or "—"


def _result_text(r: dict[str, Any]) -> str:
    if r["busy"]:
        return "[yellow]busy: another run is syncing it; skipped this time[/yellow]"
    if r["error"] is not None:
        stopped = "; mailbox disabled" if r["disabled"] else ""
        return f"[red]{escape(r['error'])}{stopped}[/red]"
    notes = ["ok"]
    if r["remapped"]:
        notes.append(f"{r['remapped']} re-mapped")
    if r["uidvalidity_changed"]:
        notes.append("UIDVALIDITY changed: " + ", ".join(r["uidvalidity_changed"]))
    return escape("; ".join(notes))


def sync_command(
    once: Annotated[
        bool, typer.Option("--once", help="Sync in this process, now, and exit.")
    ] = False,
    now: Annotated[
        bool,
        typer.Option(
            "--now",
            help="Ask the running service (crmsync run / worker) to sync at once, ahead of "
            "its schedule.",
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait", min=0.0, help="With --now: wait up to this many seconds for the results."
        ),
    ] = 0.0,
    mailbox: Annotated[
        list[str] | None,
        typer.Option(
            "--mailbox", help="Only this mailbox (id, address, or owner); repeat for several."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Sync the incoming email of every syncable mailbox (or the named ones) now, then exit.
    Exits 1 when any mailbox failed (the message says what to do), 0 otherwise."""
    if once == now:
        note(f"crmsync: {NO_SERVICE}")
        raise typer.Exit(2)
    if now:
        sync_now(list(mailbox or []), wait=wait, json_out=json_out)
        return
    ctx = Context()
    engine = ctx.engine()
    with session_scope(engine) as session:
        ids = _chosen(session, list(mailbox or []))
        if not ids:
            _none_syncable(session)
            if json_out:
                print_json([])
            return
        query = sa.select(Mailbox.id, Mailbox.email_address).where(Mailbox.id.in_(ids))
        names = {row.id: row.email_address for row in session.execute(query)}
    box = ctx.secret_box
    if err.is_terminal:
        with progress_bar() as bar:
            reports = sync_mailboxes(engine, box=box, mailbox_ids=ids, progress=BarProgress(bar))
    else:
        reports = sync_mailboxes(engine, box=box, mailbox_ids=ids)
    rows = []
    for report in reports:
        row = report_dict(report)
        row["mailbox"] = row["mailbox"] or names.get(report.mailbox_id, str(report.mailbox_id))
        rows.append(row)
    failed = [r for r in rows if r["error"] is not None]
    if json_out:
        print_json(rows)
    else:
        out.print(
            table(
                None,
                [
                    "Mailbox",
                    "Folders (mode)",
                    "Seen",
                    "Tracked",
                    "Linked",
                    "Quarantined",
                    "Skipped by reason",
                    "Result",
                ],
                [
                    (
                        escape(r["mailbox"]),
                        escape(_folders_text(r)),
                        r["seen"],
                        r["tracked"],
                        r["linked"],
                        r["quarantined"],
                        skipped_text(r["skipped"]),
                        _result_text(r),
                    )
                    for r in rows
                ],
            )
        )
        busy = [r["mailbox"] for r in rows if r["busy"]]
        if busy:
            note(
                "note: another run was syncing "
                + escape(", ".join(busy))
                + "; it was skipped this time (not an error)"
            )
    if failed:
        for r in failed:
            note(f"[red]crmsync: {escape(r['mailbox'])}: {escape(r['error'])}[/red]")
        raise typer.Exit(1)


def sync_now(refs: list[str], *, wait: float, json_out: bool) -> None:
    """Make the mailboxes due now and queue their jobs; a running worker starts them within
    moments (the queue notifies it). Says so when no worker is alive to pick them up."""
    ctx = Context()
    engine = ctx.engine()
    with session_scope(engine) as session:
        ids = _chosen(session, refs)
        if not ids:
            _none_syncable(session)
            return
    asked = utcnow()
    dispatched = request_sync(engine, ids)
    workers = live_workers(engine)
    if workers == 0:
        note(
            "[yellow]queued, but no worker is running to pick it up; start one: crmsync run "
            "(or crmsync worker)[/yellow]"
        )
    rows = _wait_for(engine, ids, asked, wait) if wait else []
    if json_out:
        print_json(
            {
                "queued": [str(d.mailbox_id) for d in dispatched],
                "live_workers": workers,
                "results": rows,
            }
        )
        return
    for d in dispatched:
        how = "queued" if d.queued else "already queued"
        note(f"{d.mailbox_id}: {how} for a sync now")
    for row in rows:
        note(f"{row['mailbox']}: {row['result']}")
    if wait and any(r["result"] == "still waiting" for r in rows):
        raise typer.Exit(1)


def live_workers(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM procrastinate_workers "
                    "WHERE last_heartbeat > now() - interval '60 seconds'"
                )
            ).scalar()
            or 0
        )


def _wait_for(
    engine: Engine, ids: list[uuid.UUID], asked: datetime, seconds: float
) -> list[dict[str, Any]]:
    """Poll (bounded by ``seconds``) until every mailbox finished a run that started after
    ``asked``; each row says how it went."""
    deadline = time.monotonic() + seconds
    while True:
        with Session(engine) as session:
            boxes = session.scalars(sa.select(Mailbox).where(Mailbox.id.in_(ids))).all()
            done = {
                m.id: m
                for m in boxes
                if m.last_sync_started_at is not None
                and m.last_sync_started_at >= asked
                and m.last_sync_finished_at is not None
                and m.last_sync_finished_at >= m.last_sync_started_at
            }
            if len(done) == len(ids) or time.monotonic() >= deadline:
                return [
                    {
                        "mailbox": m.email_address,
                        "result": (
                            "still waiting"
                            if m.id not in done
                            else f"failed: {m.last_error_message}"
                            if m.last_error_code
                            else f"ok, {m.items_processed_last_sync} seen"
                        ),
                    }
                    for m in boxes
                ]
        time.sleep(0.2)
