"""Push: one IMAP IDLE connection per mailbox, thousands of them as asyncio tasks in one process.

Polling every mailbox every minute costs a login and a STATUS each time and still leaves mail
waiting up to a minute; IDLE lets the server say "new mail" within a second. A thread per
connection would not scale to thousands of mailboxes, so every mailbox is one asyncio task
holding an ``IdleConnection`` (plus a small task that delivers its notifications, so a slow
callback never stalls reading and a burst of arrivals becomes one call).

The engine tells the watcher which mailboxes to watch (``set_targets``, as often as it likes)
and hears back through two callbacks: ``on_new_mail(mailbox_id)`` (sync that mailbox now) and
``on_state(mailbox_id, state)`` (e.g. poll it while it is not ``live``). What the watcher does
when things go wrong:

- connection lost, timeout, server down or BYE: ``backoff``, reconnect after an exponential
  delay with jitter (``backoff_initial`` doubling up to ``backoff_max``), reset once a
  connection has stayed live for a while;
- the server has no IDLE: ``unsupported``, no more attempts until ``set_targets`` gives that
  mailbox again with changed settings;
- a permanent error (password refused, folder missing, TLS refused): ``failed``, retried only
  every ``backoff_max`` seconds;
- at most ``max_connecting`` logins in flight at once, so 10,000 targets do not open 10,000
  sockets in the same second (and do not trip the server's login limits).

A mailbox that comes back after an outage is reported as having new mail when its UIDNEXT grew
meanwhile (same UIDVALIDITY), so nothing that arrived while the watcher was deaf waits for the
next poll. Callback exceptions are logged and swallowed: one bad callback must not end push for
a mailbox, let alone for all of them. Passwords travel as ``Secret`` and are never logged.
"""

from __future__ import annotations

import asyncio
import enum
import random
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from crmsync.errors import CrmsyncError
from crmsync.mail.imap.idle import (
    LOGOUT_TIMEOUT,
    MAX_IDLE_SECONDS,
    IdleConnection,
    PushUnavailable,
    Selected,
    SourceAddress,
)
from crmsync.secrets import Secret

log = structlog.get_logger("crmsync.sync.push")

STABLE_SECONDS = 60.0
"""A connection live this long (or through one whole IDLE period) resets the back-off."""


class PushState(enum.StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    BACKOFF = "backoff"
    UNSUPPORTED = "unsupported"
    FAILED = "failed"


@dataclass(frozen=True)
class PushTarget:
    mailbox_id: uuid.UUID
    url: str
    """The mailbox's imap_url as stored, e.g. ``imap://127.0.0.1:1143``."""
    username: str
    password: Secret
    folder: str = "INBOX"


@dataclass(eq=False)
class _Watch:
    """The tasks and connection of one target."""

    target: PushTarget
    state: PushState | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    notifier: asyncio.Task[None] | None = None
    conn: IdleConnection | None = None
    last: Selected | None = None
    """What the previous connection's SELECT saw, to spot mail that arrived in between."""


class PushWatcher:
    """Keeps an IDLE connection open to each target's folder; see the module docstring."""

    def __init__(
        self,
        *,
        on_new_mail: Callable[[uuid.UUID], Awaitable[None]],
        on_state: Callable[[uuid.UUID, PushState], Awaitable[None]],
        timeout: float = 30.0,
        reidle_seconds: float = 25 * 60,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
        max_connecting: int = 100,
        ssl_context: ssl.SSLContext | None = None,
        source_address: SourceAddress | None = None,
    ) -> None:
        if not 0 < reidle_seconds <= MAX_IDLE_SECONDS:
            raise ValueError(f"reidle_seconds must be in (0, {MAX_IDLE_SECONDS}] (RFC 2177)")
        if timeout <= 0 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("timeout and back-off must be positive, backoff_max >= initial")
        if max_connecting < 1:
            raise ValueError("max_connecting must be at least 1")
        self._on_new_mail = on_new_mail
        self._on_state = on_state
        self.timeout = timeout
        self.reidle_seconds = reidle_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._connecting = asyncio.Semaphore(max_connecting)
        self._ssl_context = ssl_context
        self._source_address = source_address
        self._watches: dict[uuid.UUID, _Watch] = {}
        self._closed = False

    # ------------------------------------------------------------------ public API
    async def set_targets(self, targets: Iterable[PushTarget]) -> None:
        """Watch exactly TARGETS: start new ones, stop removed ones, restart changed ones."""
        if self._closed:
            raise RuntimeError("the push watcher is closed")
        wanted: dict[uuid.UUID, PushTarget] = {}
        for target in targets:
            if target.mailbox_id in wanted:
                raise ValueError(f"mailbox {target.mailbox_id} is given twice")
            wanted[target.mailbox_id] = target
        stale = [
            w for mid, w in self._watches.items() if wanted.get(mid) != w.target
        ]  # removed or changed (URL, user, password or folder)
        for watch in stale:
            del self._watches[watch.target.mailbox_id]
        await self._stop(stale)
        for mailbox_id, target in wanted.items():
            if mailbox_id not in self._watches:
                self._start(target)

    def states(self) -> dict[uuid.UUID, PushState]:
        return {
            mailbox_id: w.state or PushState.CONNECTING for mailbox_id, w in self._watches.items()
        }

    async def close(self) -> None:
        """Stop every watch: LOGOUT where the connection is healthy, all within a bounded time."""
        self._closed = True
        watches, self._watches = list(self._watches.values()), {}
        await self._stop(watches)

    # ------------------------------------------------------------------ tasks
    def _start(self, target: PushTarget) -> None:
        watch = _Watch(target)
        self._watches[target.mailbox_id] = watch
        name = f"push-{target.mailbox_id}"
        watch.task = asyncio.create_task(self._run(watch), name=name)
        watch.notifier = asyncio.create_task(self._notify_loop(watch), name=f"{name}-notify")

    async def _stop(self, watches: list[_Watch]) -> None:
        """Cancel WATCHES; their connections log out (bounded), stragglers are dropped."""
        tasks = [t for w in watches for t in (w.task, w.notifier) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=min(self.timeout, LOGOUT_TIMEOUT) + 1.0)
        for watch in watches:
            if watch.conn is not None:
                watch.conn.abort()

    async def _run(self, watch: _Watch) -> None:
        """Connect, IDLE, and reconnect on failure, until cancelled or unsupported."""
        logger = log.bind(mailbox_id=str(watch.target.mailbox_id))
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            await self._set_state(watch, PushState.CONNECTING, logger)
            live_since: float | None = None
            delay = self.backoff_initial
            try:
                conn = await self._connect(watch)
                live_since = loop.time()
                await self._set_state(watch, PushState.LIVE, logger)
                await self._idle_forever(watch, conn)
            except PushUnavailable as exc:
                logger.info("push unavailable", reason=str(exc))
                await self._set_state(watch, PushState.UNSUPPORTED, logger)
                return
            except CrmsyncError as exc:  # ImapError, or InvalidInput for a bad URL
                stable = live_since is not None and (
                    loop.time() - live_since >= min(STABLE_SECONDS, self.reidle_seconds)
                )
                attempt = 0 if stable else attempt
                delay = await self._after_failure(watch, exc, attempt, logger)
                attempt += 1
            except Exception as exc:  # a bug: keep watching, but say so
                logger.exception("push watch failed unexpectedly", error=type(exc).__name__)
                delay = self._backoff(attempt)
                attempt += 1
                await self._set_state(watch, PushState.BACKOFF, logger)
            finally:
                await self._disconnect(watch)
            await asyncio.sleep(delay)

    async def _connect(self, watch: _Watch) -> IdleConnection:
        target = watch.target
        conn = IdleConnection(
            target.url,
            target.username,
            target.password,
            timeout=self.timeout,
            ssl_context=self._ssl_context,
            source_address=self._source_address,
        )
        watch.conn = conn
        async with self._connecting:
            await conn.open()
            selected = await conn.select(target.folder)
        previous, watch.last = watch.last, selected
        if _grew(previous, selected):
            watch.wake.set()  # mail arrived while nobody was listening
        return conn

    async def _idle_forever(self, watch: _Watch, conn: IdleConnection) -> None:
        while True:
            await conn.idle(seconds=self.reidle_seconds, on_new_mail=watch.wake.set)

    async def _after_failure(
        self, watch: _Watch, exc: CrmsyncError, attempt: int, logger: Any
    ) -> float:
        if getattr(exc, "transient", False):
            delay = self._backoff(attempt)
            logger.info("push connection lost", reason=str(exc), retry_in=round(delay, 1))
            await self._set_state(watch, PushState.BACKOFF, logger)
            return delay
        delay = self.backoff_max * random.uniform(0.9, 1.0)  # noqa: S311 (jitter, not crypto)
        logger.warning("push failed", reason=str(exc), retry_in=round(delay, 1))
        await self._set_state(watch, PushState.FAILED, logger)
        return delay

    def _backoff(self, attempt: int) -> float:
        """Exponential with "equal jitter": half fixed, half random, capped at backoff_max."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2 ** min(attempt, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 (jitter, not crypto)

    async def _disconnect(self, watch: _Watch) -> None:
        conn, watch.conn = watch.conn, None
        if conn is not None:
            await conn.close()

    # ------------------------------------------------------------------ callbacks
    async def _set_state(self, watch: _Watch, state: PushState, logger: Any) -> None:
        if watch.state is state:
            return
        watch.state = state
        logger.debug("push state", state=str(state))
        try:
            await self._on_state(watch.target.mailbox_id, state)
        except Exception:
            logger.exception("push on_state callback failed", state=str(state))

    async def _notify_loop(self, watch: _Watch) -> None:
        """Call on_new_mail once per burst of arrivals, never two at a time for one mailbox."""
        while True:
            await watch.wake.wait()
            watch.wake.clear()
            try:
                await self._on_new_mail(watch.target.mailbox_id)
            except Exception:
                log.exception(
                    "push on_new_mail callback failed", mailbox_id=str(watch.target.mailbox_id)
                )


def _grew(before: Selected | None, now: Selected) -> bool:
    """NOW has messages that BEFORE (an earlier connection's SELECT) did not know of."""
    if before is None or now.uidnext is None or before.uidnext is None:
        return False
    return before.uidvalidity == now.uidvalidity and now.uidnext > before.uidnext
