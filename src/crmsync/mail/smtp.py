"""The SMTP adapter's connectivity check: can crmsync log in to a mailbox's outgoing server?

    check = check_smtp("submission://mail.example.com", "anna", secret, timeout=15)
    check.notes   # e.g. "the server offers no AUTH: the login was not checked"

``check_smtp`` connects, says EHLO, secures the connection, logs in when the server offers AUTH,
sends NOOP and RSET, and says QUIT. It never sends mail (no MAIL FROM, no RCPT TO, no DATA).

URLs (the schemes ``crmsync.admin.mailboxes.validate_url`` accepts):

- ``smtps://host[:465]``: TLS from the first byte, certificate and host name verified.
- ``submission://host[:587]`` and ``smtp://host[:25]``: STARTTLS whenever the server offers it.
  Without STARTTLS the password would cross the network in clear text, which crmsync allows only
  to a loopback address, decided on the address actually connected to (the IMAP adapter's
  policy, ``crmsync.transport.decide_transport``).

Every failure is an ``SmtpError`` whose ``transient`` says whether trying later can help. Messages
name the server and the user and say what to do; they never contain the password (server replies
are scrubbed of it, and of its base64 forms, before they are quoted).
"""

from __future__ import annotations

import base64
import contextlib
import smtplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

from crmsync.errors import ServerError
from crmsync.secrets import Secret
from crmsync.transport import TransportDecision, decide_transport, host_port, parse_server_url

DEFAULT_TIMEOUT = 15.0
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


class _Checker:
    def __init__(
        self,
        endpoint: SmtpEndpoint,
        username: str,
        password: Secret,
        *,
        timeout: float,
        source_address: SourceAddress | None,
        ssl_context: ssl.SSLContext,
        local_hostname: str,
    ) -> None:
        self.endpoint = endpoint
        self.username = username
        self._password = password
        self.timeout = timeout
        self.source_address = source_address
        self.ssl_context = ssl_context
        self.local_hostname = local_hostname
        self.where = f"the SMTP server {endpoint.display}"
        self._client: smtplib.SMTP | None = None

    def run(self) -> SmtpCheck:
        try:
            return self._run()
        finally:
            self._quit()

    def _run(self) -> SmtpCheck:
        client = self._step("connecting", self._connect)
        self._client = client
        self._step("saying EHLO", lambda: self._ehlo(client))
        transport = "tls" if self.endpoint.implicit_tls else self._secure(client)
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
        try:
            client.login(self.username, self._password.reveal())
        except smtplib.SMTPAuthenticationError as exc:
            said = self._said(exc.smtp_error)
            if 400 <= exc.smtp_code < 500:
                raise SmtpUnavailable(
                    f"{self.where} could not check the login of {self.username} right now "
                    f"({exc.smtp_code} {said}); try again later"
                ) from None
            if exc.smtp_code in (534, 538):
                raise SmtpTlsFailure(
                    f"{self.where} accepts the login of {self.username} only with stronger "
                    f"protection ({exc.smtp_code} {said}): use smtps://{self.endpoint.host} "
                    "or submission:// with STARTTLS"
                ) from None
            raise SmtpAuthenticationFailed(
                f"{self.where} refused the login of {self.username}: check the mailbox "
                f"password and user name (crmsync mailbox add --update) "
                f"(server said: {exc.smtp_code} {said})"
            ) from None
        except smtplib.SMTPException as exc:
            if isinstance(exc, smtplib.SMTPServerDisconnected):
                raise
            # no mechanism in common (SMTPException "No suitable authentication method")
            raise SmtpAuthenticationFailed(
                f"{self.where} offers no login method crmsync supports (PLAIN, LOGIN, "
                f"CRAM-MD5) for {self.username} ({self._said(str(exc))})"
            ) from None

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
        secret = self._password.reveal()
        if len(secret) < 4:
            return text
        forms = {
            secret,
            base64.b64encode(secret.encode()).decode(),
            base64.b64encode(f"\0{self.username}\0{secret}".encode()).decode(),
        }
        for form in forms:
            text = text.replace(form, "***")
        return text
