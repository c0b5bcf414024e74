"""The incoming-email sync of a mailbox: new mail in its Inbox (and Sent items) to CRM email.

    report = sync_mailbox(engine, mailbox_id, box=SecretBox(settings))

One run, per folder: the changes since the stored cursor (``mail.imap.delta``: QRESYNC,
CONDSTORE or a UID diff; the first run lists mail received since the mailbox's "process email
received after"), then the new messages' headers in batches, each batch decided, stored and
committed in one transaction (``sync.batch``), then the folder's new cursor, then the tracked
keyword on the server's copies. At most one run per mailbox at a time: a PostgreSQL advisory
lock held for the run (a second run returns at once, reporting the mailbox busy).

Failures are contained: a message that cannot be fetched, parsed or stored is quarantined (and
retried later) while its batch goes on; a mailbox whose server fails records the error on the
mailbox and the next mailbox goes on (``sync_mailboxes``).
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, defaultload

from crmsync.core.parties import AutoCreate
from crmsync.core.privacy import effective_level, fetch_plan
from crmsync.core.promote import CrmOwner, FolderKind, IncomingFilter, OwnerKind
from crmsync.core.schedule import RunOutcome
from crmsync.crm import audit
from crmsync.crm.base import RecordState, utcnow
from crmsync.crm.decisions import MessageDecision, Outcome, ServiceReason
from crmsync.crm.mailboxes import (
    ApprovalStatus,
    Mailbox,
    MailboxFolder,
    MailboxState,
    SyncMethod,
)
from crmsync.crm.mailboxes import FolderKind as StoredFolderKind
from crmsync.crm.records import Queue, Record, User
from crmsync.crm.security import RowRef, can, load_principal
from crmsync.crm.settings import get_setting, incoming_settings
from crmsync.errors import CrmsyncError
from crmsync.mail.imap import ImapSession
from crmsync.mail.imap.delta import Cursor, Mode, changes_since, choose_mode
from crmsync.mail.imap.errors import ImapError
from crmsync.mail.imap.fetch import HeaderFetch
from crmsync.scheduler.outcome import apply_outcome
from crmsync.secrets import SecretBox
from crmsync.sync.batch import (
    Counts,
    FolderContext,
    MailboxContext,
    Parser,
    describe_error,
    process_batch,
    quarantine,
)
from crmsync.sync.parsing import ParserPool

log = structlog.get_logger("crmsync.sync.incoming")

TRACKED_KEYWORD = "$CRMTracked"
"""Set on a tracked message's server copy, so mail clients can show it (reference §5)."""
MAILBOX_LOCK_CLASS = 1768
MARK_CHUNK = 2000
DEFAULT_BATCH_SIZE = 500
"""Messages per transaction. Each batch pays a fixed cost per table it COPYs into (~15 ms on
the test machine): 200 a batch spent 1.5 s of 5.3 s on 3,000 messages storing rows, 500 spent
0.7 s of 4.2 s. Bigger batches gain little more (1,000: 0.6 s), redo more after a crash and
hold their dedupe locks longer."""


class SyncProgress(Protocol):
    def folder_started(self, mailbox: str, folder: str, total: int) -> None: ...

    def advanced(self, count: int) -> None: ...


@dataclass(kw_only=True)
class SyncReport(Counts):
    """One run of one mailbox: the counts of every batch, and how the run went."""

    mailbox_id: uuid.UUID
    mailbox: str = ""
    folders: list[str] = field(default_factory=list)
    modes: dict[str, str] = field(default_factory=dict)
    busy: bool = False
    """Another run holds this mailbox; nothing was done."""
    error: str | None = None
    error_code: str | None = None
    transient: bool | None = None
    uidvalidity_changed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    next_sync_at: datetime | None = None
    schedule: str | None = None
    """Why the next run is when it is (or why the mailbox was disabled)."""
    disabled: bool = False
    """This run's error disabled the mailbox (permanent, or the 10th transient in a row)."""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.busy


# ---------------------------------------------------------------------- which mailboxes
def syncable_mailboxes(session: Session) -> list[Mailbox]:
    """Enabled mailboxes with incoming server sync (approved, when the org requires it)."""
    query = sa.select(Mailbox).where(
        Mailbox.state == MailboxState.ENABLED,
        Mailbox.incoming_method == SyncMethod.SERVER_SYNC,
        Mailbox.imap_url.is_not(None),
    )
    if get_setting(session, "process_email_only_for_approved_mailboxes"):
        query = query.where(Mailbox.approval_status == ApprovalStatus.APPROVED)
    return list(session.scalars(query.order_by(Mailbox.email_address)))


def sync_mailboxes(
    engine: Engine,
    *,
    box: SecretBox,
    mailbox_ids: Sequence[uuid.UUID] | None = None,
    progress: SyncProgress | None = None,
) -> list[SyncReport]:
    """Sync each mailbox (default: every syncable one); one failing never stops the others."""
    if mailbox_ids is None:
        with Session(engine) as session:
            mailbox_ids = [m.id for m in syncable_mailboxes(session)]
    return [sync_mailbox(engine, mid, box=box, progress=progress) for mid in mailbox_ids]


# ---------------------------------------------------------------------- one mailbox
def sync_mailbox(
    engine: Engine,
    mailbox_id: uuid.UUID,
    *,
    box: SecretBox,
    progress: SyncProgress | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timeout: float = 60.0,
    mode: Mode | None = None,
) -> SyncReport:
    """One incoming sync of one mailbox. Never raises for a mailbox or message problem: the
    report (and the mailbox's last_error fields) say what went wrong.

    MODE caps the IMAP change detection (``qresync`` > ``condstore`` > ``uid_diff``; default:
    the best the server offers), for servers whose extensions are known to be broken."""
    report = SyncReport(mailbox_id=mailbox_id)
    started = time.monotonic()
    with _mailbox_lock(engine, mailbox_id) as acquired:
        if not acquired:
            report.busy = True
            return report
        try:
            _run(engine, mailbox_id, box, report, progress, batch_size, timeout, mode)
        except (ImapError, CrmsyncError) as exc:
            report.error = str(exc)
            report.error_code = type(exc).__name__
            report.transient = getattr(exc, "transient", None)
        except Exception as exc:  # a bug: recorded on the mailbox, the next mailbox goes on
            log.exception("incoming sync failed", mailbox_id=str(mailbox_id))
            report.error = f"internal error ({type(exc).__name__}): {exc}"
            report.error_code = "InternalError"
            report.transient = True
        report.seconds = time.monotonic() - started
        _finish(engine, report)
    return report


@contextmanager
def _mailbox_lock(engine: Engine, mailbox_id: uuid.UUID) -> Iterator[bool]:
    """A session-level advisory lock on a connection of its own, held for the whole run."""
    key = zlib.crc32(mailbox_id.bytes) - 2**31  # a signed 32-bit key
    conn: Connection = engine.connect()
    try:
        got = bool(
            conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:ns, :key)"),
                {"ns": MAILBOX_LOCK_CLASS, "key": key},
            ).scalar()
        )
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(
                    sa.text("SELECT pg_advisory_unlock(:ns, :key)"),
                    {"ns": MAILBOX_LOCK_CLASS, "key": key},
                )
                conn.commit()
    except Exception:
        conn.invalidate()  # never hand a connection that may still hold the lock to the pool
        raise
    finally:
        conn.close()


# The owner comes with the mailbox (one join), but not the owner's addresses and teams, which
# the run does not read: their eager loads were two more queries at the start and the end of
# every run, a quarter of a no-change run's CPU in the worker (issue 5).
_MAILBOX_ONLY = (
    defaultload(Mailbox.owner).lazyload("*"),
    defaultload(Mailbox.owner.of_type(User)).lazyload(User.teams),
)


def _run(
    engine: Engine,
    mailbox_id: uuid.UUID,
    box: SecretBox,
    report: SyncReport,
    progress: SyncProgress | None,
    batch_size: int,
    timeout: float,
    mode: Mode | None,
) -> None:
    with Session(engine) as session, session.begin():
        mailbox = session.get(Mailbox, mailbox_id, options=_MAILBOX_ONLY)
        if mailbox is None:
            raise CrmsyncError(f"there is no mailbox with id {mailbox_id}")
        report.mailbox = mailbox.email_address
        if not mailbox.imap_url or mailbox.credential is None:
            raise CrmsyncError(
                f"mailbox {mailbox.email_address} has no incoming server or no stored password; "
                "set them with `crmsync mailbox add --update`"
            )
        ctx = _context(session, mailbox)
        password = box.decrypt(mailbox.credential, bound_to=f"mailbox:{mailbox.id}")
        url, username = mailbox.imap_url, mailbox.username or mailbox.email_address
        mailbox.last_sync_started_at = utcnow()
        mailbox.sync_requested_at = None

    with ImapSession(url, username, password, timeout=timeout) as imap, ParserPool() as parse:
        folders: list[tuple[str, FolderKind]] = [("INBOX", FolderKind.INBOX)]
        if ctx.settings.tracking.track_sent_items:
            sent = imap.find_sent_folder()
            if sent is not None:
                folders.append((sent, FolderKind.SENT))
        for name, kind in folders:
            report.folders.append(name)
            _sync_folder(engine, imap, ctx, name, kind, report, progress, batch_size, mode, parse)


def _context(session: Session, mailbox: Mailbox) -> MailboxContext:
    settings = incoming_settings(session)
    owner_record = session.get(Record, mailbox.owner_id)
    if owner_record is None or owner_record.state is not RecordState.ACTIVE:
        raise CrmsyncError(
            f"the owner of mailbox {mailbox.email_address} is inactive or gone; nothing is "
            "tracked for it"
        )
    if isinstance(owner_record, User):
        if owner_record.is_disabled:
            raise CrmsyncError(
                f"the owner of mailbox {mailbox.email_address}, {owner_record.name}, is a "
                "disabled user; nothing is tracked for them"
            )
        kind, incoming = OwnerKind.USER, owner_record.incoming_email_filter
        email_owner = owner_record.id
    elif isinstance(owner_record, Queue):
        kind, incoming = OwnerKind.QUEUE, owner_record.incoming_email_filter
        email_owner = owner_record.owner_id
    else:
        raise CrmsyncError(
            f"mailbox {mailbox.email_address} is owned by a {owner_record.record_type}"
        )
    received_after = mailbox.process_email_received_after
    if received_after is None:
        # stored, so every later run keeps the same bound
        received_after = mailbox.enabled_at or utcnow()
        mailbox.process_email_received_after = received_after
    may_create: set[str] = set()
    auto = owner_record.auto_create_records if isinstance(owner_record, User) else None
    if isinstance(owner_record, User) and auto is not None and auto is not AutoCreate.NONE:
        principal = load_principal(session, owner_record.id)
        for record_type in ("contact", "lead"):
            row = RowRef(None, record_type, owner_record.id, owner_record.business_unit_id)
            if can(principal, "create", row, session=session).allowed:
                may_create.add(record_type)
    level = effective_level(settings.privacy_level, mailbox.privacy_level)
    return MailboxContext(
        mailbox_id=mailbox.id,
        owner=CrmOwner(
            id=owner_record.id,
            kind=kind,
            filter=IncomingFilter(incoming),
            address=mailbox.email_address,
            name=owner_record.name,
        ),
        email_owner_id=email_owner,
        business_unit_id=owner_record.business_unit_id,
        plan=fetch_plan(level),
        settings=settings,
        received_after=received_after,
        auto_create=auto if auto is not None else AutoCreate.NONE,
        may_create=frozenset(may_create),
    )


# ---------------------------------------------------------------------- one folder
def _sync_folder(
    engine: Engine,
    imap: ImapSession,
    ctx: MailboxContext,
    name: str,
    kind: FolderKind,
    report: SyncReport,
    progress: SyncProgress | None,
    batch_size: int,
    preferred: Mode | None,
    parse: Parser,
) -> None:
    with Session(engine) as session, session.begin():
        row = _folder_row(session, ctx.mailbox_id, name)
        folder_id = row.id
        stored = (
            Cursor(row.uidvalidity, row.uidnext, row.highestmodseq)
            if row.uidvalidity is not None and row.uidnext is not None
            else None
        )
    mode = choose_mode(imap, preferred)
    remap = False
    if stored is None:
        # First run: only mail received since the bound, found by the server (SINCE is a
        # date, so the day before is asked too and the batch compares exact times).
        if mode == "qresync" and not imap.qresync_enabled:
            imap.enable_qresync()
        state = imap.select(name)
        since = (ctx.received_after - timedelta(days=1)).date()
        uids = imap.search_received_since(since) if state.exists else []
        cursor = Cursor.from_state(state, with_modseq=mode != "uid_diff")
    else:
        delta = changes_since(imap, name, stored, mode=mode)
        mode = delta.mode
        uids, cursor, remap = list(delta.new_uids), delta.cursor, delta.uidvalidity_changed
        if remap:
            report.uidvalidity_changed.append(name)
            _record_uidvalidity_change(engine, ctx, name, stored, cursor)
    report.modes[name] = mode
    folder = FolderContext(name=name, kind=kind, uidvalidity=cursor.uidvalidity, remap=remap)

    uids = _undecided(engine, ctx, folder, uids)
    if uids and (imap.selected is None or imap.selected.folder != name):
        imap.select(name)
    if progress is not None:
        progress.folder_started(ctx.owner.address or "", name, len(uids))
    for fetches in imap.iter_header_batches(uids, ctx.plan, batch_size=batch_size):
        outcome = _run_batch(engine, imap, ctx, folder, fetches, parse)
        report.add(outcome)
        if progress is not None:
            progress.advanced(len(fetches))

    with engine.begin() as conn:
        # by its id, as read above: one statement, the same on every run
        conn.execute(
            sa.update(MailboxFolder)
            .where(MailboxFolder.id == folder_id)
            .values(
                uidvalidity=cursor.uidvalidity,
                uidnext=cursor.uidnext,
                highestmodseq=cursor.highestmodseq,
                last_synced_at=utcnow(),
            )
        )
    _mark_tracked(engine, imap, ctx, folder)


def _folder_row(session: Session, mailbox_id: uuid.UUID, name: str) -> MailboxFolder:
    row = session.scalars(
        sa.select(MailboxFolder).where(
            MailboxFolder.mailbox_id == mailbox_id,
            MailboxFolder.kind == StoredFolderKind.IMAP,
            MailboxFolder.name == name,
        )
    ).first()
    if row is None:
        row = MailboxFolder(mailbox_id=mailbox_id, kind=StoredFolderKind.IMAP, name=name)
        session.add(row)
        session.flush()
    return row


def _undecided(
    engine: Engine, ctx: MailboxContext, folder: FolderContext, uids: Sequence[int]
) -> list[int]:
    """UIDS without a final decision, plus quarantined ones due for a retry."""
    now = utcnow()
    with Session(engine) as session:
        base = sa.select(MessageDecision.uid).where(
            MessageDecision.mailbox_id == ctx.mailbox_id,
            MessageDecision.folder == folder.name,
            MessageDecision.uidvalidity == folder.uidvalidity,
        )
        done: set[int] = set()
        if uids:
            done = set(
                session.scalars(
                    base.where(
                        MessageDecision.uid >= min(uids),
                        sa.or_(
                            MessageDecision.outcome != Outcome.QUARANTINED,
                            MessageDecision.next_attempt_at > now,
                        ),
                    )
                )
            )
        due = set(
            session.scalars(
                base.where(
                    MessageDecision.outcome == Outcome.QUARANTINED,
                    MessageDecision.next_attempt_at <= now,
                )
            )
        )
    if not done and not due:
        return list(uids)  # a first sync: nothing decided yet (and no 100k-element set)
    return sorted((set(uids) - done) | due)


def _run_batch(
    engine: Engine,
    imap: ImapSession,
    ctx: MailboxContext,
    folder: FolderContext,
    fetches: list[HeaderFetch],
    parse: Parser,
) -> Counts:
    def fetch_bodies(uids: Sequence[int]) -> dict[int, bytes]:
        return dict(imap.fetch_messages(uids, ctx.plan))

    try:
        with Session(engine) as session, session.begin():
            return process_batch(session, ctx, folder, fetches, fetch_bodies, parse)
    except ImapError:
        raise  # the connection is gone: the mailbox's run ends, the batch is redone next time
    except Exception as exc:
        log.warning(
            "a batch could not be stored; storing its messages one by one",
            mailbox_id=str(ctx.mailbox_id),
            folder=folder.name,
            messages=len(fetches),
            error=describe_error(exc),
        )
        if len(fetches) == 1:
            log.warning(
                "message quarantined: could not be stored",
                mailbox_id=str(ctx.mailbox_id),
                folder=folder.name,
                uid=fetches[0].uid,
                error=describe_error(exc),
            )
            with Session(engine) as session, session.begin():
                quarantine(session, ctx, folder, fetches[0], ServiceReason.STORE_FAILED, exc)
            out = Counts()
            out.quarantined = 1
            return out
    # one message spoiled the batch's transaction: find it by storing them one by one
    total = Counts()
    for fetched in fetches:
        total.add(_run_batch(engine, imap, ctx, folder, [fetched], parse))
    return total


def _mark_tracked(
    engine: Engine, imap: ImapSession, ctx: MailboxContext, folder: FolderContext
) -> None:
    """Give tracked messages the keyword (also ones a crash left unmarked), in chunks, so a
    100k-message first sync never builds one 100k-UID command or statement."""
    where = (
        MessageDecision.mailbox_id == ctx.mailbox_id,
        MessageDecision.folder == folder.name,
        MessageDecision.uidvalidity == folder.uidvalidity,
    )
    selected = warned = False
    after = 0
    while True:
        with Session(engine) as session:
            chunk = list(
                session.scalars(
                    sa.select(MessageDecision.uid)
                    .where(
                        *where,
                        MessageDecision.outcome.in_((Outcome.TRACKED, Outcome.LINKED)),
                        MessageDecision.marked.is_(False),
                        MessageDecision.uid > after,
                    )
                    .order_by(MessageDecision.uid)
                    .limit(MARK_CHUNK)
                )
            )
        if not chunk:
            break
        after = chunk[-1]
        if not selected:
            imap.select(folder.name, readonly=False)
            selected = True
        if not imap.add_keyword(chunk, TRACKED_KEYWORD) and not warned:
            warned = True  # the decisions still count as marked: there is nothing to retry
            log.info(
                "the folder keeps no custom keywords; tracked messages are not marked",
                mailbox_id=str(ctx.mailbox_id),
                folder=folder.name,
            )
        with Session(engine) as session, session.begin():
            session.execute(
                sa.update(MessageDecision)
                .where(*where, MessageDecision.uid.in_(chunk))
                .values(marked=True)
            )
    if selected:
        imap.unselect()


def _record_uidvalidity_change(
    engine: Engine, ctx: MailboxContext, folder: str, old: Cursor, new: Cursor
) -> None:
    log.warning(
        "folder UIDVALIDITY changed; re-mapping messages by Message-ID",
        mailbox_id=str(ctx.mailbox_id),
        folder=folder,
        old=old.uidvalidity,
        new=new.uidvalidity,
    )
    with Session(engine) as session, session.begin():
        audit.record(
            session,
            audit.Actor(name="sync:incoming"),
            "mailbox.uidvalidity_changed",
            target_type="mailbox",
            target_id=ctx.mailbox_id,
            target_name=ctx.owner.address,
            folder=folder,
            old_uidvalidity=old.uidvalidity,
            new_uidvalidity=new.uidvalidity,
        )


def _finish(engine: Engine, report: SyncReport) -> None:
    """The run's outcome on the mailbox row (what `crmsync status` and the scheduler read), and
    in the same transaction the next run, or the mailbox's disabling (``scheduler.outcome``)."""
    try:
        with Session(engine) as session, session.begin():
            mailbox = session.get(
                Mailbox, report.mailbox_id, with_for_update={"of": Mailbox}, options=_MAILBOX_ONLY
            )
            if mailbox is None:
                return
            now: datetime = utcnow()
            mailbox.last_sync_finished_at = now
            mailbox.items_processed_last_sync = report.seen
            mailbox.items_failed_last_sync = report.quarantined
            if report.error is None:
                mailbox.last_error_code = None
                mailbox.last_error_message = None
            else:
                mailbox.last_error_code = report.error_code
                mailbox.last_error_message = report.error
                mailbox.last_error_at = now
            failed = report.error is not None
            outcome = RunOutcome(
                finished_at=now,
                items=report.seen,
                error_code=(report.error_code or "Error") if failed else None,
                # an error that does not say (a configuration problem) will not pass by itself
                transient=bool(report.transient) if failed else None,
            )
            plan = apply_outcome(session, mailbox, outcome, error_message=report.error)
            report.next_sync_at = mailbox.next_sync_at
            report.schedule = plan.reason
            report.disabled = mailbox.state is MailboxState.DISABLED
    except Exception:
        log.exception("could not record the sync's outcome", mailbox_id=str(report.mailbox_id))
