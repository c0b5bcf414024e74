"""Can crmsync reach a CalDAV/CardDAV collection and log in? One ``PROPFIND`` (Depth 0) says.

    probe = probe_collection("https://dav.example.com/anna/", "anna", secret, timeout=15)

The probe sends one ``PROPFIND`` asking for the collection's ``resourcetype``, with HTTP Basic
authentication sent up front, and reads the answer: ``207 Multi-Status`` is success, 401 and 403
mean the login or the access was refused (permanent: the same password will not do better),
connection failures, timeouts and 5xx answers are transient. Redirects are not followed (the
password would travel to another address); the message names the new address to configure.
The transport policy (https verifies; http only to loopback) is ``crmsync.dav._http``'s.
"""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass

from crmsync.dav._http import (
    DEFAULT_TIMEOUT,
    DavAuthenticationFailed,
    DavError,
    DavInsecureTransportRefused,
    DavNotFound,
    DavTlsFailure,
    DavUnavailable,
    SourceAddress,
    Target,
    basic_auth,
    open_connection,
    parse_target,
    redirect_error,
    refusal,
    scrub,
    translate_failure,
)
from crmsync.secrets import Secret

__all__ = [
    "DEFAULT_TIMEOUT",
    "DavAuthenticationFailed",
    "DavError",
    "DavInsecureTransportRefused",
    "DavNotFound",
    "DavProbe",
    "DavTlsFailure",
    "DavUnavailable",
    "probe_collection",
]

MAX_BODY = 1024 * 1024
"""The probe reads at most this much of an answer: it needs the status, not the content."""
PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/></D:prop></D:propfind>'
)


@dataclass(frozen=True)
class DavProbe:
    """A successful probe: what answered, and how."""

    url: str
    """The probed URL as shown to people (scheme, host, port, path; never user info)."""
    status: int
    dav: str | None
    """The server's ``DAV:`` header (its compliance classes: ``1, 2, 3, calendar-access``...)."""


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
    authorization = basic_auth(username, password)
    target = parse_target(url)
    where = f"the DAV server at {target.display}"
    conn = open_connection(
        target, timeout=timeout, source_address=source_address, ssl_context=ssl_context
    )
    try:
        try:
            conn.request(
                "PROPFIND",
                target.path,
                body=PROPFIND_BODY,
                headers={
                    "Authorization": authorization,
                    "Depth": "0",
                    "Content-Type": "application/xml; charset=utf-8",
                    "User-Agent": "crmsync",
                },
            )
            response = conn.getresponse()
            response.read(MAX_BODY)
        except Exception as exc:
            raise translate_failure(exc, where, target, timeout, password) from None
        return _judge(response, where, target, username, password)
    finally:
        conn.close()


def _judge(
    response: http.client.HTTPResponse,
    where: str,
    target: Target,
    username: str,
    password: Secret,
) -> DavProbe:
    status = response.status
    said = scrub(f"{status} {response.reason}".strip(), password)
    if status == 207:
        return DavProbe(target.display, status, response.getheader("DAV"))
    if status in (404, 410):
        raise DavNotFound(
            f"{where} has no collection at {target.path} ({said}): check the mailbox's "
            "CalDAV/CardDAV URL (crmsync mailbox add --update)"
        )
    refused = refusal(status, response.reason, where, username, target.path, password)
    if refused is not None:
        raise refused
    if 300 <= status < 400:
        raise redirect_error(where, said, response.getheader("Location"), password)
    if status in (405, 501):
        raise DavError(
            f"{where} does not support PROPFIND ({said}): the URL is not a CalDAV/CardDAV "
            "collection; check the mailbox's CalDAV/CardDAV URL"
        )
    raise DavError(
        f"{where} answered {said} instead of 207 Multi-Status: check the mailbox's "
        "CalDAV/CardDAV URL"
    )
