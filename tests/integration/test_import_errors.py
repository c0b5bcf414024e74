"""Bad rows are reported with file, line and field and skipped; every good row still loads."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.crm.models import Account, Case, Contact, Record, User
from crmsync.errors import InvalidInput
from crmsync.importing import ProgressEvent, import_files
from crmsync.importing.demo import demo_data_files
from crmsync.importing.schemas import SPECS

pytestmark = pytest.mark.integration

CONTACT_COLUMNS = ["id", "first_name", "last_name", "job_title", "account", "email", "owner"]


def demo(name: str) -> Path:
    return next(f for f in demo_data_files() if f.name == name)


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def count(engine: Engine, record_type: str) -> int:
    with engine.connect() as conn:
        query = sa.select(sa.func.count()).where(Record.record_type == record_type)
        return conn.scalar(query.select_from(Record)) or 0


def generated_contacts(path: Path, n: int, bad: dict[int, dict[str, str]]) -> dict[int, int]:
    """n contacts; ``bad`` replaces fields of some rows (by index). Returns index -> line."""
    lines: dict[int, int] = {}
    line = 1
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CONTACT_COLUMNS)
        for i in range(n):
            title = "Engineer,\nfield service" if i % 100 == 7 else "Engineer"  # multi-line cells
            row = {
                "id": f"gen-{i:04d}",
                "first_name": f"Etunimi{i}",
                "last_name": f"Sukunimi-{i}",
                "job_title": title,
                "account": ("acc-kuusisto", "acc-nordsteel", "acc-satama")[i % 3],
                "email": f"henkilo{i}@generated.test",
                "owner": ("u-anna", "u-mikko", "team-sales")[i % 3],
            } | bad.get(i, {})
            writer.writerow([row[c] for c in CONTACT_COLUMNS])
            lines[i] = line + 1
            line += 1 + title.count("\n")
    return lines


def test_1000_contacts_with_3_bad_rows_load_997(engine: Engine, tmp_path: Path) -> None:
    bad = {
        99: {"email": "bob@"},
        500: {"last_name": ""},
        876: {"owner": "u-99"},
    }
    contacts = tmp_path / "contacts-2026.csv"
    lines = generated_contacts(contacts, 1000, bad)

    report = import_files(engine, [contacts, demo("organization.json"), demo("accounts.csv")])

    assert not report.ok
    assert report.counts["contacts"].created == 997
    assert report.counts["contacts"].failed == 3
    assert [(e.file, e.line, e.field) for e in report.errors] == [
        ("contacts-2026.csv", lines[99], "email"),
        ("contacts-2026.csv", lines[500], "last_name"),
        ("contacts-2026.csv", lines[876], "owner"),
    ]
    assert lines[876] > 876 + 1  # the multi-line cells above it were counted
    assert [str(e) for e in report.errors] == [
        f'contacts-2026.csv line {lines[99]}, field "email": "bob@" is not an email address',
        f'contacts-2026.csv line {lines[500]}, field "last_name": a value is required: every '
        "contact needs last_name",
        f'contacts-2026.csv line {lines[876]}, field "owner": owner "u-99" is not a user or team '
        "in this import or in the database",
    ]
    assert count(engine, "contact") == 997
    with Session(engine) as s:
        multi = s.scalars(sa.select(Contact).where(Contact.external_id == "gen-0107")).one()
        assert multi.job_title == "Engineer,\nfield service"


def test_a_row_refused_only_by_the_database_loses_only_that_row(
    engine: Engine, tmp_path: Path
) -> None:
    import_files(engine, [demo("organization.json"), demo("accounts.csv"), demo("cases.json")])
    # case-0139 is updated in the same batch as the refused row: its change must still land once.
    cases = [
        {"id": "k-1", "name": "First", "customer": "acc-satama", "case_number": "CAS-9001"},
        {
            "id": "case-0139",
            "name": "Battery life much shorter than specified",
            "customer": "acc-kylmaketju",
            "case_number": "CAS-2026-0139",
        },
        # The database's unique case number is the only thing wrong with this row.
        {
            "id": "k-2",
            "name": "Taken number",
            "customer": "acc-satama",
            "case_number": "CAS-2026-0141",
        },
        {"id": "k-3", "name": "Third", "customer": "acc-satama", "case_number": "CAS-9003"},
    ]
    path = write_json(tmp_path / "cases.json", {"cases": [c | {"owner": "u-juha"} for c in cases]})

    report = import_files(engine, [path])

    assert not report.ok
    assert report.counts["cases"].created == 2
    assert report.counts["cases"].updated == 1
    assert report.counts["cases"].failed == 1
    [error] = report.errors
    assert (error.file, error.field) == ("cases.json", "case_number")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert error.line == lines.index('      "id": "k-2",')  # the line before: where "{" opens it
    assert error.message.startswith("the database refused the row: duplicate key value")
    assert "CAS-2026-0141" in error.message
    with Session(engine) as s:
        numbers = set(s.scalars(sa.select(Case.case_number)))
        assert {"CAS-9001", "CAS-9003"} <= numbers
        updated = s.scalars(sa.select(Case).where(Case.external_id == "case-0139")).one()
        assert updated.name == "Battery life much shorter than specified"
        assert updated.version == 2


def test_a_full_batch_with_a_refused_row_loads_the_rest_without_driver_noise(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import_files(engine, [demo("organization.json"), demo("accounts.csv"), demo("cases.json")])
    cases = [
        {
            "id": f"k-{i}",
            "name": f"Case {i}",
            "customer": "acc-satama",
            "owner": "team-service",
            "case_number": "CAS-2026-0141" if i == 250 else f"GEN-{i}",
        }
        for i in range(500)
    ]
    path = write_json(tmp_path / "cases.json", cases)

    report = import_files(engine, [path])

    assert report.counts["cases"].created == 499
    assert [(e.line, e.field) for e in report.errors] == [
        (2 + 7 * 250, "case_number")
    ]  # 7 lines per case
    # psycopg logs "pipeline aborted" when its executemany fails; the row's error says it all.
    assert [r.getMessage() for r in caplog.records if r.name == "psycopg"] == []


def test_a_value_too_long_for_its_column_at_the_database_loses_only_that_row(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lengths are checked before writing; switch that off for job_title to reach the database.
    spec = SPECS["contacts"]
    fields = tuple(
        dataclasses.replace(f, max_length=None) if f.name == "job_title" else f for f in spec.fields
    )
    monkeypatch.setitem(SPECS, "contacts", dataclasses.replace(spec, fields=fields))
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(
        "id,last_name,job_title,owner\n"
        "c-1,One,Engineer,u-anna\n"
        f"c-2,Two,{'x' * 101},u-anna\n"
        "c-3,Three,Engineer,u-anna\n"
    )

    report = import_files(engine, [demo("organization.json"), contacts])

    assert [str(e) for e in report.errors] == [
        "contacts.csv line 3: the database refused the row: value too long for type character "
        "varying(100)"
    ]
    assert report.counts["contacts"].created == 2
    assert report.counts["users"].created == 6
    assert count(engine, "contact") == 2


def test_a_user_cannot_take_over_another_users_username(engine: Engine, tmp_path: Path) -> None:
    import_files(engine, [demo("organization.json")])
    users = write_json(
        tmp_path / "users.json",
        {"users": [{"id": "u-new", "username": "anna.virtanen", "business_unit": "bu-sales"}]},
    )

    report = import_files(engine, [users])

    assert [str(e) for e in report.errors] == [
        'users.json line 3, field "username": username "anna.virtanen" belongs to another '
        'existing user (id "u-anna"); refusing to take it over: give this row that user\'s id, '
        "or another username"
    ]
    with Session(engine) as s:
        assert s.scalars(
            sa.select(User.external_id).where(User.username == "anna.virtanen")
        ).all() == ["u-anna"]


def test_owner_is_required_unless_a_default_owner_is_given(engine: Engine, tmp_path: Path) -> None:
    import_files(engine, [demo("organization.json")])
    accounts = tmp_path / "accounts.csv"
    accounts.write_text("id,name,owner\na-1,Ownerless Oy,\na-2,Owned Oy,team-service\n")

    without = import_files(engine, [accounts])
    assert [str(e) for e in without.errors] == [
        'accounts.csv line 2, field "owner": owner is required; give the owner\'s user or team '
        "id, or a default owner"
    ]
    with_default = import_files(engine, [accounts], default_owner="sari.hamalainen")
    assert with_default.ok
    with Session(engine) as s:
        account = s.scalars(sa.select(Account).where(Account.external_id == "a-1")).one()
        sari = s.scalars(sa.select(User).where(User.external_id == "u-sari")).one()
        assert (account.owner_id, account.business_unit_id) == (sari.id, sari.business_unit_id)
    with pytest.raises(InvalidInput, match='the default owner "nobody" is not a user'):
        import_files(engine, [accounts], default_owner="nobody")
    # A default owner whose own row has errors: the rows it should own say so.
    users = tmp_path / "users.csv"
    users.write_text("id,username,business_unit,email\nu-x,xavier,bu-sales,x@\n")
    report = import_files(engine, [users, accounts], default_owner="xavier")
    assert [e.field for e in report.errors] == ["email", "owner"]
    assert report.errors[1].message == (
        'owner is empty and the default owner "xavier" was not imported'
    )


def test_users_need_a_business_unit_unless_there_is_exactly_one(
    engine: Engine, tmp_path: Path
) -> None:
    org = write_json(
        tmp_path / "org.json",
        {
            "business_units": [{"id": "bu", "name": "Only"}],
            "users": [{"id": "u-1", "username": "solo", "first_name": "Sole"}],
        },
    )
    assert import_files(engine, [org]).ok
    more = write_json(
        tmp_path / "more.json",
        {
            "business_units": [{"id": "bu-2", "name": "Second", "parent": "bu"}],
            "users": [{"id": "u-2", "username": "duo"}],
        },
    )
    report = import_files(engine, [more])
    assert [str(e) for e in report.errors] == [
        'more.json line 10, field "business_unit": a value is required: with more than one '
        "business unit, every user must name its business_unit"
    ]


def test_parents_later_in_the_file_load_and_cycles_are_refused(
    engine: Engine, tmp_path: Path
) -> None:
    import_files(engine, [demo("organization.json")])
    accounts = tmp_path / "accounts.csv"
    accounts.write_text(
        "id,name,parent_account,owner\n"
        "a-1,Child,a-2,u-anna\n"
        "a-2,Middle,a-3,u-anna\n"
        "a-3,Top,,u-anna\n"
        "a-4,Loop one,a-5,u-anna\n"
        "a-5,Loop two,a-4,u-anna\n"
        "a-6,Orphan,a-404,u-anna\n"
    )

    events: list[ProgressEvent] = []
    report = import_files(engine, [accounts], progress=events.append)

    assert events[-1].done == events[-1].total == 6
    assert report.counts["accounts"].created == 3
    assert [(e.line, e.field) for e in report.errors] == [
        (5, "parent_account"),
        (6, "parent_account"),
        (7, "parent_account"),
    ]
    assert "chain loops back" in report.errors[0].message
    assert report.errors[2].message == (
        'parent_account "a-404" is not an account in this import or in the database'
    )


def test_references_to_rows_with_errors_say_so(engine: Engine, tmp_path: Path) -> None:
    import_files(engine, [demo("organization.json")])
    accounts = tmp_path / "accounts.csv"
    accounts.write_text("id,name,owner,email\na-bad,Bad Oy,u-anna,not-an-address\n")
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("id,last_name,account,owner\nc-1,Virtanen,a-bad,u-anna\n")

    report = import_files(engine, [contacts, accounts])

    assert [str(e) for e in report.errors] == [
        'contacts.csv line 2, field "account": account "a-bad" is an account whose row has '
        "errors (accounts.csv line 2)",
        'accounts.csv line 2, field "email": "not-an-address" is not an email address',
    ]


def test_duplicate_ids_in_one_run_are_reported(engine: Engine, tmp_path: Path) -> None:
    import_files(engine, [demo("organization.json")])
    one = tmp_path / "01_leads.csv"
    one.write_text("id,last_name,owner\nl-1,First,u-anna\n")
    two = tmp_path / "02_leads.csv"
    two.write_text("id,last_name,owner\nl-1,Second,u-anna\n")

    report = import_files(engine, [one, two])

    assert [str(e) for e in report.errors] == [
        '02_leads.csv line 2, field "id": id "l-1" is already used by the lead in 01_leads.csv '
        "line 2; every row needs its own id"
    ]
    assert report.counts["leads"].created == 1


def test_a_problem_with_a_whole_file_writes_nothing(engine: Engine, tmp_path: Path) -> None:
    bad = tmp_path / "contacts.csv"
    bad.write_text("id,last_name,shoe_size\n")
    with pytest.raises(InvalidInput, match=r'contacts\.csv line 1: unknown column "shoe_size"'):
        import_files(engine, [demo("organization.json"), bad])
    assert count(engine, "user") == 0


def test_json_rows_report_the_line_where_the_row_starts(engine: Engine, tmp_path: Path) -> None:
    import_files(engine, [demo("organization.json"), demo("accounts.csv")])
    path = tmp_path / "opportunities.json"
    path.write_text(
        '{"opportunities": [\n'
        '  {"id": "o-1", "name": "Fine", "owner": "u-anna"},\n'
        "  {\n"
        '    "id": "o-2",\n'
        '    "name": "Bad date",\n'
        '    "estimated_close_date": "2027-02-30",\n'
        '    "owner": "u-anna"\n'
        "  }\n"
        "]}\n"
    )
    report = import_files(engine, [path])
    assert [str(e) for e in report.errors] == [
        'opportunities.json line 3, field "estimated_close_date": "2027-02-30" is not a date; '
        "write it as YYYY-MM-DD"
    ]
    assert report.counts["opportunities"].created == 1


def test_an_access_team_cannot_own_records(engine: Engine, tmp_path: Path) -> None:
    teams = write_json(
        tmp_path / "teams.json",
        {
            "teams": [
                {
                    "id": "t-share",
                    "name": "Deal room",
                    "team_type": "access",
                    "business_unit": "bu-sales",
                }
            ]
        },
    )
    accounts = tmp_path / "accounts.csv"
    accounts.write_text("id,name,owner\na-1,Shared Oy,t-share\na-2,Owned Oy,team-sales\n")

    report = import_files(engine, [demo("organization.json"), teams, accounts])

    assert [str(e) for e in report.errors] == [
        'accounts.csv line 2, field "owner": owner "t-share" is an access team, which cannot '
        "own records; name a user or an owner team"
    ]
    # The same from a team already in the database.
    again = import_files(engine, [accounts])
    assert [e.field for e in again.errors] == ["owner"]
    assert again.counts["accounts"].unchanged == 1
