"""What the iCalendar and vCard converters share: the parsed item and the format error.

A mailbox item is described with the field names of ``crmsync.core.act_fields.FIELDS[kind]``
and plain comparable values, so the planner compares it with the CRM row without knowing the
format. Every field of the kind is present in ``fields`` (None when the item has no value).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from crmsync.core.act_fields import TRACK_CATEGORY, ItemKind
from crmsync.errors import CrmsyncError

Value = str | int | bool | None | dt.datetime | dt.date | tuple
"""A field value (act_fields): equal values mean no change."""


class ItemFormatError(CrmsyncError, ValueError):
    """One item cannot be read or written; the message names it. Skip the item, keep going."""

    def __init__(self, message: str, *, item: str | None = None) -> None:
        super().__init__(f"{item}: {message}" if item else message)
        self.item = item


@dataclass(frozen=True)
class MailboxItem:
    kind: ItemKind
    uid: str
    fields: dict[str, Value]
    crm_id: str | None
    """The CRM row's id from ``X-CRMSYNC-ID`` (act_fields.CRM_ID_PROPERTY), if written."""
    categories: tuple[str, ...]
    overrides: dict[dt.datetime | dt.date, dict[str, Value]] = field(default_factory=dict)
    """Recurring appointments: the fields of each changed occurrence, by its RECURRENCE-ID
    (the occurrence's original start). Deleted occurrences are EXDATEs in ``recurrence``."""

    @property
    def tracked(self) -> bool:
        """The user asked for it to be tracked (the category) or crmsync created it."""
        folded = {c.casefold() for c in self.categories}
        return self.crm_id is not None or TRACK_CATEGORY.casefold() in folded


def unescape_text(raw: str) -> str:
    """An RFC 5545 / 6350 TEXT value without its escapes (``\\,`` ``\\;`` ``\\n`` ``\\\\``)."""
    out = []
    chars = iter(raw)
    for ch in chars:
        if ch != "\\":
            out.append(ch)
            continue
        nxt = next(chars, "")
        out.append("\n" if nxt in "nN" and nxt else nxt)
    return "".join(out)


def clean_text(value: object) -> str | None:
    """A property's text value as a str (None when empty). Properties icalendar does not know
    (vCard's FN, TEL, NOTE...) come as raw ``vUnknown`` and are unescaped here."""
    if isinstance(value, list):  # a property given twice: the first one counts
        value = value[0] if value else None
    if value is None:
        return None
    if type(value).__name__ == "vUnknown":
        raw = value.to_ical()  # type: ignore[attr-defined]
        text = unescape_text(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
    else:
        text = str(value)
    text = text.strip()
    return text or None
