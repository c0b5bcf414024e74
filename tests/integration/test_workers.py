"""Real ``crmsync worker`` processes against the stack (issue 5): two workers sharing 200
mailboxes under random deliveries, a worker SIGKILLed mid-job, a refused login, an IMAP server
that goes away and comes back, and a graceful SIGTERM during a long sync.

Each worker is a subprocess (``python -m crmsync worker``) on the test's database, logging JSON
to a file; the tests read those logs (one ``mailbox synced`` line per job, with its
``started_at`` / ``finished_at``) and the database. Intervals are scaled down with the org
setting ``schedule_speedup``. Every wait has a deadline; nothing asserts on timing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email import policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.crm.activities import Email
from crmsync.crm.alerts import Alert
from crmsync.crm.mailboxes import Mailbox, MailboxState
from crmsync.crm.settings import set_setting
from crmsync.scheduler.dispatch import job_lock
from crmsync.secrets import Secret
from tests.clirun import clean_env
from tests.forwarder import SourceForwarder
from tests.integration.test_incoming_robustness import fill_maildir
from tests.stackfix import Stack
from tests.syncworld import LONG_AGO, Person, SyncWorld, make_mail

pytestmark = pytest.mark.integration

SENDER = "carl@customer.test"
WRONG_PASSWORD = "not-the-password-5d1e"


# ---------------------------------------------------------------------- workers
class Worker:
    """One ``crmsync worker`` subprocess; stdout and stderr (JSON log lines) go to a file."""

    def __init__(self, env: dict[str, str], name: str, log_dir: Path, *args: str) -> None:
        self.name = name
        self.log_path = log_dir / f"worker-{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in wait())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crmsync", "worker", "--name", name, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines so far (optionally only one event)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue  # the CLI's own messages ("crmsync worker ...: syncing with ...")
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if event is None or entry.get("event") == event:
                    found.append(entry)
        return found

    def runs(self) -> list[dict[str, Any]]:
        return self.events("mailbox synced")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 120) -> int:
        """SIGTERM (graceful shutdown) and wait for the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        return self.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._log.close()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def world(engine: Engine, stack: Stack, tmp_path: Path) -> SyncWorld:
    return SyncWorld(engine, stack, tmp_path)


@pytest.fixture
def start_worker(
    world: SyncWorld, database_url: str, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    """Start ``crmsync worker --name NAME ARGS...``; any still running at the end is killed."""
    env = clean_env(
        CRMSYNC_DATABASE_URL=database_url,
        CRMSYNC_SECRET_KEY=world.key,
        CRMSYNC_HOME=str(tmp_path / "home"),
        CRMSYNC_LOG_FORMAT="json",
        CRMSYNC_LOG_LEVEL="info",
    )
    started: list[Worker] = []

    def start(name: str, *args: str) -> Worker:
        worker = Worker(env, name, tmp_path, *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.alive():
            worker.kill()


# ---------------------------------------------------------------------- helpers
def wait_until(
    check: Callable[[], bool],
    seconds: float,
    what: str,
    *workers: Worker,
    progress: Callable[[], str] | None = None,
) -> None:
    """Poll CHECK until true; fail after SECONDS (saying PROGRESS) or when a worker exits."""
    deadline = time.monotonic() + seconds
    while not check():
        for w in workers:
            assert w.alive(), f"worker {w.name} exited ({w.proc.returncode}):\n{w.tail()}"
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.name}\n{w.tail(5)}" for w in workers)
            state = f" ({progress()})" if progress else ""
            raise AssertionError(f"not within {seconds} s: {what}{state}\n{logs}")
        time.sleep(0.2)


def speed_up(engine: Engine, factor: int) -> None:
    with Session(engine) as s, s.begin():
        set_setting(s, "schedule_speedup", str(factor))


def mailbox(engine: Engine, mailbox_id: uuid.UUID) -> Mailbox:
    with Session(engine, expire_on_commit=False) as s:
        return s.get_one(Mailbox, mailbox_id)


def job_rows(engine: Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT id, status, lock FROM procrastinate_jobs")))


def job_status(engine: Engine, mailbox_id: uuid.UUID) -> list[str]:
    return [j.status for j in job_rows(engine) if j.lock == job_lock(mailbox_id)]


def tracked_ids(engine: Engine) -> Counter[str]:
    """Message-ID (as sent, in angle brackets) → how many Email rows carry it."""
    with Session(engine) as s:
        return Counter(f"<{mid}>" for mid in s.scalars(sa.select(Email.message_id)))


def email_count(engine: Engine) -> int:
    with Session(engine) as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(Email)) or 0)


def when(entry: dict[str, Any], key: str) -> datetime:
    return datetime.fromisoformat(entry[key])


def overlapping_runs(runs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Runs of one mailbox that overlap in time, across all workers: (mailbox, job, job)."""
    by_mailbox: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_mailbox[run["mailbox_id"]].append(run)
    found = []
    for mailbox_id, its in by_mailbox.items():
        its.sort(key=lambda r: when(r, "started_at"))
        for before, after in itertools.pairwise(its):
            if when(after, "started_at") < when(before, "finished_at"):
                found.append((mailbox_id, before["job_id"], after["job_id"]))
    return found


def crlf(msg: Any) -> bytes:
    return msg.as_bytes(policy=policy.SMTP)


def big_mailbox(world: SyncWorld, n: int, name: str) -> tuple[Person, set[str]]:
    """A person whose INBOX holds N messages (written into the Maildir directly: seconds)."""
    person = world.user(name)
    ids = {f"<{name}-{i}-{uuid.uuid4().hex[:8]}@customer.test>" for i in range(n)}
    raws = [
        crlf(make_mail(sender=SENDER, to=person.address, subject=f"Order {i}", message_id=mid))
        for i, mid in enumerate(sorted(ids))
    ]
    fill_maildir(world.stack, person, raws)
    return person, ids


def wait_mid_job(world: SyncWorld, person: Person, n: int, worker: Worker) -> None:
    """Until the worker's job of PERSON's mailbox is running and has committed a batch."""

    def mid_job() -> bool:
        running = job_status(world.engine, person.mailbox_id) == ["doing"]
        return running and email_count(world.engine) > 0

    wait_until(mid_job, 60, "the job is running and has tracked its first batch", worker)
    assert email_count(world.engine) < n, "the first sync ended before the test could act"


# ---------------------------------------------------------------------- 1. scale-out
MAILBOXES = 200
DELIVERY_SECONDS = 60.0
MAX_ROUNDS = 2000


def test_two_workers_share_200_mailboxes_under_random_deliveries(
    world: SyncWorld, stack: Stack, start_worker: Callable[..., Worker]
) -> None:
    rng = random.Random(5)
    t0 = time.monotonic()
    people = [world.user(f"w{i:03d}") for i in range(MAILBOXES)]
    print(f"\n{MAILBOXES} CRM users with Dovecot mailboxes: {time.monotonic() - t0:.1f} s")
    speed_up(world.engine, 600)  # 5 min → 0.5 s, 12 min → 1.2 s
    workers = [start_worker(name, "--concurrency", "5") for name in ("alpha", "beta")]

    delivered: dict[uuid.UUID, list[str]] = defaultdict(list)
    last_delivery: dict[uuid.UUID, datetime] = {}

    def deliver(lmtp: smtplib.LMTP, person: Person, n: int) -> None:
        for _ in range(n):
            mid = f"<{uuid.uuid4().hex}@customer.test>"
            raw = make_mail(sender=SENDER, to=person.address, subject="Hi", message_id=mid)
            lmtp.sendmail(SENDER, [person.address], crlf(raw))  # one recipient per transaction
            delivered[person.mailbox_id].append(mid)
        last_delivery[person.mailbox_id] = datetime.now(UTC)  # in the INBOX by now

    t0 = time.monotonic()
    with smtplib.LMTP(stack.host, stack.lmtp_port) as lmtp:
        for person in people:  # every mailbox gets mail at least once
            deliver(lmtp, person, 1)
        for _ in range(MAX_ROUNDS):
            if time.monotonic() - t0 > DELIVERY_SECONDS:
                break
            time.sleep(rng.uniform(0.02, 0.12))
            # mostly one or two messages, sometimes a burst (a "busy" mailbox: fastest interval)
            n = rng.choice([1, 1, 1, 2, 3]) if rng.random() < 0.95 else rng.randint(10, 20)
            deliver(lmtp, rng.choice(people), n)
    total = sum(len(v) for v in delivered.values())
    print(f"{total} messages delivered in {time.monotonic() - t0:.1f} s")

    def behind() -> list[uuid.UUID]:
        """mailboxes without a finished run that started after their last delivery"""
        newest: dict[str, datetime] = {}
        for run in (run for w in workers for run in w.runs()):
            started = when(run, "started_at")
            newest[run["mailbox_id"]] = max(started, newest.get(run["mailbox_id"], started))
        return [
            p.mailbox_id
            for p in people
            if newest.get(str(p.mailbox_id), LONG_AGO) <= last_delivery[p.mailbox_id]
        ]

    def progress() -> str:
        return f"{email_count(world.engine)} of {total} tracked, {len(behind())} mailboxes behind"

    t0 = time.monotonic()
    wait_until(
        lambda: not behind() and email_count(world.engine) >= total,
        90,
        "every mailbox synced after its last delivery, every message tracked",
        *workers,
        progress=progress,
    )
    print(f"caught up {time.monotonic() - t0:.1f} s after the last delivery")
    for w in workers:
        assert w.terminate() == 0, w.tail()

    runs = [run for w in workers for run in w.runs()]
    per_worker = Counter(run["worker"] for run in runs)
    durations = sorted(
        (when(run, "finished_at") - when(run, "started_at")).total_seconds() for run in runs
    )
    lags = sorted(run["lag_seconds"] or 0.0 for run in runs)
    print(
        f"runs per worker: {dict(per_worker)}; run median {durations[len(runs) // 2]:.2f} s; "
        f"lag median {lags[len(runs) // 2]:.1f} s, max {lags[-1]:.1f} s (figures, not asserted)"
    )
    # both workers did work
    assert set(per_worker) == {"alpha", "beta"} and min(per_worker.values()) >= 10
    # every run succeeded (a "busy" run would mean two jobs of one mailbox raced for it)
    assert Counter(run["result"] for run in runs) == Counter({"ok": len(runs)})
    # never two runs of one mailbox at the same time, on one worker or across both
    assert overlapping_runs(runs) == []
    # every mailbox ran at least once after its last delivery, and that run is recorded
    assert behind() == []
    with Session(world.engine) as s:
        rows = s.execute(sa.select(Mailbox.id, Mailbox.last_sync_finished_at))
        finished = {row.id: row.last_sync_finished_at for row in rows}
    for person in people:
        done = finished[person.mailbox_id]
        assert done is not None and done > last_delivery[person.mailbox_id]
    # every delivered message tracked exactly once, nothing else tracked
    counts = tracked_ids(world.engine)
    expected = {mid for mids in delivered.values() for mid in mids}
    assert len(expected) == total
    assert set(counts) == expected
    assert {n for n in counts.values()} == {1}
    assert sum(run["tracked"] for run in runs) == total
    with Session(world.engine) as s:
        states = Counter(
            (row.state, row.last_error_count)
            for row in s.execute(sa.select(Mailbox.state, Mailbox.last_error_count))
        )
    assert states == Counter({(MailboxState.ENABLED, 0): MAILBOXES})
    # successful job rows are deleted; nothing left running or failed after a graceful stop
    statuses = Counter(j.status for j in job_rows(world.engine))
    assert not statuses.keys() - {"todo"}, statuses


# ---------------------------------------------------------------------- 2. SIGKILL
def test_a_killed_workers_mailbox_is_finished_by_another_worker(
    world: SyncWorld, start_worker: Callable[..., Worker]
) -> None:
    n = 4000
    anna, ids = big_mailbox(world, n, "killed")
    first = start_worker("a", "--stalled-after", "3")
    wait_mid_job(world, anna, n, first)
    assert first.kill() == -signal.SIGKILL
    # B takes the job over once A's heartbeat is 3 s old; starting B after that lets B's first
    # housekeeping pass (at its start) find it rather than the one 15 s later.
    time.sleep(3.5)
    partial = email_count(world.engine)  # (a COMMIT A sent just before dying has landed)
    assert 0 < partial < n
    assert job_status(world.engine, anna.mailbox_id) == ["doing"]  # left behind by the dead
    second = start_worker("b", "--stalled-after", "3")

    wait_until(lambda: email_count(world.engine) >= n, 90, "every message tracked", second)
    wait_until(lambda: any(second.runs()), 30, "B logged its run", second)
    assert second.terminate() == 0, second.tail()

    counts = tracked_ids(world.engine)
    assert set(counts) == ids and set(counts.values()) == {1}
    [run] = second.runs()
    assert run["mailbox_id"] == str(anna.mailbox_id) and run["result"] == "ok"
    assert run["tracked"] == n - partial  # B resumed: what A committed was not redone
    recovered = second.events("recovered the jobs of a dead worker")
    assert recovered and recovered[0]["mailboxes"] == [str(anna.mailbox_id)]
    assert first.runs() == []  # A never finished its job
    # A's job was ended as failed (freeing the lock); B's succeeded and was deleted
    assert job_status(world.engine, anna.mailbox_id) == ["failed"]
    synced = mailbox(world.engine, anna.mailbox_id)
    assert synced.state is MailboxState.ENABLED and synced.last_error_count == 0
    assert synced.last_sync_finished_at is not None


# ---------------------------------------------------------------------- 3. wrong password
def test_a_wrong_password_disables_the_mailbox_and_alerts_its_owner(
    world: SyncWorld, stack: Stack, start_worker: Callable[..., Worker]
) -> None:
    anna = world.user("anna")
    # A failed login makes Dovecot slow down further logins from the same address; this one
    # comes from a random 127.x.y.z so that other tests (and parallel runs) do not pay for it.
    forwarder = SourceForwarder((stack.host, stack.imap_port))
    try:
        with Session(world.engine) as s, s.begin():
            m = s.get_one(Mailbox, anna.mailbox_id)
            m.imap_url = f"imap://127.0.0.1:{forwarder.port}"
            m.credential = world.box.encrypt(Secret(WRONG_PASSWORD), bound_to=f"mailbox:{m.id}")
        worker = start_worker("solo")
        wait_until(
            lambda: mailbox(world.engine, anna.mailbox_id).state is MailboxState.DISABLED,
            60,
            "the mailbox is disabled",
            worker,
        )
        wait_until(lambda: any(worker.runs()), 30, "the run is logged", worker)
        assert worker.terminate() == 0, worker.tail()
    finally:
        forwarder.close()

    stopped = mailbox(world.engine, anna.mailbox_id)
    assert stopped.last_error_code == "AuthenticationFailed"
    assert stopped.schedule_code == "permanent" and stopped.next_sync_at is None
    assert len(stopped.sync_history) == 1  # disabled at once, not retried
    [run] = worker.runs()
    assert (run["result"], run["error_code"]) == ("disabled", "AuthenticationFailed")
    with Session(world.engine) as s:
        alerts = s.scalars(sa.select(Alert)).all()
    assert [(a.code, a.recipient_id, a.mailbox_id) for a in alerts] == [
        ("mailbox.disabled", anna.user_id, anna.mailbox_id)
    ]
    assert WRONG_PASSWORD not in alerts[0].message
    assert WRONG_PASSWORD not in worker.log_path.read_text()


# ---------------------------------------------------------------------- 4. server down, then up
class Outage:
    """The IMAP server as the worker sees it: a TCP forwarder to the stack's Dovecot on a fixed
    port that can go down (new connections refused, open ones cut) and come back on that port.

    The stack's Dovecot is shared by every test of every concurrent run; stopping it would fail
    theirs, so the outage is staged here. What the worker meets is the same as with Dovecot
    stopped: ECONNREFUSED, and connections closed under it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.up()

    def up(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: same port
        server.settimeout(0.1)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, server: socket.socket) -> None:
        while self._server is server:
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)


def test_a_server_outage_records_transient_errors_then_recovers(
    world: SyncWorld, stack: Stack, start_worker: Callable[..., Worker]
) -> None:
    anna = world.user("anna")
    outage = Outage((stack.host, stack.imap_port))
    try:
        with Session(world.engine) as s, s.begin():
            s.get_one(Mailbox, anna.mailbox_id).imap_url = f"imap://127.0.0.1:{outage.port}"
        # 5 min → 3 s: the retry after an error comes 3 s later, so a few seconds of outage
        # make a few errors, far from the 10th (which would disable the mailbox)
        speed_up(world.engine, 100)
        world.append(anna, make_mail(sender=SENDER, to=anna.address, subject="Before"))
        worker = start_worker("solo")
        # (the first run over, not only its message tracked: the outage must not cut it)
        wait_until(
            lambda: any(run["result"] == "ok" for run in worker.runs()),
            30,
            "the first run tracked the first message",
            worker,
        )
        assert email_count(world.engine) == 1

        outage.down()
        wait_until(
            lambda: mailbox(world.engine, anna.mailbox_id).last_error_count >= 2,
            60,
            "two failed runs while the server is down",
            worker,
        )
        failing = mailbox(world.engine, anna.mailbox_id)
        assert failing.state is MailboxState.ENABLED
        assert failing.last_error_code == "ServerUnavailable"
        assert failing.schedule_code == "transient_retry" and failing.next_sync_at is not None
        assert [o["transient"] for o in failing.sync_history[-2:]] == [True, True]

        outage.up()
        world.append(anna, make_mail(sender=SENDER, to=anna.address, subject="After"))
        wait_until(
            lambda: (
                email_count(world.engine) == 2
                and mailbox(world.engine, anna.mailbox_id).last_error_count == 0
            ),
            60,
            "a run after the restart succeeded and tracked the new message",
            worker,
        )
        assert worker.terminate() == 0, worker.tail()
    finally:
        outage.down()

    recovered = mailbox(world.engine, anna.mailbox_id)
    assert recovered.state is MailboxState.ENABLED and recovered.last_error_code is None
    results = [run["result"] for run in worker.runs()]
    # ok before the outage, errors during it, ok again after; never disabled
    assert "error" in results and "disabled" not in results
    first_error = results.index("error")
    assert "ok" in results[:first_error] and "ok" in results[first_error:]
    assert {e.subject for e in world.emails()} == {"Before", "After"}
    with Session(world.engine) as s:
        codes = sorted(s.scalars(sa.select(Alert.code)).all())
    assert codes == ["mailbox.error"]  # warned once at the first error; never disabled


# ---------------------------------------------------------------------- 5. graceful shutdown
def test_sigterm_lets_the_running_sync_finish_before_the_worker_exits(
    world: SyncWorld, start_worker: Callable[..., Worker]
) -> None:
    n = 4000
    anna, ids = big_mailbox(world, n, "graceful")
    worker = start_worker("solo", "--graceful-timeout", "120")
    wait_mid_job(world, anna, n, worker)
    signalled = datetime.now(UTC)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(150) == 0, worker.tail()

    # the sync was not cut short: every message is tracked, once, by that one run
    counts = tracked_ids(world.engine)
    assert set(counts) == ids and set(counts.values()) == {1}
    [run] = worker.runs()
    assert run["result"] == "ok" and run["tracked"] == n
    assert when(run, "started_at") < signalled < when(run, "finished_at")
    assert worker.events("worker stopped")
    # the job ended (succeeded, so deleted), not left "doing"; the run is recorded
    assert job_status(world.engine, anna.mailbox_id) == []
    synced = mailbox(world.engine, anna.mailbox_id)
    assert synced.last_sync_finished_at is not None and synced.last_sync_finished_at > signalled
    assert synced.last_error_count == 0 and synced.next_sync_at is not None
    assert len(synced.sync_history) == 1
