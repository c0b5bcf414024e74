"""Stored security configuration: roles of privileges, field security profiles, shares.

The decision "may P do O on R?" is made elsewhere (crmsync.crm.security); these tables only hold
what administrators configured.
"""

from __future__ import annotations

import enum
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crmsync.crm.base import Base, Depth, enum_column, new_id


class SecurityRole(Base):
    __tablename__ = "security_role"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(100))
    external_id: Mapped[str | None] = mapped_column(sa.String(200), unique=True)
    business_unit_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("business_unit.id", ondelete="CASCADE")
    )
    """The unit the role is defined in; empty means the root (whole organization)."""
    description: Mapped[str | None] = mapped_column(sa.Text)

    privileges: Mapped[list[RolePrivilege]] = relationship(
        cascade="all, delete-orphan", lazy="selectin"
    )

    __table_args__ = (
        sa.UniqueConstraint("business_unit_id", "name"),
        # NULL business units are distinct to the constraint above: root roles need their own.
        sa.Index(
            "uq_security_role_root_name",
            "name",
            unique=True,
            postgresql_where=sa.text("business_unit_id IS NULL"),
        ),
    )


class RolePrivilege(Base):
    __tablename__ = "role_privilege"

    role_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("security_role.id", ondelete="CASCADE"), primary_key=True
    )
    privilege: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    depth: Mapped[Depth] = mapped_column(enum_column(Depth, "depth"))


class UserRole(Base):
    __tablename__ = "user_role"

    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("crm_user.id", ondelete="CASCADE"), primary_key=True
    )
    role_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("security_role.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class TeamRole(Base):
    __tablename__ = "team_role"

    team_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("team.id", ondelete="CASCADE"), primary_key=True
    )
    role_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("security_role.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class SecuredField(Base):
    """A field that only holders of a field security profile granting it may read or change."""

    __tablename__ = "secured_field"

    record_type: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    field: Mapped[str] = mapped_column(sa.String(64), primary_key=True)


class FieldSecurityProfile(Base):
    __tablename__ = "field_security_profile"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    external_id: Mapped[str | None] = mapped_column(sa.String(200), unique=True)

    permissions: Mapped[list[FieldPermission]] = relationship(
        cascade="all, delete-orphan", lazy="selectin"
    )


class FieldPermission(Base):
    __tablename__ = "field_permission"

    profile_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("field_security_profile.id", ondelete="CASCADE"), primary_key=True
    )
    record_type: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    field: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    can_read: Mapped[bool] = mapped_column(default=False)
    can_create: Mapped[bool] = mapped_column(default=False)
    can_update: Mapped[bool] = mapped_column(default=False)


class FieldProfileMember(Base):
    """A user or team that holds a field security profile."""

    __tablename__ = "field_profile_member"

    profile_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("field_security_profile.id", ondelete="CASCADE"), primary_key=True
    )
    principal_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class AccessRight(enum.IntFlag):
    """Rights a share grants on one record."""

    READ = 1
    WRITE = 2
    DELETE = 4
    APPEND = 8
    APPEND_TO = 16
    ASSIGN = 32
    SHARE = 64


class RecordShare(Base):
    """One record shared with one user or team, with the rights granted."""

    __tablename__ = "record_share"

    record_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True
    )
    principal_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    rights: Mapped[int] = mapped_column(default=int(AccessRight.READ))

    __table_args__ = (sa.CheckConstraint("rights > 0 AND rights < 128", name="rights_range"),)
