"""The sync commands through the real command line, against Dovecot and PostgreSQL: mailbox
enable/disable, sync --once, explain and activities."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.crm.activities import Email
from crmsync.crm.audit import AuditEvent
from crmsync.crm.base import Depth, IncomingEmailFilter
from crmsync.crm.mailboxes import ApprovalStatus, Mailbox, MailboxState
from crmsync.secrets import Secret
from tests.clirun import clean_env, run
from tests.stackfix import Stack
from tests.syncworld import CliWorld as BaseCliWorld
from tests.syncworld import Person, make_mail

pytestmark = pytest.mark.integration

WRONG_PASSWORD = "Not-the-password-93kd"


class CliWorld(BaseCliWorld):
    def assert_no_password_shown(self) -> None:  # type: ignore[override]
        super().assert_no_password_shown(WRONG_PASSWORD)

    def grant_org_email_reader(self, person: Person) -> None:
        self.grant(person, "read:email", Depth.ORGANIZATION)

    def username(self, person: Person) -> str:
        return person.mail.username


@pytest.fixture
def world(engine: Engine, stack: Stack, tmp_path: Path, cli_env: dict[str, str]) -> CliWorld:
    return CliWorld(engine, stack, tmp_path, cli_env)


def _mailbox(engine: Engine, person: Person) -> Mailbox:
    with Session(engine, expire_on_commit=False) as s:
        return s.get_one(Mailbox, person.mailbox_id)


def test_enable_needs_approval_then_is_audited_and_idempotent(world: CliWorld) -> None:
    anna = world.user("anna", approved=False)
    outsider = world.user("olli")
    with Session(world.engine) as s, s.begin():
        s.get_one(Mailbox, anna.mailbox_id).state = MailboxState.DISABLED

    refused = world.cli("mailbox", "enable", anna.address)
    assert refused.returncode == 1
    assert "not approved" in refused.stderr
    assert f"crmsync mailbox approve {anna.address}" in refused.stderr
    assert _mailbox(world.engine, anna).state is MailboxState.DISABLED

    # --as is gated like approve: a user without approve_mailbox is refused
    denied = world.cli("mailbox", "enable", anna.address, "--as", world.username(outsider))
    assert denied.returncode == 1
    assert "approve_mailbox" in denied.stderr

    assert world.cli("mailbox", "approve", anna.address).returncode == 0
    enabled = world.cli(
        "mailbox", "enable", anna.address, "--process-email-after", "2024-05-01T08:00:00+03:00"
    )
    assert enabled.returncode == 0, enabled.stderr
    assert "enabled" in enabled.stderr and "2024-05-01T05:00:00+00:00" in enabled.stderr
    box = _mailbox(world.engine, anna)
    assert box.state is MailboxState.ENABLED and box.enabled_at is not None
    assert box.process_email_received_after.isoformat() == "2024-05-01T05:00:00+00:00"

    again = world.cli("mailbox", "enable", anna.address)
    assert again.returncode == 0 and "already enabled" in again.stderr

    disabled = world.cli("mailbox", "disable", anna.address)
    assert disabled.returncode == 0 and "disabled" in disabled.stderr
    assert _mailbox(world.engine, anna).state is MailboxState.DISABLED
    assert "already disabled" in world.cli("mailbox", "disable", anna.address).stderr

    # without a start date it is now
    assert world.cli("mailbox", "enable", anna.address).returncode == 0
    box = _mailbox(world.engine, anna)
    assert box.process_email_received_after == box.enabled_at

    with Session(world.engine) as s:
        events = s.scalars(
            sa.select(AuditEvent).where(AuditEvent.action.like("mailbox.%")).order_by(AuditEvent.id)
        ).all()
    actions = [e.action for e in events]
    assert actions == ["mailbox.approved", "mailbox.enabled", "mailbox.disabled", "mailbox.enabled"]
    assert events[1].details["process_email_received_after"] == "2024-05-01T05:00:00+00:00"
    assert events[1].actor_name.startswith("cli:")

    bad = world.cli("mailbox", "enable", anna.address, "--process-email-after", "yesterday")
    assert bad.returncode == 1 and "ISO 8601" in bad.stderr
    world.assert_no_password_shown()


def test_sync_once_tracks_summarizes_and_reports_a_failing_mailbox(world: CliWorld) -> None:
    anna = world.user("anna", incoming=IncomingEmailFilter.ALL)
    bert = world.user("bert", incoming=IncomingEmailFilter.RESPONSES)
    broken = world.user("cid")
    with Session(world.engine) as s, s.begin():
        mailbox = s.get_one(Mailbox, broken.mailbox_id)
        mailbox.credential = world.box.encrypt(
            Secret(WRONG_PASSWORD), bound_to=f"mailbox:{mailbox.id}"
        )
    world.append(anna, make_mail(sender="carl@customer.test", to=anna.address, subject="Quote"))
    world.append(bert, make_mail(sender="dora@customer.test", to=bert.address, subject="Hi"))

    plain = world.cli("sync")
    assert plain.returncode == 2
    assert "--once syncs in this process" in plain.stderr and "crmsync run" in plain.stderr

    res = world.cli("sync", "--once")
    assert res.returncode == 1, res.stderr
    assert anna.address in res.stdout and bert.address in res.stdout
    assert "not_a_reply 1" in res.stdout
    assert "refused the login" in res.stderr and "crmsync mailbox add --update" in res.stderr
    with Session(world.engine) as s:
        assert s.scalars(sa.select(Email.subject)).all() == ["Quote"]
        assert s.get_one(Mailbox, broken.mailbox_id).last_error_code == "AuthenticationFailed"

    world.append(anna, make_mail(sender="carl@customer.test", to=anna.address, subject="Two"))
    world.append(anna, make_mail(sender="eve@customer.test", to=anna.address, subject="Three"))
    as_json = world.cli("sync", "--once", "--mailbox", anna.address, "--json")
    assert as_json.returncode == 0, as_json.stderr
    [report] = json.loads(as_json.stdout)
    assert report["mailbox"] == anna.address and report["ok"] is True
    assert (report["seen"], report["tracked"], report["error"]) == (2, 2, None)
    assert report["folders"] == ["INBOX"] and report["modes"]["INBOX"]

    # A refused login is permanent: the first run disabled the mailbox and said why.
    with Session(world.engine) as s:
        stopped = s.get_one(Mailbox, broken.mailbox_id)
        assert stopped.state is MailboxState.DISABLED and stopped.next_sync_at is None
        assert "AuthenticationFailed" in (stopped.disabled_reason or "")
    assert "mailbox disabled" in res.stdout
    failed = world.cli("sync", "--once", "--mailbox", broken.address, "--json")
    assert failed.returncode == 1
    assert "AuthenticationFailed" in failed.stderr
    assert f"crmsync mailbox enable {broken.address}" in failed.stderr
    world.assert_no_password_shown()


def test_sync_once_says_why_nothing_qualifies(world: CliWorld) -> None:
    empty = world.cli("sync", "--once")
    assert empty.returncode == 0 and "no mailboxes yet" in empty.stderr

    pending = world.user("anna", approved=False)
    off = world.user("bert")
    with Session(world.engine) as s, s.begin():
        s.get_one(Mailbox, off.mailbox_id).state = MailboxState.DISABLED
    res = world.cli("sync", "--once")
    assert res.returncode == 0, res.stderr
    assert f"crmsync mailbox approve {pending.address}" in res.stderr
    assert f"crmsync mailbox enable {off.address}" in res.stderr

    named = world.cli("sync", "--once", "--mailbox", off.address)
    assert named.returncode == 1 and "crmsync mailbox enable" in named.stderr
    world.assert_no_password_shown()


def test_explain_tells_why_a_message_was_or_was_not_tracked(world: CliWorld) -> None:
    anna = world.user("anna", incoming=IncomingEmailFilter.ALL)
    bert = world.user("bert", incoming=IncomingEmailFilter.RESPONSES)
    outsider = world.user("olli", incoming=IncomingEmailFilter.NONE)
    world.contact("Carl Customer", "carl@customer.test")
    message = make_mail(
        sender="Carl Customer <carl@customer.test>",
        to=[anna.address, bert.address],
        subject="Order 12",
        message_id="<order-12@customer.test>",
    )
    world.append(anna, message)
    world.append(bert, message)
    world.append(
        bert,
        make_mail(
            sender="carl@customer.test", to=bert.address, message_id="<lonely@customer.test>"
        ),
    )
    assert world.cli("sync", "--once").returncode == 0

    res = world.cli("explain", "<order-12@CUSTOMER.test>")
    assert res.returncode == 0, res.stderr
    assert "tracked" in res.stdout and "filter_all" in res.stdout
    assert "incoming filter tracks all email" in res.stdout
    assert "linked" in res.stdout and "already_tracked" in res.stdout  # bert's copy
    assert "Carl Customer" in res.stdout  # the sender party's record, by name
    assert "Order 12" in res.stdout  # the activity's subject

    lonely = world.cli("explain", "lonely@customer.test")
    assert lonely.returncode == 0, lonely.stderr
    assert "not_tracked" in lonely.stdout and "not_a_reply" in lonely.stdout
    assert "only replies to tracked email" in lonely.stdout

    as_json = world.cli("explain", "order-12@customer.test", "--json")
    rows = {r["mailbox"]: r for r in json.loads(as_json.stdout)}
    assert rows[anna.address]["outcome"] == "tracked"
    assert rows[anna.address]["email_id"] and rows[anna.address]["email_subject"] == "Order 12"
    assert rows[anna.address]["accepted_by"] == "user Anna"
    assert rows[bert.address]["outcome"] == "linked"
    assert rows[bert.address]["email_id"] == rows[anna.address]["email_id"]
    [not_tracked] = json.loads(world.cli("explain", "lonely@customer.test", "--json").stdout)
    assert (not_tracked["outcome"], not_tracked["reason"]) == ("not_tracked", "not_a_reply")
    assert not_tracked["email_id"] is None and not_tracked["attempts"] is None
    sender = next(p for p in rows[anna.address]["parties"] if p["role"] == "from")
    assert sender["records"] == ["contact Carl Customer"]

    only_bert = world.cli("explain", "order-12@customer.test", "--mailbox", bert.address, "--json")
    assert [r["mailbox"] for r in json.loads(only_bert.stdout)] == [bert.address]

    # --as: one's own mailbox's copy; others' only with organization-wide read:email
    own = world.cli("explain", "order-12@customer.test", "--as", world.username(bert), "--json")
    assert [r["mailbox"] for r in json.loads(own.stdout)] == [bert.address]
    hidden = world.cli("explain", "order-12@customer.test", "--as", world.username(outsider))
    assert hidden.returncode == 1 and "has not seen" in hidden.stderr
    world.grant_org_email_reader(outsider)
    everything = world.cli(
        "explain", "order-12@customer.test", "--as", world.username(outsider), "--json"
    )
    assert len(json.loads(everything.stdout)) == 2

    missing = world.cli("explain", "<nobody@nowhere.test>")
    assert missing.returncode == 1
    assert "crmsync has not seen a message with Message-ID <nobody@nowhere.test>" in missing.stderr
    assert "crmsync sync --once" in missing.stderr
    world.assert_no_password_shown()


def test_activities_lists_filters_and_respects_read_access(world: CliWorld) -> None:
    anna = world.user("anna", incoming=IncomingEmailFilter.ALL)
    bert = world.user("bert", incoming=IncomingEmailFilter.ALL)
    outsider = world.user("olli", incoming=IncomingEmailFilter.NONE)
    carl = world.contact("Carl Customer", "carl@customer.test")
    shared = make_mail(
        sender="carl@customer.test", to=[anna.address, bert.address], subject="For you both"
    )
    earlier = datetime.now(UTC) - timedelta(minutes=5)
    world.append(anna, shared, when=earlier)
    world.append(bert, shared, when=earlier)
    world.append(anna, make_mail(sender="dora@else.test", to=anna.address, subject="Only anna"))
    assert world.cli("sync", "--once").returncode == 0
    with Session(world.engine) as s, s.begin():
        email = s.scalars(sa.select(Email).where(Email.subject == "For you both")).one()
        email.regarding_id = carl

    listed = world.cli("activities")
    assert listed.returncode == 0, listed.stderr
    assert "For you both" in listed.stdout and "Only anna" in listed.stdout
    assert "Carl Customer" in listed.stdout

    rows = json.loads(world.cli("activities", "--json").stdout)
    assert {r["subject"]: r["mailboxes"] for r in rows} == {"For you both": 2, "Only anna": 1}
    assert rows[0]["subject"] == "Only anna"  # newest first

    regarding = json.loads(world.cli("activities", "--regarding", str(carl), "--json").stdout)
    assert [r["subject"] for r in regarding] == ["For you both"]
    assert regarding[0]["regarding"] == "Carl Customer"
    by_box = json.loads(world.cli("activities", "--mailbox", bert.address, "--json").stdout)
    assert [r["subject"] for r in by_box] == ["For you both"]
    assert len(json.loads(world.cli("activities", "--limit", "1", "--json").stdout)) == 1

    nothing = world.cli("activities", "--as", world.username(outsider), "--json")
    assert nothing.returncode == 0 and json.loads(nothing.stdout) == []
    world.grant_org_email_reader(outsider)
    reader = world.cli("activities", "--as", world.username(outsider), "--json")
    assert len(json.loads(reader.stdout)) == 2

    with Session(world.engine) as s:
        assert s.get_one(Mailbox, anna.mailbox_id).approval_status is ApprovalStatus.APPROVED
    world.assert_no_password_shown()


def test_the_new_commands_have_help() -> None:
    for args in (
        ["sync", "--help"],
        ["explain", "--help"],
        ["activities", "--help"],
        ["mailbox", "enable", "--help"],
        ["mailbox", "disable", "--help"],
    ):
        res = run(clean_env(), *args)
        assert res.returncode == 0, (args, res.stderr)
        assert "Usage" in res.stdout
