"""Prometheus metrics of the sync service: runs, items, errors, lag, queue depth, push.

One registry per worker process (not the global default: tests start several in one process),
served over HTTP by :func:`serve` when the worker is given ``--metrics-port``. Names follow
Prometheus conventions (``_total`` counters, ``_seconds`` units).

*Lag* is how late a run started against when it was due: the policy's next run, or the moment
someone asked for "sync now" or push saw new mail. It is observed per run (a histogram for the
distribution) and kept per mailbox (a gauge labelled with the mailbox id) for the console.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LAG_BUCKETS = (0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 720, 1800)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class SyncMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "crmsync_sync_runs", "Mailbox sync runs, by result", ["result"], registry=r
        )
        self.items = Counter("crmsync_sync_items", "Messages seen by sync runs", registry=r)
        self.tracked = Counter(
            "crmsync_sync_tracked", "Messages tracked (new CRM email) by sync runs", registry=r
        )
        self.errors = Counter(
            "crmsync_sync_errors", "Failed sync runs, by error code", ["code"], registry=r
        )
        self.lag = Histogram(
            "crmsync_sync_lag_seconds",
            "How late a run started against when it was due",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "crmsync_sync_duration_seconds",
            "How long a sync run took",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.mailbox_lag = Gauge(
            "crmsync_mailbox_lag_seconds",
            "The newest run's lag, per mailbox",
            ["mailbox"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "crmsync_queue_depth", "Sync jobs waiting in the queue", registry=r
        )
        self.mailboxes = Gauge("crmsync_mailboxes", "Mailboxes by state", ["state"], registry=r)
        self.overdue = Gauge(
            "crmsync_mailboxes_overdue",
            "Enabled mailboxes whose run is more than a minute late",
            registry=r,
        )
        self.push = Gauge(
            "crmsync_push_connections", "Push (IDLE) watchers by state", ["state"], registry=r
        )
        self.push_wakeups = Counter(
            "crmsync_push_wakeups", "New-mail notifications that pulled a run forward", registry=r
        )
        self.recovered = Counter(
            "crmsync_jobs_recovered", "Jobs of dead workers recovered", registry=r
        )
        self.emails_sent = Counter(
            "crmsync_emails_sent", "Outgoing CRM email submitted", registry=r
        )
        self.emails_failed = Counter(
            "crmsync_emails_failed", "Outgoing CRM email that failed for good", registry=r
        )
        self.dispatched = Counter(
            "crmsync_jobs_dispatched", "Sync jobs queued by the dispatcher", registry=r
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> WSGIServer:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the server."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
