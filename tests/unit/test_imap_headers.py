"""Header parsing of the IMAP adapter: typed values out, defects instead of exceptions."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.core.privacy import METADATA_HEADERS
from crmsync.mail.imap.headers import (
    MAX_ADDRESSES_PER_FIELD,
    Address,
    MessageHeaders,
    parse_headers,
    parse_simple_addresses,
)


def parse(raw: bytes, *, subject: bool = False) -> MessageHeaders:
    wanted = (*METADATA_HEADERS, "Subject") if subject else METADATA_HEADERS
    return parse_headers(raw, include_subject=subject, wanted=wanted)


GOOD = (
    b"Message-ID: <abc.123@mail.example.org>\r\n"
    b"In-Reply-To: <parent@example.org>\r\n"
    b"References: <root@example.org>\r\n <parent@example.org>\r\n"
    b"Date: Tue, 03 Mar 2026 10:15:00 +0100\r\n"
    b'From: "Anna Berg" <Anna.Berg@Example.org>\r\n'
    b"To: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jorg@example.com>, bob@example.com\r\n"
    b"Cc: Team: carol@example.com, dave@example.com;\r\n"
    b"List-Id: Sales team <sales.example.org>\r\n"
    b"Auto-Submitted: Auto-Replied; (vacation)\r\n"
    b"Precedence: Bulk\r\n"
    b"Subject: =?utf-8?q?Angebot_f=C3=BCr?= Q2\r\n"
    b"\r\n"
)


def test_well_formed_headers_become_typed_values() -> None:
    h = parse(GOOD, subject=True)
    assert h.defects == ()
    assert h.message_id == "abc.123@mail.example.org"
    assert h.in_reply_to == ("parent@example.org",)
    assert h.parent_id == "parent@example.org"
    assert h.references == ("root@example.org", "parent@example.org")
    assert h.date == datetime(2026, 3, 3, 10, 15, tzinfo=timezone(timedelta(hours=1)))
    assert h.from_ == (Address("Anna.Berg@Example.org", "Anna Berg"),)
    assert h.to == (Address("jorg@example.com", "Jörg Müller"), Address("bob@example.com"))
    assert [a.address for a in h.cc] == ["carol@example.com", "dave@example.com"]
    assert h.list_id == "sales.example.org"
    assert h.auto_submitted == "auto-replied"
    assert h.precedence == "bulk"
    assert h.subject == "Angebot für Q2"


def test_subject_is_never_parsed_when_the_plan_excludes_it() -> None:
    # even if a (buggy) server sent it, a metadata-level parse does not read it ...
    h = parse(GOOD, subject=False)
    assert h.subject is None
    # ... and the unrequested field is flagged, by name only
    assert h.defects == ("server returned fields that were not requested: subject",)


def test_missing_fields_are_empty_not_errors() -> None:
    h = parse(b"From: a@example.org\r\n\r\n")
    assert h.message_id is None and h.date is None and h.to == () and h.references == ()
    assert h.defects == ()
    assert parse(b"").defects == ()


def test_date_without_zone_is_utc_and_bad_date_is_a_defect() -> None:
    assert parse(b"Date: 3 Mar 2026 10:15:00 -0000\r\n\r\n").date == datetime(
        2026, 3, 3, 10, 15, tzinfo=UTC
    )
    h = parse(b"Date: yesterday-ish\r\n\r\n")
    assert h.date is None
    assert h.defects == ("Date: not a valid date",)


def test_message_id_forms() -> None:
    assert parse(b"Message-ID: bare-id@example.org\r\n\r\n").message_id == "bare-id@example.org"
    assert (
        "Message-ID: id without angle brackets"
        in parse(b"Message-ID: bare-id@example.org\r\n\r\n").defects
    )
    assert parse(b"Message-ID: this is not an id\r\n\r\n").message_id is None
    # two Message-IDs: the first wins, with a defect
    h = parse(b"Message-ID: <one@x>\r\nMessage-ID: <two@x>\r\n\r\n")
    assert h.message_id == "one@x"
    assert h.defects == ("Message-ID: 2 occurrences, the first is used",)


def test_nul_bytes_and_non_utf8_are_defects() -> None:
    h = parse(b"From: a\x00b@example.org\r\nTo: M\xfcller <m@example.org>\r\n\r\n")
    assert "NUL bytes removed" in h.defects
    assert "header bytes are not UTF-8" in h.defects
    assert h.from_ == (Address("ab@example.org"),)
    assert h.to[0].address == "m@example.org"


def test_two_thousand_recipients_are_capped_quickly() -> None:
    to = b", ".join(b"Person %d <p%d@example.org>" % (i, i) for i in range(2000))
    started = time.perf_counter()
    h = parse(b"To: " + to + b"\r\n\r\n")
    assert time.perf_counter() - started < 1.0
    assert len(h.to) == MAX_ADDRESSES_PER_FIELD
    assert h.to[0] == Address("p0@example.org", "Person 0")
    assert f"To: 2000 addresses, the first {MAX_ADDRESSES_PER_FIELD} kept" in h.defects


def test_deeply_nested_comments_do_not_recurse_forever() -> None:
    h = parse(b"From: " + b"(" * 5000 + b"x" + b")" * 5000 + b" a@example.org\r\n\r\n")
    assert h.from_ == (Address("a@example.org"),)
    assert any("comments nested" in d for d in h.defects)


def test_bogus_charset_and_broken_encoded_words() -> None:
    h = parse(b"To: =?x-no-such-charset?q?abc?= <a@example.org>\r\n\r\n")
    assert h.to[0].address == "a@example.org"
    assert any(d.startswith("To: ") for d in h.defects)


def test_defects_never_contain_values() -> None:
    secret = b"TOPSECRETVALUE"
    raw = (
        b"Date: " + secret + b"\r\nMessage-ID: " + secret + b"\r\nTo: <" + secret + b"\r\n"
        b"Subject: " + secret + b"\r\n\r\n"
    )
    h = parse(raw)
    assert h.defects
    assert not any("TOPSECRET" in d for d in h.defects)


def test_defect_list_is_bounded() -> None:
    raw = b"".join(b"Date: nonsense %d\r\n" % i for i in range(100)) + b"\r\n"
    h = parse(raw)
    assert len(h.defects) <= 21


header_names = st.sampled_from([*METADATA_HEADERS, "Subject", "X-Other"])
header_values = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from([b"(", b")", b"<", b">", b'"', b"\\", b",", b";", b":", b"@",
                              b"=?", b"?=", b"=?utf-8?q?", b"a", b" ", b"\r\n ", b"\x00",
                              b"\xff"]), max_size=80).map(b"".join),
)  # fmt: skip


# a deadline, so that super-linear parsing (a regex backtracking, a quadratic parser) fails loudly
@settings(max_examples=300, deadline=2000)
@given(st.lists(st.tuples(header_names, header_values), max_size=12), st.booleans())
def test_hostile_header_bytes_never_raise(fields: list[tuple[str, bytes]], subject: bool) -> None:
    raw = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in fields) + b"\r\n"
    h = parse_headers(raw, include_subject=subject)
    assert isinstance(h, MessageHeaders)
    if not subject:
        assert h.subject is None


@settings(max_examples=100, deadline=2000)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse_headers(raw, include_subject=True), MessageHeaders)


simple_pieces = st.lists(
    st.sampled_from(["anna", "Berg", "x.org", "a-b", "O'Neil", "+tag", "@", "<", ">", ",", " ",
                     ".", "..", "\t", "=", "?", "j", "example.test", "Anna Berg <", "> , "]),
    max_size=25,
).map("".join)  # fmt: skip


@settings(max_examples=1000, deadline=2000)
@given(simple_pieces)
def test_fast_address_path_agrees_with_the_full_parser(value: str) -> None:
    from email import policy

    fast = parse_simple_addresses(value)
    if fast is None:
        return
    full = policy.default.header_factory("To", value)
    assert [(a.address, a.name) for a in fast] == [
        (a.addr_spec, a.display_name) for a in full.addresses
    ]


def test_fast_address_path_is_linear_on_adversarial_input() -> None:
    started = time.perf_counter()
    for value in ("a" * 20000 + "!", "a " * 10000 + "<", "a" * 10000 + "@" + "b." * 5000):
        parse_simple_addresses(value)
    assert time.perf_counter() - started < 0.5
