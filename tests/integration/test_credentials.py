"""Credentials: encrypted at rest, rotated by `crmsync secrets rotate`, never shown anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from crmsync.admin.mailboxes import credential_binding
from crmsync.config import load_settings
from crmsync.crm.mailboxes import EmailServerProfile, Mailbox
from crmsync.crm.models import BusinessUnit, User
from crmsync.db import session_scope
from crmsync.errors import SecretError
from crmsync.secrets import Secret, SecretBox, new_key
from tests.clirun import clean_env, run

pytestmark = pytest.mark.integration

PASSWORD = "Tähti-salasana-51c9e"
PROFILE_PASSWORD = "profiili-salasana-0b7d"


def box(*keys: str) -> SecretBox:
    return SecretBox(load_settings({"CRMSYNC_SECRET_KEY": ",".join(keys)}))


@pytest.fixture
def env(database_url: str, tmp_path: Path, engine: Engine) -> dict[str, str]:
    with session_scope(engine) as s:
        bu = BusinessUnit(name="Root")
        s.add(bu)
        s.flush()
        for name in ("anna", "mikko"):
            u = User(name=name.title(), username=name, business_unit_id=bu.id)
            u.set_email(f"{name}@example.test")
            s.add(u)
    base = clean_env()
    return base | {
        "CRMSYNC_DATABASE_URL": database_url,
        "CRMSYNC_HOME": str(tmp_path),
        "CRMSYNC_LOG_LEVEL": "debug",
    }


def test_rotation_reencrypts_every_secret_and_the_old_key_then_fails(
    env: dict[str, str], engine: Engine
) -> None:
    old, new = new_key(), new_key()
    with_old = env | {"CRMSYNC_SECRET_KEY": old, "CRMSYNC_MAILBOX_PASSWORD": PASSWORD}
    for owner in ("anna", "mikko"):
        res = run(with_old, "mailbox", "add", "--owner", owner, "--imap", "imap://127.0.0.1:1143")
        assert res.returncode == 0, res.stderr
    with session_scope(engine) as s:  # a profile-level service account secret too
        profile = EmailServerProfile(name="Main", username="svc@example.test")
        s.add(profile)
        s.flush()
        profile.credential = box(old).encrypt(
            Secret(PROFILE_PASSWORD), bound_to=f"profile:{profile.id}"
        )
        before = {str(m.id): bytes(m.credential) for m in s.scalars(sa.select(Mailbox))}

    rotated = run(env | {"CRMSYNC_SECRET_KEY": f"{new},{old}"}, "secrets", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 3 credential(s)" in rotated.stderr

    with session_scope(engine) as s:
        mailboxes = list(s.scalars(sa.select(Mailbox)))
        profile = s.scalars(sa.select(EmailServerProfile)).one()
        for m in mailboxes:
            assert bytes(m.credential) != before[str(m.id)]
            binding = credential_binding(m.id)
            assert box(new).decrypt(m.credential, bound_to=binding).reveal() == PASSWORD
            with pytest.raises(SecretError):
                box(old).decrypt(m.credential, bound_to=binding)
        assert (
            box(new).decrypt(profile.credential, bound_to=f"profile:{profile.id}").reveal()
            == PROFILE_PASSWORD
        )
        with pytest.raises(SecretError):
            box(old).decrypt(profile.credential, bound_to=f"profile:{profile.id}")

    # with the old key alone, rotate now fails with a clear reason
    stale = run(env | {"CRMSYNC_SECRET_KEY": old}, "secrets", "rotate")
    assert stale.returncode == 1
    assert "cannot be decrypted" in stale.stderr


def test_the_password_appears_in_no_output_log_json_error_or_traceback(
    env: dict[str, str], database_url: str
) -> None:
    with_pw = env | {"CRMSYNC_MAILBOX_PASSWORD": PASSWORD}
    runs = [
        run(with_pw, "init", "--json"),
        run(
            with_pw,
            "mailbox",
            "add",
            "--owner",
            "anna",
            "--imap",
            "imap://127.0.0.1:1143",
            "--smtp",
            "smtp://127.0.0.1:2525",
            "--json",
        ),
        run(
            with_pw,
            "mailbox",
            "add",
            "--owner",
            "anna",
            "--imap",
            "imap://127.0.0.1:1143",
            "--update",
        ),
        run(with_pw, "mailbox", "add", "--owner", "anna", "--imap", "imap://h"),  # refused
        run(with_pw, "mailbox", "add", "--owner", "nobody", "--imap", "imap://h"),  # error
        run(with_pw, "mailbox", "add", "--owner", "mikko", "--imap", "pop3://h"),  # error
        run(with_pw, "mailbox", "list", "--json"),
        run(with_pw, "mailbox", "show", "anna", "--json"),
        run(with_pw, "mailbox", "show", "anna"),
        run(with_pw, "status", "--json"),
        run(with_pw, "audit", "--json"),
        run(with_pw, "audit"),
        run(with_pw, "secrets", "rotate"),
        run(with_pw | {"CRMSYNC_SECRET_KEY": new_key()}, "secrets", "rotate"),  # wrong key
        run(with_pw | {"CRMSYNC_LOG_FORMAT": "json"}, "mailbox", "list"),
    ]
    assert [r.returncode for r in runs] == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    for res in runs:
        assert PASSWORD not in res.stdout, res.args
        assert PASSWORD not in res.stderr, res.args
    audit = json.loads(runs[10].stdout)
    assert {e["action"] for e in audit} >= {"mailbox.added", "mailbox.updated"}
    assert all(
        e["details"].get("credential_replaced") for e in audit if e["target_type"] == "mailbox"
    )


def test_an_internal_error_traceback_does_not_show_the_password(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug after the password was read: the debug traceback must not reveal it."""
    import crmsync.cli.mailbox as mailbox_cli

    def broken(session, box, spec, password, **kwargs):
        raise RuntimeError(f"simulated bug while saving {spec.owner} with {password!r}")

    for key, value in (env | {"CRMSYNC_MAILBOX_PASSWORD": PASSWORD}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(mailbox_cli, "add_mailbox", broken)
    from crmsync.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["mailbox", "add", "--owner", "anna", "--imap", "imap://127.0.0.1:1143"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "internal error" in captured.err
    assert "Traceback" in captured.err  # CRMSYNC_LOG_LEVEL=debug
    assert "Secret('***')" in captured.err
    assert PASSWORD not in captured.out + captured.err
