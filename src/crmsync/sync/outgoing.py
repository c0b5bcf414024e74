"""Sending a mailbox's outgoing CRM email: SMTP submission, the Sent copy, retries, no doubles.

    report = send_mailbox(engine, mailbox_id, box=SecretBox(settings))

One run (a ``crmsync.send_mailbox`` job; at most one per mailbox at a time) sends the mailbox's
due email oldest first, until none is due, over one SMTP connection and one IMAP connection kept
for the run. Email is taken in batches of up to :data:`BATCH`:

1. **intent**: in one transaction the batch is claimed (``FOR UPDATE SKIP LOCKED``), each email
   checked again (recipients, attachment limit: settings may have changed), moved to ``sending``
   and its attempt counted; committed before anything goes to a server;
2. **submit** each by SMTP from the owner's mailbox (``crmsync.mail.smtp.SmtpSubmission``);
3. **record**: right after the server's "250 OK", ``sent`` with the time, committed (one small
   statement: this commit is what keeps a crash from sending the email again);
4. **Sent copy**: the same bytes appended to the mailbox's Sent folder with ``\\Seen``, on a
   thread of its own while the next email is submitted (``crmsync.sync.sent_folder``), and
   ``sent_copy_at`` recorded for the batch. The incoming sync recognises the copy by
   Message-ID and never makes a second activity.

A run that dies (SIGKILL, power) leaves ``sending`` behind for emails it claimed and did not
record. The next run first looks for each such email's Message-ID in the Sent folder: found
means it was sent (a run of an older version copied before recording), so it is recorded as
sent; not found means it is sent again (its attempt, counted at the intent, stays counted).
The one window this cannot close is between the server's "250 OK" and the commit of step 3
(one UPDATE on an open connection): a crash exactly there sends the email twice. Emails sent
in the last :data:`COPY_RETRY` whose Sent copy is missing (the run died before writing it, or
the APPEND failed) get it at the start of the next run.

Failures: a transient one (4xx, server down, timeout) puts the email back to ``pending_send``
with the next attempt after the core's back-off (``crmsync.core.outgoing``), failing it after
the last attempt; a permanent one (5xx) fails the email with the server's reply and alerts the
owner; a refused login or TLS failure is the mailbox's problem, not the email's: the email
(and the rest of its batch) goes back to waiting, the mailbox's outgoing test status turns to
failure, the owner is alerted and the run stops. One email's failure never stops the others.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import ssl
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, lazyload, selectinload
from sqlalchemy.orm.interfaces import ORMOption

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
from crmsync.crm.records import Record
from crmsync.crm.settings import get_setting
from crmsync.mail.compose import (
    Attachment,
    ComposeError,
    OutgoingMessage,
    compose,
    envelope_recipients,
)
from crmsync.mail.imap.errors import ImapError
from crmsync.mail.smtp import (
    SmtpAuthenticationFailed,
    SmtpError,
    SmtpOutcomeUnknown,
    SmtpSubmission,
    SmtpTlsFailure,
    Submitted,
)
from crmsync.secrets import Secret, SecretBox
from crmsync.sync.outbox import outgoing_recipients
from crmsync.sync.sent_folder import SentCopier, SentFolder, open_sent_folder

log = structlog.get_logger("crmsync.sync.outgoing")

BATCH = 25
"""Emails claimed per transaction: the intent of each on its own cost more than its SMTP
transaction. A crash leaves at most this many ``sending`` to look up in Sent."""
COPY_RETRY = timedelta(hours=1)
"""How long after sending a missing Sent copy is still written by a later run."""
SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the interpreter while another waits (Python's default: 0.005).
A run has three threads (claim and compose, submit, Sent copies); with the default, the
submitting thread woken by the SMTP server's reply often waited the full 5 ms for the
interpreter, which cost a third of the throughput (bench/outgoing_bench.py)."""
MAILBOX_RETRY = timedelta(minutes=5)
"""After a refused login or TLS failure, the mailbox's email waits this long (reference §5)."""
FAULT_ENV = "CRMSYNC_FAULT_KILL_AT"
"""Tests only: the name of a step (``after_submit``, ``after_record``, ``after_sent_copy``) at
which the process kills itself with SIGKILL, to prove what a crash there leaves behind."""


@dataclass
class SendReport:
    mailbox_id: uuid.UUID
    mailbox: str = ""
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    recovered: int = 0
    """Emails a crashed run left ``sending`` that were found in Sent and recorded as sent."""
    copies_restored: int = 0
    """Sent emails whose missing Sent copy this run wrote (or found written)."""
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
    if sys.getswitchinterval() > SWITCH_INTERVAL:
        # for the whole process, once: shorter turns only cost a little more switching
        sys.setswitchinterval(SWITCH_INTERVAL)
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
    smtp = SmtpSubmission(
        account.smtp_url,
        account.username,
        account.password,
        timeout=timeout,
        ssl_context=account.tls,
    )
    with (
        open_sent_folder(
            account.imap_url, account.username, account.password, timeout=timeout
        ) as sent,
        smtp,
    ):
        _recover(engine, mailbox_id, sent, report)
        _restore_copies(engine, mailbox_id, sent, report)
        copier = SentCopier(
            sent,
            lambda ids: _record_copies(engine, ids),
            after_each=lambda: checkpoint("after_sent_copy"),
        )
        upcoming = _Upcoming(engine, mailbox_id, report, limit)
        with copier, _SentRecorder(engine) as recorder, upcoming:
            for claimed in upcoming:
                if not _send_one(engine, smtp, account, claimed, recorder, copier, report):
                    _mailbox_cannot_send(engine, [claimed, *upcoming.close()], report)
                    break
        report.errors.extend(copier.errors)
    if report.sent or report.failed or report.errors:
        log.info(
            "outgoing run finished",
            mailbox_id=str(mailbox_id),
            sent=report.sent,
            failed=report.failed,
            retrying=report.retrying,
            recovered=report.recovered,
            copies_restored=report.copies_restored,
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
    data: bytes
    """The composed message, as submitted and as copied to Sent."""
    recipients: tuple[str, ...]
    attempts: int


_EMAIL = Email.__table__
_RECORD = Record.__table__


def _sending_options() -> list[ORMOption]:
    """What composing an email reads, and no more: the default eager loads of the owner, the
    regarding record and each party's addresses and teams cost ~7 queries per email."""
    return [
        lazyload("*"),
        selectinload(Email.parties).joinedload(ActivityParty.party).lazyload("*"),
        selectinload(Email.attachments).undefer(StoredAttachment.content),
    ]


def _touch(conn: Connection | Session, ids: list[uuid.UUID]) -> None:
    """What the ORM does to a record it updates: a new version and modification time."""
    conn.execute(
        sa.update(_RECORD)
        .where(_RECORD.c.id.in_(ids))
        .values(version=_RECORD.c.version + 1, modified_at=sa.func.now())
    )


# ---------------------------------------------------------------------- crash recovery
def _recover(engine: Engine, mailbox_id: uuid.UUID, sent: SentFolder, report: SendReport) -> None:
    """Emails a crashed run left ``sending``: sent if their copy is in Sent, else due again."""
    with Session(engine) as session, session.begin():
        stuck = session.scalars(
            sa.select(Email)
            .where(
                Email.sending_mailbox_id == mailbox_id,
                Email.email_status == EmailStatus.SENDING,
            )
            .with_for_update(skip_locked=True, of=Email)
            .options(lazyload("*"))
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
                # Not recorded and not in Sent: sent again (see the module docstring).
                email.email_status = EmailStatus.PENDING_SEND
                email.next_attempt_at = None


def _restore_copies(
    engine: Engine, mailbox_id: uuid.UUID, sent: SentFolder, report: SendReport
) -> None:
    """Recently sent emails without their Sent copy get one (composed again from the CRM:
    the same Message-ID and content, new MIME boundaries)."""
    if not sent.usable:
        return
    with Session(engine) as session, session.begin():
        missing = session.scalars(
            sa.select(Email)
            .where(
                Email.sending_mailbox_id == mailbox_id,
                Email.email_status == EmailStatus.SENT,
                Email.sent_copy_at.is_(None),
                Email.sent_at >= utcnow() - COPY_RETRY,
            )
            .with_for_update(skip_locked=True, of=Email)
            .options(*_sending_options())
        ).all()
        for email in missing:
            try:
                if not sent.has(bracketed(email.message_id)):
                    sent.save(compose(_message(email)))
            except (ImapError, ComposeError) as exc:
                report.errors.append(f"the Sent copy of {email.message_id} failed again: {exc}")
                continue
            email.sent_copy_at = utcnow()
            report.copies_restored += 1


# ---------------------------------------------------------------------- the intent
def _due(mailbox_id: uuid.UUID) -> list[sa.ColumnElement[bool]]:
    now = utcnow()
    return [
        Email.sending_mailbox_id == mailbox_id,
        Email.email_status == EmailStatus.PENDING_SEND,
        sa.or_(Email.send_after.is_(None), Email.send_after <= now),
        sa.or_(Email.next_attempt_at.is_(None), Email.next_attempt_at <= now),
    ]


def _claim(engine: Engine, mailbox_id: uuid.UUID, report: SendReport, count: int) -> list[_Claimed]:
    """Up to COUNT due emails, checked and moved to ``sending`` (the intent), committed.
    Emails that fail the checks are failed here and not returned."""
    with Session(engine) as session, session.begin():
        emails = session.scalars(
            sa.select(Email)
            .where(*_due(mailbox_id))
            .order_by(Email.created_at, Email.id)
            .limit(count)
            .with_for_update(skip_locked=True, of=Email)
            .options(*_sending_options())
        ).all()
        if not emails:
            return []
        limits = _Limits(
            allow_unresolved=bool(get_setting(session, "allow_unresolved_recipients")),
            max_attachment_kb=int(get_setting(session, "max_attachment_kb")),
        )
        claimed: list[_Claimed] = []
        for email in emails:
            problem = _problem(email, limits)
            if problem is None:
                try:
                    message = _message(email)
                    data = compose(message)
                except ComposeError as exc:
                    problem = f"the email cannot be composed: {exc}"
            if problem is not None:
                _fail(session, email, problem)
                report.failed += 1
                continue
            recipients = tuple(envelope_recipients(message))
            claimed.append(_Claimed(email.id, data, recipients, email.delivery_attempts + 1))
        if claimed:
            # one statement per table for the batch: the ORM would send two per email
            # (the version counter makes it update row by row)
            ids = [c.email_id for c in claimed]
            _touch(session, ids)
            session.execute(
                sa.update(_EMAIL)
                .where(_EMAIL.c.id.in_(ids))
                .values(
                    email_status=EmailStatus.SENDING,
                    delivery_attempts=_EMAIL.c.delivery_attempts + 1,
                    next_attempt_at=None,
                )
            )
        return claimed


class _Upcoming:
    """The due emails, claimed and composed a batch at a time on a thread of their own, so
    the next ones are ready while the current one waits for the SMTP server (claiming and
    composing cost about as much as the submission). Iterating yields them in order;
    ``close`` stops claiming and returns those claimed but not yet taken."""

    _END = object()

    def __init__(self, engine: Engine, mailbox_id: uuid.UUID, report: SendReport, limit: int):
        self.engine, self.mailbox_id, self.report, self.limit = engine, mailbox_id, report, limit
        self._queue: queue.Queue[object] = queue.Queue(maxsize=BATCH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crmsync-claim", daemon=True)
        self._done = False

    def _run(self) -> None:
        try:
            remaining = self.limit
            while remaining > 0 and not self._stop.is_set():
                batch = _claim(self.engine, self.mailbox_id, self.report, min(BATCH, remaining))
                if not batch:
                    break
                remaining -= len(batch)
                for claimed in batch:
                    self._queue.put(claimed)
        except BaseException as exc:  # handed to the sending thread, which raises it
            self._queue.put(exc)
        finally:
            self._queue.put(self._END)

    def __iter__(self) -> Iterator[_Claimed]:
        while not self._done:
            item = self._queue.get()
            if item is self._END:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            elif isinstance(item, _Claimed):
                yield item

    def close(self) -> list[_Claimed]:
        self._stop.set()
        left = [] if self._done else list(self)
        self._thread.join()
        return left

    def __enter__(self) -> _Upcoming:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # claimed and never taken: left ``sending``, which the next run's recovery turns
        # back to due (they are not in Sent)
        with contextlib.suppress(Exception):
            self.close()


@dataclass(frozen=True)
class _Limits:
    """The org settings a send checks, read once per batch."""

    allow_unresolved: bool
    max_attachment_kb: int


def _problem(email: Email, limits: _Limits) -> str | None:
    problems = recipient_problems(
        outgoing_recipients(email), allow_unresolved=limits.allow_unresolved
    )
    size = attachment_problem([a.size_bytes for a in email.attachments], limits.max_attachment_kb)
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


# ---------------------------------------------------------------------- one email
def _send_one(
    engine: Engine,
    smtp: SmtpSubmission,
    account: _Account,
    claimed: _Claimed,
    recorder: _SentRecorder,
    copier: SentCopier,
    report: SendReport,
) -> bool:
    """Submit, record, hand over for the Sent copy. False: the mailbox cannot send, stop."""
    data, recipients = claimed.data, claimed.recipients
    try:
        submitted = smtp.submit(envelope_from=account.address, recipients=recipients, message=data)
    except SmtpOutcomeUnknown as exc:
        # The whole message went out and the server's answer was lost: it was most likely
        # sent. Sending again risks a double; recorded as sent, with the doubt, and the owner
        # is told (reference: "must not send twice").
        submitted = Submitted(accepted=recipients, refused={})
        doubt = f"the server did not confirm the message ({exc}); it was probably sent"
    except (SmtpAuthenticationFailed, SmtpTlsFailure) as exc:
        report.stopped = str(exc)
        return False
    except SmtpError as exc:
        _after_failure(engine, claimed, exc, report)
        return True
    else:
        doubt = None
    checkpoint("after_submit")
    notes = [doubt] if doubt else []
    if submitted.refused:
        notes.append(
            "not delivered to: "
            + "; ".join(f"{rcpt} ({reply})" for rcpt, reply in submitted.refused.items())
        )
    recorder.record(claimed.email_id, utcnow(), len(data), notes)
    report.sent += 1
    checkpoint("after_record")
    copier.copy(claimed.email_id, data)
    return True


class _SentRecorder:
    """Step 3 on one database connection held for the run: one statement per email, the
    least that can stand between "250 OK" and safety from sending twice."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: Connection | None = None
        sent = (
            sa.update(_EMAIL)
            # only an email still ``sending``: one cancelled or changed meanwhile is kept
            .where(
                _EMAIL.c.id == sa.bindparam("b_id"),
                _EMAIL.c.email_status == EmailStatus.SENDING,
            )
            .values(
                email_status=EmailStatus.SENT,
                sent_at=sa.bindparam("b_at"),
                size_bytes=sa.bindparam("b_size"),
                failure_reason=sa.bindparam("b_reason"),
            )
            .returning(_EMAIL.c.id)
            .cte("sent_email")
        )
        # the version and modification time the ORM would give the record, in the same
        # statement (a data-modifying WITH)
        self.statement = (
            sa.update(_RECORD)
            .where(_RECORD.c.id == sent.c.id)
            .values(version=_RECORD.c.version + 1, modified_at=sa.func.now())
        )

    def record(self, email_id: uuid.UUID, at: datetime, size: int, notes: list[str]) -> None:
        if self.conn is None:
            # autocommit: the statement is its own transaction, one round trip (no BEGIN,
            # no COMMIT)
            self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        params = {"b_id": email_id, "b_at": at, "b_size": size}
        self.conn.execute(self.statement, params | {"b_reason": "; ".join(notes) or None})
        if notes:
            self._alert(email_id, notes)

    def _alert(self, email_id: uuid.UUID, notes: list[str]) -> None:
        with Session(self.engine) as session, session.begin():
            email = session.get_one(Email, email_id, options=[lazyload("*")])
            raise_alert(
                session,
                recipients=[email.owner_id],
                severity=Severity.WARNING,
                code="email.partly_sent",
                message=f"Your email {email.subject!r} was sent, but: {'; '.join(notes)}",
                mailbox_id=email.sending_mailbox_id,
            )

    def __enter__(self) -> _SentRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.conn is not None:
            self.conn.close()


def _record_copies(engine: Engine, ids: list[uuid.UUID]) -> None:
    """Step 4's record, for the copies written since the last one (on the copier's thread)."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(_EMAIL).where(_EMAIL.c.id.in_(ids)).values(sent_copy_at=sa.func.now())
        )


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


def _mailbox_cannot_send(engine: Engine, unsent: list[_Claimed], report: SendReport) -> None:
    """The login or TLS failed (``report.stopped`` says how): UNSENT (the email that met it
    and the rest of its batch) wait, and the mailbox is marked and its owner alerted."""
    reason = report.stopped or "the login failed"
    first = unsent[0].email_id
    with Session(engine) as session, session.begin():
        emails = session.scalars(
            sa.select(Email)
            .where(Email.id.in_([c.email_id for c in unsent]))
            .with_for_update(of=Email)
            .options(lazyload("*"))
        ).all()
        for email in emails:
            email.email_status = EmailStatus.PENDING_SEND
            email.failure_reason = f"waiting: the mailbox cannot send ({reason})"
            # not every second against a server that refuses the login: the mailbox's retry gap
            email.next_attempt_at = utcnow() + MAILBOX_RETRY
            if email.id != first:
                email.delivery_attempts -= 1  # claimed, never tried
        mailbox = session.get(Mailbox, emails[0].sending_mailbox_id) if emails else None
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
    report.retrying += len(unsent)
