"""What each importable type's rows may contain, and checking one row against that.

One ``TypeSpec`` per type lists its fields: how to read each value, whether it is required, which
model attribute it sets, and which record types a reference may name. Text limits come from the
model's columns so they never drift from the schema. Validation here is pure Python: it needs no
database, and it reports every problem of a row at once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crmsync.crm.base import IncomingEmailFilter, RecordState
from crmsync.crm.records import (
    Account,
    BusinessUnit,
    Case,
    CasePriority,
    CaseStatus,
    Contact,
    Lead,
    LeadStatus,
    Opportunity,
    OpportunityStatus,
    Team,
    User,
)
from crmsync.crm.roles import SecurityRole
from crmsync.importing import values as v
from crmsync.importing.report import RowError
from crmsync.importing.rows import SourceRow, ValidRow


class Kind(enum.Enum):
    TEXT = "text"
    BOOL = "bool"
    INT = "int"
    DECIMAL = "decimal"
    DATE = "date"
    CHOICE = "choice"
    EMAIL = "email"
    CURRENCY = "currency"
    REF = "ref"
    REFS = "refs"
    PRIVILEGES = "privileges"


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    required: bool = False
    attr: str | None = None
    """Model attribute the value (or, for a reference, the referenced record's id) goes to."""
    slot: int | None = None
    """For email fields: the address slot (1 primary, 2, 3)."""
    max_length: int | None = None
    precision: int | None = None
    scale: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    """Record types a reference may name, e.g. ("user", "team") for an owner."""


@dataclass(frozen=True)
class TypeSpec:
    key: str
    """Type name in files and reports: ``contacts``."""
    record_type: str
    """Record type in the database (``contact``); roles use ``role``."""
    label: str
    """For messages: ``contact``, ``business unit``."""
    model: type
    fields: tuple[Field, ...]
    owned: bool = False
    """Accounts, contacts, leads, opportunities and cases have an owner (a user or team)."""
    parent_field: str | None = None
    """A field naming another row of the same type, loaded parents first."""
    check: Callable[[dict[str, Any]], list[tuple[str, str]]] | None = None
    """Rules spanning fields: returns (field, message) pairs."""

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


def _limit(model: type, attr: str) -> int | None:
    column_type = model.__mapper__.columns[attr].type  # type: ignore[attr-defined]
    return getattr(column_type, "length", None)


def _text(model: type, name: str, attr: str | None = None, required: bool = False) -> Field:
    attr = attr or name
    return Field(name, Kind.TEXT, required, attr=attr, max_length=_limit(model, attr))


def _choice(name: str, choices: list[str], attr: str | None = None) -> Field:
    return Field(name, Kind.CHOICE, attr=attr or name, choices=tuple(choices))


def _ref(name: str, targets: tuple[str, ...], attr: str | None, required: bool = False) -> Field:
    return Field(name, Kind.REF, required, attr=attr, targets=targets)


ID = Field(
    "id", Kind.TEXT, True, attr="external_id", max_length=_limit(BusinessUnit, "external_id")
)
STATE = _choice("state", RecordState.values())
EMAILS = tuple(
    Field(name, Kind.EMAIL, slot=slot)
    for slot, name in enumerate(("email", "email2", "email3"), start=1)
)
OWNER = _ref("owner", ("user", "team"), attr=None)  # sets owner and business unit: see loader
CUSTOMER_TARGETS = ("account", "contact")


def _lead_check(values: dict[str, Any]) -> list[tuple[str, str]]:
    if values.get("last_name") is None and values.get("company_name") is None:
        return [("last_name", "a lead needs a last_name or a company_name; this row has neither")]
    return []


SPECS: dict[str, TypeSpec] = {
    spec.key: spec
    for spec in (
        TypeSpec(
            "business_units",
            "business_unit",
            "business unit",
            BusinessUnit,
            (
                ID,
                _text(BusinessUnit, "name", required=True),
                _ref("parent", ("business_unit",), attr="parent_id"),
                STATE,
            ),
            parent_field="parent",
        ),
        TypeSpec(
            "roles",
            "role",
            "role",
            SecurityRole,
            (
                Field("id", Kind.TEXT, True, attr="external_id", max_length=200),
                _text(SecurityRole, "name", required=True),
                _ref("business_unit", ("business_unit",), attr="business_unit_id"),
                Field("description", Kind.TEXT, attr="description"),
                Field("privileges", Kind.PRIVILEGES),
            ),
        ),
        TypeSpec(
            "users",
            "user",
            "user",
            User,
            (
                ID,
                _text(User, "username", required=True),
                _text(User, "first_name"),
                _text(User, "last_name"),
                *EMAILS,
                _ref("business_unit", ("business_unit",), attr="business_unit_id"),
                Field("roles", Kind.REFS, targets=("role",)),
                Field("is_disabled", Kind.BOOL, attr="is_disabled"),
                Field("allow_send_on_behalf", Kind.BOOL, attr="allow_send_on_behalf"),
                _choice("incoming_email_filter", [f.value for f in IncomingEmailFilter]),
                STATE,
            ),
        ),
        TypeSpec(
            "teams",
            "team",
            "team",
            Team,
            (
                ID,
                _text(Team, "name", required=True),
                _choice("team_type", ["owner", "access"]),
                _ref("business_unit", ("business_unit",), attr="business_unit_id"),
                Field("members", Kind.REFS, targets=("user",)),
                Field("roles", Kind.REFS, targets=("role",)),
                *EMAILS,
                STATE,
            ),
        ),
        TypeSpec(
            "accounts",
            "account",
            "account",
            Account,
            (
                ID,
                _text(Account, "name", required=True),
                _text(Account, "account_number"),
                _text(Account, "website"),
                _text(Account, "telephone"),
                _text(Account, "industry"),
                _text(Account, "city"),
                _text(Account, "country"),
                _ref("parent_account", ("account",), attr="parent_account_id"),
                OWNER,
                *EMAILS,
                STATE,
            ),
            owned=True,
            parent_field="parent_account",
        ),
        TypeSpec(
            "contacts",
            "contact",
            "contact",
            Contact,
            (
                ID,
                _text(Contact, "first_name"),
                _text(Contact, "last_name", required=True),
                _text(Contact, "job_title"),
                _text(Contact, "telephone"),
                _text(Contact, "mobile_phone"),
                _text(Contact, "city"),
                _text(Contact, "country"),
                _ref("account", ("account",), attr="parent_customer_id"),
                OWNER,
                *EMAILS,
                STATE,
            ),
            owned=True,
        ),
        TypeSpec(
            "leads",
            "lead",
            "lead",
            Lead,
            (
                ID,
                _text(Lead, "first_name"),
                _text(Lead, "last_name"),
                _text(Lead, "company_name"),
                _text(Lead, "topic"),
                _text(Lead, "telephone"),
                _text(Lead, "lead_source"),
                _choice("status", LeadStatus.values()),
                OWNER,
                *EMAILS,
                STATE,
            ),
            owned=True,
            check=_lead_check,
        ),
        TypeSpec(
            "opportunities",
            "opportunity",
            "opportunity",
            Opportunity,
            (
                ID,
                _text(Opportunity, "name", required=True),
                _ref("customer", CUSTOMER_TARGETS, attr="customer_id"),
                Field(
                    "estimated_value",
                    Kind.DECIMAL,
                    attr="estimated_value",
                    precision=Opportunity.__table__.c.estimated_value.type.precision,
                    scale=Opportunity.__table__.c.estimated_value.type.scale,
                ),
                Field("currency", Kind.CURRENCY, attr="currency"),
                Field("estimated_close_date", Kind.DATE, attr="estimated_close_date"),
                Field("probability", Kind.INT, attr="probability", minimum=0, maximum=100),
                _choice("status", OpportunityStatus.values()),
                OWNER,
                STATE,
            ),
            owned=True,
        ),
        TypeSpec(
            "cases",
            "case",
            "case",
            Case,
            (
                ID,
                _text(Case, "name", required=True),
                _text(Case, "case_number"),
                _ref("customer", CUSTOMER_TARGETS, attr="customer_id", required=True),
                _choice("priority", CasePriority.values()),
                _choice("status", CaseStatus.values()),
                _text(Case, "origin"),
                OWNER,
                STATE,
            ),
            owned=True,
        ),
    )
}

LOAD_ORDER: tuple[str, ...] = tuple(SPECS)
"""Dependency order: every reference points to an earlier type (or, for parents, the same)."""

BY_RECORD_TYPE = {spec.record_type: spec for spec in SPECS.values()}

_ALIASES = {
    **{key: key for key in SPECS},
    **{spec.record_type: spec.key for spec in SPECS.values()},
    "security_roles": "roles",
    "security_role": "roles",
    "businessunits": "business_units",
    "businessunit": "business_units",
    "incidents": "cases",
    "incident": "cases",
}


def canonical_type(name: str) -> str | None:
    """``Contacts``, ``contact``, ``business-units`` -> the type key; None if not a type."""
    return _ALIASES.get(name.strip().lower().replace("-", "_").replace(" ", "_"))


def type_names() -> str:
    return ", ".join(SPECS)


def convert(f: Field, raw: Any) -> Any:
    """The typed value of a non-empty raw value; raises ValueProblem."""
    match f.kind:
        case Kind.TEXT:
            return v.parse_text(raw, f.max_length)
        case Kind.BOOL:
            return v.parse_bool(raw)
        case Kind.INT:
            return v.parse_int(raw, f.minimum, f.maximum)
        case Kind.DECIMAL:
            return v.parse_decimal(raw, f.precision, f.scale)
        case Kind.DATE:
            return v.parse_date(raw)
        case Kind.CHOICE:
            return v.parse_choice(raw, f.choices, f.name.replace("_", " "))
        case Kind.EMAIL:
            return v.parse_email(raw)
        case Kind.CURRENCY:
            code = v.parse_text(raw).upper()
            if len(code) != 3 or not code.isascii() or not code.isalpha():
                raise v.ValueProblem(f"{v.show(raw)} is not a currency code; use e.g. EUR or SEK")
            return code
        case Kind.REF:
            return v.parse_ref(raw, f.targets)
        case Kind.REFS:
            return v.parse_ref_list(raw, f.targets)
        case Kind.PRIVILEGES:
            return v.parse_privileges(raw)
    raise AssertionError(f.kind)  # pragma: no cover


def validate_row(row: SourceRow) -> tuple[ValidRow | None, list[RowError]]:
    """Check one row's fields; the row is usable only if no errors come back."""
    spec = SPECS[row.type_key]
    errors: list[RowError] = []
    typed: dict[str, Any] = {}

    def problem(field: str | None, message: str) -> None:
        errors.append(RowError(row.file, row.line, field, message))

    for name, raw in row.data.items():
        f = spec.field(name)
        if f is None:
            problem(name, f"unknown field; the fields of {spec.key} are: {', '.join(spec.columns)}")
            continue
        if v.is_empty(raw) or (f.kind in (Kind.REFS, Kind.PRIVILEGES) and raw == []):
            typed[name] = [] if f.kind is Kind.REFS else {} if f.kind is Kind.PRIVILEGES else None
            continue
        try:
            typed[name] = convert(f, raw)
        except v.ValueProblem as exc:
            problem(name, str(exc))

    failed = {e.field for e in errors}
    for f in spec.fields:
        if f.required and f.name not in failed and typed.get(f.name) is None:
            problem(f.name, f"a value is required: every {spec.label} needs {f.name}")
    if spec.check is not None and not errors:
        for name, message in spec.check(typed):
            problem(name, message)
    ext_id = typed.get("id")
    if spec.parent_field and ext_id is not None:
        parent = typed.get(spec.parent_field)
        if isinstance(parent, v.Ref) and parent.ext_id == ext_id:
            problem(spec.parent_field, f"{v.with_article(spec.label)} cannot be its own parent")
    if errors or not isinstance(ext_id, str):
        return None, errors
    return ValidRow(row, ext_id, typed), []
