"""``crmsync init`` and ``crmsync db``: the schema and the embedded server."""

from __future__ import annotations

from typing import Annotated

import typer

from crmsync.cli.context import Context
from crmsync.cli.output import info, print_json
from crmsync.db import current_revision, describe_url, head_revision, stop_embedded, upgrade_schema

app = typer.Typer(help="The database: where it is, and the embedded server.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def init(json_out: JsonOpt = False) -> None:
    """Create the database schema, or upgrade it to this version of crmsync (safe to repeat)."""
    ctx = Context()
    engine = ctx.engine(require_schema=False)
    before, after = upgrade_schema(engine)
    # Create the key file now, so the first mailbox added does not race to create it.
    ctx.secret_box  # noqa: B018
    result = {
        "database": describe_url(str(engine.url)),
        "embedded": ctx.embedded,
        "revision_before": before,
        "revision": after,
        "changed": before != after,
        "secret_keys": ctx.secret_box.origin,
    }
    if json_out:
        print_json(result)
        return
    if before is None:
        info(f"created the crmsync schema (revision {after}) in {result['database']}")
    elif before != after:
        info(f"upgraded the schema from {before} to {after} in {result['database']}")
    else:
        info(f"the schema is up to date (revision {after}) in {result['database']}")


@app.command("status")
def db_status(json_out: JsonOpt = False) -> None:
    """Show which database crmsync uses and whether its schema is current."""
    ctx = Context()
    engine = ctx.engine(require_schema=False)
    current = current_revision(engine)
    result = {
        "database": describe_url(str(engine.url)),
        "embedded": ctx.embedded,
        "pgdata": str(ctx.settings.embedded_pgdata) if ctx.embedded else None,
        "revision": current,
        "head": head_revision(),
    }
    if json_out:
        print_json(result)
        return
    where = f"embedded, data in {result['pgdata']}" if ctx.embedded else "external"
    info(f"database: {result['database']} ({where})")
    state = "current" if current == result["head"] else "needs: crmsync init"
    info(f"schema: {current or 'none'} ({state})")


@app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL (the next command starts it again)."""
    ctx = Context()
    if not ctx.embedded:
        info("CRMSYNC_DATABASE_URL is set: crmsync does not manage that server; nothing stopped")
        return
    if stop_embedded(ctx.settings):
        info(f"stopped the embedded PostgreSQL in {ctx.settings.embedded_pgdata}")
    else:
        info("the embedded PostgreSQL is not running")
