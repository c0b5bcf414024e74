"""From a validated row to the state its record should have: references resolved, defaults given.

Nothing here touches the session; the loader applies a ``Change`` to a new or existing object.
A field the row leaves out (a JSON key that is absent) keeps its stored value; a field given
empty clears it, or resets it to its default where the column cannot be empty.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crmsync.crm.base import Depth
from crmsync.importing.references import Directory, Entry, RefProblem
from crmsync.importing.rows import ValidRow
from crmsync.importing.schemas import Kind, TypeSpec
from crmsync.importing.values import Ref

# Types whose rows belong to a business unit named directly (not through an owner).
NEEDS_BUSINESS_UNIT = ("users", "teams")


class FieldProblem(ValueError):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class Change:
    row: ValidRow
    entry: Entry
    columns: dict[str, Any] = field(default_factory=dict)
    """Model attribute -> value, only for what the row sets."""
    emails: dict[int, str | None] = field(default_factory=dict)
    """Slot -> address (None clears the slot), only for the slots the row gives."""
    links: dict[str, set[uuid.UUID]] = field(default_factory=dict)
    """``roles`` / ``members`` -> the ids the record should be linked to."""
    privileges: dict[str, Depth] | None = None


@dataclass
class Defaults:
    business_unit: Callable[[str], uuid.UUID]
    """The business unit for a user or team that names none; raises FieldProblem if ambiguous."""
    owner: Callable[[], Entry]
    """The owner for an owned record that names none; raises FieldProblem if there is none."""


def column_value(model: Any, attr: str, value: Any) -> Any:
    """The value as the model stores it: enums as their class, empty as the column's default."""
    column = model.__mapper__.columns[attr]
    if value is None:
        if column.nullable:
            return None
        default = column.default
        return default.arg if default is not None and default.is_scalar else None
    enum_class = getattr(column.type, "enum_class", None)
    if enum_class is not None and isinstance(value, str) and not isinstance(value, enum.Enum):
        return enum_class(value)
    return value


def _resolve(directory: Directory, name: str, ref: Ref, targets: tuple[str, ...]) -> Entry:
    try:
        return directory.resolve(name, ref, targets)
    except RefProblem as exc:
        raise FieldProblem(name, str(exc)) from None


def plan_change(
    spec: TypeSpec, row: ValidRow, existing: Any, directory: Directory, defaults: Defaults
) -> Change:
    """What to write for ``row``; ``existing`` is its stored object, or None for a new row."""
    entry = directory.get(spec.record_type, row.ext_id)
    assert entry is not None  # every row is registered before it is planned
    change = Change(row, entry)
    for f in spec.fields:
        if not row.has(f.name) or f.name in ("id", "owner"):
            continue
        value = row.get(f.name)
        if f.slot is not None:
            change.emails[f.slot] = value
        elif f.kind is Kind.REFS:
            change.links[f.name] = {_resolve(directory, f.name, r, f.targets).id for r in value}
        elif f.kind is Kind.PRIVILEGES:
            change.privileges = value
        elif f.kind is Kind.REF:
            assert f.attr is not None
            target = None if value is None else _resolve(directory, f.name, value, f.targets).id
            change.columns[f.attr] = target
        else:
            assert f.attr is not None
            change.columns[f.attr] = column_value(spec.model, f.attr, value)

    if spec.key in NEEDS_BUSINESS_UNIT:
        given = row.has("business_unit")
        if (given and row.get("business_unit") is None) or (not given and existing is None):
            change.columns["business_unit_id"] = defaults.business_unit(spec.label)
    if spec.owned:
        owner: Entry | None = None
        if row.get("owner") is not None:
            owner = _resolve(directory, "owner", row.get("owner"), ("user", "team"))
            if not owner.can_own:
                raise FieldProblem(
                    "owner",
                    f'owner "{row.get("owner").ext_id}" is an access team, which cannot own '
                    "records; name a user or an owner team",
                )
        elif row.has("owner") or existing is None:
            owner = defaults.owner()
        if owner is not None:
            # The business unit of an owned record is its owner's (as in Dynamics).
            change.columns["owner_id"] = owner.id
            change.columns["business_unit_id"] = owner.business_unit_id
    name = derived_name(spec.key, change.columns, existing)
    if name is not None:
        change.columns["name"] = name
    return change


def derived_name(type_key: str, columns: dict[str, Any], existing: Any) -> str | None:
    """People's display names come from their name parts (users, contacts, leads)."""
    if type_key not in ("users", "contacts", "leads"):
        return None

    def part(attr: str) -> str | None:
        if attr in columns:
            return columns[attr]
        return getattr(existing, attr, None) if existing is not None else None

    full = " ".join(p for p in (part("first_name"), part("last_name")) if p)
    if type_key == "users":
        return full or part("username") or ""
    if type_key == "leads":
        return full or part("company_name") or ""
    return full
