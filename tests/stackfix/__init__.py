"""Helpers for tests against the real-server stack (stack/up.sh): Dovecot, SMTP, Radicale, Postgres.

    from tests.stackfix import Stack, ensure_stack

    stack, started = ensure_stack(Path(".stack/test"))   # runs stack/up.sh unless running
    user = stack.new_user()                               # exists in Dovecot and Radicale
    stack.deliver(raw_bytes, [user.address])              # SMTP -> LMTP -> INBOX
    with stack.imap(user) as client: ...                  # logged-in IMAPClient
    stack.outbox(message_id="<...>")                      # mail sent to non-local domains

The pytest fixtures (``stack``, ``mail_user``) live in ``tests.stackfix.plugin``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import importlib.util
import json
import os
import secrets
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_SCRIPTS = REPO_ROOT / "stack"
DEFAULT_TEST_STACK_DIR = REPO_ROOT / ".stack" / "test"

__all__ = [
    "DEFAULT_TEST_STACK_DIR",
    "REPO_ROOT",
    "STACK_SCRIPTS",
    "MailUser",
    "OutboxMessage",
    "Stack",
    "StackStartError",
    "ensure_stack",
    "stack_dir_for_tests",
    "stop_stack",
]


class StackStartError(RuntimeError):
    """stack/up.sh failed; the message carries its output and what to do."""


def stack_dir_for_tests() -> Path:
    """DIR of the test stack: $CRMSYNC_TEST_STACK_DIR or REPO/.stack/test."""
    return Path(os.environ.get("CRMSYNC_TEST_STACK_DIR") or DEFAULT_TEST_STACK_DIR).resolve()


_util: ModuleType | None = None


def _stackutil() -> ModuleType:
    """stack/stackutil.py (user-file format shared with the shell scripts)."""
    global _util
    if _util is None:
        spec = importlib.util.spec_from_file_location(
            "crmsync_stack_stackutil", STACK_SCRIPTS / "stackutil.py"
        )
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _util = module
    return _util


def _pid_alive(pid: int, marker: str = "") -> bool:
    """PID is alive (not a zombie) and, if MARKER is given, its command line contains it."""
    if not pid or not _stackutil()._pid_alive(pid):
        return False
    if marker:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return False
        return marker.encode() in cmdline
    return True


@dataclass(frozen=True)
class MailUser:
    username: str
    password: str
    address: str

    def __repr__(self) -> str:  # keep passwords out of pytest output
        return f"MailUser(username={self.username!r}, address={self.address!r})"


@dataclass(frozen=True)
class OutboxMessage:
    """A message the SMTP server "sent to the outside world" (recipient not in a local domain)."""

    eml_path: Path
    envelope: dict[str, Any]

    @property
    def raw(self) -> bytes:
        return self.eml_path.read_bytes()

    @property
    def mail_from(self) -> str:
        return self.envelope["mail_from"]

    @property
    def rcpt_tos(self) -> list[str]:
        """Envelope recipients outside the local domains (Bcc included)."""
        return self.envelope["rcpt_tos"]

    @property
    def message_id(self) -> str:
        return self.envelope["message_id"]

    @property
    def auth_user(self) -> str | None:
        return self.envelope["auth_user"]

    def message(self) -> EmailMessage:
        return BytesParser(policy=policy.default).parsebytes(self.raw)  # type: ignore[return-value]


@dataclass(frozen=True)
class Stack:
    """A running stack, as described by DIR/stack.json (written by stack/up.sh)."""

    dir: Path
    host: str
    imap_port: int
    lmtp_port: int
    smtp_port: int
    radicale_port: int
    radicale_url: str
    postgres_port: int
    postgres_url: str  # SQLAlchemy form: postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
    postgres_dsn: str  # libpq form for psycopg.connect()
    dovecot_passwd_file: Path
    radicale_htpasswd_file: Path
    mail_domains: tuple[str, ...]
    outbox_dir: Path
    maildir_root: Path
    smtp_log: Path
    pids: dict[str, int]
    info: dict[str, Any] = field(repr=False, compare=False)

    # ------------------------------------------------------------------ loading / state
    @classmethod
    def load(cls, stack_dir: Path | str) -> Stack:
        stack_dir = Path(stack_dir)
        info = json.loads((stack_dir / "stack.json").read_text())
        return cls(
            dir=Path(info["dir"]),
            host=info["host"],
            imap_port=info["imap_port"],
            lmtp_port=info["lmtp_port"],
            smtp_port=info["smtp_port"],
            radicale_port=info["radicale_port"],
            radicale_url=info["radicale_url"],
            postgres_port=info["postgres_port"],
            postgres_url=info["postgres_url"],
            postgres_dsn=info["postgres_dsn"],
            dovecot_passwd_file=Path(info["dovecot_passwd_file"]),
            radicale_htpasswd_file=Path(info["radicale_htpasswd_file"]),
            mail_domains=tuple(info["mail_domains"]),
            outbox_dir=Path(info["outbox_dir"]),
            maildir_root=Path(info["maildir_root"]),
            smtp_log=Path(info["smtp_log"]),
            pids=dict(info["pids"]),
            info=info,
        )

    @property
    def domain(self) -> str:
        """The first local mail domain (example.test by default)."""
        return self.mail_domains[0]

    def is_running(self) -> bool:
        """Every server recorded in stack.json is alive (and is this DIR's, not a reused PID)."""
        return all(_pid_alive(pid, str(self.dir)) for pid in self.pids.values())

    def as_env(self) -> dict[str, str]:
        """The STACK_* variables of DIR/stack.env, e.g. for a subprocess."""
        env: dict[str, str] = {}
        for line in (self.dir / "stack.env").read_text().splitlines():
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                env[key] = _shell_unquote(value)
        return env

    # ------------------------------------------------------------------ users
    def add_user(self, username: str, password: str) -> MailUser:
        """Add (or re-password) a user in Dovecot and Radicale; works while they run."""
        name = _stackutil().add_user(self.dir, username, password)
        return MailUser(name, password, f"{name}@{self.domain}")

    def new_user(self, prefix: str = "u") -> MailUser:
        """A fresh user with a unique name and a random password."""
        return self.add_user(f"{prefix}{secrets.token_hex(5)}", secrets.token_urlsafe(12))

    # ------------------------------------------------------------------ mail
    def smtp(
        self, *, source_address: tuple[str, int] | None = None, timeout: float = 30
    ) -> smtplib.SMTP:
        """A connected smtplib.SMTP to the stack's SMTP server (EHLO done)."""
        client = smtplib.SMTP(
            self.host,
            self.smtp_port,
            local_hostname="client.stack.test",
            timeout=timeout,
            source_address=source_address,
        )
        client.ehlo()
        return client

    def deliver(
        self,
        raw: bytes | EmailMessage,
        to: Sequence[str],
        mail_from: str = "sender@external.test",
        *,
        user: MailUser | None = None,
        source_address: tuple[str, int] | None = None,
        mail_options: Sequence[str] = (),
    ) -> dict[str, tuple[int, bytes]]:
        """Send RAW through the SMTP server (AUTH as USER if given); returns refused recipients.

        Local-domain recipients are in their INBOX when this returns; others are in the outbox.
        Raises smtplib.SMTPRecipientsRefused if every recipient is refused.  An EmailMessage is
        serialized with CRLF line ends (policy.SMTP); bytes are sent as they are.
        """
        data = raw.as_bytes(policy=policy.SMTP) if isinstance(raw, EmailMessage) else raw
        with self.smtp(source_address=source_address) as client:
            if user is not None:
                client.login(user.username, user.password)
            return client.sendmail(mail_from, list(to), data, mail_options=list(mail_options))

    def imap(self, user: MailUser, *, timeout: float = 30):
        """A logged-in imapclient.IMAPClient (use as a context manager to log out)."""
        from imapclient import IMAPClient

        client = IMAPClient(self.host, port=self.imap_port, ssl=False, timeout=timeout)
        try:
            client.login(user.username, user.password)
        except Exception:
            client.shutdown()
            raise
        return client

    def outbox(self, message_id: str | None = None) -> list[OutboxMessage]:
        """Messages written to the outbox, oldest first (optionally only one Message-ID)."""
        found = []
        for meta_path in sorted(self.outbox_dir.glob("[0-9]*.json")):
            with contextlib.suppress(FileNotFoundError):
                envelope = json.loads(meta_path.read_text())
                if message_id is None or envelope.get("message_id") == message_id:
                    found.append(OutboxMessage(self.outbox_dir / envelope["eml"], envelope))
        return found

    def wait_outbox(
        self, predicate: Callable[[OutboxMessage], bool], timeout: float = 10
    ) -> OutboxMessage:
        """First outbox message matching PREDICATE, waiting up to TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.outbox():
                if predicate(msg):
                    return msg
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching outbox message in {self.outbox_dir}")
            time.sleep(0.05)

    def clear_outbox(self) -> None:
        for path in self.outbox_dir.iterdir():
            if path.suffix in (".eml", ".json"):
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ CalDAV / CardDAV
    def dav_request(
        self,
        method: str,
        path: str,
        user: MailUser | None = None,
        *,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request to Radicale with Basic auth (no 401 round trip)."""
        hdrs = dict(headers or {})
        if user is not None:
            token = base64.b64encode(f"{user.username}:{user.password}".encode()).decode()
            hdrs["Authorization"] = f"Basic {token}"
        if isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPConnection(self.host, self.radicale_port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


def _shell_unquote(value: str) -> str:
    import shlex

    parts = shlex.split(value)
    return parts[0] if parts else ""


def _run_script(name: str, stack_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(STACK_SCRIPTS / name), str(stack_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def ensure_stack(stack_dir: Path | str) -> tuple[Stack, bool]:
    """Return the stack in STACK_DIR, starting it with stack/up.sh if it is not running.

    ``started`` is True when this call started it (so the caller should stop it).  Installing
    the Debian packages is not done here: run ``stack/install.sh`` once as root.
    """
    stack_dir = Path(stack_dir).resolve()
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        stack = Stack.load(stack_dir)
        if stack.is_running():
            return stack, False
    result = _run_script("up.sh", stack_dir, timeout=180)
    if result.returncode != 0:
        raise StackStartError(
            f"stack/up.sh {stack_dir} failed (exit {result.returncode}).\n"
            f"{result.stdout}{result.stderr}\n"
            f"If servers are missing, run {STACK_SCRIPTS / 'install.sh'} as root."
        )
    started = "already running" not in result.stdout
    return Stack.load(stack_dir), started


def stop_stack(stack_dir: Path | str) -> None:
    result = _run_script("down.sh", Path(stack_dir).resolve(), timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"stack/down.sh failed: {result.stdout}{result.stderr}")
