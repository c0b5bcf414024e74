"""The incoming sync end to end against Dovecot and PostgreSQL: what is tracked, once, and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.core.correlate import CorrelationMethod
from crmsync.crm.activities import ActivityParty, Attachment, Email
from crmsync.crm.base import IncomingEmailFilter, Resolution
from crmsync.crm.decisions import Outcome
from crmsync.crm.mailboxes import Mailbox, MailboxFolder
from crmsync.crm.tracking import TrackedMessage
from tests.stackfix import Stack
from tests.syncworld import SyncWorld, make_mail

pytestmark = pytest.mark.integration


@pytest.fixture
def world(engine: Engine, stack: Stack, tmp_path: Path) -> SyncWorld:
    return SyncWorld(engine, stack, tmp_path)


def test_mail_from_a_contact_becomes_one_activity_with_parties_and_attachment(
    world: SyncWorld,
) -> None:
    anna = world.user("anna", incoming=IncomingEmailFilter.LEADS_CONTACTS_ACCOUNTS)
    carl = world.contact("Carl Customer", "carl@customer.test")
    world.append(
        anna,
        make_mail(
            sender="Carl Customer <carl@customer.test>",
            to=anna.address,
            subject="Quote for 20 chairs",
            body="Could you send a quote?",
            html="<p>Could you send a quote?</p>",
            attachment=("specs.pdf", b"%PDF-1.4 chairs"),
        ),
    )
    world.append(anna, make_mail(sender="stranger@elsewhere.test", to=anna.address))

    report = world.sync(anna)

    assert report.ok, report.error
    assert (report.tracked, report.seen) == (1, 2)
    assert report.skipped == {"sender_not_in_crm": 1}
    [email] = world.emails()
    assert email.subject == "Quote for 20 chairs"
    assert "send a quote" in (email.description or "")
    assert "<p>" in (email.body_html or "")
    assert email.owner_id == anna.user_id
    with Session(world.engine) as s:
        parties = s.scalars(
            sa.select(ActivityParty).where(ActivityParty.activity_id == email.id)
        ).all()
        sender = next(p for p in parties if p.role.value == "from")
        assert sender.party_id == carl and sender.resolution is Resolution.RESOLVED
        [attachment] = s.scalars(sa.select(Attachment)).all()
        assert attachment.filename == "specs.pdf"
        assert s.scalar(sa.select(sa.func.count()).select_from(TrackedMessage)) == 1
        folder = s.scalars(sa.select(MailboxFolder)).one()
        assert folder.uidvalidity and folder.uidnext == 3
    decisions = world.decisions(anna)
    assert [d.outcome for d in decisions] == [Outcome.TRACKED, Outcome.NOT_TRACKED]
    assert decisions[0].email_id == email.id and decisions[0].marked

    # the tracked copy carries the keyword; the other does not
    with world.stack.imap(anna.mail) as client:
        client.select_folder("INBOX", readonly=True)
        flags = client.get_flags([1, 2])
    assert b"$CRMTracked" in flags[1] and b"$CRMTracked" not in flags[2]

    # a second run finds nothing new and changes nothing
    again = world.sync(anna)
    assert again.ok and again.seen == 0
    assert len(world.emails()) == 1


def test_the_same_message_in_three_mailboxes_is_one_activity(world: SyncWorld) -> None:
    people = [world.user(n) for n in ("amy", "bob", "cid")]
    message = make_mail(
        sender="carl@customer.test",
        to=[p.address for p in people],
        subject="To all three of you",
        message_id="<three-copies@customer.test>",
    )
    for person in people:
        world.append(person, message)

    reports = [world.sync(p) for p in people]

    assert [(r.tracked, r.linked) for r in reports] == [(1, 0), (0, 1), (0, 1)]
    [email] = world.emails()
    with Session(world.engine) as s:
        linked = set(
            s.scalars(
                sa.select(TrackedMessage.mailbox_id).where(TrackedMessage.email_id == email.id)
            )
        )
    assert linked == {p.mailbox_id for p in people}
    assert all(d.email_id == email.id for p in people for d in world.decisions(p))


def test_a_reply_correlates_and_inherits_the_regarding_record(world: SyncWorld) -> None:
    anna = world.user("anna", incoming=IncomingEmailFilter.RESPONSES)
    bert = world.user("bert", incoming=IncomingEmailFilter.ALL)
    account = world.contact("Acme Buyer", "buyer@acme.test")
    world.append(
        bert,
        make_mail(
            sender="buyer@acme.test",
            to=bert.address,
            subject="Order 7",
            message_id="<order-7@acme.test>",
        ),
    )
    assert world.sync(bert).tracked == 1
    with Session(world.engine) as s, s.begin():
        first = s.scalars(sa.select(Email)).one()
        first.regarding_id = account

    # anna tracks only replies; this one answers the tracked email
    world.append(
        anna,
        make_mail(
            sender="buyer@acme.test",
            to=anna.address,
            subject="Re: Order 7",
            in_reply_to="<order-7@acme.test>",
            references="<order-7@acme.test>",
        ),
    )
    world.append(anna, make_mail(sender="buyer@acme.test", to=anna.address, subject="New topic"))
    report = world.sync(anna)

    assert report.tracked == 1 and report.skipped == {"not_a_reply": 1}
    reply = next(e for e in world.emails() if e.subject == "Re: Order 7")
    assert reply.correlation_method is CorrelationMethod.IN_REPLY_TO
    assert reply.regarding_id == account
    assert reply.parent_activity_id is not None


def test_first_sync_takes_only_mail_received_after_the_bound(world: SyncWorld) -> None:
    start = datetime.now(UTC) - timedelta(hours=1)
    anna = world.user("anna", received_after=start)
    world.append(
        anna,
        make_mail(sender="a@x.test", to="anna@x", subject="old"),
        when=start - timedelta(days=30),
    )
    world.append(
        anna,
        make_mail(sender="a@x.test", to="anna@x", subject="same day, earlier"),
        when=start - timedelta(minutes=30),
    )
    world.append(anna, make_mail(sender="a@x.test", to="anna@x", subject="new"))

    report = world.sync(anna)

    assert [e.subject for e in world.emails()] == ["new"]
    # the month-old message was never even looked at; the one of the same day was, and why
    assert report.seen == 2
    assert report.skipped == {"received_before_start": 1}


def test_a_broken_server_password_is_recorded_on_the_mailbox(world: SyncWorld) -> None:
    anna = world.user("anna")
    with Session(world.engine) as s, s.begin():
        mailbox = s.get(Mailbox, anna.mailbox_id)
        from crmsync.secrets import Secret

        mailbox.credential = world.box.encrypt(
            Secret("wrong password"), bound_to=f"mailbox:{mailbox.id}"
        )
    report = world.sync(anna)
    assert not report.ok and report.error_code == "AuthenticationFailed"
    assert report.transient is False
    with Session(world.engine) as s:
        mailbox = s.get(Mailbox, anna.mailbox_id)
        assert mailbox.last_error_code == "AuthenticationFailed"
        assert mailbox.last_error_count == 1
        assert "wrong password" not in (mailbox.last_error_message or "")


def test_huge_messages_are_quarantined_and_big_ones_fetched_a_few_at_a_time(
    world: SyncWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crmsync.sync.batch as batch

    # the limits are 150 MB and 32 MB; scaled down so a test can cross them
    monkeypatch.setattr(batch, "MAX_MESSAGE_BYTES", 60_000)
    monkeypatch.setattr(batch, "FETCH_GROUP_BYTES", 25_000)
    anna = world.user("anna")
    for i in range(4):
        world.append(
            anna,
            make_mail(sender="a@x.test", to=anna.address, subject=f"ok {i}", body="x" * 10_000),
        )
    world.append(
        anna, make_mail(sender="a@x.test", to=anna.address, subject="huge", body="y" * 80_000)
    )

    report = world.sync(anna)

    assert (report.tracked, report.quarantined) == (4, 1)
    huge = next(d for d in world.decisions(anna) if d.outcome is Outcome.QUARANTINED)
    assert huge.reason == "fetch_failed" and "over crmsync's limit" in huge.detail
    assert sorted(e.subject for e in world.emails()) == [f"ok {i}" for i in range(4)]
