"""Alembic environment: runs migrations on the engine crmsync hands over, under a lock."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

import crmsync.crm.models  # noqa: F401  (registers every table on Base.metadata)
from crmsync.crm.base import Base
from crmsync.db import MIGRATION_LOCK_KEY, include_name

target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        # A session-level advisory lock: concurrent `crmsync init` runs wait for each other
        # instead of racing to create the same tables.
        connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                compare_type=True,
                include_name=include_name,
                transaction_per_migration=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
            # Fresh tables have no statistics; plans on them are poor until analyzed.
            connection.execute(sa.text("ANALYZE"))
            connection.commit()
        finally:
            if connection.in_transaction():
                connection.rollback()  # a failed migration leaves its transaction aborted
            connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            connection.commit()


if context.is_offline_mode():
    raise SystemExit("crmsync migrations run online only: use `crmsync init`")
run_migrations_online()
