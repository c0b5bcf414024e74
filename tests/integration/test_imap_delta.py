"""Incremental folder sync (``delta.changes_since``) against the real Dovecot, in all three modes.

Each mode is forced: ``qresync`` as Dovecot offers it, ``condstore`` by not enabling QRESYNC,
``uid_diff`` on a session that does not enable CONDSTORE either. Every poll goes through a
counting proxy so ``Delta.round_trips`` is checked against the commands actually on the wire.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crmsync.mail.imap import Cursor, Delta, ImapSession, changes_since
from crmsync.mail.imap.delta import Mode
from tests.integration.test_imap_session import append, open_imap, plain_message
from tests.netproxy import FaultProxy
from tests.stackfix import MailUser, Stack

pytestmark = pytest.mark.integration

MODES: list[Mode] = ["qresync", "condstore", "uid_diff"]
BIG = 100_000
SMALL = 1_000
_COMMAND_LINE = re.compile(rb"^[A-Za-z0-9.]+ [A-Za-z]")


@dataclass
class Follower:
    """What a caller of ``changes_since`` keeps: the cursor and the UIDs it holds."""

    imap: ImapSession
    proxy: FaultProxy
    mode: Mode
    folder: str = "INBOX"
    cursor: Cursor | None = None
    known: set[int] = field(default_factory=set)

    def poll(self) -> Delta:
        self.proxy.clear_traffic()
        delta = changes_since(
            self.imap, self.folder, self.cursor, known_uids=lambda: self.known, mode=self.mode
        )
        # the count the delta reports is the count of commands the server received
        assert delta.round_trips == commands_sent(self.proxy)
        if delta.uidvalidity_changed:
            self.known = set()
        self.known = (self.known | set(delta.new_uids)) - set(delta.vanished)
        self.cursor = delta.cursor
        return delta


def commands_sent(proxy: FaultProxy) -> int:
    lines = proxy.captured_to_server().split(b"\r\n")
    return sum(1 for line in lines if _COMMAND_LINE.match(line))


@pytest.fixture
def follower_for(stack: Stack) -> Iterator:
    opened: list[tuple[FaultProxy, ImapSession]] = []

    def make(user: MailUser, mode: Mode, folder: str = "INBOX") -> Follower:
        proxy = FaultProxy((stack.host, stack.imap_port)).start()
        # uid_diff is tested "by not enabling the extension": no CONDSTORE on that session
        imap = open_imap(stack, user, via=proxy, enable_condstore=mode != "uid_diff")
        opened.append((proxy, imap))
        return Follower(imap, proxy, mode, folder)

    yield make
    for proxy, imap in opened:
        imap.close()
        proxy.stop()


def messages(user: MailUser, n: int) -> list[bytes]:
    return [plain_message(user.address, subject=f"delta {i}").as_bytes() for i in range(n)]


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_sees_new_messages_flag_changes_and_expunges(
    stack: Stack, mail_user: MailUser, follower_for, mode: Mode
) -> None:
    append(stack, mail_user, messages(mail_user, 5))
    f = follower_for(mail_user, mode)

    first = f.poll()
    assert first.mode == mode and first.new_uids == [1, 2, 3, 4, 5]
    assert not first.uidvalidity_changed and first.changed == {} and first.vanished == []
    assert first.cursor.uidnext == 6
    assert (first.cursor.highestmodseq is None) == (mode == "uid_diff")
    # (ENABLE QRESYNC +) EXAMINE + UID SEARCH UID 1:5
    assert first.round_trips == (3 if mode == "qresync" else 2)

    quiet = f.poll()
    # the first sync left INBOX selected at the cursor's state: NOOP asks for news
    assert quiet.is_empty and quiet.round_trips == 1 and quiet.cursor == first.cursor
    assert b"NOOP" in f.proxy.captured_to_server()
    quieter = f.poll()
    assert quieter.is_empty and quieter.round_trips == 1

    # another client: two arrivals, a flag change, an expunge
    append(stack, mail_user, messages(mail_user, 2))
    with stack.imap(mail_user) as other:
        other.select_folder("INBOX")
        other.add_flags([2], [b"\\Flagged"])
        other.delete_messages([3])
        other.expunge()
    delta = f.poll()
    assert delta.mode == mode and not delta.uidvalidity_changed
    assert delta.new_uids == [6, 7]
    assert delta.vanished == [3]
    if mode == "uid_diff":
        assert delta.changed == {}  # flag changes are invisible without mod-sequences
    else:
        assert set(delta.changed) == {2} and "\\Flagged" in delta.changed[2]
    assert delta.cursor.uidnext == 8
    assert f.known == {1, 2, 4, 5, 6, 7}

    assert f.poll().is_empty

    # a flag change alone
    with stack.imap(mail_user) as other:
        other.select_folder("INBOX")
        other.add_flags([1, 6], [b"\\Seen"])
    flags_only = f.poll()
    if mode == "uid_diff":
        assert flags_only.is_empty and flags_only.round_trips == 1
    else:
        # 6 was new last time, so it is "changed" now
        assert set(flags_only.changed) == {1, 6} and flags_only.new_uids == []
        assert all("\\Seen" in flags for flags in flags_only.changed.values())

    # an expunge alone (nothing new, UIDNEXT unchanged)
    with stack.imap(mail_user) as other:
        other.select_folder("INBOX")
        other.delete_messages([5, 7])
        other.expunge()
    gone = f.poll()
    assert gone.vanished == [5, 7] and gone.new_uids == [] and gone.changed == {}
    assert f.known == {1, 2, 4, 6}
    assert f.poll().is_empty


@pytest.mark.parametrize("mode", ["qresync", "condstore"])
def test_round_trips_of_a_busy_poll(
    stack: Stack, mail_user: MailUser, follower_for, mode: Mode
) -> None:
    append(stack, mail_user, messages(mail_user, 3))
    f = follower_for(mail_user, mode)
    f.poll()
    append(stack, mail_user, messages(mail_user, 1))
    with stack.imap(mail_user) as other:
        other.select_folder("INBOX")
        other.add_flags([1], [b"\\Answered"])
    f.imap.unselect()  # what a caller does once it has fetched the new headers
    delta = f.poll()
    assert delta.new_uids == [4] and set(delta.changed) == {1}
    # qresync: STATUS, EXAMINE (QRESYNC ...) (QRESYNC was enabled by the first sync)
    # condstore: STATUS, EXAMINE, UID SEARCH (new), UID FETCH (CHANGEDSINCE)
    assert delta.round_trips == (2 if mode == "qresync" else 4)
    f.imap.unselect()
    append(stack, mail_user, messages(mail_user, 1))
    again = f.poll()
    assert again.new_uids == [5] and again.changed == {}
    # condstore: the arrival raised HIGHESTMODSEQ too, and only the FETCH can tell that no old
    # message changed, so it is still sent (and answers nothing)
    assert again.round_trips == (2 if mode == "qresync" else 4)


def test_auto_mode_prefers_qresync_and_falls_back(
    stack: Stack, mail_user: MailUser, follower_for
) -> None:
    append(stack, mail_user, messages(mail_user, 2))
    with open_imap(stack, mail_user) as imap:
        assert changes_since(imap, "INBOX", None).mode == "qresync"
    with open_imap(stack, mail_user, enable_condstore=False) as imap:
        # asked for the best, the session without CONDSTORE can only diff UIDs
        delta = changes_since(imap, "INBOX", None, mode="qresync")
        assert delta.mode == "uid_diff" and delta.cursor.highestmodseq is None
        assert delta.new_uids == [1, 2]
    # a cursor made without mod-sequences is upgraded by the first poll that has them
    f = follower_for(mail_user, "condstore")
    f.cursor, f.known = delta.cursor, {1, 2}
    with stack.imap(mail_user) as other:
        other.select_folder("INBOX")
        other.add_flags([1], [b"\\Seen"])
    upgrade = f.poll()
    assert upgrade.mode == "uid_diff" and upgrade.is_empty
    assert upgrade.cursor.highestmodseq is not None
    with stack.imap(mail_user) as other:
        other.select_folder("INBOX")
        other.add_flags([2], [b"\\Seen"])
    assert set(f.poll().changed) == {2}


@pytest.mark.parametrize("mode", MODES)
def test_uidvalidity_change_reports_everything_as_new(
    stack: Stack, mail_user: MailUser, follower_for, mode: Mode
) -> None:
    folder = "Projects"
    with stack.imap(mail_user) as other:
        other.create_folder(folder)
    append(stack, mail_user, messages(mail_user, 3), folder)
    f = follower_for(mail_user, mode, folder)
    before = f.poll()
    assert before.new_uids == [1, 2, 3]

    # the folder is recreated: same name, new UIDVALIDITY, UIDs start again at 1
    f.imap.close()  # (the follower's session must not hold the folder while it is deleted)
    with stack.imap(mail_user) as other:
        other.delete_folder(folder)
        other.create_folder(folder)
    append(stack, mail_user, messages(mail_user, 2), folder)
    f.imap = open_imap(stack, mail_user, via=f.proxy, enable_condstore=mode != "uid_diff")
    delta = f.poll()
    f.imap.close()
    assert delta.uidvalidity_changed and not delta.is_empty
    assert delta.cursor.uidvalidity != before.cursor.uidvalidity
    assert delta.new_uids == [1, 2] and delta.vanished == [] and delta.changed == {}
    assert f.known == {1, 2}


# ---------------------------------------------------------------------- size independence
def build_maildir(stack: Stack, user: MailUser, count: int, originals: int = SMALL) -> None:
    """COUNT messages written straight into the user's Maildir/cur (hard links past ORIGINALS).

    test-stack.md 4a/4d: ~1 s for 100k, against minutes over APPEND.
    """
    with stack.imap(user) as client:
        client.select_folder("INBOX")  # Dovecot creates the Maildir owned by nobody
    cur = stack.maildir_root / user.username / "Maildir" / "cur"
    assert cur.is_dir()
    host = "stack.test"
    stamp = int(time.time())
    files: list[Path] = []
    for i in range(min(count, originals)):
        raw = plain_message(user.address, subject=f"bulk {i}").as_bytes().replace(b"\n", b"\r\n")
        path = cur / f"{stamp}.P{os.getpid()}Q{i}.{host},S={len(raw)}:2,"
        path.write_bytes(raw)
        shutil.chown(path, "nobody", "nogroup")
        files.append(path)
    for i in range(len(files), count):
        source = files[i % len(files)]
        size = source.name.split(",S=")[1].split(":")[0]
        os.link(source, cur / f"{stamp}.P{os.getpid()}Q{i}.{host},S={size}:2,")
    # Dovecot rescans a maildir on every access while its mtime is recent (~65 ms at 100k,
    # test-stack.md 4d): date the directories back so the timings printed below are settled
    past = time.time() - 120
    for directory in (cur, cur.parent / "new"):
        os.utime(directory, (past, past))


@pytest.fixture(scope="module")
def sized_users(stack: Stack) -> dict[int, MailUser]:
    users = {n: stack.new_user("delta") for n in (SMALL, BIG)}
    for n, user in users.items():
        build_maildir(stack, user, n)
    return users


@pytest.mark.parametrize("mode", MODES)
def test_a_no_change_poll_costs_the_same_at_1k_and_100k(
    sized_users: dict[int, MailUser], follower_for, mode: Mode
) -> None:
    costs: dict[int, tuple[int, int, float]] = {}
    for n, user in sized_users.items():
        f = follower_for(user, mode)
        first = f.poll()
        assert len(first.new_uids) == n and first.new_uids[-1] == n
        trips, seconds = [], []
        for _ in range(4):
            started = time.perf_counter()
            delta = f.poll()
            seconds.append(time.perf_counter() - started)
            assert delta.is_empty and delta.cursor == first.cursor
            trips.append(delta.round_trips)
        costs[n] = (trips, round(min(seconds[1:]) * 1000, 3))
    # timings are printed, not asserted: the machine is shared and noisy, and the first
    # session after writing a maildir pays Dovecot's rescan (test-stack.md 4d)
    print(f"\n{mode}: no-change polls (round trips, best ms after the first) {costs}")
    # the first sync leaves INBOX selected, so every later poll is one NOOP
    assert costs[SMALL][0] == costs[BIG][0] == [1, 1, 1, 1]


@pytest.mark.parametrize("mode", ["qresync", "condstore"])
def test_a_one_flag_poll_costs_the_same_at_1k_and_100k(
    stack: Stack, sized_users: dict[int, MailUser], follower_for, mode: Mode
) -> None:
    trips: dict[int, tuple[int, int]] = {}
    for n, user in sized_users.items():
        f = follower_for(user, mode)
        f.poll()
        with stack.imap(user) as other:
            other.select_folder("INBOX")
            other.add_flags([n // 2], [b"$Delta"])
        f.proxy.clear_traffic()
        delta = f.poll()
        assert set(delta.changed) == {n // 2} and not delta.new_uids and not delta.vanished
        with stack.imap(user) as other:  # leave the shared mailbox as it was
            other.select_folder("INBOX")
            other.remove_flags([n // 2], [b"$Delta"])
        trips[n] = (delta.round_trips, f.proxy.bytes_to_client)
    print(f"\n{mode}: one flag changed (round trips, bytes from the server) {trips}")
    assert trips[SMALL][0] == trips[BIG][0]
    # the answer names the one changed message, not the folder: same size give or take digits
    assert abs(trips[SMALL][1] - trips[BIG][1]) < 200


@pytest.mark.parametrize("mode", MODES)
def test_a_fresh_session_polls_by_status_and_a_held_folder_by_noop(
    stack: Stack, mail_user: MailUser, follower_for, mode: Mode
) -> None:
    append(stack, mail_user, messages(mail_user, 3))
    first = follower_for(mail_user, mode)
    first.poll()
    cursor = first.cursor

    # a new session (a restarted worker) with the stored cursor: STATUS, nothing selected
    fresh = follower_for(mail_user, mode)
    fresh.cursor = cursor
    fresh.known = set(first.known)
    assert fresh.poll().round_trips == 1
    assert b"STATUS" in fresh.proxy.captured_to_server() and fresh.imap.selected is None

    # hold=True: EXAMINE once, then NOOPs, whatever the folder's size
    fresh.proxy.clear_traffic()
    held = changes_since(fresh.imap, "INBOX", cursor, mode=mode, hold=True)
    assert held.is_empty and held.round_trips == 1 and fresh.imap.selected is not None
    for _ in range(3):
        fresh.proxy.clear_traffic()
        again = changes_since(fresh.imap, "INBOX", cursor, mode=mode, hold=True)
        assert again.is_empty and again.round_trips == 1
        assert b"NOOP" in fresh.proxy.captured_to_server()

    # news reach a held folder: NOOP reports them and the delta has them
    append(stack, mail_user, messages(mail_user, 1))
    fresh.proxy.clear_traffic()
    news = changes_since(fresh.imap, "INBOX", cursor, mode=mode, hold=True)
    assert news.new_uids == [4] and news.cursor.uidnext == 5
    assert news.round_trips == commands_sent(fresh.proxy)
    # a flag change alone: seen with mod-sequences, ignored (one NOOP) without
    with stack.imap(mail_user) as other:
        other.select_folder("INBOX")
        other.add_flags([1], [b"\\Flagged"])
    fresh.proxy.clear_traffic()
    flagged = changes_since(fresh.imap, "INBOX", news.cursor, mode=mode, hold=True)
    if mode == "uid_diff":
        assert flagged.is_empty and flagged.round_trips == 1
    else:
        assert set(flagged.changed) == {1} and not flagged.new_uids
