"""iCalendar <-> act_fields conversion: exact times across DST, recurrence kept, unknown parts
preserved, bad input named."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from crmsync.core.act_fields import CRM_ID_PROPERTY, TRACK_CATEGORY, ItemKind, field_names
from crmsync.dav.ical import occurrences, parse_ical, render_ical
from crmsync.dav.items import ItemFormatError

HEL = ZoneInfo("Europe/Helsinki")
UTC = dt.UTC

# A weekly Tuesday 10:00 Helsinki series from 20 Oct 2026 (EEST, +03) across the last Sunday of
# October (25 Oct, back to EET, +02): the 3 Nov occurrence is deleted, the 27 Oct one moved.
SERIES = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//Other client//EN
BEGIN:VTIMEZONE
TZID:Europe/Helsinki
BEGIN:STANDARD
DTSTART:19701025T040000
TZOFFSETFROM:+0300
TZOFFSETTO:+0200
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:19700329T030000
TZOFFSETFROM:+0200
TZOFFSETTO:+0300
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
END:DAYLIGHT
END:VTIMEZONE
BEGIN:VEVENT
UID:series-1@example.test
DTSTAMP:20261001T000000Z
DTSTART;TZID=Europe/Helsinki:20261020T100000
DTEND;TZID=Europe/Helsinki:20261020T110000
RRULE:BYDAY=TU;FREQ=WEEKLY;COUNT=4
EXDATE;TZID=Europe/Helsinki:20261103T100000
SUMMARY:Weekly review
ORGANIZER;CN=Anna:mailto:Anna@Example.test
ATTENDEE;CN=Bob;PARTSTAT=ACCEPTED:mailto:Bob@Example.test
CATEGORIES:Work,Tracked to CRM
X-CLIENT-COLOUR;X-P=1:teal\\, dark
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT15M
DESCRIPTION:Reminder
END:VALARM
END:VEVENT
BEGIN:VEVENT
UID:series-1@example.test
DTSTAMP:20261001T000000Z
RECURRENCE-ID;TZID=Europe/Helsinki:20261027T100000
DTSTART;TZID=Europe/Helsinki:20261027T140000
DTEND;TZID=Europe/Helsinki:20261027T150000
SUMMARY:Weekly review (moved)
END:VEVENT
END:VCALENDAR
""".replace("\n", "\r\n")


def test_series_fields_are_exact_across_dst() -> None:
    item = parse_ical(SERIES, item="/anna/cal/s.ics")
    assert item.kind is ItemKind.APPOINTMENT and item.uid == "series-1@example.test"
    assert set(item.fields) == set(field_names(ItemKind.APPOINTMENT))
    f = item.fields
    assert f["start"] == dt.datetime(2026, 10, 20, 10, tzinfo=HEL)
    assert f["start"].utcoffset() == dt.timedelta(hours=3)
    assert f["end"] == dt.datetime(2026, 10, 20, 8, tzinfo=UTC)
    assert f["timezone"] == "Europe/Helsinki" and f["is_all_day"] is False
    assert f["recurrence"] == ("RRULE:FREQ=WEEKLY;BYDAY=TU;COUNT=4", "EXDATE:20261103T080000Z")
    assert f["organizer"] == "anna@example.test" and f["attendees"] == ("bob@example.test",)
    assert f["show_as"] == "busy" and f["subject"] == "Weekly review"
    assert item.categories == ("Work", TRACK_CATEGORY) and item.tracked
    moved = item.overrides[dt.datetime(2026, 10, 27, 10, tzinfo=HEL)]
    assert moved["start"] == dt.datetime(2026, 10, 27, 14, tzinfo=HEL)
    assert moved["start"].utcoffset() == dt.timedelta(hours=2)  # after the change back


def test_occurrences_apply_the_move_and_the_deletion() -> None:
    found = occurrences(SERIES, dt.date(2026, 10, 1), dt.date(2026, 12, 1))
    starts = [start.astimezone(UTC) for start, _end, _subject in found]
    assert starts == [
        dt.datetime(2026, 10, 20, 7, tzinfo=UTC),  # 10:00 EEST
        dt.datetime(2026, 10, 27, 12, tzinfo=UTC),  # moved to 14:00 EET
        dt.datetime(2026, 11, 10, 8, tzinfo=UTC),  # 10:00 EET; 3 Nov deleted
    ]
    assert found[1][2] == "Weekly review (moved)"


def test_update_in_place_keeps_what_the_client_put_there() -> None:
    text = render_ical(
        ItemKind.APPOINTMENT,
        {"subject": "Weekly review (CRM)", "location": "Room 4"},
        crm_id="appt-42",
        existing=SERIES,
    )
    assert "BEGIN:VALARM" in text and "TRIGGER:-PT15M" in text
    assert "X-CLIENT-COLOUR;X-P=1:teal\\, dark" in text
    assert (
        "PARTSTAT=ACCEPTED" in text and "RECURRENCE-ID;TZID=Europe/Helsinki:20261027T100000" in text
    )
    assert "DTSTART;TZID=Europe/Helsinki:20261020T100000" in text
    assert "BEGIN:VTIMEZONE" in text
    item = parse_ical(text)
    before = parse_ical(SERIES)
    assert item.crm_id == "appt-42" and item.uid == before.uid
    assert item.fields == {**before.fields, "subject": "Weekly review (CRM)", "location": "Room 4"}
    assert item.overrides == before.overrides and item.categories == before.categories
    assert f"{CRM_ID_PROPERTY}:appt-42" in text
    assert "SEQUENCE" not in text  # no time changed: no re-scheduling for clients


def test_new_series_round_trips_with_its_time_zone() -> None:
    fields = {
        "subject": "Planning",
        "description": "Line one\nLine two, with; punctuation",
        "location": None,
        "start": dt.datetime(2026, 10, 20, 7, tzinfo=UTC),  # given as UTC instants
        "end": dt.datetime(2026, 10, 20, 8, tzinfo=UTC),
        "is_all_day": False,
        "timezone": "Europe/Helsinki",
        "recurrence": ("RRULE:FREQ=WEEKLY;BYDAY=TU;COUNT=4", "EXDATE:20261103T080000Z"),
        "priority": 1,
        "organizer": "anna@example.test",
        "attendees": ("bob@example.test", "cleo@example.test"),
        "regarding": "account:7",
        "show_as": "tentative",
        "status": "confirmed",
    }
    text = render_ical(ItemKind.APPOINTMENT, fields, uid="new-1", crm_id="a-1")
    assert "DTSTART;TZID=Europe/Helsinki:20261020T100000" in text
    assert "EXDATE;TZID=Europe/Helsinki:20261103T100000" in text
    assert "BEGIN:VTIMEZONE" in text and "TZID:Europe/Helsinki" in text
    item = parse_ical(text)
    assert item.fields == fields and item.crm_id == "a-1" and item.uid == "new-1"
    starts = [s for s, _e, _t in occurrences(text, dt.date(2026, 10, 1), dt.date(2026, 12, 1))]
    assert [s.hour for s in starts] == [10, 10, 10]  # local time kept across the DST change


def test_all_day_event_is_dates() -> None:
    fields = {"subject": "Fair", "start": dt.date(2026, 10, 24), "end": dt.date(2026, 10, 26)}
    item = parse_ical(render_ical(ItemKind.APPOINTMENT, fields, uid="d1"))
    assert item.fields["start"] == dt.date(2026, 10, 24) and item.fields["is_all_day"] is True
    assert item.fields["end"] == dt.date(2026, 10, 26) and item.fields["timezone"] is None


def test_task_round_trip_and_partial_update() -> None:
    fields = {
        "subject": "Call back",
        "description": None,
        "start": dt.datetime(2026, 10, 24, 9, tzinfo=HEL),
        "due": dt.datetime(2026, 10, 26, 17, tzinfo=HEL),
        "percent_complete": 40,
        "completed": None,
        "priority": 5,
        "regarding": None,
        "status": "in-process",
    }
    text = render_ical(ItemKind.TASK, fields, uid="t1", categories=(TRACK_CATEGORY,))
    item = parse_ical(text)
    assert item.kind is ItemKind.TASK and item.fields == fields
    assert item.categories == (TRACK_CATEGORY,)
    done = dt.datetime(2026, 10, 25, 12, tzinfo=UTC)
    again = parse_ical(
        render_ical(
            ItemKind.TASK,
            {"percent_complete": 100, "completed": done, "status": "completed"},
            existing=text,
        )
    )
    assert again.fields == {
        **fields,
        "percent_complete": 100,
        "completed": done,
        "status": "completed",
    }
    assert again.categories == (TRACK_CATEGORY,)


def test_equal_instants_in_other_zones_are_no_change() -> None:
    a = parse_ical(SERIES).fields["start"]
    assert a == dt.datetime(2026, 10, 20, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("hello", "not valid iCalendar"),
        ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n", "no VEVENT or VTODO"),
        (
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTART:garbage\r\nEND:VEVENT\r\n"
            "END:VCALENDAR\r\n",
            "bad DTSTART",
        ),
        (
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART:20261020T100000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
            "no UID",
        ),
    ],
)
def test_malformed_items_are_named_errors(text: str, says: str) -> None:
    with pytest.raises(ItemFormatError, match=says) as failed:
        parse_ical(text, item="/anna/cal/bad.ics")
    assert str(failed.value).startswith("/anna/cal/bad.ics: ")


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ValueError, match="no fields"):
        render_ical(ItemKind.TASK, {"location": "x"}, uid="t")
