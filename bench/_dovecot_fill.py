"""Fill a stack user's Dovecot INBOX fast: files straight into the Maildir, then one index pass.

    result = fill_inbox(stack, user, messages(100_000, user.address, seed=4))

Delivering 100,000 messages over SMTP/LMTP or APPEND takes many minutes; writing them into
``Maildir/cur`` (``mail_location = maildir:~/Maildir``, home ``DIR/dovecot/mail/<user>``, files
owned by ``nobody:nogroup`` like everything Dovecot writes in the stack) takes seconds. Then
Dovecot indexes them once (``doveadm force-resync``, or a SELECT if doveadm cannot reach the
stack), so the first timed client does not pay the scan.

File names follow the maildir convention ``<time>.P<pid>Q<n>.<host>,S=<size>,W=<size>:2,``; the
messages have CRLF line ends, so the virtual size (W=) is the file size and Dovecot need not
read a file to learn either. Dovecot gives UIDs in the order it reads the directory, which is
not the order of writing: UIDs do not follow the generator's order (nothing here needs them to).

Dovecot rescans a maildir on every access while the directory's mtime is recent
(tests/integration/test_imap_delta.py), so the directories are dated two minutes back before
indexing; and a throw-away session takes the one index write that the first session after
indexing makes (see ``fill_inbox``), so the timings that follow are of a settled mailbox.
"""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.stackfix import MailUser, Stack

HOST = "bench.crmsync.test"
SETTLE_STATUS = 3


@dataclass(frozen=True)
class FillResult:
    count: int
    bytes: int
    write_s: float
    """Generating the messages and writing the files."""
    index_s: float
    """Dovecot's first scan and index of the folder."""
    index_method: str
    """``doveadm force-resync`` or ``imap select``."""

    @property
    def total_s(self) -> float:
        return self.write_s + self.index_s


def imap_login(stack: Stack, user: MailUser, timeout: float = 120) -> imaplib.IMAP4:
    client = imaplib.IMAP4(stack.host, stack.imap_port, timeout=timeout)
    client.login(user.username, user.password)
    return client


def maildir_of(stack: Stack, user: MailUser) -> Path:
    return stack.maildir_root / user.username / "Maildir"


def _backdate(maildir: Path, seconds: float = 120) -> None:
    past = time.time() - seconds
    for sub in ("cur", "new", "tmp"):
        if (maildir / sub).is_dir():
            os.utime(maildir / sub, (past, past))


def _doveadm(stack: Stack, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["doveadm", "-c", str(stack.dir / "dovecot" / "dovecot.conf"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def fill_inbox(stack: Stack, user: MailUser, raws: Iterable[bytes]) -> FillResult:
    """Write RAWS (CRLF messages) into USER's INBOX and have Dovecot index them."""
    started = time.perf_counter()
    client = imap_login(stack, user)  # Dovecot creates the Maildir (owned by nobody)
    try:
        client.select("INBOX")
    finally:
        client.logout()
    maildir = maildir_of(stack, user)
    cur = maildir / "cur"
    if not cur.is_dir():
        raise RuntimeError(f"Dovecot did not create {cur}")
    uid = pwd.getpwnam("nobody").pw_uid
    gid = grp.getgrnam("nogroup").gr_gid
    stamp, pid = int(time.time()), os.getpid()
    count = total = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for count, raw in enumerate(raws, start=1):
        size = len(raw)
        path = f"{cur}/{stamp}.P{pid}Q{count}.{HOST},S={size},W={size}:2,"
        fd = os.open(path, flags, 0o600)
        try:
            os.write(fd, raw)
            os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
        total += size
    _backdate(maildir)
    write_s = time.perf_counter() - started

    started = time.perf_counter()
    result = _doveadm(stack, "force-resync", "-u", user.username, "INBOX")
    method = "doveadm force-resync"
    if result.returncode != 0:
        method = f"imap select (doveadm failed: {(result.stderr or result.stdout).strip()[:200]})"
        client = imap_login(stack, user, timeout=600)
        try:
            typ, data = client.select("INBOX", readonly=True)
            if typ != "OK":
                raise RuntimeError(f"SELECT INBOX of {user.username}: {typ} {data}")
        finally:
            client.logout()
    # Settle: the first IMAP session that opens the freshly indexed folder writes one more
    # transaction to dovecot.index.log on its second access, and that session then re-reads
    # the whole log on every later STATUS (measured: 3.5 ms at 10k messages for the rest of
    # its life, against 0.2 ms for any session opened afterwards). Let a throw-away session
    # take that write, so the timed sessions see a mailbox as a long-running server has it.
    client = imap_login(stack, user, timeout=600)
    try:
        for _ in range(SETTLE_STATUS):
            client.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)")
    finally:
        client.logout()
    index_s = time.perf_counter() - started
    return FillResult(count, total, write_s, index_s, method)


def inbox_count(stack: Stack, user: MailUser) -> int:
    """MESSAGES of the user's INBOX, by STATUS."""
    client = imap_login(stack, user)
    try:
        typ, data = client.status("INBOX", "(MESSAGES)")
        if typ != "OK":
            raise RuntimeError(f"STATUS INBOX: {typ} {data}")
        text = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
        return int(text.rsplit("MESSAGES", 1)[1].strip(" ()"))
    finally:
        client.logout()
