"""What one privilege reaches for one principal: the single source of truth.

``can`` tests a row against a ``Scope`` in Python and ``access_filter`` turns the same ``Scope``
into SQL, so the two cannot disagree about which owners, units and shares count.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from crmsync.crm.base import Depth
from crmsync.crm.roles import AccessRight
from crmsync.crm.security.principal import DEPTH_RANK, Principal

OPERATION_RIGHTS: Mapping[str, AccessRight | None] = {
    "create": None,  # a row being created has no shares yet: only depth counts
    "read": AccessRight.READ,
    "write": AccessRight.WRITE,
    "delete": AccessRight.DELETE,
    "append": AccessRight.APPEND,
    "append_to": AccessRight.APPEND_TO,
    "assign": AccessRight.ASSIGN,
    "share": AccessRight.SHARE,
}

ACTIVITY_TYPES = ("email", "appointment", "task")


@dataclass(frozen=True)
class RowKeys:
    """The facts of a row that depth is judged on."""

    record_type: str
    id: uuid.UUID | None
    """The record whose shares apply; None when the row cannot be shared (yet)."""
    owner: uuid.UUID | None
    unit: uuid.UUID | None


def keys_for(
    record_type: str,
    record_id: uuid.UUID | None,
    owner_id: uuid.UUID | None,
    business_unit_id: uuid.UUID | None,
) -> RowKeys:
    # Users, teams and units are organization records without an owner. As in Dynamics, a user's
    # basic depth reaches their own user row, and a unit "belongs" to itself.
    if record_type == "user":
        return RowKeys(record_type, record_id, record_id, business_unit_id)
    if record_type == "business_unit":
        return RowKeys(record_type, record_id, None, record_id)
    return RowKeys(record_type, record_id, owner_id, business_unit_id)


@dataclass(frozen=True)
class Scope:
    privilege: str
    everything: str | None
    """The reason when some grant reaches every row of the organization."""
    owners: Mapping[uuid.UUID, str]
    """Owner id -> reason, for rows reached through ownership."""
    units: Mapping[uuid.UUID, str]
    """Business unit id -> reason, for rows reached through their unit."""
    share_right: AccessRight | None
    """A share carrying this right grants the operation; None when shares do not count (the
    privilege is not held at all, or the operation is create)."""
    held: tuple[str, ...]
    """How the privilege is held ("depth user (own role)"), for denial messages."""

    def reach(self, keys: RowKeys) -> str | None:
        if self.everything is not None:
            return self.everything
        if keys.owner is not None and keys.owner in self.owners:
            return self.owners[keys.owner]
        if keys.unit is not None and keys.unit in self.units:
            return self.units[keys.unit]
        return None


def scope_of(principal: Principal, privilege: str, right: AccessRight | None) -> Scope:
    key = ("scope", privilege, right)
    cached = principal._cache.get(key)
    if isinstance(cached, Scope):
        return cached
    result = _build(principal, privilege, right)
    principal._cache[key] = result
    return result


def _build(p: Principal, privilege: str, right: AccessRight | None) -> Scope:
    everything: str | None = None
    owners: dict[uuid.UUID, str] = {}
    units: dict[uuid.UUID, str] = {}
    held: list[str] = []

    # The user's own roles: depth is measured from the user (owner) and the user's unit. Basic
    # depth also covers rows owned by any team of the user (Dynamics' "Basic" definition).
    depth = p.own_privileges.get(privilege)
    if depth is not None:
        held.append(f"depth {depth} (own role)")
        why = f"{privilege} at depth {depth} (own role)"
        if depth == Depth.ORGANIZATION:
            everything = f"{why}: the whole organization"
        owners.setdefault(p.user_id, f"{why}: owned by you")
        for team in p.teams.values():
            owners.setdefault(team.id, f"{why}: owned by your team {team.name}")
        _add_units(p, units, p.business_unit_id, depth, why, "your business unit")

    # Owner teams' roles: the team is the principal ("team privileges only" in Dynamics). Basic
    # depth reaches rows the team owns, not the member's own; unit depths start at the team's unit.
    for team_id, team_depth in sorted(p.team_privileges(privilege).items()):
        team = p.teams[team_id]
        unit_name = p.units.name(team.business_unit_id)
        held.append(f"depth {team_depth} via team {team.name} (business unit {unit_name})")
        why = f"{privilege} at depth {team_depth} via team {team.name}"
        if team_depth == Depth.ORGANIZATION and everything is None:
            everything = f"{why}: the whole organization"
        owners.setdefault(team.id, f"{why}: owned by the team")
        _add_units(p, units, team.business_unit_id, team_depth, why, "the team's business unit")

    return Scope(
        privilege=privilege,
        everything=everything,
        owners=owners,
        units=units,
        share_right=right if held else None,
        held=tuple(held),
    )


def _add_units(
    p: Principal,
    units: dict[uuid.UUID, str],
    home: uuid.UUID | None,
    depth: Depth,
    why: str,
    whose: str,
) -> None:
    if home is None or DEPTH_RANK[depth] < DEPTH_RANK[Depth.BUSINESS_UNIT]:
        return
    home_name = p.units.name(home)
    units.setdefault(home, f"{why}: in {whose} {home_name}")
    if DEPTH_RANK[depth] >= DEPTH_RANK[Depth.PARENT_CHILD]:
        for unit in sorted(p.units.subtree(home) - {home}):
            units.setdefault(
                unit, f"{why}: in business unit {p.units.name(unit)}, below {whose} {home_name}"
            )


def needed(p: Principal, keys: RowKeys, noun: str) -> str:
    """The own-role depth that would reach the row, said for a denial message."""
    if keys.owner == p.user_id:
        return f"needs depth user or higher for a {noun} owned by you"
    if keys.owner is not None and keys.owner in p.teams:
        return (
            f"needs depth user or higher for a {noun} owned by your team {p.teams[keys.owner].name}"
        )
    unit = p.units.name(keys.unit) if keys.unit is not None else None
    if keys.unit is not None and keys.unit == p.business_unit_id:
        depth = Depth.BUSINESS_UNIT
    elif (
        keys.unit is not None
        and p.business_unit_id is not None
        and keys.unit in p.units.subtree(p.business_unit_id)
    ):
        depth = Depth.PARENT_CHILD
    else:
        depth = Depth.ORGANIZATION
    where = f"of business unit {unit}" if unit is not None else "without a business unit"
    return f"needs depth {depth} or higher for a {noun} {where}"


def missing(p: Principal, scope: Scope, keys: RowKeys, noun: str = "record") -> str:
    text = f"missing privilege {scope.privilege} ({needed(p, keys, noun)}"
    if scope.held:
        text += "; you hold it only at " + ", ".join(scope.held)
    return text + ")"
