"""Push over IMAP IDLE against the real Dovecot: arrivals, expunges, faults, many mailboxes.

Dovecot reports a delivery to an IDLE client about 0.5 s later by design (docs/test-stack.md),
and the stack polls inotify-less sessions every second, so every functional wait here is a
deadline loop of several seconds, never a timing assertion. Faults come from the fault proxy
(cut connections, a black hole), a forwarder that is stopped and restarted (a server that dies
and comes back), and a tiny scripted server (no IDLE, STARTTLS). Wrong-password tests log in
from a random loopback address to keep Dovecot's per-IP auth penalty away from other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import structlog

from crmsync.mail.imap.errors import MissingCapability
from crmsync.mail.imap.idle import IdleConnection, PushUnavailable
from crmsync.secrets import Secret
from crmsync.sync.push import PushState, PushTarget, PushWatcher
from tests import netproxy
from tests.integration import test_imap_tls
from tests.integration.test_imap_session import append, plain_message
from tests.netproxy import FaultProxy
from tests.stackfix import MailUser, Stack

pytestmark = pytest.mark.integration

pki = test_imap_tls.pki  # the module-scoped CA + server certificate fixture
WAIT = 20.0  # seconds: the deadline of every functional wait


# ---------------------------------------------------------------------- helpers
@dataclass
class Recorder:
    """The watcher's callbacks, recorded; RAISE makes them fail after recording."""

    raise_: bool = False
    new_mail: list[uuid.UUID] = field(default_factory=list)
    states: list[tuple[uuid.UUID, PushState]] = field(default_factory=list)

    async def on_new_mail(self, mailbox_id: uuid.UUID) -> None:
        self.new_mail.append(mailbox_id)
        if self.raise_:
            raise RuntimeError("callback bug")

    async def on_state(self, mailbox_id: uuid.UUID, state: PushState) -> None:
        self.states.append((mailbox_id, state))
        if self.raise_:
            raise RuntimeError("callback bug")

    def history(self, mailbox_id: uuid.UUID) -> list[PushState]:
        return [s for m, s in self.states if m == mailbox_id]

    def watcher(self, **kwargs: object) -> PushWatcher:
        kwargs.setdefault("timeout", 5.0)
        kwargs.setdefault("backoff_initial", 0.2)
        kwargs.setdefault("backoff_max", 1.0)
        return PushWatcher(on_new_mail=self.on_new_mail, on_state=self.on_state, **kwargs)  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.05)


def target_for(user: MailUser, host: str, port: int, **kwargs: object) -> PushTarget:
    scheme = kwargs.pop("scheme", "imap")
    return PushTarget(
        uuid.uuid4(), f"{scheme}://{host}:{port}", user.username, Secret(user.password), **kwargs
    )  # type: ignore[arg-type]


async def deliver(stack: Stack, user: MailUser) -> None:
    await asyncio.to_thread(stack.deliver, plain_message(user.address), [user.address])


async def live(watcher: PushWatcher, *ids: uuid.UUID) -> None:
    await wait_until(
        lambda: all(watcher.states().get(i) is PushState.LIVE for i in ids), "targets live"
    )


def penalty_free_source() -> tuple[str, int]:
    a, b, c = random.randint(0, 255), random.randint(0, 255), random.randint(2, 254)
    return (f"127.{a}.{b}.{c}", 0)


def cut_all(proxy: FaultProxy) -> None:
    """Reset every connection through PROXY (the server side sees a dead peer too)."""

    async def cut() -> None:
        for writer in list(proxy._writers):
            netproxy._abort(writer, reset=True)

    proxy.call(cut)


# ---------------------------------------------------------------------- arrivals
def test_a_delivery_is_pushed_within_seconds(stack: Stack, mail_user: MailUser) -> None:
    rec = Recorder()

    async def scenario() -> None:
        watcher = rec.watcher()
        target = target_for(mail_user, stack.host, stack.imap_port)
        try:
            await watcher.set_targets([target])
            await live(watcher, target.mailbox_id)
            await deliver(stack, mail_user)
            await wait_until(lambda: target.mailbox_id in rec.new_mail, "new mail pushed")
        finally:
            await watcher.close()
        assert rec.history(target.mailbox_id) == [PushState.CONNECTING, PushState.LIVE]
        assert watcher.states() == {}

    asyncio.run(scenario())


def test_an_expunge_is_not_new_mail_but_a_later_arrival_is(
    stack: Stack, mail_user: MailUser
) -> None:
    append(stack, mail_user, [plain_message(mail_user.address).as_bytes() for _ in range(2)])

    def expunge_one() -> None:
        with stack.imap(mail_user) as client:
            client.select_folder("INBOX")
            client.delete_messages([client.search("ALL")[0]])
            client.expunge()

    async def scenario() -> None:
        pushed: list[int] = []
        conn = IdleConnection(
            f"imap://{stack.host}:{stack.imap_port}",
            mail_user.username,
            Secret(mail_user.password),
            timeout=5,
        )
        await conn.open()
        try:
            assert (await conn.select()).exists == 2
            await asyncio.to_thread(expunge_one)
            deadline = time.monotonic() + WAIT
            while conn.counter.exists != 1:  # the EXPUNGE reached us through IDLE
                assert time.monotonic() < deadline, "the expunge was never reported"
                await conn.idle(seconds=1, on_new_mail=lambda: pushed.append(1))
            assert pushed == []
            await deliver(stack, mail_user)
            while not pushed:
                assert time.monotonic() < deadline + WAIT, "the arrival was never reported"
                await conn.idle(seconds=1, on_new_mail=lambda: pushed.append(1))
            assert conn.counter.exists == 2
        finally:
            await conn.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("prefer_login", [False, True], ids=["authenticate-plain", "login"])
def test_any_password_logs_in_quoted_or_as_a_literal(stack: Stack, prefer_login: bool) -> None:
    user = stack.add_user(f"pw{uuid.uuid4().hex[:10]}", 'p"a\\ss wörd {3}')

    async def scenario() -> bytes:
        with FaultProxy((stack.host, stack.imap_port)) as proxy:
            conn = IdleConnection(
                f"imap://{proxy.host}:{proxy.port}",
                user.username,
                Secret(user.password),
                timeout=5,
                prefer_login=prefer_login,
            )
            await conn.open()
            assert "IDLE" in conn.capabilities and "QRESYNC" in conn.capabilities  # after login
            assert (await conn.select()).exists == 0
            await conn.close()
            return proxy.captured_to_server()

    sent = asyncio.run(scenario())
    if prefer_login:  # the quote and backslash escaped would not do: 8-bit needs a literal
        assert re.search(rb"LOGIN \"%s\" \{\d+\+\}\r\n" % user.username.encode(), sent)
    else:
        assert b"AUTHENTICATE PLAIN " in sent and b"LOGIN" not in sent


def test_re_idle_keeps_the_connection_live_across_periods(
    stack: Stack, mail_user: MailUser
) -> None:
    rec = Recorder()

    async def scenario() -> None:
        with FaultProxy((stack.host, stack.imap_port)) as proxy:
            watcher = rec.watcher(reidle_seconds=1.0)
            target = target_for(mail_user, proxy.host, proxy.port)
            try:
                await watcher.set_targets([target])
                await live(watcher, target.mailbox_id)
                await wait_until(
                    lambda: proxy.captured_to_server().count(b" IDLE\r\n") >= 4, "4 IDLE periods"
                )
                assert proxy.captured_to_server().count(b"DONE\r\n") >= 3
                await deliver(stack, mail_user)
                await wait_until(lambda: target.mailbox_id in rec.new_mail, "new mail pushed")
            finally:
                await watcher.close()
            assert proxy.connections_accepted == 1  # one connection all along
        assert rec.history(target.mailbox_id) == [PushState.CONNECTING, PushState.LIVE]

    asyncio.run(scenario())


def test_failing_callbacks_never_stop_the_watcher(stack: Stack, mail_user: MailUser) -> None:
    rec = Recorder(raise_=True)

    async def scenario() -> None:
        watcher = rec.watcher()
        target = target_for(mail_user, stack.host, stack.imap_port)
        try:
            with structlog.testing.capture_logs() as logs:
                await watcher.set_targets([target])
                await live(watcher, target.mailbox_id)
                await deliver(stack, mail_user)
                await wait_until(lambda: len(rec.new_mail) >= 1, "first arrival pushed")
                seen = len(rec.new_mail)
                await deliver(stack, mail_user)
                await wait_until(lambda: len(rec.new_mail) > seen, "second arrival pushed")
        finally:
            await watcher.close()
        failed = [e for e in logs if "callback failed" in e["event"]]
        assert failed and all(e["mailbox_id"] == str(target.mailbox_id) for e in failed)

    asyncio.run(scenario())


# ---------------------------------------------------------------------- permanent errors
def test_a_wrong_password_is_failed_and_never_logged(stack: Stack, mail_user: MailUser) -> None:
    rec = Recorder()
    wrong = "Wr0ng-" + mail_user.password

    async def scenario() -> None:
        watcher = rec.watcher(backoff_max=60.0, source_address=penalty_free_source())
        target = PushTarget(
            uuid.uuid4(),
            f"imap://{stack.host}:{stack.imap_port}",
            mail_user.username,
            Secret(wrong),
        )
        try:
            with structlog.testing.capture_logs() as logs:
                await watcher.set_targets([target])
                await wait_until(
                    lambda: watcher.states()[target.mailbox_id] is PushState.FAILED, "failed"
                )
        finally:
            await watcher.close()
        assert rec.history(target.mailbox_id) == [PushState.CONNECTING, PushState.FAILED]
        text = repr(logs) + repr(target)
        assert "refused the login" in text
        assert wrong not in text and mail_user.password not in text

    asyncio.run(scenario())


def test_a_changed_target_is_restarted_and_a_missing_folder_is_failed(
    stack: Stack, mail_user: MailUser
) -> None:
    rec = Recorder()

    async def scenario() -> None:
        watcher = rec.watcher(backoff_max=60.0)
        target = target_for(mail_user, stack.host, stack.imap_port)
        changed = PushTarget(
            target.mailbox_id, target.url, target.username, target.password, folder="Nope"
        )
        try:
            await watcher.set_targets([target])
            await live(watcher, target.mailbox_id)
            await watcher.set_targets([target])  # unchanged: left alone
            assert rec.history(target.mailbox_id) == [PushState.CONNECTING, PushState.LIVE]
            await watcher.set_targets([changed])
            await wait_until(
                lambda: watcher.states()[target.mailbox_id] is PushState.FAILED, "failed"
            )
        finally:
            await watcher.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------------- faults
def test_cut_connections_back_off_and_come_back_live(stack: Stack, mail_user: MailUser) -> None:
    rec = Recorder()

    async def scenario() -> None:
        with FaultProxy((stack.host, stack.imap_port)) as proxy:
            watcher = rec.watcher()
            target = target_for(mail_user, proxy.host, proxy.port)
            try:
                await watcher.set_targets([target])
                await live(watcher, target.mailbox_id)
                for round_ in range(2):
                    await asyncio.to_thread(cut_all, proxy)
                    await wait_until(
                        lambda n=round_: (
                            rec.history(target.mailbox_id).count(PushState.BACKOFF) > n
                        ),
                        "backoff after the cut",
                    )
                    await live(watcher, target.mailbox_id)
                await deliver(stack, mail_user)
                await wait_until(lambda: target.mailbox_id in rec.new_mail, "new mail pushed")
            finally:
                await watcher.close()
            assert proxy.connections_accepted >= 3

    asyncio.run(scenario())


def test_a_silent_server_times_out_and_recovers(stack: Stack, mail_user: MailUser) -> None:
    rec = Recorder()

    async def scenario() -> None:
        with FaultProxy((stack.host, stack.imap_port)) as proxy:
            watcher = rec.watcher(timeout=1.5, reidle_seconds=1.0)
            target = target_for(mail_user, proxy.host, proxy.port)
            try:
                await watcher.set_targets([target])
                await live(watcher, target.mailbox_id)
                proxy.set_blackhole(True)
                await wait_until(
                    lambda: PushState.BACKOFF in rec.history(target.mailbox_id), "backoff"
                )
                proxy.set_blackhole(False)
                await live(watcher, target.mailbox_id)
                await deliver(stack, mail_user)
                await wait_until(lambda: target.mailbox_id in rec.new_mail, "new mail pushed")
            finally:
                await watcher.close()

    asyncio.run(scenario())


class Forwarder:
    """A TCP forwarder on a fixed port that can die (every connection reset) and come back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def kill(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            netproxy._abort(writer, reset=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            up_r, up_w = await asyncio.open_connection(*self.target)
            self._writers |= {writer, up_w}
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.kill()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


def test_a_server_that_dies_and_comes_back(stack: Stack, mail_user: MailUser) -> None:
    rec = Recorder()

    async def scenario() -> None:
        server = Forwarder((stack.host, stack.imap_port))
        await server.start()
        watcher = rec.watcher()
        target = target_for(mail_user, "127.0.0.1", server.port)
        try:
            await watcher.set_targets([target])
            await live(watcher, target.mailbox_id)
            await server.kill()
            await wait_until(lambda: PushState.BACKOFF in rec.history(target.mailbox_id), "down")
            await deliver(stack, mail_user)  # arrives while nobody listens
            await asyncio.sleep(1.5)  # a few refused reconnects
            await server.start()  # same port
            await live(watcher, target.mailbox_id)
            # the arrival during the outage is reported on reconnect (UIDNEXT grew)
            await wait_until(lambda: target.mailbox_id in rec.new_mail, "missed mail reported")
        finally:
            await watcher.close()
            await server.close()
        assert rec.history(target.mailbox_id).count(PushState.BACKOFF) >= 2

    asyncio.run(scenario())


# ---------------------------------------------------------------------- targets and scale
def test_removing_a_target_logs_its_connection_out(stack: Stack, mail_user: MailUser) -> None:
    rec = Recorder()
    other = stack.new_user()

    async def scenario() -> None:
        with FaultProxy((stack.host, stack.imap_port)) as gone_proxy:
            watcher = rec.watcher()
            gone = target_for(mail_user, gone_proxy.host, gone_proxy.port)
            kept = target_for(other, stack.host, stack.imap_port)
            try:
                await watcher.set_targets([gone, kept])
                await live(watcher, gone.mailbox_id, kept.mailbox_id)
                await watcher.set_targets([kept])
                assert set(watcher.states()) == {kept.mailbox_id}
                # IDLE ended with DONE, then a polite LOGOUT, and nothing after it
                assert re.search(rb"DONE\r\nP\d+ LOGOUT\r\n$", gone_proxy.captured_to_server())
                await wait_until(lambda: not gone_proxy._writers, "connection closed")
                await deliver(stack, other)
                await wait_until(lambda: kept.mailbox_id in rec.new_mail, "kept still pushed")
                assert set(rec.new_mail) == {kept.mailbox_id}
            finally:
                await watcher.close()

    asyncio.run(scenario())


def test_a_hundred_mailboxes_live_in_one_process(stack: Stack) -> None:
    users = [stack.new_user("push") for _ in range(100)]
    rec = Recorder()

    async def scenario() -> None:
        watcher = rec.watcher(timeout=30.0, max_connecting=20)
        targets = [target_for(u, stack.host, stack.imap_port) for u in users]
        try:
            await watcher.set_targets(targets)
            await wait_until(
                lambda: all(s is PushState.LIVE for s in watcher.states().values()),
                "100 targets live",
                timeout=90,
            )
            sample = random.sample(range(100), 5)
            for i in sample:
                await deliver(stack, users[i])
            wanted = {targets[i].mailbox_id for i in sample}
            await wait_until(lambda: wanted <= set(rec.new_mail), "5 arrivals pushed")
            assert set(rec.new_mail) == wanted
        finally:
            started = time.monotonic()
            await watcher.close()
            closed_in = time.monotonic() - started
        assert closed_in < 20  # bounded: LOGOUT is a courtesy
        assert all(
            rec.history(t.mailbox_id)[:2] == [PushState.CONNECTING, PushState.LIVE] for t in targets
        )

    asyncio.run(scenario())


# ---------------------------------------------------------------------- scripted servers
@dataclass
class ScriptedIdleServer:
    """Just enough IMAP to reach IDLE: greeting, CAPABILITY, STARTTLS, AUTHENTICATE, LOGIN,
    SELECT, IDLE/DONE, LOGOUT. CAPS are offered after login; STARTTLS when TLS is given."""

    caps: str = "IMAP4rev1 AUTH=PLAIN"
    tls: ssl.SSLContext | None = None
    port: int = 0
    connections: int = 0
    commands: list[tuple[bool, str]] = field(default_factory=list)
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedIdleServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        tls = False
        pre = "IMAP4rev1 STARTTLS LOGINDISABLED" if self.tls else self.caps
        writer.write(b"* OK scripted\r\n")
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
                command = rest.split(" ", 1)[0].upper()
                self.commands.append((tls, command))
                caps = self.caps if tls or not self.tls else pre
                if command == "CAPABILITY":
                    writer.write(f"* CAPABILITY {caps}\r\n{tag} OK done\r\n".encode())
                elif command == "STARTTLS" and self.tls and not tls:
                    writer.write(f"{tag} OK begin TLS\r\n".encode())
                    await writer.drain()
                    await writer.start_tls(self.tls)
                    tls = True
                elif command in ("AUTHENTICATE", "LOGIN", "SELECT"):
                    writer.write(f"* 0 EXISTS\r\n{tag} OK done\r\n".encode())
                elif command == "IDLE" and "IDLE" in self.caps:
                    writer.write(b"+ idling\r\n")
                    await writer.drain()
                    await reader.readline()
                    writer.write(f"{tag} OK idle done\r\n".encode())
                elif command == "LOGOUT":
                    writer.write(f"* BYE bye\r\n{tag} OK bye\r\n".encode())
                    break
                else:
                    writer.write(f"{tag} BAD unknown\r\n".encode())
                await writer.drain()
        writer.close()


def test_a_server_without_idle_is_unsupported_and_left_alone() -> None:
    rec = Recorder()

    async def scenario() -> None:
        async with ScriptedIdleServer() as server:
            conn = IdleConnection(f"imap://127.0.0.1:{server.port}", "anna", Secret("pw-1234"))
            with pytest.raises(PushUnavailable) as caught:
                await conn.open()
            assert isinstance(caught.value, MissingCapability) and not caught.value.transient
            assert "push is unavailable" in str(caught.value)
            assert "polls it instead" in str(caught.value)

            watcher = rec.watcher()
            target = PushTarget(
                uuid.uuid4(), f"imap://127.0.0.1:{server.port}", "anna", Secret("pw-1234")
            )
            try:
                await watcher.set_targets([target])
                await wait_until(
                    lambda: watcher.states()[target.mailbox_id] is PushState.UNSUPPORTED,
                    "unsupported",
                )
                await asyncio.sleep(1.0)  # five back-off periods: no retry
                assert server.connections == 2
            finally:
                await watcher.close()

    asyncio.run(scenario())


def test_starttls_is_used_before_the_password_is_sent(pki: test_imap_tls.Pki) -> None:
    rec = Recorder()

    async def scenario() -> None:
        async with ScriptedIdleServer(
            caps="IMAP4rev1 AUTH=PLAIN SASL-IR IDLE", tls=pki.server_context()
        ) as server:
            watcher = rec.watcher(ssl_context=pki.client_context())
            target = PushTarget(
                uuid.uuid4(), f"imap://127.0.0.1:{server.port}", "anna", Secret("pw-1234")
            )
            try:
                await watcher.set_targets([target])
                await live(watcher, target.mailbox_id)
            finally:
                await watcher.close()
        assert (False, "STARTTLS") in server.commands
        assert (True, "AUTHENTICATE") in server.commands
        assert [c for tls, c in server.commands if not tls] == ["CAPABILITY", "STARTTLS"]
        assert (True, "IDLE") in server.commands

    asyncio.run(scenario())


def test_imaps_with_a_trusted_certificate_pushes(
    stack: Stack, mail_user: MailUser, pki: test_imap_tls.Pki
) -> None:
    rec = Recorder()

    async def scenario() -> None:
        front = FaultProxy((stack.host, stack.imap_port), server_ssl=pki.server_context())
        with front:
            trusted = rec.watcher(ssl_context=pki.client_context())
            untrusted = rec.watcher(backoff_max=60.0)
            good = target_for(mail_user, front.host, front.port, scheme="imaps")
            bad = target_for(mail_user, front.host, front.port, scheme="imaps")
            try:
                await trusted.set_targets([good])
                await untrusted.set_targets([bad])
                await live(trusted, good.mailbox_id)
                await wait_until(
                    lambda: untrusted.states()[bad.mailbox_id] is PushState.FAILED, "untrusted"
                )
                await deliver(stack, mail_user)
                await wait_until(lambda: good.mailbox_id in rec.new_mail, "new mail pushed")
            finally:
                await trusted.close()
                await untrusted.close()
        assert bad.mailbox_id not in rec.new_mail

    asyncio.run(scenario())
