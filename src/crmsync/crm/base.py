"""Declarative base, shared column types and value sets of the CRM schema."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Value sets the pure core decides with are the core's own; the domain stores them as they are
# (the domain may depend on the core, never the reverse).
from crmsync.core.parties import PartyRole, Resolution
from crmsync.core.promote import IncomingFilter as IncomingEmailFilter

__all__ = ["IncomingEmailFilter", "PartyRole", "Resolution"]

# Deterministic constraint names, so Alembic can alter and drop them by name later.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map = {
        datetime: sa.DateTime(timezone=True),
        uuid.UUID: sa.Uuid(),
    }


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=new_id)


def created_at() -> Mapped[datetime]:
    return mapped_column(server_default=sa.func.now(), default=utcnow)


class StrEnum(enum.StrEnum):
    """Stored as its value (a short string) with a CHECK constraint; readable in SQL and JSON."""

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]


def enum_column(enum_cls: type[enum.StrEnum], name: str) -> sa.Enum:
    """Any string enum (also the pure core's, which cannot use this module's StrEnum)."""
    values = [m.value for m in enum_cls]
    return sa.Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=max(len(v) for v in values),
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class RecordState(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class Depth(StrEnum):
    """How far a role's privilege reaches (Dynamics: Basic / Local / Deep / Global)."""

    USER = "user"
    BUSINESS_UNIT = "business_unit"
    PARENT_CHILD = "parent_child"
    ORGANIZATION = "organization"
