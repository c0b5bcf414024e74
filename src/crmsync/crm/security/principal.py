"""The principal: one user's security facts, resolved once and then decided on without the database.

Loading is a handful of queries (user, teams, privileges, business units, field security), never one
per privilege or per row. A ``Principal`` is a snapshot: load it once per unit of work (a sync run,
a request) and let it go, so a role change takes effect at the next unit of work.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import sqlalchemy as sa
from sqlalchemy.orm import Session

from crmsync.crm.base import Depth
from crmsync.crm.records import BusinessUnit, Team, TeamMembership, TeamType, User
from crmsync.crm.roles import (
    FieldPermission,
    FieldProfileMember,
    RolePrivilege,
    SecuredField,
    TeamRole,
    UserRole,
)
from crmsync.errors import NotFound

DEPTH_RANK: Mapping[Depth, int] = MappingProxyType(
    {Depth.USER: 0, Depth.BUSINESS_UNIT: 1, Depth.PARENT_CHILD: 2, Depth.ORGANIZATION: 3}
)


def deepest(depths: Iterable[Depth]) -> Depth | None:
    return max(depths, key=DEPTH_RANK.__getitem__, default=None)


@dataclass(frozen=True, eq=False)
class UnitTree:
    """The business unit tree: parents and names, with descendants computed on demand."""

    parents: Mapping[uuid.UUID, uuid.UUID | None]
    names: Mapping[uuid.UUID, str]
    _subtrees: dict[uuid.UUID, frozenset[uuid.UUID]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[uuid.UUID, uuid.UUID | None, str]]) -> UnitTree:
        parents: dict[uuid.UUID, uuid.UUID | None] = {}
        names: dict[uuid.UUID, str] = {}
        for unit_id, parent_id, name in rows:
            parents[unit_id] = parent_id
            names[unit_id] = name
        return cls(MappingProxyType(parents), MappingProxyType(names))

    def subtree(self, unit_id: uuid.UUID) -> frozenset[uuid.UUID]:
        """The unit and every unit below it (children, grandchildren...)."""
        cached = self._subtrees.get(unit_id)
        if cached is not None:
            return cached
        children: dict[uuid.UUID, list[uuid.UUID]] = {}
        for child, parent in self.parents.items():
            if parent is not None:
                children.setdefault(parent, []).append(child)
        found = {unit_id}
        todo = [unit_id]
        while todo:  # the visited set also guards against a (corrupt) cycle
            for child in children.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        result = frozenset(found)
        self._subtrees[unit_id] = result
        return result

    def name(self, unit_id: uuid.UUID | None) -> str:
        if unit_id is None:
            return "(none)"
        return self.names.get(unit_id, str(unit_id))


@dataclass(frozen=True)
class TeamInfo:
    id: uuid.UUID
    name: str
    business_unit_id: uuid.UUID | None
    is_owner_team: bool
    privileges: Mapping[str, Depth]
    """Deepest depth per privilege over the team's roles; always empty for an access team, whose
    roles are ignored (Dynamics gives access teams no roles: they only receive shares)."""


@dataclass(frozen=True)
class FieldGrant:
    can_read: bool = False
    can_create: bool = False
    can_update: bool = False

    def __or__(self, other: FieldGrant) -> FieldGrant:
        return FieldGrant(
            self.can_read or other.can_read,
            self.can_create or other.can_create,
            self.can_update or other.can_update,
        )


@dataclass(frozen=True, eq=False)
class Principal:
    """A user's resolved security view. Treat as read-only; it caches derived scopes."""

    user_id: uuid.UUID
    name: str
    business_unit_id: uuid.UUID | None
    is_disabled: bool
    teams: Mapping[uuid.UUID, TeamInfo]
    own_privileges: Mapping[str, Depth]
    """Deepest depth per privilege over the user's own roles."""
    units: UnitTree
    field_profile_ids: frozenset[uuid.UUID] = frozenset()
    secured_fields: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """record type -> secured field names (organization-wide, not per user)."""
    field_grants: Mapping[tuple[str, str], FieldGrant] = field(default_factory=dict)
    """(record type, field) -> what the user's and their teams' profiles grant, merged."""
    _cache: dict[object, object] = field(default_factory=dict, repr=False)

    @property
    def team_ids(self) -> frozenset[uuid.UUID]:
        return frozenset(self.teams)

    @property
    def team_units(self) -> Mapping[uuid.UUID, uuid.UUID | None]:
        return {t.id: t.business_unit_id for t in self.teams.values()}

    @property
    def holder_ids(self) -> frozenset[uuid.UUID]:
        """Who a share may name for it to reach this user: the user and every team of theirs."""
        return frozenset({self.user_id, *self.teams})

    def team_privileges(self, privilege: str) -> dict[uuid.UUID, Depth]:
        """Team id -> depth, for each owner team whose roles grant ``privilege``."""
        return {
            t.id: t.privileges[privilege] for t in self.teams.values() if privilege in t.privileges
        }


def load_principal(session: Session, user_id: uuid.UUID) -> Principal:
    """Resolve a user's roles, teams, business units and field profiles in six queries."""
    user = session.execute(
        sa.select(User.id, User.username, User.business_unit_id, User.is_disabled).where(
            User.id == user_id
        )
    ).one_or_none()
    if user is None:
        raise NotFound(f"no user with id {user_id}")

    team_rows = session.execute(
        sa.select(Team.id, Team.name, Team.business_unit_id, Team.team_type)
        .join(TeamMembership, TeamMembership.team_id == Team.id)
        .where(TeamMembership.user_id == user_id)
    ).all()
    owner_teams = {r.id for r in team_rows if r.team_type == TeamType.OWNER}

    own: dict[str, Depth] = {}
    by_team: dict[uuid.UUID, dict[str, Depth]] = {}
    for team_id, privilege, depth in _privilege_rows(session, user_id):
        if team_id is None:
            target = own
        elif team_id in owner_teams:
            target = by_team.setdefault(team_id, {})
        else:
            continue  # a role on an access team: ignored, see TeamInfo.privileges
        target[privilege] = deepest([depth, target.get(privilege, depth)]) or depth

    teams = {
        r.id: TeamInfo(
            r.id,
            r.name,
            r.business_unit_id,
            r.id in owner_teams,
            MappingProxyType(by_team.get(r.id, {})),
        )
        for r in team_rows
    }
    units = UnitTree.from_rows(
        (r.id, r.parent_id, r.name)
        for r in session.execute(
            sa.select(BusinessUnit.id, BusinessUnit.parent_id, BusinessUnit.name)
        )
    )
    secured: dict[str, set[str]] = {}
    for record_type, name in session.execute(
        sa.select(SecuredField.record_type, SecuredField.field)
    ):
        secured.setdefault(record_type, set()).add(name)
    profiles, grants = _field_grants(session, {user_id, *teams})

    return Principal(
        user_id=user.id,
        name=user.username,
        business_unit_id=user.business_unit_id,
        is_disabled=user.is_disabled,
        teams=MappingProxyType(teams),
        own_privileges=MappingProxyType(own),
        units=units,
        field_profile_ids=profiles,
        secured_fields=MappingProxyType({k: frozenset(v) for k, v in secured.items()}),
        field_grants=MappingProxyType(grants),
    )


def _privilege_rows(
    session: Session, user_id: uuid.UUID
) -> list[tuple[uuid.UUID | None, str, Depth]]:
    """(team id or None for the user's own roles, privilege, depth), in one round trip."""
    own = (
        sa.select(
            sa.cast(sa.null(), sa.Uuid).label("team_id"),
            RolePrivilege.privilege,
            RolePrivilege.depth,
        )
        .select_from(RolePrivilege)
        .join(UserRole, UserRole.role_id == RolePrivilege.role_id)
        .where(UserRole.user_id == user_id)
    )
    via_team = (
        sa.select(TeamRole.team_id, RolePrivilege.privilege, RolePrivilege.depth)
        .select_from(RolePrivilege)
        .join(TeamRole, TeamRole.role_id == RolePrivilege.role_id)
        .join(TeamMembership, TeamMembership.team_id == TeamRole.team_id)
        .where(TeamMembership.user_id == user_id)
    )
    rows = session.execute(sa.union_all(own, via_team)).all()
    # A UNION's result type comes from its first SELECT; make sure depths are Depth members.
    return [(team_id, privilege, Depth(depth)) for team_id, privilege, depth in rows]


def _field_grants(
    session: Session, holder_ids: set[uuid.UUID]
) -> tuple[frozenset[uuid.UUID], dict[tuple[str, str], FieldGrant]]:
    rows = session.execute(
        sa.select(
            FieldProfileMember.profile_id,
            FieldPermission.record_type,
            FieldPermission.field,
            FieldPermission.can_read,
            FieldPermission.can_create,
            FieldPermission.can_update,
        )
        .outerjoin(FieldPermission, FieldPermission.profile_id == FieldProfileMember.profile_id)
        .where(FieldProfileMember.principal_id.in_(holder_ids))
    ).all()
    grants: dict[tuple[str, str], FieldGrant] = {}
    for r in rows:
        if r.record_type is None:
            continue  # a profile without permissions (outer join)
        key = (r.record_type, r.field)
        grants[key] = grants.get(key, FieldGrant()) | FieldGrant(
            bool(r.can_read), bool(r.can_create), bool(r.can_update)
        )
    return frozenset(r.profile_id for r in rows), grants
