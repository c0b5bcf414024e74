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
from dataclasses import dataclass

from crmsync.errors import InvalidInput
from crmsync.transport import host_port, parse_server_url

IMAP_PORT = 143
IMAPS_PORT = 993


class Security(enum.StrEnum):
    IMPLICIT_TLS = "implicit_tls"
    """imaps://: TLS before the greeting."""
    STARTTLS = "starttls"
    """imap://: STARTTLS when offered; clear text only to a loopback address."""


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
        parts, port = parse_server_url(text, "IMAP", ("imap", "imaps"))
        scheme = parts.scheme
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
        return host_port(self.host, self.port)

    @property
    def url(self) -> str:
        scheme = "imaps" if self.security is Security.IMPLICIT_TLS else "imap"
        return f"{scheme}://{self.display}"
