"""``crmsync sync --once``: sync mailboxes' incoming email now, then exit.

Every syncable mailbox (enabled, with an incoming server, approved when the organization requires
it), or the named ones. One mailbox failing never stops the others; the exit code is 1 when any
failed, 0 otherwise (a mailbox another run is syncing is noted, not failed).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from rich.markup import escape
from rich.progress import Progress, TaskID
from sqlalchemy.orm import Session

from crmsync.admin.mailboxes import find_mailbox, list_mailboxes
from crmsync.cli.context import Context
from crmsync.cli.output import err, out, print_json, progress_bar, table
from crmsync.crm.mailboxes import ApprovalStatus, Mailbox, MailboxState, SyncMethod
from crmsync.crm.settings import get_setting
from crmsync.db import session_scope
from crmsync.errors import InvalidInput
from crmsync.sync.incoming import SyncReport, sync_mailboxes, syncable_mailboxes


def note(message: str) -> None:
    """A message on stderr, never folded (a command in it must stay copyable)."""
    err.print(message, soft_wrap=True)


NO_SERVICE = "use --once; the continuous service is `crmsync run` (not yet available)"


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
        return f"disabled; enable it: crmsync mailbox enable {address}"
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
    }


def skipped_text(skipped: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in skipped.items()) or "—"


def _folders_text(r: dict[str, Any]) -> str:
    return ", ".join(f"{f} ({r['modes'].get(f, '?')})" for f in r["folders"]) or "—"


def _result_text(r: dict[str, Any]) -> str:
    if r["busy"]:
        return "[yellow]busy: another run is syncing it; skipped this time[/yellow]"
    if r["error"] is not None:
        return f"[red]{escape(r['error'])}[/red]"
    notes = ["ok"]
    if r["remapped"]:
        notes.append(f"{r['remapped']} re-mapped")
    if r["uidvalidity_changed"]:
        notes.append("UIDVALIDITY changed: " + ", ".join(r["uidvalidity_changed"]))
    return escape("; ".join(notes))


def sync_command(
    once: Annotated[
        bool, typer.Option("--once", help="Sync now and exit (required for now).")
    ] = False,
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
    if not once:
        note(f"crmsync: {NO_SERVICE}")
        raise typer.Exit(2)
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
