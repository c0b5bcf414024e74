"""The pure parts of the IDLE client: response lines, capabilities, new-mail counting, quoting."""

from __future__ import annotations

import base64

import pytest

from crmsync.mail.imap.idle import (
    MailCounter,
    Response,
    capabilities_of,
    literal_size,
    parse_response,
    quoted,
    sasl_plain,
)


def test_tagged_status_with_a_response_code() -> None:
    r = parse_response(b"P3 NO [AUTHENTICATIONFAILED] Authentication failed.")
    assert (r.tag, r.kind, r.code, r.code_args, r.text) == (
        "P3",
        "NO",
        "AUTHENTICATIONFAILED",
        "",
        "Authentication failed.",
    )
    assert not r.untagged and not r.continuation


def test_untagged_numbered_data() -> None:
    assert parse_response(b"* 12 EXISTS") == Response("*", "EXISTS", 12)
    assert parse_response(b"* 0 recent") == Response("*", "RECENT", 0)
    assert parse_response(b"* 3 EXPUNGE").number == 3


def test_untagged_status_code_with_arguments() -> None:
    r = parse_response(b"* OK [UIDNEXT 42] Predicted next UID")
    assert (r.kind, r.code, r.code_args, r.text) == ("OK", "UIDNEXT", "42", "Predicted next UID")


def test_continuation_and_bye() -> None:
    assert parse_response(b"+ idling") == Response("+", "", text="idling")
    assert parse_response(b"+").continuation
    bye = parse_response(b"* BYE Server shutting down.")
    assert (bye.kind, bye.text) == ("BYE", "Server shutting down.")


def test_text_is_printable_and_bounded_to_the_line() -> None:
    r = parse_response(b"* OK hello\x07\x1b[31m w\xc3\xb6rld")
    assert "\x07" not in r.text and "\x1b" not in r.text and "wörld" in r.text


@pytest.mark.parametrize("line", [b"", b"garbage", b"P1", b"(x) OK", b"* "])
def test_lines_that_are_no_response_are_refused(line: bytes) -> None:
    with pytest.raises(ValueError):
        parse_response(line)


def test_capabilities_from_data_and_from_a_code() -> None:
    data = parse_response(b"* CAPABILITY IMAP4rev1 idle AUTH=PLAIN")
    assert capabilities_of(data) == {"IMAP4REV1", "IDLE", "AUTH=PLAIN"}
    greeting = parse_response(b"* OK [CAPABILITY IMAP4rev1 SASL-IR IDLE] Dovecot ready.")
    assert capabilities_of(greeting) == {"IMAP4REV1", "SASL-IR", "IDLE"}
    assert capabilities_of(parse_response(b"* OK ready")) is None


def test_literal_sizes() -> None:
    assert literal_size(b"* 1 FETCH (BODY[] {123}") == 123
    assert literal_size(b"P1 LOGIN {5+}") == 5
    assert literal_size(b"* OK {not a literal} here") is None
    assert literal_size(b"* 1 EXISTS") is None


def test_exists_above_the_known_count_is_new_mail() -> None:
    counter = MailCounter(exists=3)
    assert counter.feed(parse_response(b"* 4 EXISTS"))
    assert not counter.feed(parse_response(b"* 4 EXISTS"))  # repeated: nothing new
    assert counter.exists == 4


def test_a_smaller_exists_after_expunge_is_not_new_mail() -> None:
    counter = MailCounter(exists=4)
    assert not counter.feed(parse_response(b"* 2 EXPUNGE"))
    assert counter.exists == 3
    assert not counter.feed(parse_response(b"* 3 EXISTS"))
    assert not counter.feed(parse_response(b"* 2 EXISTS"))  # shrinking without EXPUNGE either


def test_an_expunge_and_an_arrival_together_still_count_as_new_mail() -> None:
    counter = MailCounter(exists=5)
    assert not counter.feed(parse_response(b"* 1 EXPUNGE"))
    assert counter.feed(parse_response(b"* 5 EXISTS"))  # same count as before, one new


def test_growing_recent_is_new_mail_and_other_responses_are_not() -> None:
    counter = MailCounter(exists=1, recent=0)
    assert counter.feed(parse_response(b"* 1 RECENT"))
    assert not counter.feed(parse_response(b"* 0 RECENT"))
    for line in (b"* 1 FETCH (FLAGS (\\Seen))", b"* OK Still here", b"P4 OK done"):
        assert not counter.feed(parse_response(line))


def test_quoting_escapes_and_refuses_what_needs_a_literal() -> None:
    assert quoted("anna") == b'"anna"'
    assert quoted('p"a\\ss word') == b'"p\\"a\\\\ss word"'
    assert quoted("") == b'""'
    for needs_literal in ("wörd", "a\r\nb", "a\nb", "a\0b"):
        assert quoted(needs_literal) is None


def test_sasl_plain_initial_response() -> None:
    raw = base64.b64decode(sasl_plain("anna", "sälaisuus"))
    assert raw == b"\0anna\0s\xc3\xa4laisuus"
    with pytest.raises(ValueError):
        sasl_plain("anna", "a\0b")
