"""``crmsync mailbox``: add, list, show, approve/reject, test and enable/disable mailboxes."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from crmsync.admin.connectivity import (
    DEFAULT_TIMEOUT,
    ConnectivityReport,
    failed_phrase,
    run_mailbox_test,
)
from crmsync.admin.mailboxes import (
    MailboxSpec,
    add_mailbox,
    describe,
    disable_mailbox,
    enable_mailbox,
    find_mailbox,
    list_mailboxes,
    set_approval,
)
from crmsync.cli.acting import ActAs, acting_actor
from crmsync.cli.context import Context
from crmsync.cli.output import info, out, print_json, table
from crmsync.core.privacy import PrivacyLevel
from crmsync.crm.audit import Actor
from crmsync.crm.security import may_approve_mailbox
from crmsync.crm.settings import org_privacy_level
from crmsync.db import session_scope
from crmsync.errors import InvalidInput
from crmsync.secrets import Secret

app = typer.Typer(
    help="Mailboxes: where crmsync reaches each user's or queue's mail.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
DEFAULT_PASSWORD_ENV = "CRMSYNC_MAILBOX_PASSWORD"  # noqa: S105  (a variable name)


def read_password(env_name: str) -> Secret:
    """From the named environment variable, else a hidden prompt; never from the command line."""
    value = os.environ.get(env_name)
    if value:
        return Secret(value)
    if not sys.stdin.isatty():
        raise InvalidInput(
            f"no password: set the environment variable {env_name} (or name another with "
            "--password-env), or run in a terminal to be prompted"
        )
    return Secret(typer.prompt("Mailbox password", hide_input=True, confirmation_prompt=True))


@app.command("add")
def add(
    owner: Annotated[
        str, typer.Option(help="User (username, email or external id) or queue:NAME.")
    ],
    imap: Annotated[
        str | None, typer.Option(help="Incoming server, imap://host[:port] or imaps://…")
    ] = None,
    smtp: Annotated[
        str | None, typer.Option(help="Outgoing server, smtp://, submission:// or smtps://…")
    ] = None,
    caldav: Annotated[str | None, typer.Option(help="CalDAV URL (appointments, tasks).")] = None,
    carddav: Annotated[str | None, typer.Option(help="CardDAV URL (contacts).")] = None,
    username: Annotated[
        str | None, typer.Option(help="Login name (default: the email address).")
    ] = None,
    email: Annotated[
        str | None, typer.Option(help="Mailbox address (default: the owner's).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Display name (default: the owner's).")] = None,
    privacy: Annotated[
        PrivacyLevel | None,
        typer.Option(
            help="What crmsync may take from this mailbox's mail (default: the organization's "
            "level, which is also the most it may take)."
        ),
    ] = None,
    password_env: Annotated[
        str, typer.Option(help="Environment variable holding the password.")
    ] = DEFAULT_PASSWORD_ENV,
    update: Annotated[
        bool, typer.Option("--update", help="Reconfigure an existing mailbox.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Add a mailbox for a user or queue. The password comes from the environment or a prompt."""
    ctx = Context()
    spec = MailboxSpec(
        owner=owner,
        imap_url=imap,
        smtp_url=smtp,
        caldav_url=caldav,
        carddav_url=carddav,
        username=username,
        email_address=email,
        name=name,
        privacy_level=privacy,
    )
    engine = ctx.engine()
    password = read_password(password_env)
    with session_scope(engine) as session:
        mailbox, created = add_mailbox(
            session, ctx.secret_box, spec, password, actor=Actor.cli_operator(), update=update
        )
        result = describe(mailbox, org_privacy=org_privacy_level(session), detail=True)
    if json_out:
        print_json(result | {"created": created})
        return
    verb = "added" if created else "updated"
    info(
        f"{verb} mailbox {result['email_address']} for {result['owner']} "
        f"(state {result['state']}, approval {result['approval']})"
    )


@app.command("list")
def list_command(json_out: JsonOpt = False) -> None:
    """List every mailbox with its approval, state and last sync."""
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        org = org_privacy_level(session)
        rows = [describe(m, org_privacy=org) for m in list_mailboxes(session)]
    if json_out:
        print_json(rows)
        return
    if not rows:
        info(
            "no mailboxes yet; add one with: crmsync mailbox add --owner USER --imap URL --smtp URL"
        )
        return
    out.print(mailbox_table(rows))


def mailbox_table(rows: list[dict]) -> Table:
    return table(
        None,
        [
            "Mailbox",
            "Owner",
            "Approval",
            "State",
            "Syncs",
            "Last sync",
            "Next sync",
            "Why",
            "Push",
            "Last error",
        ],
        [
            (
                r["email_address"],
                r["owner"],
                r["approval"],
                r["state"],
                syncs(r),
                r["last_sync"],
                r["next_sync"],
                r["schedule"],
                r["push"],
                _error(r),
            )
            for r in rows
        ],
    )


def _error(row: dict) -> str | None:
    if not row["last_error"]:
        return None
    count = row.get("error_count") or 0
    return f"{row['last_error']} ({count} times in a row)" if count > 1 else row["last_error"]


def syncs(row: dict) -> str:
    """Which kinds of sync the mailbox is configured for, in a few characters."""
    kinds = [
        label
        for key, label in (("incoming", "in"), ("outgoing", "out"), ("act", "act"))
        if row[key] != "none"
    ]
    return "+".join(kinds) or "none"


@app.command("show")
def show(
    mailbox: Annotated[str, typer.Argument(help="Mailbox id, address, or owner.")],
    json_out: JsonOpt = False,
) -> None:
    """Show one mailbox in full (never its password)."""
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        found = find_mailbox(session, mailbox)
        result = describe(found, org_privacy=org_privacy_level(session), detail=True)
    if json_out:
        print_json(result)
        return
    out.print(table(None, ["Field", "Value"], list(result.items())))


def _approval(mailbox: str, as_user: str | None, approved: bool) -> None:
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        actor = acting_actor(session, as_user, gate=may_approve_mailbox)
        found = find_mailbox(session, mailbox)
        status = set_approval(session, found, approved, actor=actor)
        address = found.email_address
    info(f"mailbox {address}: approval {status.value}")


@app.command("approve")
def approve(
    mailbox: Annotated[str, typer.Argument(help="Mailbox id, address, or owner.")],
    as_user: ActAs = None,
) -> None:
    """Approve a mailbox's email address, so its mail may be processed."""
    _approval(mailbox, as_user, True)


@app.command("reject")
def reject(
    mailbox: Annotated[str, typer.Argument(help="Mailbox id, address, or owner.")],
    as_user: ActAs = None,
) -> None:
    """Reject a mailbox's email address: its mail is not processed."""
    _approval(mailbox, as_user, False)


def parse_when(value: str, option: str) -> datetime:
    """An ISO 8601 date or date-time; without a time zone it is UTC."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(
            f"{option} {value!r} is not an ISO 8601 date or date-time "
            "(e.g. 2024-05-01 or 2024-05-01T08:00:00+03:00)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@app.command("enable")
def enable(
    mailbox: Annotated[str, typer.Argument(help="Mailbox id, address, or owner.")],
    process_email_after: Annotated[
        str | None,
        typer.Option(
            "--process-email-after",
            help="Process only mail received after this ISO 8601 date-time (UTC unless it "
            "names a zone; default: now).",
        ),
    ] = None,
    as_user: ActAs = None,
) -> None:
    """Turn a mailbox's sync on. With approval required (the default) it must be approved
    first; with --as the user needs approve_mailbox."""
    after = (
        parse_when(process_email_after, "--process-email-after") if process_email_after else None
    )
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        actor = acting_actor(session, as_user, gate=may_approve_mailbox)
        found = find_mailbox(session, mailbox)
        result = enable_mailbox(session, found, actor=actor, process_after=after)
        address = found.email_address
    start = result.process_after.isoformat() if result.process_after else "—"
    if result.changed:
        info(f"mailbox {address}: enabled; processing email received after {start}")
    else:
        info(
            f"mailbox {address} is already enabled (processing email received after {start}); "
            "nothing changed"
        )


@app.command("disable")
def disable(
    mailbox: Annotated[str, typer.Argument(help="Mailbox id, address, or owner.")],
    as_user: ActAs = None,
) -> None:
    """Turn a mailbox's sync off (what it tracked stays). With --as the user needs
    approve_mailbox."""
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        actor = acting_actor(session, as_user, gate=may_approve_mailbox)
        found = find_mailbox(session, mailbox)
        result = disable_mailbox(session, found, actor=actor)
        address = found.email_address
    if result.changed:
        info(f"mailbox {address}: disabled")
    else:
        info(f"mailbox {address} is already disabled; nothing changed")


@app.command("test")
def test_command(
    mailbox: Annotated[str, typer.Argument(help="Mailbox id, address, or owner.")],
    enable: Annotated[
        bool,
        typer.Option("--enable", help="Enable the mailbox if every configured channel passes."),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds each network step may wait.", min=1)
    ] = DEFAULT_TIMEOUT,
    json_out: JsonOpt = False,
    as_user: ActAs = None,
) -> None:
    """Test the mailbox's incoming (IMAP), outgoing (SMTP) and ACT (CalDAV/CardDAV) connectivity
    separately and record the results; never sends mail. With --enable, enable it when all
    configured channels pass. Exit 1 when a channel fails or enabling is refused. With --as the
    user needs approve_mailbox."""
    ctx = Context()
    engine = ctx.engine()
    with session_scope(engine) as session:
        actor = acting_actor(session, as_user, gate=may_approve_mailbox)
        mailbox_id = find_mailbox(session, mailbox).id
    report = run_mailbox_test(
        engine, ctx.secret_box, mailbox_id, actor=actor, enable=enable, timeout=timeout
    )
    if json_out:
        print_json(report.as_dict())
    else:
        out.print(connectivity_table(report))
        _print_test_summary(report)
    if report.enable_refused:
        raise InvalidInput(report.enable_refused)
    if report.failed_channels:
        raise InvalidInput(f"mailbox {report.mailbox}: {failed_phrase(report.failed_channels)}")


def connectivity_table(report: ConnectivityReport) -> Table:
    rows = []
    for r in report.results:
        problem = r.error
        if r.failed and r.transient is not None:
            kind = "temporary: try again later" if r.transient else "permanent: fix, then retest"
            problem = f"{r.error_code} ({kind}): {r.error}"
        elif r.notes:
            problem = "note: " + "; ".join(r.notes)
        rows.append((r.channel.value, r.outcome.value, r.checked, problem))
    return table(
        f"Mailbox {report.mailbox}, tested {report.tested_at.isoformat(timespec='seconds')}",
        ["Channel", "Result", "Checked", "Error / what to do"],
        rows,
    )


def _print_test_summary(report: ConnectivityReport) -> None:
    if report.enable is not None:
        start = report.enable.process_after.isoformat() if report.enable.process_after else "—"
        if report.enable.changed:
            info(f"mailbox {report.mailbox}: enabled; processing email received after {start}")
        else:
            info(f"mailbox {report.mailbox} is already enabled; nothing changed")
    elif report.all_succeeded and not report.enable_requested:
        info(
            f"mailbox {report.mailbox}: every configured channel passed; enable it with: "
            f"crmsync mailbox test {report.mailbox} --enable"
        )
