"""Privacy at the wire: what a fetch plan forbids never crosses the network.

Twenty messages with distinctive subjects and ~200 KB bodies are delivered (SMTP -> LMTP) to a
fresh user; every IMAP byte passes a capturing proxy, so the assertions are about the traffic
itself, not about what the adapter chooses to return.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from email.policy import SMTP

import pytest

from crmsync.mail.imap import ImapSession, PrivacyViolation
from tests.integration.test_imap_session import (
    EVERYTHING,
    METADATA,
    SUBJECT,
    open_imap,
    plain_message,
)
from tests.netproxy import FaultProxy
from tests.stackfix import MailUser, Stack

pytestmark = pytest.mark.integration

MESSAGES = 20
BODY_BYTES = 200 * 1024


@dataclass(frozen=True)
class Mailbox:
    user: MailUser
    subjects: list[str]
    body_markers: list[str]
    delivered_bytes: int


@pytest.fixture(scope="module")
def big_mailbox(stack: Stack) -> Mailbox:
    user = stack.new_user("priv")
    tag = secrets.token_hex(4)
    subjects, markers, delivered = [], [], 0
    for i in range(MESSAGES):
        subject = f"Confidential merger plan {tag} number {i:02d}"
        marker = f"BODYMARKER-{tag}-{i:02d}"
        line = f"{marker} the numbers are in the attachment, do not forward.\n"
        body = line * (BODY_BYTES // len(line) + 1)
        raw = plain_message(user.address, subject=subject, body=body).as_bytes(policy=SMTP)
        stack.deliver(raw, [user.address])
        subjects.append(subject)
        markers.append(marker)
        delivered += len(raw)
    return Mailbox(user, subjects, markers, delivered)


@pytest.fixture
def proxied(stack: Stack, big_mailbox: Mailbox) -> Iterator[tuple[ImapSession, FaultProxy]]:
    with (
        FaultProxy((stack.host, stack.imap_port)) as proxy,
        open_imap(stack, big_mailbox.user, via=proxy) as imap,
    ):
        imap.select("INBOX")
        proxy.clear_traffic()  # count the fetches only, not the login
        yield imap, proxy


def wire(proxy: FaultProxy) -> bytes:
    return proxy.captured_to_server() + proxy.captured_to_client()


def test_metadata_fetch_carries_no_subject_and_no_body(
    proxied: tuple[ImapSession, FaultProxy], big_mailbox: Mailbox
) -> None:
    imap, proxy = proxied
    fetched = imap.fetch_headers(range(1, MESSAGES + 1), METADATA)

    assert len(fetched) == MESSAGES
    assert all(f.headers.subject is None and f.size and f.size > BODY_BYTES for f in fetched)
    assert proxy.bytes_to_client < 0.05 * big_mailbox.delivered_bytes
    traffic = wire(proxy)
    for subject, marker in zip(big_mailbox.subjects, big_mailbox.body_markers, strict=True):
        assert subject.encode() not in traffic
        assert marker.encode() not in traffic
    assert b"Subject" not in traffic and b"SUBJECT" not in traffic
    command = proxy.captured_to_server().upper()
    for item in (b"ENVELOPE", b"BODYSTRUCTURE", b"BODY[]", b"BODY.PEEK[]", b"RFC822 ", b"1:*"):
        assert item not in command


def test_subject_fetch_carries_subjects_but_no_body(
    proxied: tuple[ImapSession, FaultProxy], big_mailbox: Mailbox
) -> None:
    imap, proxy = proxied
    fetched = imap.fetch_headers(range(1, MESSAGES + 1), SUBJECT)

    assert [f.headers.subject for f in fetched] == big_mailbox.subjects
    assert proxy.bytes_to_client < 0.05 * big_mailbox.delivered_bytes
    traffic = wire(proxy)
    assert all(subject.encode() in traffic for subject in big_mailbox.subjects)
    assert not any(marker.encode() in traffic for marker in big_mailbox.body_markers)


def test_fetch_message_under_a_restricted_plan_sends_nothing(
    proxied: tuple[ImapSession, FaultProxy],
) -> None:
    imap, proxy = proxied
    for plan in (METADATA, SUBJECT):
        with pytest.raises(PrivacyViolation):
            imap.fetch_message(1, plan)
    assert (proxy.bytes_to_server, proxy.bytes_to_client) == (0, 0)
    assert imap.fetch_headers([1], METADATA)  # and the session is still fine


def test_fetch_message_under_everything_returns_the_whole_message(
    proxied: tuple[ImapSession, FaultProxy], big_mailbox: Mailbox
) -> None:
    imap, proxy = proxied
    raw = imap.fetch_message(3, EVERYTHING)
    assert len(raw) > BODY_BYTES
    assert big_mailbox.subjects[2].encode() in raw
    assert big_mailbox.body_markers[2].encode() in raw
    assert proxy.bytes_to_client > len(raw)
