"""Field security: secured fields are readable, creatable and updatable only through a profile.

A field listed in ``secured_field`` is open to a user only as far as a field security profile held
by the user or one of their teams grants it (profiles merge: any grant wins). Other fields follow
record access, which these functions do not check: call ``can`` for the record first.

Sync uses the two directions (reference §7, "a field the user cannot update is dropped during
sync"): ``outgoing_values`` never writes an unreadable secured field to the mailbox side, and
``incoming_change`` keeps only what the user may set, returning every dropped field with a reason
so that nothing is overwritten or lost silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from crmsync.crm.security.principal import FieldGrant, Principal

Action = Literal["read", "create", "update"]


@dataclass(frozen=True)
class DroppedField:
    field: str
    reason: str


@dataclass(frozen=True)
class FieldAccess:
    """What one principal may do with the fields of one record type."""

    record_type: str
    user: str
    secured: frozenset[str]
    grants: Mapping[str, FieldGrant]
    disabled: bool = False

    def allows(self, field: str, action: Action) -> bool:
        if self.disabled:
            return False
        if field not in self.secured:
            return True
        grant = self.grants.get(field, FieldGrant())
        return {"read": grant.can_read, "create": grant.can_create, "update": grant.can_update}[
            action
        ]

    def can_read(self, field: str) -> bool:
        return self.allows(field, "read")

    def can_create(self, field: str) -> bool:
        return self.allows(field, "create")

    def can_update(self, field: str) -> bool:
        return self.allows(field, "update")

    def _denied(self, action: Action) -> frozenset[str]:
        return frozenset(f for f in self.secured if not self.allows(f, action))

    @property
    def unreadable(self) -> frozenset[str]:
        return self._denied("read")

    @property
    def uncreatable(self) -> frozenset[str]:
        return self._denied("create")

    @property
    def unupdatable(self) -> frozenset[str]:
        return self._denied("update")

    def why_not(self, field: str, action: Action) -> str:
        if self.disabled:
            return f"user {self.user} is disabled and may do nothing"
        return (
            f"{self.record_type}.{field} is a secured field and no field security profile of "
            f"user {self.user} or their teams grants {action}"
        )


def field_access(principal: Principal, record_type: str) -> FieldAccess:
    secured = principal.secured_fields.get(record_type, frozenset())
    grants = {
        f: g for (rt, f), g in principal.field_grants.items() if rt == record_type and f in secured
    }
    return FieldAccess(record_type, principal.name, secured, grants, principal.is_disabled)


def outgoing_values(
    principal: Principal, record_type: str, values: dict[str, Any]
) -> dict[str, Any]:
    """The values that may be written to the mailbox side: unreadable secured fields are left out
    entirely (not blanked), so the mailbox never holds them."""
    access = field_access(principal, record_type)
    return {k: v for k, v in values.items() if access.can_read(k)}


def incoming_change(
    principal: Principal, record_type: str, changes: dict[str, Any], *, creating: bool
) -> tuple[dict[str, Any], list[DroppedField]]:
    """Split a change coming from the mailbox into what the user may set (create or update) and
    what is dropped, each with its reason for the caller to record."""
    access = field_access(principal, record_type)
    action: Action = "create" if creating else "update"
    allowed: dict[str, Any] = {}
    dropped: list[DroppedField] = []
    for name, value in changes.items():
        if access.allows(name, action):
            allowed[name] = value
        else:
            dropped.append(DroppedField(name, access.why_not(name, action)))
    return allowed, dropped
