"""Writing CRM email to send: the checks, the activity, and the wake-up of the sender.

    email = queue_email(session, NewEmail(sender="anna", to=["carl@customer.test"], ...),
                        principal=None)   # None: the CLI operator; a Principal: that user

What a person asks to send becomes an outgoing email activity in ``pending_send`` (or
``draft``), owned by the sender, with its parties resolved to CRM records, its attachments
stored, a Message-ID of crmsync's own making and, when the organization uses them, a tracking
token appended to the subject, so that replies come back correlated (by In-Reply-To to that
Message-ID, or by the token). A send job for the sender's mailbox is queued in the same
transaction, so a running worker starts sending within moments (``crmsync.sync.outgoing``).

Refused at once, with the reason and what to do: sending as another user without the send-as
privilege or that user's consent; a recipient record without an address; an address no record
has while the organization does not allow unresolved recipients; an attachment over the limit.
A sender whose mailbox cannot send yet (not approved, not enabled, no outgoing server) gets the
email queued and a warning saying why it will wait (Dynamics: "stuck in Pending Send").
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from crmsync.core.addresses import normalize_address
from crmsync.core.correlate import normalize_message_id
from crmsync.core.dedupe import dedupe_key
from crmsync.core.outgoing import Recipient, attachment_problem, recipient_problems
from crmsync.core.tokens import append_token, make_token
from crmsync.crm.activities import (
    ActivityParty,
    Attachment,
    Email,
    EmailDirection,
    EmailStatus,
    TokenSender,
)
from crmsync.crm.base import PartyRole, Resolution, utcnow
from crmsync.crm.mailboxes import ApprovalStatus, Mailbox, MailboxState, SyncMethod
from crmsync.crm.records import EmailAddress, Queue, Record, User
from crmsync.crm.security import Principal, may_send_as
from crmsync.crm.settings import get_setting, token_format
from crmsync.errors import InvalidInput, NotFound
from crmsync.mail.compose import new_message_id


@dataclass
class NewAttachment:
    filename: str
    content_type: str
    data: bytes


@dataclass
class NewEmail:
    sender: Record
    """The user (or queue) the email is from; its mailbox sends it."""
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    """Each an email address or a CRM record id (the record's primary address is used)."""
    subject: str = ""
    text_body: str | None = None
    html_body: str | None = None
    attachments: list[NewAttachment] = field(default_factory=list)
    regarding_id: uuid.UUID | None = None
    send_after: datetime | None = None
    draft: bool = False


@dataclass
class Queued:
    email: Email
    warnings: list[str]


def queue_email(session: Session, new: NewEmail, *, principal: Principal | None) -> Queued:
    """Create the outgoing email (see the module docstring); the caller commits."""
    sender = new.sender
    if not isinstance(sender, (User, Queue)):
        raise InvalidInput(f"email is sent from a user or a queue, not a {sender.record_type}")
    if principal is not None and isinstance(sender, User):
        may_send_as(principal, sender).or_raise()
    address = sender.primary_email
    if not address:
        raise InvalidInput(f"{sender.name} has no email address to send from")
    recipients = [
        _resolve(session, role, ref)
        for role, refs in ((PartyRole.TO, new.to), (PartyRole.CC, new.cc), (PartyRole.BCC, new.bcc))
        for ref in refs
    ]
    problems = recipient_problems(
        [Recipient(r.role.value, r.address, r.name) for r in recipients],
        allow_unresolved=bool(get_setting(session, "allow_unresolved_recipients")),
    )
    size = attachment_problem(
        [len(a.data) for a in new.attachments], int(get_setting(session, "max_attachment_kb"))
    )
    if size:
        problems.append(size)
    if problems:
        raise InvalidInput("the email cannot be sent: " + "; ".join(problems))
    if new.send_after is not None and new.send_after.tzinfo is None:
        raise InvalidInput("the send-later time needs a time zone (e.g. 2024-05-01T09:00:00+00:00)")
    mailbox = session.scalar(sa.select(Mailbox).where(Mailbox.owner_id == sender.id))
    warnings = _mailbox_warnings(session, mailbox, sender)
    # stored as every Message-ID is (no brackets, domain lower-cased): how replies find it
    message_id = normalize_message_id(
        new_message_id(address.rpartition("@")[2] or "crmsync.invalid")
    )
    subject, token = _with_token(session, sender, new.subject)
    email = Email(
        name=subject[:200] or "(no subject)",
        subject=subject,
        description=new.text_body,
        body_html=new.html_body,
        direction=EmailDirection.OUTGOING,
        email_status=EmailStatus.DRAFT if new.draft else EmailStatus.PENDING_SEND,
        message_id=message_id,
        dedupe_key=dedupe_key(message_id),
        tracking_token=token,
        sender=address,
        owner_id=sender.id,
        business_unit_id=sender.business_unit_id,
        regarding_id=new.regarding_id,
        send_after=new.send_after,
        sending_mailbox_id=mailbox.id if mailbox else None,
    )
    email.parties = [
        ActivityParty(
            role=PartyRole.FROM,
            party_id=sender.id,
            address=address,
            resolution=Resolution.RESOLVED,
        ),
        *(
            ActivityParty(
                role=r.role,
                position=n,
                party_id=r.record_id,
                address=r.address,
                resolution=Resolution.RESOLVED if r.record_id else Resolution.UNRESOLVED,
            )
            for n, r in enumerate(recipients)
        ),
    ]
    email.attachments = [
        Attachment(
            filename=a.filename,
            content_type=a.content_type,
            size_bytes=len(a.data),
            sha256=hashlib.sha256(a.data).hexdigest(),
            content=a.data,
        )
        for a in new.attachments
    ]
    session.add(email)
    session.flush()
    if not new.draft and mailbox is not None and not warnings:
        from crmsync.scheduler.dispatch import dispatch_sends

        dispatch_sends(session, now=utcnow(), only=[mailbox.id])
    return Queued(email, warnings)


@dataclass(frozen=True)
class _Resolved:
    role: PartyRole
    address: str | None
    record_id: uuid.UUID | None
    name: str | None


def _resolve(session: Session, role: PartyRole, ref: str) -> _Resolved:
    """An address (matched to the record that has it, if any) or a record id."""
    text = ref.strip()
    try:
        record_id = uuid.UUID(text)
    except ValueError:
        record_id = None
    if record_id is not None:
        record = session.get(Record, record_id)
        if record is None:
            raise NotFound(f"no CRM record with id {text}")
        return _Resolved(role, record.primary_email, record.id, record.name)
    address = normalize_address(text)
    if address is None:
        raise InvalidInput(f"{text!r} is not an email address or a record id")
    owner = session.execute(
        sa.select(Record.id, Record.name)
        .join(EmailAddress, EmailAddress.record_id == Record.id)
        .where(EmailAddress.address == address)
        .order_by(EmailAddress.slot, Record.created_at)
        .limit(1)
    ).first()
    if owner is None:
        return _Resolved(role, address, None, None)
    return _Resolved(role, address, owner.id, owner.name)


def _mailbox_warnings(session: Session, mailbox: Mailbox | None, sender: Record) -> list[str]:
    """Why this sender's email would wait in pending_send (empty: it will be sent)."""
    if mailbox is None:
        return [f"{sender.name} has no mailbox; add one: crmsync mailbox add --owner ..."]
    why = []
    if mailbox.outgoing_method is not SyncMethod.SERVER_SYNC or not mailbox.smtp_url:
        why.append("it has no outgoing (SMTP) server (crmsync mailbox add --smtp URL --update)")
    if (
        get_setting(session, "process_email_only_for_approved_mailboxes")
        and mailbox.approval_status is not ApprovalStatus.APPROVED
    ):
        why.append(f"it is not approved (crmsync mailbox approve {mailbox.email_address})")
    if mailbox.state is not MailboxState.ENABLED:
        why.append(f"it is disabled (crmsync mailbox enable {mailbox.email_address})")
    if not why:
        return []
    return [
        f"the email waits in pending_send: mailbox {mailbox.email_address} cannot send, "
        + "; ".join(why)
    ]


def _with_token(session: Session, sender: Record, subject: str) -> tuple[str, str | None]:
    """The subject with the sender's next tracking token (or as is when tokens are off)."""
    fmt = token_format(session)
    if fmt is None:
        return subject, None
    row = session.get(TokenSender, sender.id, with_for_update=True)
    if row is None:
        taken = session.scalar(sa.select(sa.func.max(TokenSender.user_number)))
        row = TokenSender(record_id=sender.id, user_number=(taken or 0) + 1, counter=0)
        session.add(row)
    row.counter += 1
    session.flush()
    token = make_token(fmt, row.user_number, row.counter)
    return append_token(subject, token), token.text


def outgoing_recipients(email: Email) -> Sequence[Recipient]:
    """The email's To/Cc/Bcc as the core's recipients, with each record's current address."""
    out = []
    for party in email.parties:
        if party.role not in (PartyRole.TO, PartyRole.CC, PartyRole.BCC):
            continue
        name = party.party.name if party.party is not None else None
        out.append(Recipient(party.role.value, party.address, name))
    return out
