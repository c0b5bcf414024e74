"""``access_filter``: the rows ``can`` allows, as one SQL condition.

Built from the same ``Scope`` as ``can``. Each reach becomes an indexable test:

    record.owner_id          = ANY(:owners)                 ix_record_owner_id
    record.business_unit_id  = ANY(:units)                  ix_record_business_unit_id
    record.id = ANY(ARRAY(SELECT record_id FROM record_share
                          WHERE principal_id = ANY(:holders) AND rights & :right <> 0))
                                                            ix_record_share_principal_id, pk

The share test is an ``= ANY(ARRAY(subquery))`` (evaluated once, as an InitPlan) rather than
``IN (subquery)``: PostgreSQL cannot combine a hashed subplan with the other tests in a BitmapOr,
but it can an array, so a narrow scope is answered from the indexes instead of a scan.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from crmsync.crm.activities import ActivityParty, Attachment
from crmsync.crm.mailboxes import Mailbox
from crmsync.crm.privileges import RECORD_OPERATIONS, SECURED_RECORD_TYPES
from crmsync.crm.records import Record
from crmsync.crm.roles import RecordShare
from crmsync.crm.security.principal import Principal
from crmsync.crm.security.scope import ACTIVITY_TYPES, OPERATION_RIGHTS, Scope, scope_of

_CHILD_TYPES = {"attachment": Attachment.activity_id, "activity_party": ActivityParty.activity_id}


def access_filter(principal: Principal, op: str, record_type: str) -> ColumnElement[bool]:
    """A WHERE condition selecting exactly the rows of ``record_type`` that ``can`` allows.

    ``record_type`` is a record type (``contact``; the condition is on the ``record`` table, so use
    it with ``select(Contact)`` or ``select(Record)``), ``activity`` (any email, appointment or
    task, each by its own privileges), ``attachment`` or ``activity_party`` (on those tables: they
    follow their activity), or ``mailbox`` (on the ``mailbox`` table).
    """
    if op not in RECORD_OPERATIONS:
        raise ValueError(f"unknown operation {op!r}; known: {', '.join(RECORD_OPERATIONS)}")
    if principal.is_disabled:
        return sa.false()
    record = Record.__table__
    if record_type in _CHILD_TYPES:
        activity = record.alias("security_activity")
        return sa.exists().where(
            activity.c.id == _CHILD_TYPES[record_type], _activities(principal, op, activity)
        )
    if record_type == "mailbox":
        return _mailboxes(principal, op)
    if record_type == "activity":
        return _activities(principal, op, record)
    return _typed(principal, op, record_type, record)


def _activities(principal: Principal, op: str, record: sa.FromClause) -> ColumnElement[bool]:
    return sa.or_(*(_typed(principal, op, t, record) for t in ACTIVITY_TYPES))


def _typed(
    principal: Principal, op: str, record_type: str, record: sa.FromClause
) -> ColumnElement[bool]:
    if record_type not in SECURED_RECORD_TYPES:
        return sa.false()
    scope = scope_of(principal, f"{op}:{record_type}", OPERATION_RIGHTS[op])
    c = record.c
    # The owner and unit expressions mirror scope.keys_for: a user row is owned by the user
    # themselves, a business unit row belongs to itself.
    owner = (
        None if record_type == "business_unit" else c.id if record_type == "user" else c.owner_id
    )
    unit = c.id if record_type == "business_unit" else c.business_unit_id
    return sa.and_(
        c.record_type == record_type,
        _reach(principal, scope, owner=owner, unit=unit, shared_id=c.id),
    )


def _mailboxes(principal: Principal, op: str) -> ColumnElement[bool]:
    owner = Record.__table__.alias("security_mailbox_owner")
    scope = scope_of(principal, f"{op}:mailbox", OPERATION_RIGHTS[op])
    owner_key = sa.case((owner.c.record_type == "user", owner.c.id), else_=owner.c.owner_id)
    return sa.exists().where(
        owner.c.id == Mailbox.owner_id,
        _reach(principal, scope, owner=owner_key, unit=owner.c.business_unit_id, shared_id=None),
    )


def _reach(
    principal: Principal,
    scope: Scope,
    *,
    owner: ColumnElement[object] | None,
    unit: ColumnElement[object],
    shared_id: ColumnElement[object] | None,
) -> ColumnElement[bool]:
    if scope.everything is not None:
        return sa.true()
    tests: list[ColumnElement[bool]] = []
    if owner is not None and scope.owners:
        tests.append(owner.in_(sorted(scope.owners)))
    if scope.units:
        tests.append(unit.in_(sorted(scope.units)))
    if shared_id is not None and scope.share_right is not None:
        shared = sa.select(RecordShare.record_id).where(
            RecordShare.principal_id.in_(sorted(principal.holder_ids)),
            RecordShare.rights.op("&")(int(scope.share_right)) != 0,
        )
        tests.append(shared_id == sa.any_(sa.func.array(shared.scalar_subquery())))
    return sa.or_(*tests) if tests else sa.false()
