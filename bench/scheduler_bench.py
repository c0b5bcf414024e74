"""Benchmark (issue 5): the scheduler with 10,000 mailboxes on one node, polled and pushed.

    .venv/bin/python -m bench.scheduler_bench [--mailboxes 10000] [--json FILE] [--keep]

In one run, on a private stack (``stack/up.sh .stack/bench-sched``, Dovecot restarted with
hibernation, see bench/_sched_stack.py; everything stopped at the end, also on Ctrl-C or an
error, and ``fs.inotify.max_user_instances`` restored):

0. N Dovecot users (one write of the users files) and N CRM users with an enabled, approved
   mailbox each (multi-row INSERTs, bench/_sched_crm.py);
1. **baseline**: the raw cost of a poll, once per mailbox of a sample: imapclient connect +
   LOGIN + SELECT + NOOP + LOGOUT, at the worker's concurrency (mailboxes/s, client CPU);
2. **drain**: one ``crmsync worker``; the sample is made due at once; the seconds until every
   one has run give the worker's throughput at saturation (runs/s, CPU ms per run), against (1);
3. **polled**: all N mailboxes, ``next_sync_at`` spread over the interval, ``schedule_speedup``
   chosen so the required rate (N / interval) is about half the throughput measured in (2)
   (``--speedup`` to fix it); for about one interval plus two minutes, with LMTP deliveries to
   random mailboxes: the lag of every run (``lag_seconds`` in the worker's JSON log) as a
   ratio of its interval, runs/s against the rate the schedule asks for, the worker's CPU
   seconds and peak RSS, Dovecot's PSS, delivery -> tracked latency;
4. **pushed**: only ``--push-mailboxes`` (1,000) enabled, ``crmsync worker --push``; the IDLE
   connections are made, then single messages to random mailboxes, one per ``--push-spacing``
   seconds; delivery -> tracked latency (the Message-ID appears in the ``email`` table, polled
   every 50 ms), against Dovecot's own IDLE latency measured in the same run (an imapclient
   IDLE on a mailbox crmsync does not watch), the polled interval and Dynamics' 12 minutes.
   Skipped when ``crmsync.sync.push`` does not exist.

Figures and ratios are printed and written as JSON with ``--json``; nothing is asserted. The
machine is small and shared: compare ratios from one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet
from tests.stackfix import REPO_ROOT, MailUser, Stack, ensure_stack, stop_stack

from bench._sched_crm import add_mailboxes, only_enable, set_speedup, tracked_message_ids
from bench._sched_run import (
    Deliverer,
    WorkerProcess,
    distribution,
    log_problems,
    raw_idle_latency,
    raw_poll_cycle,
    synced_runs,
    worker_env,
)
from bench._sched_stack import (
    add_users_bulk,
    cpu_seconds,
    inotify_instances,
    process_count,
    pss_kb,
    remove_users,
    restart_dovecot_hibernating,
)

DEFAULT_STACK_DIR = REPO_ROOT / ".stack" / "bench-sched"
DB_NAME = "bench_sched"
NORMAL_SECONDS = 5 * 60
DYNAMICS_MAX_SECONDS = 12 * 60
PUSH_TARGET_P95 = 3.0
INOTIFY_WANTED = 20_000
RAW_IDLE_SESSIONS = 10


def say(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def push_available() -> bool:
    try:  # through importlib: the module may land while this bench is being written
        importlib.import_module("crmsync.sync.push")
    except ImportError:
        return False
    return True


def wait_for(check: Any, timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return bool(check())


# ---------------------------------------------------------------------- phases
def drain_phase(
    engine: sa.Engine, worker: WorkerProcess, sample: list[Any], timeout: float
) -> dict[str, Any]:
    """Make SAMPLE due now; time until every one of them has finished a run."""
    with engine.begin() as conn:
        mark = conn.execute(sa.text("SELECT now()")).scalar_one()
    cpu0, started = worker.cpu(), time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE mailbox SET next_sync_at = now() WHERE id = ANY(:ids)"),
            {"ids": sample},
        )

    def done() -> bool:
        with engine.connect() as conn:
            left = conn.execute(
                sa.text(
                    "SELECT count(*) FROM mailbox WHERE id = ANY(:ids) AND "
                    "(last_sync_finished_at IS NULL OR last_sync_finished_at < :mark)"
                ),
                {"ids": sample, "mark": mark},
            ).scalar_one()
        return left == 0

    finished = wait_for(done, timeout, every=0.25)
    seconds = time.perf_counter() - started
    cpu = worker.cpu() - cpu0
    runs = [r for r in synced_runs(worker.log_path) if r["finished"] >= mark]
    return {
        "mailboxes": len(sample),
        "complete": finished,
        "seconds": seconds,
        "runs": len(runs),
        "runs_per_second": len(runs) / seconds,
        "worker_cpu_s": cpu,
        "worker_cpu_ms_per_run": cpu / max(len(runs), 1) * 1000,
        "results": _count_by(runs, "result"),
        "duration_s": distribution([(r["finished"] - r["started"]).total_seconds() for r in runs]),
    }


def _count_by(runs: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in runs:
        out[str(r.get(key))] = out.get(str(r.get(key)), 0) + 1
    return out


def polled_phase(
    engine: sa.Engine,
    worker: WorkerProcess,
    stack: Stack,
    users: list[MailUser],
    *,
    interval: float,
    seconds: float,
    deliveries: int,
    warmup: float,
    metrics_port: int,
    rng: random.Random,
) -> dict[str, Any]:
    """All mailboxes spread over INTERVAL; deliveries during the first 60 % of SECONDS."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE mailbox SET next_sync_at = now() + random() * make_interval(secs => :s)"
            ),
            {"s": interval},
        )
        window_start = conn.execute(sa.text("SELECT now()")).scalar_one() + timedelta(
            seconds=warmup
        )
    started = time.perf_counter()
    cpu0 = worker.cpu()
    deliverer = Deliverer(stack)
    delivered: dict[str, tuple[float, datetime]] = {}  # message id -> (perf time, wall time)
    spacing = seconds * 0.6 / max(deliveries, 1)
    next_delivery = started + spacing
    end = started + seconds
    last_note = started
    while time.perf_counter() < end:
        now = time.perf_counter()
        if len(delivered) < deliveries and now >= next_delivery:
            mid = deliverer.deliver(rng.choice(users))
            delivered[mid] = (time.perf_counter(), datetime.now(UTC))
            next_delivery += spacing
        if now - last_note >= 60:
            last_note = now
            say(f"    {now - started:4.0f} s: {len(synced_runs(worker.log_path)):,} runs so far")
        if not worker.alive():
            raise RuntimeError(f"the worker exited; see {worker.log_path}")
        time.sleep(min(0.2, max(0.0, next_delivery - time.perf_counter())))
    deliverer.close()
    elapsed = time.perf_counter() - started
    cpu = worker.cpu() - cpu0
    window_end = datetime.now(UTC)
    prom = worker.metrics(metrics_port)
    dovecot_pss, dovecot_procs = pss_kb(stack.pids["dovecot"])

    every_run = sorted(synced_runs(worker.log_path), key=lambda r: r["started"])
    last_finished: dict[str, datetime] = {}
    for r in every_run:  # a run's own interval: from its mailbox's previous run to its due time
        r["previous_finished"] = last_finished.get(r["mailbox_id"])
        last_finished[r["mailbox_id"]] = r["finished"]
    runs = [r for r in every_run if window_start <= r["started"] <= window_end]
    lags = [float(r["lag_seconds"]) for r in runs if r.get("lag_seconds") is not None]
    ratios, own = [], 0
    for r in runs:
        if r.get("lag_seconds") is None:
            continue
        due = r["started"] - timedelta(seconds=float(r["lag_seconds"]))
        prev = r.get("previous_finished")
        own_interval = (due - prev).total_seconds() if prev is not None else None
        if own_interval is not None and own_interval > 0:
            own += 1
            ratios.append(float(r["lag_seconds"]) / own_interval)
        else:
            ratios.append(float(r["lag_seconds"]) / interval)
    window_s = (window_end - window_start).total_seconds()
    synced_mailboxes = {r["mailbox_id"] for r in runs}

    found = tracked_message_ids(engine, list(delivered))
    latencies = [(found[m] - delivered[m][1]).total_seconds() for m in found]
    schedules: dict[str, int] = {}
    for r in runs:
        sched = r.get("schedule")
        code = sched.split(":")[0] if isinstance(sched, str) else str(sched)
        schedules[code[:40]] = schedules.get(code[:40], 0) + 1
    return {
        "interval_s": interval,
        "seconds": elapsed,
        "window_s": window_s,
        "runs": len(runs),
        "runs_per_second": len(runs) / window_s,
        "required_runs_per_second": len(users) / interval,
        "mailboxes_synced": len(synced_mailboxes),
        "results": _count_by(runs, "result"),
        "lag_s": distribution(lags),
        "lag_over_interval": distribution(ratios),
        "lag_ratio_own_interval_runs": own,
        "duration_s": distribution([(r["finished"] - r["started"]).total_seconds() for r in runs]),
        "worker_cpu_s": cpu,
        "worker_cpu_share_of_2_cores": cpu / elapsed / 2,
        "worker_cpu_ms_per_run": cpu / max(len(runs), 1) * 1000,
        "worker_peak_rss_mb": worker.peak_rss_kb / 1024,
        "worker_hwm_mb": worker.hwm_mb(),
        "dovecot_pss_mb_end": dovecot_pss / 1024,
        "dovecot_processes_end": dovecot_procs,
        "dovecot_peak_pss_mb": worker.peak_dovecot_pss_kb / 1024,
        "deliveries": len(delivered),
        "tracked": len(found),
        "delivery_to_tracked_s": distribution(latencies),
        "schedules": schedules,
        "prometheus": {
            k: v
            for k, v in prom.items()
            if k.startswith(
                (
                    "crmsync_sync_lag_seconds_count",
                    "crmsync_sync_lag_seconds_sum",
                    "crmsync_queue_depth",
                    "crmsync_mailboxes_overdue",
                    "crmsync_jobs_dispatched_total",
                )
            )
        },
    }


def push_phase(
    engine: sa.Engine,
    worker: WorkerProcess,
    stack: Stack,
    subset: list[MailUser],
    outsiders: list[MailUser],
    *,
    deliveries: int,
    spacing: float,
    raw_deliveries: int,
    rng: random.Random,
) -> dict[str, Any]:
    out: dict[str, Any] = {"mailboxes": len(subset)}
    started = time.perf_counter()
    cpu0 = worker.cpu()

    def live() -> int:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT count(*) FROM mailbox WHERE push_state = 'live'")
            ).scalar_one()

    counts: list[int] = []

    def all_live() -> bool:
        counts.append(live())
        if not worker.alive():
            raise RuntimeError(f"the worker exited; see {worker.log_path}")
        return counts[-1] >= len(subset)

    out["all_live"] = wait_for(all_live, timeout=180, every=0.5)
    out["live"] = counts[-1] if counts else 0
    out["connect_s"] = time.perf_counter() - started
    out["connect_cpu_s"] = worker.cpu() - cpu0
    say(f"    {out['live']:,}/{len(subset):,} IDLE watchers live after {out['connect_s']:.1f} s")
    time.sleep(5)  # past imap_hibernate_timeout (2 s): the sessions hibernate
    dove = stack.pids["dovecot"]
    pss, procs = pss_kb(dove)
    out["dovecot_idle"] = {
        "pss_mb": pss / 1024,
        "processes": procs,
        "imap_processes": process_count(dove, "imap"),
        "imap_hibernate_processes": process_count(dove, "imap-hibernate"),
    }
    idle_cpu0 = worker.cpu()
    time.sleep(10)
    out["idle_cpu_s_per_minute"] = (worker.cpu() - idle_cpu0) * 6
    out["worker_rss_mb_idle"] = worker.peak_rss_kb / 1024

    deliverer = Deliverer(stack)
    say(
        f"    raw baseline: {raw_deliveries} deliveries to {len(outsiders)} imapclient IDLE "
        "sessions (mailboxes crmsync does not watch)"
    )
    out["raw_idle"] = raw_idle_latency(stack, outsiders, deliverer, raw_deliveries, spacing)

    say(f"    {deliveries} deliveries to random watched mailboxes, one per {spacing} s")
    pending: dict[str, float] = {}
    latencies: list[float] = []
    cpu1 = worker.cpu()
    t_end = time.perf_counter() + deliveries * spacing
    next_at = time.perf_counter()
    sent = 0
    with engine.connect() as conn:
        query = sa.text("SELECT message_id FROM email WHERE message_id = ANY(:ids)")
        while sent < deliveries or pending:
            now = time.perf_counter()
            if sent < deliveries and now >= next_at:
                mid = deliverer.deliver(rng.choice(subset))
                pending[mid] = time.perf_counter()
                sent += 1
                next_at += spacing
            if pending:
                found = conn.execute(query, {"ids": list(pending)}).scalars().all()
                conn.rollback()
                seen = time.perf_counter()
                for mid in found:
                    latencies.append(seen - pending.pop(mid))
            if now > t_end + 60:  # bounded: whatever is left after a minute is missed
                break
            time.sleep(0.05)
    deliverer.close()
    out["deliveries"] = sent
    out["tracked"] = len(latencies)
    out["missed"] = len(pending)
    out["delivery_to_tracked_s"] = distribution(latencies)
    out["delivery_cpu_s"] = worker.cpu() - cpu1
    out["worker_cpu_s"] = worker.cpu() - cpu0
    out["worker_peak_rss_mb"] = worker.peak_rss_kb / 1024
    out["worker_hwm_mb"] = worker.hwm_mb()
    out["seconds"] = time.perf_counter() - started
    return out


# ---------------------------------------------------------------------- main
def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C: the finally blocks stop what was started."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16, help="worker --concurrency")
    parser.add_argument(
        "--sample", type=int, default=2_000, help="mailboxes of the baseline and the drain"
    )
    parser.add_argument(
        "--speedup", type=int, help="schedule_speedup of the polled part (default: from (2))"
    )
    parser.add_argument(
        "--load", type=float, default=0.5, help="target share of the drain throughput (auto)"
    )
    parser.add_argument(
        "--polled-seconds", type=float, help="length of the polled part (default interval+120)"
    )
    parser.add_argument("--polled-max-seconds", type=float, default=480.0)
    parser.add_argument("--deliveries", type=int, default=300, help="during the polled part")
    parser.add_argument("--push-mailboxes", type=int, default=1_000)
    parser.add_argument("--push-deliveries", type=int, default=200)
    parser.add_argument("--push-spacing", type=float, default=1.0, help="seconds")
    parser.add_argument("--raw-idle-deliveries", type=int, default=20)
    parser.add_argument("--no-push", action="store_true", help="skip the pushed part")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--stack-dir", type=Path, default=DEFAULT_STACK_DIR)
    parser.add_argument("--keep", action="store_true", help="leave the stack, users and DB")
    args = parser.parse_args()
    if args.mailboxes < 10 or args.sample > args.mailboxes:
        parser.error("--mailboxes must be >= 10 and >= --sample")

    signal.signal(signal.SIGTERM, _interrupt)
    rng = random.Random(args.seed)
    t_start = time.perf_counter()
    figures: dict[str, Any] = {
        "mailboxes": args.mailboxes,
        "concurrency": args.concurrency,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
    }
    work = Path(tempfile.mkdtemp(prefix="crmsync-sched-bench-"))
    with inotify_instances(INOTIFY_WANTED) as old_inotify:
        figures["inotify_max_user_instances"] = {"before": old_inotify, "during": INOTIFY_WANTED}
        if old_inotify is None:
            say("could not raise fs.inotify.max_user_instances (not root?): push may degrade")
        say(f"stack: {args.stack_dir}")
        stack, started = ensure_stack(args.stack_dir)
        users: list[MailUser] = []
        try:
            t0 = time.perf_counter()
            restart_dovecot_hibernating(stack)
            figures["dovecot_restart_s"] = time.perf_counter() - t0
            run_phases(args, figures, stack, users, work, rng)
        finally:
            if not args.keep:
                cleanup(stack, users, started)
            shutil.rmtree(work, ignore_errors=True)
    figures["bench_seconds"] = time.perf_counter() - t_start
    say(f"bench run time: {figures['bench_seconds'] / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True, default=str) + "\n")
        say(f"figures written to {args.json}")


def run_phases(
    args: argparse.Namespace,
    figures: dict[str, Any],
    stack: Stack,
    users: list[MailUser],
    work: Path,
    rng: random.Random,
) -> None:
    from bench.import_bench import fresh_database
    from crmsync.config import load_settings
    from crmsync.db import make_engine, upgrade_schema
    from crmsync.secrets import SecretBox

    n = args.mailboxes
    t0 = time.perf_counter()
    users.extend(add_users_bulk(stack, "bsched", n))
    figures["setup_users_s"] = time.perf_counter() - t0
    say(f"{n:,} Dovecot users written in {figures['setup_users_s']:.1f} s")

    t0 = time.perf_counter()
    url = fresh_database(stack.postgres_url, DB_NAME)
    engine = make_engine(url)
    try:
        upgrade_schema(engine)
        key = Fernet.generate_key().decode()
        box = SecretBox(load_settings({"CRMSYNC_HOME": str(work), "CRMSYNC_SECRET_KEY": key}))
        ids = add_mailboxes(engine, box, stack, users, spread=timedelta(hours=1))
        figures["setup_crm_s"] = time.perf_counter() - t0
        say(f"{n:,} CRM users + mailboxes inserted in {figures['setup_crm_s']:.1f} s")
        env = worker_env(url, key, work)
        sample_idx = rng.sample(range(n), args.sample)
        sample_users = [users[i] for i in sample_idx]
        sample_ids = [ids[i] for i in sample_idx]

        say(f"(1) baseline: raw LOGIN+SELECT+NOOP of {args.sample:,} mailboxes, "
            f"{args.concurrency} at a time")  # fmt: skip
        dove = stack.pids["dovecot"]
        d0 = cpu_seconds(dove)
        figures["baseline"] = base = raw_poll_cycle(stack, sample_users, args.concurrency)
        base["dovecot_cpu_ms_per_mailbox"] = (cpu_seconds(dove) - d0) / args.sample * 1000
        say(f"    {base['per_second']:,.0f} mailboxes/s, client CPU "
            f"{base['client_cpu_ms_per_mailbox']:.2f} ms each, Dovecot CPU "
            f"{base['dovecot_cpu_ms_per_mailbox']:.2f} ms each, "
            f"errors {base['errors']}")  # fmt: skip

        port = free_port()
        log_path = work / "worker-polled.log"
        wargs = ["--concurrency", str(args.concurrency), "--name", "bench-polled"]
        wargs += ["--metrics-port", str(port)]
        set_speedup(engine, 1)
        with WorkerProcess(env, wargs, log_path, dovecot_pid=dove) as worker:
            say(f"(2) drain: {args.sample:,} mailboxes due at once, one crmsync worker")
            figures["drain"] = drain = drain_phase(engine, worker, sample_ids, timeout=600)
            say(f"    {drain['seconds']:.1f} s, {drain['runs_per_second']:.1f} runs/s, "
                f"worker CPU {drain['worker_cpu_ms_per_run']:.1f} ms/run, "
                f"results {drain['results']}")  # fmt: skip
            rate = drain["runs_per_second"]
            speedup = args.speedup or max(1, min(600, int(args.load * rate * NORMAL_SECONDS / n)))
            interval = NORMAL_SECONDS / speedup
            seconds = args.polled_seconds or min(interval + 120, args.polled_max_seconds)
            set_speedup(engine, speedup)
            figures["speedup"] = speedup
            say(f"(3) polled: {n:,} mailboxes, speedup {speedup} (normal interval "
                f"{interval:.0f} s, asks {n / interval:.1f} runs/s of the {rate:.1f} measured), "
                f"{seconds:.0f} s, {args.deliveries} deliveries")  # fmt: skip
            figures["polled"] = polled = polled_phase(
                engine,
                worker,
                stack,
                users,
                interval=interval,
                seconds=seconds,
                deliveries=args.deliveries,
                warmup=10.0,
                metrics_port=port,
                rng=rng,
            )
            lag = polled["lag_s"]
            say(f"    {polled['runs']:,} runs, {polled['runs_per_second']:.1f} runs/s; "
                f"lag p50 {fmt(lag['p50'])} s, p95 {fmt(lag['p95'])} s, "
                f"max {fmt(lag['max'])} s")  # fmt: skip
            code = worker.stop()
            figures["polled"]["worker_exit"] = code
            figures["polled"]["worker_stop_s"] = getattr(worker, "stop_seconds", None)
        figures["polled"]["log_problems"] = log_problems(log_path)

        if args.no_push:
            figures["push"] = {"skipped": "--no-push"}
        elif not push_available():
            figures["push"] = {"skipped": "crmsync.sync.push not available"}
            say("(4) pushed: skipped, crmsync.sync.push does not exist yet")
        else:
            k = min(args.push_mailboxes, n - 1)
            outsider_count = min(RAW_IDLE_SESSIONS, n - k)
            subset_idx = rng.sample(range(n), k + outsider_count)
            outsiders = [users[subset_idx.pop()] for _ in range(outsider_count)]
            subset = [users[i] for i in subset_idx]
            set_speedup(engine, 1)
            only_enable(
                engine,
                [ids[i] for i in subset_idx],
                datetime.now(UTC) + timedelta(minutes=12),
            )
            log_path = work / "worker-push.log"
            port = free_port()
            wargs = ["--concurrency", str(args.concurrency), "--name", "bench-push", "--push"]
            wargs += ["--metrics-port", str(port)]
            say(f"(4) pushed: {k:,} mailboxes, crmsync worker --push")
            with WorkerProcess(env, wargs, log_path, dovecot_pid=dove) as worker:
                figures["push"] = push_phase(
                    engine,
                    worker,
                    stack,
                    subset,
                    outsiders,
                    deliveries=args.push_deliveries,
                    spacing=args.push_spacing,
                    raw_deliveries=args.raw_idle_deliveries,
                    rng=rng,
                )
                figures["push"]["prometheus_push"] = {
                    key: v
                    for key, v in worker.metrics(port).items()
                    if key.startswith(("crmsync_push", "crmsync_sync_runs"))
                }
                figures["push"]["worker_exit"] = worker.stop()
                figures["push"]["worker_stop_s"] = getattr(worker, "stop_seconds", None)
            figures["push"]["log_problems"] = log_problems(log_path)
        report(figures)
    finally:
        engine.dispose()
        if not args.keep:
            drop_database(stack)


def report(figures: dict[str, Any]) -> None:
    base, drain, polled = figures["baseline"], figures["drain"], figures["polled"]
    push = figures.get("push", {})
    interval = polled["interval_s"]
    ratios: dict[str, float | None] = {
        "drain_rate_over_raw_rate": drain["runs_per_second"] / base["per_second"],
        "crmsync_cpu_per_run_over_raw_client_cpu": drain["worker_cpu_ms_per_run"]
        / max(base["client_cpu_ms_per_mailbox"], 1e-9),
        "polled_rate_over_required": polled["runs_per_second"] / polled["required_runs_per_second"],
        "mailboxes_at_5_min_per_node": drain["runs_per_second"] * NORMAL_SECONDS,
    }
    lag = polled["lag_over_interval"]
    tracked = push.get("delivery_to_tracked_s") or {}
    raw_idle = (push.get("raw_idle") or {}).get("latency_s") or {}
    if tracked.get("p95") is not None:
        ratios["push_p95_over_raw_idle_p95"] = (
            tracked["p95"] / raw_idle["p95"] if raw_idle.get("p95") else None
        )
        ratios["push_p95_over_polled_interval_real"] = tracked["p95"] / NORMAL_SECONDS
        ratios["push_p95_over_dynamics_12_min"] = tracked["p95"] / DYNAMICS_MAX_SECONDS
    figures["ratios"] = ratios

    say("")
    say(f"{'figure':<58} {'value':>16}")
    rows = [
        ("(1) raw LOGIN+SELECT+NOOP, mailboxes/s", fmt(base["per_second"], "", 0)),
        ("(2) crmsync drain, runs/s", fmt(drain["runs_per_second"], "", 1)),
        ("(2) crmsync worker CPU per run", fmt(drain["worker_cpu_ms_per_run"], " ms", 1)),
        ("(2)/(1) throughput", fmt(ratios["drain_rate_over_raw_rate"], "x")),
        ("(2)/(1) CPU per mailbox (worker / raw client)",
         fmt(ratios["crmsync_cpu_per_run_over_raw_client_cpu"], "x")),
        ("(2) x 300 s: mailboxes one worker polls every 5 min",
         fmt(ratios["mailboxes_at_5_min_per_node"], "", 0)),
        (f"(3) polled: speedup {figures['speedup']}, interval", fmt(interval, " s", 0)),
        ("(3) runs/s measured / asked by the schedule",
         f"{polled['runs_per_second']:.1f} / {polled['required_runs_per_second']:.1f}"),
        ("(3) lag / interval p50", fmt(lag["p50"], "", 3)),
        ("(3) lag / interval p95", fmt(lag["p95"], "", 3)),
        ("(3) lag / interval p99", fmt(lag["p99"], "", 3)),
        ("(3) lag / interval max", fmt(lag["max"], "", 3)),
        ("(3) lag p50 / p95 / p99 / max (s)",
         " / ".join(fmt(polled["lag_s"][q], "", 2) for q in ("p50", "p95", "p99", "max"))),
        ("(3) worker CPU (share of 2 cores)",
         f"{polled['worker_cpu_s']:.0f} s ({polled['worker_cpu_share_of_2_cores']:.0%})"),
        ("(3) worker peak RSS", fmt(polled["worker_peak_rss_mb"], " MB", 0)),
        ("(3) Dovecot peak PSS", fmt(polled["dovecot_peak_pss_mb"], " MB", 0)),
        ("(3) delivery -> tracked, p50 / p95 (s)",
         f"{fmt(polled['delivery_to_tracked_s']['p50'], '', 1)} / "
         f"{fmt(polled['delivery_to_tracked_s']['p95'], '', 1)}"),
    ]  # fmt: skip
    if "skipped" in push:
        rows.append(("(4) pushed", f"skipped: {push['skipped']}"))
    elif push:
        rows += [
            ("(4) IDLE watchers live / connect time",
             f"{push['live']:,} / {push['connect_s']:.1f} s"),
            ("(4) Dovecot PSS, all IDLE", fmt(push["dovecot_idle"]["pss_mb"], " MB", 0)),
            ("(4) worker RSS with all IDLE", fmt(push["worker_rss_mb_idle"], " MB", 0)),
            ("(4) worker CPU while idle, s per minute", fmt(push["idle_cpu_s_per_minute"], "", 2)),
            ("(4) raw IDLE latency p50 / p95 (s)",
             f"{fmt(raw_idle.get('p50'), '', 2)} / {fmt(raw_idle.get('p95'), '', 2)}"),
            ("(4) delivery -> tracked p50 / p95 / max (s)",
             " / ".join(fmt(tracked.get(q), "", 2) for q in ("p50", "p95", "max"))),
            ("(4) tracked / delivered", f"{push['tracked']} / {push['deliveries']}"),
            ("(4) p95 / raw IDLE p95", fmt(ratios.get("push_p95_over_raw_idle_p95"), "x")),
            ("(4) p95 / 5-min polled interval",
             fmt(ratios.get("push_p95_over_polled_interval_real"), "x", 4)),
            ("(4) p95 / Dynamics' 12 minutes",
             fmt(ratios.get("push_p95_over_dynamics_12_min"), "x", 4)),
            (f"(4) p95 <= {PUSH_TARGET_P95:.0f} s",
             "-" if tracked.get("p95") is None else str(tracked["p95"] <= PUSH_TARGET_P95)),
        ]  # fmt: skip
    for label, value in rows:
        say(f"{label:<58} {value:>16}")


def drop_database(stack: Stack) -> None:
    try:
        admin = sa.create_engine(stack.postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        admin.dispose()
    except Exception as exc:
        say(f"could not drop the bench database: {exc}")


def cleanup(stack: Stack, users: list[MailUser], started: bool) -> None:
    if started:
        say("stopping the bench stack (stack/down.sh)")
        try:
            stop_stack(stack.dir)
        except Exception as exc:
            say(f"stack/down.sh failed: {exc}")
    else:
        say(f"the stack in {stack.dir} was already running: left running")
    if users:
        remove_users(stack, users)
        for user in users:
            shutil.rmtree(stack.maildir_root / user.username, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        say("interrupted: everything the bench started was stopped")
        sys.exit(130)
