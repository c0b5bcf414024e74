"""submit_message against the stack's SMTP relay (AUTH checked against Dovecot's users, local
recipients delivered to Dovecot by LMTP, others written to the outbox), and against small
aiosmtpd servers started here for what the relay never does: 4xx replies, a tiny SIZE limit,
XOAUTH2, a server that goes silent after the message, a reply that echoes the password."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from crmsync.mail.compose import (
    ComposeError,
    OutgoingMessage,
    compose,
    envelope_recipients,
    new_message_id,
)
from crmsync.mail.smtp import (
    SmtpAuthenticationFailed,
    SmtpError,
    SmtpOutcomeUnknown,
    SmtpRejected,
    SmtpSubmission,
    SmtpTemporaryFailure,
    SmtpUnavailable,
    Submitted,
    submit_message,
)
from crmsync.secrets import Secret
from tests.stackfix import MailUser, Stack

pytestmark = pytest.mark.integration

PASSWORD = "Local-Secret-Pw-93kd"
TOKEN = "ya29.Token-For-Tests-77xq"


def relay_url(stack: Stack) -> str:
    return f"smtp://{stack.host}:{stack.smtp_port}"


def email(sender: MailUser | str, **fields: Any) -> OutgoingMessage:
    address = sender if isinstance(sender, str) else sender.address
    values: dict[str, Any] = {
        "from_address": address,
        "from_name": "Änna Sender",
        "subject": f"Offer {new_message_id('x')[1:9]} Grüße",
        "message_id": new_message_id("crm.example.test"),
        "text_body": "Hello,\n.\n..two dots\nthe offer.\n",
        "html_body": "<p>Hello</p>",
        "date": datetime.now(UTC),
    }
    values.update(fields)
    return OutgoingMessage(**values)


def send(stack: Stack, user: MailUser, message: OutgoingMessage, **kwargs: Any) -> Submitted:
    """Compose (unless ``raw=`` gives the bytes: each compose has new MIME boundaries), submit."""
    raw = kwargs.pop("raw", None) or compose(message)
    return submit_message(
        relay_url(stack),
        user.username,
        Secret(kwargs.pop("password", user.password)),
        envelope_from=message.from_address,
        recipients=envelope_recipients(message),
        message=raw,
        timeout=kwargs.pop("timeout", 30),
        **kwargs,
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------- the stack's relay
def test_mail_to_a_local_user_lands_in_their_inbox(stack: Stack) -> None:
    anna, bo = stack.new_user("anna"), stack.new_user("bo")
    message = email(anna, to=(bo.address,))
    raw = compose(message)
    result = send(stack, anna, message, raw=raw)
    assert result == Submitted(accepted=(bo.address,), refused={})
    with stack.imap(bo) as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["HEADER", "Message-ID", message.message_id])
        assert len(uids) == 1
        delivered = client.fetch(uids, ["BODY.PEEK[]"])[uids[0]][b"BODY[]"]
    # LMTP adds its trace fields on top; the message itself arrives byte for byte
    assert delivered.endswith(raw)


def test_outside_recipients_get_the_message_with_bcc_only_in_the_envelope(
    stack: Stack, mail_user: MailUser
) -> None:
    message = email(
        mail_user,
        to=("client@customer.test",),
        cc=("Colleague@Partner.test",),
        bcc=("boss@partner.test", "CLIENT@customer.test"),
    )
    raw = compose(message)
    result = send(stack, mail_user, message, raw=raw)
    assert result.accepted == (
        "client@customer.test",
        "Colleague@Partner.test",
        "boss@partner.test",
    )
    assert result.refused == {}
    sent = stack.wait_outbox(lambda m: m.message_id == message.message_id)
    assert sent.raw == raw  # dot-stuffing undone, nothing rewritten
    assert sent.rcpt_tos == list(result.accepted)
    assert sent.mail_from == mail_user.address
    assert sent.auth_user == mail_user.username
    assert f"SIZE={len(raw)}" in sent.envelope["mail_options"]  # the relay advertises SIZE
    assert b"boss@partner.test" not in sent.raw
    assert "..two dots" in sent.message().get_body(("plain",)).get_content()


def test_an_unknown_local_user_is_refused_and_the_others_still_get_it(
    stack: Stack, mail_user: MailUser
) -> None:
    nobody = f"nobody-{new_message_id('x')[1:9]}@{stack.domain}"
    message = email(mail_user, to=("client@customer.test", nobody))
    result = send(stack, mail_user, message)
    assert result.accepted == ("client@customer.test",)
    assert list(result.refused) == [nobody]
    assert result.refused[nobody].startswith("550 5.1.1")
    assert stack.outbox(message_id=message.message_id)[0].rcpt_tos == ["client@customer.test"]


def test_every_recipient_refused_is_a_permanent_rejection(
    stack: Stack, mail_user: MailUser
) -> None:
    nobody = f"nobody-{new_message_id('x')[1:9]}@{stack.domain}"
    with pytest.raises(SmtpRejected) as caught:
        send(stack, mail_user, email(mail_user, to=(nobody,)))
    error = caught.value
    assert error.code == 550 and not error.transient
    assert "5.1.1" in error.reply
    text = str(error)
    assert f"127.0.0.1:{stack.smtp_port}" in text and mail_user.username in text
    assert nobody in text and "check the recipient addresses" in text


def test_a_wrong_password_is_an_authentication_failure_without_the_password(
    stack: Stack, mail_user: MailUser
) -> None:
    message = email(mail_user, to=("client@customer.test",))
    with pytest.raises(SmtpAuthenticationFailed) as caught:
        send(stack, mail_user, message, password=PASSWORD)
    assert not caught.value.transient
    assert mail_user.username in str(caught.value) and "535" in str(caught.value)
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(caught.value)
    assert stack.outbox(message_id=message.message_id) == []


def test_a_server_that_is_down_is_unavailable_and_transient(mail_user: MailUser) -> None:
    message = email(mail_user, to=("client@customer.test",))
    with pytest.raises(SmtpUnavailable) as caught:
        submit_message(
            f"smtp://127.0.0.1:{closed_port()}",
            mail_user.username,
            Secret(mail_user.password),
            envelope_from=message.from_address,
            recipients=envelope_recipients(message),
            message=compose(message),
            timeout=5,
        )
    assert caught.value.transient
    assert "refused the connection" in str(caught.value)


def test_invalid_addresses_are_refused_before_connecting() -> None:
    url = f"smtp://127.0.0.1:{closed_port()}"  # nothing listens: any connection would fail
    for sender, rcpts in [("a@b.test", ["x@y.test\r\nRSET"]), ("a@b.test\r\n", ["x@y.test"])]:
        with pytest.raises(ComposeError):
            submit_message(url, None, None, envelope_from=sender, recipients=rcpts, message=b"x")
    with pytest.raises(ComposeError, match="no recipient"):
        submit_message(url, None, None, envelope_from="a@b.test", recipients=[], message=b"x")


# ---------------------------------------------------------------------- local test servers
class Handler:
    """An aiosmtpd handler whose replies a test sets; records what it was sent."""

    def __init__(self, **replies: str) -> None:
        self.replies = replies
        self.commands: list[str] = []
        self.received: list[Envelope] = []
        self.sessions: list[int] = []
        """One entry per SMTP connection that sent MAIL FROM."""
        self.data_delay = 0.0

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.commands.append("MAIL")
        if id(session) not in self.sessions:
            self.sessions.append(id(session))
        if "mail" in self.replies:
            return self.replies["mail"]
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.commands.append("RCPT")
        reply = self.replies.get(f"rcpt:{address}", self.replies.get("rcpt"))
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append("DATA")
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if "data" in self.replies:
            return self.replies["data"]
        self.received.append(envelope)
        return "250 OK queued"


class XOAuthHandler(Handler):
    """Offers XOAUTH2 (Google's and Microsoft's format) and accepts only TOKEN."""

    def __init__(self, **replies: str) -> None:
        super().__init__(**replies)
        self.logins: list[str] = []

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        blob = base64.b64decode(args[1]).decode() if len(args) > 1 else ""
        fields = dict(f.split("=", 1) for f in blob.split("\x01") if "=" in f)
        if fields.get("auth") == f"Bearer {TOKEN}":
            self.logins.append(fields["user"])
            return AuthResult(success=True, auth_data=fields["user"])
        await server.challenge_auth(json.dumps({"status": "401", "scope": "mail"}))
        return AuthResult(success=False, handled=False)


class LocalSmtp:
    """An aiosmtpd server on 127.0.0.1:<free port> in a thread; AUTH PLAIN/LOGIN accept
    PASSWORD for any user, without TLS (loopback)."""

    def __init__(self, handler: Handler, **smtp_kwargs: Any) -> None:
        self.handler = handler
        self.smtp_kwargs = smtp_kwargs
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @staticmethod
    def _authenticate(server, session, envelope, mechanism, data) -> AuthResult:  # type: ignore[no-untyped-def]
        ok = isinstance(data, LoginPassword) and data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=False)

    def __enter__(self) -> LocalSmtp:
        self.thread.start()

        def factory() -> SMTP:
            return SMTP(
                self.handler,
                hostname="local.smtp.test",
                auth_require_tls=False,
                authenticator=self._authenticate,
                loop=self.loop,
                **self.smtp_kwargs,
            )

        async def start() -> asyncio.AbstractServer:
            return await self.loop.create_server(factory, host="127.0.0.1", port=0)

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.url = f"smtp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def submit(self, *, user: str | None = "anna", **kwargs: Any) -> Submitted:
        message = email("anna@example.test", to=("bo@example.test", "cleo@example.test"))
        kwargs.setdefault("password", Secret(PASSWORD) if user else None)
        kwargs.setdefault("envelope_from", message.from_address)
        kwargs.setdefault("recipients", envelope_recipients(message))
        kwargs.setdefault("message", compose(message))
        kwargs.setdefault("timeout", 10)
        return submit_message(self.url, user, **kwargs)


@pytest.fixture
def local() -> Iterator[LocalSmtp]:
    with LocalSmtp(Handler()) as server:
        yield server


def test_a_local_server_receives_the_message(local: LocalSmtp) -> None:
    result = local.submit()
    assert result == Submitted(accepted=("bo@example.test", "cleo@example.test"), refused={})
    assert local.handler.commands == ["MAIL", "RCPT", "RCPT", "DATA"]
    assert local.handler.received[0].mail_from == "anna@example.test"


def test_every_recipient_4xx_is_a_temporary_failure(local: LocalSmtp) -> None:
    local.handler.replies["rcpt"] = "451 4.3.0 greylisted, try again in 5 minutes"
    with pytest.raises(SmtpTemporaryFailure) as caught:
        local.submit()
    error = caught.value
    assert error.transient and error.code == 451
    assert error.reply == "4.3.0 greylisted, try again in 5 minutes"
    assert "try again later" in str(error) and "anna" in str(error)
    assert "DATA" not in local.handler.commands


def test_some_recipients_4xx_and_the_rest_accepted(local: LocalSmtp) -> None:
    local.handler.replies["rcpt:cleo@example.test"] = "452 4.2.2 mailbox full"
    result = local.submit()
    assert result.accepted == ("bo@example.test",)
    assert result.refused == {"cleo@example.test": "452 4.2.2 mailbox full"}


def test_a_mix_of_4xx_and_5xx_for_everyone_is_still_worth_retrying(local: LocalSmtp) -> None:
    local.handler.replies["rcpt:bo@example.test"] = "550 5.1.1 no such user"
    local.handler.replies["rcpt:cleo@example.test"] = "450 4.2.1 try later"
    with pytest.raises(SmtpTemporaryFailure) as caught:
        local.submit()
    assert caught.value.code == 450


@pytest.mark.parametrize(
    ("step", "reply", "kind"),
    [
        ("mail", "451 4.7.1 rate limited", SmtpTemporaryFailure),
        ("mail", "553 5.7.1 sender not owned by user", SmtpRejected),
        ("data", "451 4.3.0 queue full", SmtpTemporaryFailure),
        ("data", "554 5.7.1 message looks like spam", SmtpRejected),
    ],
)
def test_refusals_of_the_sender_or_the_message(
    local: LocalSmtp, step: str, reply: str, kind: type[SmtpError]
) -> None:
    local.handler.replies[step] = reply
    with pytest.raises(kind) as caught:
        local.submit()
    error = caught.value
    assert isinstance(error, SmtpTemporaryFailure | SmtpRejected)
    assert error.code == int(reply[:3]) and error.reply == reply[4:]
    assert error.transient is (kind is SmtpTemporaryFailure)
    assert "anna" in str(error) and "127.0.0.1" in str(error)


def test_a_message_over_the_advertised_size_is_refused_before_mail_from() -> None:
    with LocalSmtp(Handler(), data_size_limit=1000) as server:
        big = email("anna@example.test", to=("bo@example.test",), text_body="x" * 2000)
        with pytest.raises(SmtpRejected) as caught:
            server.submit(message=compose(big))
        assert caught.value.code == 552 and not caught.value.transient
        assert "1,000 bytes" in str(caught.value)
        assert server.handler.commands == []  # refused before any mail transaction
        small = compose(email("anna@example.test", to=("bo@example.test",), html_body=None))
        assert len(small) < 1000
        server.submit(message=small)
        assert server.handler.received[0].mail_options == [f"SIZE={len(small)}"]


def test_xoauth2_is_used_when_a_token_is_given_and_offered() -> None:
    with LocalSmtp(XOAuthHandler()) as server:
        result = server.submit(password=None, xoauth2_token=Secret(TOKEN))
        assert result.refused == {}
        assert server.handler.logins == ["anna"]


def test_a_refused_xoauth2_token_is_an_authentication_failure_without_the_token() -> None:
    wrong = "ya29.Expired-Token-0001"
    with LocalSmtp(XOAuthHandler()) as server:
        with pytest.raises(SmtpAuthenticationFailed) as caught:
            server.submit(password=None, xoauth2_token=Secret(wrong))
        text = str(caught.value)
        assert "OAuth token of anna" in text and '"status": "401"' in text
        assert wrong not in text and TOKEN not in text
        assert base64.b64encode(wrong.encode()).decode() not in text
        assert server.handler.commands == []


def test_a_token_for_a_server_without_xoauth2_falls_back_to_the_password_or_fails(
    local: LocalSmtp,
) -> None:
    local.submit(xoauth2_token=Secret(TOKEN))  # the password is used
    with pytest.raises(SmtpAuthenticationFailed, match="does not offer XOAUTH2"):
        local.submit(password=None, xoauth2_token=Secret(TOKEN))


def test_silence_after_the_whole_message_is_an_unknown_outcome(local: LocalSmtp) -> None:
    local.handler.data_delay = 3
    with pytest.raises(SmtpOutcomeUnknown) as caught:
        local.submit(timeout=1)
    assert isinstance(caught.value, SmtpUnavailable) and caught.value.transient
    assert "may or may not have been sent" in str(caught.value)


def test_a_server_reply_that_echoes_the_password_is_scrubbed(local: LocalSmtp) -> None:
    local.handler.replies["rcpt"] = f"550 5.1.1 user unknown (you said {PASSWORD})"
    with pytest.raises(SmtpRejected) as caught:
        local.submit()
    assert PASSWORD not in str(caught.value) and PASSWORD not in caught.value.reply
    assert "***" in caught.value.reply


def test_without_credentials_no_login_is_attempted(local: LocalSmtp) -> None:
    result = local.submit(user=None)
    assert result.refused == {}
    assert local.handler.received[0].mail_from == "anna@example.test"


# ---------------------------------------------------------------------- one connection, many
def _session(server: LocalSmtp, timeout: float = 10) -> SmtpSubmission:
    return SmtpSubmission(server.url, "anna", Secret(PASSWORD), timeout=timeout)


def _submit_to(smtp: SmtpSubmission, to: str) -> Submitted:
    raw = compose(email("anna@example.test", to=(to,)))
    return smtp.submit(envelope_from="anna@example.test", recipients=[to], message=raw)


def test_many_messages_share_one_connection_and_one_login(local: LocalSmtp) -> None:
    with _session(local) as smtp:
        for i in range(5):
            assert _submit_to(smtp, f"r{i}@example.test").accepted == (f"r{i}@example.test",)
    assert len(local.handler.received) == 5
    assert len(local.handler.sessions) == 1


def test_after_a_refused_message_the_next_one_goes_out_on_the_same_connection(
    local: LocalSmtp,
) -> None:
    local.handler.replies["rcpt:nobody@example.test"] = "550 5.1.1 no such user"
    with _session(local) as smtp:
        with pytest.raises(SmtpRejected, match="refused every recipient"):
            _submit_to(smtp, "nobody@example.test")
        # without RSET the server would answer "503 nested MAIL command"
        assert _submit_to(smtp, "bo@example.test").accepted == ("bo@example.test",)
    assert [e.rcpt_tos for e in local.handler.received] == [["bo@example.test"]]
    assert len(local.handler.sessions) == 1


def test_a_connection_the_server_closed_while_idle_is_reopened_for_the_next_message() -> None:
    with LocalSmtp(Handler(), timeout=1) as server, _session(server) as smtp:
        _submit_to(smtp, "bo@example.test")
        time.sleep(2)  # past the server's idle timeout: it hangs up
        _submit_to(smtp, "bo@example.test")
        assert len(server.handler.received) == 2
        assert len(server.handler.sessions) == 2


def test_a_lost_answer_to_data_is_not_sent_again_on_a_new_connection(local: LocalSmtp) -> None:
    with _session(local, timeout=1) as smtp:
        _submit_to(smtp, "bo@example.test")
        local.handler.data_delay = 3  # the next answer comes too late
        with pytest.raises(SmtpOutcomeUnknown):
            _submit_to(smtp, "bo@example.test")
    # the doubtful one went out once: a retry on a new connection could deliver it twice
    assert local.handler.commands.count("DATA") == 2
