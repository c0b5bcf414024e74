"""Items written by the converters survive the real Radicale, and a client's edit made on the
server comes back through changes() with what crmsync did not write kept."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from crmsync.core.act_fields import TRACK_CATEGORY, ItemKind
from crmsync.dav.client import CollectionKind, DavClient
from crmsync.dav.ical import parse_ical, render_ical
from crmsync.dav.vcard import parse_vcard, render_vcard
from crmsync.secrets import Secret
from tests.stackfix import MailUser, Stack

pytestmark = pytest.mark.integration
HEL = ZoneInfo("Europe/Helsinki")


def test_event_and_card_round_trip_through_radicale(stack: Stack, mail_user: MailUser) -> None:
    url = f"{stack.radicale_url}{mail_user.username}/"
    with DavClient(url, mail_user.username, Secret(mail_user.password)) as dav:
        cal, book = dav.ensure_calendar(), dav.ensure_addressbook()
        start = dt.datetime(2026, 10, 24, 9, 30, tzinfo=HEL)
        fields = {
            "subject": "Visit",
            "start": start,
            "end": start + dt.timedelta(hours=1),
            "timezone": "Europe/Helsinki",
            "recurrence": ("RRULE:FREQ=DAILY;COUNT=3",),
        }
        ics = render_ical(ItemKind.APPOINTMENT, fields, uid="visit-1", crm_id="a-1")
        vcf = render_vcard({"full_name": "Ann Ex", "email": "ann@ex.test"}, uid="ann-1")
        ev_href = dav.item_href(cal.href, "visit-1", CollectionKind.CALENDAR)
        card_href = dav.item_href(book.href, "ann-1", CollectionKind.ADDRESSBOOK)
        dav.put(ev_href, ics, CollectionKind.CALENDAR, if_none_match=True)
        dav.put(card_href, vcf, CollectionKind.ADDRESSBOOK, if_none_match=True)
        tokens = {cal.href: dav.changes(cal.href, None).token}

        got = dav.get_many(cal.href, [ev_href], CollectionKind.CALENDAR).resources[0]
        item = parse_ical(got.body, item=got.href)
        assert item.crm_id == "a-1" and item.fields["start"] == start
        assert item.fields["start"].tzinfo == HEL
        assert item.fields["recurrence"] == ("RRULE:FREQ=DAILY;COUNT=3",)

        # Another client adds an alarm and the track category; crmsync then changes the subject.
        edited = got.body.replace(
            "END:VEVENT",
            "CATEGORIES:Tracked to CRM\r\nBEGIN:VALARM\r\nACTION:DISPLAY\r\n"
            "TRIGGER:-PT5M\r\nDESCRIPTION:x\r\nEND:VALARM\r\nEND:VEVENT",
        )
        etag = dav.put(ev_href, edited, CollectionKind.CALENDAR, if_match=got.etag)
        delta = dav.changes(cal.href, tokens[cal.href])
        assert delta.changed == {ev_href: etag}
        again = dav.get_many(cal.href, list(delta.changed), CollectionKind.CALENDAR).resources[0]
        assert TRACK_CATEGORY in parse_ical(again.body).categories
        mine = render_ical(ItemKind.APPOINTMENT, {"subject": "Visit (moved)"}, existing=again.body)
        dav.put(ev_href, mine, CollectionKind.CALENDAR, if_match=again.etag)
        final = dav.get_many(cal.href, [ev_href], CollectionKind.CALENDAR).resources[0].body
        assert "TRIGGER:-PT5M" in final and parse_ical(final).fields["subject"] == "Visit (moved)"

        card = dav.get_many(book.href, [card_href], CollectionKind.ADDRESSBOOK).resources[0]
        assert parse_vcard(card.body).fields["email"] == "ann@ex.test"
