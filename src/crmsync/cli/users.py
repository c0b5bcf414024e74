"""``crmsync user``: a CRM user's personal options."""

from __future__ import annotations

from typing import Annotated

import typer

from crmsync.admin.users import (
    check_change,
    describe,
    find_target,
    may_manage_tracking_options,
    parse_auto_create,
    parse_incoming_filter,
    set_tracking_options,
    target_label,
)
from crmsync.cli.acting import ActAs, acting_actor
from crmsync.cli.context import Context
from crmsync.cli.output import info, out, print_json, table
from crmsync.core.parties import AutoCreate
from crmsync.crm.base import IncomingEmailFilter
from crmsync.db import session_scope

app = typer.Typer(help="CRM users' personal options.", no_args_is_help=True)

FILTERS = "|".join(f.value for f in IncomingEmailFilter)
AUTO = "|".join(a.value for a in AutoCreate)


@app.command("options")
def options_command(
    user: Annotated[
        str,
        typer.Argument(
            help="Username, email address or external id; queue:NAME for a queue.",
            show_default=False,
        ),
    ],
    incoming_filter: Annotated[
        str | None,
        typer.Option(
            "--incoming-filter",
            metavar=f"[{FILTERS}]",
            help='Which email is tracked automatically ("Track email messages").',
        ),
    ] = None,
    auto_create: Annotated[
        str | None,
        typer.Option(
            "--auto-create",
            metavar=f"[{AUTO}]",
            help="Record to create for an unknown sender of tracked email (users only).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    as_user: ActAs = None,
) -> None:
    """Show a user's (or queue's) email-tracking options, or change them (audited).

    With --as, changing another user's or a queue's needs manage_user_sync_filters."""
    new_filter = parse_incoming_filter(incoming_filter) if incoming_filter is not None else None
    new_auto = parse_auto_create(auto_create) if auto_create is not None else None
    ctx = Context()
    change = None
    with session_scope(ctx.engine()) as session:
        target = find_target(session, user)
        if new_filter is not None or new_auto is not None:
            check_change(target, incoming_filter=new_filter, auto_create=new_auto)
            actor = acting_actor(
                session, as_user, gate=lambda p: may_manage_tracking_options(p, target)
            )
            change = set_tracking_options(
                session, target, actor=actor, incoming_filter=new_filter, auto_create=new_auto
            )
        shown = describe(target)
        label = target_label(target)
    if change is not None:
        if change.changed:
            moves = ", ".join(f"{k}: {change.old[k]} -> {v}" for k, v in change.new.items())
            info(f"{label}: {moves}")
        else:
            info(f"{label}: unchanged")
    if json_out:
        shown["changed"] = sorted(change.new) if change is not None else []
        print_json(shown)
        return
    row = (
        label,
        f"{shown['incoming_email_filter']} — {shown['incoming_email_filter_meaning']}",
        shown["auto_create_records"] or "— (users only)",
    )
    out.print(table(None, ["Owner", "Incoming filter", "Auto-create records"], [row]))
