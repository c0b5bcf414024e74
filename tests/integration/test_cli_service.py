"""The service's command line: sync --now (with a real `crmsync worker`), status, alerts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.crm.activities import Email
from crmsync.crm.mailboxes import EmailServerProfile, Mailbox, MailboxState
from crmsync.secrets import Secret
from tests.integration.test_scheduler import WRONG_PASSWORD, wait_until
from tests.stackfix import Stack
from tests.syncworld import CliWorld, make_mail

pytestmark = pytest.mark.integration


@pytest.fixture
def world(engine: Engine, stack: Stack, tmp_path: Path, cli_env: dict[str, str]) -> CliWorld:
    return CliWorld(engine, stack, tmp_path, cli_env)


def start_worker(world: CliWorld, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "crmsync", "worker", "--concurrency", "2", *args],
        env=world.env | {"CRMSYNC_LOG_FORMAT": "json", "CRMSYNC_LOG_LEVEL": "info"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_worker(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"the worker ignored SIGTERM for 60 s:\n{err[-3000:]}") from None
    return proc.returncode, err


def test_sync_now_without_a_worker_says_so_and_with_one_waits_for_the_result(
    world: CliWorld,
) -> None:
    anna = world.user("anna")
    world.append(anna, make_mail(sender="carl@customer.test", to=anna.address, subject="Hi"))
    alone = world.cli("sync", "--now", "--mailbox", anna.address)
    assert alone.returncode == 0, alone.stderr
    assert "no worker is running" in alone.stderr and "crmsync run" in alone.stderr
    worker = start_worker(world)
    try:
        res = world.cli("sync", "--now", "--mailbox", anna.address, "--wait", "60", "--json")
        assert res.returncode == 0, res.stderr
        body = json.loads(res.stdout)
        assert body["live_workers"] >= 0
        [result] = body["results"]
        assert result["mailbox"] == anna.address and result["result"].startswith("ok")
        with Session(world.engine) as s:
            assert s.scalars(sa.select(Email.subject)).all() == ["Hi"]
        status = world.cli("status", "--json")
        service = json.loads(status.stdout)["service"]
        assert service["live_workers"] == 1 and service["overdue_mailboxes"] == 0
        [item] = json.loads(status.stdout)["mailboxes"]["items"]
        assert item["schedule"] and "5 min" in item["schedule"]
    finally:
        code, err = stop_worker(worker)
    assert code == 0, err[-3000:]
    synced = [json.loads(line) for line in err.splitlines() if '"mailbox synced"' in line]
    assert synced and all(line["mailbox_id"] == str(anna.mailbox_id) for line in synced)
    assert all(line["job_id"] for line in synced)
    world.assert_no_password_shown()


def test_a_disabled_mailbox_is_explained_and_its_alerts_listed_and_dismissed(
    world: CliWorld,
) -> None:
    anna = world.user("anna")
    admin = world.user("adele")
    with Session(world.engine) as s, s.begin():
        profile = EmailServerProfile(name="Dovecot", owner_id=admin.user_id)
        s.add(profile)
        s.flush()
        m = s.get_one(Mailbox, anna.mailbox_id)
        m.profile_id = profile.id
        m.credential = world.box.encrypt(Secret(WRONG_PASSWORD), bound_to=f"mailbox:{m.id}")
    worker = start_worker(world)
    try:

        def disabled() -> bool:
            """the refused login disabled the mailbox"""
            with Session(world.engine) as s:
                return s.get_one(Mailbox, anna.mailbox_id).state is MailboxState.DISABLED

        wait_until(disabled, seconds=60)
    finally:
        stop_worker(worker)
    status = world.cli("status", "--json")
    items = {i["email_address"]: i for i in json.loads(status.stdout)["mailboxes"]["items"]}
    assert "AuthenticationFailed" in items[anna.address]["schedule"]
    listed = world.cli("alerts", "list", "--for", anna.address, "--json")
    assert listed.returncode == 0, listed.stderr
    [alert] = json.loads(listed.stdout)
    assert alert["code"] == "mailbox.disabled" and alert["mailbox"] == anna.address
    assert f"crmsync mailbox enable {anna.address}" in alert["message"]
    admins = json.loads(world.cli("alerts", "list", "--for", admin.address, "--json").stdout)
    assert {a["code"] for a in admins} == {"mailbox.disabled", "profile.failing"}
    gone = world.cli("alerts", "dismiss", alert["id"])
    assert gone.returncode == 0 and "dismissed 1 alert" in gone.stderr
    assert json.loads(world.cli("alerts", "list", "--for", anna.address, "--json").stdout) == []
    assert len(json.loads(world.cli("alerts", "list", "--all", "--json").stdout)) == 3
    bad = world.cli("alerts", "dismiss", "not-an-id")
    assert bad.returncode != 0 and "not an alert id" in bad.stderr
    # Re-enabling starts over: due now, no error streak.
    enabled = world.cli("mailbox", "enable", anna.address)
    assert enabled.returncode == 0, enabled.stderr
    with Session(world.engine) as s:
        m = s.get_one(Mailbox, anna.mailbox_id)
        assert m.next_sync_at is not None and m.last_error_count == 0 and m.sync_history == []
    world.assert_no_password_shown(WRONG_PASSWORD)
    assert os.environ.get("CRMSYNC_SECRET_KEY") != world.key


def test_a_running_worker_sends_queued_email_within_moments(world: CliWorld) -> None:
    from crmsync.crm.activities import EmailStatus

    anna, bert = world.user("anna"), world.user("bert")
    with Session(world.engine) as s, s.begin():
        s.get_one(Mailbox, anna.mailbox_id).smtp_url = f"smtp://127.0.0.1:{world.stack.smtp_port}"
    worker = start_worker(world)
    try:
        res = world.cli(
            "email", "send", "--from", anna.address, "--to", bert.address, "--subject", "Now"
        )
        assert res.returncode == 0, res.stderr

        def sent() -> bool:
            """the worker sent it"""
            with Session(world.engine) as s:
                return s.scalar(sa.select(Email.email_status)) is EmailStatus.SENT

        wait_until(sent, seconds=30)
        listed = json.loads(world.cli("email", "list", "--status", "sent", "--json").stdout)
        assert [e["to"] for e in listed] == [[bert.address]]
    finally:
        stop_worker(worker)
    world.assert_no_password_shown()
