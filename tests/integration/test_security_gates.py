"""Privilege gates and field security with principals loaded from PostgreSQL: own and team roles,
send-as consent and depth, field profiles held by a user or by a team."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.crm.base import Depth, RecordState
from crmsync.crm.models import (
    BusinessUnit,
    Contact,
    FieldPermission,
    FieldProfileMember,
    FieldSecurityProfile,
    RolePrivilege,
    SecuredField,
    SecurityRole,
    Team,
    TeamMembership,
    TeamRole,
    User,
    UserRole,
)
from crmsync.crm.security import (
    AccessDenied,
    Principal,
    access_filter,
    can,
    incoming_change,
    load_principal,
    may_approve_mailbox,
    may_manage_org_settings,
    may_manage_user_sync_filters,
    may_send_as,
    may_sync_to_mailbox,
    may_use_pane,
    outgoing_values,
    require,
)
from crmsync.errors import NotFound

pytestmark = pytest.mark.integration

U, BU, PC, ORG = Depth.USER, Depth.BUSINESS_UNIT, Depth.PARENT_CHILD, Depth.ORGANIZATION


class Org:
    """Pohjola > Sales > North; Pohjola > Service. Users named by what they may do."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.units: dict[str, uuid.UUID] = {}
        for name, parent in (
            ("Pohjola", None),
            ("Sales", "Pohjola"),
            ("North", "Sales"),
            ("Service", "Pohjola"),
        ):
            unit = BusinessUnit(id=uuid.uuid4(), name=name, parent_id=self.units.get(parent or ""))
            session.add(unit)
            session.flush()
            self.units[name] = unit.id
        self.users: dict[str, User] = {}

    def user(
        self,
        name: str,
        unit: str,
        *,
        consent: bool = False,
        disabled: bool = False,
        **privileges: Depth,
    ) -> User:
        user = User(
            id=uuid.uuid4(),
            username=name,
            name=name,
            business_unit_id=self.units[unit],
            allow_send_on_behalf=consent,
            is_disabled=disabled,
        )
        self.s.add(user)
        self.s.flush()
        if privileges:
            self.s.add(UserRole(user_id=user.id, role_id=self.role(name, privileges)))
        self.users[name] = user
        return user

    def team(
        self,
        name: str,
        unit: str,
        members: list[User],
        *,
        access: bool = False,
        **privileges: Depth,
    ) -> Team:
        team = Team(
            id=uuid.uuid4(),
            name=name,
            team_type="access" if access else "owner",
            business_unit_id=self.units[unit],
        )
        self.s.add(team)
        self.s.flush()
        self.s.add_all(TeamMembership(team_id=team.id, user_id=m.id) for m in members)
        if privileges:
            self.s.add(TeamRole(team_id=team.id, role_id=self.role(name, privileges)))
        self.s.flush()
        return team

    def role(self, name: str, privileges: dict[str, Depth]) -> uuid.UUID:
        role = SecurityRole(
            name=f"{name} role",
            privileges=[RolePrivilege(privilege=k, depth=v) for k, v in privileges.items()],
        )
        self.s.add(role)
        self.s.flush()
        return role.id

    def load(self, user: User) -> Principal:
        self.s.flush()
        return load_principal(self.s, user.id)


@pytest.fixture
def org(engine: Engine) -> Iterator[Org]:
    with Session(engine) as session:
        yield Org(session)


def test_send_as_with_and_without_consent_and_depth(org: Org) -> None:
    sender = org.user("sender", "Sales", send_as_user=BU)
    willing = org.user("willing", "Sales", consent=True)
    unwilling = org.user("unwilling", "Sales")
    far = org.user("far", "North", consent=True)
    gone = org.user("gone", "Sales", consent=True, disabled=True)
    p = org.load(sender)

    assert may_send_as(p, willing)
    refused = may_send_as(p, unwilling)
    assert refused.reason == (
        "You cannot send email as the selected user: user unwilling has not allowed others to "
        "send email on their behalf (allow_send_on_behalf is off)"
    )
    too_deep = may_send_as(p, far)
    assert too_deep.reason.startswith(
        "You cannot send email as the selected user: missing privilege send_as_user (needs depth "
        "parent_child or higher for a user of business unit North"
    )
    assert "is disabled" in may_send_as(p, gone).reason
    nobody = org.load(org.user("nobody", "Sales"))
    assert may_send_as(nobody, willing).reason == (
        "You cannot send email as the selected user: missing privilege send_as_user (needs depth "
        "business_unit or higher for a user of business unit Sales)"
    )


def test_send_as_through_a_team_role_uses_the_teams_unit(org: Org) -> None:
    member = org.user("member", "Sales")
    org.team("Service desk", "Service", [member], send_as_user=BU)
    in_service = org.user("svc", "Service", consent=True)
    in_sales = org.user("colleague", "Sales", consent=True)
    p = org.load(member)
    assert may_send_as(p, in_service).reason.startswith(
        "send_as_user at depth business_unit via team Service desk: in the team's business unit"
    )
    assert "missing privilege send_as_user" in may_send_as(p, in_sales).reason


def test_holding_gates_name_the_missing_privilege(org: Org) -> None:
    holder = org.load(
        org.user("holder", "Sales", sync_to_mailbox=U, use_pane=ORG, approve_mailbox=U)
    )
    nobody = org.load(org.user("nobody", "Sales"))
    for gate, privilege in (
        (may_sync_to_mailbox, "sync_to_mailbox"),
        (may_use_pane, "use_pane"),
        (may_approve_mailbox, "approve_mailbox"),
    ):
        assert gate(holder), privilege
        denied = gate(nobody)
        assert not denied
        assert denied.reason == f"missing privilege {privilege}"
    with pytest.raises(AccessDenied, match="missing privilege sync_to_mailbox"):
        require(nobody, "sync_to_mailbox")
    require(holder, "sync_to_mailbox")


def test_access_team_roles_are_ignored(org: Org) -> None:
    member = org.user("member", "Sales")
    org.team("Deal room", "Sales", [member], access=True, use_pane=ORG)
    assert not may_use_pane(org.load(member))


def test_org_settings_need_organization_depth(org: Org) -> None:
    admin = org.load(org.user("admin", "Pohjola", manage_org_settings=ORG))
    local = org.load(org.user("local", "Sales", manage_org_settings=BU))
    assert may_manage_org_settings(admin)
    assert "needs depth organization" in may_manage_org_settings(local).reason
    assert may_manage_org_settings(org.load(org.user("none", "Sales"))).reason == (
        "missing privilege manage_org_settings"
    )


def test_user_sync_filters(org: Org) -> None:
    admin = org.user("admin", "Sales", manage_user_sync_filters=PC)
    child = org.user("child", "North")
    other = org.user("other", "Service")
    p = org.load(admin)
    assert may_manage_user_sync_filters(p, admin)
    assert may_manage_user_sync_filters(p, child)
    denied = may_manage_user_sync_filters(p, other)
    assert denied.reason == (
        "missing privilege manage_user_sync_filters (needs depth organization or higher for a "
        "user of business unit Service; you hold it only at depth parent_child (own role))"
    )
    plain = org.load(org.user("plain", "Sales"))
    assert may_manage_user_sync_filters(plain, org.users["plain"])
    assert not may_manage_user_sync_filters(plain, child)


def test_disabled_user_passes_no_gate(org: Org) -> None:
    p = org.load(org.user("off", "Sales", disabled=True, sync_to_mailbox=ORG, send_as_user=ORG))
    target = org.user("target", "Sales", consent=True)
    assert may_sync_to_mailbox(p).reason == "user off is disabled and may do nothing"
    assert not may_send_as(p, target)
    assert not may_manage_user_sync_filters(p, target)


def test_unknown_user(org: Org) -> None:
    with pytest.raises(NotFound):
        load_principal(org.s, uuid.uuid4())


def _profile(org: Org, name: str, holder: uuid.UUID, **fields: tuple[bool, bool, bool]) -> None:
    profile = FieldSecurityProfile(
        id=uuid.uuid4(),
        name=name,
        permissions=[
            FieldPermission(record_type="contact", field=f, can_read=r, can_create=c, can_update=u)
            for f, (r, c, u) in fields.items()
        ],
    )
    org.s.add(profile)
    org.s.flush()
    org.s.add(FieldProfileMember(profile_id=profile.id, principal_id=holder))


def test_field_security_both_directions(org: Org) -> None:
    org.s.add_all(
        [
            SecuredField(record_type="contact", field="mobile_phone"),
            SecuredField(record_type="contact", field="job_title"),
        ]
    )
    reader = org.user("reader", "Sales")
    editor = org.user("editor", "Sales")
    outsider = org.user("outsider", "Sales")
    _profile(org, "Phone readers", reader.id, mobile_phone=(True, False, False))
    team = org.team("Editors", "Sales", [editor])
    _profile(org, "Phone editors", team.id, mobile_phone=(True, True, True))
    _profile(org, "Nothing", outsider.id)

    values = {"last_name": "Virtanen", "mobile_phone": "+358 40 1", "job_title": "CEO"}
    p_reader, p_editor, p_outsider = (org.load(u) for u in (reader, editor, outsider))
    assert len(p_outsider.field_profile_ids) == 1
    assert outgoing_values(p_outsider, "contact", values) == {"last_name": "Virtanen"}
    assert outgoing_values(p_reader, "contact", values) == {
        "last_name": "Virtanen",
        "mobile_phone": "+358 40 1",
    }

    change = {"mobile_phone": "+358 40 2", "last_name": "Korhonen"}
    allowed, dropped = incoming_change(p_reader, "contact", change, creating=False)
    assert allowed == {"last_name": "Korhonen"}
    assert [(d.field, d.reason) for d in dropped] == [
        (
            "mobile_phone",
            "contact.mobile_phone is a secured field and no field security profile of user "
            "reader or their teams grants update",
        )
    ]
    # The profile held by the editor's team grants update and create.
    assert incoming_change(p_editor, "contact", change, creating=False) == (change, [])
    assert incoming_change(p_editor, "contact", change, creating=True) == (change, [])
    _, dropped = incoming_change(p_editor, "contact", {"job_title": "CTO"}, creating=True)
    assert [d.field for d in dropped] == ["job_title"]


def test_inactive_records_follow_the_same_rules(org: Org) -> None:
    """State is not security: an inactive record is reached exactly like an active one."""
    owner = org.user("owner", "Sales", **{"read:contact": U, "write:contact": U})
    contact = Contact(
        id=uuid.uuid4(),
        last_name="Old",
        name="Old",
        state=RecordState.INACTIVE,
        owner_id=owner.id,
        business_unit_id=owner.business_unit_id,
    )
    org.s.add(contact)
    p = org.load(owner)
    assert can(p, "read", contact)
    assert can(p, "write", contact)
    visible = org.s.scalars(sa.select(Contact.id).where(access_filter(p, "read", "contact")))
    assert list(visible) == [contact.id]
