"""The scheduler bench's CRM: N users, each with an enabled, approved mailbox, in bulk.

    url = fresh_database(stack.postgres_url, "bench_sched")       # bench.import_bench
    ids = add_mailboxes(engine, box, stack, users, spread=interval)

Rows go in with SQLAlchemy Core multi-row INSERTs (psycopg sends 1,000 rows per statement), one
transaction for all of them: 10,000 users and mailboxes take seconds, where the ORM would make
tens of thousands of round trips. Each user's filter is "all email", so every delivered message
is tracked; passwords are encrypted as the CLI does (``SecretBox``, bound to the mailbox id).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from tests.stackfix import MailUser, Stack

from crmsync.crm.base import IncomingEmailFilter, RecordState
from crmsync.crm.mailboxes import ApprovalStatus, Mailbox, MailboxState, SyncMethod
from crmsync.crm.records import BusinessUnit, EmailAddress, Record, User
from crmsync.crm.settings import set_setting
from crmsync.secrets import Secret, SecretBox

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
CHUNK = 2_000


def add_mailboxes(
    engine: Engine,
    box: SecretBox,
    stack: Stack,
    users: list[MailUser],
    *,
    spread: timedelta,
    seed: int = 7,
) -> list[uuid.UUID]:
    """A CRM user and a mailbox for each of USERS; ``next_sync_at`` uniformly random over
    ``[now, now + spread)``. Returns the mailbox ids, in the order of USERS."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    imap_url = f"imap://{stack.host}:{stack.imap_port}"
    with Session(engine) as session, session.begin():
        unit = BusinessUnit(name="Bench Oy")
        session.add(unit)
        session.flush()
        unit_id = unit.id
    records, crm_users, addresses, mailboxes = [], [], [], []
    ids: list[uuid.UUID] = []
    for user in users:
        user_id, mailbox_id = uuid.uuid4(), uuid.uuid4()
        ids.append(mailbox_id)
        records.append(
            {
                "id": user_id,
                "record_type": "user",
                "name": user.username,
                "business_unit_id": unit_id,
                "state": RecordState.ACTIVE,
                "created_at": now,
                "modified_at": now,
                "version": 1,
            }
        )
        crm_users.append(
            {
                "id": user_id,
                "username": user.username,
                "first_name": "Bench",
                "last_name": user.username,
                "is_disabled": False,
                "allow_send_on_behalf": False,
                "incoming_email_filter": IncomingEmailFilter.ALL,
            }
        )
        addresses.append(
            {"id": uuid.uuid4(), "record_id": user_id, "slot": 1, "address": user.address.lower()}
        )
        mailboxes.append(
            {
                "id": mailbox_id,
                "name": user.username,
                "owner_id": user_id,
                "email_address": user.address.lower(),
                "incoming_method": SyncMethod.SERVER_SYNC,
                "outgoing_method": SyncMethod.NONE,
                "act_method": SyncMethod.NONE,
                "approval_status": ApprovalStatus.APPROVED,
                "state": MailboxState.ENABLED,
                "enabled_at": now,
                "imap_url": imap_url,
                "username": user.username,
                "credential": box.encrypt(Secret(user.password), bound_to=f"mailbox:{mailbox_id}"),
                "process_email_received_after": LONG_AGO,
                "next_sync_at": now + spread * rng.random(),
                "created_at": now,
                "modified_at": now,
            }
        )
    with engine.begin() as conn:
        for table, rows in (
            (Record.__table__, records),
            (User.__table__, crm_users),
            (EmailAddress.__table__, addresses),
            (Mailbox.__table__, mailboxes),
        ):
            for i in range(0, len(rows), CHUNK):
                conn.execute(sa.insert(table), rows[i : i + CHUNK])
        conn.execute(sa.text("ANALYZE"))
    return ids


def set_speedup(engine: Engine, speedup: int) -> None:
    with Session(engine) as session, session.begin():
        set_setting(session, "schedule_speedup", str(speedup))


def only_enable(engine: Engine, enabled: list[uuid.UUID], next_sync_at: datetime) -> None:
    """Enable exactly ENABLED (due at NEXT_SYNC_AT), disable every other mailbox."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(Mailbox.__table__).values(state=MailboxState.DISABLED, next_sync_at=None)
        )
        conn.execute(
            sa.update(Mailbox.__table__)
            .where(Mailbox.__table__.c.id.in_(enabled))
            .values(state=MailboxState.ENABLED, next_sync_at=next_sync_at)
        )
        conn.execute(sa.text("DELETE FROM procrastinate_jobs"))


def tracked_message_ids(engine: Engine, message_ids: list[str]) -> dict[str, datetime]:
    """Which of MESSAGE_IDS are tracked (an email row), with the row's creation time."""
    found: dict[str, datetime] = {}
    with engine.connect() as conn:
        for i in range(0, len(message_ids), 1_000):
            rows = conn.execute(
                sa.text(
                    "SELECT e.message_id, r.created_at FROM email e JOIN record r ON r.id = e.id "
                    "WHERE e.message_id = ANY(:ids)"
                ),
                {"ids": message_ids[i : i + 1_000]},
            )
            for mid, created in rows:
                found[mid] = created
    return found
