"""Parse the header fields of one message into a small typed value, never raising.

Input is what ``BODY.PEEK[HEADER.FIELDS (...)]`` returned: raw bytes from a stranger. The stdlib
``email`` package does the work, but it raises on hostile input (``RecursionError`` on nested
comments, ``ValueError`` on NUL bytes, ``IndexError`` deep in the address parser) and its modern
address parser is quadratic (2,000 addresses: 0.3 s). So every step is bounded and caught, what
went wrong is recorded as a *defect* on the message, and one bad message never stops a batch.

Defects name the field and the problem, never the value: they are logged and stored, and at the
``metadata`` level a value could be personal.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.parser import Parser
from email.utils import getaddresses, parsedate_to_datetime

MAX_HEADER_BYTES = 1024 * 1024
"""Header data parsed per message; the rest is dropped (with a defect)."""
MAX_ADDRESSES_PER_FIELD = 1000
"""Addresses kept per field: a message to more people is bulk mail for the CRM anyway."""
MAX_FIELD_CHARS_FOR_FULL_PARSER = 16 * 1024
"""Above this, addresses are split with the linear legacy parser instead of the quadratic one."""
MAX_COMMENT_DEPTH = 8
"""Deeper (nested) comments are removed before parsing: the stdlib parsers recurse on them."""
MAX_ID_CHARS = 998
"""RFC 5322 line limit; longer message ids are cut (they are keys in the database)."""
MAX_IDS_PER_FIELD = 500
"""References chains longer than this keep their newest ids (the end of the chain)."""
MAX_DEFECTS = 20

ADDRESS_FIELDS = ("From", "Sender", "Reply-To", "To", "Cc", "Bcc")

_MSG_ID = re.compile(r"<([^<>\s]{1,998})>")
# Characters that make an address field need the real parser (quotes, comments, groups, escapes,
# encoded words, routes, non-ASCII).
_NOT_SIMPLE = re.compile(r"[^A-Za-z0-9!#$%&\'*+\-/=?^_`{|}~.@<>, \t]|=\?|\.\.|<>")
_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*"
# unambiguous on purpose (atoms separated by required whitespace): no catastrophic backtracking
_SIMPLE_ADDRESS = re.compile(
    rf"(?:((?:{_ATOM}(?:[ \t]+{_ATOM})*)?)[ \t]*<({_ADDR_SPEC})>|({_ADDR_SPEC}))"
)
_BARE_ID = re.compile(r"[^<>\s@]{1,900}@[^<>\s@]{1,97}")
_FOLDED_LINE_BREAK = re.compile(r"\r?\n(?=[ \t])")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox from an address field; ``address`` is the addr-spec as sent (not lower-cased)."""

    address: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class MessageHeaders:
    """The parsed header fields a tracking decision needs; absent or broken fields are empty."""

    message_id: str | None = None
    """The id inside the angle brackets of Message-ID, e.g. ``abc@example.org``."""
    in_reply_to: tuple[str, ...] = ()
    """Usually one id; RFC 5322 allows several (a reply to more than one message)."""
    references: tuple[str, ...] = ()
    from_: tuple[Address, ...] = ()
    sender: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    date: datetime | None = None
    """Timezone-aware; a date without a zone (``-0000``) is taken as UTC."""
    list_id: str | None = None
    list_unsubscribe: str | None = None
    auto_submitted: str | None = None
    """Lower-cased keyword (``auto-replied``, ``auto-generated``, ``no``...)."""
    precedence: str | None = None
    """Lower-cased keyword (``bulk``, ``list``, ``junk``...)."""
    auto_response_suppress: str | None = None
    """X-Auto-Response-Suppress as sent (Exchange's loop-prevention hint)."""
    subject: str | None = None
    """Only when the fetch plan allows subjects; otherwise always None."""
    defects: tuple[str, ...] = field(default=())
    """What was wrong with the header data (field and problem, never the value)."""

    @property
    def parent_id(self) -> str | None:
        """The message this one replies to, as most mail clients mean it."""
        return self.in_reply_to[0] if self.in_reply_to else None


class _Defects:
    """A bounded list of defect descriptions (a hostile message could produce thousands)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, text: str) -> None:
        if len(self.items) < MAX_DEFECTS:
            self.items.append(text)
        else:
            self.dropped += 1

    def result(self) -> tuple[str, ...]:
        if self.dropped:
            return (*self.items, f"{self.dropped} more defects not recorded")
        return tuple(self.items)


def parse_headers(
    raw: bytes, *, include_subject: bool, wanted: Collection[str] | None = None
) -> MessageHeaders:
    """Parse RAW header bytes; never raises. ``wanted`` (the requested fields) flags extras."""
    defects = _Defects()
    try:
        return _parse(raw, include_subject, wanted, defects)
    except Exception as exc:  # hostile input must never stop a batch
        defects.add(f"header data could not be parsed ({type(exc).__name__})")
        return MessageHeaders(defects=defects.result())


def _parse(
    raw: bytes, include_subject: bool, wanted: Collection[str] | None, defects: _Defects
) -> MessageHeaders:
    fields = split_fields(raw, defects)
    if wanted is not None:
        allowed = {name.lower() for name in wanted}
        extra = sorted({name for name in fields if name not in allowed})
        if extra:
            defects.add(f"server returned fields that were not requested: {', '.join(extra)}")

    def single(name: str) -> str | None:
        values = fields.get(name.lower())
        if not values:
            return None
        if len(values) > 1:
            defects.add(f"{name}: {len(values)} occurrences, the first is used")
        return values[0]

    def addresses(name: str) -> tuple[Address, ...]:
        values = fields.get(name.lower())
        if not values:
            return ()
        if len(values) > 1:
            defects.add(f"{name}: {len(values)} occurrences, all are used")
        found: list[Address] = []
        for value in values:
            found.extend(parse_address_field(name, value, defects))
        if len(found) > MAX_ADDRESSES_PER_FIELD:
            defects.add(f"{name}: {len(found)} addresses, the first {MAX_ADDRESSES_PER_FIELD} kept")
            found = found[:MAX_ADDRESSES_PER_FIELD]
        return tuple(found)

    message_id_value = single("Message-ID")
    message_ids = parse_message_ids("Message-ID", message_id_value, defects)
    subject = None
    if include_subject:
        subject_value = single("Subject")
        subject = None if subject_value is None else decode_text("Subject", subject_value, defects)
    return MessageHeaders(
        message_id=message_ids[0] if message_ids else None,
        in_reply_to=parse_message_ids("In-Reply-To", single("In-Reply-To"), defects),
        references=parse_message_ids("References", single("References"), defects),
        from_=addresses("From"),
        sender=addresses("Sender"),
        reply_to=addresses("Reply-To"),
        to=addresses("To"),
        cc=addresses("Cc"),
        bcc=addresses("Bcc"),
        date=parse_date(single("Date"), defects),
        list_id=parse_list_id(single("List-Id")),
        list_unsubscribe=_stripped(single("List-Unsubscribe")),
        auto_submitted=_keyword(single("Auto-Submitted")),
        precedence=_keyword(single("Precedence")),
        auto_response_suppress=_stripped(single("X-Auto-Response-Suppress")),
        subject=subject,
        defects=defects.result(),
    )


def split_fields(raw: bytes, defects: _Defects) -> dict[str, list[str]]:
    """Header fields by lower-cased name, values unfolded, in order of appearance."""
    if len(raw) > MAX_HEADER_BYTES:
        defects.add(f"header data of {len(raw)} bytes cut to {MAX_HEADER_BYTES}")
        raw = raw[:MAX_HEADER_BYTES]
    if b"\0" in raw:
        # the stdlib raises "embedded null character" further down; NUL has no meaning here
        defects.add("NUL bytes removed")
        raw = raw.replace(b"\0", b"")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # RFC 6532 allows UTF-8; anything else is a broken mailer (often Latin-1)
        defects.add("header bytes are not UTF-8")
        text = raw.decode("utf-8", errors="replace")
    # compat32 only splits and unfolds nothing: values stay plain strings, decoded later by us
    message = Parser(policy=policy.compat32).parsestr(text, headersonly=True)
    for defect in message.defects:
        defects.add(f"header block: {type(defect).__name__}")
    fields: dict[str, list[str]] = {}
    for name, value in message.items():
        unfolded = _FOLDED_LINE_BREAK.sub("", str(value)).strip()
        fields.setdefault(str(name).strip().lower(), []).append(unfolded)
    return fields


def parse_address_field(name: str, value: str, defects: _Defects) -> list[Address]:
    """Addresses of one field value; the modern parser when affordable, the legacy one if not."""
    simple = parse_simple_addresses(value)
    if simple is not None:
        return simple
    value = _bounded_comments(name, value, defects)
    if len(value) <= MAX_FIELD_CHARS_FOR_FULL_PARSER:
        try:
            header = policy.default.header_factory(name, value)
            for defect in header.defects:
                defects.add(f"{name}: {type(defect).__name__}")
            return [
                # an encoded display name may carry NUL (=00), refused by any text column
                Address(address=a.addr_spec, name=a.display_name.replace("\x00", ""))
                for a in header.addresses
                if a.addr_spec and a.addr_spec != "<>"
            ]
        except Exception as exc:  # the modern parser has known crashes on hostile input
            defects.add(f"{name}: address parser failed ({type(exc).__name__}), fallback used")
    try:
        pairs = getaddresses([value])
    except Exception as exc:
        defects.add(f"{name}: addresses could not be parsed ({type(exc).__name__})")
        return []
    return [
        Address(address=addr, name=decode_text(name, display, defects) if display else "")
        for display, addr in pairs
        if addr
    ]


def parse_simple_addresses(value: str) -> list[Address] | None:
    """The common plain forms (``a@b``, ``Name <a@b>``, comma-separated) without the full parser.

    The stdlib's RFC 5322 parser costs ~0.25 ms a field, most of a header fetch. Values with
    nothing but atoms, dots, spaces, commas and angle-bracketed addresses cannot be misread by a
    comma split; anything else (quotes, comments, encoded words, groups, escapes) returns None
    and goes to the full parser. A unit test checks this agrees with the full parser.
    """
    if _NOT_SIMPLE.search(value):
        return None
    found: list[Address] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        match = _SIMPLE_ADDRESS.fullmatch(part)
        if match is None:
            return None
        display, bracketed, bare = match.groups()
        if bare is not None:
            found.append(Address(address=bare))
        else:
            found.append(Address(address=bracketed, name=_WHITESPACE.sub(" ", display).strip()))
    return found


def _bounded_comments(name: str, value: str, defects: _Defects) -> str:
    """Remove parenthesized comments when they nest deeper than the parsers can recurse."""
    depth = deepest = 0
    for char in value:
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")" and depth:
            depth -= 1
    if deepest <= MAX_COMMENT_DEPTH:
        return value
    defects.add(f"{name}: comments nested {deepest} deep removed")
    kept: list[str] = []
    depth = 0
    for char in value:
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth == 0:
            kept.append(char)
    return "".join(kept)


def decode_text(name: str, value: str, defects: _Defects) -> str:
    """Decode RFC 2047 encoded words (``=?utf-8?q?...?=``); the raw text if that fails."""
    if "=?" not in value:
        return _WHITESPACE.sub(" ", value).strip()
    try:
        header = policy.default.header_factory(name, value)
        for defect in header.defects:
            defects.add(f"{name}: {type(defect).__name__}")
        # an encoded word may carry NUL (=00), which PostgreSQL refuses in any text column
        return _WHITESPACE.sub(" ", str(header).replace("\x00", "")).strip()
    except Exception as exc:
        defects.add(f"{name}: encoded words could not be decoded ({type(exc).__name__})")
        return _WHITESPACE.sub(" ", value).strip()


def parse_message_ids(name: str, value: str | None, defects: _Defects) -> tuple[str, ...]:
    """The ids between angle brackets; a bare id (no brackets) is kept with a defect."""
    if value is None:
        return ()
    ids = _MSG_ID.findall(value)
    if not ids:
        bare = value.strip()
        if not bare:
            return ()
        if not _BARE_ID.fullmatch(bare):
            defects.add(f"{name}: no message id found")
            return ()
        defects.add(f"{name}: id without angle brackets")
        return (bare,)
    if len(ids) > MAX_IDS_PER_FIELD:
        defects.add(f"{name}: {len(ids)} ids, the last {MAX_IDS_PER_FIELD} kept")
        ids = ids[-MAX_IDS_PER_FIELD:]
    return tuple(ids)


def parse_date(value: str | None, defects: _Defects) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except Exception:  # ValueError, TypeError, OverflowError, IndexError seen in the wild
        defects.add("Date: not a valid date")
        return None
    if parsed is None:
        defects.add("Date: not a valid date")
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_list_id(value: str | None) -> str | None:
    """The list identifier inside ``<...>`` (``List-Id: Name <list.example.org>``)."""
    if value is None:
        return None
    found = re.search(r"<([^<>]{1,255})>", value)
    return found.group(1).strip() if found else _stripped(value)


def _stripped(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _keyword(value: str | None) -> str | None:
    """``Auto-Submitted: auto-replied; (comment)`` -> ``auto-replied``."""
    if value is None:
        return None
    keyword = value.split(";", 1)[0].split("(", 1)[0].strip().lower()
    return keyword or None
