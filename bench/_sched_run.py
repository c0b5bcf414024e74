"""The scheduler bench's moving parts: a ``crmsync worker`` process watched from /proc, its
JSON log read back, LMTP deliveries, the raw IMAP baseline, and percentiles.

    with WorkerProcess(env, ["--concurrency", "16"], log_path) as worker:
        ...; figures = worker.figures()      # CPU s, peak RSS, runs from its log
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import smtplib
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.stackfix import REPO_ROOT, MailUser, Stack

from bench._sched_stack import cpu_seconds, hwm_kb, pss_kb, rss_kb

CRMSYNC = REPO_ROOT / ".venv" / "bin" / "crmsync"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of VALUES; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "mean": sum(values) / len(values) if values else None,
    }


# ---------------------------------------------------------------------- the worker process
class WorkerProcess:
    """``crmsync worker ARGS`` with stderr (the JSON log) in LOG_PATH; a sampler thread keeps
    the peak RSS of the process tree and of Dovecot's PSS. Stopped with SIGTERM (graceful),
    then SIGKILL, on leaving the block, also on errors."""

    def __init__(
        self,
        env: dict[str, str],
        args: list[str],
        log_path: Path,
        *,
        dovecot_pid: int | None = None,
        pss_every: float = 5.0,
    ) -> None:
        self.env, self.args, self.log_path = env, args, log_path
        self.dovecot_pid = dovecot_pid
        self.pss_every = pss_every
        self.proc: subprocess.Popen | None = None
        self.peak_rss_kb = 0
        self.peak_dovecot_pss_kb = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self.started = 0.0
        self.cpu_at_start = 0.0

    def __enter__(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(CRMSYNC), "worker", *self.args],
            env=self.env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.started = time.monotonic()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _sample(self) -> None:
        last_pss = 0.0
        while not self._stop.wait(1.0):
            if not self.alive():
                return
            self.peak_rss_kb = max(self.peak_rss_kb, rss_kb(self.pid))
            if self.dovecot_pid and time.monotonic() - last_pss >= self.pss_every:
                last_pss = time.monotonic()
                self.peak_dovecot_pss_kb = max(
                    self.peak_dovecot_pss_kb, pss_kb(self.dovecot_pid)[0]
                )

    def cpu(self) -> float:
        return cpu_seconds(self.pid) if self.alive() else 0.0

    def hwm_mb(self) -> float:
        return hwm_kb(self.pid) / 1024 if self.alive() else 0.0

    def metrics(self, port: int) -> dict[str, float]:
        """The worker's Prometheus text, as {name{labels}: value} (empty on failure)."""
        out: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError):
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith("crmsync_") and " " in line:
                        name, _, value = line.rpartition(" ")
                        out[name] = float(value)
        return out

    def stop(self, timeout: float = 90.0) -> int | None:
        self._stop.set()
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.stop_seconds = time.monotonic() - started
        return self.proc.returncode


def worker_env(url: str, key: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env.update(
        CRMSYNC_DATABASE_URL=url,
        CRMSYNC_SECRET_KEY=key,
        CRMSYNC_HOME=str(home),
        CRMSYNC_LOG_FORMAT="json",
        CRMSYNC_LOG_LEVEL="info",
    )
    return env


def synced_runs(log_path: Path) -> list[dict[str, Any]]:
    """Every "mailbox synced" line of a worker's JSON log, with started/finished as datetimes."""
    runs = []
    with log_path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if '"mailbox synced"' not in line:
                continue
            try:
                item = json.loads(line)
            except ValueError:
                continue
            item["started"] = datetime.fromisoformat(item["started_at"])
            item["finished"] = datetime.fromisoformat(item["finished_at"])
            runs.append(item)
    return runs


def log_problems(log_path: Path, limit: int = 10) -> dict[str, Any]:
    """Warnings and errors in a worker's log: counts by event, and the first few lines."""
    counts: dict[str, int] = {}
    first: list[str] = []
    with log_path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                item = json.loads(line)
            except ValueError:
                if line.strip() and "Traceback" in line:
                    counts["traceback"] = counts.get("traceback", 0) + 1
                continue
            if item.get("level") in ("warning", "error", "critical"):
                event = str(item.get("event"))[:80]
                counts[event] = counts.get(event, 0) + 1
                if len(first) < limit:
                    first.append(line.strip()[:400])
    return {"counts": counts, "first": first}


# ---------------------------------------------------------------------- deliveries
def message(to: str, message_id: str, n: int) -> bytes:
    body = (
        f"From: Customer {n} <customer{n % 97}@customer.test>\r\n"
        f"To: {to}\r\n"
        f"Subject: Scheduler bench {n}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        f"Message-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"Hello, this is message {n} of the scheduler bench.\r\n"
    )
    return body.encode()


class Deliverer:
    """LMTP straight into Dovecot (what an MTA does): one recipient per transaction; the
    message is in the INBOX when ``deliver`` returns."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.client: smtplib.LMTP | None = None
        self.count = 0

    def deliver(self, user: MailUser) -> str:
        """Deliver one new message to USER; returns its Message-ID (without brackets)."""
        self.count += 1
        mid = f"sched-{uuid.uuid4().hex}@bench.crmsync.test"
        raw = message(user.address, f"<{mid}>", self.count)
        for attempt in range(3):
            try:
                if self.client is None:
                    self.client = smtplib.LMTP(self.stack.host, self.stack.lmtp_port, timeout=30)
                    self.client.ehlo("bench.crmsync.test")
                self.client.sendmail("customer@customer.test", [user.address], raw)
                return mid
            except (smtplib.SMTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self.client.quit()
            self.client = None


# ---------------------------------------------------------------------- raw IMAP baseline
def raw_poll_cycle(stack: Stack, users: Sequence[MailUser], concurrency: int) -> dict[str, Any]:
    """The raw cost of what a no-change poll must do, once per mailbox: connect, LOGIN,
    SELECT INBOX, NOOP, LOGOUT with imapclient, CONCURRENCY at a time (threads, as the
    worker runs its syncs). Figures: wall time, mailboxes/s, this process's CPU s."""
    from imapclient import IMAPClient

    def one(user: MailUser) -> None:
        client = IMAPClient(stack.host, port=stack.imap_port, ssl=False, timeout=60)
        try:
            client.login(user.username, user.password)
            client.select_folder("INBOX")
            client.noop()
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    cpu0, started = time.process_time(), time.perf_counter()
    errors = 0
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(one, u) for u in users]:
            try:
                future.result()
            except Exception:
                errors += 1
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    return {
        "mailboxes": len(users),
        "concurrency": concurrency,
        "seconds": seconds,
        "per_second": len(users) / seconds,
        "client_cpu_s": cpu,
        "client_cpu_ms_per_mailbox": cpu / len(users) * 1000,
        "errors": errors,
    }


def raw_idle_latency(
    stack: Stack, watched: Sequence[MailUser], deliverer: Deliverer, count: int, spacing: float
) -> dict[str, Any]:
    """Dovecot's own push latency: an imapclient IDLE on each of WATCHED (mailboxes crmsync
    does not watch), COUNT deliveries by LMTP to them in turn, seconds from the delivery's end
    to the EXISTS response. Taking turns leaves each session idle for longer than
    ``imap_hibernate_timeout`` between its deliveries, so it is woken from hibernation, as
    crmsync's sessions are."""
    from imapclient import IMAPClient

    clients = []
    latencies: list[float] = []
    missed = 0
    try:
        for user in watched:
            client = IMAPClient(stack.host, port=stack.imap_port, ssl=False, timeout=60)
            clients.append(client)
            client.login(user.username, user.password)
            client.select_folder("INBOX")
            client.idle()
        time.sleep(3.0)  # past imap_hibernate_timeout (2 s)
        for n in range(count):
            client = clients[n % len(clients)]
            deliverer.deliver(watched[n % len(clients)])
            delivered = time.perf_counter()
            deadline = delivered + 30
            seen = False
            while not seen and time.perf_counter() < deadline:
                responses = client.idle_check(timeout=max(0.05, deadline - time.perf_counter()))
                if any(len(r) >= 2 and r[1] == b"EXISTS" for r in responses):
                    latencies.append(time.perf_counter() - delivered)
                    seen = True
            missed += not seen
            time.sleep(spacing)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                client.idle_done()
                client.logout()
    return {"latency_s": distribution(latencies), "missed": missed, "sessions": len(clients)}
