"""Where an IMAP server is and how to talk to it safely: URL parsing and the TLS policy.

``imaps://host[:993]`` is TLS from the first byte, with certificate and host-name verification.
``imap://host[:143]`` upgrades with STARTTLS whenever the server offers it; without STARTTLS the
password would cross the network in clear text, which crmsync allows only to a loopback address
(the local test stack, a local proxy such as a stunnel/Dovecot on the same machine). The policy
is decided on the address actually connected to, not on the host name, so a name like
``localhost`` that resolves elsewhere cannot trick it.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from crmsync.errors import InvalidInput

IMAP_PORT = 143
IMAPS_PORT = 993


class Security(enum.StrEnum):
    IMPLICIT_TLS = "implicit_tls"
    """imaps://: TLS before the greeting."""
    STARTTLS = "starttls"
    """imap://: STARTTLS when offered; clear text only to a loopback address."""


class TransportDecision(enum.StrEnum):
    """What an ``imap://`` connection does after the greeting, before LOGIN."""

    STARTTLS = "starttls"
    PLAINTEXT_LOOPBACK = "plaintext_loopback"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class ImapEndpoint:
    host: str
    port: int
    security: Security

    @classmethod
    def from_url(cls, url: str) -> ImapEndpoint:
        """Parse ``imap://host[:port]`` or ``imaps://host[:port]`` (a trailing ``/`` is fine).

        The URL carries no password (passwords travel as ``Secret``) and no folder (folders are
        chosen per operation).
        """
        text = url.strip()
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in ("imap", "imaps"):
            raise InvalidInput(f"IMAP URL {text!r}: the scheme must be imap:// or imaps://")
        if not parts.hostname:
            raise InvalidInput(f"IMAP URL {text!r} names no host")
        if parts.password is not None:
            raise InvalidInput(
                "an IMAP URL must not contain a password; give it through the environment or "
                "the prompt"
            )
        try:
            port = parts.port
        except ValueError:
            raise InvalidInput(f"IMAP URL {text!r} has an invalid port") from None
        if port == 0:
            raise InvalidInput(f"IMAP URL {text!r} has an invalid port")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidInput(
                f"IMAP URL {text!r}: give only the server (imap://host[:port]); folders are "
                "configured separately"
            )
        if scheme == "imaps":
            return cls(parts.hostname, port or IMAPS_PORT, Security.IMPLICIT_TLS)
        return cls(parts.hostname, port or IMAP_PORT, Security.STARTTLS)

    @property
    def display(self) -> str:
        """``host:port`` for messages (IPv6 literals bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        scheme = "imaps" if self.security is Security.IMPLICIT_TLS else "imap"
        return f"{scheme}://{self.display}"


def is_loopback_address(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False  # a name, not an address: never trusted
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def decide_transport(*, offers_starttls: bool, peer_address: str) -> TransportDecision:
    """The STARTTLS policy of ``imap://``: TLS when offered, clear text only over loopback.

    STARTTLS is used even towards loopback when offered: it costs little and keeps one code path
    for production servers.
    """
    if offers_starttls:
        return TransportDecision.STARTTLS
    if is_loopback_address(peer_address):
        return TransportDecision.PLAINTEXT_LOOPBACK
    return TransportDecision.REFUSE
