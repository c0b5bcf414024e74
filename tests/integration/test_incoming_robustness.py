"""The incoming sync under crashes, server-side resets, hostile mail and concurrency.

Everything runs against the test stack's Dovecot and PostgreSQL; nothing is mocked. The crash
test runs the sync in a child process (tests/integration/_sync_child.py) and SIGKILLs it.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.config import Settings
from crmsync.crm.activities import Email
from crmsync.crm.audit import AuditEvent
from crmsync.crm.base import IncomingEmailFilter
from crmsync.crm.decisions import MessageDecision, Outcome
from crmsync.crm.mailboxes import Mailbox
from crmsync.crm.tracking import TrackedMessage
from crmsync.secrets import Secret, SecretBox, new_key
from crmsync.sync.incoming import sync_mailboxes
from tests.fixtures.mail_corpus import corpus
from tests.forwarder import SourceForwarder
from tests.stackfix import Stack
from tests.syncworld import Person, SyncWorld, make_mail

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONTACT = "carl@customer.test"


@pytest.fixture
def world(engine: Engine, stack: Stack, tmp_path: Path) -> SyncWorld:
    w = SyncWorld(engine, stack, tmp_path)
    w.contact("Carl Customer", CONTACT)
    return w


# ---------------------------------------------------------------------- helpers
def fill_maildir(stack: Stack, person: Person, raws: list[bytes]) -> None:
    """RAWS written straight into the person's Maildir/cur (seconds, not minutes of APPEND).

    The stack's layout (docs/test-stack.md): ``maildir_root/<user>/Maildir``, files owned by
    ``nobody``; the names carry the size so Dovecot need not read a file to learn it.
    """
    with stack.imap(person.mail) as client:
        client.select_folder("INBOX")  # Dovecot creates the Maildir (owned by nobody)
    cur = stack.maildir_root / person.mail.username / "Maildir" / "cur"
    assert cur.is_dir()
    stamp, pid = int(time.time()), os.getpid()
    for n, raw in enumerate(raws):
        path = cur / f"{stamp}.P{pid}Q{n}.robust.test,S={len(raw)},W={len(raw)}:2,"
        path.write_bytes(raw)
        os.chown(path, *_nobody())
    # Dovecot rescans a maildir on every access while its mtime is recent: date it back
    past = time.time() - 120
    for sub in ("cur", "new"):
        os.utime(cur.parent / sub, (past, past))
    with stack.imap(person.mail, timeout=120) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == len(raws)


def _nobody() -> tuple[int, int]:
    import grp
    import pwd

    return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid


def crlf(msg) -> bytes:  # type: ignore[no-untyped-def]
    return msg.as_bytes(policy=policy.SMTP)


def bulk(person: Person, n: int, prefix: str) -> list[bytes]:
    return [
        crlf(
            make_mail(
                sender=f"Carl Customer <{CONTACT}>",
                to=person.address,
                subject=f"{prefix} order {i}",
                body=f"Order number {i}, please confirm.",
                message_id=f"<{prefix}-{i}@customer.test>",
            )
        )
        for i in range(n)
    ]


def count(engine: Engine, query: sa.Select) -> int:  # type: ignore[type-arg]
    with Session(engine) as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0)


def decision_counts(engine: Engine, mailbox_id: uuid.UUID) -> tuple[int, int]:
    """(decisions, marked decisions) of a mailbox."""
    with Session(engine) as s:
        total = s.scalar(sa.select(sa.func.count()).where(MessageDecision.mailbox_id == mailbox_id))
        marked = s.scalar(
            sa.select(sa.func.count()).where(
                MessageDecision.mailbox_id == mailbox_id, MessageDecision.marked.is_(True)
            )
        )
    return int(total or 0), int(marked or 0)


def cursor_stored(engine: Engine, mailbox_id: uuid.UUID) -> bool:
    with Session(engine) as s:
        return bool(
            s.scalar(
                sa.text(
                    "SELECT count(*) FROM mailbox_folder WHERE mailbox_id = :m "
                    "AND uidnext IS NOT NULL"
                ),
                {"m": mailbox_id},
            )
        )


# ---------------------------------------------------------------------- 1. SIGKILL
class Child:
    """One sync run in a child process; its progress lines are read by a thread."""

    def __init__(self, database_url: str, person: Person, key: str, home: Path, batch: int):
        env = {**os.environ, "CRMSYNC_CHILD_SECRET_KEY": key, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration._sync_child",
                database_url,
                str(person.mailbox_id),
                str(home),
                str(batch),
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.total: int | None = None
        self.advanced = 0
        self.done: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("")

    def wait_for(self, predicate, timeout: float = 60) -> bool:  # type: ignore[no-untyped-def]
        """Read progress until PREDICATE holds (True) or the child ends (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError("the child gave no progress in time") from None
            if line == "":
                return False
            word, _, rest = line.partition(" ")
            if word == "started":
                self.total = int(rest.split()[-1])
            elif word == "advanced":
                self.advanced += int(rest)
            elif word == "done":
                self.done = rest
        return True

    def kill(self) -> bool:
        """SIGKILL; True when the child was still running (not finished) when killed."""
        running = self.proc.poll() is None and self.done is None
        self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(10)
        return running and code == -signal.SIGKILL


def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    world: SyncWorld, stack: Stack, database_url: str, tmp_path: Path
) -> None:
    n, batch = 2000, 100
    key = new_key()
    world.box = SecretBox(
        Settings(
            home=tmp_path,
            database_url=None,
            secret_keys=(key,),
            log_level="warning",
            log_format="console",
        )
    )
    anna = world.user("kill", incoming=IncomingEmailFilter.LEADS_CONTACTS_ACCOUNTS)
    started = time.monotonic()
    fill_maildir(stack, anna, bulk(anna, n, "kill"))
    fill_s = time.monotonic() - started

    rng = random.Random(20_26_11)
    # where each kill should land: (kind, parameter)
    plan = [
        ("headers", rng.uniform(0.0, 0.05)),  # just after the first header FETCH began
        ("batch", rng.uniform(0.1, 0.3)),  # mid-batch, after a fraction of the run
        ("batch", rng.uniform(0.2, 0.5)),
        ("batch", rng.uniform(0.3, 0.6)),
        ("marking", rng.uniform(0.0, 0.01)),  # after the last batch: cursor / keywords
    ]
    kills: list[dict[str, object]] = []
    attempts = 0
    while len(kills) < len(plan):
        attempts += 1
        assert attempts <= 15, f"could not land the kills: {kills}"
        kind, param = plan[len(kills)]
        child = Child(database_url, anna, key, tmp_path / "child", batch)
        try:
            if not child.wait_for(lambda c=child: c.total is not None):
                continue  # busy (the killed run's lock not yet released) or finished
            total = child.total or 0
            if kind == "headers":
                time.sleep(param)
            elif kind == "batch":
                target = max(batch, int(total * param) // batch * batch)
                if total <= target or not child.wait_for(lambda c=child, t=target: c.advanced >= t):
                    continue
                time.sleep(rng.uniform(0.0, 0.15))
            else:
                if not child.wait_for(lambda c=child, t=total: c.advanced >= t):
                    continue
                time.sleep(param)
            if not child.kill():
                continue  # finished before the kill: does not count
        finally:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(10)
        decided, marked = decision_counts(world.engine, anna.mailbox_id)
        kills.append(
            {
                "kind": kind,
                "to_do": total,
                "advanced": child.advanced,
                "decided": decided,
                "marked": marked,
                "cursor": cursor_stored(world.engine, anna.mailbox_id),
                "at": round(time.monotonic() - started, 1),
            }
        )
        # a batch commits whole or not at all
        assert decided % batch == 0 or decided == n, kills[-1]

    # the runs after the kills pick up where the last one stopped (a killed run's advisory
    # lock goes when PostgreSQL notices the dead connection: "busy" until then)
    for _ in range(50):
        report = world.sync(anna, batch_size=batch)
        if not report.busy:
            break
        time.sleep(0.1)
    assert report.ok, report.error
    total_s = time.monotonic() - started
    print(f"\nfill {fill_s:.1f}s, attempts {attempts}, total {total_s:.1f}s")
    for k in kills:
        print("  kill", k)
    print("  final run", report.tracked, "tracked,", report.seen, "seen")

    assert any(0 < int(k["decided"]) < n for k in kills)  # some landed mid-run
    with Session(world.engine) as s:
        print(
            Counter(s.scalars(sa.select(MessageDecision.outcome))),
            s.scalar(sa.select(sa.func.count()).where(MessageDecision.email_id.is_(None))),
            s.scalar(sa.select(sa.func.count()).select_from(Email)),
            s.scalar(sa.select(sa.func.count()).select_from(TrackedMessage)),
            s.scalar(
                sa.select(sa.func.count()).where(~MessageDecision.email_id.in_(sa.select(Email.id)))
            ),
        )
        assert s.scalar(sa.select(sa.func.count()).select_from(Email)) == n
        assert s.scalar(sa.select(sa.func.count(sa.distinct(Email.message_id)))) == n
        assert s.scalar(sa.select(sa.func.count()).select_from(TrackedMessage)) == n
        assert s.scalar(sa.select(sa.func.count(sa.distinct(TrackedMessage.email_id)))) == n
        rows = s.execute(
            sa.select(MessageDecision.outcome, MessageDecision.marked, MessageDecision.email_id)
        ).all()
    assert len(rows) == n
    assert all(r.outcome is Outcome.TRACKED and r.marked and r.email_id for r in rows)
    assert len({r.email_id for r in rows}) == n
    with stack.imap(anna.mail) as client:
        client.select_folder("INBOX", readonly=True)
        assert len(client.search(["KEYWORD", "$CRMTracked"])) == n

    # the killed runs' parser workers (and their forkserver) noticed and ended
    orphans: list[int] = []
    for _ in range(50):
        orphans = orphaned_parser_processes()
        if not orphans:
            break
        time.sleep(0.2)
    assert orphans == [], f"parser processes outlived their killed sync: {orphans}"


def orphaned_parser_processes() -> list[int]:
    """Forkserver processes (and pool workers) of crmsync's parser whose owner is gone: the
    forkserver is re-parented to init (PID 1) when the process that started it dies."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parser = b"multiprocessing.forkserver" in cmdline and b"crmsync.sync.parsing" in cmdline
        if parser and ppid == 1:
            found.append(int(entry.name))
    return found


# ---------------------------------------------------------------------- 2. UIDVALIDITY
def doveadm(stack: Stack, *args: str) -> str:
    result = subprocess.run(
        ["doveadm", "-c", str(stack.dir / "dovecot" / "dovecot.conf"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_uidvalidity_reset_remaps_decisions_and_tracks_nothing_twice(
    world: SyncWorld, stack: Stack
) -> None:
    anna = world.user("uidv", incoming=IncomingEmailFilter.LEADS_CONTACTS_ACCOUNTS)
    for i in range(3):
        world.append(anna, make_mail(sender=CONTACT, to=anna.address, subject=f"known {i}"))
    for i in range(2):
        world.append(anna, make_mail(sender="x@stranger.test", to=anna.address, subject=f"s{i}"))
    first = world.sync(anna)
    assert (first.tracked, first.seen) == (3, 5)
    before = {d.message_id: d for d in world.decisions(anna)}

    # "The folder was recreated" (a server migration, a restored backup): the same messages
    # come back under new UIDs and a new UIDVALIDITY. INBOX cannot be deleted in Dovecot, so
    # its messages are taken out (FETCH, then EXPUNGE), its UIDVALIDITY is changed with
    # `doveadm mailbox update --uid-validity`, and they are APPENDed again in reverse order,
    # without keywords: every message gets a new UID (6..10), under the new UIDVALIDITY.
    with stack.imap(anna.mail) as client:
        old_uidvalidity = client.select_folder("INBOX")[b"UIDVALIDITY"]
        uids = client.search("ALL")
        data = client.fetch(uids, ["BODY.PEEK[]", "INTERNALDATE"])
        client.delete_messages(uids)
        client.expunge()
    new_uidvalidity = old_uidvalidity + 1000
    doveadm(stack, "mailbox", "update", "-u", anna.mail.username, "--uid-validity",
            str(new_uidvalidity), "INBOX")  # fmt: skip
    with stack.imap(anna.mail) as client:
        for uid in reversed(uids):
            client.append("INBOX", data[uid][b"BODY[]"], msg_time=data[uid][b"INTERNALDATE"])
        assert client.select_folder("INBOX")[b"UIDVALIDITY"] == new_uidvalidity

    report = world.sync(anna)

    assert report.ok, report.error
    assert report.uidvalidity_changed == ["INBOX"]
    assert (report.tracked, report.linked, report.remapped) == (0, 0, 5)
    assert len(world.emails()) == 3
    after = {d.message_id: d for d in world.decisions(anna)}
    assert len(after) == 5 and after.keys() == before.keys()
    for mid, row in after.items():
        old = before[mid]
        assert row.uidvalidity == new_uidvalidity and row.uid != old.uid and row.uid > 5
        assert (row.outcome, row.reason, row.email_id) == (old.outcome, old.reason, old.email_id)
        assert "Re-mapped" in row.detail
    with Session(world.engine) as s:
        links = s.scalars(sa.select(TrackedMessage)).all()
        assert len(links) == 3
        assert all(t.uidvalidity == new_uidvalidity for t in links)
        assert {t.uid for t in links} == {
            d.uid for d in after.values() if d.outcome is Outcome.TRACKED
        }
        [event] = s.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "mailbox.uidvalidity_changed")
        ).all()
    # the tracked copies get the keyword again under their new UIDs
    tracked_uids = {d.uid for d in after.values() if d.outcome is Outcome.TRACKED}
    with stack.imap(anna.mail) as client:
        client.select_folder("INBOX", readonly=True)
        assert set(client.search(["KEYWORD", "$CRMTracked"])) == tracked_uids
    assert event.target_id == str(anna.mailbox_id)

    # a message arriving after the reset is tracked normally
    world.append(anna, make_mail(sender=CONTACT, to=anna.address, subject="after the reset"))
    later = world.sync(anna)
    assert later.ok and later.uidvalidity_changed == []
    assert (later.tracked, later.remapped, later.seen) == (1, 0, 1)
    assert len(world.emails()) == 4


# ---------------------------------------------------------------------- 3. hostile corpus
def test_the_malformed_corpus_through_the_server_never_breaks_the_sync(
    world: SyncWorld, stack: Stack
) -> None:
    anna = world.user("corpus", incoming=IncomingEmailFilter.ALL)
    accepted: dict[int, str] = {}
    refused: dict[str, str] = {}
    cases = [c for c in corpus() if c.parseable]
    with stack.imap(anna.mail) as client:
        for n, case in enumerate(cases):
            # one activity per case: the corpus reuses one Message-ID, which would make every
            # later case a mere link to the first one's activity (never parsed itself)
            raw = case.raw.replace(b"<corpus-1@example.com>", f"<corpus-{n}@x.test>".encode())
            try:
                response = client.append("INBOX", raw, msg_time=datetime.now(UTC))
            except Exception as exc:  # the server refused this one: recorded, not asserted
                refused[case.name] = str(exc)[:120]
                continue
            text = response.decode() if isinstance(response, bytes) else str(response)
            accepted[int(text.split("]")[0].split()[-1])] = case.name
    print(f"\n{len(accepted)} accepted, {len(refused)} refused by Dovecot: {refused}")
    assert len(accepted) >= 50

    report = world.sync(anna)

    assert report.ok, report.error
    decisions = {d.uid: d for d in world.decisions(anna)}
    assert decisions.keys() == accepted.keys()
    email_ids = {e.id for e in world.emails()}
    summary: Counter[str] = Counter()
    for uid, d in decisions.items():
        summary[f"{d.outcome.value}:{d.reason}"] += 1
        if d.outcome in (Outcome.TRACKED, Outcome.LINKED):
            assert d.email_id in email_ids, accepted[uid]
        elif d.outcome in (Outcome.QUARANTINED, Outcome.FAILED):
            print("  quarantined", accepted[uid], d.reason, d.detail[:160])
            assert d.reason and d.detail, accepted[uid]
        else:
            assert d.reason, accepted[uid]
    print("  outcomes:", dict(summary))
    assert report.seen == len(accepted)


# ---------------------------------------------------------------------- 4. quarantine
# A real store failure: PostgreSQL itself refuses one message's row, through a trigger the
# test installs (crmsync cleans what it knows PostgreSQL refuses, such as NUL in text, so no
# mail content is known to fail any more; a trigger stands for the unknown next one).
UNSTORABLE = (
    b"From: =?utf-8?q?Carl=00Customer?= <carl@customer.test>\r\n"
    b"To: someone@example.test\r\nSubject: =?utf-8?q?nul=00here?=\r\n"
    b"Message-ID: <unstorable@customer.test>\r\n\r\nhello\r\n"
)
UNSTORABLE_REASON = "store_failed"
POISON_TRIGGER = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.message_id = 'unstorable@customer.test' THEN
    RAISE EXCEPTION 'refused by the test''s trigger';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON email FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


def test_a_message_that_cannot_be_stored_is_quarantined_and_retried_later(
    world: SyncWorld,
) -> None:
    anna = world.user("quar", incoming=IncomingEmailFilter.ALL)
    with world.engine.begin() as conn:
        conn.exec_driver_sql(POISON_TRIGGER)
    for i in range(3):
        world.append(anna, make_mail(sender=CONTACT, to=anna.address, subject=f"fine {i}"))
    world.append(anna, UNSTORABLE)
    world.append(anna, make_mail(sender=CONTACT, to=anna.address, subject="fine 3"))

    report = world.sync(anna)

    assert report.ok, report.error
    assert (report.tracked, report.quarantined) == (4, 1)
    bad = next(d for d in world.decisions(anna) if d.outcome is Outcome.QUARANTINED)
    assert bad.uid == 4 and bad.reason == UNSTORABLE_REASON and bad.attempts == 1
    assert bad.detail and bad.next_attempt_at is not None
    # the database's reason, never the message's content (the trace is metadata only)
    assert "refused by the test's trigger" in bad.detail
    assert "nul" not in bad.detail.replace("NUL", "") and "hello" not in bad.detail
    assert bad.next_attempt_at > datetime.now(UTC) + timedelta(minutes=4)
    assert sorted(e.subject for e in world.emails()) == [f"fine {i}" for i in range(4)]

    # not retried before its time
    again = world.sync(anna)
    assert again.ok and again.seen == 0
    # due: retried (and quarantined again, with back-off)
    with Session(world.engine) as s, s.begin():
        row = s.get(MessageDecision, bad.id)
        assert row is not None
        row.next_attempt_at = datetime.now(UTC) - timedelta(seconds=1)
    retry = world.sync(anna)
    assert retry.ok and (retry.seen, retry.quarantined) == (1, 1)
    row = next(d for d in world.decisions(anna) if d.uid == 4)
    assert row.attempts == 2 and row.outcome is Outcome.QUARANTINED
    assert row.next_attempt_at is not None
    assert row.next_attempt_at > datetime.now(UTC) + timedelta(minutes=9)
    assert len(world.emails()) == 4


# ---------------------------------------------------------------------- 5. change detection
@pytest.mark.parametrize("mode", ["qresync", "condstore", "uid_diff"])
def test_each_change_detection_mode_finds_new_mail_and_only_that(
    world: SyncWorld, mode: str
) -> None:
    anna = world.user("mode", incoming=IncomingEmailFilter.LEADS_CONTACTS_ACCOUNTS)
    world.append(anna, make_mail(sender=CONTACT, to=anna.address, subject="one"))
    first = world.sync(anna, mode=mode)
    assert first.ok and first.modes["INBOX"] == mode and first.tracked == 1

    world.append(anna, make_mail(sender=CONTACT, to=anna.address, subject="two"))
    world.append(anna, make_mail(sender="x@stranger.test", to=anna.address, subject="three"))
    second = world.sync(anna, mode=mode)
    assert second.ok, second.error
    assert second.modes["INBOX"] == mode
    assert (second.tracked, second.seen) == (1, 2)

    for _ in range(2):  # nothing changed (the second time not even a keyword)
        idle = world.sync(anna, mode=mode)
        assert idle.ok, idle.error
        assert idle.modes["INBOX"] == mode and idle.seen == 0
    assert sorted(e.subject for e in world.emails()) == ["one", "two"]


# ---------------------------------------------------------------------- 6. concurrency
def test_two_mailboxes_with_the_same_mail_synced_at_once_make_each_activity_once(
    world: SyncWorld, stack: Stack
) -> None:
    n = 300
    amy, bob = world.user("amy"), world.user("bob")
    raws = bulk(amy, n, "shared")  # the same bytes in both mailboxes
    fill_maildir(stack, amy, raws)
    fill_maildir(stack, bob, raws)

    reports = run_at_once(world, [amy, bob])

    assert all(r.ok for r in reports), [r.error for r in reports]
    assert sum(r.tracked for r in reports) == n
    assert sum(r.tracked + r.linked for r in reports) == 2 * n
    with Session(world.engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Email)) == n
        per_email = Counter(s.scalars(sa.select(TrackedMessage.email_id)))
        mailboxes = set(s.scalars(sa.select(TrackedMessage.mailbox_id)))
    assert len(per_email) == n and set(per_email.values()) == {2}
    assert mailboxes == {amy.mailbox_id, bob.mailbox_id}


def test_the_same_mailbox_synced_twice_at_once_runs_once(world: SyncWorld, stack: Stack) -> None:
    n = 300
    amy = world.user("twice")
    fill_maildir(stack, amy, bulk(amy, n, "twice"))

    reports = run_at_once(world, [amy, amy])

    assert sorted(r.busy for r in reports) == [False, True]
    done = next(r for r in reports if not r.busy)
    assert done.ok and done.tracked == n
    assert len(world.emails()) == n
    assert len(world.decisions(amy)) == n


def run_at_once(world: SyncWorld, people: list[Person]) -> list:  # type: ignore[type-arg]
    barrier = threading.Barrier(len(people))
    reports: list = [None] * len(people)  # type: ignore[type-arg]

    def run(i: int) -> None:
        barrier.wait()
        reports[i] = world.sync(people[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(people))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None for r in reports)
    return reports


# ---------------------------------------------------------------------- 7. isolation


def test_one_failing_mailbox_never_stops_the_others(world: SyncWorld, stack: Stack) -> None:
    people = [world.user(n) for n in ("first", "middle", "last")]
    for p in people:
        world.append(p, make_mail(sender=CONTACT, to=p.address, subject=f"to {p.address}"))
    middle = people[1]
    forwarder = SourceForwarder((stack.host, stack.imap_port))
    try:
        with Session(world.engine) as s, s.begin():
            mailbox = s.get(Mailbox, middle.mailbox_id)
            assert mailbox is not None
            mailbox.imap_url = f"imap://127.0.0.1:{forwarder.port}"
            mailbox.credential = world.box.encrypt(
                Secret("not the password"), bound_to=f"mailbox:{mailbox.id}"
            )
        reports = sync_mailboxes(
            world.engine, box=world.box, mailbox_ids=[p.mailbox_id for p in people]
        )
    finally:
        forwarder.close()

    first, bad, last = reports
    assert first.ok and first.tracked == 1
    assert last.ok and last.tracked == 1
    assert not bad.ok and bad.error_code == "AuthenticationFailed" and bad.error
    assert bad.tracked == 0
    assert len(world.emails()) == 2
    with Session(world.engine) as s:
        row = s.get(Mailbox, middle.mailbox_id)
        assert row is not None and row.last_error_code == "AuthenticationFailed"
