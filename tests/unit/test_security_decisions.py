"""Pure decisions on hand-built principals: depths, team semantics, shares, messages, SQL shape."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from crmsync.crm.base import Depth
from crmsync.crm.records import User
from crmsync.crm.roles import AccessRight
from crmsync.crm.security import (
    AccessDenied,
    Decision,
    Principal,
    RowRef,
    access_filter,
    can,
    may_manage_org_settings,
    may_manage_user_sync_filters,
    may_send_as,
    may_sync_to_mailbox,
    require,
    require_can,
)
from crmsync.crm.security.principal import TeamInfo, UnitTree
from crmsync.errors import CrmsyncError

ROOT, SALES, NORTH, SERVICE = (uuid.uuid4() for _ in range(4))
UNITS = UnitTree.from_rows(
    [
        (ROOT, None, "Pohjola"),
        (SALES, ROOT, "Sales"),
        (NORTH, SALES, "North"),
        (SERVICE, ROOT, "Service"),
    ]
)
ME, OTHER, TEAM, ACCESS = (uuid.uuid4() for _ in range(4))


def make(
    own: dict[str, Depth] | None = None,
    team: dict[str, Depth] | None = None,
    *,
    unit: uuid.UUID = SALES,
    team_unit: uuid.UUID = SERVICE,
    disabled: bool = False,
) -> Principal:
    teams = {
        TEAM: TeamInfo(TEAM, "Support", team_unit, True, team or {}),
        ACCESS: TeamInfo(ACCESS, "Deal room", SERVICE, False, {}),
    }
    return Principal(ME, "alice", unit, disabled, teams, own or {}, UNITS)


def row(owner: uuid.UUID | None, unit: uuid.UUID | None, **shares: int) -> RowRef:
    holders = {"me": ME, "team": TEAM, "access": ACCESS}
    return RowRef(uuid.uuid4(), "contact", owner, unit, {holders[k]: v for k, v in shares.items()})


def test_unit_tree_subtree_and_names() -> None:
    assert UNITS.subtree(ROOT) == {ROOT, SALES, NORTH, SERVICE}
    assert UNITS.subtree(SALES) == {SALES, NORTH}
    assert UNITS.subtree(NORTH) == {NORTH}
    assert UNITS.name(SERVICE) == "Service"
    assert UNITS.name(None) == "(none)"


def test_unit_tree_survives_a_cycle() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    tree = UnitTree.from_rows([(a, b, "A"), (b, a, "B")])
    assert tree.subtree(a) == {a, b}


@pytest.mark.parametrize(
    ("depth", "reached"),
    [
        (Depth.USER, {"mine", "team"}),
        (Depth.BUSINESS_UNIT, {"mine", "team", "sales"}),
        (Depth.PARENT_CHILD, {"mine", "team", "sales", "north"}),
        (Depth.ORGANIZATION, {"mine", "team", "sales", "north", "root", "service"}),
    ],
)
def test_own_role_depths(depth: Depth, reached: set[str]) -> None:
    p = make({"read:contact": depth})
    rows = {
        "mine": row(ME, SALES),
        "team": row(TEAM, SERVICE),
        "sales": row(OTHER, SALES),
        "north": row(OTHER, NORTH),
        "root": row(OTHER, ROOT),
        "service": row(OTHER, SERVICE),
    }
    assert {k for k, r in rows.items() if can(p, "read", r)} == reached


@pytest.mark.parametrize(
    ("depth", "reached"),
    [
        (Depth.USER, {"team"}),
        (Depth.BUSINESS_UNIT, {"team", "service"}),
        (Depth.PARENT_CHILD, {"team", "service"}),
        (Depth.ORGANIZATION, {"mine", "team", "sales", "north", "root", "service"}),
    ],
)
def test_team_role_depths_start_from_the_team(depth: Depth, reached: set[str]) -> None:
    """The team (in Service) is the principal: the member's own rows in Sales are not reached."""
    p = make(team={"read:contact": depth})
    rows = {
        "mine": row(ME, SALES),
        "team": row(TEAM, SERVICE),
        "sales": row(OTHER, SALES),
        "north": row(OTHER, NORTH),
        "root": row(OTHER, ROOT),
        "service": row(OTHER, SERVICE),
    }
    assert {k for k, r in rows.items() if can(p, "read", r)} == reached


def test_team_parent_child_reaches_the_team_units_children() -> None:
    p = make(team={"read:contact": Depth.PARENT_CHILD}, team_unit=SALES, unit=SERVICE)
    assert can(p, "read", row(OTHER, NORTH))
    assert not can(p, "read", row(OTHER, SERVICE))


def test_denial_names_privilege_depth_and_unit() -> None:
    decision = can(make(), "read", row(OTHER, SALES))
    assert not decision
    assert decision.reason == (
        "missing privilege read:contact (needs depth business_unit or higher for a record of "
        "business unit Sales)"
    )
    shallow = can(make({"read:contact": Depth.USER}), "read", row(OTHER, SERVICE))
    assert shallow.reason == (
        "missing privilege read:contact (needs depth organization or higher for a record of "
        "business unit Service; you hold it only at depth user (own role))"
    )
    via_team = can(make(team={"read:contact": Depth.BUSINESS_UNIT}), "read", row(ME, SALES))
    assert via_team.reason == (
        "missing privilege read:contact (needs depth user or higher for a record owned by you; "
        "you hold it only at depth business_unit via team Support (business unit Service))"
    )


def test_allow_reason_names_privilege_and_depth() -> None:
    p = make({"write:contact": Depth.BUSINESS_UNIT})
    assert can(p, "write", row(OTHER, SALES)).reason == (
        "write:contact at depth business_unit (own role): in your business unit Sales"
    )
    assert can(p, "write", row(TEAM, SERVICE)).reason == (
        "write:contact at depth business_unit (own role): owned by your team Support"
    )


def test_share_grants_only_its_rights_and_only_with_the_privilege() -> None:
    p = make({"read:contact": Depth.USER, "write:contact": Depth.USER})
    shared = row(OTHER, SERVICE, me=int(AccessRight.READ), access=int(AccessRight.WRITE))
    assert can(p, "read", shared).reason.startswith("shared with you granting read")
    assert can(p, "write", shared).reason.startswith(
        "shared with your team Deal room granting write"
    )
    assert not can(p, "delete", shared)
    bare = can(make(), "read", shared)
    assert not bare
    assert bare.reason == (
        "missing privilege read:contact (the contact is shared with you granting read, but a share "
        "only works with the privilege at depth user or higher)"
    )


def test_share_never_grants_create() -> None:
    p = make({"create:contact": Depth.USER})
    assert not can(p, "create", row(OTHER, SERVICE, me=127))
    assert can(p, "create", row(ME, SALES))


def test_disabled_user_may_do_nothing() -> None:
    p = make(
        {"read:contact": Depth.ORGANIZATION, "sync_to_mailbox": Depth.ORGANIZATION}, disabled=True
    )
    decision = can(p, "read", row(ME, SALES))
    assert not decision
    assert decision.reason == "user alice is disabled and may do nothing"
    assert not may_sync_to_mailbox(p)
    assert str(access_filter(p, "read", "contact")) == "false"


def test_types_without_privileges_are_denied() -> None:
    p = make({"read:contact": Depth.ORGANIZATION})
    activity = RowRef(uuid.uuid4(), "activity", ME, SALES)
    assert not can(p, "read", activity)
    with pytest.raises(ValueError, match="unknown operation"):
        can(p, "undelete", row(ME, SALES))


def test_decision_is_truthy_and_raises_access_denied() -> None:
    assert Decision(True, "ok")
    assert not Decision(False, "no")
    with pytest.raises(AccessDenied, match="missing privilege read:contact") as caught:
        require_can(make(), "read", row(OTHER, SALES))
    assert isinstance(caught.value, CrmsyncError)
    assert not caught.value.decision
    with pytest.raises(AccessDenied, match=r"^missing privilege use_pane$"):
        require(make(), "use_pane")
    require(make(team={"use_pane": Depth.USER}), "use_pane")


def test_send_as_needs_depth_and_consent() -> None:
    p = make({"send_as_user": Depth.BUSINESS_UNIT})
    willing = User(
        id=uuid.uuid4(), username="bob", business_unit_id=SALES, allow_send_on_behalf=True
    )
    unwilling = User(id=uuid.uuid4(), username="carl", business_unit_id=SALES)
    far = User(id=uuid.uuid4(), username="dora", business_unit_id=NORTH)
    assert may_send_as(p, willing)
    assert may_send_as(p, User(id=ME, username="alice", business_unit_id=SALES))
    assert may_send_as(p, unwilling).reason == (
        "You cannot send email as the selected user: user carl has not allowed others to send "
        "email on their behalf (allow_send_on_behalf is off)"
    )
    assert may_send_as(p, far).reason == (
        "You cannot send email as the selected user: missing privilege send_as_user (needs depth "
        "parent_child or higher for a user of business unit North; you hold it only at depth "
        "business_unit (own role)); user dora has not allowed others to send email on their "
        "behalf (allow_send_on_behalf is off)"
    )


def test_sync_filters_and_org_settings() -> None:
    target = User(id=uuid.uuid4(), username="bob", business_unit_id=SERVICE)
    p = make(
        {"manage_user_sync_filters": Depth.BUSINESS_UNIT, "manage_org_settings": Depth.PARENT_CHILD}
    )
    assert may_manage_user_sync_filters(p, User(id=ME, username="alice"))
    assert (
        "missing privilege manage_user_sync_filters"
        in may_manage_user_sync_filters(p, target).reason
    )
    assert may_manage_org_settings(p).reason == (
        "missing privilege manage_org_settings (needs depth organization; you hold it only at "
        "depth parent_child (own role))"
    )
    assert may_manage_org_settings(make(team={"manage_org_settings": Depth.ORGANIZATION}))


def _sql(clause: sa.ColumnElement[bool]) -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def test_filter_sql_shape() -> None:
    everyone = _sql(access_filter(make({"read:contact": Depth.ORGANIZATION}), "read", "contact"))
    assert everyone == "record.record_type = 'contact'"
    narrow = _sql(access_filter(make({"read:contact": Depth.BUSINESS_UNIT}), "read", "contact"))
    assert "record.owner_id IN" in narrow
    assert "record.business_unit_id IN" in narrow
    assert "record.id = ANY (array((SELECT record_share.record_id" in narrow
    assert "record_share.rights & 1" in narrow
    created = _sql(access_filter(make({"create:contact": Depth.USER}), "create", "contact"))
    assert "record_share" not in created  # shares never grant create
    assert _sql(access_filter(make(), "read", "contact")) == "false"
    attachments = _sql(access_filter(make({"read:email": Depth.USER}), "read", "attachment"))
    assert attachments.startswith("EXISTS (SELECT")
    assert "attachment.activity_id" in attachments
