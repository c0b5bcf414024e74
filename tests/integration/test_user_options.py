"""``crmsync user options``: showing and changing personal email-tracking options, gated by
manage_user_sync_filters and audited; run as a person runs it."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from crmsync.crm.base import Depth
from crmsync.crm.models import BusinessUnit, Queue, RolePrivilege, SecurityRole, User, UserRole
from crmsync.db import session_scope
from tests.clirun import run

pytestmark = pytest.mark.integration

Env = dict[str, str]


@pytest.fixture
def org(engine: Engine) -> None:
    """Pohjola > Sales > North; Pohjola > Service. anna (Sales), bob (North), carl (Service),
    no privileges; queue Support (Sales)."""
    with session_scope(engine) as s:
        units: dict[str, uuid.UUID] = {}
        for name, parent in (
            ("Pohjola", None),
            ("Sales", "Pohjola"),
            ("North", "Sales"),
            ("Service", "Pohjola"),
        ):
            unit = BusinessUnit(id=uuid.uuid4(), name=name, parent_id=units.get(parent or ""))
            s.add(unit)
            s.flush()
            units[name] = unit.id
        for username, full, unit in (
            ("anna", "Anna Virtanen", "Sales"),
            ("bob", "Bob North", "North"),
            ("carl", "Carl Service", "Service"),
        ):
            user = User(name=full, username=username, business_unit_id=units[unit])
            user.set_email(f"{username}@example.test")
            s.add(user)
        queue = Queue(name="Support", business_unit_id=units["Sales"])
        queue.set_email("support@example.test")
        s.add(queue)


def grant(engine: Engine, username: str, depth: Depth) -> None:
    with session_scope(engine) as s:
        role = SecurityRole(name=f"Sync filters {depth} ({username})")
        role.privileges = [RolePrivilege(privilege="manage_user_sync_filters", depth=depth)]
        s.add(role)
        s.flush()
        user = s.scalars(sa.select(User).where(User.username == username)).one()
        s.add(UserRole(user_id=user.id, role_id=role.id))


def show(env: Env, who: str) -> dict:
    res = run(env, "user", "options", who, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def events(env: Env) -> list[dict]:
    res = run(env, "audit", "--action", "user.tracking_options_changed", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_show_as_table_and_json(cli_env: Env, org: None) -> None:
    shown = show(cli_env, "anna")
    assert shown["type"] == "user"
    assert shown["username"] == "anna"
    assert shown["incoming_email_filter"] == "responses"
    assert shown["incoming_email_filter_meaning"] == "tracks only replies to tracked email"
    assert shown["auto_create_records"] == "none"
    assert shown["changed"] == []
    assert show(cli_env, "anna@example.test")["id"] == shown["id"]  # by address, too

    res = run(cli_env, "user", "options", "anna")
    assert res.returncode == 0, res.stderr
    assert "user anna" in res.stdout
    assert "responses — tracks only replies to tracked email" in res.stdout
    assert "none" in res.stdout
    assert events(cli_env) == []  # showing changes nothing


def test_own_options_need_no_privilege_and_are_audited(cli_env: Env, org: None) -> None:
    res = run(
        cli_env,
        "user",
        "options",
        "anna",
        "--incoming-filter",
        "all",
        "--auto-create",
        "contact",
        "--as",
        "anna",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["incoming_email_filter"], out["auto_create_records"]) == ("all", "contact")
    assert out["changed"] == ["auto_create_records", "incoming_email_filter"]
    assert "responses -> all" in res.stderr
    assert show(cli_env, "anna")["incoming_email_filter"] == "all"

    [event] = events(cli_env)
    assert event["actor"] == "Anna Virtanen (anna)"
    assert (event["target_type"], event["target"]) == ("user", "anna")
    assert event["details"] == {
        "old": {"incoming_email_filter": "responses", "auto_create_records": "none"},
        "new": {"incoming_email_filter": "all", "auto_create_records": "contact"},
    }


def test_unchanged_values_write_no_audit_event(cli_env: Env, org: None) -> None:
    res = run(cli_env, "user", "options", "anna", "--incoming-filter", "responses")
    assert res.returncode == 0, res.stderr
    assert "unchanged" in res.stderr
    assert events(cli_env) == []

    # Only what changed is recorded, and the CLI operator is the actor without --as.
    res = run(
        cli_env, "user", "options", "anna", "--incoming-filter", "none", "--auto-create", "none"
    )
    assert res.returncode == 0, res.stderr
    [event] = events(cli_env)
    assert event["actor"].startswith("cli:")
    assert event["details"] == {
        "old": {"incoming_email_filter": "responses"},
        "new": {"incoming_email_filter": "none"},
    }


def test_another_users_options_need_the_privilege(cli_env: Env, engine: Engine, org: None) -> None:
    denied = run(cli_env, "user", "options", "carl", "--incoming-filter", "all", "--as", "anna")
    assert denied.returncode == 1
    assert "manage_user_sync_filters" in denied.stderr
    assert "user carl" in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1
    assert show(cli_env, "carl")["incoming_email_filter"] == "responses"
    assert events(cli_env) == []

    grant(engine, "anna", Depth.ORGANIZATION)
    ok = run(cli_env, "user", "options", "carl", "--incoming-filter", "all", "--as", "anna")
    assert ok.returncode == 0, ok.stderr
    assert show(cli_env, "carl")["incoming_email_filter"] == "all"
    [event] = events(cli_env)
    assert (event["actor"], event["target"]) == ("Anna Virtanen (anna)", "carl")


def test_business_unit_depth_reaches_only_the_own_unit(
    cli_env: Env, engine: Engine, org: None
) -> None:
    with session_scope(engine) as s:
        sales = s.scalars(sa.select(BusinessUnit).where(BusinessUnit.name == "Sales")).one()
        s.add(User(name="Sanna Sales", username="sanna", business_unit_id=sales.id))
    grant(engine, "anna", Depth.BUSINESS_UNIT)

    ok = run(cli_env, "user", "options", "sanna", "--auto-create", "lead", "--as", "anna")
    assert ok.returncode == 0, ok.stderr
    assert show(cli_env, "sanna")["auto_create_records"] == "lead"

    # North is below Sales: business-unit depth does not reach it (parent_child would).
    denied = run(cli_env, "user", "options", "bob", "--auto-create", "lead", "--as", "anna")
    assert denied.returncode == 1
    assert "missing privilege manage_user_sync_filters" in denied.stderr
    assert "needs depth parent_child" in denied.stderr
    assert show(cli_env, "bob")["auto_create_records"] == "none"

    grant(engine, "anna", Depth.PARENT_CHILD)
    ok = run(cli_env, "user", "options", "bob", "--auto-create", "lead", "--as", "anna")
    assert ok.returncode == 0, ok.stderr
    assert [e["target"] for e in events(cli_env)] == ["bob", "sanna"]


def test_queue_filter_is_gated_by_its_business_unit(
    cli_env: Env, engine: Engine, org: None
) -> None:
    shown = show(cli_env, "queue:Support")
    assert (shown["type"], shown["name"]) == ("queue", "Support")
    assert shown["auto_create_records"] is None
    table = run(cli_env, "user", "options", "queue:Support")
    assert table.returncode == 0 and "queue Support" in table.stdout

    # A queue is never one's own: even a user of its unit needs the privilege.
    denied = run(
        cli_env, "user", "options", "queue:Support", "--incoming-filter", "all", "--as", "anna"
    )
    assert denied.returncode == 1
    assert "manage_user_sync_filters" in denied.stderr and "queue Support" in denied.stderr

    grant(engine, "carl", Depth.BUSINESS_UNIT)  # Service's unit: does not reach Sales
    denied = run(
        cli_env, "user", "options", "queue:Support", "--incoming-filter", "all", "--as", "carl"
    )
    assert denied.returncode == 1 and "manage_user_sync_filters" in denied.stderr

    grant(engine, "anna", Depth.BUSINESS_UNIT)
    ok = run(
        cli_env, "user", "options", "queue:Support", "--incoming-filter", "all", "--as", "anna"
    )
    assert ok.returncode == 0, ok.stderr
    assert show(cli_env, "queue:Support")["incoming_email_filter"] == "all"
    [event] = events(cli_env)
    assert (event["target_type"], event["target"]) == ("queue", "Support")
    assert event["details"] == {
        "old": {"incoming_email_filter": "responses"},
        "new": {"incoming_email_filter": "all"},
    }


def test_auto_create_on_a_queue_is_refused(cli_env: Env, org: None) -> None:
    res = run(cli_env, "user", "options", "queue:Support", "--auto-create", "contact")
    assert res.returncode == 1
    assert "users only" in res.stderr and "queue Support" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert events(cli_env) == []


def test_invalid_values_list_the_allowed_ones(cli_env: Env, org: None) -> None:
    res = run(cli_env, "user", "options", "anna", "--incoming-filter", "everything")
    assert res.returncode == 1
    assert (
        "--incoming-filter 'everything' is not one of: "
        "all, responses, leads_contacts_accounts, email_enabled, none"
    ) in res.stderr
    res = run(cli_env, "user", "options", "anna", "--auto-create", "account")
    assert res.returncode == 1
    assert "--auto-create 'account' is not one of: none, contact, lead" in res.stderr
    missing = run(cli_env, "user", "options", "nobody")
    assert missing.returncode == 1 and "no user or queue 'nobody'" in missing.stderr
    assert show(cli_env, "anna")["incoming_email_filter"] == "responses"
    assert events(cli_env) == []
