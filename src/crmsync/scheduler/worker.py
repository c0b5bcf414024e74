"""One worker process: runs sync jobs, dispatches due mailboxes, recovers, and (optionally) pushes.

``crmsync worker`` runs :func:`serve` with push off; ``crmsync run`` with push on. Any number of
processes, on any machines, may point at the same PostgreSQL:

- **jobs**: a Procrastinate worker with ``concurrency`` slots; each sync runs in a thread of an
  executor of the same size (imapclient is blocking code);
- **dispatch** (every ``dispatch_every`` seconds): due mailboxes → jobs (``scheduler.dispatch``;
  ``SKIP LOCKED`` lets every process dispatch without stepping on the others);
- **housekeeping** (every ``housekeeping_every`` seconds): jobs of dead workers (no heartbeat
  for ``stalled_after`` seconds) are ended and their mailboxes made due now, so another worker
  syncs them; finished jobs older than a week are deleted; the gauges are refreshed;
- **push** (``push=True``): one process at a time (a PostgreSQL advisory lock elects it; another
  takes over when it dies) keeps an IMAP IDLE watcher per mailbox; new mail makes the mailbox due
  now (``request_sync``); a watcher that loses its connection marks the mailbox's push state, and
  the mailbox falls back to its polling interval meanwhile.

Shutdown (SIGINT/SIGTERM, or the ``stop`` event): stop dispatching and pushing, let running
syncs finish, unregister the worker, exit. A sync runs in a thread and is not interrupted
mid-batch: after ``graceful_timeout`` Procrastinate gives up waiting on the job, but the thread
still completes its run (every IMAP call is bounded by ``imap_timeout``), so its outcome and
next run are recorded. Were the process killed instead, the lease brings the mailbox back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import procrastinate
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from crmsync.core.schedule import next_run
from crmsync.crm.base import utcnow
from crmsync.crm.mailboxes import Mailbox, MailboxState
from crmsync.db import normalize_url
from crmsync.errors import InvalidInput
from crmsync.scheduler.dispatch import (
    SYNC_QUEUE,
    dispatch_due,
    dispatch_due_sends,
    request_sync,
    syncable,
)
from crmsync.scheduler.jobs import Runtime, make_app
from crmsync.scheduler.metrics import SyncMetrics
from crmsync.scheduler.outcome import PUSH_LIVE, history_of, settings_of, speedup
from crmsync.secrets import SecretBox, SecretError

log = structlog.get_logger("crmsync.scheduler.worker")

PUSH_LEADER_LOCK = (1768, 2)
"""Advisory lock (class, key) held by the one process that runs the push watcher."""
KEEP_FINISHED_HOURS = 24 * 7


@dataclass
class WorkerOptions:
    concurrency: int = 10
    name: str | None = None
    dispatch_every: float = 1.0
    housekeeping_every: float = 15.0
    stalled_after: float = 30.0
    """A worker without a heartbeat for this long is dead (Procrastinate beats every 10 s)."""
    graceful_timeout: float = 60.0
    push: bool = False
    push_refresh_every: float = 30.0
    metrics_port: int | None = None
    imap_timeout: float = 60.0


def make_worker_engine(database_url: str, concurrency: int) -> Engine:
    """An engine with a connection per sync slot, plus the sync's lock connection and
    the dispatcher's."""
    return sa.create_engine(
        normalize_url(database_url),
        pool_pre_ping=True,
        pool_size=concurrency * 2 + 2,
        max_overflow=concurrency,
    )


async def serve(
    database_url: str,
    box: SecretBox,
    options: WorkerOptions,
    *,
    stop: asyncio.Event | None = None,
    install_signal_handlers: bool = True,
    metrics: SyncMetrics | None = None,
) -> None:
    """Run until ``stop`` is set or a signal arrives; see the module docstring."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=options.concurrency + 4, thread_name_prefix="crmsync")
    )
    if install_signal_handlers:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    engine = make_worker_engine(database_url, options.concurrency)
    metrics = metrics or SyncMetrics()
    if options.metrics_port is not None:
        metrics.serve(options.metrics_port)
    runtime = Runtime(engine=engine, box=box, metrics=metrics, imap_timeout=options.imap_timeout)
    app = make_app(database_url, pool_size=options.concurrency + 4)
    log.info("worker starting", concurrency=options.concurrency, push=options.push)
    try:
        async with app.open_async():
            jobs = asyncio.create_task(
                app.run_worker_async(
                    queues=[SYNC_QUEUE],
                    name=options.name,
                    concurrency=options.concurrency,
                    delete_jobs="successful",
                    install_signal_handlers=False,
                    shutdown_graceful_timeout=options.graceful_timeout,
                    stalled_worker_timeout=options.stalled_after,
                    # three beats per timeout: one late beat never makes a live worker "dead"
                    update_heartbeat_interval=options.stalled_after / 3,
                    additional_context={"runtime": runtime},
                ),
                name="jobs",
            )
            side = [
                asyncio.create_task(_every(options.dispatch_every, _dispatch(engine, metrics))),
                asyncio.create_task(
                    _every(options.housekeeping_every, _housekeeping(app, engine, metrics, options))
                ),
            ]
            if options.push:
                side.append(asyncio.create_task(_push_when_leader(engine, box, metrics, options)))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait([jobs, stopper], return_when=asyncio.FIRST_COMPLETED)
            log.info("worker stopping")
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            if not jobs.done():
                jobs.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await jobs
            stopper.cancel()
    finally:
        engine.dispose()
        log.info("worker stopped")


async def _every(seconds: float, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` every ``seconds``; an error is logged and the loop goes on (a database
    restart must not end the worker)."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduler step failed; retrying", step=getattr(step, "__name__", ""))
        await asyncio.sleep(seconds)


def _dispatch(engine: Engine, metrics: SyncMetrics) -> Callable[[], Awaitable[None]]:
    async def dispatch() -> None:
        while True:  # drain: a backlog of thousands is queued in a few transactions
            done = await asyncio.to_thread(dispatch_due, engine)
            metrics.dispatched.inc(sum(1 for d in done if d.queued))
            if len(done) < 500:
                break
        sends = await asyncio.to_thread(dispatch_due_sends, engine)
        metrics.dispatched.inc(len(sends))

    return dispatch


def _housekeeping(
    app: procrastinate.App, engine: Engine, metrics: SyncMetrics, options: WorkerOptions
) -> Callable[[], Awaitable[None]]:
    async def housekeeping() -> None:
        recovered = await recover_stalled(app, engine, stalled_after=options.stalled_after)
        metrics.recovered.inc(len(recovered))
        await asyncio.to_thread(refresh_gauges, engine, metrics)
        await app.job_manager.delete_old_jobs(
            nb_hours=KEEP_FINISHED_HOURS,
            include_failed=True,
            include_cancelled=True,
            include_aborted=True,
        )

    return housekeeping


async def recover_stalled(
    app: procrastinate.App, engine: Engine, *, stalled_after: float
) -> list[uuid.UUID]:
    """End the sync jobs of dead workers and make their mailboxes due now; returns them.

    A killed worker's job stays ``doing`` and keeps its mailbox's lock; ending it frees the
    lock, and the dispatcher queues a fresh job at once. (Retrying the old job instead could
    collide with a job queued meanwhile by "sync now".)"""
    stalled = await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=stalled_after)
    recovered: list[uuid.UUID] = []
    for job in stalled:
        mailbox_id = (job.task_kwargs or {}).get("mailbox_id")
        with contextlib.suppress(Exception):  # another process recovered it first
            await app.job_manager.finish_job(
                job, status=procrastinate.jobs.Status.FAILED, delete_job=False
            )
        if isinstance(mailbox_id, str):
            recovered.append(uuid.UUID(mailbox_id))
    if recovered:
        await asyncio.to_thread(_due_now, engine, recovered)
        log.warning("recovered the jobs of a dead worker", mailboxes=[str(m) for m in recovered])
    return recovered


def _due_now(engine: Engine, mailbox_ids: list[uuid.UUID]) -> None:
    with Session(engine) as session, session.begin():
        session.execute(
            sa.update(Mailbox)
            .where(Mailbox.id.in_(mailbox_ids), Mailbox.state == MailboxState.ENABLED)
            .values(next_sync_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def refresh_gauges(engine: Engine, metrics: SyncMetrics) -> None:
    """Queue depth, mailboxes by state, overdue mailboxes (for ``/metrics``)."""
    now = utcnow()
    with Session(engine) as session:
        depth = session.scalar(
            sa.text("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'")
        )
        metrics.queue_depth.set(depth or 0)
        for state, count in session.execute(
            sa.select(Mailbox.state, sa.func.count()).group_by(Mailbox.state)
        ):
            metrics.mailboxes.labels(state=state.value).set(count)
        overdue = session.scalar(
            sa.select(sa.func.count()).where(
                *syncable(), Mailbox.next_sync_at < now - timedelta(minutes=1)
            )
        )
        metrics.overdue.set(overdue or 0)


# ---------------------------------------------------------------------------- push
async def _push_when_leader(
    engine: Engine, box: SecretBox, metrics: SyncMetrics, options: WorkerOptions
) -> None:
    """Wait to be the push leader (one process at a time), then run the watcher."""
    while True:
        conn = await asyncio.to_thread(_try_leader, engine)
        if conn is None:
            await asyncio.sleep(options.push_refresh_every)
            continue
        try:
            await _run_push(engine, box, metrics, options)
        finally:
            await asyncio.to_thread(_release_leader, conn)


def _try_leader(engine: Engine) -> Connection | None:
    conn = engine.connect()
    got = conn.execute(
        sa.text("SELECT pg_try_advisory_lock(:c, :k)"),
        {"c": PUSH_LEADER_LOCK[0], "k": PUSH_LEADER_LOCK[1]},
    ).scalar()
    conn.commit()
    if got:
        return conn
    conn.close()
    return None


def _release_leader(conn: Connection) -> None:
    with contextlib.suppress(Exception):
        conn.invalidate()  # closing the session releases the lock
    conn.close()


async def _run_push(
    engine: Engine, box: SecretBox, metrics: SyncMetrics, options: WorkerOptions
) -> None:
    from crmsync.sync.push import PushState, PushWatcher

    async def on_new_mail(mailbox_id: uuid.UUID) -> None:
        metrics.push_wakeups.inc()
        try:
            await asyncio.to_thread(request_sync, engine, [mailbox_id])
        except InvalidInput:
            log.info("push saw new mail for a mailbox no longer synced", mailbox_id=str(mailbox_id))

    async def on_state(mailbox_id: uuid.UUID, state: PushState) -> None:
        await asyncio.to_thread(record_push_state, engine, mailbox_id, str(state))
        counts: dict[str, int] = {}
        for value in watcher.states().values():
            counts[str(value)] = counts.get(str(value), 0) + 1
        for name in (s.value for s in PushState):
            metrics.push.labels(state=name).set(counts.get(name, 0))

    watcher = PushWatcher(on_new_mail=on_new_mail, on_state=on_state, timeout=options.imap_timeout)
    try:
        while True:
            targets = await asyncio.to_thread(push_targets, engine, box)
            await watcher.set_targets(targets)
            await asyncio.sleep(options.push_refresh_every)
    finally:
        await watcher.close()
        await asyncio.to_thread(_clear_push_states, engine)


def push_targets(engine: Engine, box: SecretBox) -> list[Any]:
    """Every syncable mailbox with a stored password, as a watcher target."""
    from crmsync.sync.push import PushTarget

    targets = []
    with Session(engine) as session:
        rows = session.execute(
            sa.select(
                Mailbox.id,
                Mailbox.imap_url,
                Mailbox.username,
                Mailbox.email_address,
                Mailbox.credential,
            ).where(*syncable(), Mailbox.credential.is_not(None))
        )
        for row in rows:
            try:
                password = box.decrypt(row.credential, bound_to=f"mailbox:{row.id}")
            except SecretError:  # the sync reports an undecryptable credential; push skips it
                log.info(
                    "push skips a mailbox whose password cannot be decrypted",
                    mailbox_id=str(row.id),
                )
                continue
            targets.append(
                PushTarget(
                    mailbox_id=row.id,
                    url=row.imap_url,
                    username=row.username or row.email_address,
                    password=password,
                )
            )
    return targets


def record_push_state(engine: Engine, mailbox_id: uuid.UUID, state: str) -> None:
    """Store the watcher's state; when push is lost, fall back to the polling interval at
    once (the plan computed as if push were off, if sooner than the one stored)."""
    with Session(engine) as session, session.begin():
        mailbox = session.get(Mailbox, mailbox_id, with_for_update={"of": Mailbox})
        if mailbox is None:
            return
        was_live = mailbox.push_state == PUSH_LIVE
        mailbox.push_state = state
        mailbox.push_changed_at = utcnow()
        if not (was_live and state != PUSH_LIVE) or mailbox.state is not MailboxState.ENABLED:
            return
        history = history_of(mailbox)
        if not history.outcomes or mailbox.next_sync_at is None:
            return
        plan = next_run(history, settings_of(mailbox), utcnow())
        if plan.at is None or plan.interval is None:
            return
        last = history.outcomes[-1].finished_at
        fallback = last + plan.interval / speedup(session)
        if fallback < mailbox.next_sync_at:
            mailbox.next_sync_at = fallback
            mailbox.schedule_reason = f"push lost → polling: {plan.reason}"


def _clear_push_states(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        session.execute(
            sa.update(Mailbox)
            .where(Mailbox.push_state.is_not(None))
            .values(push_state=None, push_changed_at=utcnow())
            .execution_options(synchronize_session=False)
        )
