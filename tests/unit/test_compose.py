"""compose(): outgoing CRM email as RFC 5322 bytes, read back by crmsync's own parser (the one the
incoming sync uses on the Sent copy) and by the stdlib, which must agree with what was meant."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.header import decode_header
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync.mail.compose import (
    Attachment,
    ComposeError,
    OutgoingMessage,
    compose,
    envelope_recipients,
    new_message_id,
)
from crmsync.mail.message import parse_message

WHEN = datetime(2026, 3, 3, 10, 15, tzinfo=timezone(timedelta(hours=1)))


def outgoing(**fields: Any) -> OutgoingMessage:
    values: dict[str, Any] = {
        "from_address": "anna@example.com",
        "from_name": "Anna Berg",
        "to": ("bo@example.org",),
        "subject": "Offer CRM:0001042",
        "message_id": "<0f1e2d@example.com>",
        "text_body": "Hello Bo,\nthe offer is attached.\n",
        "date": WHEN,
    }
    values.update(fields)
    return OutgoingMessage(**values)


def stdlib(raw: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[return-value]


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def assert_wire_clean(raw: bytes) -> None:
    """CRLF only, 7-bit, no line over the hard limit (RFC 5322 2.1.1)."""
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


# ---------------------------------------------------------------------- structure
def test_a_plain_text_email_has_the_fields_the_crm_stores() -> None:
    raw = compose(outgoing(cc=("cleo@example.net",), in_reply_to="<r1@elsewhere.test>"))
    assert_wire_clean(raw)
    msg = stdlib(raw)
    assert msg["From"].addresses[0].addr_spec == "anna@example.com"
    assert msg["From"].addresses[0].display_name == "Anna Berg"
    assert [a.addr_spec for a in msg["To"].addresses] == ["bo@example.org"]
    assert [a.addr_spec for a in msg["Cc"].addresses] == ["cleo@example.net"]
    assert msg["Subject"] == "Offer CRM:0001042"
    assert msg["Message-ID"] == "<0f1e2d@example.com>"
    assert msg["In-Reply-To"] == "<r1@elsewhere.test>"
    assert msg["Date"].datetime == WHEN
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "text/plain"
    parsed = parse_message(raw)
    assert parsed.subject == "Offer CRM:0001042"
    assert parsed.text_body is not None and "the offer is attached." in parsed.text_body
    assert parsed.html_body is None and parsed.attachments == () and parsed.defects == ()


def test_text_and_html_become_multipart_alternative_and_attachments_multipart_mixed() -> None:
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 40
    raw = compose(
        outgoing(
            html_body="<p>Hello <b>Bo</b></p>",
            attachments=(
                Attachment("Angebot Grüße.pdf", "application/pdf", pdf),
                Attachment("notes.txt", "text/plain; charset=utf-8", "Zeile ä\n".encode()),
            ),
        )
    )
    assert_wire_clean(raw)
    msg = stdlib(raw)
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_parts())
    assert parts[0].get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parts[0].iter_parts()] == ["text/plain", "text/html"]
    assert parts[1].get_filename() == "Angebot Grüße.pdf"
    assert parts[1].get_content() == pdf
    assert parts[2].get_content_type() == "text/plain"
    assert raw.count(b"MIME-Version") == 1  # only the top of the message
    parsed = parse_message(raw)
    assert parsed.html_body is not None and "<b>Bo</b>" in parsed.html_body
    assert parsed.text_body is not None and "the offer is attached." in parsed.text_body
    assert [(a.filename, a.content, a.inline) for a in parsed.attachments] == [
        ("Angebot Grüße.pdf", pdf, False),
        ("notes.txt", "Zeile ä\n".encode(), False),
    ]
    assert parsed.defects == ()


def test_html_only_and_no_body_at_all() -> None:
    html = stdlib(compose(outgoing(text_body=None, html_body="<p>Hi</p>")))
    assert html.get_content_type() == "text/html"
    assert "<p>Hi</p>" in html.get_content()
    empty = stdlib(compose(outgoing(text_body=None)))
    assert empty.get_content_type() == "text/plain"


def test_message_and_multipart_attachments_travel_as_octet_stream() -> None:
    """MIME forbids base64 for message/* and multipart/*, and their content may be 8-bit."""
    forwarded = "Subject: fwd\r\n\r\nGrüße\r\n".encode()
    raw = compose(outgoing(attachments=(Attachment("fwd.eml", "message/rfc822", forwarded),)))
    assert_wire_clean(raw)
    part = list(stdlib(raw).iter_parts())[1]
    assert part.get_content_type() == "application/octet-stream"
    assert part.get_content() == forwarded


def test_bcc_is_in_the_envelope_only() -> None:
    message = outgoing(cc=("cleo@example.net",), bcc=("boss@example.com",))
    raw = compose(message)
    assert b"boss@example.com" not in raw
    assert b"bcc" not in header_block(raw).lower()
    assert envelope_recipients(message) == (
        "bo@example.org",
        "cleo@example.net",
        "boss@example.com",
    )


def test_only_bcc_recipients_get_an_undisclosed_to() -> None:
    raw = compose(outgoing(to=(), bcc=("boss@example.com",)))
    assert b"boss@example.com" not in raw
    assert b"To: undisclosed-recipients:;\r\n" in header_block(raw)


def test_envelope_recipients_are_deduplicated_case_insensitively_in_order() -> None:
    message = outgoing(
        to=("Bo@Example.org", "cleo@example.net"),
        cc=("bo@example.org", " dan@example.net "),
        bcc=("CLEO@example.net", "eve@example.net"),
    )
    assert envelope_recipients(message) == (
        "Bo@Example.org",
        "cleo@example.net",
        "dan@example.net",
        "eve@example.net",
    )


def test_an_international_domain_is_sent_in_its_ascii_form() -> None:
    message = outgoing(to=("info@bücher.de",))
    assert envelope_recipients(message) == ("info@xn--bcher-kva.de",)
    assert b"To: info@xn--bcher-kva.de\r\n" in compose(message)


def test_long_references_and_ids_are_folded_between_ids_never_encoded() -> None:
    """The stdlib's own folder turns a long In-Reply-To into encoded words: threading breaks."""
    long_id = "<" + "b" * 90 + "@mail.example.org>"
    refs = tuple(f"<{n}{'c' * 60}@example.org>" for n in range(5))
    raw = compose(outgoing(in_reply_to=long_id, references=(*refs, long_id)))
    assert_wire_clean(raw)
    assert b"=?" not in header_block(raw)
    msg = stdlib(raw)
    assert msg["In-Reply-To"] == long_id
    assert str(msg["References"]).split() == [*refs, long_id]


def test_ids_stored_without_brackets_get_them() -> None:
    msg = stdlib(compose(outgoing(in_reply_to="r1@elsewhere.test", references=("r0@x.test",))))
    assert msg["In-Reply-To"] == "<r1@elsewhere.test>"
    assert msg["References"] == "<r0@x.test>"


def test_non_ascii_names_are_encoded_words() -> None:
    raw = compose(outgoing(from_name='Jörg "JB" Ünal', subject="Grüße aus Köln"))
    assert raw.isascii()
    assert b"=?utf-8?q?" in header_block(raw)
    msg = stdlib(raw)
    assert msg["From"].addresses[0].display_name == 'Jörg "JB" Ünal'
    assert msg["Subject"] == "Grüße aus Köln"
    assert parse_message(raw).subject == "Grüße aus Köln"


def test_ascii_names_with_specials_are_quoted() -> None:
    msg = stdlib(compose(outgoing(from_name='Berg, Anna "AB" (Sales)')))
    assert msg["From"].addresses[0].display_name == 'Berg, Anna "AB" (Sales)'
    assert msg["From"].addresses[0].addr_spec == "anna@example.com"


def test_text_that_merely_looks_like_an_encoded_word_stays_literal() -> None:
    subject = "Re: =?utf-8?q?not_encoded?= really"
    raw = compose(outgoing(subject=subject, from_name="=?utf-8?q?X?="))
    assert stdlib(raw)["Subject"] == subject
    assert parse_message(raw).subject == subject
    assert stdlib(raw)["From"].addresses[0].display_name == "=?utf-8?q?X?="


def test_bodies_are_utf8_and_line_ends_are_crlf() -> None:
    text = "Grüße\r\nzweite Zeile\rdritte\n.a line starting with a dot\n" + "x" * 2000 + "\n"
    raw = compose(outgoing(text_body=text))
    assert_wire_clean(raw)
    msg = stdlib(raw)
    assert msg.get_content_charset() == "utf-8"
    assert msg.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n").replace("\r", "\n")


def test_new_message_ids_are_unique_and_well_formed() -> None:
    ids = {new_message_id("example.com") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"<[0-9a-f]{32}@example\.com>", i) for i in ids)
    assert new_message_id("bücher.de").endswith("@xn--bcher-kva.de>")
    with pytest.raises(ComposeError):
        new_message_id("example.com>\r\nBcc: x@y")


def test_sequences_may_be_lists_but_not_a_bare_string() -> None:
    message = outgoing(to=["bo@example.org"], references=["<a@b>"])
    assert message.to == ("bo@example.org",)
    with pytest.raises(TypeError, match="to must be a sequence"):
        outgoing(to="bo@example.org")


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "fields",
    [
        {"to": ()},
        {"to": ("not-an-address",)},
        {"to": ("bo@example.org>, eve@evil.test",)},
        {"to": ('"quoted local"@example.org',)},
        {"to": ("jörg@example.org",)},
        {"cc": ("cleo@",)},
        {"bcc": ("@example.org",)},
        {"from_address": "anna"},
        {"message_id": "no-brackets-and-no-at"},
        {"message_id": "<two@at@signs>"},
        {"in_reply_to": "<has space@x>"},
        {"date": datetime(2026, 3, 3, 10, 15)},  # naive
        {"attachments": (Attachment("x.bin", "application", b"x"),)},
        {"attachments": (Attachment("", "application/pdf", b"x"),)},
        {"subject": "bad \ud800 surrogate"},
        {"text_body": "bad \udcff surrogate"},
    ],
)
def test_invalid_fields_are_refused_with_a_compose_error(fields: dict[str, Any]) -> None:
    with pytest.raises(ComposeError):
        compose(outgoing(**fields))


def test_a_compose_error_is_a_value_error_that_says_what_to_fix() -> None:
    with pytest.raises(ValueError, match=r"the To address 'bo@' is not a valid email address"):
        compose(outgoing(to=("bo@",)))
    with pytest.raises(ComposeError, match="no recipient"):
        compose(outgoing(to=()))


INJECTIONS = ["\r\nBcc: eve@evil.test", "\nX-Injected: 1", "\r", "\x00", "a\x0bb", "\x1b[31m"]
HEADER_FIELDS = [
    "subject",
    "from_name",
    "from_address",
    "to",
    "cc",
    "bcc",
    "message_id",
    "in_reply_to",
    "references",
    "filename",
    "content_type",
]


def _inject(field: str, bad: str) -> OutgoingMessage:
    if field in ("to", "cc", "bcc"):
        return outgoing(**{field: ("ok@example.org", f"bo@example.org{bad}")})
    if field == "from_address":
        return outgoing(from_address=f"anna@example.com{bad}")
    if field in ("message_id", "in_reply_to"):
        return outgoing(**{field: f"<x{bad}@example.com>"})
    if field == "references":
        return outgoing(references=("<a@b>", f"<x@y>{bad}"))
    if field == "filename":
        return outgoing(attachments=(Attachment(f"a{bad}.pdf", "application/pdf", b"x"),))
    if field == "content_type":
        return outgoing(attachments=(Attachment("a.pdf", f"application/pdf{bad}", b"x"),))
    return outgoing(**{field: f"Hello{bad} there"})


@pytest.mark.parametrize("field", HEADER_FIELDS)
@pytest.mark.parametrize("bad", INJECTIONS)
def test_control_characters_in_any_header_value_are_refused(field: str, bad: str) -> None:
    with pytest.raises(ComposeError):
        compose(_inject(field, bad))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(HEADER_FIELDS),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    breaker=st.sampled_from(["\r", "\n", "\r\n", "\x00", "\x7f", "\x1f"]),
)
def test_no_value_with_a_line_break_or_control_ever_reaches_the_wire(
    field: str, before: str, after: str, breaker: str
) -> None:
    """Whatever surrounds it, a control character in a header value is refused (never folded,
    stripped or encoded into something a receiver might split into a new field)."""
    with pytest.raises(ComposeError):
        compose(_inject(field, before + breaker + after))


# ---------------------------------------------------------------------- round trips
SUBJECT_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")) | st.sampled_from(" \t=?_"),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(subject=SUBJECT_TEXT)
def test_any_subject_round_trips(subject: str) -> None:
    """The stdlib reads back exactly the subject given; crmsync's parser reads the same text
    after its own clean-up of incoming subjects (controls such as TAB removed, ends trimmed)."""
    raw = compose(outgoing(subject=subject))
    assert_wire_clean(raw)
    assert max(len(line) for line in header_block(raw).split(b"\r\n")) <= 998
    assert str(stdlib(raw)["Subject"]) == subject
    expected = re.sub(r"[\t\x80-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]", "", subject)
    assert parse_message(raw).subject == expected.strip()


@settings(max_examples=200, deadline=None)
@given(name=st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=80))
def test_any_sender_name_round_trips(name: str) -> None:
    """Exact by the RFC 2047 decoder; the stdlib's address parser (which the incoming sync
    uses) differs only in whitespace: it collapses runs and may add one between two words."""
    raw = compose(outgoing(from_name=name))
    msg = stdlib(raw)
    assert msg["From"].addresses[0].addr_spec == "anna@example.com"
    shown = msg["From"].addresses[0].display_name
    assert re.sub(r"\s", "", shown) == re.sub(r"\s", "", name)
    if not name.strip():
        assert shown == ""
        return
    field = header_block(raw).split(b"From: ", 1)[1].split(b"\r\nTo:")[0].decode()
    phrase = field.rsplit(" <", 1)[0].replace("\r\n", "")
    decoded = "".join(
        part.decode(charset or "ascii") if isinstance(part, bytes) else part
        for part, charset in decode_header(phrase)
    )
    if phrase.startswith('"'):
        decoded = decoded[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    assert decoded == name.strip()


def test_a_long_name_is_split_between_its_words() -> None:
    """Split after a space, the stdlib's extra space between two encoded words only doubles
    a space that is there anyway (and address parsing collapses space runs)."""
    for name in (
        "Maximiliane Müller-Lüdenscheidt von Österreich-Ungarn zu Großenbrode",
        "李小龍 " * 8,
    ):
        display = stdlib(compose(outgoing(from_name=name)))["From"].addresses[0].display_name
        assert re.sub(r" +", " ", display) == name.strip()


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=500),
    filename=st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=60
    ).filter(lambda s: s.strip() != ""),
    data=st.binary(max_size=2000),
)
def test_bodies_and_attachments_round_trip(text: str, filename: str, data: bytes) -> None:
    raw = compose(outgoing(text_body=text, attachments=(Attachment(filename, "x-app/x", data),)))
    assert_wire_clean(raw)
    msg = stdlib(raw)
    body, attachment = msg.iter_parts()
    assert body.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n").replace(
        "\r", "\n"
    ) + ("" if text.replace("\r", "\n").endswith("\n") else "\n")
    assert attachment.get_payload(decode=True) == data
    assert attachment.get_filename() == filename.strip()


def test_composing_is_deterministic_except_for_the_boundaries() -> None:
    message = outgoing(html_body="<p>x</p>", date=datetime(2026, 1, 1, tzinfo=UTC))
    strip = re.compile(rb"=+[0-9]+==")
    assert strip.sub(b"B", compose(message)) == strip.sub(b"B", compose(message))
