"""The tracking rules of docs/tracking-rules.md through the real incoming sync (Dovecot +
PostgreSQL): every case checks the outcome, the reason code in the decision row and what is
stored.

Sections: 1. the mailbox owner's incoming filter; 2. other CRM recipients' filters and queues;
3. folders and internal mail; 4. bulk, automatic and blocklisted mail; 5. correlation; 6. party
resolution and automatic record creation; 7. privacy levels, checked on the wire.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.core.correlate import CorrelationMethod
from crmsync.core.parties import AutoCreate
from crmsync.crm.activities import ActivityParty, Attachment, Email, EmailDirection, EmailStatus
from crmsync.crm.base import (
    Depth,
    IncomingEmailFilter,
    PartyRole,
    RecordState,
    Resolution,
)
from crmsync.crm.decisions import MessageDecision, Outcome
from crmsync.crm.mailboxes import ApprovalStatus, Mailbox, MailboxState
from crmsync.crm.models import RolePrivilege, SecurityRole, UserRole
from crmsync.crm.records import Contact, EmailAddress, Queue, Record, User
from crmsync.crm.settings import set_setting
from crmsync.secrets import Secret
from crmsync.sync.incoming import SyncReport
from tests.netproxy import FaultProxy
from tests.stackfix import Stack
from tests.syncworld import LONG_AGO, Person, SyncWorld, make_mail

pytestmark = pytest.mark.integration

F = IncomingEmailFilter
CARL = "carl@customer.test"
STRANGER = "stranger@elsewhere.test"


@pytest.fixture
def world(engine: Engine, stack: Stack, tmp_path: Path) -> SyncWorld:
    return SyncWorld(engine, stack, tmp_path)


# ---------------------------------------------------------------------- helpers
def org(world: SyncWorld, **values: bool | str | int) -> None:
    """Set organization settings as an administrator would (``crmsync settings set``)."""
    with Session(world.engine) as s, s.begin():
        for key, value in values.items():
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            set_setting(s, key, text)


def only_decision(world: SyncWorld, person: Person) -> MessageDecision:
    [decision] = world.decisions(person)
    return decision


def email_by_subject(world: SyncWorld, subject: str) -> Email:
    [email] = [e for e in world.emails() if e.subject == subject]
    return email


def parties_of(world: SyncWorld, email_id: uuid.UUID, role: PartyRole) -> list[ActivityParty]:
    with Session(world.engine) as s:
        return list(
            s.scalars(
                sa.select(ActivityParty)
                .where(ActivityParty.activity_id == email_id, ActivityParty.role == role)
                .order_by(ActivityParty.position)
            )
        )


def sender_party(world: SyncWorld, email_id: uuid.UUID) -> ActivityParty:
    [party] = parties_of(world, email_id, PartyRole.FROM)
    return party


def set_regarding(world: SyncWorld, email_id: uuid.UUID, regarding: uuid.UUID) -> None:
    with Session(world.engine) as s, s.begin():
        s.get(Email, email_id).regarding_id = regarding  # type: ignore[union-attr]


def synced(world: SyncWorld, person: Person) -> SyncReport:
    report = world.sync(person)
    assert report.ok, report.error
    return report


def add_mailbox(
    world: SyncWorld,
    s: Session,
    owner_id: uuid.UUID,
    name: str,
    *,
    privacy_level: str | None = None,
) -> Person:
    """A Dovecot user and an approved, enabled mailbox for OWNER_ID (a user or a queue)."""
    mail = world.stack.new_user(name)
    mailbox = Mailbox(
        id=uuid.uuid4(),
        owner_id=owner_id,
        name=name,
        email_address=mail.address,
        imap_url=f"imap://{world.stack.host}:{world.stack.imap_port}",
        username=mail.username,
        approval_status=ApprovalStatus.APPROVED,
        state=MailboxState.ENABLED,
        enabled_at=datetime.now(UTC),
        process_email_received_after=LONG_AGO,
        privacy_level=privacy_level,
    )
    mailbox.credential = world.box.encrypt(Secret(mail.password), bound_to=f"mailbox:{mailbox.id}")
    s.add(mailbox)
    s.flush()
    return Person(owner_id, mailbox.id, mail)


def add_queue(world: SyncWorld, name: str, *, owner: Person, incoming: F) -> Person:
    """A queue (owned by OWNER) with its own mailbox; ``user_id`` of the result is the queue."""
    with Session(world.engine) as s, s.begin():
        queue = Queue(
            name=name.title(),
            business_unit_id=world.unit_id,
            owner_id=owner.user_id,
            incoming_email_filter=incoming,
        )
        s.add(queue)
        s.flush()
        person = add_mailbox(world, s, queue.id, name)
        queue.set_email(person.address)
        return person


def grant(world: SyncWorld, person: Person, *privileges: str) -> None:
    with Session(world.engine) as s, s.begin():
        role = SecurityRole(name=f"role-{uuid.uuid4().hex[:8]}")
        role.privileges = [RolePrivilege(privilege=p, depth=Depth.ORGANIZATION) for p in privileges]
        s.add(role)
        s.flush()
        s.add(UserRole(user_id=person.user_id, role_id=role.id))


def set_auto_create(world: SyncWorld, person: Person, option: AutoCreate) -> None:
    with Session(world.engine) as s, s.begin():
        s.get(User, person.user_id).auto_create_records = option  # type: ignore[union-attr]


def deactivate(world: SyncWorld, record_id: uuid.UUID) -> None:
    with Session(world.engine) as s, s.begin():
        s.get(Record, record_id).state = RecordState.INACTIVE  # type: ignore[union-attr]


# ====================================================================== 1. the owner's filter
SenderSetup = Callable[[SyncWorld], str]


def _contact_sender(world: SyncWorld) -> str:
    world.contact("Carl Customer", CARL)
    return CARL


def _lead_sender(world: SyncWorld) -> str:
    world.lead("Lena Lead", "lena@prospect.test")
    return "lena@prospect.test"


def _user_sender(world: SyncWorld) -> str:
    return world.user("zed", incoming=F.NONE).address


def _unknown_sender(world: SyncWorld) -> str:
    return STRANGER


OWNER_FILTER_CASES = [
    # filter, sender, tracked?, reason
    (F.ALL, _unknown_sender, True, "filter_all"),
    (F.RESPONSES, _contact_sender, False, "not_a_reply"),
    (F.RESPONSES, _unknown_sender, False, "not_a_reply"),
    (F.LEADS_CONTACTS_ACCOUNTS, _contact_sender, True, "from_crm_record"),
    (F.LEADS_CONTACTS_ACCOUNTS, _lead_sender, True, "from_crm_record"),
    (F.LEADS_CONTACTS_ACCOUNTS, _user_sender, False, "sender_not_lead_contact_account"),
    (F.LEADS_CONTACTS_ACCOUNTS, _unknown_sender, False, "sender_not_in_crm"),
    (F.EMAIL_ENABLED, _user_sender, True, "from_email_enabled_record"),
    (F.EMAIL_ENABLED, _contact_sender, True, "from_email_enabled_record"),
    (F.EMAIL_ENABLED, _unknown_sender, False, "sender_not_in_crm"),
    (F.NONE, _contact_sender, False, "filter_none"),
    (F.NONE, _unknown_sender, False, "filter_none"),
]


@pytest.mark.parametrize(
    ("incoming", "make_sender", "tracked", "reason"),
    OWNER_FILTER_CASES,
    ids=[f"{c[0].value}-{c[1].__name__.strip('_')}" for c in OWNER_FILTER_CASES],
)
def test_the_mailbox_owners_incoming_filter(
    world: SyncWorld, incoming: F, make_sender: SenderSetup, tracked: bool, reason: str
) -> None:
    anna = world.user("anna", incoming=incoming)
    sender = make_sender(world)
    world.append(anna, make_mail(sender=sender, to=anna.address, subject="Filter case"))

    report = synced(world, anna)

    decision = only_decision(world, anna)
    assert decision.reason == reason
    assert decision.sender == sender
    if tracked:
        assert (report.tracked, dict(report.skipped)) == (1, {})
        assert decision.outcome is Outcome.TRACKED
        assert decision.accepted_by_id == anna.user_id
        [email] = world.emails()
        assert decision.email_id == email.id
        assert email.accepting_record_id == anna.user_id
        assert email.owner_id == anna.user_id
        assert email.direction is EmailDirection.INCOMING
        assert email.receiving_mailbox_id == anna.mailbox_id
    else:
        assert (report.tracked, dict(report.skipped)) == (0, {reason: 1})
        assert decision.outcome is Outcome.NOT_TRACKED
        assert decision.accepted_by_id is None and decision.email_id is None
        assert world.emails() == []


def test_responses_is_the_default_filter_and_tracks_a_reply(world: SyncWorld) -> None:
    with Session(world.engine) as s, s.begin():
        plain = User(
            name="Plain", username=f"plain{secrets.token_hex(4)}", business_unit_id=world.unit_id
        )
        s.add(plain)
        s.flush()
        assert plain.incoming_email_filter is F.RESPONSES
    bert = world.user("bert", incoming=F.ALL)
    anna = world.user("anna", incoming=F.RESPONSES)
    world.append(
        bert, make_mail(sender=CARL, to=bert.address, subject="Offer", message_id="<o1@c.test>")
    )
    assert synced(world, bert).tracked == 1
    world.append(
        anna,
        make_mail(sender=CARL, to=anna.address, subject="Re: Offer", in_reply_to="<o1@c.test>"),
    )

    report = synced(world, anna)

    assert report.tracked == 1
    decision = only_decision(world, anna)
    assert (decision.outcome, decision.reason) == (Outcome.TRACKED, "reply_to_tracked")
    assert decision.accepted_by_id == anna.user_id
    assert email_by_subject(world, "Re: Offer").accepting_record_id == anna.user_id


# ====================================================================== 2. other recipients
@pytest.mark.parametrize("restrict", [False, True])
def test_another_crm_recipients_filter_may_accept(world: SyncWorld, restrict: bool) -> None:
    anna = world.user("anna", incoming=F.NONE)
    bert = world.user("bert", incoming=F.ALL)  # his mailbox is not synced here
    if restrict:
        org(world, restrict_to_syncing_mailbox=True)
    world.append(
        anna,
        make_mail(sender=STRANGER, to=[anna.address, bert.address], subject="To both"),
    )

    report = synced(world, anna)

    decision = only_decision(world, anna)
    if restrict:
        assert (report.tracked, dict(report.skipped)) == (0, {"filter_none": 1})
        assert (decision.outcome, decision.reason) == (Outcome.NOT_TRACKED, "filter_none")
        assert decision.accepted_by_id is None
        assert "restrict_to_syncing_mailbox" in decision.detail
        assert world.emails() == []
    else:
        assert report.tracked == 1
        assert (decision.outcome, decision.reason) == (Outcome.TRACKED, "filter_all")
        assert decision.accepted_by_id == bert.user_id
        [email] = world.emails()
        assert email.accepting_record_id == bert.user_id
        # the syncing mailbox received it and its owner owns it
        assert email.receiving_mailbox_id == anna.mailbox_id
        assert email.owner_id == anna.user_id


def test_when_no_filter_accepts_the_syncing_mailboxs_reason_counts(world: SyncWorld) -> None:
    anna = world.user("anna", incoming=F.LEADS_CONTACTS_ACCOUNTS)
    bert = world.user("bert", incoming=F.RESPONSES)
    world.append(anna, make_mail(sender=STRANGER, to=anna.address, cc=bert.address))

    report = synced(world, anna)

    assert dict(report.skipped) == {"sender_not_in_crm": 1}
    decision = only_decision(world, anna)
    assert (decision.outcome, decision.reason) == (Outcome.NOT_TRACKED, "sender_not_in_crm")
    assert "other CRM recipients did not accept it either" in decision.detail
    assert "user Bert" in decision.detail and "user Anna" in decision.detail


def test_a_queue_mailbox_uses_the_queues_filter_and_its_owner_owns_the_email(
    world: SyncWorld,
) -> None:
    anna = world.user("anna", incoming=F.NONE)
    support = add_queue(world, "support", owner=anna, incoming=F.LEADS_CONTACTS_ACCOUNTS)
    world.contact("Carl Customer", CARL)
    world.append(support, make_mail(sender=CARL, to=support.address, subject="Broken chair"))
    world.append(support, make_mail(sender=STRANGER, to=support.address, subject="Spam"))

    report = synced(world, support)

    assert (report.tracked, dict(report.skipped)) == (1, {"sender_not_in_crm": 1})
    first, second = world.decisions(support)
    assert (first.outcome, first.reason) == (Outcome.TRACKED, "from_crm_record")
    assert first.accepted_by_id == support.user_id
    assert (second.outcome, second.reason) == (Outcome.NOT_TRACKED, "sender_not_in_crm")
    email = email_by_subject(world, "Broken chair")
    assert email.owner_id == anna.user_id  # the queue's owner
    assert email.accepting_record_id == support.user_id
    assert email.receiving_mailbox_id == support.mailbox_id


def test_a_queue_among_the_recipients_accepts_for_a_user(world: SyncWorld) -> None:
    anna = world.user("anna", incoming=F.RESPONSES)
    support = add_queue(world, "support", owner=anna, incoming=F.ALL)
    world.append(
        anna,
        make_mail(sender=STRANGER, to=anna.address, cc=support.address, subject="Cc the queue"),
    )

    synced(world, anna)

    decision = only_decision(world, anna)
    assert (decision.outcome, decision.reason) == (Outcome.TRACKED, "filter_all")
    assert decision.accepted_by_id == support.user_id
    assert "not accepted by" in decision.detail
    [email] = world.emails()
    assert email.accepting_record_id == support.user_id and email.owner_id == anna.user_id


# ====================================================================== 3. folders
def test_only_the_inbox_is_read_by_default(world: SyncWorld) -> None:
    anna = world.user("anna", incoming=F.ALL)
    world.append(anna, make_mail(sender=anna.address, to=CARL, subject="Sent"), folder="Sent")
    world.append(anna, make_mail(sender=CARL, to=anna.address, subject="Kept"), folder="Archive")
    world.append(anna, make_mail(sender=CARL, to=anna.address, subject="Inbox"))

    report = synced(world, anna)

    assert report.folders == ["INBOX"]
    assert (report.tracked, report.seen) == (1, 1)
    assert [e.subject for e in world.emails()] == ["Inbox"]
    assert {d.folder for d in world.decisions(anna)} == {"INBOX"}


def test_sent_items_are_tracked_as_outgoing_when_the_org_allows(world: SyncWorld) -> None:
    anna = world.user("anna", incoming=F.LEADS_CONTACTS_ACCOUNTS)
    carl = world.contact("Carl Customer", CARL)
    org(world, track_sent_items=True)
    # Dovecot here has no \Sent special-use folder: find_sent_folder finds it by its name
    world.append(anna, make_mail(sender=anna.address, to=CARL, subject="Our offer"), folder="Sent")
    world.append(
        anna, make_mail(sender=anna.address, to=STRANGER, subject="Private"), folder="Sent"
    )

    report = synced(world, anna)

    assert report.folders == ["INBOX", "Sent"]
    assert (report.tracked, dict(report.skipped)) == (1, {"sender_not_in_crm": 1})
    tracked, skipped = world.decisions(anna)
    assert (tracked.folder, tracked.outcome, tracked.reason) == (
        "Sent",
        Outcome.TRACKED,
        "from_crm_record",  # for Sent items the record filters look at the recipients
    )
    assert skipped.reason == "sender_not_in_crm"
    email = email_by_subject(world, "Our offer")
    assert email.direction is EmailDirection.OUTGOING
    assert email.email_status is EmailStatus.SENT
    [to] = parties_of(world, email.id, PartyRole.TO)
    assert to.party_id == carl
    assert sender_party(world, email.id).party_id == anna.user_id


@pytest.mark.parametrize("two_activities", [True, False])
def test_mail_between_two_crm_users(world: SyncWorld, two_activities: bool) -> None:
    anna = world.user("anna", incoming=F.ALL)
    bert = world.user("bert", incoming=F.ALL)
    org(world, track_sent_items=True, track_internal_email_as_two_activities=two_activities)
    message = make_mail(
        sender=anna.address, to=bert.address, subject="Lunch?", message_id="<lunch@x.test>"
    )
    world.append(anna, message, folder="Sent")
    world.append(bert, message)

    assert synced(world, anna).tracked == 1
    report = synced(world, bert)

    sent = only_decision(world, anna)
    received = only_decision(world, bert)
    assert (sent.folder, sent.outcome, sent.reason) == ("Sent", Outcome.TRACKED, "filter_all")
    emails = world.emails()
    if two_activities:
        assert (report.tracked, report.linked) == (1, 0)
        assert (received.outcome, received.reason) == (Outcome.TRACKED, "filter_all")
        assert sorted(e.direction.value for e in emails) == ["incoming", "outgoing"]
        assert received.email_id != sent.email_id
        incoming = next(e for e in emails if e.direction is EmailDirection.INCOMING)
        assert incoming.owner_id == bert.user_id
        assert incoming.correlated_activity_id is None  # never correlated with itself
    else:
        assert (report.tracked, report.linked) == (0, 1)
        assert (received.outcome, received.reason) == (Outcome.LINKED, "already_tracked")
        [email] = emails
        assert email.direction is EmailDirection.OUTGOING
        assert received.email_id == sent.email_id == email.id


# ====================================================== 4. bulk, automatic, blocklist
AUTOMATIC_CASES = [
    ("list-id", {"List-Id": "News <news.lists.test>"}, STRANGER, "bulk_mail", "track_bulk_mail"),
    ("precedence-bulk", {"Precedence": "bulk"}, STRANGER, "bulk_mail", "track_bulk_mail"),
    (
        "auto-submitted",
        {"Auto-Submitted": "auto-replied"},
        STRANGER,
        "auto_submitted",
        "track_automatic_mail",
    ),
    ("mailer-daemon", {}, "MAILER-DAEMON@mx.test", "auto_submitted", "track_automatic_mail"),
]


@pytest.mark.parametrize(
    ("headers", "sender", "reason", "setting"),
    [c[1:] for c in AUTOMATIC_CASES],
    ids=[c[0] for c in AUTOMATIC_CASES],
)
@pytest.mark.parametrize("allowed", [False, True], ids=["default", "setting-on"])
def test_bulk_and_automatic_mail(
    world: SyncWorld,
    headers: dict[str, str],
    sender: str,
    reason: str,
    setting: str,
    allowed: bool,
) -> None:
    anna = world.user("anna", incoming=F.ALL)
    if allowed:
        org(world, **{setting: True})
    world.append(anna, make_mail(sender=sender, to=anna.address, headers=headers))

    report = synced(world, anna)

    decision = only_decision(world, anna)
    if allowed:
        assert (decision.outcome, decision.reason) == (Outcome.TRACKED, "filter_all")
        assert len(world.emails()) == 1
    else:
        assert dict(report.skipped) == {reason: 1}
        assert (decision.outcome, decision.reason) == (Outcome.NOT_TRACKED, reason)
        assert world.emails() == []


def test_the_blocklist_by_address_and_domain(world: SyncWorld) -> None:
    anna = world.user("anna", incoming=F.ALL)
    own_domain = anna.address.partition("@")[2]
    # the own mailbox's domain is blocked too: the mailbox's own address is exempt
    org(world, blocklist=f"bob@blocked.test, @spam.test, @{own_domain}")
    world.append(anna, make_mail(sender="bob@blocked.test", to=anna.address, subject="b1"))
    world.append(anna, make_mail(sender="alice@blocked.test", to=anna.address, subject="ok1"))
    world.append(anna, make_mail(sender="x@spam.test", to=anna.address, subject="b2"))
    world.append(anna, make_mail(sender="x@mail.spam.test", to=anna.address, subject="b3"))
    world.append(
        anna, make_mail(sender=CARL, to=anna.address, cc="y@spam.test", subject="b4-recipient")
    )
    world.append(anna, make_mail(sender=CARL, to=anna.address, subject="ok2"))

    report = synced(world, anna)

    assert (report.tracked, dict(report.skipped)) == (2, {"blocklisted": 4})
    reasons = [(d.outcome, d.reason) for d in world.decisions(anna)]
    blocked = (Outcome.NOT_TRACKED, "blocklisted")
    ok = (Outcome.TRACKED, "filter_all")
    assert reasons == [blocked, ok, blocked, blocked, blocked, ok]
    assert sorted(e.subject for e in world.emails()) == ["ok1", "ok2"]
    assert "@spam.test" in world.decisions(anna)[3].detail


# ====================================================================== 5. correlation
def _first_then_reply(
    world: SyncWorld,
    first: EmailMessage,
    reply: EmailMessage,
    **settings: bool,
) -> tuple[Person, Email, Email, MessageDecision, uuid.UUID]:
    """ANNA (filter all) tracks FIRST, its regarding is set; then REPLY arrives and is synced."""
    anna = world.user("anna", incoming=F.ALL)
    account = world.contact("Acme Buyer", "buyer@acme.test")
    if settings:
        org(world, **settings)
    world.append(anna, first)
    synced(world, anna)
    [earlier] = world.emails()
    set_regarding(world, earlier.id, account)
    world.append(anna, reply)
    synced(world, anna)
    later = next(e for e in world.emails() if e.id != earlier.id)
    decision = next(d for d in world.decisions(anna) if d.email_id == later.id)
    return anna, earlier, later, decision, account


def _mail(subject: str, **kwargs: str) -> EmailMessage:
    return make_mail(sender="buyer@acme.test", to="anna@x.test", subject=subject, **kwargs)


def _in_reply_to() -> tuple[EmailMessage, EmailMessage]:
    return (
        _mail("Order 7", message_id="<order-7@acme.test>"),
        _mail("Re: Order 7", in_reply_to="<order-7@acme.test>"),
    )


def _token() -> tuple[EmailMessage, EmailMessage]:
    return (
        _mail("Offer CRM:0001001", message_id="<offer@acme.test>"),
        _mail("RE: Offer CRM:0001001"),  # no In-Reply-To, no References
    )


def _references() -> tuple[EmailMessage, EmailMessage]:
    # In-Reply-To names an untracked message; References names the tracked one
    return (
        _mail("Plan", message_id="<plan@acme.test>"),
        _mail(
            "Re: Plan",
            in_reply_to="<untracked@acme.test>",
            references="<plan@acme.test> <untracked@acme.test>",
        ),
    )


def _thread_key() -> tuple[EmailMessage, EmailMessage]:
    # both answer into a thread whose root (and every message in between) was never tracked
    return (
        _mail(
            "Re: Root",
            message_id="<mid1@acme.test>",
            in_reply_to="<root@elsewhere.test>",
            references="<root@elsewhere.test>",
        ),
        _mail(
            "Re: Root again",
            in_reply_to="<mid2@elsewhere.test>",
            references="<root@elsewhere.test> <mid2@elsewhere.test>",
        ),
    )


def _smart() -> tuple[EmailMessage, EmailMessage]:
    people = {"sender": "buyer@acme.test", "cc": "dora@acme.test"}
    first = make_mail(to="anna@x.test", subject="Budget planning meeting", **people)
    reply = make_mail(to="anna@x.test", subject="RE: Budget planning meeting", **people)
    return first, reply


@pytest.mark.parametrize(
    ("messages", "setting", "method", "parent", "off_method"),
    [
        (_in_reply_to, "correlate_by_in_reply_to", "in_reply_to", True, "thread"),
        (_token, "correlate_by_tracking_token", "tracking_token", False, "none"),
        (_references, "correlate_by_thread", "thread", True, "none"),
        (_thread_key, "correlate_by_thread", "thread", False, "none"),
        (_smart, "correlate_by_smart_matching", "smart_matching", False, "none"),
    ],
    ids=["in-reply-to", "token", "references", "thread-key", "smart-matching"],
)
@pytest.mark.parametrize("enabled", [True, False], ids=["on", "off"])
def test_correlation_methods(
    world: SyncWorld,
    messages: Callable[[], tuple[EmailMessage, EmailMessage]],
    setting: str,
    method: str,
    parent: bool,
    off_method: str,
    enabled: bool,
) -> None:
    first, reply = messages()
    # smart matching is off by default; every other method is on by default
    settings = {setting: enabled} if (setting == "correlate_by_smart_matching") == enabled else {}
    _, earlier, later, decision, account = _first_then_reply(world, first, reply, **settings)

    expected = method if enabled else off_method
    assert later.correlation_method is CorrelationMethod(expected)
    assert decision.correlation_method == expected
    assert (decision.outcome, decision.reason) == (Outcome.TRACKED, "filter_all")
    if expected == "none":
        assert later.regarding_id is None and later.correlated_activity_id is None
        assert decision.correlation_detail.startswith("Not correlated")
    else:
        assert later.correlated_activity_id == earlier.id
        assert later.regarding_id == account
        assert (later.parent_activity_id == earlier.id) is (parent and enabled)
        assert str(earlier.id) in decision.correlation_detail


def test_in_reply_to_off_and_thread_off_leaves_a_reply_uncorrelated(world: SyncWorld) -> None:
    first, reply = _in_reply_to()
    _, _, later, decision, _ = _first_then_reply(
        world, first, reply, correlate_by_in_reply_to=False, correlate_by_thread=False
    )
    assert later.correlation_method is CorrelationMethod.NONE
    assert decision.correlation_method == "none" and later.regarding_id is None


def test_use_correlation_off_skips_every_method(world: SyncWorld) -> None:
    first, reply = _in_reply_to()
    _, _, later, decision, _ = _first_then_reply(world, first, reply, use_correlation=False)
    assert later.correlation_method is CorrelationMethod.SKIPPED
    assert decision.correlation_method == "skipped" and later.regarding_id is None


def test_a_token_reply_passes_the_responses_filter(world: SyncWorld) -> None:
    bert = world.user("bert", incoming=F.ALL)
    anna = world.user("anna", incoming=F.RESPONSES)
    world.append(bert, make_mail(sender=CARL, to=bert.address, subject="Quote CRM:0001042"))
    synced(world, bert)
    world.append(anna, make_mail(sender=CARL, to=anna.address, subject="AW: Quote CRM:0001042"))

    synced(world, anna)

    decision = only_decision(world, anna)
    assert (decision.outcome, decision.reason) == (Outcome.TRACKED, "reply_to_tracked")
    assert decision.correlation_method == "tracking_token"


# ====================================================================== 6. party resolution
def _track_from(world: SyncWorld, anna: Person, sender: str, **kwargs: str) -> Email:
    world.append(anna, make_mail(sender=sender, to=anna.address, **kwargs))
    synced(world, anna)
    [email] = world.emails()
    return email


def _decision_party(world: SyncWorld, anna: Person, role: str) -> dict[str, object]:
    decision = only_decision(world, anna)
    return next(p for p in decision.parties or [] if p["role"] == role)


def test_the_sender_resolves_to_a_contact(world: SyncWorld) -> None:
    anna = world.user("anna", incoming=F.ALL)
    carl = world.contact("Carl Customer", CARL)
    email = _track_from(world, anna, f"Carl Customer <{CARL}>")
    party = sender_party(world, email.id)
    assert (party.party_id, party.resolution) == (carl, Resolution.RESOLVED)
    assert party.display_name == "Carl Customer"
    recorded = _decision_party(world, anna, "from")
    assert recorded["records"] == [str(carl)] and recorded["resolution"] == "resolved"


def test_the_mailbox_owners_own_record_wins_over_the_order(world: SyncWorld) -> None:
    anna = world.user("anna", incoming=F.ALL)
    bert = world.user("bert", incoming=F.NONE)
    shared = "shared@customer.test"
    with Session(world.engine) as s, s.begin():  # a user: first in the precedence order
        s.get(User, bert.user_id).set_email(shared, slot=2)  # type: ignore[union-attr]
    world.contact("Berts Contact", shared, owner=bert)
    annas = world.contact("Annas Contact", shared, owner=anna)

    email = _track_from(world, anna, shared)

    assert sender_party(world, email.id).party_id == annas
    assert "owned by the mailbox owner" in str(_decision_party(world, anna, "from")["why"])


@pytest.mark.parametrize("unresolve", [False, True])
def test_several_records_with_the_senders_address(world: SyncWorld, unresolve: bool) -> None:
    anna = world.user("anna", incoming=F.ALL)
    shared = "shared@customer.test"
    lead = world.lead("Lena Lead", shared)
    contact = world.contact("Carl Customer", shared)  # contact comes before lead
    if unresolve:
        org(world, unresolve_sender_on_multiple_matches=True)

    email = _track_from(world, anna, shared)

    party = sender_party(world, email.id)
    recorded = _decision_party(world, anna, "from")
    if unresolve:
        assert party.party_id is None and party.resolution is Resolution.AMBIGUOUS
        assert recorded["resolution"] == "ambiguous"
        assert recorded["records"] == [str(contact), str(lead)]  # offered as choices
    else:
        assert (party.party_id, party.resolution) == (contact, Resolution.RESOLVED)
        assert "comes first" in str(recorded["why"])


@pytest.mark.parametrize("inactive_allowed", [False, True])
def test_an_inactive_contact(world: SyncWorld, inactive_allowed: bool) -> None:
    anna = world.user("anna", incoming=F.ALL)
    carl = world.contact("Carl Customer", CARL)
    deactivate(world, carl)
    if inactive_allowed:
        org(world, resolve_for_inactive_records=True)

    email = _track_from(world, anna, CARL)

    party = sender_party(world, email.id)
    if inactive_allowed:
        assert (party.party_id, party.resolution) == (carl, Resolution.RESOLVED)
    else:
        assert (party.party_id, party.resolution) == (None, Resolution.UNRESOLVED)
        assert "inactive" in str(_decision_party(world, anna, "from")["why"])


def test_an_inactive_contact_does_not_count_for_the_contacts_filter(world: SyncWorld) -> None:
    anna = world.user("anna", incoming=F.LEADS_CONTACTS_ACCOUNTS)
    deactivate(world, world.contact("Carl Customer", CARL))
    world.append(anna, make_mail(sender=CARL, to=anna.address))
    synced(world, anna)
    assert only_decision(world, anna).reason == "sender_not_in_crm"


def test_a_hundred_records_with_one_address_leave_the_sender_unresolved(
    world: SyncWorld,
) -> None:
    anna = world.user("anna", incoming=F.ALL)
    shared = "info@bigcorp.test"
    with Session(world.engine) as s, s.begin():
        for i in range(100):
            contact = Contact(name=f"C{i}", last_name=f"C{i}", business_unit_id=world.unit_id)
            contact.set_email(shared)
            s.add(contact)

    email = _track_from(world, anna, shared, cc=shared)

    party = sender_party(world, email.id)
    assert (party.party_id, party.resolution) == (None, Resolution.UNRESOLVED)
    assert "100" in str(_decision_party(world, anna, "from")["why"])
    [cc] = parties_of(world, email.id, PartyRole.CC)  # the limit applies to recipients too
    assert (cc.party_id, cc.resolution) == (None, Resolution.UNRESOLVED)


@pytest.mark.parametrize("unresolve", [False, True])
def test_a_recipient_resolves_to_every_matching_record(world: SyncWorld, unresolve: bool) -> None:
    anna = world.user("anna", incoming=F.ALL)
    shared = "team@customer.test"
    first = world.contact("Carl One", shared)
    second = world.contact("Carl Two", shared)
    if unresolve:
        org(world, unresolve_recipients_on_multiple_matches=True)
    world.append(anna, make_mail(sender=STRANGER, to=[anna.address, shared]))
    synced(world, anna)
    [email] = world.emails()

    to = parties_of(world, email.id, PartyRole.TO)
    by_address: dict[str | None, set[tuple[uuid.UUID | None, Resolution]]] = {}
    for party in to:
        by_address.setdefault(party.address, set()).add((party.party_id, party.resolution))
    mine = {(anna.user_id, Resolution.RESOLVED)}
    if unresolve:
        assert by_address == {anna.address: mine, shared: {(None, Resolution.AMBIGUOUS)}}
    else:
        both = {(first, Resolution.RESOLVED), (second, Resolution.RESOLVED)}
        assert by_address == {anna.address: mine, shared: both}
    recorded = next(p for p in only_decision(world, anna).parties or [] if p["address"] == shared)
    assert set(recorded["records"]) == {str(first), str(second)}


@pytest.mark.parametrize(
    ("org_switch", "option", "may_create", "created"),
    [
        (True, AutoCreate.CONTACT, True, True),
        (False, AutoCreate.CONTACT, True, False),
        (True, AutoCreate.NONE, True, False),
        (True, AutoCreate.CONTACT, False, False),
    ],
    ids=["created", "org-switch-off", "user-option-none", "no-create-privilege"],
)
def test_auto_create_a_contact_for_an_unknown_sender(
    world: SyncWorld, org_switch: bool, option: AutoCreate, may_create: bool, created: bool
) -> None:
    anna = world.user("anna", incoming=F.ALL)
    set_auto_create(world, anna, option)
    if may_create:
        grant(world, anna, "create:contact")
    if not org_switch:
        org(world, auto_create_records_on_promote=False)

    email = _track_from(world, anna, "New Person <new.person@prospect.test>")

    party = sender_party(world, email.id)
    with Session(world.engine) as s:
        contacts = list(
            s.scalars(
                sa.select(Contact)
                .join(EmailAddress, EmailAddress.record_id == Contact.id)
                .where(EmailAddress.address == "new.person@prospect.test")
            )
        )
    if created:
        [contact] = contacts
        assert contact.name == "New Person" and contact.owner_id == anna.user_id
        assert (party.party_id, party.resolution) == (contact.id, Resolution.RESOLVED)
        assert "is created" in str(_decision_party(world, anna, "from")["why"])
    else:
        assert contacts == []
        assert (party.party_id, party.resolution) == (None, Resolution.UNRESOLVED)


# ====================================================================== 7. privacy
BODY_BYTES = 200 * 1024
PRIVATE_MESSAGES = 3


def _big_messages(world: SyncWorld, person: Person) -> tuple[list[str], list[str], int]:
    tag = secrets.token_hex(4)
    subjects, markers, total = [], [], 0
    for i in range(PRIVATE_MESSAGES):
        subject = f"Confidential merger {tag} {i}"
        marker = f"BODYMARKER-{tag}-{i}"
        line = f"{marker} do not forward.\n"
        raw = make_mail(
            sender=CARL,
            to=person.address,
            subject=subject,
            body=line * (BODY_BYTES // len(line) + 1),
            attachment=("numbers.bin", b"secret numbers"),
        ).as_bytes()
        world.append(person, raw)
        subjects.append(subject)
        markers.append(marker)
        total += len(raw)
    return subjects, markers, total


def _sync_through_proxy(world: SyncWorld, person: Person) -> FaultProxy:
    with FaultProxy((world.stack.host, world.stack.imap_port)) as proxy:
        with Session(world.engine) as s, s.begin():
            mailbox = s.get(Mailbox, person.mailbox_id)
            assert mailbox is not None
            mailbox.imap_url = f"imap://{proxy.host}:{proxy.port}"
        report = synced(world, person)
        assert report.tracked == PRIVATE_MESSAGES
    return proxy


def _attachments(world: SyncWorld) -> int:
    with Session(world.engine) as s:
        return s.scalar(sa.select(sa.func.count()).select_from(Attachment)) or 0


@pytest.mark.parametrize(
    ("org_level", "mailbox_level", "effective"),
    [
        (None, "metadata", "metadata"),
        (None, "subject", "subject"),
        (None, "everything", "everything"),
        ("metadata", "everything", "metadata"),  # the organization's level is a ceiling
    ],
    ids=["metadata", "subject", "everything", "org-ceiling"],
)
def test_privacy_levels_on_the_wire_and_in_the_database(
    world: SyncWorld, org_level: str | None, mailbox_level: str, effective: str
) -> None:
    if org_level is not None:
        org(world, privacy_level=org_level)
    anna = world.user("anna", incoming=F.ALL, privacy_level=mailbox_level)
    subjects, markers, total = _big_messages(world, anna)

    proxy = _sync_through_proxy(world, anna)

    commands = proxy.captured_to_server().upper()
    received = proxy.captured_to_client()
    emails = world.emails()
    assert len(emails) == PRIVATE_MESSAGES
    if effective == "everything":
        assert b"BODY.PEEK[]" in commands or b"BODY[]" in commands
        assert proxy.bytes_to_client > total
        assert all(e.has_body for e in emails)
        assert sorted(e.subject for e in emails) == sorted(subjects)
        by_subject = {e.subject: e.description or "" for e in emails}
        assert all(m in by_subject[s] for s, m in zip(subjects, markers, strict=True))
        assert _attachments(world) == PRIVATE_MESSAGES
        return
    # nothing but headers crossed the wire
    for item in (b"BODY[]", b"BODY.PEEK[]", b"BODY[TEXT]", b"BODYSTRUCTURE", b"ENVELOPE"):
        assert item not in commands
    assert re.search(rb"RFC822(?!\.SIZE)", commands) is None  # the size is metadata
    assert proxy.bytes_to_client < 0.05 * total
    assert not any(m.encode() in received for m in markers)
    assert all(not e.has_body and e.description is None and e.body_html is None for e in emails)
    assert _attachments(world) == 0
    if effective == "metadata":
        assert b"SUBJECT" not in commands
        assert not any(s.encode() in received for s in subjects)
        assert all(e.subject == "" and e.name == "" for e in emails)
    else:
        assert b"SUBJECT" in commands
        assert sorted(e.subject for e in emails) == sorted(subjects)
    # the decision trace never holds a subject either
    for decision in world.decisions(anna):
        assert not any(s in decision.detail for s in subjects)
