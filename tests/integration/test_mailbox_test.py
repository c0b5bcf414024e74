"""Test & Enable through the real command line (`crmsync mailbox test`), against the stack's
Dovecot (incoming), SMTP relay (outgoing) and Radicale (ACT), with PostgreSQL. Nothing is
mocked; a wrong password reaches Dovecot from a random 127.x.y.z (docs/test-stack.md, pitfall 2)
so its per-IP penalty delays nobody else's logins."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.crm.audit import AuditEvent
from crmsync.crm.base import Depth
from crmsync.crm.mailboxes import ApprovalStatus, Mailbox, MailboxState
from crmsync.crm.mailboxes import TestStatus as Status
from crmsync.dav import DavInsecureTransportRefused, probe_collection
from crmsync.mail.smtp import SmtpInsecureTransportRefused, check_smtp
from crmsync.secrets import Secret
from tests.forwarder import SourceForwarder
from tests.stackfix import Stack
from tests.syncworld import CliWorld, Person

pytestmark = pytest.mark.integration

WRONG_PASSWORD = "Not-the-password-7Qx2"


class ProbeWorld(CliWorld):
    """A CliWorld whose mailboxes start disabled, pointing at all three channels."""

    def person(
        self,
        name: str,
        *,
        approved: bool = True,
        imap: bool = True,
        smtp: str | None = "stack",
        dav: str | None = "own",
    ) -> Person:
        """A CRM user whose disabled mailbox points at the stack (all three channels)."""
        person = self.user(name, approved=approved)
        stack = self.stack
        with Session(self.engine) as s, s.begin():
            mailbox = s.get_one(Mailbox, person.mailbox_id)
            mailbox.state = MailboxState.DISABLED
            mailbox.enabled_at = None
            mailbox.imap_url = f"imap://{stack.host}:{stack.imap_port}" if imap else None
            mailbox.smtp_url = f"smtp://{stack.host}:{stack.smtp_port}" if smtp == "stack" else smtp
            dav_url = f"{stack.radicale_url}{person.mail.username}/" if dav == "own" else dav
            mailbox.caldav_url = mailbox.carddav_url = dav_url
        return person

    def set_password(self, person: Person, password: str) -> None:
        with Session(self.engine) as s, s.begin():
            mailbox = s.get_one(Mailbox, person.mailbox_id)
            mailbox.credential = self.box.encrypt(
                Secret(password), bound_to=f"mailbox:{mailbox.id}"
            )

    def configure(self, person: Person, **fields: object) -> None:
        with Session(self.engine) as s, s.begin():
            mailbox = s.get_one(Mailbox, person.mailbox_id)
            for name, value in fields.items():
                setattr(mailbox, name, value)

    @contextlib.contextmanager
    def from_fresh_source(self, person: Person) -> Iterator[None]:
        """The person's IMAP reached through a forwarder from a new random 127.x.y.z."""
        forwarder = SourceForwarder((self.stack.host, self.stack.imap_port))
        try:
            self.configure(person, imap_url=f"imap://127.0.0.1:{forwarder.port}")
            yield
        finally:
            forwarder.close()

    def test_report(self, person: Person, *extra: str) -> tuple[int, dict]:
        res = self.cli("mailbox", "test", person.address, "--json", *extra)
        return res.returncode, json.loads(res.stdout)

    def mailbox(self, person: Person) -> Mailbox:
        with Session(self.engine, expire_on_commit=False) as s:
            return s.get_one(Mailbox, person.mailbox_id)

    def events(self, action: str) -> list[AuditEvent]:
        with Session(self.engine) as s:
            return list(
                s.scalars(
                    sa.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
                )
            )

    def assert_no_password_shown(self) -> None:  # type: ignore[override]
        with Session(self.engine) as s:
            stored = [json.dumps(e.details) for e in s.scalars(sa.select(AuditEvent))] + [
                m.last_error_message or "" for m in s.scalars(sa.select(Mailbox))
            ]
        super().assert_no_password_shown(WRONG_PASSWORD, stored=stored)


@pytest.fixture
def world(engine: Engine, stack: Stack, tmp_path: Path, cli_env: dict[str, str]) -> ProbeWorld:
    return ProbeWorld(engine, stack, tmp_path, cli_env)


def channels(report: dict) -> dict[str, dict]:
    return {c["channel"]: c for c in report["channels"]}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------- tests
def test_all_channels_pass_then_enable(world: ProbeWorld, stack: Stack) -> None:
    anna = world.person("anna")

    plain = world.cli("mailbox", "test", anna.address)
    assert plain.returncode == 0, plain.stderr
    for word in ("incoming", "outgoing", "act", "success", "INBOX", "PROPFIND", "no mail sent"):
        assert word in plain.stdout, word
    assert f"crmsync mailbox test {anna.address} --enable" in plain.stderr
    box = world.mailbox(anna)
    assert (box.incoming_status, box.outgoing_status, box.act_status) == (Status.SUCCESS,) * 3
    assert box.tested_at is not None and box.last_error_code is None
    assert box.state is MailboxState.DISABLED  # testing alone enables nothing

    code, report = world.test_report(anna, "--enable")
    assert code == 0, report
    assert report["all_succeeded"] is True and report["failed_channels"] == []
    assert {c: r["result"] for c, r in channels(report).items()} == {
        "incoming": "success",
        "outgoing": "success",
        "act": "success",
    }
    assert channels(report)["outgoing"]["checked"].count("AUTH as") == 1
    assert report["enable"]["enabled"] is True and report["enable"]["changed"] is True
    box = world.mailbox(anna)
    assert box.state is MailboxState.ENABLED and box.enabled_at is not None

    [first, second] = world.events("mailbox.tested")
    assert second.details["results"]["act"] == {
        "result": "success",
        "error_code": None,
        "error": None,
        "transient": None,
    }
    assert first.actor_name.startswith("cli:")
    assert len(world.events("mailbox.enabled")) == 1
    # the outgoing check never sends mail
    relay_log = stack.smtp_log.read_text()
    assert f"auth={anna.mail.username} " not in relay_log
    world.assert_no_password_shown()


def test_wrong_password_fails_every_channel_and_enable_is_refused(
    world: ProbeWorld, stack: Stack
) -> None:
    bert = world.person("bert")
    world.set_password(bert, WRONG_PASSWORD)
    with world.from_fresh_source(bert):
        code, report = world.test_report(bert, "--enable")
    with world.from_fresh_source(bert):
        table = world.cli("mailbox", "test", bert.address)

    assert code == 1
    results = channels(report)
    assert results["incoming"]["result"] == "failure"
    assert results["incoming"]["error_code"] == "AuthenticationFailed"
    assert results["incoming"]["transient"] is False
    assert "refused the login" in results["incoming"]["error"]
    assert results["outgoing"]["error_code"] == "SmtpAuthenticationFailed"
    assert results["act"]["error_code"] == "DavAuthenticationFailed"
    assert report["enable"]["enabled"] is False
    refused = world.outputs[0].stderr
    assert "not enabled" in refused and "the incoming, outgoing and act tests failed" in refused

    assert table.returncode == 1
    assert "AuthenticationFailed (permanent" in table.stdout
    assert "crmsync mailbox add --update" in table.stdout

    box = world.mailbox(bert)
    assert box.state is MailboxState.DISABLED
    assert (box.incoming_status, box.outgoing_status, box.act_status) == (Status.FAILURE,) * 3
    assert box.last_error_code == "AuthenticationFailed"
    assert box.last_error_message.startswith("incoming test: ")
    assert box.last_error_count == 2  # two runs, same error
    assert world.events("mailbox.enabled") == []
    details = world.events("mailbox.tested")[0].details["results"]
    assert details["incoming"]["error_code"] == "AuthenticationFailed"
    world.assert_no_password_shown()


def test_smtp_refused_is_a_transient_outgoing_failure(world: ProbeWorld) -> None:
    cleo = world.person("cleo", smtp=f"smtp://127.0.0.1:{closed_port()}", dav=None)

    code, report = world.test_report(cleo, "--enable")
    assert code == 1
    results = channels(report)
    assert results["incoming"]["result"] == "success"
    assert results["outgoing"]["result"] == "failure"
    assert results["outgoing"]["error_code"] == "SmtpUnavailable"
    assert results["outgoing"]["transient"] is True
    assert "refused the connection" in results["outgoing"]["error"]
    assert results["act"]["result"] == "not configured"
    assert report["failed_channels"] == ["outgoing"]
    assert "the outgoing test failed" in world.outputs[-1].stderr

    box = world.mailbox(cleo)
    assert box.incoming_status is Status.SUCCESS
    assert box.outgoing_status is Status.FAILURE
    assert box.act_status is Status.NOT_RUN
    assert box.last_error_code == "SmtpUnavailable"
    assert box.state is MailboxState.DISABLED


def test_dav_refusal_fails_act_only(world: ProbeWorld, stack: Stack) -> None:
    other = stack.new_user("other")
    dora = world.person("dora", dav=f"{stack.radicale_url}{other.username}/")

    code, report = world.test_report(dora)
    assert code == 1
    results = channels(report)
    assert results["incoming"]["result"] == results["outgoing"]["result"] == "success"
    assert results["act"]["error_code"] == "DavAuthenticationFailed"
    assert results["act"]["transient"] is False
    box = world.mailbox(dora)
    assert box.act_status is Status.FAILURE and box.last_error_code == "DavAuthenticationFailed"

    # fixed: the next test succeeds and clears the recorded error
    world.configure(dora, caldav_url=f"{stack.radicale_url}{dora.mail.username}/", carddav_url=None)
    code, report = world.test_report(dora, "--enable")
    assert code == 0, report
    box = world.mailbox(dora)
    assert box.act_status is Status.SUCCESS and box.last_error_code is None
    assert box.state is MailboxState.ENABLED


def test_unconfigured_channels_are_reported_and_left_not_run(world: ProbeWorld) -> None:
    emil = world.person("emil", smtp=None, dav=None)

    res = world.cli("mailbox", "test", emil.address, "--enable")
    assert res.returncode == 0, res.stderr
    assert "not configured" in res.stdout
    assert "no outgoing (SMTP) server configured" in res.stdout
    assert "enabled; processing email received after" in res.stderr
    box = world.mailbox(emil)
    assert box.incoming_status is Status.SUCCESS
    assert (box.outgoing_status, box.act_status) == (Status.NOT_RUN,) * 2
    assert box.state is MailboxState.ENABLED
    results = world.events("mailbox.tested")[0].details["results"]
    assert results["outgoing"]["result"] == results["act"]["result"] == "not configured"


def test_as_is_gated_and_approval_still_applies(world: ProbeWorld) -> None:
    fred = world.person("fred", approved=False)
    outsider = world.person("gina")

    denied = world.cli("mailbox", "test", fred.address, "--as", outsider.mail.username)
    assert denied.returncode == 1 and "approve_mailbox" in denied.stderr
    assert world.mailbox(fred).tested_at is None  # refused before anything was tested

    world.grant(outsider, "approve_mailbox", Depth.ORGANIZATION)

    # every channel passes, but the organization processes only approved mailboxes
    res = world.cli("mailbox", "test", fred.address, "--enable", "--as", outsider.mail.username)
    assert res.returncode == 1
    assert "not approved" in res.stderr and f"crmsync mailbox approve {fred.address}" in res.stderr
    box = world.mailbox(fred)
    assert box.state is MailboxState.DISABLED
    assert box.approval_status is ApprovalStatus.PENDING
    assert (box.incoming_status, box.outgoing_status, box.act_status) == (Status.SUCCESS,) * 3
    [event] = world.events("mailbox.tested")
    assert event.actor_id == outsider.user_id
    world.assert_no_password_shown()


# ---------------------------------------------------------------------- clear-text policy
def non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_no_password_in_clear_text_to_a_non_loopback_address() -> None:
    """Plain SMTP without STARTTLS and plain HTTP are refused before any credential is sent
    when the peer is not loopback (a listener on this machine's own LAN address)."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine")
    received: list[bytes] = []
    server = socket.create_server((address, 0))
    port = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.sendall(b"220 plain.test ESMTP\r\n")
                    while data := conn.recv(4096):
                        received.append(data)
                        if data.upper().startswith(b"EHLO"):
                            conn.sendall(b"250-plain.test\r\n250 AUTH PLAIN LOGIN\r\n")
                        elif data.upper().startswith(b"QUIT"):
                            conn.sendall(b"221 bye\r\n")
                            break
                        else:
                            conn.sendall(b"250 ok\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        with pytest.raises(SmtpInsecureTransportRefused, match="does not offer STARTTLS"):
            check_smtp(f"smtp://{address}:{port}", "anna", Secret(WRONG_PASSWORD), timeout=5)
        assert not any(b"AUTH" in chunk.upper() for chunk in received)

        received.clear()
        with pytest.raises(DavInsecureTransportRefused, match="plain HTTP"):
            probe_collection(f"http://{address}:{port}/anna/", "anna", Secret(WRONG_PASSWORD))
        assert not any(b"PROPFIND" in chunk or b"Authorization" in chunk for chunk in received)
    finally:
        server.close()
