"""The command line, run as a user runs it: a subprocess with an environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from crmsync.crm.models import BusinessUnit, User
from crmsync.db import session_scope
from tests.clirun import clean_env, run

pytestmark = pytest.mark.integration

PASSWORD = "Kesä-salasana-7f3a9"


@pytest.fixture
def anna(engine: Engine) -> str:
    with session_scope(engine) as s:
        bu = BusinessUnit(name="Root")
        s.add(bu)
        s.flush()
        u = User(name="Anna Virtanen", username="anna", business_unit_id=bu.id)
        u.set_email("anna.virtanen@example.test")
        s.add(u)
    return "anna"


def test_init_is_idempotent_and_reports(cli_env: dict[str, str]) -> None:
    first = run(cli_env, "init", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["changed"] is False  # the test database is already migrated
    again = run(cli_env, "init")
    assert again.returncode == 0
    assert "up to date" in again.stderr


def test_every_command_has_help() -> None:
    for args in (
        ["--help"],
        ["init", "--help"],
        ["status", "--help"],
        ["mailbox", "add", "--help"],
        ["mailbox", "list", "--help"],
        ["mailbox", "show", "--help"],
        ["import", "--help"],
        ["demo", "--help"],
        ["check", "--help"],
        ["audit", "--help"],
        ["settings", "set", "--help"],
        ["mailbox", "approve", "--help"],
        ["mailbox", "enable", "--help"],
        ["mailbox", "disable", "--help"],
        ["mailbox", "test", "--help"],
        ["sync", "--help"],
        ["explain", "--help"],
        ["activities", "--help"],
        ["user", "options", "--help"],
    ):
        res = run(clean_env(), *args)
        assert res.returncode == 0, (args, res.stderr)
        assert "Usage" in res.stdout


def test_mailbox_add_stores_password_encrypted_and_never_prints_it(
    cli_env: dict[str, str], engine: Engine, anna: str
) -> None:
    env = cli_env | {"CRMSYNC_MAILBOX_PASSWORD": PASSWORD}
    add = run(
        env,
        "mailbox",
        "add",
        "--owner",
        anna,
        "--imap",
        "imap://127.0.0.1:1143",
        "--smtp",
        "smtp://127.0.0.1:2525",
        "--json",
    )
    assert add.returncode == 0, add.stderr
    added = json.loads(add.stdout)
    assert added["email_address"] == "anna.virtanen@example.test"
    assert added["credential"] == "stored, encrypted"
    assert (added["state"], added["approval"]) == ("disabled", "pending")

    outputs = [add]
    outputs.append(run(env, "mailbox", "list", "--json"))
    outputs.append(run(env, "mailbox", "show", anna, "--json"))
    outputs.append(run(env, "mailbox", "show", anna))
    outputs.append(run(env, "status", "--json"))
    outputs.append(run(env, "status"))
    for res in outputs:
        assert res.returncode == 0, res.stderr
        assert PASSWORD not in res.stdout + res.stderr
    assert json.loads(outputs[1].stdout)[0]["owner"] == "Anna Virtanen"

    # Not in clear anywhere in the database: every row of every table, as text.
    with engine.connect() as conn:
        tables = conn.scalars(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).all()
        for table in tables:
            dump = conn.scalars(sa.text(f'SELECT t::text FROM "{table}" t')).all()
            assert not any(PASSWORD in row for row in dump), table
            assert not any(PASSWORD.encode().hex() in row for row in dump), table
        stored = conn.scalar(sa.text("SELECT credential FROM mailbox"))
    assert stored and PASSWORD.encode() not in bytes(stored)


def test_password_is_never_taken_from_argv(cli_env: dict[str, str], anna: str) -> None:
    res = run(cli_env, "mailbox", "add", "--owner", anna, "--imap", "imap://h", "--password", "x")
    assert res.returncode != 0
    assert "No such option" in res.stderr
    res = run(cli_env, "mailbox", "add", "--owner", anna, "--imap", "imap://h")  # no env, no tty
    assert res.returncode == 1
    assert "CRMSYNC_MAILBOX_PASSWORD" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_second_add_needs_update_then_replaces(cli_env: dict[str, str], anna: str) -> None:
    env = cli_env | {"CRMSYNC_MAILBOX_PASSWORD": "p1"}
    base = ["mailbox", "add", "--owner", anna, "--imap", "imap://127.0.0.1:1143"]
    assert run(env, *base).returncode == 0
    again = run(env, *base)
    assert again.returncode == 1
    assert "--update" in again.stderr
    upd = run(env, *base[:-1], "imaps://mail.example.test", "--update", "--json")
    assert upd.returncode == 0, upd.stderr
    assert json.loads(upd.stdout)["imap_url"] == "imaps://mail.example.test"
    assert len(json.loads(run(env, "mailbox", "list", "--json").stdout)) == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--owner", "nobody", "--imap", "imap://h"], "no user or queue 'nobody'"),
        (["--owner", "anna", "--imap", "pop3://h"], "scheme must be imap:// or imaps://"),
        (["--owner", "anna"], "give at least --imap"),
    ],
)
def test_mailbox_add_errors_are_one_clear_line(
    cli_env: dict[str, str], anna: str, args: list[str], fragment: str
) -> None:
    res = run(cli_env | {"CRMSYNC_MAILBOX_PASSWORD": "p"}, "mailbox", "add", *args)
    assert res.returncode == 1
    assert fragment in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_commands_refuse_a_database_without_schema(tmp_path: Path, pg_admin_url: str) -> None:
    import uuid

    from sqlalchemy.engine import make_url

    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    name = f"bare_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
        env = clean_env(CRMSYNC_DATABASE_URL=url, CRMSYNC_HOME=str(tmp_path))
        res = run(env, "status")
        assert res.returncode == 1
        assert "run: crmsync init" in res.stderr
        assert run(env, "init").returncode == 0
        assert run(env, "status").returncode == 0
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _contacts_csv(path: Path, n: int, bad: dict[int, tuple[str, str]]) -> Path:
    """n contact rows; row i in ``bad`` gets (column, value) broken."""
    lines = ["id,first_name,last_name,email,owner"]
    for i in range(n):
        row = {
            "id": f"c-{i}",
            "first_name": "Aino",
            "last_name": f"Laine {i}",
            "email": f"aino.{i}@customer.test",
            "owner": "u-anna",
        }
        if i in bad:
            column, value = bad[i]
            row[column] = value
        lines.append(",".join(row.values()))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_import_of_1000_rows_with_3_bad_loads_997_and_names_the_3(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    people = tmp_path / "people.json"
    people.write_text(
        json.dumps(
            {
                "business_units": [{"id": "bu-root", "name": "Pohjola Sensors Oy"}],
                "users": [
                    {
                        "id": "u-anna",
                        "username": "anna.virtanen",
                        "first_name": "Anna",
                        "last_name": "Virtanen",
                        "email": "anna@example.test",
                        "business_unit": "bu-root",
                    }
                ],
            }
        )
    )
    bad = {10: ("email", "not-an-address"), 500: ("last_name", ""), 998: ("owner", "u-nobody")}
    contacts = _contacts_csv(tmp_path / "contacts.csv", 1000, bad)

    res = run(cli_env, "import", str(people), str(contacts))
    assert res.returncode == 1, res.stderr
    # CSV line = row index + 2 (header is line 1); each error names file, line and field
    assert 'contacts.csv line 12, field "email"' in res.stderr
    assert 'contacts.csv line 502, field "last_name"' in res.stderr
    assert 'contacts.csv line 1000, field "owner"' in res.stderr
    assert "3 row(s) refused" in res.stderr

    again = run(cli_env, "import", str(people), str(contacts), "--json")
    assert again.returncode == 1
    report = json.loads(again.stdout)
    assert report["counts"]["contacts"] == {
        "created": 0,
        "updated": 0,
        "unchanged": 997,
        "failed": 3,
    }
    assert sorted(e["line"] for e in report["errors"]) == [12, 502, 1000]
    status = json.loads(run(cli_env, "status", "--json").stdout)
    assert status["records"]["contact"] == 997


def test_import_of_a_missing_file_is_one_clear_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    res = run(cli_env, "import", str(tmp_path / "nope.csv"))
    assert res.returncode == 1
    assert "nope.csv" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_demo_loads_the_crm_delivers_real_mail_and_syncs_it(cli_env: dict[str, str], stack) -> None:
    accounts = Path(__file__).parents[2] / "demo" / "mail-accounts.txt"
    for line in accounts.read_text().splitlines():
        if line and not line.startswith("#"):
            login, _, password = line.partition(":")
            stack.add_user(login, password)
    stack_json = str(Path(stack.dir) / "stack.json")

    first = run(cli_env, "demo", "--stack", stack_json, "--accounts", str(accounts), "--json")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["import_errors"] == []
    assert len(result["mailboxes"]) == 6
    assert len(result["delivered"]) + len(result["already_there"]) == 7
    counts = result["inbox_counts"]
    assert counts["anna.virtanen@demo.crmsync.test"] == 5  # read back over IMAP
    assert counts["jenni.makinen@demo.crmsync.test"] == 4
    # the incoming sync ran on every mailbox and decided every message copy once
    synced = {s["mailbox"]: s for s in result["synced"]}
    assert all(s["error"] is None for s in synced.values())
    anna, jenni = (
        synced["anna.virtanen@demo.crmsync.test"],
        synced["jenni.makinen@demo.crmsync.test"],
    )
    assert (anna["tracked"], anna["skipped"]) == (4, {"bulk_mail": 1})
    assert (jenni["tracked"], jenni["linked"]) == (1, 1)
    outcomes = {
        (d["message_id"], d["mailbox"].split(".")[0]): d["reason"] for d in result["decisions"]
    }
    assert outcomes[("demo-3@demo.crmsync.test", "jenni")] == "already_tracked"
    assert outcomes[("demo-7@demo.crmsync.test", "jenni")] == "reply_to_tracked"
    assert outcomes[("demo-5@demo.crmsync.test", "jenni")] == "not_a_reply"
    assert len(result["decisions"]) == 9

    again = run(cli_env, "demo", "--stack", stack_json, "--accounts", str(accounts), "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["delivered"] == []  # nothing doubled
    assert second["inbox_counts"] == counts
    assert all(s["seen"] == 0 for s in second["synced"])  # nothing decided twice
    assert second["decisions"] == result["decisions"]
    for password in (ln.partition(":")[2] for ln in accounts.read_text().splitlines()):
        if password:
            assert password not in first.stdout + first.stderr + again.stdout + again.stderr

    human = run(cli_env, "demo", "--stack", stack_json, "--accounts", str(accounts))
    assert human.returncode == 0, human.stderr
    assert "anna.virtanen@demo.crmsync.test" in human.stdout
    assert "reply_to_tracked" in human.stdout and "enabled" in human.stdout


def test_demo_without_a_stack_says_how_to_start_it(cli_env: dict[str, str], tmp_path: Path) -> None:
    res = run(cli_env, "demo", "--stack", str(tmp_path / "stack.json"))
    assert res.returncode == 1
    assert "stack/up.sh" in res.stderr


def test_approval_is_gated_by_privilege_and_audited(
    cli_env: dict[str, str], engine: Engine, anna: str
) -> None:
    from crmsync.crm.base import Depth
    from crmsync.crm.models import RolePrivilege, SecurityRole, UserRole

    with session_scope(engine) as s:
        admin_role = SecurityRole(name="Mailbox admin")
        admin_role.privileges = [
            RolePrivilege(privilege="approve_mailbox", depth=Depth.ORGANIZATION)
        ]
        s.add(admin_role)
        bu = s.scalars(sa.select(BusinessUnit)).one()
        sari = User(name="Sari Admin", username="sari", business_unit_id=bu.id)
        s.add(sari)
        s.flush()
        s.add(UserRole(user_id=sari.id, role_id=admin_role.id))
    env = cli_env | {"CRMSYNC_MAILBOX_PASSWORD": "p"}
    assert run(env, "mailbox", "add", "--owner", anna, "--imap", "imap://h").returncode == 0

    denied = run(env, "mailbox", "approve", anna, "--as", anna)
    assert denied.returncode == 1
    assert "approve_mailbox" in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1
    assert json.loads(run(env, "mailbox", "show", anna, "--json").stdout)["approval"] == "pending"

    ok = run(env, "mailbox", "approve", anna, "--as", "sari")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(run(env, "mailbox", "show", anna, "--json").stdout)["approval"] == "approved"
    assert run(env, "mailbox", "reject", anna).returncode == 0  # the CLI operator may

    events = json.loads(run(env, "audit", "--action", "mailbox.*", "--json").stdout)
    assert [(e["action"], e["actor"]) for e in events][:2] == [
        ("mailbox.rejected", events[0]["actor"]),
        ("mailbox.approved", "Sari Admin (sari)"),
    ]
    assert events[0]["actor"].startswith("cli:")


def test_org_settings_need_the_privilege_at_organization_depth(
    cli_env: dict[str, str], engine: Engine, anna: str
) -> None:
    from crmsync.crm.base import Depth
    from crmsync.crm.models import RolePrivilege, SecurityRole, UserRole

    with session_scope(engine) as s:
        role = SecurityRole(name="Local settings")
        role.privileges = [RolePrivilege(privilege="manage_org_settings", depth=Depth.USER)]
        s.add(role)
        s.flush()
        anna_user = s.scalars(sa.select(User).where(User.username == anna)).one()
        s.add(UserRole(user_id=anna_user.id, role_id=role.id))
    res = run(cli_env, "settings", "set", "privacy_level", "metadata", "--as", anna)
    assert res.returncode == 1
    assert "needs depth organization" in res.stderr
    assert json.loads(run(cli_env, "settings", "list", "--json").stdout)["privacy_level"] == (
        "everything"
    )


def test_settings_are_validated_gated_and_audited(cli_env: dict[str, str], anna: str) -> None:
    listed = json.loads(run(cli_env, "settings", "list", "--json").stdout)
    assert listed["privacy_level"] == "everything"
    bad = run(cli_env, "settings", "set", "privacy_level", "secret-ish")
    assert bad.returncode == 1 and "metadata, subject, everything" in bad.stderr
    denied = run(cli_env, "settings", "set", "privacy_level", "subject", "--as", anna)
    assert denied.returncode == 1 and "manage_org_settings" in denied.stderr
    assert run(cli_env, "settings", "set", "privacy_level", "subject").returncode == 0
    assert (
        json.loads(run(cli_env, "settings", "list", "--json").stdout)["privacy_level"] == "subject"
    )
    event = json.loads(run(cli_env, "audit", "--action", "settings.*", "--json").stdout)[0]
    assert event["details"] == {"old": "everything", "new": "subject"}


def test_mailbox_privacy_is_capped_by_the_organization(cli_env: dict[str, str], anna: str) -> None:
    env = cli_env | {"CRMSYNC_MAILBOX_PASSWORD": "p"}
    add = run(
        env,
        "mailbox",
        "add",
        "--owner",
        anna,
        "--imap",
        "imap://h",
        "--privacy",
        "everything",
        "--json",
    )
    assert add.returncode == 0, add.stderr
    assert json.loads(add.stdout)["privacy"] == "everything"
    assert run(env, "settings", "set", "privacy_level", "metadata").returncode == 0
    shown = json.loads(run(env, "mailbox", "show", anna, "--json").stdout)
    assert (shown["privacy_setting"], shown["privacy"]) == ("everything", "metadata")
