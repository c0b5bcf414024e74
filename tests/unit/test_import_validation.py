"""Checking rows: every kind of field error names file, line and field, and says what is allowed."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crmsync.crm.base import Depth
from crmsync.importing.formats import ParsedFile
from crmsync.importing.report import ImportReport
from crmsync.importing.rows import SourceRow
from crmsync.importing.schemas import SPECS, canonical_type, validate_row
from crmsync.importing.service import validate
from crmsync.importing.values import Ref


def row(type_key: str, line: int = 17, file: str | None = None, **data: Any) -> SourceRow:
    return SourceRow(file or f"{type_key}.csv", line, type_key, data)


def errors_of(type_key: str, **data: Any) -> list[str]:
    checked, errors = validate_row(row(type_key, **data))
    assert (checked is None) == bool(errors)
    return [str(e) for e in errors]


def test_the_email_message_reads_as_documented() -> None:
    assert errors_of("contacts", id="c-1", last_name="Virtanen", email="bob@") == [
        'contacts.csv line 17, field "email": "bob@" is not an email address'
    ]


@pytest.mark.parametrize(
    "address", ["bob@", "bob", "@x.test", "bob@x", "bob @x.test", "bob@x..test", "a@-x.test"]
)
def test_malformed_addresses_are_refused(address: str) -> None:
    assert errors_of("contacts", id="c", last_name="V", email=address)


@pytest.mark.parametrize("address", ["Anna.Virtanen@Demo.CRMSync.test", "o'neil+crm@pörssi.test"])
def test_good_addresses_are_kept_lower_case(address: str) -> None:
    checked, _ = validate_row(row("contacts", id="c", last_name="V", email=address))
    assert checked is not None
    assert checked.values["email"] == address.lower()


@pytest.mark.parametrize(
    ("type_key", "data", "expected"),
    [
        (
            "contacts",
            {"id": "c-1", "last_name": ""},
            'field "last_name": a value is required: every contact needs last_name',
        ),
        ("accounts", {"name": "A"}, 'field "id": a value is required: every account needs id'),
        (
            "opportunities",
            {"id": "o", "name": "O", "probability": "high"},
            'field "probability": "high" is not a whole number',
        ),
        (
            "opportunities",
            {"id": "o", "name": "O", "probability": 120},
            'field "probability": "120" is out of range; give 0 to 100',
        ),
        (
            "opportunities",
            {"id": "o", "name": "O", "estimated_value": "12 500,50"},
            'field "estimated_value": "12 500,50" is not a number; write digits with a dot for '
            "decimals, e.g. 12500.50",
        ),
        (
            "opportunities",
            {"id": "o", "name": "O", "estimated_value": "1.005"},
            'field "estimated_value": "1.005" has more than 2 decimals',
        ),
        (
            "opportunities",
            {"id": "o", "name": "O", "estimated_value": "100000000000000"},
            'field "estimated_value": "100000000000000" is too large; at most 14 digits fit',
        ),
        (
            "opportunities",
            {"id": "o", "name": "O", "estimated_close_date": "31.12.2026"},
            'field "estimated_close_date": "31.12.2026" is not a date; write it as YYYY-MM-DD',
        ),
        (
            "opportunities",
            {"id": "o", "name": "O", "currency": "euro"},
            'field "currency": "euro" is not a currency code; use e.g. EUR or SEK',
        ),
        (
            "users",
            {"id": "u", "username": "anna", "is_disabled": "maybe"},
            'field "is_disabled": "maybe" is not a yes/no value; use true or false',
        ),
        (
            "cases",
            {"id": "k", "name": "K", "customer": "a", "priority": "urgent"},
            'field "priority": "urgent" is not a valid priority; use one of: high, normal, low',
        ),
        (
            "leads",
            {"id": "l", "last_name": "N", "status": "won"},
            'field "status": "won" is not a valid status; use one of: new, contacted, qualified, '
            "disqualified",
        ),
        (
            "users",
            {"id": "u", "username": "a", "incoming_email_filter": "some"},
            'field "incoming_email_filter": "some" is not a valid incoming email filter; use one '
            "of: all, responses, leads_contacts_accounts, email_enabled, none",
        ),
        (
            "leads",
            {"id": "l", "topic": "Sensors"},
            'field "last_name": a lead needs a last_name or a company_name; this row has neither',
        ),
        (
            "accounts",
            {"id": "a-1", "name": "A", "parent_account": "a-1"},
            'field "parent_account": an account cannot be its own parent',
        ),
        (
            "contacts",
            {"id": "c", "last_name": "V", "shoe_size": "42"},
            'field "shoe_size": unknown field; the fields of contacts are: id, first_name,',
        ),
        (
            "contacts",
            {"id": "c", "last_name": "V", "first_name": ["A"]},
            'field "first_name": "[\'A\']" is not text',
        ),
        (
            "teams",
            {"id": "t", "name": "T", "members": {"u": 1}},
            'field "members": "{\'u\': 1}" is not a list; give a list or separate items with ;',
        ),
    ],
)
def test_field_errors(type_key: str, data: dict[str, Any], expected: str) -> None:
    found = errors_of(type_key, **data)
    assert len(found) == 1, found
    assert found[0].startswith(f"{type_key}.csv line 17, {expected}")


def test_text_longer_than_its_column_is_refused_with_the_limit() -> None:
    assert errors_of("cases", id="k", name="K", customer="a", origin="x" * 21) == [
        f'cases.csv line 17, field "origin": is 21 characters long; at most 20 fit ("{"x" * 21}")'
    ]


def test_every_problem_of_a_row_is_reported() -> None:
    found = errors_of("contacts", id="c", email="x", email2="y@", state="gone")
    assert [e.split(":")[0] for e in found] == [
        'contacts.csv line 17, field "email"',
        'contacts.csv line 17, field "email2"',
        'contacts.csv line 17, field "state"',
        'contacts.csv line 17, field "last_name"',
    ]


def test_values_are_typed() -> None:
    checked, errors = validate_row(
        row(
            "opportunities",
            id=" o-1 ",
            name="Sensors",
            estimated_value=12.5,
            estimated_close_date="2027-01-29",
            probability="40",
            status="Open",
            currency="sek",
            customer="contact:c-1",
            owner="u:1",
        )
    )
    assert errors == []
    assert checked is not None
    assert checked.ext_id == "o-1"
    assert checked.values == {
        "id": "o-1",
        "name": "Sensors",
        "estimated_value": Decimal("12.5"),
        "estimated_close_date": date(2027, 1, 29),
        "probability": 40,
        "status": "open",
        "currency": "SEK",
        "customer": Ref("c-1", "contact"),
        # "u" is not a type an owner can be, so the colon is part of the id.
        "owner": Ref("u:1"),
    }


def test_empty_cells_are_present_and_empty() -> None:
    checked, _ = validate_row(row("accounts", id="a", name="A", city="", parent_account=None))
    assert checked is not None
    assert checked.values == {"id": "a", "name": "A", "city": None, "parent_account": None}


# --- roles ----------------------------------------------------------------------------------


def test_privileges_in_json_and_csv_form() -> None:
    json_row, _ = validate_row(
        row(
            "roles",
            id="r",
            name="R",
            privileges={"read:contact": "organization", "use_pane": "global"},
        )
    )
    csv_row, _ = validate_row(
        row("roles", id="r", name="R", privileges="read:contact=organization; use_pane=Global")
    )
    assert json_row is not None and csv_row is not None
    assert (
        json_row.values["privileges"]
        == csv_row.values["privileges"]
        == {
            "read:contact": Depth.ORGANIZATION,
            "use_pane": Depth.ORGANIZATION,
        }
    )


def test_unknown_privilege_names_the_privilege_and_suggests() -> None:
    [message] = errors_of("roles", id="r", name="R", privileges="raed:contact=user")
    assert message.startswith(
        'roles.csv line 17, field "privileges": unknown privilege "raed:contact" (did you mean '
        '"read:contact"?); a privilege is <operation>:<record type> with operation one of create,'
    )


@pytest.mark.parametrize(
    ("privileges", "expected"),
    [
        (
            {"read:contact": "everywhere"},
            '"everywhere" is not a depth (for read:contact); use one of: user, business_unit, '
            "parent_child, organization",
        ),
        ("read:contact", '"read:contact" has no depth; write privilege=depth'),
    ],
)
def test_bad_depths(privileges: Any, expected: str) -> None:
    [message] = errors_of("roles", id="r", name="R", privileges=privileges)
    assert message.startswith(f'roles.csv line 17, field "privileges": {expected}')


def test_reference_lists_from_csv_and_json() -> None:
    csv_row, _ = validate_row(row("teams", id="t", name="T", members="u-1; u-2;;u-1", roles=""))
    json_row, _ = validate_row(row("teams", id="t", name="T", members=["u-1", "u-2"], roles=[]))
    assert csv_row is not None and json_row is not None
    assert csv_row.values["members"] == json_row.values["members"] == [Ref("u-1"), Ref("u-2")]
    assert csv_row.values["roles"] == json_row.values["roles"] == []


# --- across rows ----------------------------------------------------------------------------


def test_a_reused_id_refuses_the_later_row_and_names_the_first() -> None:
    first = ParsedFile(Path("contacts.csv"), "contacts.csv")
    first.rows = [
        row("contacts", 2, id="c-1", last_name="A"),
        row("contacts", 3, id="c-2", last_name="B"),
    ]
    second = ParsedFile(Path("more.json"), "more.json")
    second.rows = [
        row("contacts", 5, "more.json", id="c-1", last_name="C"),
        row("accounts", 9, "more.json", id="c-1", name="Same id, other type"),
    ]
    report = ImportReport()
    valid, refused = validate([first, second], report)
    assert [str(e) for e in report.errors] == [
        'more.json line 5, field "id": id "c-1" is already used by the contact in contacts.csv '
        "line 2; every row needs its own id"
    ]
    assert [r.ext_id for r in valid["contacts"]] == ["c-1", "c-2"]
    assert [r.ext_id for r in valid["accounts"]] == ["c-1"]
    assert [r.line for r in refused] == [5]
    assert report.counts["contacts"].failed == 1


@pytest.mark.parametrize(
    ("name", "key"),
    [("Contact", "contacts"), ("business-units", "business_units"), ("security role", "roles")],
)
def test_type_names(name: str, key: str) -> None:
    assert canonical_type(name) == key
    assert key in SPECS
