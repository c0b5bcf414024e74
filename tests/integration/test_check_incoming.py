"""``crmsync check``: the tracking decision from message id, subject, sender and recipients only.

Run through the command line against PostgreSQL, as a person runs it; one test runs the
database look-up in-process to prove the subject never reaches it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from crmsync.core.parties import Candidate
from crmsync.core.promote import CrmOwner, ReasonCode, check_incoming
from crmsync.crm.activities import Email, EmailDirection
from crmsync.crm.base import IncomingEmailFilter, RecordState
from crmsync.crm.mailboxes import Mailbox
from crmsync.crm.models import BusinessUnit, Contact, Queue, User
from crmsync.db import session_scope
from crmsync.sync.lookups import DatabaseIncomingLookup
from tests.clirun import run

pytestmark = pytest.mark.integration

ANNA = "anna@ourco.test"
BEN = "ben@ourco.test"
SALES = "sales@ourco.test"
CLIENT = "Ann Client <Ann@Client.Example>"
TOKEN = "CRM:0001007"
STORED_ID = "stored-1@Mail.Client.Example"


@pytest.fixture
def crm(engine: Engine) -> dict[str, uuid.UUID]:
    """Anna tracks email from leads, contacts and accounts; Ben keeps the default (replies);
    the Sales queue tracks all email; Ann at client.example is a contact; one email is stored."""
    with session_scope(engine) as s:
        bu = BusinessUnit(name="Root")
        s.add(bu)
        s.flush()
        anna = User(
            name="Anna Virtanen",
            username="anna",
            business_unit_id=bu.id,
            incoming_email_filter=IncomingEmailFilter.LEADS_CONTACTS_ACCOUNTS,
        )
        anna.set_email(ANNA)
        ben = User(name="Ben Berg", username="ben", business_unit_id=bu.id)
        ben.set_email(BEN)
        sales = Queue(
            name="Sales", business_unit_id=bu.id, incoming_email_filter=IncomingEmailFilter.ALL
        )
        sales.set_email(SALES)
        contact = Contact(name="Ann Client", last_name="Client", business_unit_id=bu.id)
        contact.set_email("ann@client.example")
        s.add_all([anna, ben, sales, contact])
        s.flush()
        for owner, address in ((anna, ANNA), (ben, BEN), (sales, SALES)):
            s.add(Mailbox(name=owner.name, owner_id=owner.id, email_address=address))
        s.add(
            Email(
                name="Offer",
                subject=f"Offer {TOKEN}",
                direction=EmailDirection.OUTGOING,
                dedupe_key=f"mid:{STORED_ID.lower()}",
                message_id="stored-1@mail.client.example",
                tracking_token=TOKEN,
                owner_id=ben.id,
            )
        )
        return {"anna": anna.id, "ben": ben.id, "sales": sales.id, "contact": contact.id}


def check(env: dict[str, str], *args: str) -> dict:
    res = run(env, "check", *args, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_a_contacts_mail_to_a_user_tracking_contacts_is_tracked(
    cli_env: dict[str, str], crm: dict[str, uuid.UUID]
) -> None:
    got = check(cli_env, "--message-id", "<n1@client.example>", "--subject", "Hello",
                "--from", CLIENT, "--to", ANNA)  # fmt: skip
    assert got["should_track"] is True
    assert got["reason"] == "from_crm_record"
    assert got["accepted_by"] == str(crm["anna"])
    assert "ann@client.example" in got["detail"]

    human = run(cli_env, "check", "--subject", "Hello", "--from", CLIENT, "--to", ANNA)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0] == "track"
    assert "from_crm_record" in lines[1] and ReasonCode.FROM_CRM_RECORD.sentence in human.stdout
    assert "accepted by: user Anna Virtanen" in human.stdout


def test_the_default_filter_tracks_only_replies(
    cli_env: dict[str, str], crm: dict[str, uuid.UUID]
) -> None:
    base = ("--from", CLIENT, "--to", BEN)
    got = check(cli_env, "--message-id", "n2@client.example", "--subject", "Hello", *base)
    assert (got["should_track"], got["reason"], got["accepted_by"]) == (False, "not_a_reply", None)
    human = run(cli_env, "check", "--subject", "Hello", *base)
    assert human.returncode == 0  # the answer is data, not an error
    assert human.stdout.splitlines()[0] == "do not track"

    # A reply is recognized by the tracking token of a stored email in its subject.
    reply = check(cli_env, "--message-id", "n3@client.example", "--subject",
                  f"RE: Offer {TOKEN.lower()}", *base)  # fmt: skip
    assert (reply["should_track"], reply["reason"]) == (True, "reply_to_tracked")
    assert reply["accepted_by"] == str(crm["ben"])
    unknown = check(cli_env, "--subject", "RE: Offer CRM:0001999", *base)
    assert unknown["reason"] == "not_a_reply"

    # A message id we stored is the same message, already tracked: this copy is linked to it.
    again = check(
        cli_env, "--message-id", "<stored-1@MAIL.client.example>", "--subject", "x", *base
    )
    assert (again["should_track"], again["reason"]) == (True, "already_tracked")
    other_case = check(cli_env, "--message-id", "STORED-1@mail.client.example", *base)
    assert other_case["reason"] == "not_a_reply"  # the left part of a Message-ID keeps its case


def test_a_queue_accepts_what_the_user_would_not(
    cli_env: dict[str, str], crm: dict[str, uuid.UUID]
) -> None:
    got = check(cli_env, "--subject", "Hello", "--from", "stranger@else.example",
                "--to", BEN, "--cc", SALES)  # fmt: skip
    assert (got["should_track"], got["reason"]) == (True, "filter_all")
    assert got["accepted_by"] == str(crm["sales"])
    assert "not accepted by: user Ben Berg" in got["detail"]

    # The restrict setting has no syncing mailbox to restrict to here: the queue still counts.
    assert run(cli_env, "settings", "set", "restrict_to_syncing_mailbox", "on").returncode == 0
    got = check(cli_env, "--from", "stranger@else.example", "--to", BEN, "--cc", SALES)
    assert got["accepted_by"] == str(crm["sales"])


def test_a_blocklisted_sender_domain_is_not_tracked(
    cli_env: dict[str, str], crm: dict[str, uuid.UUID]
) -> None:
    res = run(cli_env, "settings", "set", "blocklist", "@client.example, spam@else.example")
    assert res.returncode == 0, res.stderr
    listed = json.loads(run(cli_env, "settings", "list", "--json").stdout)
    assert listed["blocklist"] == ["@client.example", "spam@else.example"]
    got = check(cli_env, "--from", "ann@mail.client.example", "--to", ANNA, "--cc", SALES)
    assert (got["should_track"], got["reason"]) == (False, "blocklisted")
    assert "@client.example" in got["detail"]
    # The CRM mailboxes that received it are never blocked themselves.
    assert run(cli_env, "settings", "set", "blocklist", "@ourco.test").returncode == 0
    assert check(cli_env, "--from", CLIENT, "--to", ANNA)["reason"] == "from_crm_record"


def test_an_unknown_sender_to_an_email_enabled_filter(
    cli_env: dict[str, str], engine: Engine, crm: dict[str, uuid.UUID]
) -> None:
    with session_scope(engine) as s:
        anna = s.get(User, crm["anna"])
        assert anna is not None
        anna.incoming_email_filter = IncomingEmailFilter.EMAIL_ENABLED
    got = check(cli_env, "--from", "nobody@unknown.example", "--to", ANNA)
    assert (got["should_track"], got["reason"]) == (False, "sender_not_in_crm")
    # A colleague is an email-enabled record; an inactive (former) colleague never is.
    assert check(cli_env, "--from", BEN, "--to", ANNA)["reason"] == "from_email_enabled_record"
    with session_scope(engine) as s:
        ben = s.get(User, crm["ben"])
        assert ben is not None
        ben.state = RecordState.INACTIVE
    assert check(cli_env, "--from", BEN, "--to", ANNA)["reason"] == "sender_not_in_crm"


def test_no_crm_recipient(cli_env: dict[str, str], crm: dict[str, uuid.UUID]) -> None:
    got = check(cli_env, "--from", CLIENT, "--to", "someone@else.example")
    assert (got["should_track"], got["reason"]) == (False, "no_crm_recipient")


def test_acting_as_a_user_needs_read_email(
    cli_env: dict[str, str], engine: Engine, crm: dict[str, uuid.UUID]
) -> None:
    from crmsync.crm.base import Depth
    from crmsync.crm.models import RolePrivilege, SecurityRole, UserRole

    denied = run(cli_env, "check", "--from", CLIENT, "--to", ANNA, "--as", "ben")
    assert denied.returncode == 1
    assert "read:email" in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1
    assert denied.stdout == ""

    with session_scope(engine) as s:
        role = SecurityRole(name="Own email")
        role.privileges = [RolePrivilege(privilege="read:email", depth=Depth.USER)]
        s.add(role)
        s.flush()
        s.add(UserRole(user_id=crm["ben"], role_id=role.id))
    allowed = check(cli_env, "--from", CLIENT, "--to", ANNA, "--as", "ben")
    assert allowed["reason"] == "from_crm_record"


def test_settings_of_the_tracking_decision(cli_env: dict[str, str]) -> None:
    listed = json.loads(run(cli_env, "settings", "list", "--json").stdout)
    assert listed["privacy_level"] == "everything"  # the existing ones are intact
    assert listed["process_email_only_for_approved_mailboxes"] is True
    for key in (
        "restrict_to_syncing_mailbox",
        "track_sent_items",
        "track_bulk_mail",
        "track_automatic_mail",
    ):
        assert listed[key] is False, key
        assert run(cli_env, "settings", "set", key, "yes").returncode == 0, key
        bad = run(cli_env, "settings", "set", key, "maybe")
        assert bad.returncode == 1 and "expected true or false" in bad.stderr, key
    assert listed["blocklist"] == []
    bad = run(cli_env, "settings", "set", "blocklist", "example.com, @ok.example, x@@y")
    assert bad.returncode == 1
    assert "'example.com'" in bad.stderr and "x@@y" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    listed = json.loads(run(cli_env, "settings", "list", "--json").stdout)
    assert all(
        listed[k]
        for k in (
            "restrict_to_syncing_mailbox",
            "track_sent_items",
            "track_bulk_mail",
            "track_automatic_mail",
        )
    )
    assert listed["blocklist"] == []
    assert run(cli_env, "settings", "set", "blocklist", "*@Spam.Example").returncode == 0
    assert json.loads(run(cli_env, "settings", "list", "--json").stdout)["blocklist"] == [
        "@spam.example"
    ]
    assert run(cli_env, "settings", "set", "blocklist", "").returncode == 0
    assert json.loads(run(cli_env, "settings", "list", "--json").stdout)["blocklist"] == []


# --- in-process: what the database look-up is given -------------------------------------------


class RecordingLookup(DatabaseIncomingLookup):
    """The real look-up, recording every argument it is given."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.seen: list[object] = []

    def candidates(self, address: str) -> Sequence[Candidate]:
        self.seen.append(address)
        return super().candidates(address)

    def is_tracked_message(self, message_id: str) -> bool:
        self.seen.append(message_id)
        return super().is_tracked_message(message_id)

    def is_tracked_token(self, token: str) -> bool:
        self.seen.append(token)
        return super().is_tracked_token(token)

    def mailbox_owners(self, addresses: Collection[str]) -> Sequence[CrmOwner]:
        self.seen.extend(addresses)
        return super().mailbox_owners(addresses)


def test_the_lookup_never_receives_the_subject(engine: Engine, crm: dict[str, uuid.UUID]) -> None:
    subject = f"RE: Offer SECRET-PLANS {TOKEN}"
    statements: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(f"{statement} {parameters!r}")

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with session_scope(engine) as s:
            lookup = RecordingLookup(s)
            decision = check_incoming(
                "<n9@client.example>", subject, CLIENT, [BEN, f"Sales <{SALES}>"], lookup
            )
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert decision.reason is ReasonCode.REPLY_TO_TRACKED
    assert decision.accepted_by == crm["ben"]
    assert "n9@client.example" in lookup.seen and TOKEN in lookup.seen
    assert {"ann@client.example", BEN, SALES} <= set(lookup.seen)
    assert not any("SECRET" in str(arg) or "Offer" in str(arg) for arg in lookup.seen)
    assert statements and not any("SECRET" in st for st in statements)


def test_candidates_are_capped_and_skip_inactive_users(
    engine: Engine, crm: dict[str, uuid.UUID]
) -> None:
    shared = "shared@many.example"
    with session_scope(engine) as s:
        bu_id = s.scalars(sa.select(BusinessUnit.id)).one()
        for i in range(105):
            c = Contact(name=f"C{i}", last_name=f"C{i}", business_unit_id=bu_id)
            c.set_email(shared)
            s.add(c)
        gone = User(name="Gone", username="gone", business_unit_id=bu_id, is_disabled=True)
        gone.set_email(BEN)
        s.add(gone)
    queries: list[str] = []

    def capture(*args: object) -> None:
        queries.append(str(args[2]))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with session_scope(engine) as s:
            lookup = DatabaseIncomingLookup(s)
            assert len(lookup.candidates(shared)) == 100
            ben = lookup.candidates(BEN)
            owners = lookup.mailbox_owners([ANNA, BEN, SALES, "x@else.example"])
            lookup.is_tracked_token(TOKEN)
            lookup.is_tracked_message("n@x")
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert [c.record_id for c in ben] == [crm["ben"]]
    assert {o.id for o in owners} == {crm["anna"], crm["ben"], crm["sales"]}
    assert len([q for q in queries if q.lstrip().upper().startswith("SELECT")]) == 5
