"""Correlation against PostgreSQL: ``DatabaseCorrelationLookup`` answers each question with
exactly the right emails in one query, the real ``correlate()`` finds every method through it,
and each method follows its organization setting."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.core.correlate import (
    CorrelationFacts,
    CorrelationMethod,
    CorrelationSettings,
    SmartMatchingSettings,
    address_hashes,
    correlate,
    subject_hashes,
)
from crmsync.core.parties import PartyOptions
from crmsync.core.privacy import PrivacyLevel
from crmsync.core.tokens import TokenFormat
from crmsync.crm.activities import Email, EmailDirection, EmailMatchHash
from crmsync.crm.models import BusinessUnit, Contact, User
from crmsync.crm.settings import (
    correlation_settings,
    incoming_settings,
    party_options,
    set_setting,
    token_format,
)
from crmsync.db import session_scope
from crmsync.errors import InvalidInput
from crmsync.sync.lookups import (
    DatabaseCorrelationLookup,
    DatabaseIncomingLookup,
    store_match_hashes,
)
from tests.clirun import run

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
TOKEN = "CRM:0001007"
ANNA = "anna@ourco.test"
CLIENT = "ann@client.example"
BOSS = "boss@client.example"
SMART_SUBJECT = "Quarterly offer for Oy Client"


@dataclass
class Ids:
    contact: uuid.UUID
    other: uuid.UUID
    a: uuid.UUID  # message a@x, thread root-a@x, regarding the contact
    b_in: uuid.UUID  # message b@x received, no regarding
    b_out: uuid.UUID  # message b@x sent (the other copy), regarding the other contact, older
    c: uuid.UUID  # message c@x in thread root-c@x
    token_old: uuid.UUID
    token_new: uuid.UUID
    smart: uuid.UUID  # the smart-matching subject, anna + ann + boss, 10 days old
    smart_one_address: uuid.UUID  # same subject, shares only anna
    smart_other_subject: uuid.UUID  # same addresses, other subject
    smart_old: uuid.UUID  # like smart, 120 days old


def _email(
    s: Session,
    owner: User,
    message_id: str,
    *,
    days_ago: float,
    direction: EmailDirection = EmailDirection.INCOMING,
    regarding: uuid.UUID | None = None,
    thread_key: str | None = None,
    token: str | None = None,
    subject: str = "",
) -> uuid.UUID:
    email = Email(
        name=subject,
        subject=subject,
        direction=direction,
        dedupe_key=f"mid:{message_id}",
        message_id=message_id,
        thread_key=thread_key or message_id,
        tracking_token=token,
        regarding_id=regarding,
        owner_id=owner.id,
        business_unit_id=owner.business_unit_id,
        created_at=NOW - timedelta(days=days_ago),
    )
    s.add(email)
    s.flush()
    return email.id


@pytest.fixture
def ids(engine: Engine) -> Ids:
    with session_scope(engine) as s:
        bu = BusinessUnit(name="Root")
        s.add(bu)
        s.flush()
        anna = User(name="Anna", username="anna", business_unit_id=bu.id)
        anna.set_email(ANNA)
        contact = Contact(name="Ann Client", last_name="Client", business_unit_id=bu.id)
        contact.set_email(CLIENT)
        other = Contact(name="Bo Other", last_name="Other", business_unit_id=bu.id)
        s.add_all([anna, contact, other])
        s.flush()
        settings = CorrelationSettings()
        smart_ids = []
        for mid, days, subject, addresses in (
            ("smart@x", 10, f"RE: {SMART_SUBJECT} {TOKEN}", [ANNA, CLIENT, BOSS]),
            ("smart-one@x", 5, SMART_SUBJECT, [ANNA, "someone@else.example"]),
            ("smart-other@x", 3, "Invoice", [ANNA, CLIENT, BOSS]),
            ("smart-old@x", 120, SMART_SUBJECT, [ANNA, CLIENT, BOSS]),
        ):
            email_id = _email(s, anna, mid, days_ago=days, subject=subject, regarding=contact.id)
            store_match_hashes(s, email_id, subject, addresses, settings)
            smart_ids.append(email_id)
        return Ids(
            contact=contact.id,
            other=other.id,
            a=_email(s, anna, "a@x", days_ago=2, thread_key="root-a@x", regarding=contact.id),
            b_in=_email(s, anna, "b@x", days_ago=1, thread_key="root-b@x"),
            b_out=_email(
                s,
                anna,
                "b@x",
                days_ago=1.5,
                thread_key="root-b@x",
                direction=EmailDirection.OUTGOING,
                regarding=other.id,
            ),
            c=_email(s, anna, "c@x", days_ago=4, thread_key="root-c@x", regarding=contact.id),
            token_old=_email(s, anna, "t-old@x", days_ago=400, token=TOKEN, regarding=other.id),
            token_new=_email(s, anna, "t-new@x", days_ago=7, token=TOKEN, regarding=contact.id),
            smart=smart_ids[0],
            smart_one_address=smart_ids[1],
            smart_other_subject=smart_ids[2],
            smart_old=smart_ids[3],
        )


@contextmanager
def counted(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().split(None, 1)[0].upper() in ("SELECT", "WITH", "INSERT"):
            statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)


def _ours(subject: str, *addresses: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return subject_hashes(subject, token_format=TokenFormat()), address_hashes(addresses)


# --- each look-up alone --------------------------------------------------------------------


def test_by_message_ids_finds_every_copy_of_the_named_messages(engine: Engine, ids: Ids) -> None:
    with session_scope(engine) as s:
        lookup = DatabaseCorrelationLookup(s)
        with counted(engine) as statements:
            found = lookup.by_message_ids(["a@x", "b@x", "nobody@x", "A@x"])
            assert lookup.by_message_ids([]) == []
        assert len(statements) == 1
    by_id = {e.id: e for e in found}
    assert set(by_id) == {
        ids.a,
        ids.b_in,
        ids.b_out,
    }  # both directions; the left part's case counts
    assert by_id[ids.a].regarding_id == ids.contact and by_id[ids.a].message_id == "a@x"
    assert by_id[ids.b_in].regarding_id is None and by_id[ids.b_out].regarding_id == ids.other
    assert by_id[ids.b_in].tracked_at > by_id[ids.b_out].tracked_at  # type: ignore[operator]
    assert abs(by_id[ids.a].tracked_at - (NOW - timedelta(days=2))) < timedelta(seconds=1)  # type: ignore[operator]


def test_by_token_and_by_thread_key_find_exactly_theirs_newest_first(
    engine: Engine, ids: Ids
) -> None:
    with session_scope(engine) as s:
        lookup = DatabaseCorrelationLookup(s)
        with counted(engine) as statements:
            tokens = lookup.by_token(TOKEN)
            none = lookup.by_token("CRM:0001008")
            thread_b = lookup.by_thread_key("root-b@x")
            thread_a = lookup.by_thread_key("a@x")  # a@x is a message id, not a thread key
        assert len(statements) == 4
    assert [e.id for e in tokens] == [ids.token_new, ids.token_old]
    assert tokens[0].regarding_id == ids.contact and tokens[0].message_id == "t-new@x"
    assert none == [] and thread_a == []
    assert [e.id for e in thread_b] == [ids.b_in, ids.b_out]


def test_smart_candidates_are_the_emails_that_can_match_with_all_their_hashes(
    engine: Engine, ids: Ids
) -> None:
    ours_s, ours_a = _ours(f"AW: {SMART_SUBJECT}", f"Ann <{CLIENT}>", ANNA)
    with session_scope(engine) as s:
        lookup = DatabaseCorrelationLookup(s, CorrelationSettings(), look_back_days=90)
        with counted(engine) as statements:
            found = lookup.smart_candidates(ours_s, ours_a)
        assert len(statements) == 1
        # One address less than smart matching needs: nothing to ask.
        assert lookup.smart_candidates(ours_s, ours_a[:1]) == []
        wide = DatabaseCorrelationLookup(s, look_back_days=365).smart_candidates(ours_s, ours_a)
        loose = DatabaseCorrelationLookup(
            s, CorrelationSettings(smart=SmartMatchingSettings(min_address_count=1))
        ).smart_candidates(ours_s, ours_a)
        stored = s.execute(
            sa.select(EmailMatchHash.kind, EmailMatchHash.hash).where(
                EmailMatchHash.email_id == ids.smart
            )
        ).all()
    # The one with the same words and two shared addresses; not the one sharing one address,
    # not the one with another subject, not the one older than the window.
    assert [c.email.id for c in found] == [ids.smart]
    candidate = found[0]
    assert candidate.email.regarding_id == ids.contact and candidate.email.message_id == "smart@x"
    assert candidate.subject_hashes == frozenset(ours_s)  # the token and "RE:" were not hashed
    assert candidate.address_hashes == frozenset(address_hashes([ANNA, CLIENT, BOSS]))
    assert {h for k, h in stored if k == "s"} == candidate.subject_hashes
    assert {h for k, h in stored if k == "a"} == candidate.address_hashes
    assert [c.email.id for c in wide] == [ids.smart, ids.smart_old]
    assert [c.email.id for c in loose] == [ids.smart_one_address, ids.smart]


def test_without_settings_the_lookup_reads_the_organizations_once(engine: Engine, ids: Ids) -> None:
    ours_s, ours_a = _ours(SMART_SUBJECT, CLIENT, ANNA)
    with session_scope(engine) as s:
        assert DatabaseCorrelationLookup(s).look_back_days == 90
        set_setting(s, "smart_matching_look_back_days", "130")
        set_setting(s, "smart_matching_min_addresses", "1")
        lookup = DatabaseCorrelationLookup(s)
        with counted(engine) as statements:
            found = lookup.smart_candidates(ours_s, ours_a)
            again = lookup.smart_candidates(ours_s, ours_a)
        assert len(statements) == 3  # the settings once, then one query per call
        assert lookup.settings == correlation_settings(s)
        assert lookup.look_back_days == 130
        given = DatabaseCorrelationLookup(s, CorrelationSettings(), look_back_days=90)
        with counted(engine) as statements:
            assert [c.email.id for c in given.smart_candidates(ours_s, ours_a)] == [ids.smart]
        assert len(statements) == 1  # what is given is not read
    assert [c.email.id for c in found] == [ids.smart_one_address, ids.smart, ids.smart_old]
    assert again == found


def test_store_match_hashes_is_idempotent_and_hashes_nothing_it_is_not_given(
    engine: Engine, ids: Ids
) -> None:
    settings = CorrelationSettings()
    with session_scope(engine) as s:
        with counted(engine) as statements:
            store_match_hashes(s, ids.a, f"Re: Hello again {TOKEN}", [CLIENT, ANNA], settings)
            store_match_hashes(
                s, ids.a, "Hello again", [ANNA.upper(), "ann@Client.example"], settings
            )
            store_match_hashes(s, ids.c, None, [], settings)  # metadata level, no addresses
        assert len(statements) == 2
        rows = s.execute(
            sa.select(EmailMatchHash.email_id, EmailMatchHash.kind, EmailMatchHash.hash).where(
                EmailMatchHash.email_id.in_([ids.a, ids.c])
            )
        ).all()
    assert sorted((k, h) for _, k, h in rows) == sorted(
        [("s", h) for h in subject_hashes("hello again")]
        + [("a", h) for h in address_hashes([CLIENT, ANNA])]
    )
    assert {e for e, _, _ in rows} == {ids.a}


# --- the real correlation through the database ---------------------------------------------

IN_REPLY_TO = CorrelationFacts.from_headers(message_id="<new1@client.example>", in_reply_to="<a@x>")
TOKEN_REPLY = CorrelationFacts.from_headers(
    message_id="<new2@client.example>", subject=f"RE: Offer {TOKEN.lower()}"
)
REFERENCES = CorrelationFacts.from_headers(
    message_id="<new3@client.example>",
    in_reply_to="<unknown@x>",
    references="<root-b@x> <b@x> <unknown@x>",
)
THREAD_KEY = CorrelationFacts.from_headers(
    message_id="<new4@client.example>", in_reply_to="<u2@x>", references="<root-c@x> <u2@x>"
)
SMART = CorrelationFacts.from_headers(
    message_id="<new5@client.example>",
    subject=f"Fwd: {SMART_SUBJECT}",
    addresses=[f"Ann <{CLIENT}>", ANNA],
)


def _correlate(engine: Engine, facts: CorrelationFacts):  # type: ignore[no-untyped-def]
    with session_scope(engine) as s:
        settings = correlation_settings(s)
        lookup = DatabaseCorrelationLookup(s, settings)
        return correlate(facts, lookup, settings)


def test_every_method_finds_its_email_through_the_database(engine: Engine, ids: Ids) -> None:
    got = _correlate(engine, IN_REPLY_TO)
    assert (got.method, got.matched_email_id, got.parent_email_id) == (
        CorrelationMethod.IN_REPLY_TO,
        ids.a,
        ids.a,
    )
    assert got.inherit_regarding_from == ids.a

    got = _correlate(engine, TOKEN_REPLY)  # counters wrap: the newest email with the token
    assert (got.method, got.matched_email_id) == (CorrelationMethod.TRACKING_TOKEN, ids.token_new)

    got = _correlate(engine, REFERENCES)  # of b@x's two copies, the one with a regarding record
    assert (got.method, got.matched_email_id, got.parent_email_id) == (
        CorrelationMethod.THREAD,
        ids.b_out,
        ids.b_out,
    )

    got = _correlate(engine, THREAD_KEY)  # no ancestor tracked; c@x shares the thread's root
    assert (got.method, got.matched_email_id, got.parent_email_id) == (
        CorrelationMethod.THREAD,
        ids.c,
        None,
    )

    assert _correlate(engine, SMART).method is CorrelationMethod.NONE  # off by default
    with session_scope(engine) as s:
        set_setting(s, "correlate_by_smart_matching", "on")
    got = _correlate(engine, SMART)
    assert (got.method, got.matched_email_id) == (CorrelationMethod.SMART_MATCHING, ids.smart)
    assert got.inherit_regarding_from == ids.smart


def test_smart_matching_does_not_reach_past_the_look_back_window(engine: Engine, ids: Ids) -> None:
    with session_scope(engine) as s:
        set_setting(s, "correlate_by_smart_matching", "on")
        s.execute(sa.delete(EmailMatchHash).where(EmailMatchHash.email_id == ids.smart))
    assert _correlate(engine, SMART).method is CorrelationMethod.NONE  # only the old one is left
    with session_scope(engine) as s:
        set_setting(s, "smart_matching_look_back_days", "3650")
        settings = correlation_settings(s)
        lookup = DatabaseCorrelationLookup(
            s, settings, look_back_days=incoming_settings(s).smart_matching_look_back_days
        )
        got = correlate(SMART, lookup, settings)
    assert (got.method, got.matched_email_id) == (CorrelationMethod.SMART_MATCHING, ids.smart_old)


def test_smart_matching_needs_the_configured_number_of_shared_addresses(
    engine: Engine, ids: Ids
) -> None:
    with session_scope(engine) as s:
        set_setting(s, "correlate_by_smart_matching", "on")
        set_setting(s, "smart_matching_min_addresses", "3")
    got = _correlate(engine, SMART)  # SMART has only two addresses
    assert got.method is CorrelationMethod.NONE and "needs 3 addresses" in got.detail

    facts = CorrelationFacts.from_headers(
        message_id="<new6@client.example>",
        subject=SMART_SUBJECT,
        addresses=[ANNA, "third@else.example", "fourth@else.example"],
    )
    with session_scope(engine) as s:
        set_setting(s, "smart_matching_min_addresses", "2")
    assert _correlate(engine, facts).method is CorrelationMethod.NONE  # shares only anna
    with session_scope(engine) as s:
        set_setting(s, "smart_matching_min_addresses", "1")
    got = _correlate(engine, facts)  # of the two sharing one address, the newest
    assert (got.method, got.matched_email_id) == (
        CorrelationMethod.SMART_MATCHING,
        ids.smart_one_address,
    )


@pytest.mark.parametrize(
    ("setting", "facts", "method"),
    [
        ("correlate_by_in_reply_to", IN_REPLY_TO, CorrelationMethod.IN_REPLY_TO),
        ("correlate_by_tracking_token", TOKEN_REPLY, CorrelationMethod.TRACKING_TOKEN),
        ("use_tracking_token", TOKEN_REPLY, CorrelationMethod.TRACKING_TOKEN),
        ("correlate_by_thread", REFERENCES, CorrelationMethod.THREAD),
        ("correlate_by_thread", THREAD_KEY, CorrelationMethod.THREAD),
        ("correlate_by_smart_matching", SMART, CorrelationMethod.SMART_MATCHING),
    ],
)
def test_each_method_follows_its_setting(
    engine: Engine, ids: Ids, setting: str, facts: CorrelationFacts, method: CorrelationMethod
) -> None:
    with session_scope(engine) as s:
        set_setting(s, "correlate_by_smart_matching", "on")
    assert _correlate(engine, facts).method is method
    with session_scope(engine) as s:
        set_setting(s, setting, "off")
    got = _correlate(engine, facts)
    assert got.method is CorrelationMethod.NONE, got.detail  # no other method finds it


def test_use_correlation_off_skips_every_method(engine: Engine, ids: Ids) -> None:
    with session_scope(engine) as s:
        set_setting(s, "use_correlation", "false")
    for facts in (IN_REPLY_TO, TOKEN_REPLY, REFERENCES, THREAD_KEY, SMART):
        got = _correlate(engine, facts)
        assert (got.method, got.matched_email_id) == (CorrelationMethod.SKIPPED, None)


# --- the settings as read from the database ------------------------------------------------


def test_incoming_settings_are_read_with_one_query_and_default_like_the_core(
    engine: Engine,
) -> None:
    with session_scope(engine) as s, counted(engine) as statements:
        got = incoming_settings(s)
    assert len(statements) == 1
    assert got.correlation == CorrelationSettings()
    assert got.parties == PartyOptions()
    assert got.token_format == TokenFormat()
    assert got.auto_create_on_promote is True and got.two_activities is True
    assert got.privacy_level is PrivacyLevel.EVERYTHING
    assert got.smart_matching_look_back_days == 90
    assert not got.tracking.track_sent_items


def test_stored_settings_reach_every_reader(engine: Engine) -> None:
    with session_scope(engine) as s:
        for key, value in (
            ("tracking_token_prefix", " ACME: "),
            ("tracking_token_base_number", "20"),
            ("tracking_token_user_digits", "4"),
            ("tracking_token_counter_digits", "5"),
            ("correlate_by_in_reply_to", "off"),
            ("smart_matching_min_addresses", "3"),
            ("unresolve_sender_on_multiple_matches", "yes"),
            ("resolve_for_inactive_records", "on"),
            ("auto_create_records_on_promote", "off"),
            ("track_internal_email_as_two_activities", "off"),
            ("privacy_level", "subject"),
        ):
            set_setting(s, key, value)
    expected_format = TokenFormat(
        prefix="ACME:", base_tracking_number=20, user_digits=4, counter_digits=5
    )
    expected_parties = PartyOptions(
        unresolve_sender_on_multiple_matches=True, resolve_for_inactive=True
    )
    with session_scope(engine) as s:
        got = incoming_settings(s)
        assert token_format(s) == expected_format
        assert party_options(s) == expected_parties
        assert correlation_settings(s) == got.correlation
        lookup = DatabaseIncomingLookup(s)
        assert lookup.token_format() == expected_format
        assert lookup.party_options() == expected_parties
    assert got.token_format == expected_format == got.correlation.token_format
    assert got.correlation.use_in_reply_to is False and got.correlation.use_thread is True
    assert got.correlation.smart.min_address_count == 3
    assert got.parties == expected_parties
    assert (got.auto_create_on_promote, got.two_activities) == (False, False)
    assert got.privacy_level is PrivacyLevel.SUBJECT

    with session_scope(engine) as s:
        set_setting(s, "use_tracking_token", "off")
        assert token_format(s) is None
        assert DatabaseIncomingLookup(s).token_format() is None
        assert correlation_settings(s).token_format is None


def test_a_token_format_the_core_refuses_is_not_stored(engine: Engine) -> None:
    with session_scope(engine) as s:
        set_setting(s, "tracking_token_base_number", "500")
        with pytest.raises(InvalidInput) as exc:
            set_setting(s, "tracking_token_user_digits", "2")
        assert "base tracking number 500 does not fit in 2 user number digits" in str(exc.value)
        assert str(exc.value).startswith("tracking_token_user_digits: '2'")
        set_setting(s, "tracking_token_user_digits", "4")
        with pytest.raises(InvalidInput, match="does not fit in 4 user number digits"):
            set_setting(s, "tracking_token_base_number", "10000")
        with pytest.raises(InvalidInput, match="must not end with a digit"):
            set_setting(s, "tracking_token_prefix", "CRM1")
        assert token_format(s) == TokenFormat(base_tracking_number=500, user_digits=4)


def test_settings_of_correlation_through_the_cli(cli_env: dict[str, str]) -> None:
    listed = json.loads(run(cli_env, "settings", "list", "--json").stdout)
    assert listed["use_correlation"] is True and listed["correlate_by_smart_matching"] is False
    assert listed["tracking_token_prefix"] == "CRM:"
    assert listed["smart_matching_look_back_days"] == 90
    assert listed["privacy_level"] == "everything"  # the existing ones are intact

    res = run(cli_env, "settings", "set", "smart_matching_look_back_days", "30")
    assert res.returncode == 0, res.stderr
    bad = run(cli_env, "settings", "set", "smart_matching_look_back_days", "3651")
    assert bad.returncode == 1 and "from 1 to 3,650" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1

    assert run(cli_env, "settings", "set", "tracking_token_base_number", "999").returncode == 0
    bad = run(cli_env, "settings", "set", "tracking_token_user_digits", "2")
    assert bad.returncode == 1
    assert "base tracking number 999 does not fit in 2 user number digits" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1

    listed = json.loads(run(cli_env, "settings", "list", "--json").stdout)
    assert listed["smart_matching_look_back_days"] == 30
    assert listed["tracking_token_base_number"] == 999
    assert listed["tracking_token_user_digits"] == 3
