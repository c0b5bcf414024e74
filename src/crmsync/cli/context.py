"""What every command needs, created on first use: settings, logging, engine, secret box."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from crmsync.config import Settings, load_settings
from crmsync.db import make_engine, require_current_schema, resolve_database_url
from crmsync.observability import configure_logging
from crmsync.secrets import SecretBox


@dataclass
class Context:
    settings: Settings = field(default_factory=load_settings)

    def __post_init__(self) -> None:
        configure_logging(self.settings)

    @property
    def embedded(self) -> bool:
        return self.settings.database_url is None

    @functools.cached_property
    def database_url(self) -> str:
        return resolve_database_url(self.settings)

    def engine(self, *, require_schema: bool = True) -> Engine:
        engine = make_engine(self.database_url)
        if require_schema:
            require_current_schema(engine)
        return engine

    @functools.cached_property
    def secret_box(self) -> SecretBox:
        return SecretBox(self.settings)
