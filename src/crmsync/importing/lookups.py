"""Reading what the database already holds, in bulk: one query per few thousand ids, not per row."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, lazyload, selectinload

from crmsync.crm.records import EmailAddress, Record, Team, TeamMembership, User
from crmsync.crm.roles import RolePrivilege, SecurityRole, TeamRole, UserRole
from crmsync.importing.references import Directory, Entry
from crmsync.importing.rows import ValidRow
from crmsync.importing.schemas import TypeSpec
from crmsync.importing.values import Ref

LOOKUP_CHUNK = 5000


@dataclass(frozen=True)
class Link:
    """An association table that a list field of a row (roles, members) maps to."""

    table: sa.Table
    owner: str
    other: str


LINKS: dict[tuple[str, str], Link] = {
    ("users", "roles"): Link(UserRole.__table__, "user_id", "role_id"),
    ("teams", "roles"): Link(TeamRole.__table__, "team_id", "role_id"),
    ("teams", "members"): Link(TeamMembership.__table__, "team_id", "user_id"),
}


@dataclass(frozen=True)
class Holder:
    """A stored record that holds a unique name."""

    id: uuid.UUID
    external_id: str | None


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def fetch_existing(session: Session, spec: TypeSpec, ext_ids: list[str]) -> dict[str, Any]:
    """The stored objects of this type with these external ids, ready for comparing."""
    model: Any = spec.model
    # Only what the comparison needs: no owner joins, no team member lists.
    options: list[Any] = [lazyload("*")]
    if issubclass(model, Record):
        options.append(selectinload(model.email_addresses))
    if model is SecurityRole:
        options.append(selectinload(SecurityRole.privileges))
    found: dict[str, Any] = {}
    for chunk in chunks(ext_ids, LOOKUP_CHUNK):
        query = sa.select(model).where(model.external_id.in_(chunk)).options(*options)
        for obj in session.scalars(query):
            found[obj.external_id] = obj
    return found


def fetch_references(
    session: Session, directory: Directory, spec: TypeSpec, rows: Iterable[ValidRow]
) -> None:
    """Add to the directory the stored records that the rows name and it does not know yet."""
    wanted: list[tuple[Ref, tuple[str, ...]]] = []
    for f in spec.fields:
        if f.targets:
            for row in rows:
                value = row.get(f.name)
                for ref in value if isinstance(value, list) else [value]:
                    if ref is not None:
                        wanted.append((ref, f.targets))
    for record_type, ids in directory.unknown(wanted).items():
        for chunk in chunks(sorted(ids), LOOKUP_CHUNK):
            for found in session.execute(_stored_query(record_type, chunk)):
                entry = Entry(found.id, record_type, found.business_unit_id, can_own=found.can_own)
                directory.add(record_type, found.external_id, entry)


def _stored_query(record_type: str, ext_ids: Sequence[str]) -> sa.Select[Any]:
    """id, external_id, business_unit_id and can_own (false only for access teams)."""
    if record_type == "role":
        return sa.select(
            SecurityRole.id,
            SecurityRole.external_id,
            SecurityRole.business_unit_id,
            sa.true().label("can_own"),
        ).where(SecurityRole.external_id.in_(ext_ids))
    if record_type == "team":
        return sa.select(
            Team.id,
            Team.external_id,
            Team.business_unit_id,
            (Team.team_type == "owner").label("can_own"),
        ).where(Team.external_id.in_(ext_ids))
    return sa.select(
        Record.id,
        Record.external_id,
        Record.business_unit_id,
        sa.true().label("can_own"),
    ).where(Record.record_type == record_type, Record.external_id.in_(ext_ids))


def fetch_links(
    session: Session, link: Link, owner_ids: list[uuid.UUID]
) -> dict[uuid.UUID, set[uuid.UUID]]:
    """Current rows of an association table for these owners: owner id -> linked ids."""
    current: dict[uuid.UUID, set[uuid.UUID]] = {}
    owner, other = link.table.c[link.owner], link.table.c[link.other]
    for chunk in chunks(owner_ids, LOOKUP_CHUNK):
        for a, b in session.execute(sa.select(owner, other).where(owner.in_(chunk))):
            current.setdefault(a, set()).add(b)
    return current


def stored_usernames(session: Session, names: Iterable[str]) -> dict[str, Holder]:
    found: dict[str, Holder] = {}
    for chunk in chunks(sorted(set(names)), LOOKUP_CHUNK):
        query = sa.select(User.id, User.username, User.external_id).where(User.username.in_(chunk))
        for user in session.execute(query):
            found[user.username] = Holder(user.id, user.external_id)
    return found


def stored_role_names(
    session: Session, names: Iterable[str]
) -> dict[tuple[uuid.UUID | None, str], Holder]:
    """(business unit id, name) -> the stored role with that name in that unit."""
    found: dict[tuple[uuid.UUID | None, str], Holder] = {}
    for chunk in chunks(sorted(set(names)), LOOKUP_CHUNK):
        query = sa.select(
            SecurityRole.id,
            SecurityRole.name,
            SecurityRole.business_unit_id,
            SecurityRole.external_id,
        ).where(SecurityRole.name.in_(chunk))
        for role in session.execute(query):
            found[(role.business_unit_id, role.name)] = Holder(role.id, role.external_id)
    return found


# --- planner statistics ---------------------------------------------------------------------


def tables_of(spec: TypeSpec) -> list[sa.Table]:
    """Every table that rows of this type write to."""
    tables = list(spec.model.__mapper__.tables)  # type: ignore[attr-defined]
    if issubclass(spec.model, Record):
        tables.append(EmailAddress.__table__)
    if spec.model is SecurityRole:
        tables.append(RolePrivilege.__table__)
    tables += [link.table for (key, _), link in LINKS.items() if key == spec.key]
    return tables


def estimated_rows(session: Session, spec: TypeSpec) -> float:
    """The planner's idea of the smallest table's size (negative: never analyzed)."""
    names = [t.name for t in tables_of(spec)]
    query = sa.text("SELECT min(reltuples) FROM pg_class WHERE relname IN :names").bindparams(
        sa.bindparam("names", expanding=True)
    )
    return float(session.scalar(query, {"names": names}) or 0)


def refresh_statistics(session: Session, spec: TypeSpec) -> None:
    """ANALYZE the tables this type fills (the caller does it once they hold the first batch).

    On a new or small database the planner's statistics say the tables are (nearly) empty, so
    the foreign-key checks PostgreSQL runs for every inserted row get cached sequential-scan
    plans that grow slower with every batch (10,000 contacts: 7.5 s instead of 4 s). ANALYZE
    inside our transaction counts our own new rows and makes those plans be made again.
    """
    names = ", ".join(f'"{t.name}"' for t in tables_of(spec))
    session.execute(sa.text(f"ANALYZE {names}"))
