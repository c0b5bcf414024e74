"""Rules across rows: parents before children (no loops), unique usernames and role names."""

from __future__ import annotations

import uuid

from crmsync.importing.conflicts import parents_first, unique_role_names, unique_usernames
from crmsync.importing.lookups import Holder
from crmsync.importing.references import Directory, Entry
from crmsync.importing.rows import SourceRow, ValidRow
from crmsync.importing.schemas import SPECS
from crmsync.importing.values import Ref

ACCOUNTS = SPECS["accounts"]


def account(line: int, ext_id: str, parent: str | None = None) -> ValidRow:
    values = {"id": ext_id, "parent_account": Ref(parent) if parent else None}
    return ValidRow(SourceRow("accounts.csv", line, "accounts", {}), ext_id, values)


def test_parents_come_first_whatever_the_file_order() -> None:
    rows = [account(2, "child", "middle"), account(3, "middle", "top"), account(4, "top")]
    ordered, refused = parents_first(ACCOUNTS, rows)
    assert [r.ext_id for r in ordered] == ["top", "middle", "child"]
    assert refused == []


def test_a_parent_outside_the_import_does_not_hold_a_row_back() -> None:
    ordered, refused = parents_first(ACCOUNTS, [account(2, "a", "stored-elsewhere")])
    assert [r.ext_id for r in ordered] == ["a"]
    assert refused == []


def test_loops_are_refused_with_the_chain_and_their_descendants_too() -> None:
    rows = [
        account(2, "fine"),
        account(3, "x", "y"),
        account(4, "y", "z"),
        account(5, "z", "x"),
        account(6, "below", "y"),
    ]
    ordered, refused = parents_first(ACCOUNTS, rows)
    assert [r.ext_id for r in ordered] == ["fine"]
    messages = {row.ext_id: (field, message) for row, field, message in refused}
    assert messages == {
        "x": (
            "parent_account",
            "the parent_account chain loops back to this account (x -> y -> z -> x)",
        ),
        "y": (
            "parent_account",
            "the parent_account chain loops back to this account (y -> z -> x -> y)",
        ),
        "z": (
            "parent_account",
            "the parent_account chain loops back to this account (z -> x -> y -> z)",
        ),
        "below": (
            "parent_account",
            'parent_account "y" is in a loop of parent_accounts, so cannot load',
        ),
    }


def test_a_very_long_chain_does_not_exhaust_the_stack() -> None:
    rows = [account(i + 2, f"a{i}", f"a{i + 1}" if i < 4999 else None) for i in range(5000)]
    ordered, refused = parents_first(ACCOUNTS, rows)
    assert refused == []
    assert ordered[0].ext_id == "a4999"
    assert ordered[-1].ext_id == "a0"


def user(line: int, ext_id: str, username: str) -> ValidRow:
    return ValidRow(
        SourceRow("users.csv", line, "users", {}), ext_id, {"id": ext_id, "username": username}
    )


def test_usernames_are_unique_in_the_import_and_against_stored_users() -> None:
    directory = Directory()
    stored_anna = uuid.uuid4()
    directory.add("user", "u-anna", Entry(stored_anna, "user"))
    for ext_id in ("u-new", "u-1", "u-2", "u-3"):
        directory.add("user", ext_id, Entry(uuid.uuid4(), "user", stored=False))
    rows = [
        user(2, "u-anna", "anna"),  # the stored holder itself: fine
        user(3, "u-new", "anna"),  # the row above holds it: refused
        user(4, "u-1", "mikko"),
        user(5, "u-2", "mikko"),  # the row above holds it: refused
        user(6, "u-3", "sari"),  # a stored user (not in this import) holds it: refused
    ]
    stored = {"anna": Holder(stored_anna, "u-anna"), "sari": Holder(uuid.uuid4(), None)}
    kept, refused = unique_usernames(rows, directory, stored)
    assert [r.ext_id for r in kept] == ["u-anna", "u-1"]
    assert [(r.source.line, f, m.split(";")[0]) for r, f, m in refused] == [
        (3, "username", 'username "anna" is also in users.csv line 2'),
        (5, "username", 'username "mikko" is also in users.csv line 4'),
        (6, "username", 'username "sari" belongs to another existing user (no external id)'),
    ]


def test_role_names_are_unique_per_business_unit() -> None:
    directory = Directory()
    sales = uuid.uuid4()
    directory.add("business_unit", "bu-sales", Entry(sales, "business_unit"))
    for ext_id in ("r-1", "r-2", "r-3"):
        directory.add("role", ext_id, Entry(uuid.uuid4(), "role", stored=False))

    def role(line: int, ext_id: str, name: str, unit: str | None) -> ValidRow:
        values = {"id": ext_id, "name": name, "business_unit": Ref(unit) if unit else None}
        return ValidRow(SourceRow("roles.json", line, "roles", {}), ext_id, values)

    rows = [
        role(2, "r-1", "Salesperson", None),
        role(3, "r-2", "Salesperson", "bu-sales"),  # same name, other unit: fine
        role(4, "r-3", "Salesperson", None),  # same root name as r-1
    ]
    stored = {(None, "Auditor"): Holder(uuid.uuid4(), None)}
    kept, refused = unique_role_names(rows, directory, stored)
    assert [r.ext_id for r in kept] == ["r-1", "r-2"]
    assert [m for _, _, m in refused] == [
        'role name "Salesperson" is also in roles.json line 2 (same business unit)'
    ]
