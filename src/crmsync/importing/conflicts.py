"""Rules that span rows: parents before their children, and names that must stay unique.

Pure functions: the caller supplies what the database holds. Each returns the rows that pass and
a refusal (row, field, message) for every row that does not.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable
from typing import TypeVar

from crmsync.importing.lookups import Holder
from crmsync.importing.references import Directory
from crmsync.importing.rows import ValidRow
from crmsync.importing.schemas import TypeSpec

Refusal = tuple[ValidRow, str, str]
K = TypeVar("K", bound=Hashable)


def parents_first(spec: TypeSpec, rows: list[ValidRow]) -> tuple[list[ValidRow], list[Refusal]]:
    """Order rows so a parent given in this import comes before its children; refuse loops."""
    field = spec.parent_field
    if field is None:
        return rows, []
    by_id = {r.ext_id: r for r in rows}
    ordered: list[ValidRow] = []
    refused: list[Refusal] = []
    state: dict[str, str] = {}  # visiting (on the current walk up), placed, refused

    def parent_of(row: ValidRow) -> ValidRow | None:
        parent = row.get(field)
        return by_id.get(parent.ext_id) if parent is not None else None

    for start in rows:
        # Walk up from this row to the first ancestor already dealt with (or a root), then place
        # the walked rows ancestors first. Iterative: a long chain cannot exhaust the stack.
        chain: list[ValidRow] = []
        row: ValidRow | None = start
        while row is not None and row.ext_id not in state:
            state[row.ext_id] = "visiting"
            chain.append(row)
            row = parent_of(row)
        loop: list[ValidRow] = []
        if row is not None and state[row.ext_id] == "visiting":
            loop = chain[chain.index(row) :]
        blocked = row is not None and state[row.ext_id] != "placed"
        for member in reversed(chain):
            if not blocked:
                state[member.ext_id] = "placed"
                ordered.append(member)
                continue
            state[member.ext_id] = "refused"
            if member in loop:
                i = loop.index(member)
                ids = [m.ext_id for m in loop[i:] + loop[: i + 1]]
                message = f"the {field} chain loops back to this {spec.label} ({' -> '.join(ids)})"
            else:
                parent = member.get(field)
                message = f'{field} "{parent.ext_id}" is in a loop of {field}s, so cannot load'
            refused.append((member, field, message))
    return ordered, refused


def unique_usernames(
    rows: list[ValidRow], directory: Directory, stored: dict[str, Holder]
) -> tuple[list[ValidRow], list[Refusal]]:
    """Usernames are unique: refuse a second row with one, and taking over another user's."""

    def in_run(name: str, where: str) -> str:
        return f'username "{name}" is also in {where}'

    def taken(name: str, holder: Holder) -> str:
        return (
            f'username "{name}" belongs to another existing user ({_their(holder)}); refusing to '
            "take it over: give this row that user's id, or another username"
        )

    return _claims(
        rows, directory, "user", "username", lambda r: r.get("username"), stored, in_run, taken
    )


def unique_role_names(
    rows: list[ValidRow], directory: Directory, stored: dict[tuple[uuid.UUID | None, str], Holder]
) -> tuple[list[ValidRow], list[Refusal]]:
    """One role name per business unit. The database enforces it only for non-root roles (a NULL
    unit never conflicts), so check both here and say which row or role holds the name."""

    def key_of(row: ValidRow) -> tuple[uuid.UUID | None, str]:
        ref = row.get("business_unit")
        entry = directory.get("business_unit", ref.ext_id) if ref is not None else None
        return (entry.id if entry is not None else None, row.get("name"))

    def in_run(key: tuple[uuid.UUID | None, str], where: str) -> str:
        return f'role name "{key[1]}" is also in {where} (same business unit)'

    def taken(key: tuple[uuid.UUID | None, str], holder: Holder) -> str:
        return (
            f'a role named "{key[1]}" already exists in that business unit ({_their(holder)}); '
            "give this row that role's id, or another name"
        )

    return _claims(rows, directory, "role", "name", key_of, stored, in_run, taken)


def _their(holder: Holder) -> str:
    return f'id "{holder.external_id}"' if holder.external_id else "no external id"


def _claims(
    rows: list[ValidRow],
    directory: Directory,
    record_type: str,
    field: str,
    key_of: Callable[[ValidRow], K],
    stored: dict[K, Holder],
    in_run: Callable[[K, str], str],
    taken: Callable[[K, Holder], str],
) -> tuple[list[ValidRow], list[Refusal]]:
    seen: dict[K, str] = {}
    kept: list[ValidRow] = []
    refused: list[Refusal] = []
    for row in rows:
        key = key_of(row)
        entry = directory.get(record_type, row.ext_id)
        holder = stored.get(key)
        if key in seen:
            refused.append((row, field, in_run(key, seen[key])))
        elif holder is not None and entry is not None and holder.id != entry.id:
            refused.append((row, field, taken(key, holder)))
        else:
            kept.append(row)
            seen[key] = row.source.where
    return kept, refused
