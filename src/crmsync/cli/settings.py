"""``crmsync settings``: organization-wide settings."""

from __future__ import annotations

from typing import Annotated

import typer

from crmsync.cli.acting import ActAs, acting_actor
from crmsync.cli.context import Context
from crmsync.cli.output import info, out, print_json, table
from crmsync.crm import audit
from crmsync.crm.security import may_manage_org_settings
from crmsync.crm.settings import SETTINGS, all_settings, set_setting
from crmsync.db import session_scope

app = typer.Typer(help="Organization-wide settings.", no_args_is_help=True)


@app.command("list")
def list_command(
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show every setting with its value and what it means."""
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        values = all_settings(session)
    if json_out:
        print_json(values)
        return
    rows = [(k, show(v), SETTINGS[k].help) for k, v in values.items()]
    out.print(table(None, ["Setting", "Value", "Meaning"], rows))


@app.command("set")
def set_command(
    key: Annotated[str, typer.Argument(help="Setting name (see: crmsync settings list).")],
    value: Annotated[str, typer.Argument(help="New value.")],
    as_user: ActAs = None,
) -> None:
    """Change a setting (needs the manage_org_settings privilege when acting --as a user)."""
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        actor = acting_actor(session, as_user, gate=may_manage_org_settings)
        old, new = set_setting(session, key, value)
        audit.record(
            session,
            actor,
            "settings.changed",
            target_type="setting",
            target_id=key,
            target_name=key,
            old=old,
            new=new,
        )
    info(f"{key}: {show(old)} -> {show(new)}")


def show(value: object) -> str:
    """A setting as a person types it: true/false, a comma-separated list, plain text."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "(empty)"
    return str(value)
