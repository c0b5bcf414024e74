"""What a headers fetch may ask the server for, and the privacy guards (no network)."""

from __future__ import annotations

import pytest

from crmsync.core.privacy import METADATA_HEADERS, FetchPlan, PrivacyLevel, fetch_plan
from crmsync.mail.imap import (
    AuthenticationFailed,
    ConnectionLost,
    ImapError,
    ImapSession,
    MailboxNotFound,
    MissingCapability,
    PrivacyViolation,
    ServerUnavailable,
    TlsFailure,
    header_fetch_items,
)
from crmsync.mail.imap.fetch import check_header_items, header_fetch_from_response
from crmsync.mail.imap.session import response_code
from crmsync.secrets import Secret

CONTENT_ITEMS = ("ENVELOPE", "BODYSTRUCTURE", "BODY[", "BODY.PEEK[]", "RFC822", "BINARY")


def test_metadata_items_carry_no_subject_and_no_content_items() -> None:
    items = header_fetch_items(fetch_plan(PrivacyLevel.METADATA), with_modseq=False)
    assert items[:4] == ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert items[4] == f"BODY.PEEK[HEADER.FIELDS ({' '.join(METADATA_HEADERS)})]"
    assert len(items) == 5
    joined = " ".join(items).upper()
    assert "SUBJECT" not in joined
    for forbidden in CONTENT_ITEMS:
        assert forbidden not in joined.replace("RFC822.SIZE", "")


def test_subject_level_adds_only_the_subject_field() -> None:
    items = header_fetch_items(fetch_plan(PrivacyLevel.SUBJECT), with_modseq=True)
    assert "MODSEQ" in items
    assert items[-1].endswith(" Subject)]")


def test_everything_level_header_fetch_is_still_headers_only() -> None:
    items = header_fetch_items(fetch_plan(PrivacyLevel.EVERYTHING), with_modseq=False)
    assert all(not item.startswith(("BODY[", "BODY.PEEK[]", "RFC822 ")) for item in items)


FORBIDDEN_ITEMS = (
    *("ENVELOPE", "BODYSTRUCTURE", "BODY", "BODY[]", "BODY.PEEK[]", "BODY.PEEK[TEXT]"),
    *("BODY[HEADER]", "RFC822", "RFC822.TEXT", "RFC822.HEADER", "BINARY.PEEK[1]"),
    *("PREVIEW", "SNIPPET"),
)


@pytest.mark.parametrize("item", FORBIDDEN_ITEMS)
def test_content_items_are_refused(item: str) -> None:
    with pytest.raises(PrivacyViolation):
        check_header_items(["UID", item], METADATA_HEADERS)


def test_header_fields_other_than_the_plans_are_refused() -> None:
    with pytest.raises(PrivacyViolation):
        check_header_items(["BODY.PEEK[HEADER.FIELDS (Subject)]"], METADATA_HEADERS)


@pytest.mark.parametrize("name", ["Subject)] BODY[", "To From", "", "X:Y", "Ä"])
def test_header_names_that_could_inject_are_refused(name: str) -> None:
    plan = FetchPlan(header_fields=(name,), full_message=False)
    with pytest.raises(ValueError, match="invalid header field name"):
        header_fetch_items(plan, with_modseq=False)


def test_fetch_message_refuses_before_touching_anything() -> None:
    # not even opened: the privacy check comes first, so no code path can reach the network
    session = ImapSession("imap://127.0.0.1:9", "anna", Secret("pw-123456"))
    for level in (PrivacyLevel.METADATA, PrivacyLevel.SUBJECT):
        with pytest.raises(PrivacyViolation, match="forbids whole messages"):
            session.fetch_message(1, fetch_plan(level))
    assert not issubclass(PrivacyViolation, ImapError)  # a bug, never retried or shown as such


def test_password_must_be_a_secret() -> None:
    with pytest.raises(TypeError):
        ImapSession("imap://127.0.0.1:9", "anna", "plain-password")  # type: ignore[arg-type]
    assert "pw-123456" not in repr(ImapSession("imap://127.0.0.1:9", "a", Secret("pw-123456")))


def test_error_kinds_know_whether_to_retry() -> None:
    assert ServerUnavailable("x").transient and ConnectionLost("x").transient
    for permanent in (AuthenticationFailed, TlsFailure, MailboxNotFound):
        assert not permanent("x").transient
    assert not MissingCapability("x", capability="QRESYNC").transient


def test_response_codes() -> None:
    assert response_code("[AUTHENTICATIONFAILED] Authentication failed.") == "AUTHENTICATIONFAILED"
    assert response_code("Mailbox doesn't exist: Nope") is None


def test_fetch_response_conversion_never_raises() -> None:
    fields = METADATA_HEADERS
    key = f"BODY[HEADER.FIELDS ({' '.join(fields).upper()})]".encode()
    good = header_fetch_from_response(
        7,
        {b"FLAGS": (b"\\Seen",), b"RFC822.SIZE": 1234, b"MODSEQ": (9,), key: b"From: a@x\r\n\r\n"},
        fields,
        include_subject=False,
    )
    assert (good.uid, good.flags, good.size, good.modseq) == (7, ("\\Seen",), 1234, 9)
    assert good.headers.from_[0].address == "a@x"
    empty = header_fetch_from_response(8, {}, fields, include_subject=False)
    assert empty.defects == ("server returned no header data",)
    weird = header_fetch_from_response(
        9, {b"FLAGS": "oops", b"RFC822.SIZE": b"NaN", key: None}, fields, include_subject=False
    )
    assert weird.size is None and weird.raw_headers == b""
