"""Configuration from the environment.

Every setting has a sensible default so a newcomer needs nothing: without
``CRMSYNC_DATABASE_URL`` crmsync starts a private PostgreSQL under ``CRMSYNC_HOME``.
The full list lives in docs/configuration.md; keep the two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from crmsync.errors import ConfigError

DEFAULT_HOME = Path.home() / ".local" / "share" / "crmsync"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None
    secret_keys: tuple[str, ...]
    """Fernet keys from CRMSYNC_SECRET_KEY, newest first; empty means use the key file."""
    log_level: str
    log_format: str

    @property
    def key_file(self) -> Path:
        return self.home / "secret.key"

    @property
    def embedded_pgdata(self) -> Path:
        return self.home / "pgdata"


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    home = Path(env.get("CRMSYNC_HOME") or DEFAULT_HOME).expanduser()
    url = (env.get("CRMSYNC_DATABASE_URL") or "").strip() or None
    if url is not None and not url.startswith(("postgresql://", "postgresql+psycopg://")):
        raise ConfigError(
            "CRMSYNC_DATABASE_URL must be a PostgreSQL URL such as "
            "postgresql+psycopg://user@host:5432/crmsync (crmsync stores data in PostgreSQL only); "
            "unset it to use the embedded database"
        )
    keys = tuple(k.strip() for k in (env.get("CRMSYNC_SECRET_KEY") or "").split(",") if k.strip())
    level = (env.get("CRMSYNC_LOG_LEVEL") or "warning").lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"CRMSYNC_LOG_LEVEL={level!r} is not one of {', '.join(LOG_LEVELS)}")
    fmt = (env.get("CRMSYNC_LOG_FORMAT") or "console").lower()
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"CRMSYNC_LOG_FORMAT={fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    return Settings(home=home, database_url=url, secret_keys=keys, log_level=level, log_format=fmt)
