"""CRM records: one supertype table for every record, one table per record type.

Every record (a user, a team, an account, an email activity...) has a row in ``record`` carrying
what all types share: id, type, external id, owner, owning business unit, state, timestamps. So
"owner" and "regarding" are single foreign keys to ``record.id`` that work for every type, present
and future, without one column per type; type-specific columns live in the subtype's table
(SQLAlchemy joined-table inheritance).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crmsync.core.addresses import normalize_address as canonical_address
from crmsync.core.parties import AutoCreate
from crmsync.crm.base import (
    Base,
    IncomingEmailFilter,
    RecordState,
    StrEnum,
    created_at,
    enum_column,
    new_id,
    utcnow,
)
from crmsync.errors import InvalidInput


class Record(Base):
    __tablename__ = "record"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    record_type: Mapped[str] = mapped_column(sa.String(32), index=True)
    name: Mapped[str] = mapped_column(sa.String(400), default="")
    """Primary display name (account name, contact's full name, activity subject...)."""
    external_id: Mapped[str | None] = mapped_column(sa.String(200))
    """Key of the row in the system it was imported from; unique per record type."""
    owner_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("record.id", ondelete="RESTRICT"), index=True
    )
    """A user or team; empty for organization-owned types (business units, users, teams)."""
    business_unit_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("record.id", ondelete="RESTRICT"), index=True
    )
    """Owning business unit (for a user: the unit they belong to)."""
    state: Mapped[RecordState] = mapped_column(
        enum_column(RecordState, "record_state"), default=RecordState.ACTIVE
    )
    created_at: Mapped[datetime] = created_at()
    modified_at: Mapped[datetime] = mapped_column(
        server_default=sa.func.now(), default=utcnow, onupdate=utcnow
    )
    version: Mapped[int] = mapped_column(default=1)
    """Incremented on every update: optimistic concurrency for the sync engines."""

    owner: Mapped[Record | None] = relationship(
        remote_side=[id], foreign_keys=[owner_id], lazy="joined", join_depth=1
    )
    email_addresses: Mapped[list[EmailAddress]] = relationship(
        back_populates="record",
        cascade="all, delete-orphan",
        order_by="EmailAddress.slot",
        lazy="selectin",
    )

    __table_args__ = (
        sa.Index(
            "uq_record_type_external_id",
            "record_type",
            "external_id",
            unique=True,
            postgresql_where=sa.text("external_id IS NOT NULL"),
        ),
    )
    __mapper_args__ = {
        "polymorphic_on": "record_type",
        "polymorphic_identity": "record",
        "version_id_col": version,
    }

    @property
    def primary_email(self) -> str | None:
        return self.email_addresses[0].address if self.email_addresses else None

    def set_email(self, address: str | None, slot: int = 1) -> None:
        """Set (or clear with None) the address in slot 1..3."""
        existing = next((e for e in self.email_addresses if e.slot == slot), None)
        if address is None:
            if existing is not None:
                self.email_addresses.remove(existing)
            return
        normalized = canonical_address(address)
        if normalized is None:
            raise InvalidInput(f"{address!r} is not an email address")
        if existing is not None:
            existing.address = normalized
        else:
            self.email_addresses.append(EmailAddress(slot=slot, address=normalized))


def normalize_address(address: str) -> str:
    """The one canonical form crmsync stores and compares addresses in (core.addresses: lower
    case, display name dropped, IDNA domains decoded so punycode and Unicode forms match).

    Text that does not parse as one address (a username given where an address may be) comes
    back trimmed and lower-cased, so look-ups by "username or address" still work."""
    return canonical_address(address) or address.strip().lower()


class EmailAddress(Base):
    """An address of an email-enabled record: the index that party resolution searches."""

    __tablename__ = "email_address"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    record_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("record.id", ondelete="CASCADE"))
    slot: Mapped[int] = mapped_column(sa.SmallInteger, default=1)
    """1 is the primary address (Dynamics' emailaddress1); 2 and 3 are alternates."""
    address: Mapped[str] = mapped_column(sa.String(320), index=True)
    """Lower-cased; compared case-insensitively everywhere."""

    record: Mapped[Record] = relationship(back_populates="email_addresses")

    __table_args__ = (
        sa.UniqueConstraint("record_id", "slot"),
        sa.CheckConstraint("slot BETWEEN 1 AND 3", name="slot_range"),
        sa.CheckConstraint(
            "address = lower(address) AND address LIKE '%_@_%'", name="address_form"
        ),
    )


# --- organization ---------------------------------------------------------------------------


class BusinessUnit(Record):
    __tablename__ = "business_unit"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True
    )
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("business_unit.id", ondelete="RESTRICT"), index=True
    )
    """Empty for the root unit, which stands for the whole organization."""

    __mapper_args__ = {
        "polymorphic_identity": "business_unit",
        "inherit_condition": id == Record.id,
    }


class User(Record):
    __tablename__ = "crm_user"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True
    )
    username: Mapped[str] = mapped_column(sa.String(200))
    """Unique regardless of case (see the index below)."""
    first_name: Mapped[str | None] = mapped_column(sa.String(100))
    last_name: Mapped[str | None] = mapped_column(sa.String(100))
    is_disabled: Mapped[bool] = mapped_column(default=False)
    allow_send_on_behalf: Mapped[bool] = mapped_column(default=False)
    """The user's consent that others with the send-as privilege send email as them."""
    incoming_email_filter: Mapped[IncomingEmailFilter] = mapped_column(
        enum_column(IncomingEmailFilter, "incoming_email_filter"),
        default=IncomingEmailFilter.RESPONSES,
    )
    auto_create_records: Mapped[AutoCreate] = mapped_column(
        enum_column(AutoCreate, "auto_create_records"),
        default=AutoCreate.NONE,
        server_default=AutoCreate.NONE.value,
    )
    """Personal option "Automatically create records": a contact or lead for an unknown
    sender of a tracked email (reference §3; the org switch must allow it too)."""
    password_hash: Mapped[str | None] = mapped_column(sa.String(300))
    """For the web faces (later); never the mailbox password."""

    teams: Mapped[list[Team]] = relationship(
        secondary="team_membership", back_populates="members", lazy="selectin"
    )

    __table_args__ = (sa.Index("uq_crm_user_username_lower", sa.func.lower(username), unique=True),)
    __mapper_args__ = {
        "polymorphic_identity": "user",
        "inherit_condition": id == Record.id,
    }


class TeamType(StrEnum):
    OWNER = "owner"
    """May own records."""
    ACCESS = "access"
    """Only receives shares (as in Dynamics)."""


class Team(Record):
    __tablename__ = "team"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True
    )
    team_type: Mapped[TeamType] = mapped_column(
        enum_column(TeamType, "team_type"), default=TeamType.OWNER
    )

    members: Mapped[list[User]] = relationship(
        secondary="team_membership", back_populates="teams", lazy="selectin"
    )

    __mapper_args__ = {
        "polymorphic_identity": "team",
        "inherit_condition": id == Record.id,
    }


class TeamMembership(Base):
    __tablename__ = "team_membership"

    team_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("team.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("crm_user.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Queue(Record):
    """A shared mailbox (support@, sales@) that tracks email for a team rather than a person."""

    __tablename__ = "queue"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True
    )
    incoming_email_filter: Mapped[IncomingEmailFilter] = mapped_column(
        enum_column(IncomingEmailFilter, "incoming_email_filter"),
        default=IncomingEmailFilter.RESPONSES,
    )

    __mapper_args__ = {
        "polymorphic_identity": "queue",
        "inherit_condition": id == Record.id,
    }


# --- customers and sales --------------------------------------------------------------------


class Account(Record):
    __tablename__ = "account"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True
    )
    account_number: Mapped[str | None] = mapped_column(sa.String(40))
    website: Mapped[str | None] = mapped_column(sa.String(200))
    telephone: Mapped[str | None] = mapped_column(sa.String(50))
    industry: Mapped[str | None] = mapped_column(sa.String(100))
    city: Mapped[str | None] = mapped_column(sa.String(100))
    country: Mapped[str | None] = mapped_column(sa.String(100))
    parent_account_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("account.id", ondelete="SET NULL"), index=True
    )

    __mapper_args__ = {
        "polymorphic_identity": "account",
        "inherit_condition": id == Record.id,
    }


class Contact(Record):
    __tablename__ = "contact"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True
    )
    first_name: Mapped[str | None] = mapped_column(sa.String(100))
    last_name: Mapped[str] = mapped_column(sa.String(100))
    job_title: Mapped[str | None] = mapped_column(sa.String(100))
    telephone: Mapped[str | None] = mapped_column(sa.String(50))
    mobile_phone: Mapped[str | None] = mapped_column(sa.String(50))
    city: Mapped[str | None] = mapped_column(sa.String(100))
    country: Mapped[str | None] = mapped_column(sa.String(100))
    parent_customer_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("record.id", ondelete="SET NULL"), index=True
    )
    """The account (company) the contact works for."""

    __mapper_args__ = {
        "polymorphic_identity": "contact",
        "inherit_condition": id == Record.id,
    }


class LeadStatus(StrEnum):
    NEW = "new"
    CONTACTED = "contacted"
    QUALIFIED = "qualified"
    DISQUALIFIED = "disqualified"


class Lead(Record):
    __tablename__ = "lead"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True
    )
    first_name: Mapped[str | None] = mapped_column(sa.String(100))
    last_name: Mapped[str | None] = mapped_column(sa.String(100))
    company_name: Mapped[str | None] = mapped_column(sa.String(200))
    topic: Mapped[str | None] = mapped_column(sa.String(300))
    telephone: Mapped[str | None] = mapped_column(sa.String(50))
    lead_source: Mapped[str | None] = mapped_column(sa.String(50))
    status: Mapped[LeadStatus] = mapped_column(
        enum_column(LeadStatus, "lead_status"), default=LeadStatus.NEW
    )

    __mapper_args__ = {
        "polymorphic_identity": "lead",
        "inherit_condition": id == Record.id,
    }


class OpportunityStatus(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


class Opportunity(Record):
    __tablename__ = "opportunity"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("record.id", ondelete="SET NULL"), index=True
    )
    """An account or a contact."""
    estimated_value: Mapped[Decimal | None] = mapped_column(sa.Numeric(16, 2))
    currency: Mapped[str] = mapped_column(sa.String(3), default="EUR")
    estimated_close_date: Mapped[date | None] = mapped_column(sa.Date)
    probability: Mapped[int | None] = mapped_column(sa.SmallInteger)
    status: Mapped[OpportunityStatus] = mapped_column(
        enum_column(OpportunityStatus, "opportunity_status"), default=OpportunityStatus.OPEN
    )

    __table_args__ = (
        sa.CheckConstraint("probability BETWEEN 0 AND 100", name="probability_range"),
    )
    __mapper_args__ = {
        "polymorphic_identity": "opportunity",
        "inherit_condition": id == Record.id,
    }


class CaseStatus(StrEnum):
    ACTIVE = "active"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"


class CasePriority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class Case(Record):
    """A customer service case (Dynamics' 'incident')."""

    __tablename__ = "crm_case"

    id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("record.id", ondelete="CASCADE"), primary_key=True
    )
    case_number: Mapped[str | None] = mapped_column(sa.String(40), unique=True)
    customer_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("record.id", ondelete="SET NULL"), index=True
    )
    priority: Mapped[CasePriority] = mapped_column(
        enum_column(CasePriority, "case_priority"), default=CasePriority.NORMAL
    )
    status: Mapped[CaseStatus] = mapped_column(
        enum_column(CaseStatus, "case_status"), default=CaseStatus.ACTIVE
    )
    origin: Mapped[str | None] = mapped_column(sa.String(20))

    __mapper_args__ = {
        "polymorphic_identity": "case",
        "inherit_condition": id == Record.id,
    }
