"""``crmsync explain MESSAGE-ID``: what crmsync decided about a message, in every mailbox, and why.

Read from the decision trace (``crm.decisions.MessageDecision``: one row per mailbox copy).

Who sees what with ``--as USER``: the decisions of the user's own mailbox; with ``read:email`` at
organization depth, every mailbox's. Without ``--as`` (the CLI operator) every mailbox's.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from rich.markup import escape
from sqlalchemy.orm import Session

from crmsync.admin.mailboxes import find_mailbox
from crmsync.cli.acting import ActAs, acting_user
from crmsync.cli.context import Context
from crmsync.cli.output import out, print_json, table
from crmsync.core.correlate import normalize_message_id
from crmsync.core.promote import REASON_SENTENCES, ReasonCode
from crmsync.crm.activities import Email
from crmsync.crm.decisions import MessageDecision, Outcome, ServiceReason
from crmsync.crm.mailboxes import Mailbox
from crmsync.crm.records import Record
from crmsync.crm.roles import AccessRight
from crmsync.crm.security import load_principal
from crmsync.crm.security.scope import scope_of
from crmsync.db import session_scope
from crmsync.errors import InvalidInput, NotFound

SERVICE_SENTENCES: dict[ServiceReason, str] = {
    ServiceReason.RECEIVED_BEFORE_START: "The message was received before the mailbox's "
    "start date (process email received after); it is never processed.",
    ServiceReason.FETCH_FAILED: "The message could not be fetched from the mail server; it is "
    "retried on later syncs.",
    ServiceReason.PARSE_FAILED: "The message could not be read (its format is broken); it is "
    "retried on later syncs.",
    ServiceReason.STORE_FAILED: "The message could not be stored in the CRM; it is retried on "
    "later syncs.",
    ServiceReason.INTERNAL_ERROR: "crmsync failed on this message (a bug); it is retried on "
    "later syncs.",
    ServiceReason.REMAPPED: "The folder's UIDVALIDITY changed and this copy was matched to its "
    "earlier decision by Message-ID.",
}


def reason_sentence(reason: str) -> str:
    if reason in ReasonCode._value2member_map_:
        return REASON_SENTENCES[ReasonCode(reason)]
    if reason in ServiceReason._value2member_map_:
        return SERVICE_SENTENCES.get(ServiceReason(reason), "")
    return ""


def not_seen(message_id: str) -> str:
    return (
        f"crmsync has not seen a message with Message-ID <{message_id}>; it may not have been "
        "synced yet (`crmsync sync --once`) or was received before the mailbox's start date"
    )


def readable_mailboxes(session: Session, as_user: str | None) -> sa.ColumnElement[bool]:
    """The mailboxes whose decisions the actor may read (see the module's docstring)."""
    if as_user is None:
        return sa.true()
    user = acting_user(session, as_user)
    principal = load_principal(session, user.id)
    if principal.is_disabled:
        return sa.false()
    if scope_of(principal, "read:email", AccessRight.READ).everything is not None:
        return sa.true()
    return MessageDecision.mailbox_id.in_(sa.select(Mailbox.id).where(Mailbox.owner_id == user.id))


def _names(session: Session, ids: set[uuid.UUID]) -> dict[uuid.UUID, Record]:
    if not ids:
        return {}
    return {r.id: r for r in session.scalars(sa.select(Record).where(Record.id.in_(ids)))}


def _label(record: Record | None, fallback: object = None) -> str | None:
    if record is None:
        return None if fallback is None else str(fallback)
    return f"{record.record_type} {record.name}"


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def collect(session: Session, decisions: list[MessageDecision]) -> list[dict[str, Any]]:
    record_ids: set[uuid.UUID] = set()
    for d in decisions:
        if d.accepted_by_id:
            record_ids.add(d.accepted_by_id)
        for party in d.parties or []:
            for rid in party.get("records") or []:
                try:
                    record_ids.add(uuid.UUID(str(rid)))
                except ValueError:
                    continue
    records = _names(session, record_ids)
    mailboxes = {
        m.id: m
        for m in session.scalars(
            sa.select(Mailbox).where(Mailbox.id.in_({d.mailbox_id for d in decisions}))
        )
    }
    email_ids = {d.email_id for d in decisions if d.email_id}
    emails = (
        {e.id: e for e in session.scalars(sa.select(Email).where(Email.id.in_(email_ids)))}
        if email_ids
        else {}
    )
    result = []
    for d in decisions:
        mailbox = mailboxes.get(d.mailbox_id)
        email = emails.get(d.email_id) if d.email_id else None
        parties = []
        for party in d.parties or []:
            names = []
            for rid in party.get("records") or []:
                try:
                    rec = records.get(uuid.UUID(str(rid)))
                except ValueError:
                    rec = None
                names.append(_label(rec, rid))
            parties.append(
                {
                    "role": party.get("role"),
                    "address": party.get("address"),
                    "resolution": party.get("resolution"),
                    "records": names,
                    "why": party.get("why"),
                }
            )
        retry = d.outcome in (Outcome.QUARANTINED, Outcome.FAILED)
        result.append(
            {
                "message_id": d.message_id,
                "mailbox": mailbox.email_address if mailbox else str(d.mailbox_id),
                "mailbox_id": str(d.mailbox_id),
                "folder": d.folder,
                "uidvalidity": d.uidvalidity,
                "uid": d.uid,
                "sender": d.sender,
                "received_at": _iso(d.received_at),
                "size_bytes": d.size_bytes,
                "outcome": d.outcome.value,
                "reason": d.reason,
                "reason_sentence": reason_sentence(d.reason),
                "detail": d.detail,
                "accepted_by": _label(records.get(d.accepted_by_id), d.accepted_by_id)
                if d.accepted_by_id
                else None,
                "correlation_method": d.correlation_method,
                "correlation_detail": d.correlation_detail,
                "parties": parties,
                "email_id": str(d.email_id) if d.email_id else None,
                "email_subject": email.subject if email is not None else None,
                "defects": d.defects or [],
                "attempts": d.attempts if retry else None,
                "next_attempt_at": _iso(d.next_attempt_at) if retry else None,
                "marked": d.marked,
                "decided_at": _iso(d.decided_at),
            }
        )
    return result


def explain(
    message_id: Annotated[str, typer.Argument(help="The Message-ID (angle brackets optional).")],
    mailbox: Annotated[
        str | None, typer.Option("--mailbox", help="Only this mailbox's copy (id, address, owner).")
    ] = None,
    as_user: ActAs = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Explain what crmsync decided about a message in each mailbox that has it, and why. With
    --as a user sees their own mailbox's copy, or every copy with read:email at organization
    depth."""
    normalized = normalize_message_id(message_id)
    if not normalized:
        raise InvalidInput(f"{message_id!r} is not a Message-ID")
    ctx = Context()
    with session_scope(ctx.engine()) as session:
        query = sa.select(MessageDecision).where(
            MessageDecision.message_id == normalized, readable_mailboxes(session, as_user)
        )
        if mailbox is not None:
            query = query.where(MessageDecision.mailbox_id == find_mailbox(session, mailbox).id)
        decisions = list(
            session.scalars(query.order_by(MessageDecision.decided_at, MessageDecision.folder))
        )
        if not decisions:
            raise NotFound(not_seen(normalized))
        rows = collect(session, decisions)
        session.rollback()  # a question, not a change
    if json_out:
        print_json(rows)
        return
    for index, r in enumerate(rows):
        if index:
            out.print()
        _print_one(r)


def _print_one(r: dict[str, Any]) -> None:
    e = escape
    out.print(
        f"[bold]<{e(r['message_id'] or '')}>[/bold] in {e(r['mailbox'])}, "
        f"folder {e(r['folder'])}, UID {r['uid']}: [bold]{e(r['outcome'])}[/bold]"
    )
    out.print(f"reason: {e(r['reason'])}: {e(r['reason_sentence'])}")
    if r["detail"]:
        out.print(e(r["detail"]))
    fields: list[tuple[str, Any]] = [
        ("from", r["sender"]),
        ("received", r["received_at"]),
        ("accepted by", r["accepted_by"]),
    ]
    if r["correlation_method"]:
        detail = f" ({r['correlation_detail']})" if r["correlation_detail"] else ""
        fields.append(("correlation", f"{r['correlation_method']}{detail}"))
    if r["email_id"]:
        fields.append(("email activity", f"{r['email_id']}: {r['email_subject'] or ''}"))
    if r["defects"]:
        fields.append(("defects", "; ".join(r["defects"])))
    if r["attempts"] is not None:
        fields.append(("attempts", r["attempts"]))
        fields.append(("next retry", r["next_attempt_at"] or "none (no more automatic retries)"))
    out.print(table(None, ["", ""], [(k, e(str(v)) if v is not None else None) for k, v in fields]))
    if r["parties"]:
        out.print(
            table(
                None,
                ["Role", "Address", "Resolution", "Records", "Why"],
                [
                    (
                        e(str(p["role"])),
                        e(str(p["address"])),
                        e(str(p["resolution"])),
                        e(", ".join(str(n) for n in p["records"])) or None,
                        e(str(p["why"] or "")) or None,
                    )
                    for p in r["parties"]
                ],
            )
        )
