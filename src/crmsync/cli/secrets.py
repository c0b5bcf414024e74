"""``crmsync secrets``: encryption keys for stored credentials."""

from __future__ import annotations

import sqlalchemy as sa
import typer

from crmsync.cli.context import Context
from crmsync.cli.output import info
from crmsync.crm import audit
from crmsync.crm.audit import Actor
from crmsync.crm.mailboxes import EmailServerProfile, Mailbox
from crmsync.db import session_scope
from crmsync.secrets import new_key

app = typer.Typer(help="Keys that encrypt stored mailbox credentials.", no_args_is_help=True)


@app.command("new-key")
def new_key_command() -> None:
    """Print a new random key (put it first in CRMSYNC_SECRET_KEY or the key file to rotate)."""
    typer.echo(new_key())


@app.command("rotate")
def rotate() -> None:
    """Re-encrypt every stored credential with the newest key, so old keys can be retired."""
    ctx = Context()
    box = ctx.secret_box
    count = 0
    with session_scope(ctx.engine()) as session:
        for model in (Mailbox, EmailServerProfile):
            for row in session.scalars(sa.select(model).where(model.credential.is_not(None))):
                row.credential = box.rotate(row.credential)
                count += 1
        audit.record(
            session,
            Actor.cli_operator(),
            "secrets.rotated",
            target_type="secrets",
            target_name=box.origin,
            rotated=count,
        )
    info(f"re-encrypted {count} credential(s) with the newest key from {box.origin}")
