"""Hostile messages among good ones: the batch returns every message, defects on the bad ones."""

from __future__ import annotations

import time

import pytest

from crmsync.mail.imap.headers import MAX_ADDRESSES_PER_FIELD
from tests.integration.test_imap_session import SUBJECT, append, open_imap, plain_message
from tests.stackfix import MailUser, Stack

pytestmark = pytest.mark.integration


def crlf(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n"


HOSTILE: dict[str, bytes] = {
    "nul and 8-bit bytes": crlf(
        b"From: Bad\x00Byte <bad\x00@example.test>",
        b"To: M\xfcller <mueller@example.test>",
        b"Subject: caf\xe9",
        b"Message-ID: <nul@example.test>",
        b"",
        b"body",
    ),
    "two thousand recipients": crlf(
        b"From: blast@example.test",
        b"To: " + b",\r\n ".join(b"Person %d <p%d@example.test>" % (i, i) for i in range(2000)),
        b"Message-ID: <blast@example.test>",
        b"",
        b"body",
    ),
    "broken mime and encoded words": crlf(
        b"From: =?x-unknown?B?!!!?= <enc@example.test>",
        b'To: =?utf-8?q?unterminated <to@example.test>, "unbalanced <x@y>',
        b"Subject: =?utf-8?b?not base64 at all?=",
        b"Message-ID: no-brackets@example.test",
        b"Message-ID: <second@example.test>",
        b"Date: the day after tomorrow",
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary=""',
        b"",
        b"--",
        b"Content-Type: text/plain; charset=bogus",
        b"",
        b"x",
    ),
    "nested comments and giant references": crlf(
        b"From: " + b"(" * 3000 + b"deep" + b")" * 3000 + b" deep@example.test",
        b"References: " + b" ".join(b"<r%d@example.test>" % i for i in range(3000)),
        b"In-Reply-To: <<<>>>",
        b"",
        b"body",
    ),
}


def test_every_message_comes_back_and_only_bad_ones_have_defects(
    stack: Stack, mail_user: MailUser
) -> None:
    good = [plain_message(mail_user.address, subject=f"good {i}").as_bytes() for i in range(3)]
    raws = [good[0], *HOSTILE.values(), good[1], good[2]]
    append(stack, mail_user, raws)

    with open_imap(stack, mail_user) as imap:
        imap.select("INBOX")
        started = time.perf_counter()
        fetched = imap.fetch_headers(range(1, len(raws) + 1), SUBJECT)
        elapsed = time.perf_counter() - started

    assert [f.uid for f in fetched] == list(range(1, len(raws) + 1))
    assert elapsed < 5
    by_name = dict(zip(["good0", *HOSTILE, "good1", "good2"], fetched, strict=True))
    for name in ("good0", "good1", "good2"):
        assert by_name[name].defects == (), name
        assert by_name[name].headers.subject and by_name[name].headers.subject.startswith("good")
    for name in HOSTILE:
        assert by_name[name].defects, f"{name}: no defects recorded"

    blast = by_name["two thousand recipients"].headers
    assert len(blast.to) == MAX_ADDRESSES_PER_FIELD
    assert blast.message_id == "blast@example.test"

    nul = by_name["nul and 8-bit bytes"].headers
    assert nul.message_id == "nul@example.test"
    assert [a.address for a in nul.to] == ["mueller@example.test"]

    broken = by_name["broken mime and encoded words"].headers
    assert broken.message_id == "no-brackets@example.test" and broken.date is None
    assert [a.address for a in broken.from_] == ["enc@example.test"]

    deep = by_name["nested comments and giant references"].headers
    assert [a.address for a in deep.from_] == ["deep@example.test"]
    assert len(deep.references) == 500 and deep.references[-1] == "r2999@example.test"
