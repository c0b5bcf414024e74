"""The migrations are the schema: applying them yields exactly what the models describe."""

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

import crmsync.crm.models  # noqa: F401
from crmsync.crm.base import Base
from crmsync.db import (
    current_revision,
    head_revision,
    include_name,
    require_current_schema,
    upgrade_schema,
)
from crmsync.errors import DatabaseError

pytestmark = pytest.mark.integration


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(
                conn, opts={"compare_type": True, "include_name": include_name}
            ),
            Base.metadata,
        )
    assert diff == [], f"models and migrations differ; add a migration: {diff}"


def test_upgrade_is_idempotent(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    before, after = upgrade_schema(engine)
    assert before == after == head_revision()


def test_empty_database_is_refused_with_advice(pg_admin_url: str) -> None:
    import uuid

    from sqlalchemy.engine import make_url

    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    name = f"empty_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    eng = sa.create_engine(make_url(pg_admin_url).set(database=name))
    try:
        with pytest.raises(DatabaseError, match="run: crmsync init"):
            require_current_schema(eng)
        upgrade_schema(eng)
        require_current_schema(eng)
    finally:
        eng.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def test_owner_and_regarding_work_for_any_record_type(engine: Engine) -> None:
    from crmsync.crm.activities import Email, EmailDirection, Task
    from crmsync.crm.models import Account, BusinessUnit, Case, Opportunity, Team, User
    from crmsync.db import session_scope

    with session_scope(engine) as s:
        bu = BusinessUnit(name="Root")
        s.add(bu)
        s.flush()
        user = User(name="Anna", username="anna", business_unit_id=bu.id)
        team = Team(name="Sales team", business_unit_id=bu.id)
        s.add_all([user, team])
        s.flush()
        acc = Account(name="Acme", owner_id=team.id, business_unit_id=bu.id)
        s.add(acc)
        s.flush()
        targets = [
            acc,
            Opportunity(name="Deal", owner_id=user.id, customer_id=acc.id),
            Case(name="Broken sensor", owner_id=user.id, customer_id=acc.id),
        ]
        s.add_all(targets)
        s.flush()
        for i, target in enumerate(targets):
            s.add(
                Email(
                    name=f"m{i}",
                    subject=f"m{i}",
                    direction=EmailDirection.INCOMING,
                    dedupe_key=f"mid:{i}@x",
                    owner_id=user.id,
                    regarding_id=target.id,
                )
            )
        s.add(Task(name="Call back", subject="Call back", owner_id=team.id, regarding_id=user.id))
    with session_scope(engine) as s:
        regarding = {e.subject: type(e.regarding).__name__ for e in s.scalars(sa.select(Email))}
        assert regarding == {"m0": "Account", "m1": "Opportunity", "m2": "Case"}
        task = s.scalars(sa.select(Task)).one()
        assert type(task.owner).__name__ == "Team"
        assert type(task.regarding).__name__ == "User"


def test_same_message_is_one_activity_per_direction(engine: Engine) -> None:
    from sqlalchemy.exc import IntegrityError

    from crmsync.crm.activities import Email, EmailDirection
    from crmsync.db import session_scope

    with session_scope(engine) as s:
        s.add(Email(subject="a", direction=EmailDirection.INCOMING, dedupe_key="mid:a@b"))
        s.add(Email(subject="a", direction=EmailDirection.OUTGOING, dedupe_key="mid:a@b"))
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.add(Email(subject="a", direction=EmailDirection.INCOMING, dedupe_key="mid:a@b"))
