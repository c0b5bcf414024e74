"""Resolving references by external id, and the messages when they resolve to nothing."""

from __future__ import annotations

import uuid

import pytest

from crmsync.importing.references import Directory, Entry, RefProblem
from crmsync.importing.values import Ref

OWNER = ("user", "team")
CUSTOMER = ("account", "contact")


@pytest.fixture
def directory() -> Directory:
    d = Directory()
    d.add("user", "u-1", Entry(uuid.uuid4(), "user", origin="users.csv line 2", stored=False))
    d.add("team", "t-1", Entry(uuid.uuid4(), "team"))
    d.add("account", "x", Entry(uuid.uuid4(), "account"))
    d.add("contact", "x", Entry(uuid.uuid4(), "contact"))
    return d


def message(directory: Directory, field: str, ref: Ref, targets: tuple[str, ...]) -> str:
    with pytest.raises(RefProblem) as caught:
        directory.resolve(field, ref, targets)
    return str(caught.value)


def test_resolves_to_the_one_matching_type(directory: Directory) -> None:
    assert directory.resolve("owner", Ref("t-1"), OWNER).record_type == "team"
    assert directory.resolve("customer", Ref("x", "contact"), CUSTOMER).record_type == "contact"


def test_nothing_found(directory: Directory) -> None:
    assert message(directory, "owner", Ref("u-99"), OWNER) == (
        'owner "u-99" is not a user or team in this import or in the database'
    )
    assert message(directory, "account", Ref("a-9"), ("account",)) == (
        'account "a-9" is not an account in this import or in the database'
    )
    assert message(directory, "members", Ref("u-9"), ("user",)) == (
        'member "u-9" is not a user in this import or in the database'
    )


def test_ambiguous_asks_for_the_prefix_form(directory: Directory) -> None:
    assert message(directory, "customer", Ref("x"), CUSTOMER) == (
        'customer "x" is both an account and a contact; write account:x or contact:x'
    )


def test_a_row_of_this_import_with_errors(directory: Directory) -> None:
    directory.note_refused("user", "u-2", "users.csv line 3")
    assert message(directory, "owner", Ref("u-2"), OWNER) == (
        'owner "u-2" is a user whose row has errors (users.csv line 3)'
    )


def test_a_row_the_database_refused(directory: Directory) -> None:
    entry = directory.get("user", "u-1")
    assert entry is not None
    entry.failed = True
    assert message(directory, "owner", Ref("u-1"), OWNER) == (
        'owner "u-1" is a user whose row was not imported (users.csv line 2)'
    )


def test_unknown_lists_what_to_fetch_from_the_database(directory: Directory) -> None:
    wanted = directory.unknown(
        [(Ref("u-1"), OWNER), (Ref("u-7"), OWNER), (Ref("c-1", "contact"), CUSTOMER)]
    )
    assert wanted == {"team": {"u-1", "u-7"}, "user": {"u-7"}, "contact": {"c-1"}}
