"""Can crmsync reach a CalDAV/CardDAV collection and log in? One ``PROPFIND`` (Depth 0) says.

    probe = probe_collection("https://dav.example.com/anna/", "anna", secret, timeout=15)

The probe sends one ``PROPFIND`` asking for the collection's ``resourcetype``, with HTTP Basic
authentication sent up front, and reads the answer: ``207 Multi-Status`` is success, 401 and 403
mean the login or the access was refused (permanent: the same password will not do better),
connection failures, timeouts and 5xx answers are transient. Redirects are not followed (the
password would travel to another address); the message names the new address to configure.

Transport policy (the IMAP and SMTP adapters' policy): ``https://`` verifies the certificate
chain and host name; ``http://`` sends the password in clear text and is allowed only when the
address actually connected to is loopback (a local server or proxy), checked before anything
is sent. Only the standard library is used (``http.client``).
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
MAX_BODY = 1024 * 1024
"""The probe reads at most this much of an answer: it needs the status, not the content."""
PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/></D:prop></D:propfind>'
)
SourceAddress = tuple[str, int]


class DavError(ServerError):
    """Base of every DAV adapter error; ``transient`` tells whether retrying later can help."""


class DavAuthenticationFailed(DavError):
    """401 or 403: the login, or this user's access to the collection, was refused."""

    transient = False


class DavNotFound(DavError):
    """404/410: there is no collection at the URL."""

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
class DavProbe:
    """A successful probe: what answered, and how."""

    url: str
    """The probed URL as shown to people (scheme, host, port, path; never user info)."""
    status: int
    dav: str | None
    """The server's ``DAV:`` header (its compliance classes: ``1, 2, 3, calendar-access``...)."""


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def display(self) -> str:
        return f"{self.scheme}://{host_port(self.host, self.port)}{self.path}"


def _parse(url: str) -> _Target:
    parts, port = parse_server_url(url, "DAV", ("http", "https"))
    scheme = parts.scheme
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(scheme, parts.hostname, port or (443 if scheme == "https" else 80), path)


def probe_collection(
    url: str,
    username: str,
    password: Secret,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    source_address: SourceAddress | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> DavProbe:
    """``PROPFIND`` (Depth 0) on URL as USERNAME; raises ``DavError`` unless 207 Multi-Status."""
    if not isinstance(password, Secret):
        raise TypeError("password must be a crmsync.secrets.Secret")
    target = _parse(url)
    where = f"the DAV server at {target.display}"
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        conn = http.client.HTTPSConnection(
            target.host,
            target.port,
            timeout=timeout,
            source_address=source_address,
            # verifying by default (certificate chain and host name); tests pass their own CA
            context=ssl_context or ssl.create_default_context(),
        )
    else:
        conn = http.client.HTTPConnection(
            target.host, target.port, timeout=timeout, source_address=source_address
        )
    token = base64.b64encode(f"{username}:{password.reveal()}".encode()).decode("ascii")
    try:
        try:
            conn.connect()
            if target.scheme == "http":
                peer = conn.sock.getpeername()[0] if conn.sock else ""
                if not is_loopback_address(peer):
                    raise DavInsecureTransportRefused(
                        f"{where} is plain HTTP, and crmsync sends passwords in clear text only "
                        f"to loopback addresses: use https://{target.host}{target.path}"
                    )
            conn.request(
                "PROPFIND",
                target.path,
                body=PROPFIND_BODY,
                headers={
                    "Authorization": f"Basic {token}",
                    "Depth": "0",
                    "Content-Type": "application/xml; charset=utf-8",
                    "User-Agent": "crmsync",
                },
            )
            response = conn.getresponse()
            response.read(MAX_BODY)
        except DavError:
            raise
        except Exception as exc:
            _fail(exc, where, target, timeout, password)
        return _judge(response, where, target, username, password)
    finally:
        conn.close()


def _judge(
    response: http.client.HTTPResponse,
    where: str,
    target: _Target,
    username: str,
    password: Secret,
) -> DavProbe:
    status = response.status
    said = _scrub(f"{status} {response.reason}".strip(), password)
    if status == 207:
        return DavProbe(target.display, status, response.getheader("DAV"))
    if status == 401:
        raise DavAuthenticationFailed(
            f"{where} refused the login of {username} ({said}): check the mailbox password "
            "and user name (crmsync mailbox add --update)"
        )
    if status == 403:
        raise DavAuthenticationFailed(
            f"{where} refused {username} access to {target.path} ({said}): check that the URL "
            "is this user's own collection, or ask the server's administrator for access"
        )
    if status in (404, 410):
        raise DavNotFound(
            f"{where} has no collection at {target.path} ({said}): check the mailbox's "
            "CalDAV/CardDAV URL (crmsync mailbox add --update)"
        )
    if 300 <= status < 400:
        location = _scrub(response.getheader("Location") or "no address given", password)
        raise DavError(
            f"{where} redirects ({said}) to {location}: configure that URL instead "
            "(crmsync does not follow redirects with a password)"
        )
    if status in (405, 501):
        raise DavError(
            f"{where} does not support PROPFIND ({said}): the URL is not a CalDAV/CardDAV "
            "collection; check the mailbox's CalDAV/CardDAV URL"
        )
    if status >= 500 or status in (408, 429):
        raise DavUnavailable(f"{where} could not answer right now ({said}); try again later")
    raise DavError(
        f"{where} answered {said} instead of 207 Multi-Status: check the mailbox's "
        "CalDAV/CardDAV URL"
    )


def _fail(exc: Exception, where: str, target: _Target, timeout: float, password: Secret) -> None:
    if isinstance(exc, ssl.SSLCertVerificationError):
        raise DavTlsFailure(
            f"the certificate of {where} is not trusted ({exc.verify_message}): check the host "
            "name in the URL, or install the CA that signed the server's certificate"
        ) from None
    if isinstance(exc, ssl.SSLError):
        raise DavTlsFailure(
            f"TLS with {where} failed ({exc.reason or exc}): check that the port and the "
            "scheme (https://) of the URL match the server"
        ) from None
    if isinstance(exc, TimeoutError):
        raise DavUnavailable(
            f"{where} did not answer within {timeout:g} s; check the URL, or try again later"
        ) from None
    if isinstance(exc, ConnectionRefusedError):
        raise DavUnavailable(
            f"{where} refused the connection: the server is down or the port is wrong; check "
            "the URL, or try again later"
        ) from None
    if isinstance(exc, socket.gaierror):
        raise DavUnavailable(
            f"the host name {target.host!r} cannot be resolved ({exc.strerror}): check the URL"
        ) from None
    if isinstance(exc, http.client.HTTPException | ConnectionError):
        said = _scrub(str(exc), password) or type(exc).__name__
        raise DavUnavailable(
            f"{where} closed the connection or sent no valid HTTP answer ({said[:300]}); check "
            "that the URL's port is an HTTP port, or try again later"
        ) from None
    if isinstance(exc, OSError):
        raise DavUnavailable(
            f"{where} cannot be reached ({exc.strerror or exc}); try again later"
        ) from None
    raise exc


def _scrub(text: str, password: Secret) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    secret = password.reveal()
    if len(secret) >= 4:
        text = text.replace(secret, "***")
    return text
