"""Where a server is and how to reach it safely: shared by every protocol adapter.

- ``parse_server_url``: the checks every server URL gets (scheme, host, port, no password in
  it), with messages that name the protocol; each adapter adds what is its own (default ports,
  paths).
- The clear-text policy: a password may cross the network unencrypted only to a loopback
  address, decided on the address actually connected to, not on the host name, so a name like
  ``localhost`` that resolves elsewhere cannot trick it. ``decide_transport`` applies it to a
  protocol with STARTTLS (IMAP, SMTP); ``is_loopback_address`` is the test itself (HTTP).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from urllib.parse import SplitResult, urlsplit

from crmsync.errors import InvalidInput

# Initialisms said with a vowel sound take "an": an IMAP URL, an SMTP URL, a DAV URL.
_VOWEL_SOUND_LETTERS = frozenset("AEFHILMNORSX")


def parse_server_url(
    url: str, protocol: str, schemes: Sequence[str]
) -> tuple[SplitResult, int | None]:
    """URL split, with its port (None when not given), or InvalidInput naming PROTOCOL.

    The scheme (lower-cased in the result) must be one of SCHEMES; the URL must name a host and
    a valid port and carry no password (passwords travel as ``Secret``, never in URLs).
    """
    text = url.strip()
    parts = urlsplit(text)
    parts = parts._replace(scheme=parts.scheme.lower())
    if parts.scheme not in schemes:
        names = [f"{s}://" for s in schemes]
        choice = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        raise InvalidInput(f"{protocol} URL {text!r}: the scheme must be {choice}")
    if not parts.hostname:
        raise InvalidInput(f"{protocol} URL {text!r} names no host")
    if parts.password is not None:
        article = "an" if protocol[:1] in _VOWEL_SOUND_LETTERS else "a"
        raise InvalidInput(
            f"{article} {protocol} URL must not contain a password; give it through the "
            "environment or the prompt"
        )
    try:
        port = parts.port
    except ValueError:
        raise InvalidInput(f"{protocol} URL {text!r} has an invalid port") from None
    if port == 0:
        raise InvalidInput(f"{protocol} URL {text!r} has an invalid port")
    return parts, port


def host_port(host: str, port: int) -> str:
    """``host:port`` for messages, IPv6 literals bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TransportDecision(enum.StrEnum):
    """What a STARTTLS-capable connection does after the greeting, before logging in."""

    STARTTLS = "starttls"
    PLAINTEXT_LOOPBACK = "plaintext_loopback"
    REFUSE = "refuse"


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
    """TLS when offered, clear text only over loopback.

    STARTTLS is used even towards loopback when offered: it costs little and keeps one code path
    for production servers.
    """
    if offers_starttls:
        return TransportDecision.STARTTLS
    if is_loopback_address(peer_address):
        return TransportDecision.PLAINTEXT_LOOPBACK
    return TransportDecision.REFUSE
