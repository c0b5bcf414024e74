"""The scheduler against the real stack: dispatch, the worker, sync now, errors and alerts,
recovery of a dead worker's jobs. (Several worker processes and 200 mailboxes: test_workers.py.)"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.crm.activities import Email
from crmsync.crm.alerts import Alert
from crmsync.crm.base import utcnow
from crmsync.crm.mailboxes import EmailServerProfile, Mailbox, MailboxState
from crmsync.crm.settings import set_setting
from crmsync.scheduler.dispatch import dispatch_due, job_lock, request_sync
from crmsync.scheduler.jobs import make_app
from crmsync.scheduler.worker import WorkerOptions, recover_stalled, serve
from crmsync.secrets import Secret
from tests.stackfix import Stack
from tests.syncworld import SyncWorld, make_mail

pytestmark = pytest.mark.integration

WRONG_PASSWORD = "not-the-password-7f3a"


@pytest.fixture
def world(engine: Engine, stack: Stack, tmp_path: Path) -> SyncWorld:
    return SyncWorld(engine, stack, tmp_path)


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@contextmanager
def running_worker(world: SyncWorld, **options: object) -> Iterator[None]:
    """A worker (crmsync.scheduler.worker.serve) in a thread of this process, stopped after."""
    stop: asyncio.Event | None = None
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        ready.set()
        await serve(
            url_of(world.engine),
            world.box,
            WorkerOptions(concurrency=4, **options),  # type: ignore[arg-type]
            stop=stop,
            install_signal_handlers=False,
        )

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        assert not thread.is_alive(), "the worker did not stop within 60 s"


def wait_until(check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {seconds} s: {check.__doc__ or check}")
        time.sleep(0.2)


def jobs(engine: Engine, status: str | None = None) -> list[sa.Row]:
    query = "SELECT id, status, lock, queueing_lock, priority FROM procrastinate_jobs"
    if status:
        query += f" WHERE status = '{status}'"
    with engine.connect() as conn:
        return list(conn.execute(sa.text(query)))


def mailbox(engine: Engine, mailbox_id: uuid.UUID) -> Mailbox:
    with Session(engine, expire_on_commit=False) as s:
        return s.get_one(Mailbox, mailbox_id)


def test_due_mailboxes_are_queued_once_with_a_lock_each(world: SyncWorld) -> None:
    anna, bert = world.user("anna"), world.user("bert")
    later = world.user("cid")
    with Session(world.engine) as s, s.begin():
        s.get_one(Mailbox, later.mailbox_id).next_sync_at = utcnow() + timedelta(minutes=5)
    first = dispatch_due(world.engine)
    assert {d.mailbox_id for d in first} == {anna.mailbox_id, bert.mailbox_id}
    assert all(d.queued for d in first)
    waiting = jobs(world.engine, "todo")
    assert sorted(j.lock for j in waiting) == sorted(
        job_lock(m) for m in (anna.mailbox_id, bert.mailbox_id)
    )
    assert all(j.lock == j.queueing_lock for j in waiting)
    # Leased: not due again until the 12-minute ceiling, so no second job.
    assert dispatch_due(world.engine) == []
    leased = mailbox(world.engine, anna.mailbox_id).next_sync_at
    assert leased is not None and leased > utcnow() + timedelta(minutes=11)
    # "Sync now" on a mailbox whose job is already waiting adds none; on another, one job
    # with the higher priority, even though that mailbox is scheduled minutes ahead.
    again = request_sync(world.engine, [anna.mailbox_id, later.mailbox_id])
    assert {(d.mailbox_id, d.queued) for d in again} == {
        (anna.mailbox_id, False),
        (later.mailbox_id, True),
    }
    waiting = jobs(world.engine, "todo")
    assert len(waiting) == 3
    assert {j.priority for j in waiting if j.lock == job_lock(later.mailbox_id)} == {10}


def test_a_worker_syncs_due_mailboxes_and_schedules_the_next_run(world: SyncWorld) -> None:
    people = [world.user(n) for n in ("anna", "bert", "cid")]
    for p in people:
        world.append(p, make_mail(sender="carl@customer.test", to=p.address, subject=p.address))
    started = utcnow()
    with running_worker(world):

        def all_synced() -> bool:
            """every mailbox finished a run"""
            return all(
                (m := mailbox(world.engine, p.mailbox_id)).last_sync_finished_at is not None
                and m.last_sync_finished_at > started
                for p in people
            )

        wait_until(all_synced)
        # Successful job rows are deleted, not kept.
        wait_until(lambda: jobs(world.engine) == [])
    with Session(world.engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Email)) == 3
        for p in people:
            m = s.get_one(Mailbox, p.mailbox_id)
            assert m.schedule_code == "normal" and m.last_error_count == 0
            assert m.next_sync_at is not None and m.last_sync_finished_at is not None
            assert m.next_sync_at - m.last_sync_finished_at == timedelta(minutes=5)
            assert [o["items"] for o in m.sync_history] == [1]


def test_sync_now_runs_within_seconds_though_the_next_run_is_minutes_away(
    world: SyncWorld,
) -> None:
    anna = world.user("anna")
    with running_worker(world):
        wait_until(lambda: mailbox(world.engine, anna.mailbox_id).last_sync_finished_at is not None)
        first = mailbox(world.engine, anna.mailbox_id)
        assert first.next_sync_at is not None and first.next_sync_at > utcnow() + timedelta(
            minutes=4
        )
        world.append(anna, make_mail(sender="carl@customer.test", to=anna.address, subject="Now"))
        asked = utcnow()
        request_sync(world.engine, [anna.mailbox_id])

        def tracked() -> bool:
            """the new message was tracked"""
            with Session(world.engine) as s:
                return s.scalar(sa.select(Email.id).where(Email.subject == "Now")) is not None

        wait_until(tracked, seconds=20)
        synced = mailbox(world.engine, anna.mailbox_id)
        assert synced.last_sync_started_at is not None and synced.last_sync_started_at > asked
        assert synced.sync_requested_at is None


def test_a_refused_login_disables_the_mailbox_and_alerts_both_owners(world: SyncWorld) -> None:
    anna = world.user("anna")
    admin = world.user("adele")
    with Session(world.engine) as s, s.begin():
        profile = EmailServerProfile(name="Dovecot", owner_id=admin.user_id)
        s.add(profile)
        s.flush()
        m = s.get_one(Mailbox, anna.mailbox_id)
        m.profile_id = profile.id
        m.credential = world.box.encrypt(Secret(WRONG_PASSWORD), bound_to=f"mailbox:{m.id}")
        s.get_one(Mailbox, admin.mailbox_id).state = MailboxState.DISABLED
    with running_worker(world):
        wait_until(lambda: mailbox(world.engine, anna.mailbox_id).state is MailboxState.DISABLED)
    stopped = mailbox(world.engine, anna.mailbox_id)
    assert stopped.next_sync_at is None and stopped.schedule_code == "permanent"
    assert stopped.last_error_code == "AuthenticationFailed"
    assert "AuthenticationFailed" in (stopped.disabled_reason or "")
    with Session(world.engine) as s:
        alerts = s.scalars(sa.select(Alert).order_by(Alert.code)).all()
        by_code: dict[str, set[uuid.UUID]] = {}
        for a in alerts:
            by_code.setdefault(a.code, set()).add(a.recipient_id)
        assert by_code["mailbox.disabled"] == {anna.user_id, admin.user_id}
        # the only counted mailbox of the profile fails: more than 50 %
        assert by_code["profile.failing"] == {admin.user_id}
        assert all(WRONG_PASSWORD not in a.message for a in alerts)


def test_transient_errors_retry_then_disable_at_the_tenth(world: SyncWorld) -> None:
    anna = world.user("anna")
    with Session(world.engine) as s, s.begin():
        set_setting(s, "schedule_speedup", "600")  # 5 min → 0.5 s
        s.get_one(Mailbox, anna.mailbox_id).imap_url = f"imap://127.0.0.1:{free_port()}"
    with running_worker(world, imap_timeout=2.0):
        wait_until(
            lambda: mailbox(world.engine, anna.mailbox_id).state is MailboxState.DISABLED,
            seconds=60,
        )
    stopped = mailbox(world.engine, anna.mailbox_id)
    assert stopped.schedule_code == "transient_exhausted"
    assert stopped.last_error_count == 10
    assert len(stopped.sync_history) == 6 and all(o["transient"] for o in stopped.sync_history)
    with Session(world.engine) as s:
        codes = sorted(s.scalars(sa.select(Alert.code)).all())
    # one warning at the first error (not one per retry), one alert when disabled
    assert codes == ["mailbox.disabled", "mailbox.error"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_jobs_of_a_dead_worker_are_recovered(world: SyncWorld) -> None:
    anna = world.user("anna")
    [queued] = dispatch_due(world.engine)
    with world.engine.begin() as conn:
        # A worker that took the job and died: its heartbeat stopped a minute ago.
        dead = conn.execute(
            sa.text(
                "INSERT INTO procrastinate_workers (last_heartbeat) "
                "VALUES (now() - interval '60 seconds') RETURNING id"
            )
        ).scalar()
        conn.execute(
            sa.text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w"),
            {"w": dead},
        )

    async def recover() -> list[uuid.UUID]:
        app = make_app(url_of(world.engine))
        async with app.open_async():
            return await recover_stalled(app, world.engine, stalled_after=30)

    assert asyncio.run(recover()) == [queued.mailbox_id]
    assert [j.status for j in jobs(world.engine)] == ["failed"]  # the lock is free again
    due = mailbox(world.engine, anna.mailbox_id).next_sync_at
    assert due is not None and due <= utcnow()
    [again] = dispatch_due(world.engine)
    assert again.mailbox_id == anna.mailbox_id and again.queued


def test_push_pulls_the_next_run_forward_when_mail_arrives(world: SyncWorld) -> None:
    anna = world.user("anna")
    with running_worker(world, push=True, push_refresh_every=0.5):

        def live() -> bool:
            """push is live and the first run finished"""
            m = mailbox(world.engine, anna.mailbox_id)
            return m.push_state == "live" and m.last_sync_finished_at is not None

        wait_until(live)
        first = mailbox(world.engine, anna.mailbox_id)
        assert first.next_sync_at is not None
        assert first.next_sync_at > utcnow() + timedelta(minutes=4)  # nothing due by polling
        world.append(anna, make_mail(sender="carl@customer.test", to=anna.address, subject="Push"))

        def tracked() -> bool:
            """the pushed message was tracked"""
            with Session(world.engine) as s:
                return s.scalar(sa.select(Email.id).where(Email.subject == "Push")) is not None

        wait_until(tracked, seconds=20)
        after = mailbox(world.engine, anna.mailbox_id)
        # a run after push: the policy's interval with push live is the 12-minute fallback
        assert after.schedule_code == "push"
    # The watcher is gone with the worker: push state cleared, polling alone from now on.
    assert mailbox(world.engine, anna.mailbox_id).push_state is None


def test_losing_push_falls_back_to_the_polling_interval_at_once(world: SyncWorld) -> None:
    from crmsync.scheduler.worker import record_push_state

    anna = world.user("anna")
    record_push_state(world.engine, anna.mailbox_id, "live")
    world.sync(anna)
    live = mailbox(world.engine, anna.mailbox_id)
    assert live.schedule_code == "push" and live.last_sync_finished_at is not None
    assert live.next_sync_at == live.last_sync_finished_at + timedelta(minutes=12)
    record_push_state(world.engine, anna.mailbox_id, "backoff")
    lost = mailbox(world.engine, anna.mailbox_id)
    assert lost.push_state == "backoff" and lost.push_changed_at is not None
    # one empty run: the normal 5 minutes, counted from the end of that run
    assert lost.next_sync_at == live.last_sync_finished_at + timedelta(minutes=5)
    assert lost.schedule_reason and lost.schedule_reason.startswith("push lost")
    record_push_state(world.engine, anna.mailbox_id, "live")  # back: nothing moves later
    assert mailbox(world.engine, anna.mailbox_id).next_sync_at == lost.next_sync_at


def test_metrics_are_served_for_prometheus(world: SyncWorld) -> None:
    import urllib.request

    anna = world.user("anna")
    world.append(anna, make_mail(sender="carl@customer.test", to=anna.address, subject="M"))
    port = free_port()
    with running_worker(world, metrics_port=port, housekeeping_every=0.5):
        wait_until(lambda: mailbox(world.engine, anna.mailbox_id).last_sync_finished_at is not None)

        def scraped() -> bool:
            """the run and the gauges show in /metrics"""
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            return (
                'crmsync_sync_runs_total{result="ok"} 1.0' in text
                and "crmsync_sync_items_total 1.0" in text
                and f'crmsync_mailbox_lag_seconds{{mailbox="{anna.mailbox_id}"}}' in text
                and 'crmsync_mailboxes{state="enabled"} 1.0' in text
                and "crmsync_queue_depth 0.0" in text
            )

        wait_until(scraped, seconds=20)
