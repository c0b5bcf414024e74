"""The list filter at scale: a bounded number of statements (not one per row), answered from the
indexes when the principal's scope is narrow."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.crm.base import Depth
from crmsync.crm.models import (
    BusinessUnit,
    Contact,
    RecordShare,
    RolePrivilege,
    SecurityRole,
    Team,
    TeamMembership,
    User,
    UserRole,
)
from crmsync.crm.security import access_filter, can, load_principal
from tests.dbfix import counted

pytestmark = pytest.mark.integration

CONTACTS = 5000


def populate(engine: Engine, contacts: int) -> dict[str, uuid.UUID]:
    """Units A and B; in A, `seller` with read:contact at user depth and `manager` at business
    unit depth. Most contacts are owned by `other` in B; a few by the seller or their team (in A),
    a few are shared with the seller."""
    ids = {
        k: uuid.uuid4() for k in ("a", "b", "seller", "manager", "other", "team", "role", "unit")
    }
    with Session(engine) as s, s.begin():
        s.add_all(
            [
                BusinessUnit(id=ids["a"], name="A"),
                BusinessUnit(id=ids["b"], name="B"),
            ]
        )
        s.flush()
        s.add_all(
            [
                User(id=ids["seller"], username="seller", business_unit_id=ids["a"]),
                User(id=ids["manager"], username="manager", business_unit_id=ids["a"]),
                User(id=ids["other"], username="other", business_unit_id=ids["b"]),
                Team(id=ids["team"], name="team", business_unit_id=ids["a"]),
                SecurityRole(
                    id=ids["role"],
                    name="seller",
                    privileges=[RolePrivilege(privilege="read:contact", depth=Depth.USER)],
                ),
                SecurityRole(
                    id=ids["unit"],
                    name="manager",
                    privileges=[RolePrivilege(privilege="read:contact", depth=Depth.BUSINESS_UNIT)],
                ),
            ]
        )
        s.flush()
        s.add_all(
            [
                TeamMembership(team_id=ids["team"], user_id=ids["seller"]),
                UserRole(user_id=ids["seller"], role_id=ids["role"]),
                UserRole(user_id=ids["manager"], role_id=ids["unit"]),
            ]
        )
        rows = []
        for i in range(contacts):
            owner = ids["seller"] if i % 500 == 0 else ids["team"] if i % 500 == 1 else ids["other"]
            unit = ids["a"] if owner != ids["other"] else ids["b"]
            rows.append(
                {
                    "id": uuid.uuid4(),
                    "last_name": f"c{i}",
                    "name": f"c{i}",
                    "owner_id": owner,
                    "business_unit_id": unit,
                }
            )
        s.execute(sa.insert(Contact), rows)
        s.add_all(
            RecordShare(record_id=r["id"], principal_id=ids["seller"], rights=1)
            for r in rows[2::500]
        )
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
    return ids


def test_listing_is_a_bounded_number_of_statements(engine: Engine) -> None:
    ids = populate(engine, CONTACTS)
    with Session(engine) as session, counted(engine) as statements:
        principal = load_principal(session, ids["seller"])
        loading = len(statements)
        visible = session.execute(
            sa.select(Contact.id, Contact.last_name).where(
                access_filter(principal, "read", "contact")
            )
        ).all()
    assert loading <= 6, statements
    # The list is one statement, however many contacts there are: no per-row check in Python.
    assert len(statements) - loading == 1
    assert len(visible) == 3 * CONTACTS // 500
    with Session(engine) as session:
        contacts = session.scalars(
            sa.select(Contact).where(Contact.id.in_([r.id for r in visible]))
        )
        assert all(can(principal, "read", c) for c in contacts)


@pytest.mark.parametrize(
    ("user", "index"), [("seller", "ix_record_owner_id"), ("manager", "ix_record_business_unit_id")]
)
def test_narrow_scope_uses_the_indexes(engine: Engine, user: str, index: str) -> None:
    ids = populate(engine, CONTACTS)
    with Session(engine) as session:
        principal = load_principal(session, ids[user])
        query = sa.select(Contact.id).where(access_filter(principal, "read", "contact"))
        compiled = query.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        plan = "\n".join(session.scalars(sa.text(f"EXPLAIN {compiled}")))
    assert index in plan, plan
    assert "Seq Scan on record " not in plan, plan
    if user == "seller":  # the shares' array is probed through the primary key, in the BitmapOr
        assert "BitmapOr" in plan and "pk_record" in plan, plan
