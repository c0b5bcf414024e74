"""A CRM and real mailboxes for tests of the incoming sync (Dovecot + PostgreSQL).

world = SyncWorld(engine, stack, tmp_path)
anna = world.user("anna", incoming=IncomingEmailFilter.ALL)      # CRM user + Dovecot mailbox
world.contact("Carl Customer", "carl@customer.test")
world.append(anna, make_mail(...))                              # IMAP APPEND into INBOX
report = world.sync(anna)
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.config import Settings
from crmsync.crm.activities import Email
from crmsync.crm.base import Depth, IncomingEmailFilter
from crmsync.crm.decisions import MessageDecision
from crmsync.crm.mailboxes import ApprovalStatus, Mailbox, MailboxState
from crmsync.crm.records import BusinessUnit, Contact, Lead, User
from crmsync.crm.roles import RolePrivilege, SecurityRole, UserRole
from crmsync.secrets import Secret, SecretBox, new_key
from crmsync.sync.incoming import SyncReport, sync_mailbox
from tests.clirun import run
from tests.stackfix import MailUser, Stack

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass
class Person:
    """A CRM user with a mailbox on the stack."""

    user_id: uuid.UUID
    mailbox_id: uuid.UUID
    mail: MailUser

    @property
    def address(self) -> str:
        return self.mail.address


class SyncWorld:
    def __init__(self, engine: Engine, stack: Stack, tmp_path: Path) -> None:
        self.engine = engine
        self.stack = stack
        self.key = new_key()
        self.box = SecretBox(
            Settings(
                home=tmp_path,
                database_url=None,
                secret_keys=(self.key,),
                log_level="warning",
                log_format="console",
            )
        )
        with Session(engine) as s, s.begin():
            unit = BusinessUnit(name="Org")
            s.add(unit)
            s.flush()
            self.unit_id = unit.id

    # ------------------------------------------------------------------ CRM
    def user(
        self,
        name: str,
        *,
        incoming: IncomingEmailFilter = IncomingEmailFilter.ALL,
        privacy_level: str | None = None,
        approved: bool = True,
        received_after: datetime | None = LONG_AGO,
    ) -> Person:
        mail = self.stack.new_user(name)
        with Session(self.engine) as s, s.begin():
            user = User(
                name=name.title(),
                username=mail.username,
                business_unit_id=self.unit_id,
                incoming_email_filter=incoming,
            )
            user.set_email(mail.address)
            s.add(user)
            s.flush()
            mailbox = Mailbox(
                id=uuid.uuid4(),
                owner_id=user.id,
                name=name,
                email_address=mail.address,
                imap_url=f"imap://{self.stack.host}:{self.stack.imap_port}",
                username=mail.username,
                approval_status=ApprovalStatus.APPROVED if approved else ApprovalStatus.PENDING,
                state=MailboxState.ENABLED,
                enabled_at=datetime.now(UTC),
                process_email_received_after=received_after,
                privacy_level=privacy_level,
            )
            mailbox.credential = self.box.encrypt(
                Secret(mail.password), bound_to=f"mailbox:{mailbox.id}"
            )
            s.add(mailbox)
            s.flush()
            return Person(user.id, mailbox.id, mail)

    def contact(self, name: str, address: str, *, owner: Person | None = None) -> uuid.UUID:
        first, _, last = name.rpartition(" ")
        with Session(self.engine) as s, s.begin():
            contact = Contact(
                name=name,
                first_name=first or None,
                last_name=last,
                business_unit_id=self.unit_id,
                owner_id=owner.user_id if owner else None,
            )
            contact.set_email(address)
            s.add(contact)
            s.flush()
            return contact.id

    def lead(self, name: str, address: str) -> uuid.UUID:
        with Session(self.engine) as s, s.begin():
            lead = Lead(name=name, last_name=name, business_unit_id=self.unit_id)
            lead.set_email(address)
            s.add(lead)
            s.flush()
            return lead.id

    # ------------------------------------------------------------------ mail
    def append(
        self,
        person: Person,
        raw: bytes | EmailMessage,
        *,
        folder: str = "INBOX",
        when: datetime | None = None,
    ) -> int:
        """APPEND a message (INTERNALDATE = WHEN, default now); returns its UID."""
        data = raw.as_bytes() if isinstance(raw, EmailMessage) else raw
        with self.stack.imap(person.mail) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            response = client.append(folder, data, msg_time=when or datetime.now(UTC))
        text = response.decode() if isinstance(response, bytes) else str(response)
        # "[APPENDUID <uidvalidity> <uid>] Append completed."
        return int(text.split("]")[0].split()[-1])

    def sync(self, person: Person, **kwargs: object) -> SyncReport:
        return sync_mailbox(self.engine, person.mailbox_id, box=self.box, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ reading back
    def emails(self) -> list[Email]:
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(sa.select(Email).order_by(Email.received_at, Email.id)))

    def decisions(self, person: Person | None = None) -> list[MessageDecision]:
        with Session(self.engine) as s:
            query = sa.select(MessageDecision).order_by(MessageDecision.uid)
            if person is not None:
                query = query.where(MessageDecision.mailbox_id == person.mailbox_id)
            return list(s.scalars(query))


def make_mail(
    *,
    sender: str,
    to: str | list[str],
    subject: str = "Hello",
    body: str = "Hi there.",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    cc: str | None = None,
    headers: dict[str, str] | None = None,
    html: str | None = None,
    attachment: tuple[str, bytes] | None = None,
    date: datetime | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to if isinstance(to, str) else ", ".join(to)
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = message_id or f"<{uuid.uuid4().hex}@test.example>"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if html:
        msg.add_alternative(html, subtype="html")
    if attachment:
        name, content = attachment
        msg.add_attachment(content, maintype="application", subtype="octet-stream", filename=name)
    return msg


class CliWorld(SyncWorld):
    """A SyncWorld the CLI shares (same database, same secret key), which keeps every command's
    output and every mailbox password so a test can prove no password was ever shown."""

    def __init__(self, engine: Engine, stack: Stack, tmp_path: Path, env: dict[str, str]) -> None:
        super().__init__(engine, stack, tmp_path)
        self.env = env | {"CRMSYNC_SECRET_KEY": self.key}
        self.outputs: list[subprocess.CompletedProcess] = []
        self.people: list[Person] = []

    def user(self, name: str, **kwargs: Any) -> Person:
        person = super().user(name, **kwargs)
        self.people.append(person)
        return person

    def grant(self, person: Person, privilege: str, depth: Depth) -> None:
        """Give PERSON a new role holding PRIVILEGE at DEPTH."""
        with Session(self.engine) as s, s.begin():
            role = SecurityRole(name=f"{privilege}-{uuid.uuid4().hex[:6]}")
            role.privileges = [RolePrivilege(privilege=privilege, depth=depth)]
            s.add(role)
            s.flush()
            s.add(UserRole(user_id=person.user_id, role_id=role.id))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        res = run(self.env, *args)
        self.outputs.append(res)
        return res

    def assert_no_password_shown(self, *also: str, stored: Sequence[str] = ()) -> None:
        """No mailbox password (nor ALSO, e.g. a wrong one tried) in any output or STORED text."""
        secrets = [p.mail.password for p in self.people] + list(also)
        for secret in secrets:
            for res in self.outputs:
                assert secret not in res.stdout + res.stderr, res.args
            for text in stored:
                assert secret not in text
