"""ImapSession.append_message and find_by_message_id against the stack's Dovecot: the copy of a
sent email in the Sent folder, and finding it again by the Message-ID crmsync generated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from crmsync.mail.compose import OutgoingMessage, compose, new_message_id
from crmsync.mail.imap import ImapSession, MailboxNotFound
from crmsync.secrets import Secret
from tests.stackfix import MailUser, Stack

pytestmark = pytest.mark.integration


def sent_copy(user: MailUser, message_id: str) -> bytes:
    return compose(
        OutgoingMessage(
            from_address=user.address,
            to=("client@customer.test",),
            subject="Offer Grüße",
            message_id=message_id,
            text_body="Hello\n",
            date=datetime.now(UTC),
        )
    )


@pytest.fixture
def user_with_sent(stack: Stack, mail_user: MailUser) -> MailUser:
    with stack.imap(mail_user) as client:
        client.create_folder("Sent")
    return mail_user


def open_session(stack: Stack, user: MailUser) -> ImapSession:
    session = ImapSession(
        f"imap://{stack.host}:{stack.imap_port}", user.username, Secret(user.password), timeout=10
    )
    session.open()
    return session


def test_append_to_sent_returns_the_uid_and_marks_it_seen(
    stack: Stack, user_with_sent: MailUser
) -> None:
    message_id = new_message_id("crm.example.test")
    raw = sent_copy(user_with_sent, message_id)
    when = datetime(2026, 3, 3, 10, 15, tzinfo=timezone(timedelta(hours=1)))
    with open_session(stack, user_with_sent) as imap:
        assert imap.has("UIDPLUS")
        sent = imap.find_sent_folder()
        assert sent == "Sent"
        uid = imap.append_message(sent, raw, when=when)
        second = imap.append_message(sent, sent_copy(user_with_sent, new_message_id("x.test")))
    assert isinstance(uid, int) and second == uid + 1
    with stack.imap(user_with_sent) as client:
        client.normalise_times = False  # aware INTERNALDATE
        client.select_folder("Sent", readonly=True)
        fetched = client.fetch([uid], ["FLAGS", "INTERNALDATE", "BODY.PEEK[]"])[uid]
    assert set(fetched[b"FLAGS"]) - {b"\\Recent"} == {b"\\Seen"}
    assert fetched[b"BODY[]"] == raw  # byte for byte: the incoming sync reads what was sent
    assert fetched[b"INTERNALDATE"] == when


def test_append_with_other_flags(stack: Stack, user_with_sent: MailUser) -> None:
    with open_session(stack, user_with_sent) as imap:
        unread = imap.append_message("Sent", sent_copy(user_with_sent, "<a@x.test>"), flags=())
        marked = imap.append_message(
            "Sent", sent_copy(user_with_sent, "<b@x.test>"), flags=("\\Seen", "$CRMTracked")
        )
        with pytest.raises(ValueError, match="not a flag"):
            imap.append_message("Sent", b"Subject: x\r\n\r\n", flags=("\\Recent",))
        with pytest.raises(ValueError, match="timezone-aware"):
            imap.append_message("Sent", b"Subject: x\r\n\r\n", when=datetime(2026, 1, 1))
    assert unread is not None and marked is not None
    with stack.imap(user_with_sent) as client:
        client.select_folder("Sent", readonly=True)
        flags = client.get_flags([unread, marked])
    assert set(flags[unread]) - {b"\\Recent"} == set()  # \Recent: Dovecot's, first EXAMINE
    assert set(flags[marked]) - {b"\\Recent"} == {b"\\Seen", b"$CRMTracked"}


def test_append_to_a_missing_folder_is_mailbox_not_found(stack: Stack, mail_user: MailUser) -> None:
    with open_session(stack, mail_user) as imap:
        with pytest.raises(MailboxNotFound) as caught:
            imap.append_message("Sent", sent_copy(mail_user, "<a@x.test>"))
        assert "'Sent' does not exist" in str(caught.value)
        assert mail_user.username in str(caught.value)
        assert not caught.value.transient
        assert imap.find_sent_folder() is None  # the session is still usable


def test_found_by_message_id_and_only_by_the_exact_id(
    stack: Stack, user_with_sent: MailUser
) -> None:
    token = new_message_id("x")[1:13]
    ids = {
        "exact": f"<{token}.42@crm.example.test>",
        "longer_left": f"<x{token}.42@crm.example.test>",
        "longer_domain": f"<{token}.42@crm.example.test.org>",
        "other_case": f"<{token.upper()}.42@crm.example.test>",
    }
    with open_session(stack, user_with_sent) as imap:
        uids = {
            name: imap.append_message("Sent", sent_copy(user_with_sent, i))
            for name, i in ids.items()
        }
        assert imap.find_by_message_id("Sent", ids["exact"]) == [uids["exact"]]
        # without brackets, surrounding space, domain in another case: the same id
        assert imap.find_by_message_id("Sent", f" {token}.42@CRM.example.test ") == [uids["exact"]]
        # substrings of other ids (SEARCH HEADER matches those) are not the id
        assert imap.find_by_message_id("Sent", f"<{token[1:]}.42@crm.example.test>") == []
        assert imap.find_by_message_id("Sent", f"<{token}.42@crm.example>") == []
        assert imap.find_by_message_id("Sent", new_message_id("crm.example.test")) == []
        # the part before @ is case-sensitive: a different id that SEARCH also finds
        assert imap.find_by_message_id("Sent", ids["other_case"]) == [uids["other_case"]]
        with pytest.raises(ValueError):
            imap.find_by_message_id("Sent", "<has space@x>")
        with pytest.raises(ValueError):
            imap.find_by_message_id("Sent", "<>")


def test_find_selects_the_folder_but_keeps_a_current_selection(
    stack: Stack, user_with_sent: MailUser
) -> None:
    message_id = new_message_id("crm.example.test")
    with open_session(stack, user_with_sent) as imap:
        imap.select("Sent", readonly=False)
        uid = imap.append_message("Sent", sent_copy(user_with_sent, message_id))
        assert imap.find_by_message_id("Sent", message_id) == [uid]
        assert imap.selected is not None and imap.selected_writable  # not re-selected
        assert imap.find_by_message_id("INBOX", message_id) == []
        assert imap.selected is not None and imap.selected.folder == "INBOX"
        with pytest.raises(MailboxNotFound):
            imap.find_by_message_id("No Such Folder", message_id)


def test_without_uidplus_in_the_answer_the_uid_is_none(
    stack: Stack, user_with_sent: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server without UIDPLUS answers APPEND with a plain OK; the copy is then found by its
    Message-ID (Dovecot always has UIDPLUS, so its answer is replaced here)."""
    message_id = new_message_id("crm.example.test")
    with open_session(stack, user_with_sent) as imap:
        client = imap._live()
        real_append = client.append

        def plain_ok(*args: object, **kwargs: object) -> bytes:
            real_append(*args, **kwargs)
            return b"Append completed."

        monkeypatch.setattr(client, "append", plain_ok)
        assert imap.append_message("Sent", sent_copy(user_with_sent, message_id)) is None
        assert len(imap.find_by_message_id("Sent", message_id)) == 1
