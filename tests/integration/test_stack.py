"""The real-server test stack (stack/up.sh) works: each server, for real, over loopback."""

from __future__ import annotations

import base64
import imaplib
import json
import re
import smtplib
import socket
import subprocess
import time
import uuid
from email import policy
from email.message import EmailMessage
from email.utils import make_msgid

import psycopg
import pytest
from imapclient import IMAPClient

from tests.stackfix import STACK_SCRIPTS, MailUser, Stack

pytestmark = pytest.mark.integration

REQUIRED_IMAP_CAPS = {b"CONDSTORE", b"QRESYNC", b"IDLE", b"UIDPLUS", b"MOVE"}
OTHER_SOURCE = ("127.0.0.2", 0)  # wrong-password tests: Dovecot penalizes the source IP


def make_message(
    to: str,
    subject: str | None = None,
    sender: str = "sender@external.test",
    body: str = "Hello from the stack tests.\n",
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject or f"stack test {uuid.uuid4().hex[:8]}"
    msg["Message-ID"] = make_msgid(domain="tests.crmsync.test")
    msg.set_content(body)
    return msg


def inbox_uids(stack: Stack, user: MailUser, message_id: str) -> list[int]:
    with stack.imap(user) as client:
        client.select_folder("INBOX", readonly=True)
        return client.search(["HEADER", "Message-ID", message_id])


class SourceIMAP(imaplib.IMAP4):
    """imaplib client bound to a chosen loopback source address."""

    def __init__(self, host: str, port: int, source: tuple[str, int]) -> None:
        self._source = source
        super().__init__(host, port, timeout=10)

    def _create_socket(self, timeout):
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=self._source
        )


# ---------------------------------------------------------------------------- stack files


def test_stack_json_and_env_describe_the_stack(stack: Stack) -> None:
    info = json.loads((stack.dir / "stack.json").read_text())
    for key in (
        "imap_host",
        "imap_port",
        "lmtp_port",
        "smtp_port",
        "radicale_url",
        "postgres_url",
        "dovecot_passwd_file",
        "radicale_htpasswd_file",
        "mail_domains",
        "pids",
        "outbox_dir",
    ):
        assert key in info, key
    assert set(info["pids"]) == {"dovecot", "smtp", "radicale", "postgres"}
    assert info["postgres_url"] == (
        f"postgresql+psycopg://postgres@127.0.0.1:{stack.postgres_port}/postgres"
    )
    assert "example.test" in stack.mail_domains
    # stack.env is shell-sourceable and agrees with stack.json
    out = subprocess.run(
        [
            "bash",
            "-c",
            '. "$1" && echo "$STACK_IMAP_PORT $STACK_POSTGRES_URL $STACK_MAIL_DOMAINS"',
            "-",
            str(stack.dir / "stack.env"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == f"{stack.imap_port} {stack.postgres_url} {' '.join(stack.mail_domains)}"
    assert stack.as_env()["STACK_SMTP_PORT"] == str(stack.smtp_port)


def test_up_is_idempotent_while_running(stack: Stack) -> None:
    before = json.loads((stack.dir / "stack.json").read_text())["pids"]
    result = subprocess.run(
        ["bash", str(STACK_SCRIPTS / "up.sh"), str(stack.dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stdout
    assert json.loads((stack.dir / "stack.json").read_text())["pids"] == before


def test_all_ports_bind_loopback_only(stack: Stack) -> None:
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A":  # LISTEN
                    addr, port = local.split(":")
                    listening.add((addr, int(port, 16)))
    loopback = "0100007F"  # 127.0.0.1, little endian
    for port in (
        stack.imap_port,
        stack.lmtp_port,
        stack.smtp_port,
        stack.radicale_port,
        stack.postgres_port,
    ):
        addrs = {addr for addr, p in listening if p == port}
        assert addrs == {loopback}, (port, addrs)


# ---------------------------------------------------------------------------- IMAP


def test_imap_login_and_capabilities(stack: Stack, mail_user: MailUser) -> None:
    with IMAPClient(stack.host, port=stack.imap_port, ssl=False, timeout=10) as client:
        client.login(mail_user.username, mail_user.password)
        caps = set(client.capabilities())
        assert caps >= REQUIRED_IMAP_CAPS, REQUIRED_IMAP_CAPS - caps
        client.enable("QRESYNC")
        info = client.select_folder("INBOX")
        assert b"HIGHESTMODSEQ" in info


def test_imap_login_with_full_address_is_the_same_user(stack: Stack, mail_user: MailUser) -> None:
    msg = make_message(mail_user.address)
    stack.deliver(msg, [mail_user.address])
    with IMAPClient(stack.host, port=stack.imap_port, ssl=False, timeout=10) as client:
        client.login(mail_user.address.upper(), mail_user.password)
        client.select_folder("INBOX", readonly=True)
        assert client.search(["HEADER", "Message-ID", msg["Message-ID"]])


def test_imap_holds_more_than_ten_connections_per_user(stack: Stack, mail_user: MailUser) -> None:
    clients = [stack.imap(mail_user) for _ in range(15)]
    try:
        for client in clients:
            client.noop()
    finally:
        for client in clients:
            client.logout()


def test_imap_wrong_password_from_other_source_does_not_slow_down_127_0_0_1(
    stack: Stack, mail_user: MailUser
) -> None:
    bad = SourceIMAP(stack.host, stack.imap_port, OTHER_SOURCE)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            bad.login(mail_user.username, "wrong-password")
    finally:
        bad.shutdown()
    t0 = time.monotonic()
    with stack.imap(mail_user) as client:
        client.noop()
    assert time.monotonic() - t0 < 2.0  # the ~4 s auth penalty hit only 127.0.0.2


def test_imap_password_change_is_seen_at_once(stack: Stack) -> None:
    # Dovecot's passwd-file driver would re-check its file at most once per second; the
    # stack's dict-file passdb sees a change on the very next login.
    user = stack.add_user(f"pw{uuid.uuid4().hex[:8]}", "aaaaaaaaaaaa")
    with stack.imap(user):
        pass
    user = stack.add_user(user.username, "bbbbbbbbbbbb")
    with stack.imap(user) as client:
        client.noop()


def test_idle_sees_a_delivery(stack: Stack, mail_user: MailUser) -> None:
    with stack.imap(mail_user) as client:
        client.select_folder("INBOX")
        client.idle()
        try:
            stack.deliver(make_message(mail_user.address), [mail_user.address])
            responses = client.idle_check(timeout=5)  # Dovecot notifies after ~0.5 s
        finally:
            client.idle_done()
        assert any(r[1] == b"EXISTS" for r in responses if len(r) > 1), responses


# ---------------------------------------------------------------------------- SMTP


def test_smtp_delivery_reaches_inbox(stack: Stack, mail_user: MailUser) -> None:
    msg = make_message(mail_user.address, subject="Delivered through SMTP and LMTP")
    refused = stack.deliver(msg, [mail_user.address])
    assert refused == {}
    with stack.imap(mail_user) as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["HEADER", "Message-ID", msg["Message-ID"]])
        assert len(uids) == 1
        fetched = client.fetch(uids, ["BODY.PEEK[]"])[uids[0]][b"BODY[]"]
    assert b"Subject: Delivered through SMTP and LMTP" in fetched
    assert b"Hello from the stack tests." in fetched


def test_smtp_delivers_each_local_recipient(stack: Stack) -> None:
    users = [stack.new_user() for _ in range(3)]
    # second domain and upper case are the same mailboxes
    rcpts = [users[0].address, f"{users[1].username}@demo.crmsync.test", users[2].address.upper()]
    msg = make_message(", ".join(rcpts))
    assert stack.deliver(msg, rcpts) == {}
    for user in users:
        assert len(inbox_uids(stack, user, msg["Message-ID"])) == 1


def test_smtp_unknown_local_user_gets_550_from_lmtp(stack: Stack, mail_user: MailUser) -> None:
    ghost = f"ghost{uuid.uuid4().hex[:8]}@{stack.domain}"
    msg = make_message(ghost)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
        stack.deliver(msg, [ghost])
    code, text = err.value.recipients[ghost]
    assert code == 550
    assert b"5.1.1" in text
    # a mixed transaction: the known user still gets it, the unknown one is reported
    refused = stack.deliver(msg, [ghost, mail_user.address])
    assert refused[ghost][0] == 550
    assert len(inbox_uids(stack, mail_user, msg["Message-ID"])) == 1


def test_smtp_auth_plain_and_login(stack: Stack, mail_user: MailUser) -> None:
    for mechanism in ("PLAIN", "LOGIN"):
        with stack.smtp() as client:
            assert mechanism in client.esmtp_features["auth"].split()
            client.user, client.password = mail_user.username, mail_user.password
            code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
            assert code == 235
            msg = make_message("someone@customer.example.com", sender=mail_user.address)
            client.sendmail(mail_user.address, ["someone@customer.example.com"], msg.as_bytes())
        out = stack.wait_outbox(lambda m, mid=msg["Message-ID"]: m.message_id == mid)
        assert out.auth_user == mail_user.username


def test_smtp_auth_wrong_password_is_refused(stack: Stack, mail_user: MailUser) -> None:
    for login, password in (
        (mail_user.username, "wrong-password"),
        (f"nobody{uuid.uuid4().hex[:6]}", "x"),
    ):
        with stack.smtp(source_address=OTHER_SOURCE) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                client.login(login, password)
            assert err.value.smtp_code == 535


def test_smtp_accepts_unauthenticated_mail(stack: Stack, mail_user: MailUser) -> None:
    msg = make_message(mail_user.address)
    with stack.smtp() as client:
        assert client.sendmail("", [mail_user.address], msg.as_bytes()) == {}  # null sender
    assert len(inbox_uids(stack, mail_user, msg["Message-ID"])) == 1


def test_external_mail_lands_in_outbox(stack: Stack, mail_user: MailUser) -> None:
    external = ["anna@customer.example.com", "hidden-bcc@partner.example.org"]
    msg = make_message("anna@customer.example.com", sender=mail_user.address)
    raw = msg.as_bytes(policy=policy.SMTP)  # CRLF, as on the wire
    assert (
        stack.deliver(
            raw, [*external, mail_user.address], mail_from=mail_user.address, user=mail_user
        )
        == {}
    )
    found = stack.outbox(message_id=msg["Message-ID"])
    assert len(found) == 1  # one outbox file per message, not per recipient
    out = found[0]
    assert out.rcpt_tos == external  # the Bcc-only recipient is in the envelope
    assert out.envelope["local_rcpt_tos"] == [mail_user.address]
    assert out.mail_from == mail_user.address
    assert out.raw == raw  # byte for byte what the client sent
    assert out.message()["Subject"] == msg["Subject"]
    # the local recipient of the same transaction got it via LMTP
    assert len(inbox_uids(stack, mail_user, msg["Message-ID"])) == 1


def test_8bit_and_utf8_addresses_pass_unchanged(stack: Stack, mail_user: MailUser) -> None:
    mid = make_msgid(domain="tests.crmsync.test")
    raw = (
        "From: Jörg Müller <jorg@customer.example.com>\r\n"
        f"To: {mail_user.address}, Jürgen <jürgen@kunde.example.de>\r\n"
        "Subject: Tervetuloa, Äiti ja Öljy\r\n"
        f"Message-ID: {mid}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Hyvää päivää - 8-bit body, no encoding.\r\n"
    ).encode()
    rcpts = [mail_user.address, "jürgen@kunde.example.de"]
    assert stack.deliver(raw, rcpts, mail_options=["BODY=8BITMIME", "SMTPUTF8"]) == {}
    out = stack.outbox(message_id=mid)[0]
    assert out.raw == raw
    assert out.rcpt_tos == ["jürgen@kunde.example.de"]
    with stack.imap(mail_user) as client:
        client.select_folder("INBOX", readonly=True)
        (uid,) = client.search(["HEADER", "Message-ID", mid])
        body = client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
    assert raw in body  # LMTP only prepends trace headers (Return-Path, Received, ...)


def test_smtp_log_has_one_line_per_message_and_no_passwords(
    stack: Stack, mail_user: MailUser
) -> None:
    msg = make_message("log-check@customer.example.com")
    stack.deliver(msg, ["log-check@customer.example.com"], user=mail_user)
    with (
        stack.smtp(source_address=OTHER_SOURCE) as client,
        pytest.raises(smtplib.SMTPAuthenticationError),
    ):
        client.login(mail_user.username, "not-" + mail_user.password)
    text = stack.smtp_log.read_text()
    lines = [line for line in text.splitlines() if msg["Message-ID"] in line]
    assert len(lines) == 1
    assert f"auth={mail_user.username}" in lines[0]
    assert "<log-check@customer.example.com>" in lines[0]
    plain = base64.b64encode(f"\0{mail_user.username}\0{mail_user.password}".encode()).decode()
    assert mail_user.password not in text
    assert plain not in text
    assert base64.b64encode(mail_user.password.encode()).decode() not in text


# ---------------------------------------------------------------------------- Radicale

CALENDAR_BODY = """<?xml version="1.0" encoding="utf-8"?>
<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:set><D:prop><D:displayname>Work</D:displayname></D:prop></D:set>
</C:mkcalendar>"""

ADDRESSBOOK_BODY = """<?xml version="1.0" encoding="utf-8"?>
<D:mkcol xmlns:D="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav">
  <D:set><D:prop>
    <D:resourcetype><D:collection/><CR:addressbook/></D:resourcetype>
    <D:displayname>Contacts</D:displayname>
  </D:prop></D:set>
</D:mkcol>"""

SYNC_REPORT = """<?xml version="1.0" encoding="utf-8"?>
<D:sync-collection xmlns:D="DAV:">
  <D:sync-token>{token}</D:sync-token>
  <D:sync-level>1</D:sync-level>
  <D:prop><D:getetag/></D:prop>
</D:sync-collection>"""

PROPFIND_PRINCIPAL = """<?xml version="1.0" encoding="utf-8"?>
<D:propfind xmlns:D="DAV:"><D:prop><D:current-user-principal/></D:prop></D:propfind>"""


def ical_event(uid: str, summary: str) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//crmsync//stack tests//EN\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T090000Z\r\n"
        "DTSTART:20260105T090000Z\r\nDTEND:20260105T100000Z\r\n"
        f"SUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def sync(stack: Stack, user: MailUser, path: str, token: str = "") -> tuple[str, dict[str, int]]:
    """sync-collection REPORT: (new token, {href: status}) with 200 = changed, 404 = deleted."""
    status, _, body = stack.dav_request(
        "REPORT",
        path,
        user,
        body=SYNC_REPORT.format(token=token),
        headers={"Depth": "1", "Content-Type": "application/xml; charset=utf-8"},
    )
    assert status == 207, body
    text = body.decode()
    new_token = re.search(r"<[^>]*sync-token>([^<]+)<", text).group(1)
    changes = {}
    for response in re.findall(r"<[^>]*response>(.*?)</[^>]*response>", text, re.S):
        href = re.search(r"<[^>]*href>([^<]+)<", response).group(1)
        code = int(re.search(r"HTTP/1\.1 (\d{3})", response).group(1))
        changes[href] = code
    return new_token, changes


def test_caldav_calendar_and_sync_collection(stack: Stack, mail_user: MailUser) -> None:
    cal = f"/{mail_user.username}/work/"
    status, _, body = stack.dav_request(
        "MKCALENDAR",
        cal,
        mail_user,
        body=CALENDAR_BODY,
        headers={"Content-Type": "application/xml"},
    )
    assert status == 201, body
    status, _, _ = stack.dav_request(
        "PUT",
        cal + "a.ics",
        mail_user,
        body=ical_event("a", "Kickoff"),
        headers={"Content-Type": "text/calendar; charset=utf-8", "If-None-Match": "*"},
    )
    assert status == 201
    token, changes = sync(stack, mail_user, cal)
    assert changes == {cal + "a.ics": 200}

    # a repeated create is refused (idempotency key for creates)
    status, _, _ = stack.dav_request(
        "PUT",
        cal + "a.ics",
        mail_user,
        body=ical_event("a", "Kickoff"),
        headers={"Content-Type": "text/calendar; charset=utf-8", "If-None-Match": "*"},
    )
    assert status == 412

    stack.dav_request(
        "PUT",
        cal + "b.ics",
        mail_user,
        body=ical_event("b", "Review"),
        headers={"Content-Type": "text/calendar"},
    )
    stack.dav_request(
        "PUT",
        cal + "a.ics",
        mail_user,
        body=ical_event("a", "Kickoff v2"),
        headers={"Content-Type": "text/calendar"},
    )
    token2, changes = sync(stack, mail_user, cal, token)
    assert changes == {cal + "a.ics": 200, cal + "b.ics": 200}

    status, _, _ = stack.dav_request("DELETE", cal + "b.ics", mail_user)
    assert status in (200, 204)
    token3, changes = sync(stack, mail_user, cal, token2)
    assert changes == {cal + "b.ics": 404}

    token4, changes = sync(stack, mail_user, cal, token3)
    assert changes == {} and token4 == token3


def test_carddav_addressbook_and_sync_collection(stack: Stack, mail_user: MailUser) -> None:
    book = f"/{mail_user.username}/contacts/"
    status, _, body = stack.dav_request(
        "MKCOL", book, mail_user, body=ADDRESSBOOK_BODY, headers={"Content-Type": "application/xml"}
    )
    assert status == 201, body
    vcard = (
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:anna-1\r\nFN:Anna Virtanen\r\n"
        "N:Virtanen;Anna;;;\r\nEMAIL:anna@customer.example.com\r\nEND:VCARD\r\n"
    )
    status, _, _ = stack.dav_request(
        "PUT",
        book + "anna-1.vcf",
        mail_user,
        body=vcard,
        headers={"Content-Type": "text/vcard; charset=utf-8"},
    )
    assert status == 201
    _, changes = sync(stack, mail_user, book)
    assert changes == {book + "anna-1.vcf": 200}
    status, _, body = stack.dav_request("GET", book + "anna-1.vcf", mail_user)
    assert status == 200 and b"Anna Virtanen" in body


def test_radicale_sees_a_user_added_while_running(stack: Stack) -> None:
    name, password = f"late{uuid.uuid4().hex[:8]}", "s3cret-late-user"
    late = MailUser(name, password, f"{name}@{stack.domain}")
    status, _, _ = stack.dav_request(
        "PROPFIND", "/", late, body=PROPFIND_PRINCIPAL, headers={"Depth": "0"}
    )
    assert status == 401
    result = subprocess.run(
        ["bash", str(STACK_SCRIPTS / "adduser.sh"), str(stack.dir), name, password],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status, _, body = stack.dav_request(
        "PROPFIND", "/", late, body=PROPFIND_PRINCIPAL, headers={"Depth": "0"}
    )
    assert status == 207
    assert f"/{name}/".encode() in body
    # the same script made the IMAP user too
    with stack.imap(late) as client:
        client.noop()
    # and a password change is picked up at once
    stack.add_user(name, "changed-password")
    status, _, _ = stack.dav_request(
        "PROPFIND", "/", late, body=PROPFIND_PRINCIPAL, headers={"Depth": "0"}
    )
    assert status == 401


def test_radicale_rights_are_owner_only(stack: Stack) -> None:
    alice, bob = stack.new_user("alice"), stack.new_user("bob")
    status, _, _ = stack.dav_request(
        "MKCALENDAR", f"/{alice.username}/private/", alice, body=CALENDAR_BODY
    )
    assert status == 201
    status, _, _ = stack.dav_request(
        "PROPFIND", f"/{alice.username}/private/", bob, headers={"Depth": "0"}
    )
    assert status == 403


# ---------------------------------------------------------------------------- PostgreSQL


def test_postgres_select_1(stack: Stack) -> None:
    with psycopg.connect(stack.postgres_dsn, connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("show fsync").fetchone() == ("off",)
        assert conn.execute("show server_encoding").fetchone() == ("UTF8",)


def test_postgres_sqlalchemy_url(stack: Stack) -> None:
    sa = pytest.importorskip("sqlalchemy")
    engine = sa.create_engine(stack.postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar() == 1
    finally:
        engine.dispose()
