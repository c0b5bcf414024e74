"""``crmsync check``: would the CRM track this email? From its four fields only.

Dynamics' ``CheckIncomingEmail``, and the seed's privacy promise: the answer comes from the
message id, subject, sender and recipients alone. Nothing is fetched from a mail server, nothing
is stored, and the subject never reaches the database (only the tracking token found in it).
"""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.orm import Session

from crmsync.cli.acting import ActAs, acting_actor
from crmsync.cli.context import Context
from crmsync.cli.output import out, print_json
from crmsync.core.promote import check_incoming
from crmsync.crm.records import Record
from crmsync.crm.security import Principal
from crmsync.crm.security.decisions import Decision, holds
from crmsync.db import session_scope
from crmsync.sync.lookups import DatabaseIncomingLookup

READ_EMAIL = "read:email"


def may_check_incoming(principal: Principal) -> Decision:
    """Dynamics requires prvReadActivity for CheckIncomingEmail: read:email at any depth."""
    return holds(principal, READ_EMAIL)


def check(
    message_id: Annotated[
        str | None, typer.Option("--message-id", help="The Message-ID (angle brackets optional).")
    ] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="The subject.")] = None,
    sender: Annotated[str | None, typer.Option("--from", help="The sender's address.")] = None,
    to: Annotated[
        list[str] | None, typer.Option("--to", help="A recipient (repeat for several).")
    ] = None,
    cc: Annotated[
        list[str] | None, typer.Option("--cc", help="A Cc recipient (repeat for several).")
    ] = None,
    as_user: ActAs = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Would the CRM track this received email? Decided from its message id, subject, sender
    and recipients only (no mail server is asked). Exits 0 whatever the answer; with --as the
    user needs read:email."""
    ctx = Context()
    recipients = [*(to or []), *(cc or [])]
    with session_scope(ctx.engine()) as session:
        acting_actor(session, as_user, gate=may_check_incoming)
        decision = check_incoming(
            message_id, subject, sender, recipients, DatabaseIncomingLookup(session)
        )
        accepted_by = None if decision.accepted_by is None else str(decision.accepted_by)
        who = _label(session, decision.accepted_by)
        session.rollback()  # a question, not a change
    if json_out:
        print_json(
            {
                "should_track": decision.should_track,
                "reason": decision.reason.value,
                "accepted_by": accepted_by,
                "detail": decision.detail,
            }
        )
        return
    out.print("track" if decision.should_track else "do not track")
    out.print(f"reason: {decision.reason.value}: {decision.reason.sentence}")
    out.print(decision.detail)
    if who is not None:
        out.print(f"accepted by: {who}")


def _label(session: Session, record_id: object) -> str | None:
    if record_id is None:
        return None
    record = session.get(Record, record_id)
    if record is None:  # pragma: no cover (the lookup just found it)
        return str(record_id)
    return f"{record.record_type} {record.name} ({record.id})"
