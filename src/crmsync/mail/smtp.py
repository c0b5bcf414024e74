"""The SMTP adapter: check a mailbox's outgoing server, and submit mail through it.

    check = check_smtp("submission://mail.example.com", "anna", secret, timeout=15)
    check.notes   # e.g. "the server offers no AUTH: the login was not checked"

    sent = submit_message("submission://mail.example.com", "anna", secret,
                          envelope_from="anna@example.com", recipients=rcpts, message=raw)
    sent.refused  # {"typo@example.org": "550 5.1.1 no such user"} when only some were refused

    with SmtpSubmission("submission://mail.example.com", "anna", secret) as smtp:
        for raw, rcpts in outbox:                 # one connection and one login for all
            smtp.submit(envelope_from="anna@example.com", recipients=rcpts, message=raw)

``check_smtp`` connects, says EHLO, secures the connection, logs in when the server offers AUTH,
sends NOOP and RSET, and says QUIT. It never sends mail (no MAIL FROM, no RCPT TO, no DATA).
``SmtpSubmission`` shares that connection code (``_Connection``: the same TLS and clear-text
policy, the same login and the same error mapping) and then, per message, sends MAIL FROM (with
``SIZE=`` when the server advertises SIZE), one RCPT TO per recipient and DATA; QUIT when it is
closed. The connection is opened at the first message and kept: a refusal of one message is
followed by RSET and the next message uses the same connection; a connection the server closed
while idle is reopened before the next MAIL FROM (nothing of that message was sent yet); after a
failure in the middle of DATA the connection is dropped. ``submit_message`` is one message on a
connection of its own.

URLs (the schemes ``crmsync.admin.mailboxes.validate_url`` accepts):

- ``smtps://host[:465]``: TLS from the first byte, certificate and host name verified.
- ``submission://host[:587]`` and ``smtp://host[:25]``: STARTTLS whenever the server offers it.
  Without STARTTLS the password would cross the network in clear text, which crmsync allows only
  to a loopback address, decided on the address actually connected to (the IMAP adapter's
  policy, ``crmsync.transport.decide_transport``).

Every failure is an ``SmtpError`` whose ``transient`` says whether trying later can help. Messages
name the server and the user and say what to do; they never contain the password or the OAuth
token (server replies are scrubbed of them, and of their base64 forms, before they are quoted).
A refusal of the mail itself is ``SmtpTemporaryFailure`` (4xx) or ``SmtpRejected`` (5xx), with
the server's ``code`` and ``reply``. A connection lost after the whole message was sent, before
the server answered, is ``SmtpOutcomeUnknown``: the server may have accepted it, so a caller that
must not send twice checks (e.g. the Sent folder) before retrying.
"""

from __future__ import annotations

import base64
import contextlib
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

from crmsync.errors import ServerError
from crmsync.mail.compose import ComposeError, normalize_address
from crmsync.secrets import Secret
from crmsync.transport import TransportDecision, decide_transport, host_port, parse_server_url

DEFAULT_TIMEOUT = 15.0
SUBMIT_TIMEOUT = 60.0
"""Per network operation; generous because servers scan the message before answering DATA."""
DEFAULT_PORTS = {"smtp": 25, "submission": 587, "smtps": 465}
SourceAddress = tuple[str, int]
T = TypeVar("T")


# ---------------------------------------------------------------------- errors
class SmtpError(ServerError):
    """Base of every SMTP adapter error; ``transient`` tells whether retrying later can help."""


class SmtpAuthenticationFailed(SmtpError):
    """The server refused the username/password: retrying with the same password cannot help."""

    transient = False


class SmtpTlsFailure(SmtpError):
    """TLS could not be set up (bad certificate, wrong host name, not a TLS port...)."""

    transient = False


class SmtpInsecureTransportRefused(SmtpTlsFailure):
    """crmsync refused to log in over clear text to a host that is not loopback."""


class SmtpUnavailable(SmtpError):
    """The server cannot be reached, timed out, dropped the connection or is busy: retry later."""

    transient = True


class SmtpOutcomeUnknown(SmtpUnavailable):
    """The connection failed after the whole message was sent and before the server answered:
    the server may or may not have accepted it. Retrying may deliver it twice."""


class _SmtpReply(SmtpError):
    def __init__(self, message: str, *, code: int, reply: str) -> None:
        super().__init__(message)
        self.code = code
        """The SMTP reply code (e.g. 451, 550)."""
        self.reply = reply
        """The server's reply text, bounded, printable and scrubbed of the password."""


class SmtpTemporaryFailure(_SmtpReply):
    """The server refused the mail with a 4xx reply (greylisting, a full queue...): retry later."""

    transient = True


class SmtpRejected(_SmtpReply):
    """The server refused the mail with a 5xx reply (bad recipient, too big, policy): do not
    retry the same message; show the reply to the sender."""

    transient = False


# ---------------------------------------------------------------------- endpoint
@dataclass(frozen=True, slots=True)
class SmtpEndpoint:
    scheme: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> SmtpEndpoint:
        parts, port = parse_server_url(url, "SMTP", ("smtp", "submission", "smtps"))
        scheme = parts.scheme
        return cls(scheme, parts.hostname, port or DEFAULT_PORTS[scheme])

    @property
    def implicit_tls(self) -> bool:
        return self.scheme == "smtps"

    @property
    def display(self) -> str:
        return host_port(self.host, self.port)


@dataclass(frozen=True)
class Submitted:
    """What ``submit_message`` achieved: the server took the message for ``accepted``."""

    accepted: tuple[str, ...]
    refused: dict[str, str]
    """Recipient -> the server's reply (``"550 5.1.1 no such user"``) for each it refused."""


@dataclass
class SmtpCheck:
    """What ``check_smtp`` found (it raises ``SmtpError`` on any failure)."""

    endpoint: SmtpEndpoint
    transport: str
    """``tls`` (smtps://), ``starttls`` or ``plaintext_loopback``."""
    authenticated: bool
    """False only when the server offers no AUTH (then ``notes`` says so)."""
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- the check
def check_smtp(
    url: str,
    username: str,
    password: Secret,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    source_address: SourceAddress | None = None,
    ssl_context: ssl.SSLContext | None = None,
    local_hostname: str | None = None,
) -> SmtpCheck:
    """Connect, EHLO, STARTTLS (or implicit TLS), AUTH when offered, NOOP, RSET, QUIT."""
    if not isinstance(password, Secret):
        raise TypeError("password must be a crmsync.secrets.Secret")
    endpoint = SmtpEndpoint.from_url(url)
    return _Checker(
        endpoint,
        username,
        password,
        timeout=timeout,
        source_address=source_address,
        # verifying by default (certificate chain and host name); tests pass their own CA
        ssl_context=ssl_context or ssl.create_default_context(),
        # not socket.getfqdn(): that can wait on a slow DNS lookup
        local_hostname=local_hostname or socket.gethostname() or "localhost",
    ).run()


# ---------------------------------------------------------------------- submission
def submit_message(
    url: str,
    username: str | None,
    password: Secret | None,
    *,
    envelope_from: str,
    recipients: Sequence[str],
    message: bytes,
    timeout: float = SUBMIT_TIMEOUT,
    xoauth2_token: Secret | None = None,
    source_address: SourceAddress | None = None,
    ssl_context: ssl.SSLContext | None = None,
    local_hostname: str | None = None,
) -> Submitted:
    """Submit MESSAGE (RFC 5322 bytes, CRLF) for RECIPIENTS, logged in as USERNAME, on a
    connection of its own (``SmtpSubmission.submit`` says what is raised when)."""
    sender, rcpts, data = _prepare(envelope_from, recipients, message)
    with SmtpSubmission(
        url,
        username,
        password,
        timeout=timeout,
        xoauth2_token=xoauth2_token,
        source_address=source_address,
        ssl_context=ssl_context,
        local_hostname=local_hostname,
    ) as smtp:
        return smtp._submitter.submit(sender, rcpts, data)


class SmtpSubmission:
    """One SMTP connection, opened at the first message and logged in once, for many messages.

    Logs in with XOAUTH2 when a token is given and the server offers it, else with the password
    (PLAIN/LOGIN/CRAM-MD5); without credentials, or when the server offers no AUTH, it sends
    without logging in. Not thread-safe: one sender at a time.
    """

    def __init__(
        self,
        url: str,
        username: str | None,
        password: Secret | None,
        *,
        timeout: float = SUBMIT_TIMEOUT,
        xoauth2_token: Secret | None = None,
        source_address: SourceAddress | None = None,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        for name, value in (("password", password), ("xoauth2_token", xoauth2_token)):
            if value is not None and not isinstance(value, Secret):
                raise TypeError(f"{name} must be a crmsync.secrets.Secret")
        if (password is not None or xoauth2_token is not None) and not username:
            raise ValueError("a password or token needs a username")
        self._submitter = _Submitter(
            SmtpEndpoint.from_url(url),
            username,
            password,
            xoauth2_token=xoauth2_token,
            timeout=timeout,
            source_address=source_address,
            # verifying by default (certificate chain and host name); tests pass their own CA
            ssl_context=ssl_context or ssl.create_default_context(),
            # not socket.getfqdn(): that can wait on a slow DNS lookup
            local_hostname=local_hostname or socket.gethostname() or "localhost",
        )

    def submit(self, *, envelope_from: str, recipients: Sequence[str], message: bytes) -> Submitted:
        """Submit MESSAGE (RFC 5322 bytes) for RECIPIENTS from ENVELOPE_FROM.

        Raises ``SmtpRejected`` when the server refuses the sender, every recipient (all with
        5xx) or the message, ``SmtpTemporaryFailure`` for 4xx refusals, ``SmtpUnavailable`` when
        the server cannot be reached or drops the connection (``SmtpOutcomeUnknown`` when that
        happened after the whole message was sent), ``SmtpAuthenticationFailed`` /
        ``SmtpTlsFailure`` when the login or TLS fails, and ``ComposeError`` (a ``ValueError``,
        before anything is sent) for an invalid address.
        """
        return self._submitter.submit(*_prepare(envelope_from, recipients, message))

    def close(self) -> None:
        """QUIT and close; the next ``submit`` would open a new connection."""
        self._submitter._quit()

    def __enter__(self) -> SmtpSubmission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _prepare(
    envelope_from: str, recipients: Sequence[str], message: bytes
) -> tuple[str, list[str], bytes]:
    """The checked envelope sender, the distinct recipients and the CRLF message bytes."""
    if not isinstance(message, bytes | bytearray | memoryview):
        raise TypeError("message must be bytes")
    sender = normalize_address(envelope_from, "the envelope sender") if envelope_from else ""
    if isinstance(recipients, str):
        raise TypeError("recipients must be a sequence of addresses, not one string")
    rcpts: list[str] = []
    seen: set[str] = set()
    for address in recipients:
        normal = normalize_address(address, "the recipient")
        if normal.lower() not in seen:
            seen.add(normal.lower())
            rcpts.append(normal)
    if not rcpts:
        raise ComposeError("the message has no recipient")
    data = _crlf(bytes(message))
    if not data.strip():
        raise ValueError("the message is empty")
    return sender, rcpts, data


_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def _crlf(data: bytes) -> bytes:
    """Every line end as CRLF, which SMTP requires (a no-op on ``compose`` output)."""
    return _LINE_END.sub(b"\r\n", data)


# ---------------------------------------------------------------------- the connection
class _Connection:
    """One SMTP conversation up to a logged-in session: connect, EHLO, TLS, AUTH; and the
    translation of every failure into an ``SmtpError`` (shared by the check and submission)."""

    def __init__(
        self,
        endpoint: SmtpEndpoint,
        username: str | None,
        password: Secret | None,
        *,
        timeout: float,
        source_address: SourceAddress | None,
        ssl_context: ssl.SSLContext,
        local_hostname: str,
        xoauth2_token: Secret | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.username = username
        self._password = password
        self._token = xoauth2_token
        self.timeout = timeout
        self.source_address = source_address
        self.ssl_context = ssl_context
        self.local_hostname = local_hostname
        self.where = f"the SMTP server {endpoint.display}"
        self._client: smtplib.SMTP | None = None

    def _open(self) -> tuple[smtplib.SMTP, str]:
        """Connected, greeted and secured: the client and the transport it uses."""
        client = self._step("connecting", self._connect)
        self._client = client
        self._step("saying EHLO", lambda: self._ehlo(client))
        transport = "tls" if self.endpoint.implicit_tls else self._secure(client)
        return client, transport

    # ------------------------------------------------------------------ steps
    def _connect(self) -> smtplib.SMTP:
        # the host goes to the constructor: it is what STARTTLS and smtps:// verify the
        # certificate against (smtplib keeps it only from there); a greeting other than 220
        # raises SMTPConnectError
        args = {
            "local_hostname": self.local_hostname,
            "timeout": self.timeout,
            "source_address": self.source_address,
        }
        host, port = self.endpoint.host, self.endpoint.port
        if self.endpoint.implicit_tls:
            return smtplib.SMTP_SSL(host, port, context=self.ssl_context, **args)
        return smtplib.SMTP(host, port, **args)

    def _ehlo(self, client: smtplib.SMTP) -> None:
        code, said = client.ehlo()
        if code != 250:
            self._refused("saying EHLO", code, said)

    def _secure(self, client: smtplib.SMTP) -> str:
        offers = client.has_extn("starttls")
        peer = client.sock.getpeername()[0] if client.sock else ""
        decision = decide_transport(offers_starttls=offers, peer_address=peer)
        if decision is TransportDecision.REFUSE:
            raise SmtpInsecureTransportRefused(
                f"{self.where} does not offer STARTTLS, and crmsync sends passwords in clear "
                f"text only to loopback addresses: use smtps://{self.endpoint.host} (port 465) "
                "or enable STARTTLS on the server"
            )
        if decision is TransportDecision.PLAINTEXT_LOOPBACK:
            return "plaintext_loopback"

        def starttls() -> None:
            client.starttls(context=self.ssl_context)  # anything but 220 raises
            self._ehlo(client)  # the capabilities before TLS no longer count

        self._step("negotiating STARTTLS", starttls)
        return "starttls"

    def _login(self, client: smtplib.SMTP) -> None:
        assert self.username is not None and self._password is not None
        try:
            client.login(self.username, self._password.reveal())
        except smtplib.SMTPAuthenticationError as exc:
            self._auth_refused(exc, "login", "check the mailbox password and user name")
        except smtplib.SMTPException as exc:
            if isinstance(exc, smtplib.SMTPServerDisconnected):
                raise
            # no mechanism in common (SMTPException "No suitable authentication method")
            raise SmtpAuthenticationFailed(
                f"{self.where} offers no login method crmsync supports (PLAIN, LOGIN, "
                f"CRAM-MD5) for {self.username} ({self._said(str(exc))})"
            ) from None

    def _login_xoauth2(self, client: smtplib.SMTP) -> None:
        """AUTH XOAUTH2 (Google, Microsoft): the bearer token instead of a password."""
        assert self.username is not None and self._token is not None
        failure: list[str] = []

        def respond(challenge: bytes | None = None) -> str:
            if challenge is None:
                return self._xoauth2_string()
            # the server explains the failure in a JSON challenge and wants an empty line
            failure.append(self._said(challenge))
            return ""

        try:
            client.auth("XOAUTH2", respond, initial_response_ok=True)
        except UnicodeEncodeError:
            raise SmtpAuthenticationFailed(
                f"the user name or OAuth token of {self.username} holds non-ASCII characters, "
                f"which XOAUTH2 cannot carry to {self.where}"
            ) from None
        except smtplib.SMTPAuthenticationError as exc:
            detail = f"; {failure[0]}" if failure else ""
            self._auth_refused(
                exc,
                "OAuth token",
                f"the token may have expired or lack the SMTP scope: renew it{detail}",
            )

    def _auth_refused(
        self, exc: smtplib.SMTPAuthenticationError, what: str, remedy: str
    ) -> NoReturn:
        said = self._said(exc.smtp_error)
        if 400 <= exc.smtp_code < 500:
            raise SmtpUnavailable(
                f"{self.where} could not check the {what} of {self.username} right now "
                f"({exc.smtp_code} {said}); try again later"
            ) from None
        if exc.smtp_code in (534, 538):
            raise SmtpTlsFailure(
                f"{self.where} accepts the {what} of {self.username} only with stronger "
                f"protection ({exc.smtp_code} {said}): use smtps://{self.endpoint.host} "
                "or submission:// with STARTTLS"
            ) from None
        raise SmtpAuthenticationFailed(
            f"{self.where} refused the {what} of {self.username}: {remedy} "
            f"(crmsync mailbox add --update) (server said: {exc.smtp_code} {said})"
        ) from None

    def _xoauth2_string(self) -> str:
        assert self._token is not None
        return f"user={self.username}\x01auth=Bearer {self._token.reveal()}\x01\x01"

    def _expect(self, reply: tuple[int, bytes], action: str) -> None:
        code, said = reply
        if code != 250:
            self._refused(action, code, said)

    def _quit(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.quit()
        with contextlib.suppress(Exception):
            client.close()

    # ------------------------------------------------------------------ errors
    def _refused(
        self, action: str, code: int, said: bytes | str, *, at_greeting: bool = False
    ) -> NoReturn:
        text = self._said(said)
        where = self.where
        what = "turned the connection away" if at_greeting else f"said no while {action}"
        if code == -1:  # a reply smtplib cannot parse: most likely not an SMTP server
            raise SmtpError(
                f"{where} did not answer like an SMTP server while {action} ({text}): check "
                "the host and port of the mailbox's SMTP URL",
                transient=False,
            )
        if 400 <= code < 500:
            raise SmtpUnavailable(f"{self.where} {what} ({code} {text}); try again later")
        raise SmtpError(
            f"{self.where} {what} ({code} {text}): check the server settings of the mailbox "
            "(crmsync mailbox add --update)",
            transient=False,
        )

    def _step(self, action: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except SmtpError:
            raise
        except Exception as exc:
            self._fail(action, exc)

    def _fail(self, action: str, exc: Exception) -> NoReturn:
        where = self.where
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise SmtpTlsFailure(
                f"the certificate of {where} is not trusted ({exc.verify_message}): check the "
                "host name in the mailbox URL, or install the CA that signed the server's "
                "certificate"
            ) from None
        if isinstance(exc, ssl.SSLError):
            raise SmtpTlsFailure(
                f"TLS with {where} failed while {action} ({exc.reason or exc}): check that the "
                "port and the scheme of the mailbox URL match the server (smtps:// is usually "
                "port 465, submission:// 587)"
            ) from None
        if isinstance(exc, TimeoutError):
            raise SmtpUnavailable(
                f"{where} did not answer within {self.timeout:g} s while {action}; check the "
                "host and port, or try again later"
            ) from None
        if isinstance(exc, ConnectionRefusedError):
            raise SmtpUnavailable(
                f"{where} refused the connection: the server is down or the port is wrong; "
                "check the mailbox's SMTP URL, or try again later"
            ) from None
        if isinstance(exc, socket.gaierror):
            raise SmtpUnavailable(
                f"the host name {self.endpoint.host!r} cannot be resolved ({exc.strerror}): "
                "check the mailbox's SMTP URL"
            ) from None
        if isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionError | EOFError):
            raise SmtpUnavailable(
                f"{where} closed the connection while {action} "
                f"({self._said(str(exc)) or type(exc).__name__}); try again later"
            ) from None
        if isinstance(exc, smtplib.SMTPConnectError):
            self._refused(action, exc.smtp_code, exc.smtp_error, at_greeting=True)
        if isinstance(exc, smtplib.SMTPResponseException):
            self._refused(action, exc.smtp_code, exc.smtp_error)
        if isinstance(exc, OSError):
            raise SmtpUnavailable(
                f"{where} cannot be reached while {action} ({exc.strerror or exc}); try again later"
            ) from None
        if isinstance(exc, smtplib.SMTPException):
            raise SmtpError(
                f"{where} failed while {action} ({self._said(str(exc))})", transient=True
            ) from None
        raise exc

    def _said(self, said: bytes | str) -> str:
        """The server's words, bounded, printable and without the password."""
        text = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
        text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
        return self._scrub(text)[:300] or "nothing"

    def _scrub(self, text: str) -> str:
        forms: set[str] = set()
        if self._password is not None and len(secret := self._password.reveal()) >= 4:
            forms |= {
                secret,
                base64.b64encode(secret.encode()).decode(),
                base64.b64encode(f"\0{self.username}\0{secret}".encode()).decode(),
            }
        if self._token is not None and len(token := self._token.reveal()) >= 4:
            forms |= {
                token,
                base64.b64encode(self._xoauth2_string().encode("utf-8", "replace")).decode(),
            }
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
        return text


class _Checker(_Connection):
    """``check_smtp``: log in when offered, NOOP, RSET; never a mail transaction."""

    def run(self) -> SmtpCheck:
        try:
            return self._run()
        finally:
            self._quit()

    def _run(self) -> SmtpCheck:
        client, transport = self._open()
        check = SmtpCheck(self.endpoint, transport, authenticated=False)
        if transport == "plaintext_loopback":
            check.notes.append("no STARTTLS offered: clear text, allowed only over loopback")
        if client.has_extn("auth"):
            self._step("logging in", lambda: self._login(client))
            check.authenticated = True
        else:
            check.notes.append(
                "the server offers no AUTH here, so the login was not checked (it accepts mail "
                "without one, e.g. by the sender's address)"
            )
        self._step("sending NOOP", lambda: self._expect(client.noop(), "sending NOOP"))
        self._step("sending RSET", lambda: self._expect(client.rset(), "sending RSET"))
        return check


class _Submitter(_Connection):
    """Mail transactions after the shared connection steps, on a connection kept between them."""

    _dirty = False
    """A transaction was refused half-way: RSET before the next one."""
    _data_started = False
    """The message's bytes began to go out: a lost connection may have delivered it."""

    def submit(self, sender: str, recipients: list[str], data: bytes) -> Submitted:
        reused = self._client is not None
        try:
            return self._submit(sender, recipients, data)
        except (SmtpAuthenticationFailed, SmtpTlsFailure):
            self._quit()
            raise
        except SmtpUnavailable as exc:
            self._quit()
            if reused and not isinstance(exc, SmtpOutcomeUnknown) and not self._data_started:
                # the server closed the idle connection (a timeout, a per-connection limit):
                # nothing of this message went out, so a new connection sends it
                return self._submit(sender, recipients, data)
            raise
        except _SmtpReply as exc:
            if exc.code == 421:  # "closing the transmission channel"
                self._quit()
            else:
                self._dirty = True
            raise
        except BaseException:
            self._quit()
            raise

    @property
    def who(self) -> str:
        return self.username or "crmsync (no login)"

    def _quit(self) -> None:
        self._dirty = False
        super()._quit()

    def _session(self) -> smtplib.SMTP:
        """The open, logged-in connection, ready for MAIL FROM."""
        client = self._client
        if client is None:
            client, _transport = self._open()
            self._authenticate(client)
        elif self._dirty:
            self._step("sending RSET", lambda: self._expect(client.rset(), "sending RSET"))
            self._dirty = False
        return client

    def _submit(self, sender: str, recipients: list[str], data: bytes) -> Submitted:
        self._data_started = False
        client = self._session()
        options = self._mail_options(client, sender, data)
        self._step("sending MAIL FROM", lambda: self._mail(client, sender, options))
        refused: dict[str, str] = {}
        codes: list[int] = []
        for rcpt in recipients:
            code, said = self._step("sending RCPT TO", lambda r=rcpt: client.rcpt(r))
            if code not in (250, 251):
                refused[rcpt] = f"{code} {self._said(said)}"
                codes.append(code)
        if len(refused) == len(recipients):
            self._all_refused(sender, refused, codes)
        self._step("sending the message", lambda: self._data(client, data))
        accepted = tuple(r for r in recipients if r not in refused)
        return Submitted(accepted=accepted, refused=refused)

    def _authenticate(self, client: smtplib.SMTP) -> None:
        if self.username is None or not client.has_extn("auth"):
            # nothing to log in with, or a server that takes mail without AUTH here (e.g. by
            # the client's address): it will say no at MAIL FROM or RCPT TO if it minds
            return
        offered = client.esmtp_features.get("auth", "").upper().split()
        if self._token is not None and "XOAUTH2" in offered:
            self._step("logging in with an OAuth token", lambda: self._login_xoauth2(client))
        elif self._password is not None:
            self._step("logging in", lambda: self._login(client))
        elif self._token is not None:
            raise SmtpAuthenticationFailed(
                f"{self.where} does not offer XOAUTH2 (it offers {' '.join(offered) or 'none'}), "
                f"so the OAuth token of {self.username} cannot be used: give the mailbox a "
                "password instead (crmsync mailbox add --update)"
            )

    def _mail_options(self, client: smtplib.SMTP, sender: str, data: bytes) -> list[str]:
        options: list[str] = []
        if client.has_extn("size"):
            limit = _int(client.esmtp_features.get("size", ""))
            if limit and len(data) > limit:  # 0 or no number: no fixed limit (RFC 1870)
                reply = f"message size {len(data)} exceeds the server's limit of {limit} bytes"
                raise SmtpRejected(
                    f"{self.where} accepts messages of at most {limit:,} bytes and the email of "
                    f"{self.who} from <{sender}> has {len(data):,} (attachments included): "
                    "send smaller or fewer attachments",
                    code=552,
                    reply=reply,
                )
            options.append(f"SIZE={len(data)}")
        if not data.isascii() and client.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        return options

    def _mail(self, client: smtplib.SMTP, sender: str, options: list[str]) -> None:
        code, said = client.mail(sender, options)
        if code != 250:
            text = self._said(said)
            self._reply_error(
                code,
                text,
                f"{self.where} refused the sender <{sender}> of {self.who}",
                "check that this mailbox may send as that address",
            )

    def _all_refused(self, sender: str, refused: dict[str, str], codes: list[int]) -> NoReturn:
        listed = "; ".join(f"<{r}>: {reply}" for r, reply in list(refused.items())[:5])
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        # a single 4xx among them means trying later can still deliver to someone
        code = next((c for c in codes if 400 <= c < 500), codes[0])
        reply = refused[list(refused)[codes.index(code)]].partition(" ")[2]
        self._reply_error(
            code,
            reply,
            f"{self.where} refused every recipient of the email from <{sender}> ({self.who})",
            "check the recipient addresses",
            shown=listed + more,
        )

    def _data(self, client: smtplib.SMTP, data: bytes) -> None:
        """DATA, the dot-stuffed message, and the server's verdict.

        Written out rather than ``smtplib.SMTP.data`` to know whether the connection failed
        before the message was complete (nothing delivered) or after (``SmtpOutcomeUnknown``).
        """
        code, said = client.docmd("DATA")
        if code != 354:
            self._reply_error(
                code,
                self._said(said),
                f"{self.where} refused to take the message of {self.who}",
                "check the server settings of the mailbox",
            )
        payload = _LEADING_DOT.sub(b"..", data)
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        self._data_started = True  # from here a lost connection may have delivered it
        client.send(payload + b".\r\n")
        try:
            code, said = client.getreply()
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            # smtplib reports a timeout as SMTPServerDisconnected("... timed out")
            lost = "timed out" if "timed out" in str(exc) else "the connection was lost"
            raise SmtpOutcomeUnknown(
                f"{self.where} did not confirm the message of {self.who} after receiving it "
                f"({lost}): it may or may not have been sent; check the Sent folder or the "
                "recipient before sending again"
            ) from None
        if code != 250:
            self._reply_error(
                code,
                self._said(said),
                f"{self.where} refused the message of {self.who}",
                "check its size, attachments and recipients",
            )

    def _reply_error(
        self, code: int, text: str, what: str, remedy: str, *, shown: str | None = None
    ) -> NoReturn:
        """The error for a refusal with CODE; SHOWN replaces ``code text`` in the message."""
        shown = shown or f"{code} {text}"
        if 400 <= code < 500:
            raise SmtpTemporaryFailure(
                f"{what} for now ({shown}); try again later", code=code, reply=text
            )
        if 500 <= code < 600:
            raise SmtpRejected(f"{what} ({shown}): {remedy}", code=code, reply=text)
        raise SmtpError(
            f"{what} with an unexpected reply ({shown}): check the host and port of the "
            "mailbox's SMTP URL",
            transient=False,
        )


def _int(text: str) -> int:
    return int(text) if text.strip().isdigit() else 0
