"""Resolving references by external id to rows of this import or records in the database.

The directory knows, per (record type, external id): the database id the row has or will get,
its business unit (owners pass theirs on), and whether it loaded. It is filled with this run's
rows before they are written (new rows get their id up front, so a row may name a row later in
the same batch) and with database records fetched in bulk per type. Resolution itself is pure.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from crmsync.importing.values import Ref
from crmsync.importing.values import with_article as _a

LABELS = {
    "business_unit": "business unit",
    "user": "user",
    "team": "team",
    "role": "role",
    "account": "account",
    "contact": "contact",
    "lead": "lead",
    "opportunity": "opportunity",
    "case": "case",
}

# How a list field names one of its items in messages: members "u-9" -> member "u-9".
ITEM_NAMES = {"members": "member", "roles": "role"}


class RefProblem(ValueError):
    """A reference that cannot be used; the message names the field's value and why."""


@dataclass
class Entry:
    id: uuid.UUID
    record_type: str
    business_unit_id: uuid.UUID | None = None
    origin: str | None = None
    """``users.csv line 4`` for a row of this import; None for a record already in the database."""
    can_own: bool = True
    """False for access teams, which only receive shares (Dynamics: they cannot own records)."""
    stored: bool = True
    """Already in the database before this import (so a refused update leaves the old one)."""
    failed: bool = False
    """A new row of this import that was refused: nothing to point to."""


def _either(types: Iterable[str]) -> str:
    labels = [LABELS[t] for t in types]
    if len(labels) == 1:
        return _a(labels[0])
    return _a(labels[0]) + "".join(f" or {label}" for label in labels[1:-1]) + f" or {labels[-1]}"


class Directory:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}
        self._refused: dict[tuple[str, str], str] = {}

    def add(self, record_type: str, ext_id: str, entry: Entry) -> None:
        self._entries[(record_type, ext_id)] = entry

    def get(self, record_type: str, ext_id: str) -> Entry | None:
        return self._entries.get((record_type, ext_id))

    def note_refused(self, record_type: str, ext_id: str, origin: str) -> None:
        """A row of this import that failed validation: references to it get a pointed message."""
        self._refused.setdefault((record_type, ext_id), origin)

    def unknown(self, refs: Iterable[tuple[Ref, tuple[str, ...]]]) -> dict[str, set[str]]:
        """External ids, per record type, that the directory cannot answer yet."""
        wanted: dict[str, set[str]] = {}
        for ref, targets in refs:
            for record_type in (ref.record_type,) if ref.record_type else targets:
                if (record_type, ref.ext_id) not in self._entries:
                    wanted.setdefault(record_type, set()).add(ref.ext_id)
        return wanted

    def resolve(self, field: str, ref: Ref, targets: tuple[str, ...]) -> Entry:
        """The row or record a reference names; raises RefProblem with a message for the user."""
        noun = ITEM_NAMES.get(field, field)
        candidates = (ref.record_type,) if ref.record_type else targets
        found = [e for t in candidates if (e := self._entries.get((t, ref.ext_id))) is not None]
        if len(found) > 1:
            forms = " or ".join(f"{e.record_type}:{ref.ext_id}" for e in found)
            kinds = " and ".join(_a(LABELS[e.record_type]) for e in found)
            raise RefProblem(f'{noun} "{ref.ext_id}" is both {kinds}; write {forms}')
        if found:
            entry = found[0]
            if entry.failed:
                raise RefProblem(
                    f'{noun} "{ref.ext_id}" is {_a(LABELS[entry.record_type])} whose row was not '
                    f"imported ({entry.origin})"
                )
            return entry
        refused = [
            (t, origin) for t in candidates if (origin := self._refused.get((t, ref.ext_id)))
        ]
        if refused:
            record_type, origin = refused[0]
            raise RefProblem(
                f'{noun} "{ref.ext_id}" is {_a(LABELS[record_type])} whose row has errors '
                f"({origin})"
            )
        raise RefProblem(
            f'{noun} "{ref.ext_id}" is not {_either(candidates)} in this import or in the database'
        )
