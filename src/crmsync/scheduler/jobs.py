"""The Procrastinate app and the one job it runs: sync a mailbox.

Jobs are inserted by ``scheduler.dispatch`` (never deferred for later); the worker runs them
with ``lock = "mailbox:<id>"``, so at most one sync of a mailbox runs at a time across all
workers, enforced by the database. The sync itself is the same function ``crmsync sync --once``
runs (``crmsync.sync.incoming.sync_mailbox``), which writes the outcome and the next run in one
transaction; a job therefore never raises for a mailbox's problem, and a successful job row is
deleted when it ends (``delete_jobs="successful"``) so the table does not grow.

The sync is blocking code (imapclient), run by Procrastinate in the event loop's default
executor; ``scheduler.worker`` sizes that executor to the worker's concurrency.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import procrastinate
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from crmsync.crm.base import utcnow
from crmsync.crm.mailboxes import Mailbox
from crmsync.scheduler.dispatch import SEND_TASK, SYNC_QUEUE, SYNC_TASK, sendable, syncable
from crmsync.scheduler.metrics import SyncMetrics
from crmsync.secrets import SecretBox
from crmsync.sync.incoming import SyncReport, sync_mailbox

log = structlog.get_logger("crmsync.scheduler.jobs")


@dataclass
class Runtime:
    """What a job needs from its worker process, handed over as Procrastinate context."""

    engine: Engine
    box: SecretBox
    metrics: SyncMetrics
    imap_timeout: float = 60.0


def conninfo(database_url: str) -> str:
    """A libpq connection string from crmsync's SQLAlchemy URL (Procrastinate uses psycopg)."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def make_app(database_url: str, *, pool_size: int = 4) -> procrastinate.App:
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo(database_url), min_size=1, max_size=max(pool_size, 2)
    )
    app = procrastinate.App(connector=connector)
    app.task(name=SYNC_TASK, queue=SYNC_QUEUE, pass_context=True)(sync_mailbox_job)
    app.task(name=SEND_TASK, queue=SYNC_QUEUE, pass_context=True)(send_mailbox_job)
    return app


def send_mailbox_job(context: procrastinate.JobContext, mailbox_id: str) -> dict[str, Any]:
    """Send a mailbox's due outgoing email (``crmsync.sync.outgoing``; lock ``send:<id>``)."""
    from crmsync.sync.outgoing import send_mailbox

    runtime: Runtime = context.additional_context["runtime"]
    job_id = context.job.id if context.job else None
    with structlog.contextvars.bound_contextvars(mailbox_id=mailbox_id, job_id=job_id):
        mid = uuid.UUID(mailbox_id)
        with Session(runtime.engine) as session:
            if session.scalar(sa.select(Mailbox.id).where(Mailbox.id == mid, *sendable())) is None:
                log.info("mailbox cannot send; job skipped")
                return {"skipped": True}
        report = send_mailbox(runtime.engine, mid, box=runtime.box, timeout=runtime.imap_timeout)
        runtime.metrics.emails_sent.inc(report.sent)
        runtime.metrics.emails_failed.inc(report.failed)
        return {"sent": report.sent, "failed": report.failed, "retrying": report.retrying}


def sync_mailbox_job(
    context: procrastinate.JobContext, mailbox_id: str, due_at: str | None = None
) -> dict[str, Any]:
    """Sync one mailbox's incoming email (a Procrastinate task; see the module docstring)."""
    runtime: Runtime = context.additional_context["runtime"]
    job_id = context.job.id if context.job else None
    with structlog.contextvars.bound_contextvars(mailbox_id=mailbox_id, job_id=job_id):
        mid = uuid.UUID(mailbox_id)
        if not _still_syncable(runtime.engine, mid):
            log.info("mailbox no longer syncable; job skipped")
            runtime.metrics.runs.labels(result="skipped").inc()
            return {"skipped": True}
        lag = _lag(due_at)
        if lag is not None:
            runtime.metrics.lag.observe(lag)
            runtime.metrics.mailbox_lag.labels(mailbox=mailbox_id).set(lag)
        started, started_at = time.monotonic(), utcnow()
        report = sync_mailbox(runtime.engine, mid, box=runtime.box, timeout=runtime.imap_timeout)
        runtime.metrics.duration.observe(time.monotonic() - started)
        _count(runtime.metrics, report)
        log.info(
            "mailbox synced",
            result=_result(report),
            seen=report.seen,
            tracked=report.tracked,
            error_code=report.error_code,
            lag_seconds=None if lag is None else round(lag, 3),
            started_at=started_at.isoformat(),
            finished_at=utcnow().isoformat(),
            worker=context.worker_name,
            next_sync_at=report.next_sync_at.isoformat() if report.next_sync_at else None,
            schedule=report.schedule,
        )
        return {"result": _result(report), "seen": report.seen, "tracked": report.tracked}


def _still_syncable(engine: Engine, mailbox_id: uuid.UUID) -> bool:
    """Disabled (or removed) since the job was queued: nothing to do. Approval is left to the
    dispatcher, which checked it a moment ago."""
    with Session(engine) as session:
        found = session.scalar(sa.select(Mailbox.id).where(Mailbox.id == mailbox_id, *syncable()))
        return found is not None


def _lag(due_at: str | None) -> float | None:
    if not due_at:
        return None
    try:
        due = datetime.fromisoformat(due_at)
    except ValueError:
        return None
    return max((utcnow() - due).total_seconds(), 0.0)


def _result(report: SyncReport) -> str:
    if report.busy:
        return "busy"
    if report.disabled:
        return "disabled"
    return "ok" if report.error is None else "error"


def _count(metrics: SyncMetrics, report: SyncReport) -> None:
    metrics.runs.labels(result=_result(report)).inc()
    metrics.items.inc(report.seen)
    metrics.tracked.inc(report.tracked)
    if report.error_code:
        metrics.errors.labels(code=report.error_code).inc()
