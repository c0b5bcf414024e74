"""Sending a mailbox's outgoing CRM email: SMTP submission, the Sent copy, retries, no doubles.

    report = send_mailbox(engine, mailbox_id, box=SecretBox(settings))

One run (a ``crmsync.send_mailbox`` job; at most one per mailbox at a time) sends the mailbox's
due email one by one, oldest first, until none is due. For each email:

1. **intent**: in one transaction the email is claimed (``FOR UPDATE SKIP LOCKED``), checked
   again (recipients, attachment limit: settings may have changed), moved to ``sending`` and its
   attempt counted; committed before anything goes to a server;
2. **submit** by SMTP from the owner's mailbox (``crmsync.mail.smtp.submit_message``);
3. **Sent copy**: the same bytes appended to the mailbox's Sent folder with ``\\Seen``, unless a
   message with that Message-ID is already there. The incoming sync recognises it by
   Message-ID and never makes a second activity;
4. **record**: ``sent``, with the time, committed.

A run that dies (SIGKILL, power) leaves ``sending`` behind. The next run first looks for each
such email's Message-ID in the Sent folder: found means step 2 happened, so it is recorded as
sent without sending again; not found means it never reached step 3 and it is sent again. The
one window this cannot close is between the server's "250 OK" and the Sent copy (one IMAP
APPEND on an already open connection): a crash exactly there sends the email twice.
Without an IMAP server (an outgoing-only mailbox) step 3 is skipped and the window is the
commit of step 4.

Failures: a transient one (4xx, server down, timeout) puts the email back to ``pending_send``
with the next attempt after the core's back-off (``crmsync.core.outgoing``), failing it after
the last attempt; a permanent one (5xx) fails the email with the server's reply and alerts the
owner; a refused login or TLS failure is the mailbox's problem, not the email's: the email goes
back to waiting, the mailbox's outgoing test status turns to failure, the owner is alerted and
the run stops. One email's failure never stops the others.
"""

from __future__ import annotations

import os
import signal
import ssl
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, lazyload, selectinload

from crmsync.core.outgoing import (
    attachment_problem,
    next_attempt,
    recipient_problems,
)
from crmsync.crm.activities import ActivityParty, Email, EmailStatus
from crmsync.crm.activities import Attachment as StoredAttachment
from crmsync.crm.alerts import Severity, raise_alert
from crmsync.crm.base import PartyRole, utcnow
from crmsync.crm.mailboxes import Mailbox, TestStatus
from crmsync.crm.settings import get_setting
from crmsync.errors import CrmsyncError
from crmsync.mail.compose import (
    Attachment,
    ComposeError,
    OutgoingMessage,
    compose,
    envelope_recipients,
)
from crmsync.mail.imap import ImapSession
from crmsync.mail.imap.errors import ImapError
from crmsync.mail.smtp import (
    SmtpAuthenticationFailed,
    SmtpError,
    SmtpOutcomeUnknown,
    SmtpTlsFailure,
    Submitted,
    submit_message,
)
from crmsync.secrets import Secret, SecretBox
from crmsync.sync.outbox import outgoing_recipients

log = structlog.get_logger("crmsync.sync.outgoing")

DEFAULT_SENT_FOLDER = "Sent"
"""Created for a mailbox that has no folder of sent mail (none marked ``\\Sent``, none with a
usual name), as a mail client would."""
MAILBOX_RETRY = timedelta(minutes=5)
"""After a refused login or TLS failure, the mailbox's email waits this long (reference §5)."""
FAULT_ENV = "CRMSYNC_FAULT_KILL_AT"
"""Tests only: the name of a step (``after_submit``, ``after_sent_copy``) at which the process
kills itself with SIGKILL, to prove what a crash there leaves behind."""


@dataclass
class SendReport:
    mailbox_id: uuid.UUID
    mailbox: str = ""
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    recovered: int = 0
    """Emails a crashed run left ``sending`` that were found in Sent and recorded as sent."""
    errors: list[str] = field(default_factory=list)
    stopped: str | None = None
    """Why the run stopped early (the mailbox cannot send), if it did."""


def bracketed(message_id: str | None) -> str:
    """A stored Message-ID (kept without brackets) as it goes in a header."""
    return f"<{message_id}>" if message_id else ""


def checkpoint(step: str) -> None:
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def send_mailbox(
    engine: Engine,
    mailbox_id: uuid.UUID,
    *,
    box: SecretBox,
    timeout: float = 60.0,
    limit: int = 500,
) -> SendReport:
    """Send what is due from this mailbox (see the module docstring). Never raises for a
    mailbox or email problem; the report says what happened."""
    report = SendReport(mailbox_id=mailbox_id)
    with Session(engine) as session:
        mailbox = session.get(Mailbox, mailbox_id)
        if mailbox is None or mailbox.smtp_url is None or mailbox.credential is None:
            report.stopped = "the mailbox has no outgoing server or no stored password"
            return report
        report.mailbox = mailbox.email_address
        password = box.decrypt(mailbox.credential, bound_to=f"mailbox:{mailbox.id}")
        account = _Account(
            smtp_url=mailbox.smtp_url,
            imap_url=mailbox.imap_url,
            username=mailbox.username or mailbox.email_address,
            password=password,
            address=mailbox.email_address,
        )
    with _sent_folder(account, timeout) as sent:
        _recover(engine, mailbox_id, sent, report)
        for _ in range(limit):
            claimed = _claim(engine, mailbox_id, report)
            if claimed is None:
                break
            if not _send_one(engine, account, claimed, sent, timeout, report):
                break
    if report.sent or report.failed or report.errors:
        log.info(
            "outgoing run finished",
            mailbox_id=str(mailbox_id),
            sent=report.sent,
            failed=report.failed,
            retrying=report.retrying,
            recovered=report.recovered,
            stopped=report.stopped,
        )
    return report


@dataclass(frozen=True)
class _Account:
    smtp_url: str
    imap_url: str | None
    username: str
    password: Secret
    address: str
    tls: ssl.SSLContext = field(default_factory=ssl.create_default_context, compare=False)
    """One per run: creating it loads the CA store (~40 ms), too much for every email."""


@dataclass
class _Claimed:
    email_id: uuid.UUID
    message: OutgoingMessage
    attempts: int


# ---------------------------------------------------------------------- the Sent folder
class _SentFolder:
    """The mailbox's Sent folder over one IMAP connection, opened before the first submission
    so the copy right after a "250 OK" costs one APPEND."""

    def __init__(self, imap: ImapSession | None, folder: str | None, problem: str | None):
        self.imap, self.folder, self.problem = imap, folder, problem

    def has(self, message_id: str) -> bool | None:
        """Whether a message with this Message-ID is in Sent; None: cannot tell."""
        if self.imap is None or self.folder is None:
            return None
        return bool(self.imap.find_by_message_id(self.folder, message_id))

    def save(self, message: bytes, message_id: str) -> bool:
        if self.imap is None or self.folder is None:
            return False
        if not self.imap.find_by_message_id(self.folder, message_id):
            self.imap.append_message(self.folder, message, flags=("\\Seen",))
        return True


@contextmanager
def _sent_folder(account: _Account, timeout: float) -> Iterator[_SentFolder]:
    if not account.imap_url:
        yield _SentFolder(None, None, "the mailbox has no IMAP server: no Sent copy is kept")
        return
    try:
        imap = ImapSession(account.imap_url, account.username, account.password, timeout=timeout)
        imap.__enter__()
    except (ImapError, CrmsyncError) as exc:
        yield _SentFolder(None, None, f"the Sent folder cannot be reached: {exc}")
        return
    try:
        folder = imap.find_sent_folder()
        if folder is None:
            folder = DEFAULT_SENT_FOLDER
            imap.create_folder(folder)
        yield _SentFolder(imap, folder, None)
    finally:
        try:
            imap.__exit__(None, None, None)
        except (ImapError, OSError):
            log.info("closing the IMAP connection for Sent copies failed", exc_info=True)


# ---------------------------------------------------------------------- crash recovery
def _recover(engine: Engine, mailbox_id: uuid.UUID, sent: _SentFolder, report: SendReport) -> None:
    """Emails a crashed run left ``sending``: sent if their copy is in Sent, else due again."""
    with Session(engine) as session, session.begin():
        stuck = session.scalars(
            sa.select(Email)
            .where(
                Email.sending_mailbox_id == mailbox_id,
                Email.email_status == EmailStatus.SENDING,
            )
            .with_for_update(skip_locked=True, of=Email)
        ).all()
        for email in stuck:
            try:
                found = sent.has(bracketed(email.message_id))
            except ImapError as exc:
                report.errors.append(f"cannot check Sent for {email.message_id}: {exc}")
                continue
            if found:
                email.email_status = EmailStatus.SENT
                email.sent_at = email.sent_at or utcnow()
                email.sent_copy_at = email.sent_copy_at or utcnow()
                report.recovered += 1
            else:
                # Not in Sent: it never got past the submission (see the module docstring).
                email.email_status = EmailStatus.PENDING_SEND
                email.next_attempt_at = None


# ---------------------------------------------------------------------- one email
def _due(mailbox_id: uuid.UUID) -> list[sa.ColumnElement[bool]]:
    now = utcnow()
    return [
        Email.sending_mailbox_id == mailbox_id,
        Email.email_status == EmailStatus.PENDING_SEND,
        sa.or_(Email.send_after.is_(None), Email.send_after <= now),
        sa.or_(Email.next_attempt_at.is_(None), Email.next_attempt_at <= now),
    ]


def _claim(engine: Engine, mailbox_id: uuid.UUID, report: SendReport) -> _Claimed | None:
    """The next due email, checked and moved to ``sending`` (the intent), committed."""
    while True:
        with Session(engine) as session, session.begin():
            email = session.scalars(
                sa.select(Email)
                .where(*_due(mailbox_id))
                .order_by(Email.created_at, Email.id)
                .limit(1)
                .with_for_update(skip_locked=True, of=Email)
                .options(
                    # what the send reads, and no more (the default eager loads of the
                    # owner, the regarding record and each party's addresses and teams
                    # cost ~7 queries per email)
                    lazyload("*"),
                    selectinload(Email.parties).joinedload(ActivityParty.party).lazyload("*"),
                    selectinload(Email.attachments).undefer(StoredAttachment.content),
                )
            ).first()
            if email is None:
                return None
            problem = _problem(session, email)
            message = None
            if problem is None:
                try:
                    message = _message(email)
                except ComposeError as exc:
                    problem = f"the email cannot be composed: {exc}"
            if problem is not None or message is None:
                _fail(session, email, problem or "the email cannot be composed")
                report.failed += 1
                continue
            email.email_status = EmailStatus.SENDING
            email.delivery_attempts += 1
            email.next_attempt_at = None
            return _Claimed(email.id, message, email.delivery_attempts)


def _problem(session: Session, email: Email) -> str | None:
    problems = recipient_problems(
        outgoing_recipients(email),
        allow_unresolved=bool(get_setting(session, "allow_unresolved_recipients")),
    )
    size = attachment_problem(
        [a.size_bytes for a in email.attachments], int(get_setting(session, "max_attachment_kb"))
    )
    if size:
        problems.append(size)
    return "; ".join(problems) or None


def _message(email: Email) -> OutgoingMessage:
    def addresses(role: PartyRole) -> tuple[str, ...]:
        return tuple(p.address for p in email.parties_in(role) if p.address)

    sender = next(iter(email.parties_in(PartyRole.FROM)), None)
    return OutgoingMessage(
        from_address=email.sender or "",
        from_name=sender.party.name if sender is not None and sender.party is not None else None,
        to=addresses(PartyRole.TO),
        cc=addresses(PartyRole.CC),
        bcc=addresses(PartyRole.BCC),
        subject=email.subject,
        message_id=bracketed(email.message_id),
        text_body=email.description,
        html_body=email.body_html,
        attachments=tuple(
            Attachment(a.filename, a.content_type, a.content or b"") for a in email.attachments
        ),
        in_reply_to=email.in_reply_to,
        references=tuple((email.references or "").split()),
        date=email.created_at or utcnow(),
    )


def _send_one(
    engine: Engine,
    account: _Account,
    claimed: _Claimed,
    sent: _SentFolder,
    timeout: float,
    report: SendReport,
) -> bool:
    """Submit, copy to Sent, record. False: the mailbox cannot send, stop the run."""
    data = compose(claimed.message)
    recipients = envelope_recipients(claimed.message)
    try:
        submitted = submit_message(
            account.smtp_url,
            account.username,
            account.password,
            envelope_from=account.address,
            recipients=recipients,
            message=data,
            timeout=timeout,
            ssl_context=account.tls,
        )
    except SmtpOutcomeUnknown as exc:
        # The whole message went out and the server's answer was lost: it was most likely
        # sent. Sending again risks a double; recorded as sent, with the doubt, and the owner
        # is told (reference: "must not send twice").
        submitted = Submitted(accepted=recipients, refused={})
        doubt = f"the server did not confirm the message ({exc}); it was probably sent"
    except (SmtpAuthenticationFailed, SmtpTlsFailure) as exc:
        _mailbox_cannot_send(engine, claimed, str(exc), report)
        return False
    except SmtpError as exc:
        _after_failure(engine, claimed, exc, report)
        return True
    else:
        doubt = None
    checkpoint("after_submit")
    copied = False
    try:
        copied = sent.save(data, claimed.message.message_id)
    except ImapError as exc:
        report.errors.append(f"sent, but the Sent copy failed: {exc}")
    checkpoint("after_sent_copy")
    with Session(engine) as session, session.begin():
        # only columns change here: no eager loading of parties and their records
        email = session.get_one(
            Email, claimed.email_id, with_for_update={"of": Email}, options=[lazyload("*")]
        )
        email.email_status = EmailStatus.SENT
        email.sent_at = utcnow()
        email.size_bytes = len(data)
        email.sent_copy_at = utcnow() if copied else None
        notes = [doubt] if doubt else []
        if submitted.refused:
            notes.append(
                "not delivered to: "
                + "; ".join(f"{rcpt} ({reply})" for rcpt, reply in submitted.refused.items())
            )
        email.failure_reason = "; ".join(notes) or None
        if notes:
            raise_alert(
                session,
                recipients=[email.owner_id],
                severity=Severity.WARNING,
                code="email.partly_sent",
                message=f"Your email {email.subject!r} was sent, but: {'; '.join(notes)}",
                mailbox_id=email.sending_mailbox_id,
            )
    report.sent += 1
    return True


def _after_failure(engine: Engine, claimed: _Claimed, exc: SmtpError, report: SendReport) -> None:
    with Session(engine) as session, session.begin():
        email = session.get_one(Email, claimed.email_id, with_for_update={"of": Email})
        retry = next_attempt(claimed.attempts, utcnow()) if exc.transient else None
        if retry is not None:
            email.email_status = EmailStatus.PENDING_SEND
            email.next_attempt_at = retry
            email.failure_reason = f"attempt {claimed.attempts} failed, retrying: {exc}"
            report.retrying += 1
            return
        why = str(exc) if not exc.transient else f"gave up after {claimed.attempts} attempts: {exc}"
        _fail(session, email, why)
        report.failed += 1


def _fail(session: Session, email: Email, reason: str) -> None:
    email.email_status = EmailStatus.FAILED
    email.failure_reason = reason
    email.next_attempt_at = None
    raise_alert(
        session,
        recipients=[email.owner_id],
        severity=Severity.ERROR,
        code="email.failed",
        message=f"Your email {email.subject!r} could not be sent: {reason}",
        mailbox_id=email.sending_mailbox_id,
    )


def _mailbox_cannot_send(
    engine: Engine, claimed: _Claimed, reason: str, report: SendReport
) -> None:
    with Session(engine) as session, session.begin():
        email = session.get_one(Email, claimed.email_id, with_for_update={"of": Email})
        email.email_status = EmailStatus.PENDING_SEND
        email.failure_reason = f"waiting: the mailbox cannot send ({reason})"
        # not every second against a server that refuses the login: the mailbox's retry gap
        email.next_attempt_at = utcnow() + MAILBOX_RETRY
        mailbox = session.get(Mailbox, email.sending_mailbox_id)
        if mailbox is not None:
            mailbox.outgoing_status = TestStatus.FAILURE
            raise_alert(
                session,
                recipients=[mailbox.owner_id],
                severity=Severity.ERROR,
                code="mailbox.outgoing_failed",
                message=f"Mailbox {mailbox.email_address} cannot send email: {reason}. Fix it, "
                f"then run: crmsync mailbox test {mailbox.email_address}",
                mailbox_id=mailbox.id,
            )
    report.stopped = reason
    report.retrying += 1
