"""Benchmark (issue 6): crmsync sending 1,000 queued emails against a plain smtplib loop.

    .venv/bin/python -m bench.outgoing_bench [--count 1000] [--json PATH] [--keep]
    .venv/bin/python -m bench.outgoing_bench --count 200 --profile PATH   # cProfile of crmsync

In one run, on a private stack (``stack/up.sh .stack/bench-out``, stopped at the end, also on
error, unless ``--keep``):

1. a fresh PostgreSQL database with a user and their approved, enabled mailbox (IMAP on the
   stack's Dovecot, ``smtp://127.0.0.1:<port>`` on the stack's relay, password encrypted with
   ``SecretBox``), ``allow_unresolved_recipients`` on;
2. N emails queued with ``crmsync.sync.outbox.queue_email`` to an outside address
   (``bench@elsewhere.test``: the relay writes each to its outbox dir, the same cost for both
   sides); their bytes composed once with crmsync's own ``compose`` for the baseline (untimed);
3. timed, in this order: baseline A (``smtplib.SMTP`` per message: connect, EHLO, AUTH,
   MAIL/RCPT/DATA, QUIT), baseline B (one connection, one login, all messages), crmsync
   (``crmsync.sync.outgoing.send_mailbox``), then baseline A and B again; each baseline figure
   is the mean of its two passes, which brackets the crmsync pass in time;
4. prints emails/s of each, the ratios crmsync / baseline (target >= 0.8 against A, the plain
   smtplib loop the issue names), PASS/FAIL, and writes the figures as JSON with ``--json``.

What crmsync does that the baseline does not: claims and composes batches of 25 from the stored
activities (``FOR UPDATE SKIP LOCKED``, recipient/attachment checks, ``sending`` + attempt
committed) on a thread ahead of the sender; records each email ``sent`` right after the
server's 250 (one UPDATE on a connection held for the run); and writes the Sent copies with
``\\Seen`` by MULTIAPPEND in batches on a second thread. crmsync keeps one SMTP connection for
the run (RSET between refused transactions), so baseline B shows what the protocol costs alone.
The machine is noisy: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import smtplib
import socket
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.stackfix import REPO_ROOT, MailUser, Stack, ensure_stack, stop_stack

from bench._dovecot_fill import maildir_of

DEFAULT_STACK_DIR = REPO_ROOT / ".stack" / "bench-out"
RECIPIENT = "bench@elsewhere.test"
TARGET_RATIO = 0.8
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def say(text: str) -> None:
    print(text, flush=True)


def body_text(i: int) -> str:
    """A plain business email of about 1-2 KB, different for each message."""
    lines = [
        "Hello,",
        "",
        f"thank you for your enquiry number {i}. As discussed, here is our offer for the",
        "services we talked about last week. Prices are in euros, without VAT.",
        "",
    ]
    lines += [f"  {n + 1}. Item {i}-{n}: {(i * 7 + n * 13) % 900 + 100} EUR" for n in range(i % 12)]
    lines += [
        "",
        "The offer is valid for 30 days. Delivery within two weeks of the order.",
        "Reply to this email if you have any questions; we are happy to help.",
        "",
        "Best regards,",
        "Bench Owner",
        "Bench Oy · Mannerheimintie 1 · 00100 Helsinki",  # non-ASCII: 8BITMIME / encoding
    ]
    return "\n".join(lines) + "\n" + "-- \n" + "This message is confidential. " * (10 + i % 20)


# ---------------------------------------------------------------------- the CRM
def setup_crm(stack: Stack, user: MailUser, db_name: str, home: Path) -> dict[str, Any]:
    """A fresh database: schema, business unit, the user and their sending mailbox."""
    from sqlalchemy.orm import Session

    from bench.import_bench import fresh_database
    from crmsync.config import Settings
    from crmsync.crm.mailboxes import ApprovalStatus, Mailbox, MailboxState
    from crmsync.crm.records import BusinessUnit, User
    from crmsync.crm.settings import set_setting
    from crmsync.db import make_engine, upgrade_schema
    from crmsync.secrets import Secret, SecretBox, new_key

    url = fresh_database(stack.postgres_url, db_name)
    box = SecretBox(
        Settings(
            home=home,
            database_url=None,
            secret_keys=(new_key(),),
            log_level="warning",
            log_format="console",
        )
    )
    engine = make_engine(url)
    upgrade_schema(engine)
    with Session(engine) as s, s.begin():
        unit = BusinessUnit(name="Bench Oy")
        s.add(unit)
        s.flush()
        owner = User(name="Bench Owner", username=user.username, business_unit_id=unit.id)
        owner.set_email(user.address)
        s.add(owner)
        s.flush()
        mailbox = Mailbox(
            id=uuid.uuid4(),
            owner_id=owner.id,
            name="bench",
            email_address=user.address,
            imap_url=f"imap://{stack.host}:{stack.imap_port}",
            smtp_url=f"smtp://127.0.0.1:{stack.smtp_port}",
            username=user.username,
            approval_status=ApprovalStatus.APPROVED,
            state=MailboxState.ENABLED,
            enabled_at=datetime.now(UTC),
            process_email_received_after=LONG_AGO,
        )
        mailbox.credential = box.encrypt(Secret(user.password), bound_to=f"mailbox:{mailbox.id}")
        s.add(mailbox)
        set_setting(s, "allow_unresolved_recipients", "true")
        s.flush()
        ids = {"user_id": owner.id, "mailbox_id": mailbox.id}
    return {"url": url, "engine": engine, "box": box, **ids}


def queue(crm: dict[str, Any], count: int) -> list[bytes]:
    """Queue COUNT emails; return the bytes crmsync will send for each (for the baseline)."""
    import sqlalchemy as sa
    from sqlalchemy.orm import Session, selectinload

    from crmsync.crm.activities import Email, EmailStatus
    from crmsync.crm.records import User
    from crmsync.mail.compose import compose
    from crmsync.sync.outbox import NewEmail, queue_email
    from crmsync.sync.outgoing import _message  # the activity -> OutgoingMessage step of a send

    engine = crm["engine"]
    with Session(engine) as s, s.begin():
        sender = s.get_one(User, crm["user_id"])
        for i in range(count):
            new = NewEmail(
                sender=sender,
                to=[RECIPIENT],
                subject=f"Offer {i} for your project",
                text_body=body_text(i),
            )
            queue_email(s, new, principal=None)
    with Session(engine) as s:
        emails = s.scalars(
            sa.select(Email)
            .where(Email.email_status == EmailStatus.PENDING_SEND)
            .order_by(Email.created_at, Email.id)
            .options(selectinload(Email.attachments))
        ).all()
        return [compose(_message(e)) for e in emails]


# ---------------------------------------------------------------------- the baseline
def _connect(stack: Stack, user: MailUser) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", stack.smtp_port, local_hostname=socket.gethostname())
    client.ehlo()
    client.login(user.username, user.password)
    return client


def _send(client: smtplib.SMTP, user: MailUser, data: bytes) -> None:
    refused = client.sendmail(user.address, [RECIPIENT], data)
    if refused:
        raise RuntimeError(f"the relay refused {refused}")


def baseline_per_connection(stack: Stack, user: MailUser, messages: list[bytes]) -> float:
    """One connection per message: the plain smtplib loop the issue compares against."""
    started = time.perf_counter()
    for data in messages:
        client = _connect(stack, user)
        _send(client, user, data)
        client.quit()
    return time.perf_counter() - started


def baseline_one_connection(stack: Stack, user: MailUser, messages: list[bytes]) -> float:
    """One connection and one login for all messages: the best a sender can do."""
    started = time.perf_counter()
    client = _connect(stack, user)
    for data in messages:
        _send(client, user, data)
    client.quit()
    return time.perf_counter() - started


def crmsync_send(crm: dict[str, Any], count: int, profile: Path | None) -> dict[str, Any]:
    from crmsync.sync.outgoing import send_mailbox

    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    report = send_mailbox(crm["engine"], crm["mailbox_id"], box=crm["box"], limit=count + 10)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    if profiler and profile:
        profiler.dump_stats(profile)
        say(f"  cProfile written to {profile}; top 25 by cumulative time:")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        say("  top 25 by own time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    if report.sent != count or report.failed or report.errors or report.stopped:
        raise RuntimeError(
            f"crmsync sent {report.sent} of {count}: failed {report.failed}, errors "
            f"{report.errors[:3]}, stopped {report.stopped}"
        )
    return {"seconds": seconds, "sent": report.sent}


def outbox_count(stack: Stack) -> int:
    return sum(1 for _ in stack.outbox_dir.glob("[0-9]*.json"))


def wait_outbox(stack: Stack, count: int, timeout: float = 60) -> None:
    """The relay writes the sidecar after its reply; wait until all COUNT are there."""
    deadline = time.monotonic() + timeout
    while outbox_count(stack) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the relay's outbox has {outbox_count(stack)} of {count}")
        time.sleep(0.05)


def clear_outbox(stack: Stack) -> None:
    for path in stack.outbox_dir.iterdir():
        if path.suffix in (".eml", ".json"):
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000, help="emails sent by each side")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--profile", type=Path, help="cProfile the crmsync pass into this file")
    parser.add_argument("--stack-dir", type=Path, default=DEFAULT_STACK_DIR)
    parser.add_argument("--keep", action="store_true", help="leave the stack, user and DB")
    args = parser.parse_args()
    n = args.count

    figures: dict[str, Any] = {
        "count": n,
        "recipient": RECIPIENT,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
    }
    say(f"stack: {args.stack_dir}")
    stack, started = ensure_stack(args.stack_dir)
    users: list[MailUser] = []
    databases: list[str] = []
    home = Path(tempfile.mkdtemp(prefix="crmsync-outgoing-bench-"))
    crm: dict[str, Any] | None = None
    try:
        user = stack.new_user("bout")
        users.append(user)
        db_name = f"bench_outgoing_{user.username}"
        databases.append(db_name)
        t0 = time.perf_counter()
        crm = setup_crm(stack, user, db_name, home)
        messages = queue(crm, n)
        if len(messages) != n:
            raise RuntimeError(f"{len(messages)} emails queued, {n} asked")
        size = statistics.mean(len(m) for m in messages)
        figures["mean_message_bytes"] = size
        say(f"queued {n:,} emails (mean {size:,.0f} bytes) in {time.perf_counter() - t0:.1f} s")

        # warm-up (untimed): the relay, the login path, the page cache
        clear_outbox(stack)
        baseline_per_connection(stack, user, messages[:20])
        baseline_one_connection(stack, user, messages[:20])

        passes: dict[str, list[float]] = {"per_connection": [], "one_connection": []}

        def run_baselines(label: str) -> None:
            for name, fn in (
                ("per_connection", baseline_per_connection),
                ("one_connection", baseline_one_connection),
            ):
                clear_outbox(stack)
                seconds = fn(stack, user, messages)
                wait_outbox(stack, n)
                passes[name].append(seconds)
                say(f"  baseline {name:<15} ({label}): {seconds:6.2f} s, {n / seconds:7.1f} /s")

        run_baselines("before")
        clear_outbox(stack)
        say(f"  crmsync send_mailbox of {n:,} emails ...")
        res = crmsync_send(crm, n, args.profile)
        wait_outbox(stack, n)
        figures["crmsync"] = res
        rate = n / res["seconds"]
        say(f"  crmsync send_mailbox        : {res['seconds']:6.2f} s, {rate:7.1f} /s")
        run_baselines("after")
        clear_outbox(stack)

        figures["baseline"] = {
            name: {"passes_s": secs, "seconds": statistics.mean(secs)}
            for name, secs in passes.items()
        }
        report(figures, n)
    finally:
        if crm is not None:
            crm["engine"].dispose()
        if not args.keep:
            cleanup(stack, users, databases, started)
        shutil.rmtree(home, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        say(f"figures written to {args.json}")


def report(figures: dict[str, Any], n: int) -> None:
    crm = figures["crmsync"]["seconds"]
    per = figures["baseline"]["per_connection"]["seconds"]
    one = figures["baseline"]["one_connection"]["seconds"]
    rates = {"crmsync": n / crm, "per_connection": n / per, "one_connection": n / one}
    ratios = {
        "crmsync_over_per_connection": rates["crmsync"] / rates["per_connection"],
        "crmsync_over_one_connection": rates["crmsync"] / rates["one_connection"],
    }
    figures["emails_per_s"] = rates
    figures["ratios"] = ratios
    ok = ratios["crmsync_over_per_connection"] >= TARGET_RATIO
    figures["checks"] = {"crmsync_over_per_connection": "PASS" if ok else "FAIL"}
    figures["per_email_ms"] = {k: 1000 / v for k, v in rates.items()}
    say("")
    say(f"{'measure (' + f'{n:,} emails)':<52} {'seconds':>8} {'emails/s':>9} {'ms/email':>9}")
    for label, key, secs in (
        ("crmsync send_mailbox (intent, SMTP, Sent copy, record)", "crmsync", crm),
        ("smtplib, one connection + login per message", "per_connection", per),
        ("smtplib, one connection for all", "one_connection", one),
    ):
        say(f"{label:<52} {secs:>8.2f} {rates[key]:>9.1f} {1000 / rates[key]:>9.2f}")
    say("")
    say(f"{'ratio (throughput)':<52} {'value':>8} {'target':>9}")
    say(f"{'crmsync / smtplib per connection':<52} "
        f"{ratios['crmsync_over_per_connection']:>8.2f} {'>= 0.8':>9} "
        f"{'PASS' if ok else 'FAIL'}")  # fmt: skip
    say(f"{'crmsync / smtplib one connection':<52} "
        f"{ratios['crmsync_over_one_connection']:>8.2f} {'(info)':>9}")  # fmt: skip


def cleanup(stack: Stack, users: list[MailUser], databases: list[str], started: bool) -> None:
    """Drop the bench database and the user's maildir; stop the stack if we started it."""
    import sqlalchemy as sa

    if databases:
        try:
            admin = sa.create_engine(stack.postgres_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                for name in databases:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        except Exception as exc:
            say(f"could not drop the bench database: {exc}")
    for user in users:
        shutil.rmtree(maildir_of(stack, user).parent, ignore_errors=True)
    if started:
        say("stopping the bench stack (stack/down.sh)")
        stop_stack(stack.dir)
    else:
        say(f"the stack in {stack.dir} was already running: left running")


if __name__ == "__main__":
    main()
