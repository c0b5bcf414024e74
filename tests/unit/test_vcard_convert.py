"""vCard 3.0 and 4.0 <-> act_fields contact fields: round trips, updates in place that keep
what the client wrote, bad cards named."""

from __future__ import annotations

import pytest

from crmsync.core.act_fields import CRM_ID_PROPERTY, TRACK_CATEGORY, ItemKind, field_names
from crmsync.dav.items import ItemFormatError
from crmsync.dav.vcard import parse_vcard, render_vcard

V3 = """BEGIN:VCARD
VERSION:3.0
PRODID:-//Apple Inc.//iPhone OS 18//EN
UID:3F2504E0-4F89-11D3-9A0C-0305E82C3301
FN:Anna Virtanen
N:Virtanen;Anna;Maria;Dr.;
ORG:Acme Oy;Sales;North
TITLE:Head of sales
EMAIL;TYPE=INTERNET,HOME:anna@home.example
EMAIL;TYPE=INTERNET,WORK,PREF:anna.virtanen@acme.example
TEL;TYPE=WORK,VOICE:+358 9 123 456
TEL;TYPE=CELL:+358 40 765 4321
TEL;TYPE=WORK,FAX:+358 9 123 457
ADR;TYPE=HOME:;;Kotikatu 2;Espoo;;02100;Finland
ADR;TYPE=WORK:;;Mannerheimintie 1;Helsinki;;00100;Finland
NOTE:Met at the fair\\, hall 2\\nLikes coffee
CATEGORIES:Customers,Tracked to CRM
PHOTO;ENCODING=b;TYPE=JPEG:/9j/4AAQSkZJRgABAQAAAQABAAD
X-ABUID:1234:ABPerson
item1.X-ABLABEL:assistant
END:VCARD
""".replace("\n", "\r\n")

V4 = """BEGIN:VCARD
VERSION:4.0
UID:urn:uuid:4fbe8971-0bc3-424c-9c26-36c3e1eff6b1
FN:Bert Berg
N:Berg;Bert;;;
EMAIL;PREF=1;TYPE=work:bert@berg.example
TEL;VALUE=uri;TYPE="cell,voice":tel:+46-70-123-4567
X-CRMSYNC-ID:contact-9
END:VCARD
""".replace("\n", "\r\n")


def test_vcard3_fields() -> None:
    item = parse_vcard(V3, item="/anna/book/a.vcf")
    assert item.kind is ItemKind.CONTACT and item.uid.startswith("3F2504E0")
    assert set(item.fields) == set(field_names(ItemKind.CONTACT))
    assert item.fields == {
        "full_name": "Anna Virtanen",
        "company": "Acme Oy",
        "first_name": "Anna",
        "last_name": "Virtanen",
        "email": "anna.virtanen@acme.example",
        "job_title": "Head of sales",
        "telephone": "+358 9 123 456",
        "mobile_phone": "+358 40 765 4321",
        "city": "Helsinki",
        "country": "Finland",
        "description": "Met at the fair, hall 2\nLikes coffee",
    }
    assert item.categories == ("Customers", TRACK_CATEGORY) and item.tracked
    assert item.crm_id is None


def test_vcard4_fields_and_crm_id() -> None:
    item = parse_vcard(V4)
    assert item.crm_id == "contact-9" and item.tracked
    assert item.fields["email"] == "bert@berg.example"
    assert item.fields["mobile_phone"] == "+46-70-123-4567"
    assert item.fields["telephone"] is None and item.fields["company"] is None


def test_update_in_place_keeps_the_rest_of_the_card() -> None:
    text = render_vcard(
        {"job_title": "CFO", "telephone": "+358 9 000", "city": "Tampere", "mobile_phone": None},
        crm_id="c-1",
        existing=V3,
    )
    assert text.startswith("BEGIN:VCARD\r\nVERSION:3.0\r\n")
    for kept in (
        "PHOTO;ENCODING=b;TYPE=JPEG:/9j/4AAQSkZJRgABAQAAAQABAAD",
        "X-ABUID:1234:ABPerson",
        "TEL;TYPE=WORK,FAX:+358 9 123 457",
        "ADR;TYPE=HOME:;;Kotikatu 2;Espoo;;02100;Finland",
        "ADR;TYPE=WORK:;;Mannerheimintie 1;Tampere;;00100;Finland",
        "EMAIL;TYPE=INTERNET,HOME:anna@home.example",
        "TEL;TYPE=WORK,VOICE:+358 9 000",
        "ORG:Acme Oy;Sales;North",
        "N:Virtanen;Anna;Maria;Dr.;",
        f"{CRM_ID_PROPERTY}:c-1",
    ):
        assert kept in text
    assert "X-ABLABEL" in text.upper()
    assert "+358 40 765 4321" not in text
    before, after = parse_vcard(V3), parse_vcard(text)
    assert after.fields == {
        **before.fields,
        "job_title": "CFO",
        "telephone": "+358 9 000",
        "city": "Tampere",
        "mobile_phone": None,
    }
    assert after.categories == before.categories and after.uid == before.uid


@pytest.mark.parametrize("version", ["3.0", "4.0"])
def test_new_card_round_trips(version: str) -> None:
    fields = {
        "full_name": "Cleo Example",
        "company": "Example Ltd",
        "first_name": "Cleo",
        "last_name": "Example",
        "email": "cleo@example.test",
        "job_title": "Buyer; senior",
        "telephone": "+44 20 7946 0000",
        "mobile_phone": "+44 7700 900000",
        "city": "London",
        "country": "United Kingdom",
        "description": "Two lines,\nwith commas",
    }
    text = render_vcard(fields, crm_id="c-2", categories=(TRACK_CATEGORY,), version=version)
    assert text.startswith(f"BEGIN:VCARD\r\nVERSION:{version}\r\n")
    item = parse_vcard(text)
    assert item.fields == fields and item.crm_id == "c-2"
    assert item.categories == (TRACK_CATEGORY,)
    assert item.uid.startswith("urn:uuid:") == (version == "4.0")


def test_vcard4_update_keeps_version_and_params() -> None:
    text = render_vcard({"email": "bert@new.example", "company": "Berg AB"}, existing=V4)
    assert "VERSION:4.0" in text and "EMAIL;PREF=1;TYPE=work:bert@new.example" in text
    assert parse_vcard(text).fields["company"] == "Berg AB"
    assert parse_vcard(text).crm_id == "contact-9"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("nonsense", "not a valid vCard"),
        ("BEGIN:VCARD\r\nVERSION:2.1\r\nTEL;WORK;VOICE:1\r\nEND:VCARD\r\n", "not a valid vCard"),
        ("BEGIN:VCARD\r\nVERSION:3.0\r\nFN:x\r\nEND:VCARD\r\n", "no UID"),
        ("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", "not a VCARD"),
    ],
)
def test_bad_cards_are_named_errors(text: str, says: str) -> None:
    with pytest.raises(ItemFormatError, match=says):
        parse_vcard(text, item="/anna/book/bad.vcf")
