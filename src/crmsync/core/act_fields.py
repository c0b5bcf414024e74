"""The vocabulary of appointment, contact and task sync (ACT): item kinds, field names, field
directions, and which directions an administrator may change (reference §6).

Both sides of a two-way sync are described with the same field names: the CRM side reads them
from its rows, the mailbox side from iCalendar (VEVENT, VTODO) and vCard, and the pure planner
(``crmsync.core.reconcile``) compares them without knowing either format. A field's value is a
plain comparable Python value (``str``, ``int``, ``bool``, ``None``, a timezone-aware
``datetime``, a ``date``, or a ``tuple`` of those); equal values mean "no change".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ItemKind(StrEnum):
    APPOINTMENT = "appointment"
    TASK = "task"
    CONTACT = "contact"


class Direction(StrEnum):
    """Which way changes of one field travel once a CRM row and a mailbox item are linked."""

    BOTH = "both"
    TO_MAILBOX = "to_mailbox"
    TO_CRM = "to_crm"
    NONE = "none"

    @property
    def to_mailbox(self) -> bool:
        return self in (Direction.BOTH, Direction.TO_MAILBOX)

    @property
    def to_crm(self) -> bool:
        return self in (Direction.BOTH, Direction.TO_CRM)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    label: str
    fixed: bool = False
    """Fixed two-way: the reference lets no administrator change it (times, organizer...)."""
    default: Direction = Direction.BOTH


def _f(name: str, label: str, *, fixed: bool = False) -> FieldSpec:
    return FieldSpec(name, label, fixed)


FIELDS: dict[ItemKind, tuple[FieldSpec, ...]] = {
    # Reference §6: Subject, Body and Location settable; time, importance, attendees, organizer,
    # regarding and show-time-as fixed two-way.
    ItemKind.APPOINTMENT: (
        _f("subject", "Subject"),
        _f("description", "Body"),
        _f("location", "Location"),
        _f("start", "Start time", fixed=True),
        _f("end", "End time", fixed=True),
        _f("is_all_day", "All day", fixed=True),
        _f("timezone", "Time zone", fixed=True),
        _f("recurrence", "Recurrence", fixed=True),
        _f("priority", "Importance", fixed=True),
        _f("organizer", "Organizer", fixed=True),
        _f("attendees", "Attendees", fixed=True),
        _f("regarding", "Regarding", fixed=True),
        _f("show_as", "Show time as", fixed=True),
        _f("status", "Status", fixed=True),
    ),
    # Reference §6: %Complete, Completed, Due, Notes, Start and Subject settable; importance,
    # regarding and status fixed.
    ItemKind.TASK: (
        _f("subject", "Subject"),
        _f("description", "Notes"),
        _f("start", "Start"),
        _f("due", "Due"),
        _f("percent_complete", "% complete"),
        _f("completed", "Completed"),
        _f("priority", "Importance", fixed=True),
        _f("regarding", "Regarding", fixed=True),
        _f("status", "Status", fixed=True),
    ),
    # Reference §6: almost every field settable; full name and company (parent) fixed.
    ItemKind.CONTACT: (
        _f("full_name", "Full name", fixed=True),
        _f("company", "Company", fixed=True),
        _f("first_name", "First name"),
        _f("last_name", "Last name"),
        _f("email", "Email"),
        _f("job_title", "Job title"),
        _f("telephone", "Business phone"),
        _f("mobile_phone", "Mobile phone"),
        _f("city", "City"),
        _f("country", "Country"),
        _f("description", "Notes"),
    ),
}

TRACK_CATEGORY = "Tracked to CRM"
"""The category (iCalendar ``CATEGORIES``, vCard ``CATEGORIES``) a user gives an item in any
client to have it tracked: mailbox -> CRM only happens for items that carry it, or that were
created from the CRM (reference §6: "created or tracked ... or given the category")."""
CRM_ID_PROPERTY = "X-CRMSYNC-ID"
"""The CRM row's id, written on every item crmsync puts in a mailbox: links survive a lost
status table, and copies of a linked item (same id, other UID) are recognised and ignored."""


def field_names(kind: ItemKind) -> tuple[str, ...]:
    return tuple(spec.name for spec in FIELDS[kind])


def spec_of(kind: ItemKind, name: str) -> FieldSpec:
    for spec in FIELDS[kind]:
        if spec.name == name:
            return spec
    known = ", ".join(field_names(kind))
    raise KeyError(f"{kind} has no field {name!r}; the fields are: {known}")
