"""Set up the demo end to end on the local stack and report what really happened.

Steps: schema → demo CRM data → one mailbox per demo user on the stack's Dovecot → sample mail
delivered through the stack's SMTP server (skipping what is already there) → inbox counts read
back over IMAP, so the report shows mail that truly arrived, not mail we think we sent → the
mailboxes approved and enabled (processing mail of the last 30 days) → one incoming sync of each,
and what it decided about every message, read back from the decision trace.
"""

from __future__ import annotations

import imaplib
import json
import smtplib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.admin.mailboxes import MailboxSpec, add_mailbox, enable_mailbox, set_approval
from crmsync.crm.activities import Email
from crmsync.crm.audit import Actor
from crmsync.crm.decisions import MessageDecision
from crmsync.crm.mailboxes import ApprovalStatus, Mailbox
from crmsync.crm.records import Contact, EmailAddress, Lead, Record, User
from crmsync.db import session_scope, upgrade_schema
from crmsync.demo.sample_mail import Person, SampleMail, build_samples
from crmsync.errors import InvalidInput
from crmsync.importing import import_files
from crmsync.importing.demo import demo_data_files
from crmsync.secrets import Secret, SecretBox
from crmsync.sync.incoming import sync_mailboxes

IMAP_TIMEOUT = 10.0
PROCESS_DAYS = 30
"""The demo mailboxes process mail received in the last 30 days (the sample mail is hours old)."""


@dataclass(frozen=True)
class StackEndpoints:
    imap_host: str
    imap_port: int
    smtp_host: str
    smtp_port: int
    dav_url: str | None

    @classmethod
    def from_stack_json(cls, path: Path) -> StackEndpoints:
        try:
            info = json.loads(path.read_text())
            return cls(
                imap_host=info["imap_host"],
                imap_port=int(info["imap_port"]),
                smtp_host=info["smtp_host"],
                smtp_port=int(info["smtp_port"]),
                dav_url=info.get("radicale_url"),
            )
        except FileNotFoundError:
            raise InvalidInput(
                f"{path} does not exist; start the demo stack first: bash stack/up.sh .stack/demo"
            ) from None
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidInput(
                f"{path} is not a stack description written by stack/up.sh: {exc}"
            ) from None


def read_accounts(path: Path) -> dict[str, Secret]:
    """``login:password`` lines (the file the demo stack was seeded from)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InvalidInput(f"mail accounts file {path} does not exist") from None
    accounts: dict[str, Secret] = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        login, sep, password = line.partition(":")
        if not sep or not login or not password:
            raise InvalidInput(f"{path} line {number}: expected login:password")
        accounts[login.strip().lower()] = Secret(password)
    return accounts


@dataclass
class DemoResult:
    imported: dict[str, Any] = field(default_factory=dict)
    mailboxes: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)
    inbox_counts: dict[str, int] = field(default_factory=dict)
    import_errors: list[str] = field(default_factory=list)
    synced: list[dict[str, Any]] = field(default_factory=list)
    """One entry per mailbox: the incoming sync's counts, or its error."""
    decisions: list[dict[str, Any]] = field(default_factory=list)
    """What the sync decided about each message copy, from the decision trace."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "import_errors": self.import_errors,
            "mailboxes": self.mailboxes,
            "delivered": self.delivered,
            "already_there": self.already_there,
            "inbox_counts": self.inbox_counts,
            "synced": self.synced,
            "decisions": self.decisions,
        }


def run_demo(
    engine: Engine,
    box: SecretBox,
    stack: StackEndpoints,
    accounts: dict[str, Secret],
    say: Callable[[str], None] = lambda _m: None,
) -> DemoResult:
    result = DemoResult()
    upgrade_schema(engine)
    say("schema ready")

    report = import_files(engine, demo_data_files())
    result.imported = report.to_dict()
    result.import_errors = [str(e) for e in report.errors]
    say("demo CRM data imported")

    actor = Actor(name="crmsync demo")
    logins: dict[str, str] = {}  # mailbox address -> IMAP login
    with session_scope(engine) as session:
        for user in session.scalars(sa.select(User).order_by(User.username)):
            address = user.primary_email
            login = address.split("@")[0] if address else None
            if not address or login not in accounts:
                continue
            dav = f"{stack.dav_url.rstrip('/')}/{login}/" if stack.dav_url else None
            spec = MailboxSpec(
                owner=user.username,
                imap_url=f"imap://{stack.imap_host}:{stack.imap_port}",
                smtp_url=f"smtp://{stack.smtp_host}:{stack.smtp_port}",
                caldav_url=dav,
                carddav_url=dav,
                username=login,
            )
            add_mailbox(session, box, spec, accounts[login], actor=actor, update=True)
            logins[address] = login
            result.mailboxes.append(address)
    if len(logins) < 2:
        raise InvalidInput(
            "fewer than two demo users have a mail account in the accounts file; "
            "check that it matches the demo users' addresses"
        )
    say(f"{len(logins)} mailboxes configured")

    samples = build_samples(*_people(engine, list(logins)))
    for sample in samples:
        if all(
            _has_message(stack, logins[r], accounts[logins[r]], sample.message_id)
            for r in sample.recipients
            if r in logins
        ):
            result.already_there.append(sample.message_id)
            continue
        _deliver(stack, sample)
        result.delivered.append(sample.message_id)
    delivered, skipped = len(result.delivered), len(result.already_there)
    say(f"{delivered} sample emails delivered, {skipped} already there")

    for address, login in logins.items():
        result.inbox_counts[address] = _inbox_count(stack, login, accounts[login])

    mailbox_ids = _enable(engine, list(logins), actor)
    say(f"{len(mailbox_ids)} mailboxes approved and enabled; syncing their incoming email")
    for report in sync_mailboxes(engine, box=box, mailbox_ids=mailbox_ids):
        result.synced.append(
            {
                "mailbox": report.mailbox,
                "seen": report.seen,
                "tracked": report.tracked,
                "linked": report.linked,
                "quarantined": report.quarantined,
                "skipped": dict(report.skipped),
                "error": report.error,
            }
        )
    result.decisions = _decisions(engine, mailbox_ids)
    return result


def _enable(engine: Engine, addresses: list[str], actor: Actor) -> list[Any]:
    """Approve and enable the demo mailboxes (what an administrator does once per mailbox)."""
    after = datetime.now(UTC) - timedelta(days=PROCESS_DAYS)
    ids = []
    with session_scope(engine) as session:
        for address in addresses:
            mailbox = session.scalars(
                sa.select(Mailbox).where(Mailbox.email_address == address)
            ).one()
            if mailbox.approval_status is not ApprovalStatus.APPROVED:
                set_approval(session, mailbox, True, actor=actor)
            enable_mailbox(session, mailbox, actor=actor, process_after=after)
            ids.append(mailbox.id)
    return ids


def _decisions(engine: Engine, mailbox_ids: list[Any]) -> list[dict[str, Any]]:
    with session_scope(engine) as session:
        rows = session.execute(
            sa.select(
                Mailbox.email_address,
                MessageDecision.message_id,
                MessageDecision.outcome,
                MessageDecision.reason,
                Email.subject,
            )
            .join(Mailbox, Mailbox.id == MessageDecision.mailbox_id)
            .outerjoin(Email, Email.id == MessageDecision.email_id)
            .where(MessageDecision.mailbox_id.in_(mailbox_ids))
            .order_by(MessageDecision.message_id, Mailbox.email_address)
        ).all()
    return [
        {
            "mailbox": r.email_address,
            "message_id": r.message_id,
            "outcome": r.outcome.value,
            "reason": r.reason,
            "activity": r.subject,
        }
        for r in rows
    ]


def _people(
    engine: Engine, mailbox_addresses: list[str]
) -> tuple[list[Person], list[Person], list[Person]]:
    with session_scope(engine) as session:
        users = [p for p in _with_address(session, User) if p.address in mailbox_addresses]
        return users, _with_address(session, Contact), _with_address(session, Lead)


def _with_address(session: Session, model: type[Record]) -> list[Person]:
    rows = session.execute(
        sa.select(model.name, EmailAddress.address)
        .join(EmailAddress, (EmailAddress.record_id == model.id) & (EmailAddress.slot == 1))
        .order_by(model.external_id)
    ).all()
    return [Person(name, address) for name, address in rows]


def _imap(stack: StackEndpoints, login: str, password: Secret) -> imaplib.IMAP4:
    conn = imaplib.IMAP4(stack.imap_host, stack.imap_port, timeout=IMAP_TIMEOUT)
    try:
        conn.login(login, password.reveal())
    except imaplib.IMAP4.error:
        conn.logout()
        raise InvalidInput(
            f"the demo IMAP server refused the login of {login}; was the demo stack started "
            "with the same accounts file (STACK_USERS_FILE)?"
        ) from None
    return conn


def _has_message(stack: StackEndpoints, login: str, password: Secret, message_id: str) -> bool:
    conn = _imap(stack, login, password)
    try:
        conn.select("INBOX", readonly=True)
        _typ, data = conn.uid("SEARCH", "HEADER", "Message-ID", message_id)
        return bool(data and data[0] and data[0].split())
    finally:
        conn.logout()


def _inbox_count(stack: StackEndpoints, login: str, password: Secret) -> int:
    conn = _imap(stack, login, password)
    try:
        _typ, data = conn.status("INBOX", "(MESSAGES)")
        raw = data[0].decode() if data and isinstance(data[0], bytes) else ""
        return int(raw.rsplit("MESSAGES", 1)[1].strip(" ()")) if "MESSAGES" in raw else 0
    finally:
        conn.logout()


def _deliver(stack: StackEndpoints, sample: SampleMail) -> None:
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, timeout=IMAP_TIMEOUT) as smtp:
        smtp.send_message(sample.message, to_addrs=sample.recipients)
