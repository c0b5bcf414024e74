"""The pure parts of ``delta`` (cursor JSON, UID sets) and its logic against a model server.

The model server keeps messages with mod-sequences the way RFC 7162 describes, and a follower
applies every delta it gets; after any sequence of arrivals, flag changes, expunges and
UIDVALIDITY resets, what the follower holds must be what the folder holds (flags too, in the
modes that can see them).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.mail.imap.delta import (
    MAX_UID,
    Cursor,
    Mode,
    changes_since,
    choose_mode,
    format_uid_set,
    parse_uid_set,
    uid_range,
)
from crmsync.mail.imap.fetch import FolderState
from crmsync.mail.imap.session import QresyncSelect

uids = st.integers(min_value=1, max_value=MAX_UID)


# ---------------------------------------------------------------------- cursor
@given(
    uidvalidity=uids,
    uidnext=st.integers(min_value=1, max_value=MAX_UID + 1),
    modseq=st.none() | st.integers(min_value=1, max_value=2**63 - 1),
)
def test_cursor_survives_json(uidvalidity: int, uidnext: int, modseq: int | None) -> None:
    cursor = Cursor(uidvalidity, uidnext, modseq)
    assert Cursor.from_json(cursor.to_json()) == cursor
    assert json.loads(cursor.to_json())["uidnext"] == uidnext


@pytest.mark.parametrize(
    "data",
    [
        {"uidvalidity": 0, "uidnext": 1, "highestmodseq": None},
        {"uidvalidity": 1, "uidnext": 0, "highestmodseq": None},
        {"uidvalidity": 1, "uidnext": 1, "highestmodseq": 0},
        {"uidvalidity": True, "uidnext": 1, "highestmodseq": None},
        {"uidvalidity": "7", "uidnext": 1, "highestmodseq": None},
        {"uidvalidity": 1, "uidnext": 1, "highestmodseq": None, "extra": 1},
        {"uidnext": 1},
        [1, 2, 3],
    ],
)
def test_bad_cursors_are_refused(data: object) -> None:
    with pytest.raises(ValueError):
        Cursor.from_json(json.dumps(data))


# ---------------------------------------------------------------------- UID sets
@given(st.sets(st.integers(min_value=1, max_value=5000), max_size=200))
def test_uid_sets_round_trip(values: set[int]) -> None:
    text = format_uid_set(values)
    assert parse_uid_set(text) == sorted(values)
    assert "*" not in text
    # shortest form: ascending parts with a gap between neighbours (none could be merged)
    bounds = [parse_uid_set(part) for part in text.split(",")] if text else []
    assert all(b[0] - a[-1] >= 2 for a, b in itertools.pairwise(bounds))


@given(st.sets(st.integers(min_value=1, max_value=5000), max_size=200), uids)
def test_parsing_is_bounded_by_below(values: set[int], below: int) -> None:
    text = format_uid_set(values)
    assert parse_uid_set(text.encode(), below=below) == sorted(v for v in values if v < below)


def test_uid_set_edge_cases() -> None:
    assert format_uid_set([5, 3, 4, 9, 1]) == "1,3:5,9"
    assert format_uid_set([]) == ""
    assert parse_uid_set(b" ") == []
    assert parse_uid_set("5:3") == [3, 4, 5]  # either order means the same range
    # a server may name a vast range: only the part below the bound is expanded
    assert parse_uid_set(b"1:4294967295", below=4) == [1, 2, 3]
    for bad in ("1:*", "a", "1,,2", "1:2:3", "-1"):
        with pytest.raises(ValueError):
            parse_uid_set(bad)
    assert uid_range(3, 3) == "3" and uid_range(1, 9) == "1:9"
    with pytest.raises(ValueError):
        uid_range(5, 4)
    with pytest.raises(ValueError):
        format_uid_set([0])


# ---------------------------------------------------------------------- model server
@dataclass
class ModelFolder:
    uidvalidity: int = 100
    uidnext: int = 1
    modseq: int = 1
    messages: dict[int, tuple[frozenset[str], int]] = field(default_factory=dict)
    expunged: dict[int, int] = field(default_factory=dict)

    def state(self, name: str) -> FolderState:
        return FolderState(name, self.uidvalidity, self.uidnext, self.modseq, len(self.messages))

    def append(self) -> None:
        self.modseq += 1
        self.messages[self.uidnext] = (frozenset(), self.modseq)
        self.uidnext += 1

    def toggle(self, index: int, flag: str) -> None:
        if self.messages:
            uid = sorted(self.messages)[index % len(self.messages)]
            self.modseq += 1
            self.messages[uid] = (self.messages[uid][0] ^ {flag}, self.modseq)

    def expunge(self, index: int) -> None:
        if self.messages:
            uid = sorted(self.messages)[index % len(self.messages)]
            self.modseq += 1
            del self.messages[uid]
            self.expunged[uid] = self.modseq

    def recreate(self) -> None:
        count = len(self.messages)
        self.uidvalidity += 1
        self.uidnext, self.messages, self.expunged = 1, {}, {}
        for _ in range(count):
            self.append()


class ModelSession:
    """The ``ImapSession`` surface ``changes_since`` uses, over a ``ModelFolder``."""

    def __init__(self, folder: ModelFolder, *, qresync: bool, condstore: bool) -> None:
        self.folder = folder
        self._offers_qresync = qresync
        self.condstore_enabled = condstore
        self.qresync_enabled = False
        self.selected: FolderState | None = None
        self.commands: list[str] = []

    def has(self, capability: str) -> bool:
        return capability.upper() in {"ENABLE", "UNSELECT"} or (
            capability.upper() == "QRESYNC" and self._offers_qresync
        )

    def enable_qresync(self) -> int:
        sent = 1 if self.unselect() else 0
        self.commands.append("ENABLE")
        self.qresync_enabled = True
        return sent + 1

    def unselect(self) -> bool:
        if self.selected is None:
            return False
        self.commands.append("UNSELECT")
        self.selected = None
        return True

    def status(self, name: str, *, modseq: bool | None = None) -> FolderState:
        self.commands.append("STATUS")
        return self.folder.state(name)

    def select(self, name: str) -> FolderState:
        self.commands.append("EXAMINE")
        self.selected = self.folder.state(name)
        return self.selected

    def select_qresync(self, name: str, *, uidvalidity: int, modseq: int) -> QresyncSelect:
        assert self.qresync_enabled
        self.commands.append("EXAMINE QRESYNC")
        self.selected = state = self.folder.state(name)
        if uidvalidity != state.uidvalidity:
            return QresyncSelect(state, (), {})
        gone = format_uid_set(u for u, m in self.folder.expunged.items() if m > modseq)
        changed = {
            uid: tuple(sorted(flags))
            for uid, (flags, m) in self.folder.messages.items()
            if m > modseq
        }
        return QresyncSelect(state, (gone.encode(),) if gone else (), changed)

    def noop_quiet(self, *, flags: bool = True) -> bool:
        """A real server reports, on NOOP, every change since the folder was selected."""
        assert self.selected is not None
        self.commands.append("NOOP")
        now, then = self.folder.state(self.selected.folder), self.selected
        same = (now.uidvalidity, now.uidnext, now.exists) == (
            then.uidvalidity,
            then.uidnext,
            then.exists,
        )
        return same and (not flags or now.highestmodseq == then.highestmodseq)

    def search_uid_range(self, first: int, last: int) -> list[int]:
        self.commands.append("UID SEARCH")
        return sorted(u for u in self.folder.messages if first <= u <= last)

    def fetch_flags_changed_since(
        self, first: int, last: int, modseq: int
    ) -> dict[int, tuple[str, ...]]:
        self.commands.append("UID FETCH CHANGEDSINCE")
        return {
            uid: tuple(sorted(flags))
            for uid, (flags, m) in self.folder.messages.items()
            if first <= uid <= last and m > modseq
        }


SESSIONS: dict[Mode, dict[str, bool]] = {
    "qresync": {"qresync": True, "condstore": True},
    "condstore": {"qresync": False, "condstore": True},
    "uid_diff": {"qresync": False, "condstore": False},
}

operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 3)),
        st.tuples(st.just("toggle"), st.integers(0, 50)),
        st.tuples(st.just("expunge"), st.integers(0, 50)),
        st.tuples(st.just("poll"), st.integers(0, 1)),
        st.tuples(st.just("recreate"), st.just(0)),
    ),
    max_size=40,
)


@pytest.mark.parametrize("mode", list(SESSIONS))
@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_a_follower_always_catches_up(mode: Mode, ops: list[tuple[str, int]]) -> None:
    folder = ModelFolder()
    session = ModelSession(folder, **SESSIONS[mode])
    cursor: Cursor | None = None
    known: set[int] = set()
    flags: dict[int, tuple[str, ...]] = {}
    calls = 0
    seen = (0, 0)

    def known_uids() -> set[int]:
        nonlocal calls
        calls += 1
        return known

    def poll() -> None:
        nonlocal cursor, known, flags, calls, seen
        before = len(session.commands)
        untouched = cursor is not None and seen == (folder.uidvalidity, folder.modseq)
        calls = 0
        delta = changes_since(session, "INBOX", cursor, known_uids=known_uids)  # type: ignore[arg-type]
        assert calls <= 1
        assert delta.mode == mode or (mode != "uid_diff" and cursor and not cursor.highestmodseq)
        assert delta.round_trips == len(session.commands) - before
        if delta.uidvalidity_changed:
            known, flags = set(), {}
        known = (known | set(delta.new_uids)) - set(delta.vanished)
        for uid in delta.vanished:
            flags.pop(uid, None)
        for uid in delta.new_uids:
            flags[uid] = tuple(sorted(folder.messages[uid][0]))
        flags.update(delta.changed)
        assert delta.cursor.uidvalidity == folder.uidvalidity
        cursor = delta.cursor
        seen = (folder.uidvalidity, folder.modseq)
        if untouched:
            assert delta.is_empty
            # a quiet poll: NOOP on the folder still held at the cursor's state, else STATUS
            # (after UNSELECT when another state is held)
            assert session.commands[before:] in (["NOOP"], ["STATUS"], ["UNSELECT", "STATUS"])

    poll()
    for op, arg in ops:
        if op == "append":
            for _ in range(arg + 1):
                folder.append()
        elif op == "toggle":
            folder.toggle(arg, "\\Seen" if arg % 2 else "$Label")
        elif op == "expunge":
            folder.expunge(arg)
        elif op == "recreate":
            folder.recreate()
        else:
            poll()
            if arg:
                session.unselect()
    poll()
    assert known == set(folder.messages)
    if mode != "uid_diff":
        assert flags == {uid: tuple(sorted(f)) for uid, (f, _m) in folder.messages.items()}
    session.unselect()
    before = len(session.commands)
    poll()
    assert session.commands[before:] == ["STATUS"]


def test_modes_fall_back_to_what_the_session_can_do() -> None:
    folder = ModelFolder()
    best = ModelSession(folder, **SESSIONS["qresync"])
    assert choose_mode(best) == "qresync"  # type: ignore[arg-type]
    assert choose_mode(best, "condstore") == "condstore"  # type: ignore[arg-type]
    assert choose_mode(best, "uid_diff") == "uid_diff"  # type: ignore[arg-type]
    plain = ModelSession(folder, **SESSIONS["uid_diff"])
    assert choose_mode(plain, "qresync") == "uid_diff"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown sync mode"):
        changes_since(best, "INBOX", None, mode="fast")  # type: ignore[arg-type]


def test_first_sync_of_an_empty_folder_sends_no_search() -> None:
    session = ModelSession(ModelFolder(), **SESSIONS["condstore"])
    delta = changes_since(session, "INBOX", None)  # type: ignore[arg-type]
    assert delta.new_uids == [] and delta.cursor == Cursor(100, 1, 1)
    assert session.commands == ["EXAMINE"]
