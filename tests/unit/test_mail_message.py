"""The whole-message parser: bounded, never raising, and right on what matters to the CRM."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync.mail.message import (
    MessageParseError,
    ParsedAttachment,
    ParsedMessage,
    parse_message,
)
from tests.fixtures.mail_corpus import PDF, CorpusCase, corpus, message, mime_message, part

CASES = {case.name: case for case in corpus()}


def parsed(name: str) -> ParsedMessage:
    return parse_message(CASES[name].raw)


def test_corpus_is_big_enough_and_fast_to_build() -> None:
    assert len(CASES) >= 55
    assert sum(len(c.raw) for c in CASES.values()) < 15 * 1024 * 1024
    assert sum(not c.parseable for c in CASES.values()) >= 3


@pytest.mark.parametrize("case", corpus(), ids=lambda c: c.name)
def test_every_corpus_case(case: CorpusCase) -> None:
    if not case.parseable:
        with pytest.raises(MessageParseError) as caught:
            parse_message(case.raw)
        text = str(caught.value)
        assert text[:1].isupper() and text.endswith(".") and len(text) > 20
        return
    result = parse_message(case.raw)
    assert isinstance(result, ParsedMessage)
    assert result.size == len(case.raw)
    assert isinstance(result.subject, str) and len(result.subject) <= 400
    assert not re.search(r"[\x00-\x1f\x7f]", result.subject)
    for body in (result.text_body, result.html_body):
        assert body is None or (isinstance(body, str) and "\x00" not in body)
        assert body is None or len(body) <= 1_000_000
    assert len(result.defects) <= 21
    assert all(isinstance(d, str) and 0 < len(d) <= 200 for d in result.defects)
    for attachment in result.attachments:
        assert isinstance(attachment, ParsedAttachment)
        assert 0 < len(attachment.filename) <= 255
        assert not re.search(r"[/\\\x00-\x1f\x7f]", attachment.filename)
        assert re.fullmatch(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+", attachment.content_type)
        assert re.fullmatch(r"[0-9a-f]{64}", attachment.sha256)
        if attachment.content or attachment.size == 0:
            assert attachment.size == len(attachment.content)
            assert attachment.sha256 == hashlib.sha256(attachment.content).hexdigest()
        else:  # over the limit: only the metadata is kept
            assert attachment.size > 5 * 1024 * 1024
        assert attachment.content_id is None or 0 < len(attachment.content_id) <= 255
        assert not attachment.inline or attachment.content_id is not None
    # every text is storable as PostgreSQL text (UTF-8, no NUL)
    for text in (result.subject, result.text_body or "", result.html_body or ""):
        text.encode("utf-8")


def test_normal_message_has_no_defects() -> None:
    result = parsed("plain")
    assert result.subject == "Meeting tomorrow"
    assert result.text_body == "Hello Bob,\r\n\r\nsee you tomorrow.\r\n"
    assert result.html_body is None
    assert result.attachments == ()
    assert result.defects == ()
    for name in ("alternative_text_html", "mixed_alternative_related", "non_ascii_everything"):
        assert parsed(name).defects == (), name


def test_text_and_html_from_multipart_alternative() -> None:
    result = parsed("alternative_text_html")
    assert result.text_body == "Plain body."
    assert result.html_body == "<p>HTML body.</p>"
    assert result.attachments == ()


def test_nested_related_alternative_with_attachment() -> None:
    result = parsed("mixed_alternative_related")
    assert (result.text_body, result.html_body) == ("Plain body.", "<p>HTML body.</p>")
    assert [a.filename for a in result.attachments] == ["attachment-1.png", "report.pdf"]
    assert result.attachments[1].content == PDF


def test_rfc2231_filenames_decoded() -> None:
    (attachment,) = parsed("filename_rfc2231").attachments
    assert attachment.filename == "Tarjous ää €.pdf"
    assert attachment.content_type == "application/pdf"
    (attachment,) = parsed("filename_rfc2231_continuations").attachments
    assert attachment.filename == "Päiväkirja.pdf"
    (attachment,) = parsed("filename_encoded_word").attachments
    assert attachment.filename == "Lasku ä.pdf"


def test_path_traversal_filename_becomes_a_base_name() -> None:
    (attachment,) = parsed("filename_path_traversal").attachments
    assert attachment.filename == "passwd"
    windows = mime_message(
        [part(['Content-Disposition: attachment; filename="..\\..\\boot.ini"'], b"x")]
    )
    assert parse_message(windows).attachments[0].filename == "boot.ini"
    dots = mime_message([part(['Content-Disposition: attachment; filename=".."'], b"x")])
    assert parse_message(dots).attachments[0].filename == "attachment-1.txt"


def test_control_characters_and_bidi_overrides_removed_from_filename() -> None:
    (attachment,) = parsed("filename_control_chars").attachments
    assert attachment.filename == "invoice[31mgpj.exe"


def test_missing_filename_gets_a_name_from_the_type() -> None:
    (attachment,) = parsed("filename_missing").attachments
    assert attachment.filename == "attachment-1.pdf"
    (calendar,) = parsed("calendar_invite").attachments
    assert (calendar.filename, calendar.content_type) == ("attachment-1.ics", "text/calendar")


def test_latin1_8bit_subject_decoded() -> None:
    result = parsed("raw_latin1_subject")
    assert result.subject == "Hyvää päivää"
    assert any("8-bit" in d for d in result.defects)
    assert parsed("raw_utf8_subject").subject == "Hyvää päivää, 会議 🎉"
    assert parsed("raw_utf8_subject").defects == ()


def test_encoded_word_subjects() -> None:
    assert parsed("non_ascii_everything").subject == "Hyvää päivää 会議 🎉"
    assert parsed("iso2022jp_body").subject == "会議"
    assert parsed("iso2022jp_body").text_body == "会議の件です。\r\n"
    bad = parsed("encoded_word_bad_base64")
    assert bad.subject.startswith("Hyvää päivää") and bad.subject.endswith("tail")
    assert any("base64" in d for d in bad.defects)
    unknown = parsed("encoded_word_unknown_charset")
    assert unknown.subject == "Qapla' rest"
    assert any("unknown" in d for d in unknown.defects)


def test_bad_body_charsets_fall_back() -> None:
    latin = parsed("utf8_declared_latin1_body")
    assert latin.text_body == "Hyvää päivää, näkemiin!\r\n"
    assert len(latin.defects) == 1
    assert parsed("unknown_charset").text_body == "Grüße\r\n"
    assert parsed("unknown_charset").defects
    assert parsed("charset_quote_garbage").text_body == "Ääkköset\r\n"
    assert parsed("html_body_with_8bit_no_charset").html_body == "<p>Käyttäjä</p>\r\n"


def test_broken_base64_gives_a_defect_and_content() -> None:
    for name in ("base64_bad_padding", "base64_illegal_chars", "base64_truncated"):
        result = parsed(name)
        assert result.text_body == "Plain body."
        (attachment,) = result.attachments
        assert attachment.content, name
        assert any("base64" in d for d in result.defects), name
    assert parsed("base64_bad_padding").attachments[0].content == b"Hello, world! 12345"
    assert parsed("base64_illegal_chars").attachments[0].content == b"Hello, world!"
    assert PDF.startswith(parsed("base64_truncated").attachments[0].content)


def test_quoted_printable_with_bad_escapes_keeps_them() -> None:
    result = parsed("qp_bad_escapes")
    assert result.text_body is not None
    assert result.text_body.startswith("Price = 5 =ZZ")
    assert result.text_body.endswith("soft break, ä\r\n")
    assert any("quoted-printable" in d for d in result.defects)


def test_uuencoded_attachment() -> None:
    (attachment,) = parsed("uuencode_attachment").attachments
    assert (attachment.filename, attachment.content) == ("old.pdf", PDF)


def test_inline_image_flagged_with_content_id() -> None:
    result = parsed("inline_image_cid")
    assert result.html_body is not None and "cid:logo@example.com" in result.html_body
    (image,) = result.attachments
    assert image.inline
    assert image.content_id == "logo@example.com"
    assert image.content_type == "image/png"
    assert image.content.startswith(b"\x89PNG")
    assert not parsed("only_attachment").attachments[0].inline


def test_attachment_over_the_limit_keeps_metadata_only() -> None:
    result = parsed("attachment_6mb")
    (big,) = result.attachments
    expected = bytes(range(256)) * (6 * 1024 * 1024 // 256)
    assert big.content == b""
    assert big.size == len(expected)
    assert big.sha256 == hashlib.sha256(expected).hexdigest()
    assert big.filename == "big.bin"
    assert any("over the" in d and "limit" in d for d in result.defects)
    small_limit = parse_message(CASES["only_attachment"].raw, max_attachment_bytes=10)
    assert small_limit.attachments[0].content == b""
    assert small_limit.attachments[0].size == len(PDF)


def test_deep_nesting_is_cut_without_recursion_error() -> None:
    assert parsed("nested_5").text_body == "deep text"
    assert parsed("nested_5").defects == ()
    result = parsed("nested_30")
    assert result.text_body is None
    assert any("nested deeper than 20" in d for d in result.defects)
    assert parse_message(CASES["nested_30"].raw, max_depth=40).text_body == "deep text"


def test_thousands_of_nesting_levels_do_not_crash() -> None:
    inner = b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    for level in range(3000):
        b = b"L%d" % level
        inner = (
            b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n\r\n--' + b + b"\r\n"
            + inner + b"\r\n--" + b + b"--\r\n"
        )  # fmt: skip
    result = parse_message(b"Subject: deep\r\n" + inner)
    assert result.subject == "deep"
    assert result.defects


def test_too_many_parts_stops_with_a_defect() -> None:
    raw = mime_message([part(["Content-Type: text/plain"], b"p%d" % i) for i in range(30)])
    result = parse_message(raw, max_parts=10)
    assert any("more than 10 parts" in d for d in result.defects)
    assert len(result.attachments) < 10


def test_message_rfc822_attachment() -> None:
    result = parsed("message_rfc822_attachment")
    (forwarded,) = result.attachments
    assert forwarded.content_type == "message/rfc822"
    assert forwarded.filename == "Original message.eml"
    assert b"Subject: Original message" in forwarded.content
    assert b"Hello Bob" in forwarded.content


def test_structural_oddities() -> None:
    assert parsed("only_html").text_body is None
    assert parsed("only_html").html_body == "<p>Only HTML</p>\r\n"
    only_attachment = parsed("only_attachment")
    assert (only_attachment.text_body, only_attachment.html_body) == (None, None)
    assert parsed("empty_body").text_body == ""
    assert parsed("headers_only_no_separator").subject == "no body"
    assert "lost" in (parsed("multipart_no_boundary").text_body or "")
    assert parsed("multipart_no_boundary").defects
    never_closed = parsed("boundary_never_closed")
    assert never_closed.attachments[0].content == PDF
    assert any("not closed" in d for d in never_closed.defects)
    assert parsed("content_type_garbage").text_body == "body text\r\n"
    assert parsed("cte_unknown").text_body == "encoded? no.\r\n"
    assert parsed("cte_unknown").defects
    assert parsed("lf_only").text_body == "LF body\nline 2\n"
    assert parsed("mbox_from_line").subject == "Meeting tomorrow"
    assert parsed("nul_in_body").text_body == "beforeafter\r\n"
    assert parsed("nul_in_header").subject == "subject"


def test_special_attachments() -> None:
    assert parsed("ms_tnef").attachments[0].filename == "winmail.dat"
    signed = parsed("smime_signed")
    assert signed.text_body == "Plain body."
    assert signed.attachments[0].content_type == "application/pkcs7-signature"


def test_huge_inputs_are_bounded() -> None:
    subject = parsed("huge_subject_200k")
    assert len(subject.subject) == 400
    assert any("subject" in d.lower() for d in subject.defects)
    body = parse_message(CASES["line_1mb_no_newline"].raw, max_body_chars=1000)
    assert body.text_body == "z" * 1000
    assert any("cut" in d for d in body.defects)
    assert parsed("received_5000").text_body is not None


def test_defects_are_capped() -> None:
    bad = part(["Content-Type: application/octet-stream", "Content-Transfer-Encoding: x-%d"], b"x")
    raw = mime_message(
        [bad.replace(b"%d", b"%d" % i) + b"\r\nContent-ID: <%d>" % i for i in range(40)]
    )
    result = parse_message(raw)
    assert len(result.defects) == 21
    assert result.defects[-1].startswith("... and ")


def test_unparseable_inputs() -> None:
    for raw in (b"", b"   \r\n", b"\x00\x01\x02\xff" * 100, b"hello world\r\n"):
        with pytest.raises(MessageParseError):
            parse_message(raw)
    assert isinstance(MessageParseError("x"), ValueError)


# --- never raising on hostile input ------------------------------------------------------------

_VALID = message(
    [
        ("MIME-Version", "1.0"),
        ("Content-Type", 'multipart/mixed; boundary="b1"'),
    ],
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
    b"quoted-printable\r\n\r\nHyv=C3=A4=C3=A4\r\n--b1\r\nContent-Type: application/pdf; "
    b"name*=utf-8''r%C3%A4.pdf\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding:"
    b" base64\r\nContent-ID: <x@y>\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n",
    subject="=?utf-8?Q?Hyv=C3=A4=C3=A4?=",
)
_TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b"\xff\xfe",
    b"=?",
    b"?=",
    b"=?x-bad?B?@@?=",
    b"--b1",
    b"--b1--",
    b";",
    b'"',
    b"*0*=",
    b"%",
    b"=",
    b"\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=b1\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"charset=",
    b"\t",
    b"begin 644 x\r\n",
]


def _assert_parses_or_refuses(raw: bytes) -> None:
    try:
        result = parse_message(raw)
    except MessageParseError:
        return
    assert isinstance(result, ParsedMessage)
    assert len(result.subject) <= 400
    assert len(result.defects) <= 21
    for text in (result.subject, result.text_body or "", result.html_body or ""):
        text.encode("utf-8")
        assert "\x00" not in text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(raw: bytes) -> None:
    _assert_parses_or_refuses(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(_VALID)),
            st.integers(min_value=0, max_value=8),
            st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=12)),
        ),
        max_size=8,
    )
)
def test_mutated_message_never_crashes(edits: list[tuple[int, int, bytes]]) -> None:
    raw = _VALID
    for position, removed, inserted in edits:
        position = min(position, len(raw))
        raw = raw[:position] + inserted + raw[position + removed :]
    _assert_parses_or_refuses(raw)


def test_valid_base_of_mutations_parses_cleanly() -> None:
    result = parse_message(_VALID)
    assert result.subject == "Hyvää"
    assert result.text_body == "Hyvää"
    (pdf,) = result.attachments
    assert (pdf.filename, pdf.content, pdf.content_id) == ("rä.pdf", b"%PDF-1.4\n", "x@y")
    assert result.defects == ()
