"""ImapSession against the real Dovecot of the test stack: folders, searches, fetches, errors.

The helpers at the top (``open_imap``, ``append``, ``plain_message``) are shared by the other
``test_imap_*`` modules.
"""

from __future__ import annotations

import re
import time
import uuid
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest

from crmsync.core.privacy import PrivacyLevel, fetch_plan
from crmsync.mail.imap import (
    FolderState,
    ImapSession,
    MailboxNotFound,
    MessageNotFound,
    MissingCapability,
)
from crmsync.secrets import Secret
from tests.netproxy import FaultProxy
from tests.stackfix import MailUser, Stack

pytestmark = pytest.mark.integration

METADATA = fetch_plan(PrivacyLevel.METADATA)
SUBJECT = fetch_plan(PrivacyLevel.SUBJECT)
EVERYTHING = fetch_plan(PrivacyLevel.EVERYTHING)


def open_imap(
    stack: Stack,
    user: MailUser,
    *,
    via: FaultProxy | None = None,
    password: str | None = None,
    **kwargs: Any,
) -> ImapSession:
    """An opened session to the stack's Dovecot (or to a proxy in front of it)."""
    host, port = via.address if via is not None else (stack.host, stack.imap_port)
    kwargs.setdefault("timeout", 10)
    session = ImapSession(
        f"imap://{host}:{port}", user.username, Secret(password or user.password), **kwargs
    )
    session.open()
    return session


def plain_message(
    to: str, *, subject: str | None = None, body: str = "Hello.\n", **headers: str
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Sender Person <sender@external.test>"
    msg["To"] = to
    msg["Subject"] = subject or f"imap test {uuid.uuid4().hex[:8]}"
    msg["Message-ID"] = make_msgid(domain="imap.crmsync.test")
    msg["Date"] = "Tue, 03 Mar 2026 10:15:00 +0100"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def append(stack: Stack, user: MailUser, messages: list[bytes], folder: str = "INBOX") -> None:
    """Put raw messages into a folder byte for byte (APPEND: no SMTP rewriting)."""
    with stack.imap(user) as client:
        for raw in messages:
            client.append(folder, raw)


def test_select_reports_the_cursor_and_enables_condstore(stack: Stack, mail_user: MailUser) -> None:
    append(stack, mail_user, [plain_message(mail_user.address).as_bytes() for _ in range(3)])
    with open_imap(stack, mail_user) as imap:
        assert imap.condstore_enabled
        assert imap.has("qresync") and imap.has("UIDPLUS")
        state = imap.select("INBOX")
        assert isinstance(state, FolderState)
        assert state.folder == "INBOX" and state.exists == 3 and state.uidnext == 4
        assert state.uidvalidity > 0 and state.highestmodseq is not None
        assert imap.status("INBOX") == state
        assert imap.search_uids_since(0) == [1, 2, 3]
        assert imap.search_uids_since(1) == [2, 3]
        # "4:*" matches the last message (UID 3) on the wire; the helper filters it out
        assert imap.search_uids_since(3) == []


def test_missing_capability_is_explicit(stack: Stack, mail_user: MailUser) -> None:
    with open_imap(stack, mail_user) as imap:
        imap.require("QRESYNC", "sync changes quickly")
        with pytest.raises(MissingCapability) as caught:
            imap.require("X-NO-SUCH-THING", "do the impossible")
    assert caught.value.capability == "X-NO-SUCH-THING"
    assert "does not support X-NO-SUCH-THING, which crmsync needs to do the impossible" in str(
        caught.value
    )
    assert not caught.value.transient


def test_missing_folder_is_mailbox_not_found(stack: Stack, mail_user: MailUser) -> None:
    with open_imap(stack, mail_user) as imap:
        with pytest.raises(MailboxNotFound, match="'Archive/2019' does not exist") as caught:
            imap.select("Archive/2019")
        assert not caught.value.transient
        with pytest.raises(MailboxNotFound):
            imap.status("Nope")
        # the session is still usable after a folder error
        assert imap.select("INBOX").exists == 0


def test_headers_fetch_returns_the_plans_fields_only(stack: Stack, mail_user: MailUser) -> None:
    subject = f"Quarterly numbers {uuid.uuid4().hex}"
    msg = plain_message(
        mail_user.address,
        subject=subject,
        body="Body text that must stay on the server.\n",
        Cc="Carol <carol@external.test>",
        In_Reply_To="<parent@external.test>",
        References="<root@external.test> <parent@external.test>",
        List_Id="Sales <sales.external.test>",
        Auto_Submitted="auto-generated",
        X_Custom="not requested",
    )
    append(stack, mail_user, [msg.as_bytes()])
    with open_imap(stack, mail_user) as imap:
        imap.select("INBOX")
        [meta] = imap.fetch_headers([1], METADATA)
        [subj] = imap.fetch_headers([1], SUBJECT)
        flags_after = imap.fetch_headers([1], METADATA)[0].flags

    assert meta.uid == 1 and meta.size and meta.size > 0 and meta.internaldate is not None
    assert meta.modseq is not None
    field_names = {
        line.split(b":", 1)[0].lower()
        for line in meta.raw_headers.split(b"\r\n")
        if line and not line.startswith((b" ", b"\t"))
    }
    assert field_names == {
        b"from", b"to", b"cc", b"message-id", b"date", b"in-reply-to", b"references",
        b"list-id", b"auto-submitted",
    }  # fmt: skip
    assert b"Subject" not in meta.raw_headers and subject.encode() not in meta.raw_headers
    assert meta.headers.subject is None
    h = meta.headers
    assert h.message_id == msg["Message-ID"].strip("<>")
    assert h.in_reply_to == ("parent@external.test",)
    assert h.references == ("root@external.test", "parent@external.test")
    assert [a.address for a in h.from_] == ["sender@external.test"]
    assert [a.address for a in h.cc] == ["carol@external.test"]
    assert (h.list_id, h.auto_submitted) == ("sales.external.test", "auto-generated")
    assert h.defects == ()

    assert subj.headers.subject == subject
    assert b"Subject: " + subject.encode() in subj.raw_headers
    assert "\\Seen" not in flags_after  # BODY.PEEK: fetching does not mark mail as read


def test_headers_are_fetched_in_batches_of_explicit_uids(stack: Stack, mail_user: MailUser) -> None:
    append(stack, mail_user, [plain_message(mail_user.address).as_bytes() for _ in range(12)])
    with FaultProxy((stack.host, stack.imap_port)) as proxy:
        with open_imap(stack, mail_user, via=proxy) as imap:
            imap.select("INBOX")
            uids = imap.search_uids_since(0)
            proxy.clear_traffic()
            batches = list(imap.iter_header_batches(reversed(uids), METADATA, batch_size=5))
            fetched = imap.fetch_headers([*uids, 4242], METADATA)  # 4242 does not exist
        commands = re.findall(rb"UID FETCH (\S+) ", proxy.captured_to_server())
    assert [len(b) for b in batches] == [5, 5, 2]
    assert [f.uid for b in batches for f in b] == list(range(1, 13))
    assert commands[:3] == [b"1,2,3,4,5", b"6,7,8,9,10", b"11,12"]
    assert [f.uid for f in fetched] == uids
    assert not any(b"*" in c for c in commands)


def test_fetch_message_returns_the_exact_bytes(stack: Stack, mail_user: MailUser) -> None:
    raw = plain_message(mail_user.address, body="exact body\n").as_bytes().replace(b"\n", b"\r\n")
    append(stack, mail_user, [raw])
    with open_imap(stack, mail_user) as imap:
        imap.select("INBOX")
        assert imap.fetch_message(1, EVERYTHING) == raw
        assert "\\Seen" not in imap.fetch_headers([1], METADATA)[0].flags
        with pytest.raises(MessageNotFound, match="message 99 is no longer in the folder"):
            imap.fetch_message(99, EVERYTHING)


def test_select_read_write_and_close_are_tolerant(stack: Stack, mail_user: MailUser) -> None:
    imap = open_imap(stack, mail_user)
    imap.select("INBOX", readonly=False)
    imap.close()
    imap.close()  # twice is fine
    with pytest.raises(RuntimeError, match="not open"):
        imap.select("INBOX")


def test_a_no_change_poll_is_cheap(stack: Stack, mail_user: MailUser) -> None:
    append(stack, mail_user, [plain_message(mail_user.address).as_bytes() for _ in range(5)])
    with open_imap(stack, mail_user) as imap:
        first = imap.status("INBOX")
        started = time.perf_counter()
        for _ in range(20):
            assert imap.status("INBOX") == first
        assert (time.perf_counter() - started) / 20 < 0.05
