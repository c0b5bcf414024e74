"""``crmsync run`` and ``crmsync worker``: the continuous sync service.

``run`` is the one process a small installation needs: on the embedded database by default, a
worker that syncs every enabled mailbox on its schedule and watches mailboxes by IMAP IDLE (push).
``worker`` adds capacity: any number, on any machine, pointed at the same PostgreSQL with
``CRMSYNC_DATABASE_URL``; they share the work and never sync one mailbox twice at a time.
Both stop gracefully on Ctrl-C / SIGTERM (running syncs finish first). docs/scheduling.md.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from crmsync.cli.context import Context
from crmsync.cli.output import err

if TYPE_CHECKING:
    from crmsync.scheduler.worker import WorkerOptions

Concurrency = Annotated[
    int,
    typer.Option(
        "--concurrency", min=1, max=500, help="Mailboxes this process syncs at the same time."
    ),
]
MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=1,
        max=65535,
        help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics.",
    ),
]
StalledAfter = Annotated[
    float,
    typer.Option(
        "--stalled-after",
        min=3.0,
        help="Seconds without a heartbeat after which another worker's jobs are taken over.",
    ),
]
GracefulTimeout = Annotated[
    float,
    typer.Option(
        "--graceful-timeout",
        min=0.0,
        help="On shutdown, seconds the job queue waits for running syncs (a sync is never "
        "cut mid-batch; it finishes and is recorded).",
    ),
]


def _options(**values: object) -> WorkerOptions:
    # imported here: the worker pulls in Procrastinate, which other commands do not need
    from crmsync.scheduler.worker import WorkerOptions

    return WorkerOptions(**values)  # type: ignore[arg-type]


def _serve(options: WorkerOptions, what: str) -> None:
    from crmsync.scheduler.worker import serve

    ctx = Context()
    ctx.engine().dispose()  # refuses a missing or outdated schema with advice, before starting
    metrics = (
        f"; metrics on http://127.0.0.1:{options.metrics_port}/metrics"
        if options.metrics_port
        else ""
    )
    err.print(
        f"crmsync {what}: syncing with {options.concurrency} at a time"
        f"{', push (IMAP IDLE) on' if options.push else ''}{metrics}; Ctrl-C stops",
        soft_wrap=True,
    )
    asyncio.run(serve(ctx.database_url, ctx.secret_box, options))
    err.print(f"crmsync {what}: stopped")


def run(
    concurrency: Concurrency = 10,
    push: Annotated[
        bool, typer.Option("--push/--no-push", help="Watch mailboxes by IMAP IDLE.")
    ] = True,
    metrics_port: MetricsPort = None,
    graceful_timeout: GracefulTimeout = 60.0,
) -> None:
    """Run the sync service in one process (the web API joins it in a later release):
    every enabled mailbox is synced on its schedule and, with push, as soon as mail arrives."""
    _serve(
        _options(
            concurrency=concurrency,
            push=push,
            metrics_port=metrics_port,
            graceful_timeout=graceful_timeout,
        ),
        "run",
    )


def worker(
    concurrency: Concurrency = 10,
    name: Annotated[
        str | None, typer.Option("--name", help="A name for this worker in logs.")
    ] = None,
    push: Annotated[
        bool,
        typer.Option(
            "--push/--no-push",
            help="Also offer to run the push watcher (one process at a time runs it).",
        ),
    ] = False,
    metrics_port: MetricsPort = None,
    stalled_after: StalledAfter = 30.0,
    graceful_timeout: GracefulTimeout = 60.0,
) -> None:
    """Run an extra sync worker against the same database (CRMSYNC_DATABASE_URL)."""
    _serve(
        _options(
            concurrency=concurrency,
            name=name,
            push=push,
            metrics_port=metrics_port,
            stalled_after=stalled_after,
            graceful_timeout=graceful_timeout,
        ),
        f"worker{f' {name}' if name else ''}",
    )
