"""iCalendar (RFC 5545) VEVENT/VTODO <-> act_fields fields, with icalendar.

    item = parse_ical(text, item="/anna/crmsync/x.ics")      # MailboxItem (or ItemFormatError)
    text = render_ical(ItemKind.APPOINTMENT, {"subject": "Review"}, uid=item.uid,
                       crm_id="42", existing=text)          # updates in place

Rendering updates only the fields it is given (a partial dict is a partial update; None
removes the property) and keeps everything else of an existing item: alarms, X- properties,
attendees' parameters, recurrence overrides. Times stay exact: a datetime is written in the
item's time zone (``TZID`` with a ``VTIMEZONE``), all-day values as ``DATE``.

Field values (act_fields): ``start``/``end``/``due`` timezone-aware datetimes or dates (all
day); ``timezone`` the IANA name (``UTC`` for Z times, None when all day); ``recurrence`` a
tuple of ``"RRULE:..."``, ``"RDATE:..."`` and ``"EXDATE:..."`` strings, dates in UTC
(``YYYYMMDDTHHMMSSZ``) or as ``YYYYMMDD`` when all day; ``attendees`` a sorted tuple of lower-case
addresses; ``show_as`` ``busy|free|tentative|oof``; ``status`` the lower-case STATUS.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar
import recurring_ical_events

from crmsync.core.act_fields import CRM_ID_PROPERTY, ItemKind, field_names
from crmsync.dav.items import ItemFormatError, MailboxItem, Value, clean_text

UTC = dt.UTC
REGARDING_PROPERTY = "X-CRMSYNC-REGARDING"
BUSY_STATUS = "X-MICROSOFT-CDO-BUSYSTATUS"
PRODID = "-//crmsync//crmsync//EN"
MAX_OCCURRENCES = 10_000
_COMPONENT = {ItemKind.APPOINTMENT: "VEVENT", ItemKind.TASK: "VTODO"}
_KIND = {v: k for k, v in _COMPONENT.items()}
_TEXT_PROPS = {"subject": "SUMMARY", "description": "DESCRIPTION", "location": "LOCATION"}
_TIME_FIELDS = frozenset({"start", "end", "due", "is_all_day", "timezone", "recurrence"})


def parse_ical(
    text: str | bytes, *, item: str | None = None, floating_tz: dt.tzinfo = UTC
) -> MailboxItem:
    """The VEVENT or VTODO in TEXT (one CalDAV resource) as a MailboxItem.

    ITEM names the item in error messages (its href). Floating times (no zone) are read in
    FLOATING_TZ. Raises ItemFormatError for anything that is not one readable event or task.
    """
    cal = _load(text, item)
    master, overrides = _split(cal, item)
    kind = _KIND[master.name]
    uid = clean_text(master.get("UID"))
    if uid is None:
        raise ItemFormatError("the item has no UID", item=item)
    try:
        fields = _read_fields(kind, master, floating_tz)
        changed = {
            _plain_time(o.decoded("RECURRENCE-ID"), floating_tz): _read_fields(kind, o, floating_tz)
            for o in overrides
        }
    except ItemFormatError as exc:
        raise ItemFormatError(str(exc), item=item or uid) from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ItemFormatError(f"unreadable value ({exc})", item=item or uid) from None
    return MailboxItem(
        kind, uid, fields, clean_text(master.get(CRM_ID_PROPERTY)), _categories(master), changed
    )


def _load(text: str | bytes, item: str | None) -> icalendar.Calendar:
    try:
        cal = icalendar.Calendar.from_ical(text)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise ItemFormatError(f"not valid iCalendar ({str(exc)[:200]})", item=item) from None
    if not isinstance(cal, icalendar.Calendar):
        raise ItemFormatError("not a VCALENDAR", item=item)
    return cal


def _split(
    cal: icalendar.Calendar, item: str | None
) -> tuple[icalendar.Component, list[icalendar.Component]]:
    comps = [c for c in cal.subcomponents if c.name in _KIND]
    if not comps:
        raise ItemFormatError("holds no VEVENT or VTODO", item=item)
    for comp in comps:
        if comp.errors:
            name, why = comp.errors[0]
            raise ItemFormatError(f"{comp.name} has a bad {name} ({why})", item=item)
    masters = [c for c in comps if "RECURRENCE-ID" not in c]
    overrides = [c for c in comps if "RECURRENCE-ID" in c]
    if len(masters) > 1 or len({c.name for c in comps}) > 1:
        raise ItemFormatError("holds more than one event or task", item=item)
    # An invitation to single occurrences only has no master: the first override stands in.
    return (masters[0] if masters else overrides[0]), overrides if masters else overrides[1:]


def _plain_time(value: dt.date, floating_tz: dt.tzinfo) -> dt.datetime | dt.date:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=floating_tz)
    return value


def _zone_name(value: object) -> str | None:
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        return None
    tz = value.tzinfo
    if tz is UTC or (value.utcoffset() == dt.timedelta(0) and str(tz) in ("UTC", "Z", "GMT")):
        return "UTC"
    return getattr(tz, "key", None) or str(tz)


def _read_fields(
    kind: ItemKind, comp: icalendar.Component, floating_tz: dt.tzinfo
) -> dict[str, Value]:
    fields: dict[str, Value] = dict.fromkeys(field_names(kind))
    fields["subject"] = clean_text(comp.get("SUMMARY"))
    fields["description"] = clean_text(comp.get("DESCRIPTION"))
    start = comp.decoded("DTSTART") if "DTSTART" in comp else None
    start_value = _plain_time(start, floating_tz) if start is not None else None
    priority = int(comp.decoded("PRIORITY")) if "PRIORITY" in comp else 0
    fields["priority"] = priority or None  # 0 = undefined
    fields["regarding"] = clean_text(comp.get(REGARDING_PROPERTY))
    status = clean_text(comp.get("STATUS"))
    fields["status"] = status.lower() if status else None
    if kind is ItemKind.TASK:
        fields["start"] = start_value
        due = comp.decoded("DUE") if "DUE" in comp else None
        if due is None and start is not None and "DURATION" in comp:
            due = start + comp.decoded("DURATION")
        fields["due"] = _plain_time(due, floating_tz) if due is not None else None
        fields["percent_complete"] = (
            int(comp.decoded("PERCENT-COMPLETE")) if "PERCENT-COMPLETE" in comp else None
        )
        completed = comp.decoded("COMPLETED") if "COMPLETED" in comp else None
        fields["completed"] = _plain_time(completed, UTC) if completed is not None else None
        return fields
    if start is None:
        raise ItemFormatError("the event has no DTSTART")
    all_day = not isinstance(start, dt.datetime)
    if "DTEND" in comp:
        end = comp.decoded("DTEND")
    elif "DURATION" in comp:
        end = start + comp.decoded("DURATION")
    else:  # RFC 5545 §3.6.1: one day when all day, else it ends when it starts
        end = start + dt.timedelta(days=1) if all_day else start
    fields.update(
        location=clean_text(comp.get("LOCATION")),
        start=start_value,
        end=_plain_time(end, floating_tz),
        is_all_day=all_day,
        timezone=_zone_name(start),
        recurrence=_read_recurrence(comp, floating_tz),
        organizer=_address(comp.get("ORGANIZER")),
        attendees=tuple(sorted({a for a in map(_address, _as_list(comp.get("ATTENDEE"))) if a})),
        show_as=_show_as(comp),
    )
    return fields


def _as_list(value: object) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _address(value: object) -> str | None:
    text = clean_text(value)
    if not text:
        return None
    if text.lower().startswith("mailto:"):
        text = text[7:]
    return text.strip().lower() or None


def _show_as(comp: icalendar.Component) -> str:
    busy = clean_text(comp.get(BUSY_STATUS))
    if busy and busy.lower() in ("free", "tentative", "busy", "oof"):
        return busy.lower()
    transp = clean_text(comp.get("TRANSP"))
    return "free" if transp and transp.upper() == "TRANSPARENT" else "busy"


def _stamp(value: dt.date, floating_tz: dt.tzinfo) -> str:
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=floating_tz)
        return aware.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return value.strftime("%Y%m%d")


def _canonical_rrule(recur: icalendar.vRecur) -> str:
    parts = recur.to_ical().decode().split(";")
    freq = [p for p in parts if p.upper().startswith("FREQ=")]
    return ";".join(freq + sorted(p for p in parts if p not in freq))


def _read_recurrence(comp: icalendar.Component, floating_tz: dt.tzinfo) -> tuple[str, ...] | None:
    lines = [f"RRULE:{_canonical_rrule(r)}" for r in _as_list(comp.get("RRULE"))]
    for name in ("RDATE", "EXDATE"):
        stamps = set()
        for prop in _as_list(comp.get(name)):
            for d in prop.dts:
                if isinstance(d.dt, dt.date):  # RDATE periods are not supported: skipped
                    stamps.add(_stamp(d.dt, floating_tz))
        lines.extend(f"{name}:{s}" for s in sorted(stamps))
    return tuple(lines) or None


def _categories(comp: icalendar.Component) -> tuple[str, ...]:
    found: list[str] = []
    for prop in _as_list(comp.get("CATEGORIES")):
        for cat in getattr(prop, "cats", []):
            text = str(cat).strip()
            if text and text not in found:
                found.append(text)
    return tuple(found)


# -- rendering --------------------------------------------------------------------------------
def render_ical(
    kind: ItemKind,
    fields: Mapping[str, Value],
    *,
    uid: str | None = None,
    crm_id: str | None = None,
    categories: tuple[str, ...] | None = None,
    existing: str | bytes | None = None,
    now: dt.datetime | None = None,
) -> str:
    """TEXT of the item: EXISTING updated with FIELDS (only those given), or a new item.

    UID defaults to the existing one (or a new UUID); CRM_ID is written as X-CRMSYNC-ID;
    CATEGORIES, when given, replaces the item's categories (None keeps them).
    """
    unknown = set(fields) - set(field_names(kind))
    if unknown:
        raise ValueError(f"{kind} has no fields {sorted(unknown)}")
    now = (now or dt.datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    if existing is not None:
        cal = _load(existing, uid)
        master, _overrides = _split(cal, uid)
        if master.name != _COMPONENT[kind]:
            raise ItemFormatError(f"is a {master.name}, not a {kind}", item=uid)
        uid = uid or clean_text(master.get("UID"))
        if any(f in _TIME_FIELDS for f in fields):
            master["SEQUENCE"] = int(master.get("SEQUENCE", 0)) + 1
    else:
        cal = icalendar.Calendar()
        cal.add("PRODID", PRODID)
        cal.add("VERSION", "2.0")
        master = icalendar.Event() if kind is ItemKind.APPOINTMENT else icalendar.Todo()
        cal.add_component(master)
        master.add("CREATED", now)
    uid = uid or str(uuid.uuid4())
    _set(master, "UID", uid)
    _set(master, "DTSTAMP", now)
    _set(master, "LAST-MODIFIED", now)
    if crm_id is not None:
        _set(master, CRM_ID_PROPERTY, crm_id)
    if categories is not None:
        master.pop("CATEGORIES", None)
        if categories:
            master.add("CATEGORIES", list(categories))
    try:
        _write_fields(kind, master, dict(fields))
        if kind is ItemKind.APPOINTMENT and "DTSTART" not in master:
            raise ItemFormatError("an appointment needs a start", item=uid)
        cal.add_missing_timezones()
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ItemFormatError):
            raise
        raise ItemFormatError(f"cannot write it ({exc})", item=uid) from None
    return cal.to_ical(sorted=False).decode("utf-8")


def _set(comp: icalendar.Component, name: str, value: object, **params: str) -> None:
    comp.pop(name, None)
    if value is not None and value != "":
        comp.add(name, value, parameters=params or None)


def _in_zone(value: Value, zone: str | None) -> Value:
    """VALUE (a datetime) expressed in ZONE, so it is written with that TZID (same instant)."""
    if not isinstance(value, dt.datetime):
        return value
    if value.tzinfo is None:
        raise ItemFormatError("a time without a time zone cannot be written exactly")
    if zone in (None, "UTC"):
        return value.astimezone(UTC) if zone == "UTC" else value
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):  # a server-defined VTIMEZONE: keep its own
        return value
    return value.astimezone(tz)


def _write_fields(kind: ItemKind, comp: icalendar.Component, fields: dict[str, Value]) -> None:
    for name, prop in _TEXT_PROPS.items():
        if name in fields:
            _set(comp, prop, fields[name])
    if "priority" in fields:
        _set(comp, "PRIORITY", fields["priority"] or None)
    if "regarding" in fields:
        _set(comp, REGARDING_PROPERTY, fields["regarding"])
    if "status" in fields:
        status = fields["status"]
        _set(comp, "STATUS", str(status).upper() if status else None)
    zone = fields.get(
        "timezone", _zone_name(comp.decoded("DTSTART")) if "DTSTART" in comp else None
    )
    if kind is ItemKind.TASK:
        for name, prop in (("start", "DTSTART"), ("due", "DUE")):
            if name in fields:
                _set(comp, prop, _in_zone(fields[name], zone))
        if "due" in fields:
            comp.pop("DURATION", None)
        if "percent_complete" in fields:
            _set(comp, "PERCENT-COMPLETE", fields["percent_complete"])
        if "completed" in fields:
            done = fields["completed"]
            _set(comp, "COMPLETED", done.astimezone(UTC) if isinstance(done, dt.datetime) else done)
        return
    if "start" in fields:
        _set(comp, "DTSTART", _in_zone(fields["start"], zone))
    if "end" in fields:
        comp.pop("DURATION", None)
        _set(comp, "DTEND", _in_zone(fields["end"], zone))
    if "recurrence" in fields:
        _write_recurrence(comp, fields["recurrence"], zone)
    if "organizer" in fields:
        organizer = fields["organizer"]
        _set(comp, "ORGANIZER", f"mailto:{organizer}" if organizer else None)
    if "attendees" in fields:
        _write_attendees(comp, tuple(fields["attendees"] or ()))
    if "show_as" in fields:
        show = (fields["show_as"] or "busy").lower()
        _set(comp, "TRANSP", "TRANSPARENT" if show == "free" else "OPAQUE")
        if BUSY_STATUS in comp or show in ("tentative", "oof"):
            _set(comp, BUSY_STATUS, show.upper())


def _write_attendees(comp: icalendar.Component, wanted: tuple[str, ...]) -> None:
    """Keep the existing ATTENDEE lines (with their PARTSTAT, CN...) of addresses still there."""
    keep = {a.lower() for a in wanted}
    current = _as_list(comp.pop("ATTENDEE", None))
    kept = [p for p in current if _address(p) in keep]
    have = {_address(p) for p in kept}
    for prop in kept:
        comp.add("ATTENDEE", prop)
    for address in wanted:
        if address.lower() not in have:
            comp.add("ATTENDEE", f"mailto:{address}")


def _parse_stamp(text: str, zone: str | None) -> dt.datetime | dt.date:
    if "T" not in text:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    when = dt.datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    value = _in_zone(when, zone)
    assert isinstance(value, dt.datetime)
    return value


def _write_recurrence(comp: icalendar.Component, lines: Value, zone: str | None) -> None:
    for name in ("RRULE", "RDATE", "EXDATE"):
        comp.pop(name, None)
    dates: dict[str, list] = {"RDATE": [], "EXDATE": []}
    for line in tuple(lines or ()):
        name, _, value = str(line).partition(":")
        name = name.upper()
        if name == "RRULE":
            comp.add("RRULE", icalendar.vRecur.from_ical(value))
        elif name in dates:
            dates[name].append(_parse_stamp(value, zone))
        else:
            raise ItemFormatError(f"unknown recurrence line {line!r}")
    for name, values in dates.items():
        if values:
            comp.add(name, values)


# -- occurrences ------------------------------------------------------------------------------
def occurrences(
    text: str | bytes,
    start: dt.date | dt.datetime,
    end: dt.date | dt.datetime,
    *,
    limit: int = MAX_OCCURRENCES,
) -> list[tuple[dt.datetime | dt.date, dt.datetime | dt.date, str | None]]:
    """(start, end, subject) of each occurrence of the item between START and END, moved and
    deleted occurrences applied (recurring-ical-events), at most LIMIT of them."""
    cal = _load(text, None)
    found = []
    try:
        query = recurring_ical_events.of(cal, components=list(_KIND))
        for comp in query.between(start, end):
            if len(found) >= limit:
                break
            first = comp.decoded("DTSTART") if "DTSTART" in comp else None
            last = (
                comp.decoded("DTEND")
                if "DTEND" in comp
                else comp.get("DUE") and comp.decoded("DUE")
            )
            found.append((first, last or first, clean_text(comp.get("SUMMARY"))))
    except (ValueError, TypeError, KeyError) as exc:
        raise ItemFormatError(f"its recurrence cannot be expanded ({exc})") from None
    return found
