"""What every DAV request shares: where the server is, the transport policy, and what its
answers and failures mean (the probe and the client both use it).

Transport policy (the IMAP and SMTP adapters' policy): ``https://`` verifies the certificate
chain and host name; ``http://`` sends the password in clear text and is allowed only when the
address actually connected to is loopback, checked on every (re)connection before anything is
sent. Redirects are never followed (the password would travel to another address).
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from dataclasses import dataclass

from crmsync.errors import ServerError
from crmsync.secrets import Secret
from crmsync.transport import host_port, is_loopback_address, parse_server_url

DEFAULT_TIMEOUT = 15.0
SourceAddress = tuple[str, int]


class DavError(ServerError):
    """Base of every DAV adapter error; ``transient`` tells whether retrying later can help."""


class DavAuthenticationFailed(DavError):
    """401 or 403: the login, or this user's access to the collection, was refused."""

    transient = False


class DavNotFound(DavError):
    """404/410: there is no collection (or item) at the URL."""

    transient = False


class DavTlsFailure(DavError):
    """TLS could not be set up (bad certificate, wrong host name, not a TLS port...)."""

    transient = False


class DavInsecureTransportRefused(DavTlsFailure):
    """crmsync refused to send a password over plain HTTP to a host that is not loopback."""


class DavUnavailable(DavError):
    """The server cannot be reached, timed out, or answered 5xx/429: retry later."""

    transient = True


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{host_port(self.host, self.port)}"

    @property
    def display(self) -> str:
        return f"{self.origin}{self.path}"


def parse_target(url: str) -> Target:
    parts, port = parse_server_url(url, "DAV", ("http", "https"))
    scheme = parts.scheme
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, parts.hostname, port or (443 if scheme == "https" else 80), path)


def basic_auth(username: str, password: Secret) -> str:
    if not isinstance(password, Secret):
        raise TypeError("password must be a crmsync.secrets.Secret")
    token = base64.b64encode(f"{username}:{password.reveal()}".encode()).decode("ascii")
    return f"Basic {token}"


def _refuse_unless_loopback(conn: http.client.HTTPConnection, target: Target) -> None:
    peer = conn.sock.getpeername()[0] if conn.sock else ""
    if not is_loopback_address(peer):
        conn.close()
        raise DavInsecureTransportRefused(
            f"the DAV server at {target.display} is plain HTTP, and crmsync sends passwords in "
            f"clear text only to loopback addresses: use https://{target.host}{target.path}"
        )


class _LoopbackOnlyHTTPConnection(http.client.HTTPConnection):
    """Plain HTTP that re-checks the peer on every connect, including http.client's automatic
    reconnections after a server closed a kept-alive connection."""

    target: Target

    def connect(self) -> None:
        super().connect()
        _refuse_unless_loopback(self, self.target)


def open_connection(
    target: Target,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    source_address: SourceAddress | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> http.client.HTTPConnection:
    """A connection to TARGET obeying the transport policy (connects lazily on first request)."""
    if target.scheme == "https":
        return http.client.HTTPSConnection(
            target.host,
            target.port,
            timeout=timeout,
            source_address=source_address,
            # verifying by default (certificate chain and host name); tests pass their own CA
            context=ssl_context or ssl.create_default_context(),
        )
    conn = _LoopbackOnlyHTTPConnection(
        target.host, target.port, timeout=timeout, source_address=source_address
    )
    conn.target = target
    return conn


def refusal(
    status: int, reason: str, where: str, username: str, path: str, password: Secret
) -> DavError | None:
    """The error for a login/access/location answer, or None when STATUS is none of those."""
    said = scrub(f"{status} {reason}".strip(), password)
    if status == 401:
        return DavAuthenticationFailed(
            f"{where} refused the login of {username} ({said}): check the mailbox password "
            "and user name (crmsync mailbox add --update)"
        )
    if status == 403:
        return DavAuthenticationFailed(
            f"{where} refused {username} access to {path} ({said}): check that the URL "
            "is this user's own collection, or ask the server's administrator for access"
        )
    if status in (404, 410):
        return DavNotFound(
            f"{where} has nothing at {path} ({said}): check the mailbox's "
            "CalDAV/CardDAV URL (crmsync mailbox add --update)"
        )
    # 501 Not Implemented and 507 Insufficient Storage will not heal by waiting alone
    if (status >= 500 and status not in (501, 507)) or status in (408, 429):
        return DavUnavailable(f"{where} could not answer right now ({said}); try again later")
    return None


def redirect_error(where: str, said: str, location: str | None, password: Secret) -> DavError:
    shown = scrub(location or "no address given", password)
    return DavError(
        f"{where} redirects ({said}) to {shown}: configure that URL instead "
        "(crmsync does not follow redirects with a password)"
    )


def translate_failure(
    exc: Exception, where: str, target: Target, timeout: float, password: Secret
) -> DavError:
    """The DavError for an exception raised while connecting or talking; re-raises others."""
    if isinstance(exc, DavError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return DavTlsFailure(
            f"the certificate of {where} is not trusted ({exc.verify_message}): check the host "
            "name in the URL, or install the CA that signed the server's certificate"
        )
    if isinstance(exc, ssl.SSLError):
        return DavTlsFailure(
            f"TLS with {where} failed ({exc.reason or exc}): check that the port and the "
            "scheme (https://) of the URL match the server"
        )
    if isinstance(exc, TimeoutError):
        return DavUnavailable(
            f"{where} did not answer within {timeout:g} s; check the URL, or try again later"
        )
    if isinstance(exc, ConnectionRefusedError):
        return DavUnavailable(
            f"{where} refused the connection: the server is down or the port is wrong; check "
            "the URL, or try again later"
        )
    if isinstance(exc, socket.gaierror):
        return DavUnavailable(
            f"the host name {target.host!r} cannot be resolved ({exc.strerror}): check the URL"
        )
    if isinstance(exc, http.client.HTTPException | ConnectionError):
        said = scrub(str(exc), password) or type(exc).__name__
        return DavUnavailable(
            f"{where} closed the connection or sent no valid HTTP answer ({said[:300]}); check "
            "that the URL's port is an HTTP port, or try again later"
        )
    if isinstance(exc, OSError):
        return DavUnavailable(f"{where} cannot be reached ({exc.strerror or exc}); try again later")
    raise exc


def scrub(text: str, password: Secret) -> str:
    """TEXT made safe to show: printable characters only, the password masked."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    secret = password.reveal()
    if len(secret) >= 4:
        text = text.replace(secret, "***")
    return text
