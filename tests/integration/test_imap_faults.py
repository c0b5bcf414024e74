"""Failures the scheduler must tell apart: wrong password, server down, reset, silence.

Wrong-password tests connect from another loopback address: after a failed login Dovecot
delays the next authentications from the same IP (4 s, growing with repeated failures up to
15 s), which would slow every other test on 127.0.0.1. A fixed 127.0.0.2 accumulates that penalty
over repeated runs (and shares it with other suites on the same stack), so each test picks a
random address in 127.0.0.0/8.
"""

from __future__ import annotations

import random
import socket
import time
import traceback

import pytest

from crmsync import transport as transport_module
from crmsync.mail.imap import (
    AuthenticationFailed,
    ConnectionLost,
    ConnectionTimedOut,
    ImapError,
    ImapSession,
    InsecureTransportRefused,
    ServerUnavailable,
)
from crmsync.secrets import Secret
from tests.integration.test_imap_session import (
    EVERYTHING,
    METADATA,
    append,
    open_imap,
    plain_message,
)
from tests.integration.test_imap_tls import ScriptedImapServer
from tests.netproxy import FaultProxy
from tests.stackfix import MailUser, Stack

pytestmark = pytest.mark.integration


def penalty_free_source() -> tuple[str, int]:
    """A loopback source address other than 127.0.0.1, fresh for Dovecot's auth penalty."""
    a, b, c = (random.randint(0, 255), random.randint(0, 255), random.randint(2, 254))
    return (f"127.{a}.{b}.{c}", 0)


SHORT = 2.0  # seconds: the timeout of the fault tests


def full_text(exc: BaseException) -> str:
    """Everything a log or a traceback could show about EXC, chained exceptions included."""
    return "".join(traceback.format_exception(exc)) + repr(exc)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_wrong_password_is_permanent_and_never_shows_the_password(
    stack: Stack, mail_user: MailUser
) -> None:
    wrong = "Wr0ng-" + mail_user.password
    with pytest.raises(AuthenticationFailed) as caught:
        open_imap(stack, mail_user, password=wrong, source_address=penalty_free_source())
    error = caught.value
    assert not error.transient
    message = str(error)
    assert message.startswith(
        f"the IMAP server {stack.host}:{stack.imap_port} refused the login of "
        f"{mail_user.username}: check the mailbox password (crmsync mailbox add --update)"
    )
    assert "AUTHENTICATIONFAILED" in message  # what the server said, for the operator
    for text in (full_text(error), message):
        assert wrong not in text and mail_user.password not in text


def test_closed_port_is_transient_server_unavailable(mail_user: MailUser) -> None:
    port = closed_port()
    session = ImapSession(
        f"imap://127.0.0.1:{port}", mail_user.username, Secret(mail_user.password), timeout=SHORT
    )
    with pytest.raises(ServerUnavailable) as caught:
        session.open()
    assert caught.value.transient
    assert f"127.0.0.1:{port} refused the connection" in str(caught.value)
    session.close()  # nothing to close: fine


def test_reset_in_the_middle_of_a_fetch_is_transient(stack: Stack, mail_user: MailUser) -> None:
    body = "a line of a long message body\n" * 8000
    append(stack, mail_user, [plain_message(mail_user.address, body=body).as_bytes()])
    with FaultProxy((stack.host, stack.imap_port)) as proxy:
        imap = open_imap(stack, mail_user, via=proxy, timeout=SHORT)
        imap.select("INBOX")
        proxy.reset_after(to_client=20_000)
        with pytest.raises(ConnectionLost) as caught:
            imap.fetch_message(1, EVERYTHING)
        assert caught.value.transient and proxy.connections_reset == 1
        assert "was lost while fetching message 1" in str(caught.value)
        # the session refuses further work instead of talking to a dead socket ...
        with pytest.raises(ConnectionLost, match="lost earlier"):
            imap.fetch_headers([1], METADATA)
        started = time.monotonic()
        imap.close()  # ... and closing it neither raises nor waits
        assert time.monotonic() - started < 0.5


def test_reset_while_logging_in_is_transient(stack: Stack, mail_user: MailUser) -> None:
    with FaultProxy((stack.host, stack.imap_port)) as proxy:
        proxy.reset_after(to_server=10)  # the first command (CAPABILITY) is cut short
        with pytest.raises(ServerUnavailable) as caught:
            open_imap(stack, mail_user, via=proxy, timeout=SHORT)
        assert caught.value.transient


def test_blackholed_server_times_out_within_the_timeout(stack: Stack, mail_user: MailUser) -> None:
    with FaultProxy((stack.host, stack.imap_port)) as proxy:
        proxy.set_blackhole(True)
        started = time.monotonic()
        with pytest.raises(ConnectionTimedOut) as caught:
            open_imap(stack, mail_user, via=proxy, timeout=SHORT)
        elapsed = time.monotonic() - started
    assert SHORT * 0.9 <= elapsed < SHORT + 1.0
    assert caught.value.transient
    assert f"did not answer within {SHORT:g} s while connecting" in str(caught.value)


def test_server_going_silent_mid_session_times_out(stack: Stack, mail_user: MailUser) -> None:
    append(stack, mail_user, [plain_message(mail_user.address).as_bytes()])
    with FaultProxy((stack.host, stack.imap_port)) as proxy:
        imap = open_imap(stack, mail_user, via=proxy, timeout=SHORT)
        imap.select("INBOX")
        proxy.set_blackhole(True)
        started = time.monotonic()
        with pytest.raises(ConnectionTimedOut, match="while fetching the headers of 1 messages"):
            imap.fetch_headers([1], METADATA)
        assert time.monotonic() - started < SHORT + 1.0
        started = time.monotonic()
        imap.close()  # no LOGOUT attempt on a dead connection
        assert time.monotonic() - started < 0.5


def test_slow_network_still_works(stack: Stack, mail_user: MailUser) -> None:
    append(stack, mail_user, [plain_message(mail_user.address).as_bytes() for _ in range(3)])
    with FaultProxy((stack.host, stack.imap_port)) as proxy:
        proxy.set_latency(0.05)
        with open_imap(stack, mail_user, via=proxy, timeout=SHORT) as imap:
            imap.select("INBOX")
            assert [f.uid for f in imap.fetch_headers([1, 2, 3], METADATA)] == [1, 2, 3]


def test_clear_text_login_to_a_non_loopback_host_is_refused(
    stack: Stack, mail_user: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Dovecot in the stack offers no STARTTLS; pretend its address is not loopback
    monkeypatch.setattr(transport_module, "is_loopback_address", lambda address: False)
    with FaultProxy((stack.host, stack.imap_port)) as proxy:
        with pytest.raises(InsecureTransportRefused) as caught:
            open_imap(stack, mail_user, via=proxy)
        sent = proxy.captured_to_server()
    assert "does not offer STARTTLS" in str(caught.value)
    assert "clear text only to loopback addresses" in str(caught.value)
    assert not caught.value.transient and isinstance(caught.value, ImapError)
    assert b"LOGIN" not in sent.upper() and mail_user.password.encode() not in sent


def test_a_server_turning_connections_away_is_transient() -> None:
    with ScriptedImapServer(greeting=b"* BYE [UNAVAILABLE] too many connections\r\n") as server:
        session = ImapSession(f"imap://127.0.0.1:{server.port}", "anna", Secret("pw-1234"))
        with pytest.raises(ServerUnavailable, match="turned the connection away") as caught:
            session.open()
    assert caught.value.transient


def test_login_refused_for_now_is_transient() -> None:
    reply = b"NO [UNAVAILABLE] Temporary authentication failure"
    with ScriptedImapServer(login_reply=reply) as server:
        session = ImapSession(f"imap://127.0.0.1:{server.port}", "anna", Secret("pw-1234"))
        with pytest.raises(ServerUnavailable, match="could not check the login of anna") as caught:
            session.open()
    assert caught.value.transient and not isinstance(caught.value, AuthenticationFailed)


def test_a_password_echoed_by_the_server_is_scrubbed() -> None:
    password = "S3cret-Echo-99"
    reply = b"NO [AUTHENTICATIONFAILED] wrong password " + password.encode()
    with ScriptedImapServer(login_reply=reply) as server:
        session = ImapSession(f"imap://127.0.0.1:{server.port}", "anna", Secret(password))
        with pytest.raises(AuthenticationFailed) as caught:
            session.open()
    assert password not in full_text(caught.value)
    assert "wrong password ***" in str(caught.value)
