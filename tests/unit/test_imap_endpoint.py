"""IMAP endpoint URLs and the STARTTLS / clear-text policy (pure, no network)."""

from __future__ import annotations

import pytest

from crmsync.errors import InvalidInput
from crmsync.mail.imap import (
    ImapEndpoint,
    Security,
    TransportDecision,
    decide_transport,
    is_loopback_address,
)


@pytest.mark.parametrize(
    ("url", "host", "port", "security"),
    [
        ("imap://mail.example.org", "mail.example.org", 143, Security.STARTTLS),
        ("imap://mail.example.org:1143/", "mail.example.org", 1143, Security.STARTTLS),
        ("imaps://mail.example.org", "mail.example.org", 993, Security.IMPLICIT_TLS),
        ("IMAPS://Mail.Example.org:10993", "mail.example.org", 10993, Security.IMPLICIT_TLS),
        ("imap://127.0.0.1:1143", "127.0.0.1", 1143, Security.STARTTLS),
        ("imap://[::1]:1143", "::1", 1143, Security.STARTTLS),
        ("  imaps://anna@mail.example.org  ", "mail.example.org", 993, Security.IMPLICIT_TLS),
    ],
)
def test_urls_parse(url: str, host: str, port: int, security: Security) -> None:
    endpoint = ImapEndpoint.from_url(url)
    assert (endpoint.host, endpoint.port, endpoint.security) == (host, port, security)


def test_display_and_url_round_trip() -> None:
    assert ImapEndpoint.from_url("imap://[::1]:1143").display == "[::1]:1143"
    assert ImapEndpoint.from_url("imaps://mail.example.org").url == "imaps://mail.example.org:993"
    endpoint = ImapEndpoint.from_url("imap://127.0.0.1:1143")
    assert ImapEndpoint.from_url(endpoint.url) == endpoint


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("pop3://mail.example.org", "scheme must be imap:// or imaps://"),
        ("https://mail.example.org", "scheme must be imap:// or imaps://"),
        ("imap://", "names no host"),
        ("imap://mail.example.org:99999", "invalid port"),
        ("imap://mail.example.org:0", "invalid port"),
        ("imap://mail.example.org:abc", "invalid port"),
        ("imaps://anna:hunter22@mail.example.org", "must not contain a password"),
        ("imap://mail.example.org/INBOX", "folders are configured separately"),
        ("imap://mail.example.org/?x=1", "folders are configured separately"),
    ],
)
def test_bad_urls_say_why(url: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        ImapEndpoint.from_url(url)


def test_password_in_url_is_not_echoed() -> None:
    with pytest.raises(InvalidInput) as caught:
        ImapEndpoint.from_url("imaps://anna:hunter22@mail.example.org")
    assert "hunter22" not in str(caught.value)


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("192.168.1.10", False),
        ("::ffff:10.0.0.1", False),
        ("2001:db8::1", False),
        ("fe80::1%eth0", False),
        ("localhost", False),  # a name is never trusted: the policy looks at the peer address
        ("", False),
    ],
)
def test_loopback_detection(address: str, loopback: bool) -> None:
    assert is_loopback_address(address) is loopback


@pytest.mark.parametrize(
    ("offers", "peer", "decision"),
    [
        (True, "203.0.113.5", TransportDecision.STARTTLS),
        (True, "127.0.0.1", TransportDecision.STARTTLS),  # offered: used even on loopback
        (False, "127.0.0.1", TransportDecision.PLAINTEXT_LOOPBACK),
        (False, "::1", TransportDecision.PLAINTEXT_LOOPBACK),
        (False, "203.0.113.5", TransportDecision.REFUSE),
        (False, "192.168.1.10", TransportDecision.REFUSE),  # private is not loopback
    ],
)
def test_starttls_policy(offers: bool, peer: str, decision: TransportDecision) -> None:
    assert decide_transport(offers_starttls=offers, peer_address=peer) is decision
