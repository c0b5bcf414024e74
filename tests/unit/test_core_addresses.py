"""Address normalization, the blocklist, and bulk/automatic mail detection."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.core.addresses import (
    AutomaticKind,
    AutomaticReason,
    Blocklist,
    BlocklistError,
    classify_automatic,
    normalize_address,
    normalize_domain,
    parse_address_list,
    parse_blocklist_entry,
    split_address_field,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ann@client.example", "ann@client.example"),
        ("  Ann@Client.EXAMPLE  ", "ann@client.example"),
        ("<ann@client.example>", "ann@client.example"),
        ("Ann Smith <ann@client.example>", "ann@client.example"),
        ('"Smith, Ann" <Ann@Client.example>', "ann@client.example"),
        ('"Ann <boss@evil.example>" <ann@client.example>', "ann@client.example"),
        ("ann@client.example (Ann Smith)", "ann@client.example"),
        ("(nested (comment)) ann@client.example", "ann@client.example"),
        ("=?utf-8?q?J=C3=B6rg?= <joerg@client.example>", "joerg@client.example"),
        ("Ann Smith ann@client.example", "ann@client.example"),  # brackets forgotten
        ("Team: ann@client.example;", "ann@client.example"),  # a group of one
        ("<@relay.example:ann@client.example>", "ann@client.example"),  # source route
        ("ann@client.example.", "ann@client.example"),
        ("Ann <ann@client.example", "ann@client.example"),  # unclosed bracket
        ("ann@xn--mller-kva.example", "ann@müller.example"),
        ("ann@MÜLLER.example", "ann@müller.example"),
        ("jörg@bücher.example", "jörg@bücher.example"),
        ("ann@client\u3002example", "ann@client.example"),  # ideographic full stop
        ('"ann smith"@client.example', '"ann smith"@client.example'),
        ("ann@[192.0.2.1]", "ann@[192.0.2.1]"),
        ("ann@[IPv6:2001:db8::1]", "ann@[ipv6:2001:db8::1]"),
        ("first.last+tag@client.example", "first.last+tag@client.example"),
        ("a..b@client.example", "a..b@client.example"),  # invalid but real
    ],
)
def test_normalize_address(raw, expected) -> None:
    assert normalize_address(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "   ",
        "garbage",
        "ann@",
        "@client.example",
        "ann@@client.example",
        ".ann@client.example",
        "ann.@client.example",
        "ann smith@client.example@",
        "ann@client..example",
        "ann@-",
        "ann@client.example, bob@client.example",  # two addresses are not one
        "undisclosed-recipients:;",
        "ann@xn--zz.example",  # broken punycode
        "ann@" + "a" * 64 + ".example",  # label too long
        "a" * 65 + "@client.example",  # local part too long
        "ann@client.exa mple",
        "ann@cli<ent.example",
        "ann\x00@client.example",
    ],
)
def test_garbage_is_none(raw) -> None:
    assert normalize_address(raw) is None


def test_address_lists_with_groups() -> None:
    field = 'Sales: "Doe, J" <j@x.example>, k@x.example;, L <l@y.example>, junk, J@X.example'
    assert parse_address_list(field) == ("j@x.example", "k@x.example", "l@y.example")
    assert parse_address_list("undisclosed-recipients:;") == ()
    assert parse_address_list(None) == ()
    assert parse_address_list(["a@x.example", "B <b@x.example>", "a@x.example"]) == (
        "a@x.example",
        "b@x.example",
    )


def test_punycode_and_unicode_meet() -> None:
    assert normalize_domain("xn--bcher-kva.example") == normalize_domain("BÜCHER.example")
    # IDNA 2003 would turn ß into ss and merge two different domains; decoding does not.
    assert normalize_domain("straße.example") != normalize_domain("strasse.example")


def test_hostile_fields_take_linear_time() -> None:
    started = time.perf_counter()
    split_address_field("<" + "a" * 60_000)
    split_address_field("(" * 60_000)
    split_address_field('"' * 60_000)
    split_address_field("a@b.example," * 5_000)
    assert time.perf_counter() - started < 2


@given(st.text(max_size=300))
def test_normalize_never_raises_and_is_idempotent(text: str) -> None:
    once = normalize_address(text)
    if once is not None:
        assert normalize_address(once) == once
        assert once == once.strip()


@given(st.lists(st.text(max_size=50), max_size=10))
def test_parse_list_never_raises(values: list[str]) -> None:
    for address in parse_address_list(values):
        assert normalize_address(address) == address


# --- blocklist ------------------------------------------------------------------------------


def test_blocklist_entries() -> None:
    assert parse_blocklist_entry(" Ann@Client.example ") == "ann@client.example"
    assert parse_blocklist_entry("@Client.Example") == "@client.example"
    assert parse_blocklist_entry("*@client.example") == "@client.example"
    assert parse_blocklist_entry("@xn--mller-kva.example") == "@müller.example"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("client.example", "neither an address"),
        ("@", "not a valid domain entry"),
        ("@a@b.example", "not a valid domain entry"),
        ("ann@", "not a valid email address"),
        ("@bad domain.example", "not a valid domain entry"),
    ],
)
def test_bad_blocklist_entries(entry, message) -> None:
    with pytest.raises(BlocklistError, match=message):
        parse_blocklist_entry(entry)


def test_blocklist_reports_every_bad_entry() -> None:
    with pytest.raises(BlocklistError) as info:
        Blocklist.from_entries(["ok@x.example", "bad", "", "@", "@fine.example"])
    assert "'bad'" in str(info.value) and "'@'" in str(info.value)


@pytest.mark.parametrize(
    ("address", "entry"),
    [
        ("ann@rival.example", "@rival.example"),
        ("Ann <ANN@Rival.Example>", "@rival.example"),
        ("ann@mail.rival.example", "@rival.example"),  # subdomains included
        ("ann@a.b.rival.example", "@rival.example"),
        ("spy@client.example", "spy@client.example"),
        ("ann@notrival.example", None),  # a suffix of the name is not a subdomain
        ("ann@rival.example.org", None),
        ("other@client.example", None),
        ("garbage", None),
        (None, None),
    ],
)
def test_blocklist_matching(address, entry) -> None:
    blocklist = Blocklist.from_entries(["@rival.example", "spy@client.example"])
    assert blocklist.match(address) == entry


def test_empty_blocklist_is_falsy() -> None:
    assert not Blocklist()
    assert Blocklist.from_entries(["@x.example"])
    assert Blocklist().first_match(["a@x.example"]) is None


# --- bulk and automatic mail ----------------------------------------------------------------

A, B = AutomaticKind.AUTOMATIC, AutomaticKind.BULK
Why = AutomaticReason


@pytest.mark.parametrize(
    ("headers", "sender", "kind", "reason"),
    [
        ({"List-Id": "News <news.client.example>"}, None, B, Why.LIST_ID),
        ({"list-id": "<news.client.example>"}, None, B, Why.LIST_ID),
        ({"List-Unsubscribe": "<mailto:u@client.example>"}, None, B, Why.LIST_UNSUBSCRIBE),
        ({"Precedence": "bulk"}, None, B, Why.PRECEDENCE),
        ({"Precedence": "List"}, None, B, Why.PRECEDENCE),
        ({"Precedence": "junk"}, None, B, Why.PRECEDENCE),
        ({"Precedence": "auto_reply"}, None, A, Why.PRECEDENCE),
        ({"Auto-Submitted": "auto-replied"}, None, A, Why.AUTO_SUBMITTED),
        ({"Auto-Submitted": "auto-generated; (comment)"}, None, A, Why.AUTO_SUBMITTED),
        ({"Auto-Submitted": "auto-notified"}, None, A, Why.AUTO_SUBMITTED),
        ({"X-Auto-Response-Suppress": "All"}, None, A, Why.AUTO_RESPONSE_SUPPRESS),
        ({"X-Autoreply": "yes"}, None, A, Why.AUTOREPLY_HEADER),
        ({"Return-Path": "<>"}, None, A, Why.NULL_SENDER),
        ({"Return-Path": "< >"}, None, A, Why.NULL_SENDER),
        ({}, "<>", A, Why.NULL_SENDER),
        ({}, "MAILER-DAEMON@mx.client.example", A, Why.MAILER_DAEMON),
        ({}, "Mail Delivery System <Mailer-Daemon@mx.example>", A, Why.MAILER_DAEMON),
        ({}, "MAILER-DAEMON", A, Why.MAILER_DAEMON),
        ({"From": "MAILER-DAEMON@mx.example"}, None, A, Why.MAILER_DAEMON),
        # the first sign wins: a bounce of list mail is automatic, a list post with
        # X-Auto-Response-Suppress is bulk
        ({"List-Id": "<l.example>", "Auto-Submitted": "auto-replied"}, None, A, Why.AUTO_SUBMITTED),
        ({"List-Id": "<l.example>", "X-Auto-Response-Suppress": "OOF"}, None, B, Why.LIST_ID),
    ],
)
def test_classify_automatic(headers, sender, kind, reason) -> None:
    found = classify_automatic(headers, sender=sender)
    assert found is not None
    assert (found.kind, found.reason) == (kind, reason)
    assert found.evidence


@pytest.mark.parametrize(
    ("headers", "sender"),
    [
        ({}, None),
        ({}, "ann@client.example"),
        ({"Auto-Submitted": "no"}, None),
        ({"Auto-Submitted": "No (a person wrote this)"}, None),
        ({"Precedence": "first-class"}, None),
        ({"List-Id": None, "Precedence": "  "}, None),
        ({}, "postmaster@client.example"),  # a role address people answer from
        ({}, "daemon-fan@client.example"),
    ],
)
def test_person_to_person_mail_is_not_automatic(headers, sender) -> None:
    assert classify_automatic(headers, sender=sender) is None


def test_evidence_is_clipped() -> None:
    found = classify_automatic({"List-Id": "x" * 500})
    assert found is not None and len(found.evidence) < 100


_WORDS = st.text(st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=12)


@given(_WORDS, st.lists(_WORDS, min_size=1, max_size=4), st.text(max_size=20))
def test_address_shaped_text_normalizes_idempotently(
    local: str, labels: list[str], name: str
) -> None:
    raw = f'"{name}" <{local}@{".".join(labels)}>'
    once = normalize_address(raw)
    if once is not None:
        assert normalize_address(once) == once
        assert Blocklist.from_entries([once]).match(raw) == once
        domain = once.rpartition("@")[2]
        assert Blocklist.from_entries(["@" + domain]).match(once) == "@" + domain
