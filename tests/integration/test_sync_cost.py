"""What a no-change sync of a mailbox costs in database statements: the worker's CPU per run
(issue 5) is mostly these round trips, so their number is pinned here (a count, not a time)."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.dbfix import counted
from tests.stackfix import Stack
from tests.syncworld import SyncWorld, make_mail

pytestmark = pytest.mark.integration


def test_a_no_change_sync_costs_a_fixed_handful_of_statements(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    world = SyncWorld(engine, stack, tmp_path)
    ann = world.user("ann")
    world.contact("Carl Client", "carl@client.example")
    world.append(ann, make_mail(sender="carl@client.example", to=ann.mail.address, subject="hello"))
    world.sync(ann)
    world.sync(ann)
    with counted(engine) as sent:
        report = world.sync(ann)
    statements = [" ".join(st.split())[:160] for st in sent]
    assert report.error is None and report.seen == 0
    shown = "\n".join(f"{n} x {s}" for s, n in collections.Counter(statements).most_common())
    # The owner's addresses and teams are not read by a run: loading them eagerly with the
    # mailbox (at the start and at the end) was four of the nineteen statements it had; the
    # folder's cursor was a SELECT and an UPDATE.
    assert not [s for s in statements if "FROM email_address" in s or "team" in s], shown
    # Per run: the mailbox (start, end), the settings (all at the start, the schedule's
    # speed-up at the end), the advisory lock and its release, the mailbox's two UPDATEs
    # (start, end); per folder (a new user's mailbox has only its Inbox): its row, one UPDATE
    # of its cursor, the quarantined UIDs due for a retry and the tracked ones left unmarked.
    # One more is a regression to look at, not a number to raise.
    assert len(statements) <= 12, shown
