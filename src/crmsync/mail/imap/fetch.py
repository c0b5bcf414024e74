"""What a headers-only fetch asks for and what it returns: the privacy-critical part.

The FETCH items of a header fetch are built here from the ``FetchPlan`` and checked against the
items that carry subject or body text (ENVELOPE, BODYSTRUCTURE, BODY[...], RFC822, BINARY,
PREVIEW...), so a later edit cannot quietly widen what crosses the wire.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from crmsync.core.privacy import FetchPlan
from crmsync.mail.imap.errors import PrivacyViolation
from crmsync.mail.imap.headers import MessageHeaders, parse_headers

_HEADER_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,75}")
# FETCH items that would carry subject or body text; only BODY.PEEK[HEADER.FIELDS (...)] with
# the plan's own field list may ask for message content in a header fetch.
_CONTENT_ITEMS = re.compile(
    r"^(ENVELOPE|BODYSTRUCTURE|BODY|RFC822(\.HEADER|\.TEXT)?|BINARY.*|PREVIEW.*|SNIPPET.*"
    r"|BODY(\.PEEK)?\[.*)$"
)


@dataclass(frozen=True, slots=True)
class FolderState:
    """What a folder looks like now: the sync cursor is (uidvalidity, uidnext, highestmodseq)."""

    folder: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int | None
    """None when the server has no CONDSTORE (or the folder has no mod-sequences)."""
    exists: int


@dataclass(frozen=True, slots=True)
class HeaderFetch:
    """One message's metadata and the raw bytes of exactly the header fields the plan names."""

    uid: int
    flags: tuple[str, ...]
    internaldate: datetime | None
    size: int | None
    modseq: int | None
    raw_headers: bytes
    headers: MessageHeaders

    @property
    def defects(self) -> tuple[str, ...]:
        return self.headers.defects


def header_fields_for(plan: FetchPlan) -> tuple[str, ...]:
    """The plan's header field names, checked to be plain tokens (they go into a command)."""
    for name in plan.header_fields:
        if not _HEADER_FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid header field name in fetch plan: {name!r}")
    return tuple(plan.header_fields)


def header_fetch_items(plan: FetchPlan, *, with_modseq: bool) -> list[str]:
    """The FETCH items of a headers-only fetch; never ENVELOPE, BODYSTRUCTURE or a body part."""
    items = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    if with_modseq:
        items.append("MODSEQ")
    fields = header_fields_for(plan)
    if fields:
        items.append(f"BODY.PEEK[HEADER.FIELDS ({' '.join(fields)})]")
    check_header_items(items, fields)
    return items


def check_header_items(items: Iterable[str], fields: tuple[str, ...]) -> None:
    """Refuse any FETCH item that could carry content beyond the plan's header fields."""
    allowed_body = f"BODY.PEEK[HEADER.FIELDS ({' '.join(fields)})]".upper()
    for item in items:
        upper = item.upper()
        if upper == allowed_body:
            continue
        if _CONTENT_ITEMS.match(upper):
            raise PrivacyViolation(f"headers-only fetch must not request {item}")


def int_or_none(value: object) -> int | None:
    if isinstance(value, tuple | list):
        value = value[0] if value else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def header_fetch_from_response(
    uid: int, data: dict[bytes, Any], fields: tuple[str, ...], *, include_subject: bool
) -> HeaderFetch:
    """One FETCH response to a ``HeaderFetch``; never raises (hostile data becomes defects)."""
    raw = b""
    found = False
    for key, value in data.items():
        if isinstance(key, bytes) and key.upper().startswith(b"BODY[HEADER.FIELDS"):
            raw = bytes(value) if isinstance(value, bytes | bytearray) else b""
            found = True
    headers = parse_headers(raw, include_subject=include_subject, wanted=fields)
    if fields and not found:
        headers = with_defect(headers, "server returned no header data")
    internaldate = data.get(b"INTERNALDATE")
    return HeaderFetch(
        uid=uid,
        flags=tuple(
            f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f)
            for f in data.get(b"FLAGS", ())
        ),
        # imapclient's own FixedOffset tzinfo is turned into plain UTC
        internaldate=internaldate.astimezone(UTC) if isinstance(internaldate, datetime) else None,
        size=int_or_none(data.get(b"RFC822.SIZE")),
        modseq=int_or_none(data.get(b"MODSEQ")),
        raw_headers=raw,
        headers=headers,
    )


def with_defect(headers: MessageHeaders, defect: str) -> MessageHeaders:
    return replace(headers, defects=(*headers.defects, defect))
