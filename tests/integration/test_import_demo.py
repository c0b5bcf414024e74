"""Importing the demo set: every type and reference loads, re-imports change nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.crm.models import (
    Account,
    BusinessUnit,
    Case,
    Contact,
    Opportunity,
    Record,
    SecurityRole,
    Team,
    User,
    UserRole,
)
from crmsync.crm.privileges import all_privileges
from crmsync.importing import ProgressEvent, import_files
from crmsync.importing.demo import DEMO_DOMAIN, demo_data_files

pytestmark = pytest.mark.integration

DEMO_COUNTS = {
    "business_units": 3,
    "roles": 3,
    "users": 6,
    "teams": 2,
    "accounts": 12,
    "contacts": 25,
    "leads": 8,
    "opportunities": 6,
    "cases": 5,
}


def by_ext(session: Session, model: type, ext_id: str):  # type: ignore[no-untyped-def]
    return session.scalars(sa.select(model).where(model.external_id == ext_id)).one()


def versions(engine: Engine) -> dict[tuple[str, str], int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(Record.record_type, Record.external_id, Record.version))
        return {(t, e): v for t, e, v in rows}


def copy_demo(tmp_path: Path) -> dict[str, Path]:
    return {f.name: Path(shutil.copy(f, tmp_path / f.name)) for f in demo_data_files()}


def test_demo_files_are_found_as_package_data() -> None:
    names = [f.name for f in demo_data_files()]
    assert names == [
        "accounts.csv",
        "cases.json",
        "contacts.csv",
        "leads.csv",
        "opportunities.json",
        "organization.json",
    ]
    assert all(f.is_file() for f in demo_data_files())


def test_demo_set_loads_every_type_with_its_references(engine: Engine) -> None:
    report = import_files(engine, demo_data_files())

    assert report.ok, [str(e) for e in report.errors]
    assert {k: c.created for k, c in report.counts.items()} == DEMO_COUNTS
    assert report.updated == report.unchanged == 0
    with Session(engine) as s:
        # A contact's company, with non-ASCII names intact.
        heidi = by_ext(s, Contact, "c-007")
        assert heidi.name == "Heidi Öhman"
        assert by_ext(s, Account, "acc-nordsteel").id == heidi.parent_customer_id
        assert heidi.primary_email == "heidi.ohman@nordsteel.test"
        # Owned records take their owner's business unit.
        sales = by_ext(s, BusinessUnit, "bu-sales")
        assert heidi.owner_id == by_ext(s, User, "u-paivi").id
        assert heidi.business_unit_id == sales.id
        # A parent account defined later in the same file.
        kemi = by_ext(s, Account, "acc-nordsteel-kemi")
        assert kemi.parent_account_id == by_ext(s, Account, "acc-nordsteel").id
        # Opportunity customers: an account, and a contact in the prefix form.
        assert (
            by_ext(s, Opportunity, "opp-002").customer_id == by_ext(s, Account, "acc-nordsteel").id
        )
        assert by_ext(s, Opportunity, "opp-006").customer_id == by_ext(s, Contact, "c-025").id
        # A case owned by a team lands in the team's unit.
        gateway = by_ext(s, Case, "case-0142")
        assert gateway.owner_id == by_ext(s, Team, "team-service").id
        assert gateway.business_unit_id == by_ext(s, BusinessUnit, "bu-service").id
        # Users: business unit, roles, mailbox addresses in the demo domain.
        anna = by_ext(s, User, "u-anna")
        assert (anna.username, anna.name) == ("anna.virtanen", "Anna Virtanen")
        assert anna.business_unit_id == sales.id
        assert anna.primary_email == f"anna.virtanen@{DEMO_DOMAIN}"
        roles = s.scalars(
            sa.select(SecurityRole.name).join(UserRole).where(UserRole.user_id == anna.id)
        ).all()
        assert roles == ["Salesperson"]
        users = s.scalars(sa.select(User)).all()
        assert all(u.primary_email.endswith("@" + DEMO_DOMAIN) for u in users)
        assert by_ext(s, User, "u-paivi").name == "Päivi Heikkinen"
        # Teams and their members.
        team = by_ext(s, Team, "team-sales")
        assert {m.external_id for m in team.members} == {"u-anna", "u-mikko", "u-paivi"}
        # Business unit tree and roles' privileges.
        assert sales.parent_id == by_ext(s, BusinessUnit, "bu-pohjola").id
        admin = by_ext(s, SecurityRole, "role-sysadmin")
        assert len(admin.privileges) == len(all_privileges())
        agent = by_ext(s, SecurityRole, "role-service-agent")
        assert {p.privilege: p.depth.value for p in agent.privileges}["write:case"] == (
            "business_unit"
        )
        # Every non-ASCII letter survived the CSV round trip.
        names = set(s.scalars(sa.select(Record.name)))
        assert {"Järvi-Suomen Paperi Oy", "Karin Åberg", "Svealand Automation AB"} <= names


def test_reimport_changes_nothing(engine: Engine) -> None:
    import_files(engine, demo_data_files())
    before = versions(engine)

    again = import_files(engine, demo_data_files())

    assert again.ok
    assert again.created == again.updated == 0
    assert {k: c.unchanged for k, c in again.counts.items()} == DEMO_COUNTS
    assert versions(engine) == before


def test_files_in_any_order_load_in_dependency_order(engine: Engine) -> None:
    report = import_files(engine, list(reversed(demo_data_files())))
    assert report.ok, [str(e) for e in report.errors]
    assert {k: c.created for k, c in report.counts.items()} == DEMO_COUNTS


def test_references_may_point_to_rows_of_an_earlier_import(engine: Engine) -> None:
    files = {f.name: f for f in demo_data_files()}
    first = import_files(engine, [files["organization.json"]])
    second = import_files(engine, [files["accounts.csv"], files["contacts.csv"]])
    third = import_files(engine, [files["opportunities.json"], files["cases.json"]])
    assert first.ok and second.ok and third.ok, [str(e) for e in third.errors]
    assert second.counts["contacts"].created == 25
    assert third.counts["opportunities"].created == 6


def test_a_changed_field_updates_that_row_only(engine: Engine, tmp_path: Path) -> None:
    files = copy_demo(tmp_path)
    import_files(engine, list(files.values()))
    before = versions(engine)
    contacts = files["contacts.csv"]
    text = contacts.read_text(encoding="utf-8")
    text = text.replace("Maintenance manager", "Head of maintenance")  # c-003's job title
    text = text.replace("ville.rautio@nordsteel.test", "ville.rautio@kemi.nordsteel.test")
    contacts.write_text(text, encoding="utf-8")
    org = files["organization.json"]
    org.write_text(
        org.read_text(encoding="utf-8").replace('"u-paivi",\n        "u-anna",', '"u-anna",'),
        encoding="utf-8",
    )

    report = import_files(engine, list(files.values()))

    assert report.ok
    assert (report.counts["contacts"].updated, report.counts["contacts"].unchanged) == (2, 23)
    assert (report.counts["teams"].updated, report.counts["teams"].unchanged) == (1, 1)
    assert report.counts["accounts"].updated == 0
    after = versions(engine)
    changed = {key for key in after if after[key] != before[key]}
    # The email-only change (c-008) and the member change bump versions too.
    assert changed == {("contact", "c-003"), ("contact", "c-008"), ("team", "team-sales")}
    assert all(after[key] == before[key] + 1 for key in changed)
    with Session(engine) as s:
        assert by_ext(s, Contact, "c-003").job_title == "Head of maintenance"
        assert by_ext(s, Contact, "c-008").primary_email == "ville.rautio@kemi.nordsteel.test"
        members = {m.external_id for m in by_ext(s, Team, "team-sales").members}
        assert members == {"u-anna", "u-mikko"}


def test_role_privileges_are_replaced_by_the_files(engine: Engine, tmp_path: Path) -> None:
    roles = tmp_path / "roles.json"
    roles.write_text(
        '{"roles": [{"id": "r", "name": "Reader", "privileges": '
        '{"read:contact": "user", "read:account": "user"}}]}'
    )
    import_files(engine, [roles])
    roles.write_text(
        '{"roles": [{"id": "r", "name": "Reader", "privileges": '
        '{"read:contact": "organization", "use_pane": "organization"}}]}'
    )
    report = import_files(engine, [roles])
    assert report.counts["roles"].updated == 1
    with Session(engine) as s:
        role = by_ext(s, SecurityRole, "r")
        assert {p.privilege: p.depth.value for p in role.privileges} == {
            "read:contact": "organization",
            "use_pane": "organization",
        }


def test_progress_knows_the_total_up_front_and_names_files(engine: Engine) -> None:
    events: list[ProgressEvent] = []
    import_files(engine, demo_data_files(), progress=events.append)
    assert events[0].stage == "start"
    assert events[0].total == sum(DEMO_COUNTS.values())
    assert events[-1].stage == "finish"
    steps = [e for e in events if e.stage == "rows"]
    assert sum(e.advance for e in steps) == events[0].total
    assert steps[-1].done == events[0].total
    assert {e.file for e in steps} == {f.name for f in demo_data_files()}
