"""Party resolution: precedence, the owner's own record, inactive records, too many matches."""

from __future__ import annotations

import pytest

from crmsync.core.parties import (
    SENDER_MATCH_LIMIT,
    AutoCreate,
    Candidate,
    PartyChoice,
    PartyOptions,
    PartyRole,
    RecordKind,
    Resolution,
    auto_create_decision,
    rank,
    record_kind,
    resolve_parties,
    resolve_recipient,
    resolve_sender,
)

ADDRESS = "ann@client.example"
ME = "user-me"


def c(record_type: str, record_id: str, *, active: bool = True, owner: str | None = None):
    return Candidate(record_type, record_id, active=active, owner_id=owner)


def sender(candidates, **kwargs) -> PartyChoice:
    return resolve_sender(ADDRESS, candidates, mailbox_owner_id=ME, **kwargs)


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        ([c("contact", "c"), c("user", "u")], "u"),
        ([c("account", "a"), c("contact", "c")], "c"),
        ([c("lead", "l"), c("account", "a")], "a"),
        ([c("team", "t"), c("lead", "l")], "l"),
        ([c("business_unit", "b"), c("team", "t")], "t"),
        ([c("queue", "q"), c("business_unit", "b")], "b"),
        ([c("custom_thing", "x"), c("business_unit", "b")], "b"),
        ([c("queue", "q"), c("custom_thing", "x")], "q"),  # others keep the service's order
        ([c("custom_thing", "x"), c("queue", "q")], "x"),
        ([c("lead", "l"), c("account", "a"), c("contact", "c"), c("user", "u")], "u"),
    ],
)
def test_sender_precedence(candidates, expected) -> None:
    choice = sender(candidates)
    assert choice.resolution is Resolution.RESOLVED
    assert choice.record_ids == (expected,)
    assert choice.role is PartyRole.FROM and choice.address == ADDRESS


def test_a_record_owned_by_the_mailbox_owner_wins_over_the_order() -> None:
    candidates = [c("user", "u"), c("contact", "c1"), c("lead", "mine", owner=ME)]
    choice = sender(candidates)
    assert choice.record_ids == ("mine",)
    assert "owned by the mailbox owner" in choice.reason


def test_among_owned_records_the_order_still_applies() -> None:
    candidates = [c("lead", "l", owner=ME), c("contact", "k", owner=ME), c("user", "u")]
    assert sender(candidates).record_ids == ("k",)


def test_without_a_mailbox_owner_only_the_order_counts() -> None:
    candidates = [c("lead", "mine", owner=ME), c("contact", "k")]
    assert resolve_sender(ADDRESS, candidates).record_ids == ("k",)


def test_inactive_users_are_never_matched() -> None:
    everything = PartyOptions(resolve_for_inactive=True)
    choice = sender([c("user", "u", active=False)], options=everything)
    assert choice.resolution is Resolution.UNRESOLVED and choice.record_ids == ()
    assert "inactive users" in choice.reason
    choice = sender([c("user", "u", active=False), c("contact", "k")], options=everything)
    assert choice.record_ids == ("k",)


def test_inactive_records_only_with_the_option_and_after_active_ones() -> None:
    inactive = [c("contact", "k", active=False)]
    assert sender(inactive).resolution is Resolution.UNRESOLVED
    assert "inactive" in sender(inactive).reason
    with_option = PartyOptions(resolve_for_inactive=True)
    assert sender(inactive, options=with_option).record_ids == ("k",)
    # an active lead beats an inactive contact, even one the mailbox owner owns
    mixed = [c("contact", "k", active=False, owner=ME), c("lead", "l")]
    assert sender(mixed, options=with_option).record_ids == ("l",)


def test_equipment_is_skipped() -> None:
    assert sender([c("equipment", "e")]).resolution is Resolution.UNRESOLVED
    assert sender([c("equipment", "e"), c("team", "t")]).record_ids == ("t",)


def test_fewer_than_100_matches_resolve_100_or_more_do_not() -> None:
    assert SENDER_MATCH_LIMIT == 100
    many = [c("contact", f"k{i}") for i in range(99)]
    assert sender(many).record_ids == ("k0",)
    too_many = [c("contact", f"k{i}") for i in range(100)]
    choice = sender(too_many)
    assert choice.resolution is Resolution.UNRESOLVED and choice.record_ids == ()
    assert "100 records" in choice.reason
    assert sender([*too_many, c("user", "u")]).resolution is Resolution.UNRESOLVED


def test_unresolve_sender_on_multiple_matches() -> None:
    option = PartyOptions(unresolve_sender_on_multiple_matches=True)
    choice = sender([c("lead", "l"), c("contact", "k")], options=option)
    assert choice.resolution is Resolution.AMBIGUOUS
    assert choice.record_ids == ("k", "l")  # the choices, best first
    # one usable match is not "multiple"
    one = sender([c("contact", "k"), c("user", "gone", active=False)], options=option)
    assert one.resolution is Resolution.RESOLVED and one.record_ids == ("k",)


def test_unknown_and_invalid_senders() -> None:
    unknown = sender([])
    assert unknown.resolution is Resolution.UNRESOLVED and unknown.matches == 0
    invalid = resolve_sender("not an address", [c("contact", "k")])
    assert invalid.resolution is Resolution.UNRESOLVED
    assert invalid.address == "not an address"
    assert resolve_sender(None, []).resolution is Resolution.UNRESOLVED


def test_sender_address_is_canonical() -> None:
    choice = resolve_sender("Ann <ANN@Client.Example>", [c("contact", "k")])
    assert choice.address == ADDRESS


def test_recipients_resolve_to_all_matching_records() -> None:
    candidates = [c("lead", "l"), c("contact", "k"), c("user", "gone", active=False)]
    choice = resolve_recipient(PartyRole.CC, ADDRESS, candidates)
    assert choice.resolution is Resolution.RESOLVED
    assert choice.record_ids == ("k", "l")
    assert choice.role is PartyRole.CC and choice.matches == 3


def test_recipients_unresolved_on_multiple_matches_with_the_option() -> None:
    option = PartyOptions(unresolve_recipients_on_multiple_matches=True)
    choice = resolve_recipient(
        PartyRole.TO, ADDRESS, [c("lead", "l"), c("contact", "k")], options=option
    )
    assert choice.resolution is Resolution.AMBIGUOUS and choice.record_ids == ("k", "l")
    single = resolve_recipient(PartyRole.TO, ADDRESS, [c("lead", "l")], options=option)
    assert single.resolution is Resolution.RESOLVED


def test_recipient_limits() -> None:
    too_many = [c("account", f"a{i}") for i in range(SENDER_MATCH_LIMIT)]
    assert resolve_recipient(PartyRole.TO, ADDRESS, too_many).resolution is Resolution.UNRESOLVED
    assert resolve_recipient(PartyRole.TO, ADDRESS, []).resolution is Resolution.UNRESOLVED
    inactive = [c("contact", "k", active=False)]
    assert resolve_recipient(PartyRole.TO, ADDRESS, inactive).resolution is Resolution.UNRESOLVED
    assert resolve_recipient(PartyRole.TO, "junk", []).resolution is Resolution.UNRESOLVED


def test_resolve_parties_in_header_order() -> None:
    candidates = {
        "ann@client.example": [c("contact", "k-ann")],
        "me@ourco.example": [c("user", ME)],
        "bob@client.example": [c("lead", "l-bob"), c("contact", "k-bob")],
    }
    parties = resolve_parties(
        sender="Ann <ann@client.example>",
        to=["me@ourco.example", "ME@ourco.example"],
        cc=["bob@client.example", "nobody@else.example", "garbage"],
        bcc=["ann@client.example"],
        candidates=candidates,
        mailbox_owner_id=ME,
    )
    summary = [(p.role.value, p.address, p.record_ids, p.resolution.value) for p in parties]
    assert summary == [
        ("from", "ann@client.example", ("k-ann",), "resolved"),
        ("to", "me@ourco.example", (ME,), "resolved"),
        ("cc", "bob@client.example", ("k-bob", "l-bob"), "resolved"),
        ("cc", "nobody@else.example", (), "unresolved"),
        ("cc", "garbage", (), "unresolved"),
        ("bcc", "ann@client.example", ("k-ann",), "resolved"),
    ]


def test_rank_is_deterministic() -> None:
    candidates = [c("contact", "k2"), c("contact", "k1"), c("contact", "mine", owner=ME)]
    assert [x.record_id for x in rank(candidates, ME)] == ["mine", "k2", "k1"]


def test_record_kind() -> None:
    assert record_kind("contact") is RecordKind.CONTACT
    assert record_kind("business_unit") is RecordKind.BUSINESS_UNIT
    assert record_kind("opportunity") is RecordKind.OTHER


# --- auto-create ----------------------------------------------------------------------------


def unknown(address: str = ADDRESS) -> PartyChoice:
    return resolve_sender(address, [])


@pytest.mark.parametrize("kind", [AutoCreate.CONTACT, AutoCreate.LEAD])
def test_auto_create_for_an_unknown_sender(kind) -> None:
    decision = auto_create_decision(unknown(), user_option=kind, can_create=True)
    assert decision.create is kind
    assert ADDRESS in decision.reason


@pytest.mark.parametrize(
    ("party", "option", "can_create", "org_allows", "why"),
    [
        (unknown(), AutoCreate.NONE, True, True, "option does not create"),
        (unknown(), AutoCreate.CONTACT, False, True, "may not create a contact"),
        (unknown(), AutoCreate.LEAD, True, False, "organization does not create"),
        (resolve_sender(ADDRESS, [c("contact", "k")]), AutoCreate.CONTACT, True, True, "already"),
        (
            resolve_sender(
                ADDRESS,
                [c("contact", "k"), c("lead", "l")],
                options=PartyOptions(unresolve_sender_on_multiple_matches=True),
            ),
            AutoCreate.CONTACT,
            True,
            True,
            "duplicate",
        ),
        (
            resolve_sender(ADDRESS, [c("contact", "k", active=False)]),
            AutoCreate.CONTACT,
            True,
            True,
            "exist already",
        ),
        (unknown("garbage"), AutoCreate.CONTACT, True, True, "not a valid"),
    ],
)
def test_no_auto_create(party, option, can_create, org_allows, why) -> None:
    decision = auto_create_decision(
        party, user_option=option, can_create=can_create, org_allows=org_allows
    )
    assert decision.create is AutoCreate.NONE
    assert why in decision.reason
