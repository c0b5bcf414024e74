"""``crmsync demo``: a small CRM with real mailboxes on the local stack, then its status."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crmsync.cli.context import Context
from crmsync.cli.output import info, out, print_json, table
from crmsync.cli.status import status
from crmsync.demo.runner import StackEndpoints, read_accounts, run_demo


def demo(
    stack: Annotated[Path, typer.Option(help="stack.json written by stack/up.sh.")] = Path(
        ".stack/demo/stack.json"
    ),
    accounts: Annotated[
        Path, typer.Option(help="login:password lines the demo stack was seeded with.")
    ] = Path("demo/mail-accounts.txt"),
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Load the demo CRM, give its users mailboxes on the local stack, deliver sample mail,
    enable the mailboxes and sync their incoming email once.

    `make demo` starts the stack and runs this; it is safe to run again (nothing is doubled).
    """
    ctx = Context()
    endpoints = StackEndpoints.from_stack_json(stack)
    logins = read_accounts(accounts)
    result = run_demo(
        ctx.engine(require_schema=False),
        ctx.secret_box,
        endpoints,
        logins,
        say=(lambda _m: None) if json_out else (lambda m: info(f"demo: {m}")),
    )
    if json_out:
        print_json(result.to_dict())
        return
    for error in result.import_errors:
        info(f"demo: import problem: {error}")
    out.print(
        table(
            "Demo mailboxes, inbox messages read back over IMAP",
            ["Mailbox", "INBOX"],
            sorted(result.inbox_counts.items()),
        )
    )
    out.print(
        table(
            "Incoming sync of each mailbox",
            ["Mailbox", "Seen", "Tracked", "Linked", "Not tracked", "Error"],
            [
                (
                    s["mailbox"],
                    s["seen"],
                    s["tracked"],
                    s["linked"],
                    ", ".join(f"{k} {v}" for k, v in sorted(s["skipped"].items())) or "-",
                    s["error"] or "-",
                )
                for s in result.synced
            ],
        )
    )
    out.print(
        table(
            "What crmsync decided about each message (crmsync explain MESSAGE-ID tells why)",
            ["Message-ID", "Mailbox", "Outcome", "Reason", "Activity"],
            [
                (d["message_id"], d["mailbox"], d["outcome"], d["reason"], d["activity"] or "-")
                for d in result.decisions
            ],
        )
    )
    status(json_out=False)
