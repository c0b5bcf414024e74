"""One-row decisions: ``can(principal, op, row)`` and the errors raised from them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session, object_session

from crmsync.crm.activities import ActivityParty, Attachment
from crmsync.crm.mailboxes import Mailbox
from crmsync.crm.privileges import RECORD_OPERATIONS, SECURED_RECORD_TYPES
from crmsync.crm.records import Record
from crmsync.crm.roles import AccessRight, RecordShare
from crmsync.crm.security.principal import Principal
from crmsync.crm.security.scope import (
    OPERATION_RIGHTS,
    RowKeys,
    Scope,
    keys_for,
    missing,
    scope_of,
)
from crmsync.errors import CrmsyncError


class AccessDenied(CrmsyncError):
    """The principal may not do what was asked; the message names the missing privilege."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


@dataclass(frozen=True)
class Decision:
    """Truthy when allowed; ``reason`` says which privilege and depth allowed it, or what is
    missing."""

    allowed: bool
    reason: str
    privilege: str | None = None

    def __bool__(self) -> bool:
        return self.allowed

    def or_raise(self) -> None:
        if not self.allowed:
            raise AccessDenied(self)


@dataclass(frozen=True)
class RowRef:
    """A row given by its facts rather than as a loaded object. ``shares`` maps each principal
    the record is shared with to the rights granted; ``load`` fills it from the database."""

    id: uuid.UUID | None
    record_type: str
    owner_id: uuid.UUID | None
    business_unit_id: uuid.UUID | None
    shares: Mapping[uuid.UUID, int] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session, record_id: uuid.UUID) -> RowRef:
        row = session.execute(
            sa.select(Record.record_type, Record.owner_id, Record.business_unit_id).where(
                Record.id == record_id
            )
        ).one()
        shares = session.execute(
            sa.select(RecordShare.principal_id, RecordShare.rights).where(
                RecordShare.record_id == record_id
            )
        )
        return cls(
            record_id,
            row.record_type,
            row.owner_id,
            row.business_unit_id,
            {pid: rights for pid, rights in shares},
        )


Row = Record | Attachment | ActivityParty | Mailbox | RowRef
ShareLookup = Callable[[frozenset[uuid.UUID]], Mapping[uuid.UUID, int]]


def disabled(principal: Principal) -> Decision:
    return Decision(False, f"user {principal.name} is disabled and may do nothing")


def can(principal: Principal, op: str, row: Row, *, session: Session | None = None) -> Decision:
    """May ``principal`` perform ``op`` on ``row``? For ``create``, pass the row as it would be
    stored (owner and business unit set). Shares are read from ``session``, or from the row's own
    session when it is a loaded object, and only when ownership and depth do not already decide."""
    if op not in RECORD_OPERATIONS:
        raise ValueError(f"unknown operation {op!r}; known: {', '.join(RECORD_OPERATIONS)}")
    keys, shares = _facts(row, session)
    return decide(principal, op, keys, shares)


def require_can(principal: Principal, op: str, row: Row, *, session: Session | None = None) -> None:
    can(principal, op, row, session=session).or_raise()


def decide(
    principal: Principal, op: str, keys: RowKeys, shares: ShareLookup, noun: str = "record"
) -> Decision:
    privilege = f"{op}:{keys.record_type}"
    if principal.is_disabled:
        return disabled(principal)
    if keys.record_type not in SECURED_RECORD_TYPES:
        return Decision(
            False, f"record type {keys.record_type} has no privileges: nobody may {op} it"
        )
    right = OPERATION_RIGHTS[op]
    scope = scope_of(principal, privilege, right)
    reason = scope.reach(keys)
    if reason is not None:
        return Decision(True, reason, privilege)
    if right is not None and keys.id is not None:
        shared = _share_reason(principal, shares(principal.holder_ids), right)
        if shared is not None:
            return _shared(principal, scope, shared, op, keys)
    return Decision(False, missing(principal, scope, keys, noun), privilege)


def _shared(principal: Principal, scope: Scope, shared: str, op: str, keys: RowKeys) -> Decision:
    # Dynamics: a share grants access only to a recipient who holds the privilege at some depth.
    if scope.share_right is not None:
        return Decision(
            True,
            f"{shared} granting {op}; {scope.privilege} held at {', '.join(scope.held)}",
            scope.privilege,
        )
    return Decision(
        False,
        f"missing privilege {scope.privilege} (the {keys.record_type} is {shared} granting {op}, "
        "but a share only works with the privilege at depth user or higher)",
        scope.privilege,
    )


def _share_reason(
    principal: Principal, granted: Mapping[uuid.UUID, int], right: AccessRight
) -> str | None:
    holders = sorted(h for h, rights in granted.items() if rights & right)
    if not holders:
        return None
    if principal.user_id in holders:
        return "shared with you"
    names = sorted(principal.teams[h].name for h in holders if h in principal.teams)
    return "shared with your team " + ", ".join(names)


def _facts(row: Row, session: Session | None) -> tuple[RowKeys, ShareLookup]:
    if isinstance(row, RowRef):
        keys = keys_for(row.record_type, row.id, row.owner_id, row.business_unit_id)
        return keys, lambda holders: {h: r for h, r in row.shares.items() if h in holders}
    if isinstance(row, Attachment | ActivityParty):
        # An attachment or party has no security of its own: it follows its activity.
        return _facts(row.activity, session)
    if isinstance(row, Mailbox):
        return _mailbox_keys(row), lambda holders: {}
    keys = keys_for(row.record_type, row.id, row.owner_id, row.business_unit_id)
    return keys, _record_shares(row, session)


def _mailbox_keys(mailbox: Mailbox) -> RowKeys:
    # A mailbox is not a record (it cannot be shared). A user's mailbox is owned by the user; a
    # queue's mailbox by whoever owns the queue. Its unit is its owner record's.
    owner = mailbox.owner
    owner_key = owner.id if owner.record_type == "user" else owner.owner_id
    return RowKeys("mailbox", None, owner_key, owner.business_unit_id)


def _record_shares(record: Record, session: Session | None) -> ShareLookup:
    def lookup(holders: frozenset[uuid.UUID]) -> Mapping[uuid.UUID, int]:
        found = session or object_session(record)
        if found is None:
            if sa.inspect(record).detached:
                raise ValueError("record is detached: pass session= so its shares can be read")
            return {}  # a new record has no shares yet
        rows = found.execute(
            sa.select(RecordShare.principal_id, RecordShare.rights).where(
                RecordShare.record_id == record.id, RecordShare.principal_id.in_(holders)
            )
        )
        return {principal_id: rights for principal_id, rights in rows}

    return lookup


def require(principal: Principal, privilege: str) -> None:
    """Raise ``AccessDenied`` unless the principal holds ``privilege`` at any depth."""
    holds(principal, privilege).or_raise()


def holds(principal: Principal, privilege: str) -> Decision:
    if principal.is_disabled:
        return disabled(principal)
    scope = scope_of(principal, privilege, AccessRight.READ)
    if scope.held:
        return Decision(True, f"{privilege} held at {', '.join(scope.held)}", privilege)
    return Decision(False, f"missing privilege {privilege}", privilege)
