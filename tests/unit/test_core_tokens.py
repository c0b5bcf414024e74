"""Tracking tokens: format validation, wrap-around, finding them in subjects, truncation."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.core.tokens import (
    MAX_SUBJECT_LENGTH,
    Token,
    TokenFormat,
    TokenFormatError,
    append_token,
    find_token,
    find_tokens,
    make_token,
    strip_tokens,
)

DEFAULT = TokenFormat()


def test_defaults_are_dynamics() -> None:
    assert (DEFAULT.prefix, DEFAULT.base_tracking_number) == ("CRM:", 0)
    assert (DEFAULT.user_digits, DEFAULT.counter_digits) == (3, 3)
    # "a four character prefix and a 7-digit identifier"
    assert DEFAULT.digits == 7 and DEFAULT.length == 11
    assert make_token(DEFAULT, 1, 1) == Token("CRM:0001001", 1, 1)


def test_counter_wraps_999_to_000() -> None:
    assert make_token(DEFAULT, 12, 999).text == "CRM:0012999"
    assert make_token(DEFAULT, 12, 1000).text == "CRM:0012000"
    assert DEFAULT.next_counter(999) == 0
    assert DEFAULT.next_counter(41) == 42
    nine = TokenFormat(counter_digits=9)
    assert nine.next_counter(999_999_999) == 0
    assert make_token(nine, 0, 1000).text == "CRM:0000000001000"


def test_base_tracking_number_offsets_the_user_segment() -> None:
    fmt = TokenFormat(base_tracking_number=500)
    token = make_token(fmt, 7, 3)
    assert token.text == "CRM:0507003" and token.user_number == 7
    assert find_token(f"Re: {token.text}", fmt) == token
    # a token below the base is another deployment's
    assert find_token("Re: CRM:0499003", fmt) is None
    assert fmt.max_user_number == 499


def test_user_number_that_does_not_fit_is_refused() -> None:
    make_token(DEFAULT, 999, 0)
    with pytest.raises(ValueError, match="does not fit in 3 digits"):
        make_token(DEFAULT, 1000, 0)
    with pytest.raises(ValueError, match="with base 900"):
        make_token(TokenFormat(base_tracking_number=900), 100, 0)
    with pytest.raises(ValueError, match="negative"):
        make_token(DEFAULT, -1, 0)
    with pytest.raises(ValueError, match="negative"):
        make_token(DEFAULT, 1, -1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefix": ""}, "prefix must be 1 to 20 characters"),
        ({"prefix": "x" * 21}, "prefix must be 1 to 20 characters"),
        ({"prefix": "CRM :"}, "spaces or control characters"),
        ({"prefix": "CRM\t"}, "spaces or control characters"),
        ({"prefix": "CRM\x00"}, "spaces or control characters"),
        ({"prefix": "CRM1"}, "must not end with a digit"),
        ({"user_digits": 0}, "user number digits must be a whole number from 1 to 10"),
        ({"user_digits": 11}, "user number digits must be a whole number from 1 to 10"),
        ({"counter_digits": 0}, "counter digits must be a whole number from 1 to 9"),
        ({"counter_digits": 10}, "counter digits must be a whole number from 1 to 9"),
        ({"counter_digits": True}, "counter digits"),
        ({"base_tracking_number": -1}, "base tracking number must be"),
        ({"base_tracking_number": 2_147_483_648}, "2,147,483,647"),
        ({"base_tracking_number": 1000}, "does not fit in 3 user number digits"),
    ],
)
def test_format_validation(kwargs, message) -> None:
    with pytest.raises(TokenFormatError, match=message):
        TokenFormat(**kwargs)


def test_all_errors_are_reported_at_once() -> None:
    with pytest.raises(TokenFormatError) as info:
        TokenFormat(prefix="", user_digits=0, counter_digits=0)
    assert str(info.value).count(";") == 2


@pytest.mark.parametrize(
    "limits",
    [
        {"prefix": "x" * 20},
        {"prefix": "#"},
        {"user_digits": 10, "base_tracking_number": 2_147_483_647},
        {"user_digits": 1, "counter_digits": 1},
    ],
)
def test_limits_are_accepted(limits) -> None:
    TokenFormat(**limits)


@pytest.mark.parametrize(
    "subject",
    [
        "CRM:0001001",
        "Re: Quote CRM:0001001",
        "RE: AW: VS: Fwd: Quote CRM:0001001",
        "AW: [CRM:0001001] Quote",
        "Quote (CRM:0001001) — urgent",
        "crm:0001001 in lower case",
        "Antw.: Quote CRM:0001001.",
        "Quote\tCRM:0001001\r\n",
    ],
)
def test_find_token_wherever_it_sits(subject) -> None:
    assert find_token(subject, DEFAULT) == Token("CRM:0001001", 1, 1)


@pytest.mark.parametrize(
    "subject",
    [
        None,
        "",
        "Quote",
        "CRM:000100",  # too short
        "CRM:00010011",  # too long: a longer number is not cut into a token
        "XCRM:0001001",  # glued to a word
        "CRM:2001001",  # online/offline digit is 0 or 1
        "CRM: 0001001",
        "REF:0001001",
    ],
)
def test_find_token_rejects_lookalikes(subject) -> None:
    assert find_token(subject, DEFAULT) is None


def test_offline_digit_is_read() -> None:
    token = find_token("Re: CRM:1002003", DEFAULT)
    assert token == Token("CRM:1002003", 2, 3, offline=True)


def test_the_last_token_wins() -> None:
    subject = "Fw: Re: old CRM:0001001 new CRM:0002002"
    assert [t.text for t in find_tokens(subject, DEFAULT)] == ["CRM:0001001", "CRM:0002002"]
    assert find_token(subject, DEFAULT) == Token("CRM:0002002", 2, 2)


def test_prefix_is_taken_literally() -> None:
    fmt = TokenFormat(prefix="[#")
    token = make_token(fmt, 3, 4)
    assert token.text == "[#0003004"
    assert find_token(f"Re: {token.text}", fmt) == token
    assert find_token("Re: CRM:0003004", fmt) is None


def test_strip_tokens() -> None:
    assert strip_tokens("Re: Quote  CRM:0001001 ", DEFAULT) == "Re: Quote"


def test_append_token() -> None:
    token = make_token(DEFAULT, 1, 1)
    assert append_token("Quote", token) == "Quote CRM:0001001"
    assert append_token("", token) == "CRM:0001001"
    assert append_token(None, token) == "CRM:0001001"
    assert append_token("  Quote  ", token) == "Quote CRM:0001001"


def test_append_token_is_idempotent() -> None:
    token = make_token(DEFAULT, 1, 1)
    once = append_token("Quote", token)
    assert append_token(once, token) == once


def test_append_token_truncates_the_subject_to_make_room() -> None:
    token = make_token(DEFAULT, 1, 1)
    result = append_token("x" * 300, token)
    assert len(result) == MAX_SUBJECT_LENGTH
    assert result.endswith(" CRM:0001001")
    assert result == "x" * (255 - 12) + " CRM:0001001"
    assert append_token("word " * 60, token, max_len=30) == "word word word wor CRM:0001001"


def test_append_token_drops_a_token_that_alone_is_too_long() -> None:
    token = make_token(DEFAULT, 1, 1)
    assert append_token("Quote", token, max_len=10) == "Quote"
    assert append_token("A long subject", token, max_len=10) == "A long sub"
    assert append_token("Quote", token, max_len=11) == "CRM:0001001"


def test_append_token_cuts_a_too_long_subject_that_already_ends_with_it() -> None:
    token = make_token(DEFAULT, 1, 1)
    result = append_token("y" * 300 + " CRM:0001001", token)
    assert len(result) == 255 and result.endswith(" CRM:0001001")


# --- properties ---------------------------------------------------------------------------

_PREFIX_CHARS = st.characters(
    blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"),
)
prefixes = st.text(_PREFIX_CHARS, min_size=1, max_size=20).filter(
    lambda p: (
        not p[-1].isdigit() and not any(c.isspace() or unicodedata.category(c)[0] == "C" for c in p)
    )
)


@st.composite
def formats(draw: st.DrawFn) -> TokenFormat:
    user_digits = draw(st.integers(1, 10))
    base = draw(st.integers(0, min(10**user_digits - 1, 2_147_483_647)))
    return TokenFormat(
        prefix=draw(prefixes),
        base_tracking_number=base,
        user_digits=user_digits,
        counter_digits=draw(st.integers(1, 9)),
    )


@st.composite
def tokens(draw: st.DrawFn) -> tuple[TokenFormat, Token]:
    fmt = draw(formats())
    user = draw(st.integers(0, fmt.max_user_number))
    counter = draw(st.integers(0, 10**12))
    return fmt, make_token(fmt, user, counter)


@given(tokens())
def test_make_then_find_round_trips(case: tuple[TokenFormat, Token]) -> None:
    fmt, token = case
    assert len(token.text) == fmt.length
    assert 0 <= token.counter < fmt.counter_modulus
    assert find_token(token.text, fmt) == token


@given(tokens(), st.text(max_size=400), st.sampled_from(["", "Re: ", "AW: Fwd: ", "VS: ["]))
def test_append_then_find_round_trips(
    case: tuple[TokenFormat, Token], subject: str, reply_prefix: str
) -> None:
    fmt, token = case
    sent = append_token(subject, token)
    assert len(sent) <= MAX_SUBJECT_LENGTH
    # the reply keeps the subject, with whatever the mail client puts in front
    assert find_token(reply_prefix + sent + "]", fmt) == token


@given(tokens(), st.text(max_size=400), st.integers(0, 300))
def test_append_never_exceeds_max_len(
    case: tuple[TokenFormat, Token], subject: str, max_len: int
) -> None:
    fmt, token = case
    result = append_token(subject, token, max_len=max_len)
    assert len(result) <= max_len
    if len(token.text) <= max_len:
        assert result.endswith(token.text)
        assert find_token(result, fmt) == token
    else:
        assert token.text not in result or token.text in subject


@given(formats(), st.text(max_size=200))
def test_find_never_raises(fmt: TokenFormat, subject: str) -> None:
    for token in find_tokens(subject, fmt):
        assert token.text.startswith(fmt.prefix)
        assert len(token.text) == fmt.length
