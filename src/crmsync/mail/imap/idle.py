"""A minimal asyncio IMAP client that only watches one folder with IDLE (RFC 2177).

Push needs one open connection per mailbox, thousands of them in one process: a thread per
``ImapSession`` (imapclient is blocking) would not scale, so this module speaks just enough IMAP
on asyncio streams to log in, SELECT and IDLE. It is built in three layers:

1. ``_read_response``: one response off the wire (a line, plus any literals it announces), every
   read bounded by a timeout or a deadline, sizes bounded.
2. Pure parsing (``parse_response``, ``capabilities_of``, ``MailCounter``, ``astring``,
   ``sasl_plain``): no I/O, unit-tested on their own.
3. ``IdleConnection``: ``open`` (connect, TLS policy, CAPABILITY, AUTHENTICATE PLAIN or LOGIN),
   ``select``, ``idle`` (one IDLE period, ended with DONE) and ``close`` (polite LOGOUT, bounded).

The transport policy is the one every adapter uses (``crmsync.transport``): ``imaps://`` is TLS
from the first byte, ``imap://`` upgrades with STARTTLS when offered, clear text only to a
loopback address. New mail is ``* N EXISTS`` with N above the count the client knows (from
SELECT, adjusted by EXPUNGE), or a growing ``* N RECENT``; a smaller EXISTS after an EXPUNGE is
not new mail. Errors are the adapter's ``ImapError`` kinds with ``transient`` set for the
scheduler; nothing here logs, and the password never reaches a message or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from crmsync.mail.imap.endpoint import ImapEndpoint, Security
from crmsync.mail.imap.errors import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionLost,
    ConnectionTimedOut,
    ImapError,
    InsecureTransportRefused,
    MailboxNotFound,
    MissingCapability,
    ServerUnavailable,
    TlsFailure,
)
from crmsync.secrets import Secret
from crmsync.transport import TransportDecision, decide_transport

DEFAULT_TIMEOUT = 30.0
MAX_IDLE_SECONDS = 29 * 60
"""RFC 2177: servers may drop an IDLE client after 30 minutes, so re-IDLE before 29."""
LOGOUT_TIMEOUT = 5.0
"""LOGOUT is a courtesy: a server that does not answer it quickly is simply disconnected."""
MAX_LINE = 64 * 1024
MAX_LITERAL = 1024 * 1024
"""The responses IDLE needs carry no literals; any a server sends are read and ignored, up to
this size (bigger means a confused or hostile server)."""

# Response codes (RFC 5530) that mean "try again later" when a login or command is refused.
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG", "EXPUNGEISSUED"})
SourceAddress = tuple[str, int]


class PushUnavailable(MissingCapability):
    """The server has no IDLE: push cannot work for this mailbox, polling is used instead."""


# ---------------------------------------------------------------------------- layer 2: parsing
@dataclass(frozen=True, slots=True)
class Response:
    """One server response, classified: tagged status, untagged data or continuation.

    ``tag`` is ``*`` (untagged), ``+`` (continuation) or a command tag; ``kind`` the upper-cased
    status or data name (``OK``, ``BYE``, ``EXISTS``, ``CAPABILITY``...; empty for ``+``);
    ``number`` the message count of ``* N EXISTS``-style responses; ``code`` and ``code_args``
    the bracketed response code (``[UIDNEXT 12]``); ``text`` the rest, for messages.
    """

    tag: str
    kind: str
    number: int | None = None
    code: str | None = None
    code_args: str = ""
    text: str = ""

    @property
    def untagged(self) -> bool:
        return self.tag == "*"

    @property
    def continuation(self) -> bool:
        return self.tag == "+"


_STATUS = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
_ATOM = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|~]+")
_CODE = re.compile(r"\[([A-Za-z0-9.-]+)(?: ([^\]]*))?\]\s?")
_TIMINGS = re.compile(r"\s*\(\d+\.\d+( \+ \d+\.\d+)* secs\)")
_LITERAL = re.compile(rb"\{(\d{1,10})\+?\}$")


def literal_size(line: bytes) -> int | None:
    """The size of the literal a response line (without CRLF) announces (``{12}``), or None."""
    found = _LITERAL.search(line)
    return int(found.group(1)) if found else None


def _text(raw: bytes) -> str:
    decoded = raw.decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else " " for ch in decoded).strip()


def parse_response(line: bytes) -> Response:
    """Classify one response line (CRLF stripped; literals are not looked into).

    Raises ValueError for a line that is no IMAP response at all.
    """
    if line.startswith(b"+"):
        return Response("+", "", text=_text(line[1:]))
    tag, sep, rest = line.partition(b" ")
    if not sep or not (tag == b"*" or _ATOM.fullmatch(tag)):
        raise ValueError(f"not an IMAP response: {_text(line[:80])!r}")
    first, _, rest = rest.partition(b" ")
    number = None
    if tag == b"*" and first.isdigit():
        number = int(first)
        first, _, rest = rest.partition(b" ")
    kind = first.decode("ascii", "replace").upper()
    if not kind:
        raise ValueError(f"IMAP response without a name: {_text(line[:80])!r}")
    text = _text(rest)
    code, code_args = None, ""
    if kind in _STATUS:
        found = _CODE.match(text)
        if found:
            code, code_args = found.group(1).upper(), found.group(2) or ""
            text = text[found.end() :]
    return Response(tag.decode("ascii"), kind, number, code, code_args, text)


def capabilities_of(response: Response) -> frozenset[str] | None:
    """Upper-cased capabilities from ``* CAPABILITY ...`` or a ``[CAPABILITY ...]`` code."""
    if response.untagged and response.kind == "CAPABILITY":
        return frozenset(response.text.upper().split())
    if response.code == "CAPABILITY":
        return frozenset(response.code_args.upper().split())
    return None


class MailCounter:
    """Tells new mail from other changes in a selected folder's untagged responses.

    EXISTS is the folder's message count: above what is known means messages arrived; below
    means messages were expunged (the EXPUNGE responses said so already). RECENT counts the
    ``\\Recent`` messages: it grows only when mail arrives.
    """

    def __init__(self, exists: int = 0, recent: int = 0) -> None:
        self.exists = exists
        self.recent = recent

    def feed(self, response: Response) -> bool:
        """Update the counts from RESPONSE; True when it reports new mail."""
        if not response.untagged or response.number is None:
            return False
        number = response.number
        if response.kind == "EXISTS":
            new = number > self.exists
            self.exists = number
            return new
        if response.kind == "EXPUNGE":
            self.exists = max(0, self.exists - 1)
            self.recent = min(self.recent, self.exists)
            return False
        if response.kind == "RECENT":
            new = number > self.recent
            self.recent = number
            return new
        return False


def quoted(value: str) -> bytes | None:
    """VALUE as an IMAP quoted string, or None when it needs a literal (8-bit, CR, LF, NUL)."""
    raw = value.encode("utf-8")
    if any(b > 0x7F or b in (0, 10, 13) for b in raw):
        return None
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def sasl_plain(username: str, password: str) -> bytes:
    """The base64 SASL PLAIN initial response (RFC 4616): ``\\0user\\0password``."""
    if "\0" in username or "\0" in password:
        raise ValueError("a NUL character cannot be sent in SASL PLAIN")
    return base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode())


@dataclass(frozen=True, slots=True)
class Selected:
    """What SELECT reported about the watched folder."""

    folder: str
    exists: int
    uidvalidity: int | None
    uidnext: int | None


def _code_int(response: Response) -> int | None:
    head = response.code_args.split(" ", 1)[0]
    return int(head) if head.isdigit() else None


# ---------------------------------------------------------------------------- layer 1 + 3
class IdleConnection:
    """One connection that logs in, selects a folder and waits in IDLE.

        conn = IdleConnection("imap://127.0.0.1:1143", "anna", Secret("..."), timeout=30)
        await conn.open()                       # PushUnavailable when the server has no IDLE
        await conn.select("INBOX")
        while True:
            await conn.idle(seconds=25 * 60, on_new_mail=event.set)
        await conn.close()                      # DONE/LOGOUT when healthy; never raises

    One task uses a connection at a time. After any error the connection is dropped and every
    further command raises ``ConnectionLost``; open a new one to retry.
    """

    def __init__(
        self,
        endpoint: ImapEndpoint | str,
        username: str,
        password: Secret,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        source_address: SourceAddress | None = None,
        prefer_login: bool = False,
    ) -> None:
        if not isinstance(password, Secret):
            raise TypeError("password must be a crmsync.secrets.Secret")
        self.endpoint = (
            endpoint if isinstance(endpoint, ImapEndpoint) else ImapEndpoint.from_url(endpoint)
        )
        self.username = username
        self._password = password
        self.timeout = timeout
        self._ssl_context = ssl_context
        self.source_address = source_address
        # LOGIN even when AUTHENTICATE PLAIN is offered (servers with a broken SASL; tests)
        self._prefer_login = prefer_login
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tag = 0
        self._logged_in = False
        self._idling = False
        self._broken = False
        self.capabilities: frozenset[str] = frozenset()
        self._last_capabilities: frozenset[str] | None = None
        self.counter = MailCounter()
        self.selected: Selected | None = None

    def __repr__(self) -> str:
        return f"IdleConnection({self.endpoint.url!r}, {self.username!r})"

    @property
    def where(self) -> str:
        return f"the IMAP server {self.endpoint.display}"

    # ------------------------------------------------------------------ open
    async def open(self) -> None:
        """Connect, secure, log in, read CAPABILITY; PushUnavailable without IDLE."""
        if self._writer is not None:
            return
        try:
            await self._connect()
            greeting = await self._greeting()
            if greeting.kind == "PREAUTH":  # logged in by the connection itself
                await self._refresh_capabilities(None)
            else:
                await self._secure()
                await self._authenticate()  # reads the capabilities after login
            self._logged_in = True
        except BaseException:
            self.abort()
            raise
        if "IDLE" not in self.capabilities:
            self.abort()
            raise PushUnavailable(
                f"{self.where} does not support IDLE: push is unavailable for the mailbox of "
                f"{self.username}; crmsync polls it instead",
                capability="IDLE",
            )

    async def _connect(self) -> None:
        implicit = self.endpoint.security is Security.IMPLICIT_TLS
        with self._translate("connecting"):
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self.endpoint.host,
                    self.endpoint.port,
                    ssl=self._tls_context() if implicit else None,
                    server_hostname=self.endpoint.host if implicit else None,
                    ssl_handshake_timeout=self.timeout if implicit else None,
                    local_addr=self.source_address,
                    limit=MAX_LINE,
                )
        _keepalive(self._writer)

    def _tls_context(self) -> ssl.SSLContext:
        # verifying by default (certificate chain and host name); tests pass their own CA
        return self._ssl_context or _default_tls_context()

    async def _greeting(self) -> Response:
        with self._translate("reading the greeting"):
            greeting = await self._read()
        if greeting.kind == "BYE" or not greeting.untagged or greeting.kind not in _STATUS:
            self._broken = True
            raise ServerUnavailable(
                f"{self.where} turned the connection away ({self._said(greeting)}); "
                "crmsync will retry"
            )
        self.capabilities = capabilities_of(greeting) or frozenset()
        return greeting

    async def _secure(self) -> None:
        if self.endpoint.security is Security.IMPLICIT_TLS:
            return
        if not self.capabilities:
            await self._refresh_capabilities(None)
        writer = self._writer
        assert writer is not None
        peer = str(writer.get_extra_info("peername")[0])
        decision = decide_transport(
            offers_starttls="STARTTLS" in self.capabilities, peer_address=peer
        )
        if decision is TransportDecision.REFUSE:
            raise InsecureTransportRefused(
                f"{self.where} does not offer STARTTLS, and crmsync sends passwords in clear "
                f"text only to loopback addresses: use imaps://{self.endpoint.host} (port 993) "
                "or enable STARTTLS on the server"
            )
        if decision is TransportDecision.STARTTLS:
            await self._starttls(writer)

    async def _starttls(self, writer: asyncio.StreamWriter) -> None:
        done = await self._command(b"STARTTLS", "starting TLS")
        self._check_ok(done, "starting TLS")
        # bytes after the OK were sent in clear text: injected, never to be read as TLS data
        if getattr(self._reader, "_buffer", b""):
            raise TlsFailure(f"{self.where} sent clear-text data after STARTTLS; refusing it")
        with self._translate("negotiating STARTTLS"):
            await writer.start_tls(
                self._tls_context(),
                server_hostname=self.endpoint.host,
                ssl_handshake_timeout=self.timeout,
            )
        await self._refresh_capabilities(None)  # what was said before TLS cannot be trusted

    async def _refresh_capabilities(self, done: Response | None) -> None:
        """From DONE's [CAPABILITY] code when it has one, else by asking CAPABILITY."""
        found = capabilities_of(done) if done is not None else None
        if found is None:
            self._last_capabilities = None
            tagged = await self._command(b"CAPABILITY", "reading the capabilities")
            self._check_ok(tagged, "reading the capabilities")
            found = self._last_capabilities or frozenset()
        self.capabilities = found

    # ------------------------------------------------------------------ authentication
    async def _authenticate(self) -> None:
        password = self._password.reveal()
        if "\0" in password or "\0" in self.username:
            raise AuthenticationFailed(
                f"the password or user name of {self.username} contains a NUL character, "
                "which IMAP cannot send: set another password"
            )
        if "AUTH=PLAIN" in self.capabilities and not self._prefer_login:
            done = await self._authenticate_plain(password)
            if done.kind != "BAD":
                return await self._after_login(done)
        if "LOGINDISABLED" in self.capabilities:
            raise MissingCapability(
                f"{self.where} accepts neither AUTHENTICATE PLAIN nor LOGIN for "
                f"{self.username}; crmsync cannot log in",
                capability="AUTH=PLAIN",
            )
        done = await self._login(password)
        await self._after_login(done)

    async def _authenticate_plain(self, password: str) -> Response:
        initial = sasl_plain(self.username, password)
        if "SASL-IR" in self.capabilities:
            return await self._command(b"AUTHENTICATE PLAIN " + initial, "logging in")
        return await self._command(b"AUTHENTICATE PLAIN", "logging in", continuation=[initial])

    async def _login(self, password: str) -> Response:
        segments = self._with_astrings(b"LOGIN", (self.username, password))
        return await self._command(segments[0], "logging in", continuation=segments[1:])

    def _with_astrings(self, command: bytes, values: tuple[str, ...]) -> list[bytes]:
        """COMMAND with VALUES as quoted strings or literals, split where a synchronizing
        literal makes the client wait for the server's ``+``."""
        segments = [command]
        for value in values:
            as_quoted = quoted(value)
            if as_quoted is not None:
                segments[-1] += b" " + as_quoted
                continue
            raw = value.encode("utf-8")
            if self._literal_plus(len(raw)):
                segments[-1] += b" {%d+}\r\n" % len(raw) + raw
            else:
                segments[-1] += b" {%d}" % len(raw)
                segments.append(raw)
        return segments

    def _literal_plus(self, size: int) -> bool:
        caps = self.capabilities
        return "LITERAL+" in caps or ("LITERAL-" in caps and size <= 4096)

    async def _after_login(self, done: Response) -> None:
        if done.kind == "OK":
            await self._refresh_capabilities(done)
            return
        said = self._said(done)
        if done.code in TRANSIENT_CODES:
            raise ServerUnavailable(
                f"{self.where} could not check the login of {self.username} right now "
                f"(server said: {said}); crmsync will retry"
            )
        if done.code == "PRIVACYREQUIRED":
            raise TlsFailure(
                f"{self.where} accepts the login of {self.username} only over TLS "
                f"(server said: {said}): use imaps://{self.endpoint.host}"
            )
        raise AuthenticationFailed(
            f"{self.where} refused the login of {self.username}: check the mailbox password "
            f"(crmsync mailbox add --update) (server said: {said})"
        )

    # ------------------------------------------------------------------ select and idle
    async def select(self, folder: str = "INBOX") -> Selected:
        """SELECT FOLDER; its EXISTS and RECENT become the baseline for new mail."""
        self.selected = None
        counter = MailCounter()
        codes: dict[str, int | None] = {}

        def seen(response: Response) -> None:
            counter.feed(response)
            if response.code in ("UIDVALIDITY", "UIDNEXT"):
                codes[response.code] = _code_int(response)

        segments = self._with_astrings(b"SELECT", (folder,))
        action = f"opening the folder {folder!r}"
        done = await self._command(segments[0], action, seen, continuation=segments[1:])
        if done.kind != "OK":
            # Dovecot answers a missing folder with a bare NO (no [NONEXISTENT])
            if done.code == "NONEXISTENT" or (done.kind == "NO" and done.code is None):
                self._raise_missing(folder, done)
            self._raise_refused(done, f"opening the folder {folder!r}")
        self.counter = counter
        self.selected = Selected(
            folder, counter.exists, codes.get("UIDVALIDITY"), codes.get("UIDNEXT")
        )
        return self.selected

    def _raise_missing(self, folder: str, done: Response) -> NoReturn:
        raise MailboxNotFound(
            f"the folder {folder!r} does not exist in the mailbox of {self.username} on "
            f"{self.endpoint.display}: check the folder name in the mailbox settings "
            f"(server said: {self._said(done)})"
        )

    async def idle(self, *, seconds: float, on_new_mail: Callable[[], object]) -> None:
        """One IDLE period: IDLE, report new mail through ON_NEW_MAIL, DONE after SECONDS.

        ON_NEW_MAIL is called synchronously from the read loop (set an event, do not block).
        Reads wait until the period ends; the answer to DONE must come within ``timeout``,
        which is the liveness check of a quiet connection.
        """
        if self.selected is None:
            raise RuntimeError("select a folder before IDLE")
        if not 0 < seconds <= MAX_IDLE_SECONDS:
            raise ValueError(f"an IDLE period must be 0 < seconds <= {MAX_IDLE_SECONDS}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        notify = self._notifier(on_new_mail)
        tag = self._send(b"IDLE")
        self._idling = True  # from here on, close() must say DONE
        await self._await_continuation(tag, notify)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while True:
                    with self._translate("waiting in IDLE"):
                        response = parse_response(await self._read_raw())
                    self._untagged(response, notify)
        self._idling = False
        self._write(b"DONE\r\n")
        done = await self._until_tagged(tag, "ending IDLE", notify)
        self._check_ok(done, "ending IDLE")

    async def _await_continuation(self, tag: bytes, notify: Callable[[Response], None]) -> None:
        with self._translate("starting IDLE"):
            while True:
                response = await self._read()
                if response.continuation:
                    return
                if response.tag == tag.decode():
                    self._idling = False
                    self._raise_refused(response, "starting IDLE")
                self._untagged(response, notify)

    def _notifier(self, on_new_mail: Callable[[], object]) -> Callable[[Response], None]:
        def notify(response: Response) -> None:
            if self.counter.feed(response):
                on_new_mail()

        return notify

    # ------------------------------------------------------------------ close
    async def close(self) -> None:
        """DONE (when idling) and LOGOUT if healthy, bounded; then drop. Never raises."""
        writer = self._writer
        if writer is None:
            return
        if not self._broken and self._logged_in:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(min(self.timeout, LOGOUT_TIMEOUT)):
                    await self._logout(writer)
        self.abort()

    async def _logout(self, writer: asyncio.StreamWriter) -> None:
        if self._idling:
            self._write(b"DONE\r\n")
            self._idling = False
        tag = self._send(b"LOGOUT")
        await writer.drain()
        reader = self._reader
        assert reader is not None
        while True:  # skip whatever comes first (the IDLE's OK, BYE): the LOGOUT's OK ends it
            line = await reader.readline()
            if not line or line.startswith(tag + b" "):
                return

    def abort(self) -> None:
        """Drop the connection at once (no LOGOUT)."""
        writer, self._writer, self._reader = self._writer, None, None
        self._broken = True
        self._idling = False
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.transport.abort()

    # ------------------------------------------------------------------ commands
    async def _command(
        self,
        command: bytes,
        action: str,
        on_untagged: Callable[[Response], None] | None = None,
        *,
        continuation: list[bytes] | None = None,
    ) -> Response:
        """Send COMMAND, answer continuations with CONTINUATION's lines; the tagged answer."""
        tag = self._send(command)
        pending = list(continuation or ())
        with self._translate(action):
            while True:
                response = await self._read()
                if response.continuation and pending:
                    self._write(pending.pop(0) + b"\r\n")
                elif response.continuation:
                    self._write(b"*\r\n")  # a challenge we cannot answer: cancel (SASL)
                elif response.tag == tag.decode():
                    return response
                else:
                    self._untagged(response, on_untagged)

    async def _until_tagged(
        self, tag: bytes, action: str, notify: Callable[[Response], None]
    ) -> Response:
        with self._translate(action):
            while True:
                response = await self._read()
                if response.tag == tag.decode():
                    return response
                self._untagged(response, notify)

    def _untagged(self, response: Response, handler: Callable[[Response], None] | None) -> None:
        if response.kind == "BYE":
            raise ConnectionLost(
                f"{self.where} closed the connection ({self._said(response)}); crmsync will retry"
            )
        found = capabilities_of(response)
        if found is not None:
            self._last_capabilities = found
        if handler is not None:
            handler(response)

    def _send(self, command: bytes) -> bytes:
        self._tag += 1
        tag = b"P%d" % self._tag
        self._write(tag + b" " + command + b"\r\n")
        return tag

    def _write(self, data: bytes) -> None:
        if self._writer is None or self._broken:
            raise ConnectionLost(f"the connection to {self.where} is closed; open a new one")
        with self._translate("sending a command"):
            self._writer.write(data)

    def _check_ok(self, response: Response, action: str) -> None:
        if response.kind != "OK":
            self._raise_refused(response, action)

    def _raise_refused(self, response: Response, action: str) -> NoReturn:
        raise CommandFailed(
            f"{self.where} refused {action} for {self.username} "
            f"(server said: {self._said(response)})",
            transient=response.code in TRANSIENT_CODES
            or (response.code is None and response.kind == "NO"),
        )

    # ------------------------------------------------------------------ layer 1: reading
    async def _read(self) -> Response:
        async with asyncio.timeout(self.timeout):
            line = await self._read_raw()
        try:
            return parse_response(line)
        except ValueError as exc:
            raise CommandFailed(
                f"{self.where} sent a reply crmsync cannot parse ({exc}); crmsync will retry",
                transient=True,
            ) from None

    async def _read_raw(self) -> bytes:
        """One response's first line (CRLF stripped); literals and their continuation lines
        are read and dropped: none of the responses IDLE needs carries one."""
        reader = self._reader
        if reader is None:
            raise ConnectionLost(f"the connection to {self.where} is closed; open a new one")
        first = line = await _read_line(reader)
        while (size := literal_size(line)) is not None:
            if size > MAX_LITERAL:
                raise CommandFailed(
                    f"{self.where} sent a {size}-byte literal; crmsync will retry",
                    transient=True,
                )
            await reader.readexactly(size)
            line = await _read_line(reader)
        return first

    # ------------------------------------------------------------------ errors
    def _said(self, response: Response) -> str:
        text = (
            f"{response.kind} [{response.code}] {response.text}"
            if response.code
            else (f"{response.kind} {response.text}")
        )
        text = _TIMINGS.sub("", text)  # Dovecot's "(0.001 + 0.000 secs)"
        return self._scrub(text.strip()[:300]) or "nothing"

    def _scrub(self, text: str) -> str:
        secret = self._password.reveal()
        if len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """Turn socket, TLS and stream exceptions into ``ImapError`` kinds (dropping the
        connection); ``ImapError`` passes through, and so does cancellation."""
        try:
            yield
        except ImapError:
            self._broken = True
            raise
        except Exception as exc:
            self._broken = True
            raise self._error(action, exc) from exc

    def _error(self, action: str, exc: Exception) -> ImapError:
        where = self.where
        if isinstance(exc, ssl.SSLCertVerificationError):
            return TlsFailure(
                f"the certificate of {where} is not trusted ({exc.verify_message}): check the "
                "host name in the mailbox URL, or install the CA that signed the server's "
                "certificate"
            )
        if isinstance(exc, ssl.SSLError) and not self._logged_in:
            return TlsFailure(
                f"TLS with {where} failed while {action} ({exc.reason or exc}): check that the "
                "port and the scheme of the mailbox URL match the server"
            )
        if isinstance(exc, TimeoutError):
            return ConnectionTimedOut(
                f"{where} did not answer within {self.timeout:g} s while {action}; "
                "crmsync will retry"
            )
        if isinstance(exc, ConnectionRefusedError):
            return ServerUnavailable(
                f"{where} refused the connection: the server is down or the port is wrong; "
                "crmsync will retry"
            )
        if isinstance(exc, socket.gaierror):
            return ServerUnavailable(
                f"the host name {self.endpoint.host!r} cannot be resolved ({exc.strerror}): "
                "check the mailbox URL; crmsync will retry"
            )
        if isinstance(exc, ConnectionError | EOFError | ssl.SSLError):
            return ConnectionLost(
                f"the connection to {where} was lost while {action} "
                f"({self._scrub(str(exc)) or type(exc).__name__}); crmsync will retry"
            )
        if isinstance(exc, OSError):
            return ServerUnavailable(
                f"{where} cannot be reached while {action} ({exc.strerror or exc}); "
                "crmsync will retry"
            )
        if isinstance(exc, asyncio.LimitOverrunError | ValueError):
            return CommandFailed(
                f"{where} sent a reply crmsync cannot parse while {action}; crmsync will retry",
                transient=True,
            )
        raise exc


@functools.cache
def _default_tls_context() -> ssl.SSLContext:
    """One verifying context for every connection: loading the CA store per connection would
    cost thousands of connections a few ms and a copy of the store each."""
    return ssl.create_default_context()


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readuntil(b"\r\n")  # IncompleteReadError (an EOFError) at EOF
    return line[:-2]


def _keepalive(writer: asyncio.StreamWriter) -> None:
    """TCP keepalive: a peer that vanished without a FIN is noticed within minutes even in a
    long IDLE period, not only at its end."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 120)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
