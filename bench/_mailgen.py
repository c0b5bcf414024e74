# ruff: noqa: RUF001
"""Deterministic, realistic test messages for the incoming-sync benchmark (issue 4).

    for raw in messages(10_000, "anna@example.test", seed=4):   # bytes, CRLF line ends
        ...

Every message is From one of ``contacts(n)`` (``contactNNNN@customer.example``) and To the
mailbox's address, has a unique Message-ID, and is a mix of what real mailboxes hold:

- sizes 2-50 KB (about 55 % 2-8 KB, 33 % 8-25 KB, 12 % 25-50 KB);
- ~20 % with a PDF-like binary attachment (base64), ~30 % replies (In-Reply-To/References to
  an earlier message of the set), ~10 % text/plain only, the rest multipart/alternative
  text + HTML;
- Finnish, Japanese and emoji in names, subjects (RFC 2047 encoded-words) and bodies (UTF-8,
  quoted-printable or base64).

Built by hand from pre-made text pools rather than with ``email.message``: 100,000 messages in
about 10-20 s of CPU, so the 100k mailbox of the benchmark is made in the same run.
"""

from __future__ import annotations

import base64
import binascii
import random
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

CONTACT_DOMAIN = "customer.example"
_MIN_SIZE, _MAX_SIZE = 2_048, 51_200

_FIRST = [
    "Aino", "Eero", "Helmi", "Jyrki", "Kaisa", "Lauri", "Märta", "Onni", "Päivi", "Sinikka",
    "Tuomas", "Väinö", "Ängel", "Anna", "Ben", "Chloé", "David", "Emma", "Ömer", "Zoë",
    "陽翔", "結衣", "蓮", "さくら", "Hiroshi", "Yuki", "Søren", "José", "Łukasz", "Ирина",
]  # fmt: skip
_LAST = [
    "Laine", "Virtanen", "Mäkinen", "Nieminen", "Hämäläinen", "Könönen", "Järvinen", "Smith",
    "Müller", "García", "Öberg", "Østergaard", "佐藤", "鈴木", "高橋", "田中", "Tanaka",
    "Yamamoto", "Dubois", "Kowalski", "Brown", "Nguyen", "Johansson", "Korhonen", "Lehtonen",
]  # fmt: skip
_SUBJECTS = [
    "Tarjous: vuosihuolto {n}", "Kokousmuistio {n} – päätökset", "Lasku {n} erääntyy",
    "Toimitusaikataulu, viikko {n}", "Quarterly review {n}", "Contract renewal #{n}",
    "見積もりのご依頼 {n}", "会議の議事録（第{n}回）", "Re-order of part {n} 📦",
    "Kiitos tapaamisesta! 🙏 {n}", "Invoice {n} attached", "Follow-up on ticket {n} ✅",
    "Hinnasto {n} – päivitetty", "Shipping delay for order {n}", "納品書 {n} 送付の件",
]  # fmt: skip
_WORD_TEXT = (
    "asiakas tarjous sopimus toimitus kokous aikataulu hinta lasku yhteyshenkilö projekti "
    "huolto päivitys ehdotus vahvistus määräaika tilaus ystävällisin terveisin kiitos hyvää "
    "päivää jatkossa mielellään käydä läpi ensi viikolla sähköposti liitteenä yhteistyö "
    "customer proposal contract delivery meeting schedule price invoice contact project "
    "maintenance update suggestion confirmation deadline order regards thanks please find "
    "attached next week review follow up quarter budget team support request agreement "
    "お世話になっております 見積もり 契約 納期 会議 請求書 ご確認 よろしくお願いいたします "
    "ありがとうございます 来週 資料 添付 担当者 🙂 👍 📎 🚚 ✅ 🎉 € £ ¥ – — « » ‘ ’ “ ”"
)
_WORDS = _WORD_TEXT.split()


def contacts(n: int) -> list[tuple[str, str, str]]:
    """N known contacts ``(first, last, email)``; the email is ``contactNNNN@customer.example``."""
    rng = random.Random(1_000_003)
    return [
        (rng.choice(_FIRST), rng.choice(_LAST), f"contact{i:04d}@{CONTACT_DOMAIN}")
        for i in range(n)
    ]


def _encoded_word(text: str, q_encoding: bool = False) -> str:
    """RFC 2047 encoded-words (UTF-8) for a header value; plain ASCII is returned as it is."""
    if text.isascii():
        return text
    words, chunk, size = [], [], 0
    for ch in text:
        n = len(ch.encode())
        if size + n > 36 and chunk:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(ch)
        size += n
    if chunk:
        words.append("".join(chunk))
    out = []
    for w in words:
        if q_encoding:
            q = binascii.b2a_qp(w.encode(), header=True).decode().replace("?", "=3F")
            out.append(f"=?utf-8?q?{q}?=")
        else:
            out.append(f"=?utf-8?b?{base64.b64encode(w.encode()).decode()}?=")
    return "\r\n ".join(out)


def _corpus(rng: random.Random, chars: int) -> str:
    """A long text of paragraphs of pool words; bodies are slices of it."""
    parts: list[str] = []
    total = 0
    while total < chars:
        words = rng.choices(_WORDS, k=rng.randint(25, 90))
        para = " ".join(words).capitalize() + "."
        # wrap at ~72 characters so quoted-printable and plain text look like mail
        lines, line = [], ""
        for word in para.split(" "):
            if line and len(line) + len(word) > 71:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
        block = "\n".join(lines) + "\n\n"
        parts.append(block)
        total += len(block)
    return "".join(parts)


def _pick_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.55:
        return rng.randint(2_048, 8_192)
    if r < 0.88:
        return rng.randint(8_192, 25_600)
    return rng.randint(25_600, 51_200)


def _qp(text: str) -> bytes:
    return binascii.b2a_qp(text.encode()).replace(b"\n", b"\r\n")


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _html(text: str) -> str:
    paras = "".join(
        f"<p>{p.replace('&', '&amp;').replace('<', '&lt;').replace(chr(10), '<br>')}</p>\n"
        for p in text.split("\n\n")
        if p
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        f'<body style="font-family: sans-serif">\n{paras}</body></html>\n'
    )


def messages(
    count: int, to_address: str, seed: int = 4, *, n_contacts: int = 500
) -> Iterator[bytes]:
    """COUNT raw messages (CRLF), deterministic for (COUNT-prefix, TO_ADDRESS, SEED, N_CONTACTS).

    Message-IDs are ``<bench.SEED.I@customer.example>``: unique within the set and across sets
    made with different seeds. Dates run from 2024-01-01 UTC, a few minutes apart.
    """
    rng = random.Random(seed)
    people = contacts(n_contacts)
    corpus = _corpus(random.Random(seed * 7919 + 1), 400_000)
    limit = len(corpus) - 60_000
    # bytes per character of the body text once encoded: non-ASCII expands a lot in QP
    sample = corpus[:50_000]
    qp_ratio = len(_qp(sample)) / len(sample)
    b64_ratio = len(sample.encode()) / len(sample) * 4 / 3
    html_ratio = len(_qp(_html(sample))) / len(sample)
    recent: deque[tuple[str, str, str]] = deque(maxlen=300)  # (msgid, references, subject)
    when = datetime(2024, 1, 1, 8, 0, tzinfo=UTC)
    to_name = to_address.split("@")[0].capitalize()
    for i in range(count):
        first, last, email = people[rng.randrange(n_contacts)]
        msgid = f"<bench.{seed}.{i}@{CONTACT_DOMAIN}>"
        when += timedelta(seconds=rng.randint(30, 900))
        size = _pick_size(rng)
        has_attachment = rng.random() < 0.20
        reply_to = recent[rng.randrange(len(recent))] if recent and rng.random() < 0.30 else None
        alternative = rng.random() >= 0.10

        if reply_to is not None:
            parent_id, parent_refs, parent_subject = reply_to
            refs = [*parent_refs.split(), parent_id][-10:]
            references = " ".join(refs)
            subject = (
                parent_subject if parent_subject.startswith("Re: ") else "Re: " + (parent_subject)
            )
        else:
            parent_id, references = "", ""
            subject = rng.choice(_SUBJECTS).format(n=rng.randint(100, 99_999))
        recent.append((msgid, references, subject))

        attach_bytes = 0
        if has_attachment:
            attach_bytes = int(size * rng.uniform(0.4, 0.8) * 3 / 4)
        per_char = (qp_ratio if i % 3 else b64_ratio) + (html_ratio if alternative else 0)
        budget = size - attach_bytes * 4 // 3 - (1_400 if attach_bytes else 900)
        if reply_to is not None:
            budget = budget * 4 // 5
        text_chars = max(200, int(budget / per_char))

        start = rng.randrange(limit)
        start = corpus.find("\n\n", start) + 2
        attachment = None
        if has_attachment:
            blob = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + rng.randbytes(attach_bytes)
            name = rng.choice(["tarjous", "lasku", "見積書", "sopimus", "invoice"])
            attachment = (f"{name}_{i}.pdf", blob)

        head = [
            f"Return-Path: <{email}>",
            f"From: {_encoded_word(f'{first} {last}', q_encoding=True)} <{email}>",
            f"To: {to_name} <{to_address}>",
            f"Subject: {_encoded_word(subject)}",
            f"Date: {format_datetime(when)}",
            f"Message-ID: {msgid}",
        ]
        if parent_id:
            head.append(f"In-Reply-To: {parent_id}")
            head.append("References: " + "\r\n ".join(references.split()))
        head.append("MIME-Version: 1.0")
        header = ("\r\n".join(head) + "\r\n").encode()
        signature = f"\n-- \n{first} {last}\n{email}\n"
        quote_intro = f"\n\n{first} {last} wrote:\n" if reply_to is not None else ""

        raw = b""
        for _ in range(4):  # the encoded size is estimated; correct it when it misses
            text = f"Hei {to_name},\n\n" + corpus[start : start + text_chars]
            if quote_intro:
                quoted = corpus[start // 2 : start // 2 + text_chars // 4]
                text += quote_intro + "".join(f"> {line}\n" for line in quoted.splitlines())
            raw = header + _body(
                text + signature, f"{seed}_{i}", i % 3 == 0, alternative, attachment
            )
            if _MIN_SIZE <= len(raw) <= _MAX_SIZE:
                break
            goal = min(max(len(raw), _MIN_SIZE + 512), _MAX_SIZE - 1_024)
            text_chars = max(50, text_chars + int((goal - len(raw)) / per_char))
        yield raw


def _body(
    text: str,
    tag: str,
    text_base64: bool,
    alternative: bool,
    attachment: tuple[str, bytes] | None,
) -> bytes:
    """The Content-Type header line(s), a blank line and the MIME body."""
    if text_base64:
        text_part = (
            b'Content-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(text.encode())
        )
    else:
        text_part = (
            b'Content-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + _qp(text)
        )
    if alternative:
        alt_b = f"=_alt_{tag}"
        first_part = (
            f'Content-Type: multipart/alternative; boundary="{alt_b}"\r\n\r\n'.encode()
            + f"--{alt_b}\r\n".encode()
            + text_part
            + f"\r\n--{alt_b}\r\n".encode()
            + b'Content-Type: text/html; charset="utf-8"\r\n'
            + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            + _qp(_html(text))
            + f"\r\n--{alt_b}--\r\n".encode()
        )
    else:
        first_part = text_part
    if attachment is None:
        return first_part
    fname = _encoded_word(attachment[0])
    mix_b = f"=_mix_{tag}"
    return (
        f'Content-Type: multipart/mixed; boundary="{mix_b}"\r\n\r\n'.encode()
        + f"--{mix_b}\r\n".encode()
        + first_part
        + f"\r\n--{mix_b}\r\n".encode()
        + f'Content-Type: application/pdf; name="{fname}"\r\n'.encode()
        + f'Content-Disposition: attachment; filename="{fname}"\r\n'.encode()
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + _b64(attachment[1])
        + f"\r\n--{mix_b}--\r\n".encode()
    )
