"""The Sent folder of a mailbox that sends CRM email: one IMAP connection for a run, and the
copies written on a thread of their own so the next email is submitted meanwhile.

    with open_sent_folder(imap_url, username, password, timeout=60) as sent:
        with SentCopier(sent, on_copied=note) as copier:
            copier.copy(email_id, raw)      # kept for the batch
            copier.flush()                  # written on the copier's thread; then note(ids)

A mailbox without IMAP, or whose IMAP cannot be reached, gets a ``SentFolder`` that copies
nothing and says why (``problem``): sending does not wait for the Sent folder.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import structlog

from crmsync.errors import CrmsyncError
from crmsync.mail.imap import ImapSession
from crmsync.mail.imap.errors import ImapError
from crmsync.secrets import Secret

log = structlog.get_logger("crmsync.sync.sent_folder")

DEFAULT_SENT_FOLDER = "Sent"
"""Created for a mailbox that has no folder of sent mail (none marked ``\\Sent``, none with a
usual name), as a mail client would."""
MAX_BATCH = 25
"""Copies written in one APPEND at most (the caller flushes more often: once per batch)."""


class SentFolder:
    """The mailbox's Sent folder over one IMAP connection (or none, with the reason)."""

    def __init__(self, imap: ImapSession | None, folder: str | None, problem: str | None):
        self.imap, self.folder, self.problem = imap, folder, problem

    @property
    def usable(self) -> bool:
        return self.imap is not None and self.folder is not None

    def has(self, message_id: str) -> bool | None:
        """Whether a message with this Message-ID is in Sent; None: cannot tell."""
        if self.imap is None or self.folder is None:
            return None
        return bool(self.imap.find_by_message_id(self.folder, message_id))

    def save(self, message: bytes) -> bool:
        """Append MESSAGE with ``\\Seen``; False when there is no Sent folder to write to."""
        if self.imap is None or self.folder is None:
            return False
        self.imap.append_message(self.folder, message, flags=("\\Seen",))
        return True


@contextmanager
def open_sent_folder(
    imap_url: str | None, username: str, password: Secret, *, timeout: float
) -> Iterator[SentFolder]:
    """The Sent folder (created as :data:`DEFAULT_SENT_FOLDER` when the mailbox has none)."""
    if not imap_url:
        yield SentFolder(None, None, "the mailbox has no IMAP server: no Sent copy is kept")
        return
    try:
        imap = ImapSession(imap_url, username, password, timeout=timeout)
        imap.__enter__()
    except (ImapError, CrmsyncError) as exc:
        yield SentFolder(None, None, f"the Sent folder cannot be reached: {exc}")
        return
    try:
        folder = imap.find_sent_folder()
        if folder is None:
            folder = DEFAULT_SENT_FOLDER
            imap.create_folder(folder)
        yield SentFolder(imap, folder, None)
    finally:
        try:
            imap.__exit__(None, None, None)
        except (ImapError, OSError):
            log.info("closing the IMAP connection for Sent copies failed", exc_info=True)


class SentCopier:
    """Sent copies written a batch at a time on a thread of their own, the only user of the
    IMAP connection, while the next emails are submitted.

    ``copy`` keeps a message for the batch; ``flush`` hands the batch to the thread, which
    writes it with one MULTIAPPEND where offered (``ImapSession.append_messages``) and then
    calls ON_COPIED with the ids written. A failed APPEND is put in ``errors`` and its emails
    are not reported as copied. Leaving the ``with`` block flushes, waits for everything and
    raises what ON_COPIED raised. AFTER_EACH (tests: fault injection) runs on the thread after
    each batch is written."""

    def __init__(
        self,
        sent: SentFolder,
        on_copied: Callable[[list[uuid.UUID]], None],
        *,
        after_each: Callable[[], None] = lambda: None,
    ) -> None:
        self.sent, self.on_copied, self.after_each = sent, on_copied, after_each
        self.errors: list[str] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crmsync-sent-copy")
        self._batch: list[tuple[uuid.UUID, bytes]] = []
        self._writing: Future[None] | None = None

    def copy(self, email_id: uuid.UUID, message: bytes) -> None:
        if self.sent.usable:
            self._batch.append((email_id, message))
            if len(self._batch) >= MAX_BATCH:
                self.flush()

    def flush(self) -> None:
        """Hand over the batch; waits for the previous one first (at most one in writing,
        so memory and the copies' lag stay bounded)."""
        self._wait()
        batch, self._batch = self._batch, []
        if batch:
            self._writing = self._pool.submit(self._write, batch)

    def _write(self, batch: list[tuple[uuid.UUID, bytes]]) -> None:
        imap, folder = self.sent.imap, self.sent.folder
        if imap is None or folder is None:  # copy() keeps nothing then
            return
        try:
            imap.append_messages(folder, [m for _, m in batch])
        except ImapError as exc:
            self.errors.append(f"sent, but {len(batch)} Sent copies failed: {exc}")
            return
        finally:
            self.after_each()
        self.on_copied([email_id for email_id, _ in batch])

    def _wait(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def __enter__(self) -> SentCopier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None:
                self.flush()
                self._wait()
        finally:
            self._pool.shutdown(wait=True)
