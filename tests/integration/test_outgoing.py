"""Outgoing CRM email against the real SMTP relay and Dovecot: the status flow, the Sent copy,
send-as, unresolved recipients, the size limit, retries, a crash after submission, and a reply
that comes back correlated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.core.correlate import CorrelationMethod
from crmsync.crm import mailboxes
from crmsync.crm.activities import Email, EmailDirection, EmailStatus
from crmsync.crm.alerts import Alert
from crmsync.crm.base import Depth, utcnow
from crmsync.crm.mailboxes import Mailbox
from crmsync.crm.records import Account, User
from crmsync.crm.settings import set_setting
from crmsync.secrets import Secret
from crmsync.sync.outgoing import FAULT_ENV, send_mailbox
from tests.integration.test_scheduler import free_port
from tests.stackfix import Stack
from tests.syncworld import CliWorld, Person, make_mail

pytestmark = pytest.mark.integration


@pytest.fixture
def world(engine: Engine, stack: Stack, tmp_path: Path, cli_env: dict[str, str]) -> CliWorld:
    return CliWorld(engine, stack, tmp_path, cli_env)


def can_send(world: CliWorld, person: Person, port: int | None = None) -> None:
    with Session(world.engine) as s, s.begin():
        mailbox = s.get_one(Mailbox, person.mailbox_id)
        mailbox.smtp_url = f"smtp://127.0.0.1:{port or world.stack.smtp_port}"


def emails(world: CliWorld, direction: EmailDirection | None = None) -> list[Email]:
    with Session(world.engine, expire_on_commit=False) as s:
        query = sa.select(Email).order_by(Email.created_at)
        if direction is not None:
            query = query.where(Email.direction == direction)
        return list(s.scalars(query))


def send_cli(world: CliWorld, *args: str) -> subprocess.CompletedProcess:
    return world.cli("email", "send", "--json", *args)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def sent_folder_ids(world: CliWorld, person: Person) -> list[str]:
    with world.stack.imap(person.mail) as imap:
        folder = "Sent"
        imap.select_folder(folder, readonly=True)
        uids = imap.search(["ALL"])
        found = imap.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]", "FLAGS"]) if uids else {}
        out = []
        for data in found.values():
            header = data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode().split(":", 1)[1].strip()
            assert b"\\Seen" in data[b"FLAGS"]
            out.append(header)
        return out


def test_the_full_flow_sends_once_keeps_a_sent_copy_and_tracks_it_once(
    world: CliWorld, tmp_path: Path
) -> None:
    anna, bert = world.user("anna"), world.user("bert")
    can_send(world, anna)
    body = write(tmp_path, "body.txt", "Hello Bert,\nthe quote is attached.\n")
    attachment = write(tmp_path, "quote.txt", "Total: 100 EUR\n")
    res = send_cli(
        world,
        "--from", anna.address, "--to", bert.address, "--subject", "Quote",
        "--body-file", str(body), "--attach", str(attachment),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    queued = json.loads(res.stdout)
    assert queued["status"] == "pending_send" and queued["warnings"] == []
    assert queued["subject"].startswith("Quote CRM:0")  # the tracking token
    listed = json.loads(world.cli("email", "list", "--status", "pending", "--json").stdout)
    assert [e["id"] for e in listed] == [queued["id"]]

    report = send_mailbox(world.engine, anna.mailbox_id, box=world.box)
    assert (report.sent, report.failed, report.errors) == (1, 0, [])
    [email] = emails(world)
    assert email.email_status is EmailStatus.SENT and email.delivery_attempts == 1
    assert email.sent_at is not None and email.sent_copy_at is not None
    # Bert got it, with the attachment; Anna's Sent folder has the copy, \Seen.
    with world.stack.imap(bert.mail) as imap:
        imap.select_folder("INBOX", readonly=True)
        [uid] = imap.search(["HEADER", "Message-ID", email.message_id.strip("<>")])
        raw = imap.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
    assert b"quote.txt" in raw and queued["subject"].encode() in raw
    assert sent_folder_ids(world, anna) == [f"<{email.message_id}>"]
    # Nothing more to send: a second run sends nothing, and Bert gets one copy only.
    assert send_mailbox(world.engine, anna.mailbox_id, box=world.box).sent == 0
    # The incoming sync of Anna's Sent folder recognises it: still one outgoing activity.
    with Session(world.engine) as s, s.begin():
        set_setting(s, "track_sent_items", "true")
    world.sync(anna)
    assert len(emails(world, EmailDirection.OUTGOING)) == 1
    world.assert_no_password_shown()


def test_send_as_another_user_needs_the_privilege_and_their_consent(world: CliWorld) -> None:
    anna, bert = world.user("anna"), world.user("bert")
    can_send(world, anna)
    args = ["--from", anna.address, "--to", bert.address, "--subject", "On her behalf"]
    refused = send_cli(world, *args, "--as", bert.mail.username)
    assert refused.returncode == 1
    assert "send_as_user" in refused.stderr and "allow" in refused.stderr
    world.grant(bert, "send_as_user", Depth.ORGANIZATION)
    still = send_cli(world, *args, "--as", bert.mail.username)
    assert still.returncode == 1 and "has not allowed others" in still.stderr
    with Session(world.engine) as s, s.begin():
        s.get_one(User, anna.user_id).allow_send_on_behalf = True
    allowed = send_cli(world, *args, "--as", bert.mail.username)
    assert allowed.returncode == 0, allowed.stderr
    assert len(emails(world)) == 1


def test_unresolved_recipients_and_the_attachment_limit(world: CliWorld, tmp_path: Path) -> None:
    anna = world.user("anna")
    can_send(world, anna)
    outside = ["--from", anna.address, "--to", "stranger@elsewhere.test", "--subject", "Hi"]
    refused = send_cli(world, *outside)
    assert refused.returncode == 1
    assert "not the address of any CRM record" in refused.stderr
    assert "allow_unresolved_recipients" in refused.stderr
    assert emails(world) == []  # nothing half-made
    assert world.cli("settings", "set", "allow_unresolved_recipients", "true").returncode == 0
    assert send_cli(world, *outside).returncode == 0
    report = send_mailbox(world.engine, anna.mailbox_id, box=world.box)
    assert report.sent == 1
    [out] = world.stack.outbox(message_id=f"<{emails(world)[0].message_id}>")
    assert out.rcpt_tos == ["stranger@elsewhere.test"]
    # A record without an address cannot receive.
    with Session(world.engine) as s, s.begin():
        acme = Account(name="Acme", business_unit_id=world.unit_id)
        s.add(acme)
        s.flush()
        acme_id = str(acme.id)
    no_address = send_cli(world, "--from", anna.address, "--to", acme_id, "--subject", "x")
    assert no_address.returncode == 1 and "Acme has no primary email address" in no_address.stderr
    # Attachments over the organization's limit are refused, naming the setting.
    assert world.cli("settings", "set", "max_attachment_kb", "1").returncode == 0
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2048)
    too_big = send_cli(world, *outside, "--attach", str(big))
    assert too_big.returncode == 1 and "max_attachment_kb" in too_big.stderr


def test_a_server_that_is_down_is_retried_and_the_email_sent_once(world: CliWorld) -> None:
    anna, bert = world.user("anna"), world.user("bert")
    can_send(world, anna, port=free_port())  # nothing listens there
    queued = send_cli(world, "--from", anna.address, "--to", bert.address, "--subject", "Retry")
    assert queued.returncode == 0, queued.stderr
    first = send_mailbox(world.engine, anna.mailbox_id, box=world.box, timeout=5)
    assert (first.sent, first.retrying) == (0, 1)
    [email] = emails(world)
    assert email.email_status is EmailStatus.PENDING_SEND and email.delivery_attempts == 1
    assert email.next_attempt_at is not None and email.next_attempt_at > utcnow()
    assert "retrying" in (email.failure_reason or "")
    # Not due yet: a run now sends nothing.
    assert send_mailbox(world.engine, anna.mailbox_id, box=world.box).sent == 0
    can_send(world, anna)  # the server is back
    with Session(world.engine) as s, s.begin():
        s.get_one(Email, email.id).next_attempt_at = utcnow() - timedelta(seconds=1)
    assert send_mailbox(world.engine, anna.mailbox_id, box=world.box).sent == 1
    [done] = emails(world)
    assert done.email_status is EmailStatus.SENT and done.delivery_attempts == 2
    with world.stack.imap(bert.mail) as imap:
        imap.select_folder("INBOX", readonly=True)
        assert len(imap.search(["HEADER", "Message-ID", done.message_id.strip("<>")])) == 1


def test_a_rejected_recipient_fails_the_email_with_the_reply_and_alerts(world: CliWorld) -> None:
    anna = world.user("anna")
    can_send(world, anna)
    with Session(world.engine) as s, s.begin():
        set_setting(s, "allow_unresolved_recipients", "true")
    ghost = f"nobody-{os.getpid()}@{world.stack.domain}"
    queued = send_cli(world, "--from", anna.address, "--to", ghost, "--subject", "Ghost")
    assert queued.returncode == 0, queued.stderr
    report = send_mailbox(world.engine, anna.mailbox_id, box=world.box)
    assert report.failed == 1 and report.sent == 0
    [email] = emails(world)
    assert email.email_status is EmailStatus.FAILED and "550" in (email.failure_reason or "")
    with Session(world.engine) as s:
        [alert] = s.scalars(sa.select(Alert)).all()
        assert alert.code == "email.failed" and alert.recipient_id == anna.user_id


def crash_sending(world: CliWorld, person: Person, step: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_SENDER, str(person.mailbox_id)],
        env=world.env | {FAULT_ENV: step},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr  # SIGKILLed at STEP


def assert_delivered_once(world: CliWorld, to: Person, sent: list[Email]) -> None:
    with world.stack.imap(to.mail) as imap:
        imap.select_folder("INBOX", readonly=True)
        for email in sent:
            assert len(imap.search(["HEADER", "Message-ID", email.message_id.strip("<>")])) == 1


@pytest.mark.parametrize("step", ["after_record", "after_sent_copy"])
def test_a_crash_after_submission_does_not_send_twice_and_the_copy_is_kept(
    world: CliWorld, step: str
) -> None:
    anna, bert = world.user("anna"), world.user("bert")
    can_send(world, anna)
    queued = send_cli(world, "--from", anna.address, "--to", bert.address, "--subject", "Once")
    assert queued.returncode == 0, queued.stderr
    crash_sending(world, anna, step)
    [recorded] = emails(world)
    assert recorded.email_status is EmailStatus.SENT and recorded.sent_copy_at is None
    copies = sent_folder_ids(world, anna)
    assert copies == ([] if step == "after_record" else [f"<{recorded.message_id}>"])
    report = send_mailbox(world.engine, anna.mailbox_id, box=world.box)
    assert (report.recovered, report.sent, report.copies_restored) == (0, 0, 1)
    [email] = emails(world)
    assert email.email_status is EmailStatus.SENT and email.delivery_attempts == 1
    assert email.sent_copy_at is not None
    assert sent_folder_ids(world, anna) == [f"<{email.message_id}>"]  # one copy, either way
    assert_delivered_once(world, bert, [email])


def test_a_crash_mid_batch_sends_each_email_exactly_once(world: CliWorld) -> None:
    """The batch is claimed together; the crash comes right after the first one is recorded:
    the two never submitted are sent by the next run, the first one only gets its copy."""
    anna, bert = world.user("anna"), world.user("bert")
    can_send(world, anna)
    for n in range(3):
        queued = send_cli(world, "--from", anna.address, "--to", bert.address, "--subject", f"B{n}")
        assert queued.returncode == 0, queued.stderr
    crash_sending(world, anna, "after_record")
    statuses = sorted(e.email_status for e in emails(world))
    assert statuses == sorted([EmailStatus.SENT, EmailStatus.SENDING, EmailStatus.SENDING])
    report = send_mailbox(world.engine, anna.mailbox_id, box=world.box)
    assert (report.recovered, report.sent, report.copies_restored) == (0, 2, 1)
    done = emails(world)
    assert {e.email_status for e in done} == {EmailStatus.SENT}
    assert all(e.sent_copy_at is not None for e in done)
    assert_delivered_once(world, bert, done)
    assert sorted(sent_folder_ids(world, anna)) == sorted(f"<{e.message_id}>" for e in done)


def test_a_stuck_email_found_in_sent_is_recorded_without_sending_again(world: CliWorld) -> None:
    """An email left ``sending`` whose copy is in Sent was sent (a run that copied before
    recording): it is recorded as sent, not sent again."""
    anna, bert = world.user("anna"), world.user("bert")
    can_send(world, anna)
    queued = send_cli(world, "--from", anna.address, "--to", bert.address, "--subject", "Stuck")
    assert queued.returncode == 0, queued.stderr
    [email] = emails(world)
    with Session(world.engine) as s, s.begin():
        s.get_one(Email, email.id).email_status = EmailStatus.SENDING
    copy = make_mail(
        sender=anna.address, to=bert.address, subject="Stuck", message_id=f"<{email.message_id}>"
    )
    with world.stack.imap(anna.mail) as imap:
        if not imap.folder_exists("Sent"):
            imap.create_folder("Sent")
        imap.append("Sent", copy.as_bytes(), flags=[b"\\Seen"])
    report = send_mailbox(world.engine, anna.mailbox_id, box=world.box)
    assert (report.recovered, report.sent) == (1, 0)
    [done] = emails(world)
    assert done.email_status is EmailStatus.SENT and done.sent_copy_at is not None
    with world.stack.imap(bert.mail) as imap:
        imap.select_folder("INBOX", readonly=True)
        assert imap.search(["HEADER", "Message-ID", email.message_id.strip("<>")]) == []


def test_a_refused_login_stops_the_run_and_every_email_waits(world: CliWorld) -> None:
    anna, bert = world.user("anna"), world.user("bert")
    can_send(world, anna)
    for n in range(3):
        queued = send_cli(world, "--from", anna.address, "--to", bert.address, "--subject", f"W{n}")
        assert queued.returncode == 0, queued.stderr
    with Session(world.engine) as s, s.begin():
        mailbox = s.get_one(Mailbox, anna.mailbox_id)
        mailbox.credential = world.box.encrypt(
            Secret("not-the-password-8x"), bound_to=f"mailbox:{mailbox.id}"
        )
    report = send_mailbox(world.engine, anna.mailbox_id, box=world.box, timeout=10)
    assert report.sent == 0 and report.retrying == 3
    assert report.stopped is not None and "refused" in report.stopped
    waiting = emails(world)
    assert {e.email_status for e in waiting} == {EmailStatus.PENDING_SEND}
    # only the email that met the refusal counts an attempt; the rest were never tried
    assert sorted(e.delivery_attempts for e in waiting) == [0, 0, 1]
    assert all(e.next_attempt_at is not None and e.next_attempt_at > utcnow() for e in waiting)
    with Session(world.engine) as s:
        assert s.get_one(Mailbox, anna.mailbox_id).outgoing_status is mailboxes.TestStatus.FAILURE
        [alert] = s.scalars(sa.select(Alert)).all()
        assert alert.code == "mailbox.outgoing_failed" and alert.recipient_id == anna.user_id
        assert "crmsync mailbox test" in alert.message and "not-the-password" not in alert.message


CRASHING_SENDER = """
import sys, uuid
from crmsync.cli.context import Context
from crmsync.sync.outgoing import send_mailbox
ctx = Context()
send_mailbox(ctx.engine(), uuid.UUID(sys.argv[1]), box=ctx.secret_box)
"""


def test_a_reply_comes_back_correlated_and_regarding_the_same_record(world: CliWorld) -> None:
    anna = world.user("anna")
    can_send(world, anna)
    carl = world.contact("Carl Customer", "carl@customer.test")
    with Session(world.engine) as s, s.begin():
        acme = Account(name="Acme", business_unit_id=world.unit_id)
        s.add(acme)
        s.flush()
        acme_id = acme.id
    res = send_cli(
        world, "--from", anna.address, "--to", "carl@customer.test", "--subject", "Offer",
        "--regarding", str(acme_id),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert send_mailbox(world.engine, anna.mailbox_id, box=world.box).sent == 1
    [sent] = emails(world)
    [out] = world.stack.outbox(message_id=f"<{sent.message_id}>")
    assert out.rcpt_tos == ["carl@customer.test"]
    # Carl answers; his client keeps In-Reply-To and the subject with the token.
    reply = make_mail(
        sender="carl@customer.test",
        to=anna.address,
        subject=f"Re: {sent.subject}",
        in_reply_to=sent.message_id,
        references=sent.message_id,
    )
    world.append(anna, reply)
    world.sync(anna)
    incoming = emails(world, EmailDirection.INCOMING)
    assert len(incoming) == 1
    assert incoming[0].correlation_method is CorrelationMethod.IN_REPLY_TO
    assert incoming[0].regarding_id == acme_id
    assert incoming[0].correlated_activity_id == sent.id
    assert carl is not None


def test_one_refused_email_does_not_stop_the_next(world: CliWorld) -> None:
    anna, bert = world.user("anna"), world.user("bert")
    can_send(world, anna)
    with Session(world.engine) as s, s.begin():
        set_setting(s, "allow_unresolved_recipients", "true")
    ghost = f"nobody-{os.getpid()}@{world.stack.domain}"
    for to, subject in ((ghost, "First"), (bert.address, "Second")):
        queued = send_cli(world, "--from", anna.address, "--to", to, "--subject", subject)
        assert queued.returncode == 0, queued.stderr
    report = send_mailbox(world.engine, anna.mailbox_id, box=world.box)
    assert (report.failed, report.sent) == (1, 1)
    statuses = {e.subject.split()[0]: e.email_status for e in emails(world)}
    assert statuses == {"First": EmailStatus.FAILED, "Second": EmailStatus.SENT}


def test_a_reply_without_in_reply_to_is_correlated_by_the_token(world: CliWorld) -> None:
    anna = world.user("anna")
    can_send(world, anna)
    world.contact("Carl Customer", "carl@customer.test")
    res = send_cli(world, "--from", anna.address, "--to", "carl@customer.test", "--subject", "Q")
    assert res.returncode == 0, res.stderr
    assert send_mailbox(world.engine, anna.mailbox_id, box=world.box).sent == 1
    [sent] = emails(world)
    assert sent.tracking_token and sent.tracking_token in sent.subject
    # A mail system that drops In-Reply-To and References, but keeps the subject.
    world.append(
        anna,
        make_mail(sender="carl@customer.test", to=anna.address, subject=f"RE: {sent.subject}"),
    )
    world.sync(anna)
    [reply] = emails(world, EmailDirection.INCOMING)
    assert reply.correlation_method is CorrelationMethod.TRACKING_TOKEN
    assert reply.correlated_activity_id == sent.id
