"""The ``crmsync`` command line.

Each command exits 0 on success and non-zero with a one-line reason on failure; commands that
print data take ``--json``. Later issues add email commands beside these.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from crmsync.cli import (
    activities,
    alerts,
    audit,
    check,
    database,
    demo,
    email,
    explain,
    importing,
    mailbox,
    secrets,
    service,
    settings,
    status,
    sync,
    users,
)
from crmsync.errors import CrmsyncError

app = typer.Typer(
    name="crmsync",
    help="Keep a CRM and people's mailboxes in sync (IMAP/SMTP, CalDAV/CardDAV).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("init")(database.init)
app.command("import")(importing.import_command)
app.command("status")(status.status)
app.command("demo")(demo.demo)
app.command("audit")(audit.audit_command)
app.command("check")(check.check)
app.command("sync")(sync.sync_command)
app.command("run")(service.run)
app.command("worker")(service.worker)
app.command("explain")(explain.explain)
app.command("activities")(activities.activities)
app.add_typer(mailbox.app, name="mailbox")
app.add_typer(alerts.app, name="alerts")
app.add_typer(email.app, name="email")
app.add_typer(database.app, name="db")
app.add_typer(secrets.app, name="secrets")
app.add_typer(settings.app, name="settings")
app.add_typer(users.app, name="user")


def main(argv: list[str] | None = None) -> None:
    # Standalone mode: click prints usage errors and help and exits with its own codes; what
    # escapes it is either a CrmsyncError (a one-line reason, exit 1) or a bug (exit 2).
    try:
        app(args=argv, prog_name="crmsync")
    except CrmsyncError as exc:
        print(f"crmsync: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("crmsync: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        _report_bug(exc)


def _report_bug(exc: Exception) -> None:
    # The message may quote data, never a secret (secrets travel as Secret objects).
    print(
        f"crmsync: internal error: {type(exc).__name__}: {exc} — please report it; "
        "CRMSYNC_LOG_LEVEL=debug shows the traceback",
        file=sys.stderr,
    )
    if os.environ.get("CRMSYNC_LOG_LEVEL", "").lower() == "debug":
        traceback.print_exc()
    sys.exit(2)
