"""Due mailboxes become sync jobs; "sync now" makes a mailbox due at once.

The schedule is ``mailbox.next_sync_at``; the job queue (Procrastinate's ``procrastinate_jobs``)
holds only work that is due now. :func:`dispatch_due`, called every second or so by every worker
process, takes the due mailboxes (``FOR UPDATE SKIP LOCKED``: two dispatchers never take the
same one) and, **in the same transaction**:

- moves each one's ``next_sync_at`` forward by a *lease* (the 12-minute ceiling): if its job is
  lost (a worker killed, a job aborted), the mailbox becomes due again by itself, so no enabled
  mailbox waits longer than 12 minutes even then; the job's own run replaces the lease with the
  policy's next run when it finishes;
- inserts a sync job for each that has none waiting. Every job of a mailbox carries
  ``lock = queueing_lock = "mailbox:<id>"``: Procrastinate runs at most one job per lock at a
  time (the database enforces it) and refuses a second *waiting* job with the same queueing
  lock, so a mailbox is never queued twice.

Jobs are inserted with Procrastinate's own SQL function (``procrastinate_defer_jobs_v1``) on our
connection, which is what makes the schedule and the queue change in one transaction; its
insert trigger notifies the workers, so a job starts within moments, not at the next poll.

:func:`request_sync` ("sync now", and a push notification) sets ``next_sync_at`` to now and
dispatches that mailbox at once with a higher priority. Because nothing is ever queued for
later, such a request is never stuck behind a job scheduled minutes ahead (Procrastinate
issue #1599); if the mailbox is syncing right now, its new job waits for the lock and runs next.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from crmsync.core.schedule import SLOWEST_MINUTES
from crmsync.crm.base import utcnow
from crmsync.crm.mailboxes import ApprovalStatus, Mailbox, MailboxState, SyncMethod
from crmsync.crm.settings import get_setting
from crmsync.errors import InvalidInput

SYNC_TASK = "crmsync.sync_mailbox"
SYNC_QUEUE = "sync"
NORMAL_PRIORITY = 0
REQUESTED_PRIORITY = 10
"""A person's "sync now" or a push notification goes before routine polls."""
DISPATCH_LIMIT = 500
"""Mailboxes taken per transaction; the rest wait for the next tick (a second later)."""


def job_lock(mailbox_id: uuid.UUID | str) -> str:
    return f"mailbox:{mailbox_id}"


@dataclass(frozen=True)
class Dispatched:
    mailbox_id: uuid.UUID
    due_at: datetime
    queued: bool
    """A new job was inserted (False: one was already waiting; the lease was renewed)."""


def syncable() -> list[sa.ColumnElement[bool]]:
    """The conditions for a mailbox's incoming sync to run (the approval one is added by the
    caller, as it depends on an org setting)."""
    return [
        Mailbox.state == MailboxState.ENABLED,
        Mailbox.incoming_method == SyncMethod.SERVER_SYNC,
        Mailbox.imap_url.is_not(None),
    ]


def _conditions(session: Session) -> list[sa.ColumnElement[bool]]:
    conditions = syncable()
    if get_setting(session, "process_email_only_for_approved_mailboxes"):
        conditions.append(Mailbox.approval_status == ApprovalStatus.APPROVED)
    return conditions


def lease(speedup: int) -> timedelta:
    return timedelta(minutes=SLOWEST_MINUTES) / speedup


def dispatch_due(
    engine: Engine,
    *,
    now: datetime | None = None,
    limit: int = DISPATCH_LIMIT,
    only: Sequence[uuid.UUID] | None = None,
) -> list[Dispatched]:
    """Queue a sync job for each due mailbox (at most ``limit``); see the module docstring."""
    with Session(engine) as session, session.begin():
        return dispatch_in(session, now=now or utcnow(), limit=limit, only=only)


def dispatch_in(
    session: Session,
    *,
    now: datetime,
    limit: int = DISPATCH_LIMIT,
    only: Sequence[uuid.UUID] | None = None,
) -> list[Dispatched]:
    from crmsync.scheduler.outcome import speedup

    query = (
        sa.select(Mailbox.id, Mailbox.next_sync_at, Mailbox.sync_requested_at)
        # never scheduled (enabled before the scheduler existed, or by a script) is due
        .where(
            sa.or_(Mailbox.next_sync_at <= now, Mailbox.next_sync_at.is_(None)),
            *_conditions(session),
        )
        .order_by(Mailbox.next_sync_at.asc().nulls_first())
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if only is not None:
        query = query.where(Mailbox.id.in_(list(only)))
    due = session.execute(query).all()
    if not due:
        return []
    ids = [row.id for row in due]
    session.execute(
        sa.update(Mailbox)
        .where(Mailbox.id.in_(ids))
        .values(next_sync_at=now + lease(speedup(session)), dispatched_at=now)
        .execution_options(synchronize_session=False)
    )
    waiting = _waiting_jobs(session.connection(), ids)
    new = [row for row in due if job_lock(row.id) not in waiting]
    _insert_jobs(session.connection(), new, now)
    return [Dispatched(row.id, row.next_sync_at, job_lock(row.id) not in waiting) for row in due]


def _waiting_jobs(conn: Connection, ids: Sequence[uuid.UUID]) -> set[str]:
    rows = conn.execute(
        sa.text(
            "SELECT queueing_lock FROM procrastinate_jobs "
            "WHERE status = 'todo' AND queueing_lock = ANY(:locks)"
        ),
        {"locks": [job_lock(i) for i in ids]},
    )
    return {row[0] for row in rows}


def _insert_jobs(conn: Connection, rows: Sequence[sa.Row], now: datetime) -> None:
    if not rows:
        return
    params: dict[str, object] = {"queue": SYNC_QUEUE, "task": SYNC_TASK}
    values = []
    for n, row in enumerate(rows):
        requested = row.sync_requested_at is not None
        params[f"p{n}"] = REQUESTED_PRIORITY if requested else NORMAL_PRIORITY
        params[f"l{n}"] = job_lock(row.id)
        params[f"a{n}"] = _args_json(row.id, row.next_sync_at or now)
        values.append(
            f"ROW(:queue, :task, :p{n}, :l{n}, :l{n}, CAST(:a{n} AS jsonb), NULL)"
            "::procrastinate_job_to_defer_v1"
        )
    conn.execute(sa.text(f"SELECT procrastinate_defer_jobs_v1(ARRAY[{', '.join(values)}])"), params)


# ---------------------------------------------------------------------------- sending
SEND_TASK = "crmsync.send_mailbox"


def send_lock(mailbox_id: uuid.UUID | str) -> str:
    return f"send:{mailbox_id}"


def sendable() -> list[sa.ColumnElement[bool]]:
    return [
        Mailbox.state == MailboxState.ENABLED,
        Mailbox.outgoing_method == SyncMethod.SERVER_SYNC,
        Mailbox.smtp_url.is_not(None),
    ]


def dispatch_sends(
    session: Session, *, now: datetime, only: Sequence[uuid.UUID] | None = None
) -> list[uuid.UUID]:
    """Queue a send job for each mailbox with email due to send (or left ``sending`` by a
    crashed run) and no send job waiting or running; returns those mailboxes.

    The job's lock ``send:<id>`` keeps one sender per mailbox; it runs until the mailbox's
    outbox holds nothing due, so email queued while it runs goes with it."""
    from crmsync.crm.activities import Email, EmailStatus

    due = sa.or_(
        Email.email_status == EmailStatus.SENDING,
        sa.and_(
            Email.email_status == EmailStatus.PENDING_SEND,
            sa.or_(Email.send_after.is_(None), Email.send_after <= now),
            sa.or_(Email.next_attempt_at.is_(None), Email.next_attempt_at <= now),
        ),
    )
    conditions = [*sendable()]
    if get_setting(session, "process_email_only_for_approved_mailboxes"):
        conditions.append(Mailbox.approval_status == ApprovalStatus.APPROVED)
    query = (
        sa.select(Mailbox.id)
        .where(
            *conditions,
            sa.exists().where(Email.sending_mailbox_id == Mailbox.id, due),
            sa.text(
                "NOT EXISTS (SELECT 1 FROM procrastinate_jobs j "
                "WHERE j.lock = 'send:' || mailbox.id::text AND j.status IN ('todo', 'doing'))"
            ),
        )
        .with_for_update(skip_locked=True)
    )
    if only is not None:
        query = query.where(Mailbox.id.in_(list(only)))
    ids = list(session.scalars(query))
    if ids:
        values, params = [], {"queue": SYNC_QUEUE, "task": SEND_TASK}
        for n, mailbox_id in enumerate(ids):
            params[f"l{n}"] = send_lock(mailbox_id)
            params[f"a{n}"] = json.dumps({"mailbox_id": str(mailbox_id)})
            values.append(
                f"ROW(:queue, :task, {REQUESTED_PRIORITY}, :l{n}, :l{n}, CAST(:a{n} AS jsonb), "
                "NULL)::procrastinate_job_to_defer_v1"
            )
        session.execute(
            sa.text(f"SELECT procrastinate_defer_jobs_v1(ARRAY[{', '.join(values)}])"), params
        )
    return ids


def dispatch_due_sends(engine: Engine, *, now: datetime | None = None) -> list[uuid.UUID]:
    with Session(engine) as session, session.begin():
        return dispatch_sends(session, now=now or utcnow())


def _args_json(mailbox_id: uuid.UUID, due_at: datetime) -> str:
    return json.dumps({"mailbox_id": str(mailbox_id), "due_at": due_at.isoformat()})


def request_sync(
    engine: Engine, mailbox_ids: Sequence[uuid.UUID], *, now: datetime | None = None
) -> list[Dispatched]:
    """Sync these mailboxes as soon as a worker can ("sync now", push): due now, dispatched
    now, ahead of routine polls. Refuses a mailbox that is not syncable, saying why."""
    now = now or utcnow()
    with Session(engine) as session, session.begin():
        found = session.execute(
            sa.select(Mailbox.id).where(Mailbox.id.in_(list(mailbox_ids)), *_conditions(session))
        ).scalars()
        ok = set(found)
        missing = [str(i) for i in mailbox_ids if i not in ok]
        if missing:
            raise InvalidInput(
                "not syncable (disabled, not approved, or without an incoming server): "
                + ", ".join(missing)
            )
        session.execute(
            sa.update(Mailbox)
            .where(Mailbox.id.in_(list(ok)))
            .values(next_sync_at=now, sync_requested_at=now)
            .execution_options(synchronize_session=False)
        )
        return dispatch_in(session, now=now, limit=len(ok), only=list(ok))
