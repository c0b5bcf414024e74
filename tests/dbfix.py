"""Database fixtures: one migrated template database per test run, a fresh clone per test.

The server is the test stack's PostgreSQL (tests/stackfix) unless CRMSYNC_TEST_DATABASE_URL names
another server's admin URL (any database on it; test databases are created beside it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from crmsync.db import make_engine, normalize_url, upgrade_schema
from tests.clirun import clean_env

# One template per test run: runs sharing a stack (two people, parallel sessions) must not drop
# each other's template.
TEMPLATE = f"crmsync_test_template_{os.getpid()}"


def _admin_engine(url: str) -> Engine:
    return sa.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")


def _drop(admin: Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_admin_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("CRMSYNC_TEST_DATABASE_URL")
    if url:
        return normalize_url(url)
    stack = request.getfixturevalue("stack")
    return normalize_url(stack.postgres_url)


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """Create the template database with the schema, once per run."""
    admin = _admin_engine(pg_admin_url)
    _drop(admin, TEMPLATE)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{TEMPLATE}"'))
    url = make_url(pg_admin_url).set(database=TEMPLATE).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade_schema(engine)
    engine.dispose()
    yield url
    _drop(admin, TEMPLATE)
    admin.dispose()


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """URL of a fresh database with the current schema and no rows, dropped after the test."""
    admin = _admin_engine(pg_admin_url)
    name = f"t_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"'))
    yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    _drop(admin, name)
    admin.dispose()


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running the CLI (tests.clirun.run) on the test's fresh database."""
    return clean_env(
        CRMSYNC_DATABASE_URL=database_url,
        CRMSYNC_HOME=str(tmp_path / "home"),
        CRMSYNC_LOG_LEVEL="debug",
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@contextmanager
def counted(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement ENGINE sends inside the block, in order (for tests that pin how many
    round trips an operation costs: a count, never a time)."""
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
