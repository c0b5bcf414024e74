"""Parsing the whole messages of a batch, on every core when the batch is big enough.

The parser (``crmsync.mail.message``) is pure Python, about 2,000 messages a second on one core,
and a first sync parses every tracked message of a mailbox. The work is spread over a pool of
worker processes; small batches (the usual incremental sync) are parsed in-process, where
starting workers would cost more than it saves. This module imports nothing but the parser, so
a worker starts quickly.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import repeat

from crmsync.mail.message import MessageParseError, ParsedMessage, parse_message

ParseResult = ParsedMessage | MessageParseError

POOL_THRESHOLD = 32
"""Batches with fewer messages are parsed in-process."""


def parse_one(raw: bytes, max_attachment_bytes: int) -> ParseResult:
    """The parsed message, or the error (returned, not raised: one message, not the batch)."""
    try:
        return parse_message(raw, max_attachment_bytes=max_attachment_bytes)
    except MessageParseError as exc:
        return exc
    except Exception as exc:  # the parser promises not to raise; still, one message
        return MessageParseError(f"the parser failed ({type(exc).__name__}: {exc})")


def parse_inline(raws: Sequence[bytes], max_attachment_bytes: int) -> list[ParseResult]:
    return [parse_one(raw, max_attachment_bytes) for raw in raws]


PARENT_CHECK_SECONDS = 1.0


def _exit_with(parent: int) -> None:
    """In a worker: end when the process that owns the pool is gone.

    A pool's workers wait on a queue whose writing end they hold themselves, so a parent that
    dies without closing the pool (SIGKILL, OOM killer) would leave them, and the forkserver
    they keep alive, waiting forever.
    """

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_SECONDS)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass  # it exists (owned by another user): keep waiting

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class ParserPool:
    """A callable parser that uses worker processes for big batches; ``close()`` when done."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, raws: Sequence[bytes], max_attachment_bytes: int) -> list[ParseResult]:
        if self.workers < 2 or len(raws) < POOL_THRESHOLD:
            return parse_inline(raws, max_attachment_bytes)
        if self._pool is None:
            # forkserver: the workers do not inherit this process's sockets and threads. Its
            # default preload is __main__, which would re-run a script without a main guard;
            # preloading just this module also gives the workers the parser ready-imported.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=context,
                initializer=_exit_with,
                initargs=(os.getpid(),),
            )
        chunk = max(1, len(raws) // (self.workers * 4))
        try:
            return list(
                self._pool.map(parse_one, raws, repeat(max_attachment_bytes), chunksize=chunk)
            )
        except BrokenProcessPool:
            # a worker died (out of memory, killed): parse here, start a new pool next time
            self._pool = None
            return parse_inline(raws, max_attachment_bytes)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ParserPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
