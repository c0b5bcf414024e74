"""Benchmark (issue 4): crmsync's first sync of a mailbox against mbsync and raw imaplib.

    .venv/bin/python -m bench.incoming_bench [--messages 10000] [--full] [--json PATH] [--keep]

In one run, on a private stack (``stack/up.sh .stack/bench``, stopped at the end unless
``--keep``):

1. builds a realistic mailbox of N messages in Dovecot (bench/_mailgen.py: 2-50 KB, attachments,
   replies, non-ASCII; all From known contacts, so all are tracked) by writing the Maildir
   directly (bench/_dovecot_fill.py), plus a 1k and a 100k mailbox for the poll;
2. times (c) a raw stdlib-imaplib fetch of all bodies, (b) ``mbsync`` pulling the mailbox into a
   local maildir, (a) crmsync's first sync into PostgreSQL (``crmsync.sync.incoming``; skipped
   while that module does not exist), in a child process whose peak RSS is read; with
   ``--full`` also at 100k messages;
3. times K no-change polls (``crmsync.mail.imap.delta.changes_since``) on the 1k and the 100k
   mailbox, with the round trips of each, and the raw Dovecot cost of STATUS, NOOP and
   EXAMINE at both sizes (what a poll is made of);
4. prints absolute times, the ratios against mbsync, PASS/FAIL against the targets, and
   writes the figures as JSON with ``--json``.

Targets: (a)/(b) <= 1.0; poll(100k)/poll(1k) <= 1.2; peak RSS of the import <= 300 MB and flat
(100k within 1.2x of 10k). The machine is noisy: compare ratios, not absolute times.
The mailbox is warmed once (an untimed FETCH of every body) before (c), (b) and (a), so all
three read a page-cached, indexed mailbox.
"""

from __future__ import annotations

import argparse
import csv
import imaplib
import importlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from tests.stackfix import REPO_ROOT, MailUser, Stack, ensure_stack, stop_stack

from bench._dovecot_fill import FillResult, fill_inbox, imap_login, inbox_count, maildir_of
from bench._mailgen import contacts, messages

DEFAULT_STACK_DIR = REPO_ROOT / ".stack" / "bench"
FETCH_CHUNK = 500
TARGET_SYNC_RATIO = 1.0
TARGET_POLL_RATIO = 1.2
TARGET_RSS_MB = 300.0
TARGET_RSS_GROWTH = 1.2
SYNC_TIMEOUT = {"small": 1_800, "big": 7_200}


def say(text: str) -> None:
    print(text, flush=True)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


# ---------------------------------------------------------------------- (c) raw imaplib
def uid_chunks(client: imaplib.IMAP4, size: int = FETCH_CHUNK) -> list[str]:
    typ, data = client.uid("SEARCH", "ALL")
    if typ != "OK":
        raise RuntimeError(f"UID SEARCH ALL: {typ} {data}")
    uids = [int(u) for u in data[0].split()]
    return [f"{c[0]}:{c[-1]}" for c in (uids[i : i + size] for i in range(0, len(uids), size))]


def imaplib_fetch_all(stack: Stack, user: MailUser) -> dict[str, Any]:
    """Login, EXAMINE INBOX, ``UID FETCH a:b (BODY.PEEK[])`` in chunks; bodies are discarded."""
    started = time.perf_counter()
    client = imap_login(stack, user, timeout=300)
    try:
        typ, data = client.select("INBOX", readonly=True)
        if typ != "OK":
            raise RuntimeError(f"EXAMINE INBOX: {typ} {data}")
        count = total = 0
        for uid_set in uid_chunks(client):
            typ, data = client.uid("FETCH", uid_set, "(BODY.PEEK[])")
            if typ != "OK":
                raise RuntimeError(f"UID FETCH {uid_set}: {typ} {data}")
            for item in data:
                if isinstance(item, tuple):
                    count += 1
                    total += len(item[1])
            del data
    finally:
        client.logout()
    return {"seconds": time.perf_counter() - started, "messages": count, "bytes": total}


# ---------------------------------------------------------------------- (b) mbsync
def mbsync_version() -> tuple[int, ...] | None:
    if shutil.which("mbsync") is None:
        return None
    out = subprocess.run(
        ["mbsync", "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(g) for g in match.groups() if g is not None) if match else None


def mbsync_pull(stack: Stack, user: MailUser, work: Path) -> dict[str, Any]:
    """``mbsync`` (Sync Pull, Create Near) of INBOX into a fresh local maildir, wall time."""
    version = mbsync_version()
    if version is None:
        raise RuntimeError("mbsync not found: run stack/install.sh as root (package isync)")
    # isync 1.5 renamed SSLType to TLSType (1.4 does not know TLSType)
    tls_key = "TLSType" if version >= (1, 5) else "SSLType"
    near = work / "mbsync-near"
    near.mkdir(parents=True)
    rc = work / "mbsyncrc"
    rc.write_text(
        "FSync no\n\n"
        "IMAPAccount bench\n"
        f"Host {stack.host}\nPort {stack.imap_port}\n"
        f'User {user.username}\nPass "{user.password}"\n'
        f"{tls_key} None\nAuthMechs LOGIN\n\n"
        "IMAPStore bench-far\nAccount bench\n\n"
        f"MaildirStore bench-near\nPath {near}/\nInbox {near}/INBOX\n\n"
        "Channel bench\nFar :bench-far:\nNear :bench-near:\nPatterns INBOX\n"
        "Sync Pull\nCreate Near\nSyncState *\n"
    )
    rc.chmod(0o600)
    started = time.perf_counter()
    result = subprocess.run(
        ["mbsync", "-c", str(rc), "-q", "bench"],
        capture_output=True,
        text=True,
        timeout=1_800,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"mbsync failed ({result.returncode}): {result.stderr or result.stdout}")
    files = [p for sub in ("cur", "new") for p in (near / "INBOX" / sub).iterdir()]
    size = sum(p.stat().st_size for p in files)
    shutil.rmtree(near)
    return {
        "seconds": seconds,
        "messages": len(files),
        "bytes": size,
        "version": ".".join(map(str, version)),
    }


# ---------------------------------------------------------------------- polls
def poll_bench(stack: Stack, user: MailUser, polls: int) -> dict[str, Any]:
    """K no-change polls of INBOX with ``changes_since`` after a first full listing."""
    from crmsync.mail.imap import ImapSession, changes_since
    from crmsync.secrets import Secret

    with ImapSession(
        f"imap://{stack.host}:{stack.imap_port}", user.username, Secret(user.password), timeout=120
    ) as session:
        started = time.perf_counter()
        first = changes_since(session, "INBOX", None)
        listing_s = time.perf_counter() - started
        cursor = first.cursor
        warm: list[tuple[float, int]] = []
        for _ in range(5):  # the first poll after the listing unselects the folder
            started = time.perf_counter()
            delta = changes_since(session, "INBOX", cursor)
            warm.append((time.perf_counter() - started, delta.round_trips))
            if not delta.is_empty:
                raise RuntimeError(f"the mailbox of {user.username} changed during the bench")
            cursor = delta.cursor
        seconds, trips = [], Counter()
        for _ in range(polls):
            started = time.perf_counter()
            delta = changes_since(session, "INBOX", cursor)
            seconds.append(time.perf_counter() - started)
            trips[delta.round_trips] += 1
            cursor = delta.cursor
        mode = delta.mode
    return {
        "messages": len(first.new_uids),
        "mode": mode,
        "first_listing_s": listing_s,
        "warmup_ms": [round(s * 1000, 3) for s, _ in warm],
        "warmup_round_trips": [t for _, t in warm],
        "polls": polls,
        "median_ms": median_ms(seconds),
        "p90_ms": sorted(seconds)[int(len(seconds) * 0.9)] * 1000,
        "min_ms": min(seconds) * 1000,
        "round_trips": dict(trips),
    }


def raw_command_costs(stack: Stack, user: MailUser, k: int) -> dict[str, float]:
    """Median ms of single raw commands: STATUS (folder not selected), NOOP (selected),
    EXAMINE (re-selecting, as a poll without STATUS would)."""
    client = imap_login(stack, user)
    items = "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)"
    out: dict[str, list[float]] = {"status": [], "noop_selected": [], "examine": []}
    try:
        for _ in range(3):
            client.status("INBOX", items)
        for _ in range(k):
            started = time.perf_counter()
            typ, _data = client.status("INBOX", items)
            out["status"].append(time.perf_counter() - started)
            assert typ == "OK"
        for _ in range(k):
            started = time.perf_counter()
            typ, _data = client.select("INBOX", readonly=True)
            out["examine"].append(time.perf_counter() - started)
            assert typ == "OK"
        for _ in range(k):
            started = time.perf_counter()
            typ, _data = client.noop()
            out["noop_selected"].append(time.perf_counter() - started)
            assert typ == "OK"
    finally:
        client.logout()
    return {name: round(median_ms(v), 4) for name, v in out.items()}


# ---------------------------------------------------------------------- (a) crmsync
def sync_available() -> bool:
    try:  # through importlib: the lead's module lands later, and isort must not care then
        importlib.import_module("crmsync.sync.incoming")
    except ImportError:
        return False
    return True


def setup_crm(
    stack: Stack, user: MailUser, n_contacts: int, db_name: str, work: Path, secret_key: str
) -> dict[str, Any]:
    """A fresh database: schema, the contacts, the mailbox owner and their approved mailbox."""
    from bench.import_bench import fresh_database
    from crmsync.admin.mailboxes import MailboxSpec, add_mailbox
    from crmsync.config import load_settings
    from crmsync.crm.audit import Actor
    from crmsync.crm.mailboxes import ApprovalStatus, MailboxState
    from crmsync.db import make_engine, session_scope, upgrade_schema
    from crmsync.importing import import_files
    from crmsync.secrets import Secret, SecretBox

    started = time.perf_counter()
    url = fresh_database(stack.postgres_url, db_name)
    engine = make_engine(url)
    try:
        upgrade_schema(engine)
        folder = work / db_name
        folder.mkdir(parents=True)
        (folder / "people.json").write_text(
            json.dumps(
                {
                    "business_units": [{"id": "bu", "name": "Bench Oy"}],
                    "users": [
                        {
                            "id": "owner",
                            "username": user.username,
                            "first_name": "Bench",
                            "last_name": "Owner",
                            "business_unit": "bu",
                            "email": user.address,
                            "incoming_email_filter": "all",
                        }
                    ],
                }
            )
        )
        with (folder / "contacts.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "first_name", "last_name", "email", "owner"])
            for i, (first, last, email) in enumerate(contacts(n_contacts)):
                writer.writerow([f"c{i}", first, last, email, "owner"])
        report = import_files(engine, [folder / "people.json", folder / "contacts.csv"])
        if not report.ok:
            raise RuntimeError(f"import failed: {[str(e) for e in report.errors][:5]}")
        box = SecretBox(
            load_settings({"CRMSYNC_HOME": str(work), "CRMSYNC_SECRET_KEY": secret_key})
        )
        with session_scope(engine) as session:
            spec = MailboxSpec(
                owner=user.username,
                imap_url=f"imap://{stack.host}:{stack.imap_port}",
                smtp_url=None,
                username=user.username,
                email_address=user.address,
            )
            mailbox, _created = add_mailbox(
                session, box, spec, Secret(user.password), actor=Actor(name="bench")
            )
            mailbox.approval_status = ApprovalStatus.APPROVED
            mailbox.state = MailboxState.ENABLED
            mailbox.process_email_received_after = datetime(2000, 1, 1, tzinfo=UTC)
            mailbox_id = str(mailbox.id)
    finally:
        engine.dispose()
    return {"url": url, "mailbox_id": mailbox_id, "setup_s": time.perf_counter() - started}


def child_sync(args_json: str) -> None:
    """In the child process: one first sync, then print its figures as JSON (last line)."""
    import uuid

    from crmsync.config import load_settings
    from crmsync.db import make_engine
    from crmsync.secrets import SecretBox

    sync_mailbox = importlib.import_module("crmsync.sync.incoming").sync_mailbox
    args = json.loads(args_json)
    key = os.environ["CRMSYNC_SECRET_KEY"]  # not in argv: ps shows argv to everyone
    box = SecretBox(load_settings({"CRMSYNC_HOME": args["home"], "CRMSYNC_SECRET_KEY": key}))
    engine = make_engine(args["url"])
    rss_before = vm_hwm_kb()
    started = time.perf_counter()
    report = sync_mailbox(engine, uuid.UUID(args["mailbox_id"]), box=box, progress=None)
    seconds = time.perf_counter() - started
    engine.dispose()
    out = {
        "seconds": seconds,
        "seen": report.seen,
        "tracked": report.tracked,
        "quarantined": report.quarantined,
        "skipped": dict(report.skipped),
        "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": vm_hwm_kb() / 1024,
    }
    print("CHILD-RESULT " + json.dumps(out), flush=True)


def vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def crmsync_first_sync(crm: dict[str, Any], home: Path, key: str, timeout: int) -> dict[str, Any]:
    payload = json.dumps({"url": crm["url"], "mailbox_id": crm["mailbox_id"], "home": str(home)})
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "bench.incoming_bench", "--child-sync", payload],
        cwd=REPO_ROOT,
        env={**os.environ, "CRMSYNC_SECRET_KEY": key},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    lines = [x for x in result.stdout.splitlines() if x.startswith("CHILD-RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"crmsync first sync failed ({result.returncode}):\n{result.stdout[-3000:]}"
            f"{result.stderr[-3000:]}"
        )
    out = json.loads(lines[-1].removeprefix("CHILD-RESULT "))
    out["process_wall_s"] = wall
    return out


# ---------------------------------------------------------------------- main
def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def fill(
    stack: Stack, users: list[MailUser], prefix: str, count: int, seed: int, n_contacts: int
) -> tuple[MailUser, FillResult]:
    user = stack.new_user(prefix)
    users.append(user)  # cleaned up at the end, even when the fill fails
    result = fill_inbox(
        stack, user, messages(count, user.address, seed=seed, n_contacts=n_contacts)
    )
    got = inbox_count(stack, user)
    if got != count:
        raise RuntimeError(f"{user.username}: INBOX has {got} messages, {count} written")
    say(
        f"  filled {user.username}: {count:,} messages, {result.bytes / 1e6:,.0f} MB in "
        f"{result.total_s:.1f} s (write {result.write_s:.1f} s, index {result.index_s:.2f} s "
        f"by {result.index_method})"
    )
    return user, result


def warm(stack: Stack, user: MailUser) -> None:
    client = imap_login(stack, user, timeout=300)
    try:
        client.select("INBOX", readonly=True)
        for uid_set in uid_chunks(client):
            client.uid("FETCH", uid_set, "(FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[])")
    finally:
        client.logout()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="size of the sync mailbox")
    parser.add_argument("--poll-small", type=int, default=1_000)
    parser.add_argument("--poll-big", type=int, default=100_000)
    parser.add_argument("--polls", type=int, default=200, help="timed no-change polls per size")
    parser.add_argument("--contacts", type=int, default=500, help="known contacts (senders)")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument(
        "--full", action="store_true", help="also crmsync's first sync of the big mailbox (RSS)"
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--stack-dir", type=Path, default=DEFAULT_STACK_DIR)
    parser.add_argument("--keep", action="store_true", help="leave the stack, users and DBs")
    parser.add_argument("--child-sync", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_sync:
        child_sync(args.child_sync)
        return

    figures: dict[str, Any] = {
        "messages": args.messages,
        "poll_sizes": [args.poll_small, args.poll_big],
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
    }
    say(f"stack: {args.stack_dir}")
    stack, started = ensure_stack(args.stack_dir)
    users: list[MailUser] = []
    databases: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="crmsync-incoming-bench-"))
    try:
        say("filling mailboxes (straight into the Maildir, then doveadm force-resync):")
        n_c = args.contacts
        main_user, main_fill = fill(stack, users, "bsync", args.messages, args.seed, n_c)
        small_user, small_fill = fill(stack, users, "bpoll", args.poll_small, args.seed + 1, n_c)
        big_user, big_fill = fill(stack, users, "bpoll", args.poll_big, args.seed + 2, n_c)
        figures["fill"] = {
            str(r.count): {
                "write_s": r.write_s,
                "index_s": r.index_s,
                "total_s": r.total_s,
                "mb": r.bytes / 1e6,
                "index_method": r.index_method,
            }
            for r in (main_fill, small_fill, big_fill)
        }

        say("warming the sync mailbox (one untimed FETCH of every body)")
        warm(stack, main_user)
        say("(c) raw imaplib FETCH of all bodies ...")
        figures["imaplib"] = raw = imaplib_fetch_all(stack, main_user)
        say(f"    {raw['seconds']:.2f} s, {raw['messages']:,} messages")
        say("(b) mbsync pull into a local maildir ...")
        figures["mbsync"] = mb = mbsync_pull(stack, main_user, work)
        say(f"    {mb['seconds']:.2f} s, {mb['messages']:,} messages (isync {mb['version']})")
        if mb["messages"] != args.messages or raw["messages"] != args.messages:
            raise RuntimeError("mbsync or imaplib did not get every message")

        say(f"polls: {args.polls} no-change polls at each size ...")
        figures["poll"] = {}
        figures["raw_commands_ms"] = {}
        for user in (small_user, big_user):
            p = poll_bench(stack, user, args.polls)
            figures["poll"][str(p["messages"])] = p
            say(
                f"    {p['messages']:>7,}: median {p['median_ms']:.3f} ms, p90 "
                f"{p['p90_ms']:.3f} ms, round trips {p['round_trips']} (first polls "
                f"{p['warmup_round_trips']}, {p['warmup_ms']} ms), mode {p['mode']}"
            )
            costs = raw_command_costs(stack, user, args.polls)
            figures["raw_commands_ms"][str(p["messages"])] = costs
            say(f"             raw imaplib medians (ms): {costs}")

        key = Fernet.generate_key().decode()
        crm_runs: list[tuple[str, MailUser, int]] = [("small", main_user, args.messages)]
        if args.full:
            crm_runs.append(("big", big_user, args.poll_big))
        figures["crmsync"] = {}
        have_sync = sync_available()
        for label, user, count in crm_runs:
            db_name = f"bench_incoming_{user.username}"
            databases.append(db_name)
            crm = setup_crm(stack, user, args.contacts, db_name, work, key)
            say(f"(a) crmsync database for {count:,} messages set up in {crm['setup_s']:.1f} s")
            if not have_sync:
                say("(a) crmsync first sync: not available yet (no crmsync.sync.incoming)")
                continue
            say(f"(a) crmsync first sync of {count:,} messages ...")
            try:
                res = crmsync_first_sync(crm, work, key, SYNC_TIMEOUT[label])
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                # keep the other figures: report the failure and go on to the table
                figures.setdefault("crmsync_errors", {})[str(count)] = str(exc)[-2000:]
                say(f"    FAILED: {str(exc)[:300]} ... (last lines in the JSON)")
                continue
            figures["crmsync"][str(count)] = res
            say(
                f"    {res['seconds']:.2f} s, seen {res['seen']:,}, tracked {res['tracked']:,}, "
                f"quarantined {res['quarantined']:,}, skipped {res['skipped']}, peak RSS "
                f"{res['peak_rss_mb']:.0f} MB"
            )
        report(figures, args)
    finally:
        if not args.keep:
            cleanup(stack, users, databases, started)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        say(f"figures written to {args.json}")


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    mb = figures["mbsync"]["seconds"]
    raw = figures["imaplib"]["seconds"]
    crm = figures["crmsync"].get(str(args.messages))
    polls = figures["poll"]
    small = polls[str(args.poll_small)]["median_ms"]
    big = polls[str(args.poll_big)]["median_ms"]
    n = args.messages
    say("")
    say(f"{'measure':<44} {'value':>12} {'msg/s':>9}")
    say(f"{'(b) mbsync pull, ' + f'{n:,} msgs':<44} {mb:>10.2f} s {n / mb:>9,.0f}")
    say(f"{'(c) imaplib FETCH BODY.PEEK[], ' + f'{n:,} msgs':<44} {raw:>10.2f} s {n / raw:>9,.0f}")
    if crm:
        say(f"{'(a) crmsync first sync, ' + f'{n:,} msgs':<44} {crm['seconds']:>10.2f} s "
            f"{n / crm['seconds']:>9,.0f}")  # fmt: skip
    else:
        say(f"{'(a) crmsync first sync':<44} {'not available yet':>12}")
    say(f"{'poll, no change, ' + f'{args.poll_small:,} msgs (median)':<44} {small:>9.3f} ms")
    say(f"{'poll, no change, ' + f'{args.poll_big:,} msgs (median)':<44} {big:>9.3f} ms")

    ratios: dict[str, Any] = {}
    checks: dict[str, bool | None] = {}
    ratios["c_over_b"] = raw / mb
    ratios["a_over_b"] = crm["seconds"] / mb if crm else None
    checks["a_over_b"] = ratios["a_over_b"] <= TARGET_SYNC_RATIO if crm else None
    ratios["poll_big_over_small"] = big / small
    checks["poll_big_over_small"] = ratios["poll_big_over_small"] <= TARGET_POLL_RATIO
    rss_small = crm["peak_rss_mb"] if crm else None
    crm_big = figures["crmsync"].get(str(args.poll_big))
    rss_big = crm_big["peak_rss_mb"] if crm_big else None
    checks["peak_rss"] = (
        None
        if rss_small is None
        else all(r <= TARGET_RSS_MB for r in (rss_small, rss_big) if r is not None)
    )
    ratios["rss_big_over_small"] = rss_big / rss_small if rss_big and rss_small else None
    checks["rss_flat"] = (
        None
        if ratios["rss_big_over_small"] is None
        else ratios["rss_big_over_small"] <= TARGET_RSS_GROWTH
    )
    figures["ratios"] = ratios
    figures["checks"] = {k: verdict(v) for k, v in checks.items()}

    def fmt(v: float | None, unit: str = "x") -> str:
        return "-" if v is None else f"{v:.2f}{unit}"

    say("")
    say(f"{'ratio / figure':<44} {'value':>12} {'target':>10} {'':>6}")
    say(f"{'(a)/(b) crmsync first sync / mbsync':<44} {fmt(ratios['a_over_b']):>12} "
        f"{'<= 1.0':>10} {verdict(checks['a_over_b']):>6}")  # fmt: skip
    say(f"{'(c)/(b) raw imaplib / mbsync':<44} {fmt(ratios['c_over_b']):>12} {'':>10} {'':>6}")
    say(f"{'poll(' + str(args.poll_big) + ')/poll(' + str(args.poll_small) + ')':<44} "
        f"{fmt(ratios['poll_big_over_small']):>12} {'<= 1.2':>10} "
        f"{verdict(checks['poll_big_over_small']):>6}")  # fmt: skip
    rss_text = "-" if rss_small is None else f"{rss_small:.0f} MB"
    say(f"{'peak RSS of the import, ' + f'{n:,} msgs':<44} {rss_text:>12} {'<= 300 MB':>10} "
        f"{verdict(checks['peak_rss']):>6}")  # fmt: skip
    if args.full:
        rss_text = "-" if rss_big is None else f"{rss_big:.0f} MB"
        say(f"{'peak RSS of the import, ' + f'{args.poll_big:,} msgs':<44} {rss_text:>12} "
            f"{'<= 300 MB':>10}")  # fmt: skip
        say(f"{'RSS flat: peak(' + str(args.poll_big) + ')/peak(' + str(n) + ')':<44} "
            f"{fmt(ratios['rss_big_over_small']):>12} {'<= 1.2':>10} "
            f"{verdict(checks['rss_flat']):>6}")  # fmt: skip
    else:
        say("RSS at the big size: run with --full")


def cleanup(stack: Stack, users: list[MailUser], databases: list[str], started: bool) -> None:
    """Drop the bench databases and the bench users' maildirs; stop the stack if we started it."""
    import sqlalchemy as sa

    if databases:
        try:
            admin = sa.create_engine(stack.postgres_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                for name in databases:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        except Exception as exc:
            say(f"could not drop the bench databases: {exc}")
    for user in users:
        shutil.rmtree(maildir_of(stack, user).parent, ignore_errors=True)
    if started:
        say("stopping the bench stack (stack/down.sh)")
        stop_stack(stack.dir)
    else:
        say(f"the stack in {stack.dir} was already running: left running")


if __name__ == "__main__":
    main()
