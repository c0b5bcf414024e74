"""The authorization matrix against PostgreSQL: each source of a privilege (own role, owner team's
role) x each depth x each relation of a row to the principal x each operation, decided by ``can``
one row at a time; then ``access_filter`` must select exactly the rows ``can`` allows, for every
principal, operation and type.

The expectations are written out by hand (``REACH`` and ``SHARED``), not computed by the code
under test. One organization is built per module: the cases only read it.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from crmsync.crm.base import Depth
from crmsync.crm.models import (
    Account,
    Activity,
    ActivityParty,
    Attachment,
    BusinessUnit,
    Contact,
    Email,
    Mailbox,
    Queue,
    Record,
    RecordShare,
    RolePrivilege,
    SecurityRole,
    Task,
    Team,
    TeamMembership,
    TeamRole,
    User,
    UserRole,
)
from crmsync.crm.privileges import RECORD_OPERATIONS
from crmsync.crm.roles import AccessRight
from crmsync.crm.security import Principal, RowRef, access_filter, can, load_principal
from crmsync.db import make_engine

pytestmark = pytest.mark.integration

U, BU, PC, ORG = Depth.USER, Depth.BUSINESS_UNIT, Depth.PARENT_CHILD, Depth.ORGANIZATION
RANK = {None: -1, U: 0, BU: 1, PC: 2, ORG: 3}

# Units: Pohjola (root) > Sales > Sales North; Pohjola > Service.
UNITS = {"root": None, "sales": "root", "north": "sales", "service": "root"}

# name -> (source of the privileges, depth, home unit). "own": the user's own role, the user in
# Sales. "team": only a role of an owner team in Sales, the user in Service (so the team's unit
# and the user's differ). "reader": own role with read only, at user depth. "bare": no role.
PRINCIPALS: dict[str, tuple[str, Depth | None, str]] = {
    **{f"own_{d}": ("own", d, "sales") for d in (U, BU, PC, ORG)},
    **{f"team_{d}": ("team", d, "service") for d in (U, BU, PC, ORG)},
    "reader": ("reader", U, "sales"),
    "bare": ("bare", None, "sales"),
    "disabled": ("own", ORG, "sales"),
}

# Where each relation's row is placed: (owner, unit). "P" is the principal, "team" their owner
# team (in Sales), "by:<unit>" a bystander user of that unit.
RELATIONS: dict[str, tuple[str, str]] = {
    "owned_by_p": ("P", "home"),
    "owned_by_team": ("team", "sales"),
    "in_sales": ("by:sales", "sales"),
    "in_north": ("by:north", "north"),
    "in_root": ("by:root", "root"),
    "in_service": ("by:service", "service"),
    "shared_p": ("by:root", "root"),
    "shared_team": ("by:root", "root"),
}

# The shallowest depth reaching each relation, per source (Dynamics semantics, by hand).
# Own roles measure from the user (and any team of theirs) and the user's unit (Sales).
# Team roles measure from the team (rows it owns) and the team's unit (Sales), not the user's:
# the team principal's own rows, in Service, are reached only at organization depth.
REACH: dict[str, dict[str, Depth]] = {
    "own": {
        "owned_by_p": U,
        "owned_by_team": U,
        "in_sales": BU,
        "in_north": PC,
        "in_root": ORG,
        "in_service": ORG,
        "shared_p": ORG,
        "shared_team": ORG,
    },
    "team": {
        "owned_by_p": ORG,
        "owned_by_team": U,
        "in_sales": BU,
        "in_north": PC,
        "in_root": ORG,
        "in_service": ORG,
        "shared_p": ORG,
        "shared_team": ORG,
    },
}
REACH["reader"] = REACH["own"]

# Shares: to the principal, and to an access team of theirs, with these rights.
SHARE_RIGHTS = {
    "shared_p": AccessRight.READ | AccessRight.WRITE | AccessRight.APPEND,
    "shared_team": AccessRight.READ | AccessRight.DELETE | AccessRight.SHARE,
}
SHARED = {
    "shared_p": {"read", "write", "append"},
    "shared_team": {"read", "delete", "share"},
}

MATRIX_TYPES = ("contact", "email")
ROLE_TYPES = ("contact", "account", "email", "task", "user", "business_unit", "mailbox")


def expected(principal: str, relation: str, op: str) -> bool:
    source, depth, _ = PRINCIPALS[principal]
    if principal == "disabled" or depth is None:
        return False
    if source == "reader" and op != "read":
        return False  # holds no other privilege: neither depth nor a share grants it
    if RANK[depth] >= RANK[REACH[source][relation]]:
        return True
    # A share grants its rights to a holder of the privilege (at any depth); never create.
    return op in SHARED.get(relation, set())


@dataclass
class Org:
    engine: Engine
    units: dict[str, uuid.UUID] = field(default_factory=dict)
    users: dict[str, uuid.UUID] = field(default_factory=dict)
    rows: dict[tuple[str, str, str], uuid.UUID] = field(default_factory=dict)
    """(principal, type, relation) -> record id."""
    principals: dict[str, Principal] = field(default_factory=dict)


@pytest.fixture(scope="module")
def org_engine(pg_admin_url: str, template_db: str) -> Iterator[Engine]:
    """A fresh migrated database for this module (cloned like tests/dbfix.py's per-test one)."""
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    template = make_url(template_db).database
    name = f"t_sec_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    engine = make_engine(
        make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    )
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _privileges(source: str, depth: Depth | None) -> list[RolePrivilege]:
    if depth is None:
        return []
    ops = ("read",) if source == "reader" else RECORD_OPERATIONS
    return [
        RolePrivilege(privilege=f"{op}:{rt}", depth=depth)
        for op, rt in itertools.product(ops, ROLE_TYPES)
    ]


def build(session: Session, org: Org) -> None:
    for key, parent in UNITS.items():
        unit = BusinessUnit(
            id=uuid.uuid4(), name=key.title(), parent_id=org.units.get(parent or "")
        )
        session.add(unit)
        session.flush()
        org.units[key] = unit.id
    for key in UNITS:
        org.users[f"by:{key}"] = _user(session, f"by-{key}", org.units[key])

    for name, (source, depth, home) in PRINCIPALS.items():
        uid = _user(session, name, org.units[home], disabled=name == "disabled")
        org.users[name] = uid
        team = Team(id=uuid.uuid4(), name=f"{name}-team", business_unit_id=org.units["sales"])
        access = Team(
            id=uuid.uuid4(),
            name=f"{name}-access",
            team_type="access",
            business_unit_id=org.units["service"],
        )
        session.add_all([team, access])
        session.flush()
        session.add_all([TeamMembership(team_id=t.id, user_id=uid) for t in (team, access)])
        role = SecurityRole(name=f"{name}-role", privileges=_privileges(source, depth))
        session.add(role)
        session.flush()
        if source == "team":
            session.add(TeamRole(team_id=team.id, role_id=role.id))
            # A role on an access team is ignored (access teams hold no roles in Dynamics).
            session.add(TeamRole(team_id=access.id, role_id=_org_role(session, name).id))
        elif source != "bare":
            session.add(UserRole(user_id=uid, role_id=role.id))
        session.add(Mailbox(name=f"{name} mailbox", owner_id=uid, email_address=f"{name}@x.test"))
        _relations(session, org, name, home, team.id, access.id)
    for key in UNITS:
        session.add(
            Account(
                name=f"account of {key}",
                owner_id=org.users[f"by:{key}"],
                business_unit_id=org.units[key],
            )
        )
    queue = Queue(
        id=uuid.uuid4(),
        name="support",
        owner_id=org.users["by:sales"],
        business_unit_id=org.units["sales"],
    )
    session.add(queue)
    session.flush()
    session.add(Mailbox(name="support", owner_id=queue.id, email_address="support@x.test"))
    session.flush()


def _org_role(session: Session, name: str) -> SecurityRole:
    role = SecurityRole(name=f"{name}-access-role", privileges=_privileges("own", ORG))
    session.add(role)
    session.flush()
    return role


def _user(session: Session, name: str, unit: uuid.UUID, *, disabled: bool = False) -> uuid.UUID:
    user = User(
        id=uuid.uuid4(), username=name, name=name, business_unit_id=unit, is_disabled=disabled
    )
    session.add(user)
    session.flush()
    return user.id


def _relations(
    session: Session, org: Org, name: str, home: str, team: uuid.UUID, access: uuid.UUID
) -> None:
    for rt, relation in itertools.product(MATRIX_TYPES, RELATIONS):
        owner_key, unit_key = RELATIONS[relation]
        owner = {"P": org.users[name], "team": team}.get(owner_key) or org.users[owner_key]
        unit = org.units[home if unit_key == "home" else unit_key]
        label = f"{name} {rt} {relation}"
        rid = uuid.uuid4()
        if rt == "contact":
            row: Record = Contact(id=rid, last_name=label, name=label)
        else:
            row = Email(id=rid, name=label, subject=label, direction="incoming", dedupe_key=label)
            row.attachments.append(Attachment(filename="a.txt", size_bytes=1, sha256="0" * 64))
            row.parties.append(ActivityParty(role="to", address=f"{name}@x.test"))
        row.owner_id, row.business_unit_id = owner, unit
        session.add(row)
        session.flush()
        org.rows[(name, rt, relation)] = rid
        if relation == "shared_p":
            session.add(
                RecordShare(
                    record_id=rid, principal_id=org.users[name], rights=int(SHARE_RIGHTS[relation])
                )
            )
        elif relation == "shared_team":
            session.add(
                RecordShare(record_id=rid, principal_id=access, rights=int(SHARE_RIGHTS[relation]))
            )
    # A task owned by the principal, so "activity" spans more than one type.
    session.add(
        Task(
            name=f"{name} task",
            subject="t",
            owner_id=org.users[name],
            business_unit_id=org.units[home],
        )
    )


@pytest.fixture(scope="module")
def org(org_engine: Engine) -> Org:
    result = Org(org_engine)
    with Session(org_engine) as session, session.begin():
        build(session, result)
    with Session(org_engine) as session:
        for name in PRINCIPALS:
            result.principals[name] = load_principal(session, result.users[name])
    return result


@pytest.fixture(scope="module")
def session(org: Org) -> Iterator[Session]:
    with Session(org.engine) as s:
        yield s


CASES = [
    pytest.param(p, rt, rel, op, id=f"{p}-{rt}-{rel}-{op}")
    for p, rt, rel, op in itertools.product(PRINCIPALS, MATRIX_TYPES, RELATIONS, RECORD_OPERATIONS)
]


@pytest.mark.parametrize(("principal", "record_type", "relation", "op"), CASES)
def test_can(
    org: Org, session: Session, principal: str, record_type: str, relation: str, op: str
) -> None:
    row = session.get(Record, org.rows[(principal, record_type, relation)])
    assert row is not None
    decision = can(org.principals[principal], op, row)
    assert bool(decision) is expected(principal, relation, op), decision.reason
    if decision:
        assert decision.privilege == f"{op}:{record_type}"
    elif principal == "disabled":
        assert decision.reason == "user disabled is disabled and may do nothing"
    else:
        assert f"{op}:{record_type}" in decision.reason


def test_matrix_is_large_enough() -> None:
    assert len(CASES) >= 200


FILTER_TYPES = ("contact", "account", "email", "activity", "user", "business_unit", "task")


def _row_refs(session: Session, record_type: str) -> dict[uuid.UUID, RowRef]:
    types = ("email", "appointment", "task") if record_type == "activity" else (record_type,)
    shares: dict[uuid.UUID, dict[uuid.UUID, int]] = {}
    for rid, pid, rights in session.execute(
        sa.select(RecordShare.record_id, RecordShare.principal_id, RecordShare.rights)
    ):
        shares.setdefault(rid, {})[pid] = rights
    rows = session.execute(
        sa.select(Record.id, Record.record_type, Record.owner_id, Record.business_unit_id).where(
            Record.record_type.in_(types)
        )
    )
    return {
        r.id: RowRef(r.id, r.record_type, r.owner_id, r.business_unit_id, shares.get(r.id, {}))
        for r in rows
    }


@pytest.mark.parametrize("op", RECORD_OPERATIONS)
@pytest.mark.parametrize("record_type", FILTER_TYPES)
@pytest.mark.parametrize("principal", PRINCIPALS)
def test_filter_selects_what_can_allows(
    org: Org, session: Session, principal: str, record_type: str, op: str
) -> None:
    p = org.principals[principal]
    refs = _row_refs(session, record_type)
    allowed = {rid for rid, ref in refs.items() if can(p, op, ref)}
    selected = set(session.scalars(sa.select(Record.id).where(access_filter(p, op, record_type))))
    assert selected == allowed
    if principal == "own_organization":
        assert selected == set(refs)


@pytest.mark.parametrize("op", RECORD_OPERATIONS)
@pytest.mark.parametrize("principal", PRINCIPALS)
def test_filter_on_children_and_mailboxes(
    org: Org, session: Session, principal: str, op: str
) -> None:
    """Attachments and parties follow their activity; mailboxes their owner (user or queue)."""
    p = org.principals[principal]
    activities = _row_refs(session, "activity")
    for model, type_name in ((Attachment, "attachment"), (ActivityParty, "activity_party")):
        pairs = session.execute(sa.select(model.id, model.activity_id)).all()
        allowed = {cid for cid, aid in pairs if can(p, op, activities[aid])}
        selected = set(session.scalars(sa.select(model.id).where(access_filter(p, op, type_name))))
        assert selected == allowed, type_name
    mailboxes = session.scalars(sa.select(Mailbox)).all()
    allowed = {m.id for m in mailboxes if can(p, op, m)}
    selected = set(session.scalars(sa.select(Mailbox.id).where(access_filter(p, op, "mailbox"))))
    assert selected == allowed


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_children_decide_as_their_activity(org: Org, session: Session, principal: str) -> None:
    p = org.principals[principal]
    email = session.get(Email, org.rows[(principal, "email", "shared_team")])
    assert email is not None
    children: list[Attachment | ActivityParty] = [*email.attachments, *email.parties]
    for child in children:
        for op in RECORD_OPERATIONS:
            assert can(p, op, child) == can(p, op, email)


def test_filter_works_in_a_subtype_select(org: Org, session: Session) -> None:
    p = org.principals["own_business_unit"]
    contacts = session.scalars(sa.select(Contact).where(access_filter(p, "read", "contact"))).all()
    assert contacts and all(can(p, "read", c) for c in contacts)
    emails = session.scalars(sa.select(Email).where(access_filter(p, "read", "activity"))).all()
    assert emails and all(can(p, "read", e) for e in emails)
    assert all(isinstance(a, Activity) for a in emails)


def test_orm_rows_and_row_refs_decide_alike(org: Org, session: Session) -> None:
    for (name, _rt, _rel), rid in org.rows.items():
        row = session.get(Record, rid)
        assert row is not None
        ref = RowRef.load(session, rid)
        for op in RECORD_OPERATIONS:
            p = org.principals[name]
            assert bool(can(p, op, row)) is bool(can(p, op, ref)), (name, rid, op)
