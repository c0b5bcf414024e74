"""The rows of one batch, written with one multi-row INSERT per table.

A first sync stores thousands of emails, each spread over five tables (record, activity, email,
parties, attachments) plus its decision and mailbox link. Built as ORM objects, the Python-side
bookkeeping of the unit of work costs more than the database does; here each row is a plain
dict and each table gets one ``INSERT ... VALUES (...), (...)`` per batch (SQLAlchemy's
insertmanyvalues). Column defaults declared on the models still apply.

Rows go in dependency order (records before activities before emails before parties), so
foreign keys between rows of the same batch hold; an email may point at another email of the
same batch (its correlation), which one multi-row INSERT satisfies because PostgreSQL checks
those keys at the end of the statement.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from crmsync.crm.activities import Activity, ActivityParty, Attachment, Email
from crmsync.crm.decisions import MessageDecision
from crmsync.crm.records import Record
from crmsync.crm.tracking import TrackedMessage

_TABLES: dict[str, sa.Table] = {
    "record": Record.__table__,  # type: ignore[dict-item]
    "activity": Activity.__table__,  # type: ignore[dict-item]
    "email": Email.__table__,  # type: ignore[dict-item]
    "party": ActivityParty.__table__,  # type: ignore[dict-item]
    "attachment": Attachment.__table__,  # type: ignore[dict-item]
    "decision": MessageDecision.__table__,  # type: ignore[dict-item]
}
_ORDER = ("record", "activity", "email", "party", "attachment", "decision")


@dataclass
class BatchRows:
    rows: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {name: [] for name in _ORDER}
    )
    links: list[dict[str, Any]] = field(default_factory=list)

    def add_email(
        self,
        *,
        record: dict[str, Any],
        activity: dict[str, Any],
        email: dict[str, Any],
        parties: Sequence[dict[str, Any]],
        attachments: Sequence[dict[str, Any]],
    ) -> None:
        email_id = record["id"]
        self.rows["record"].append({"record_type": "email", **record})
        self.rows["activity"].append({"id": email_id, **activity})
        self.rows["email"].append({"id": email_id, **email})
        for party in parties:
            self.rows["party"].append({"id": uuid.uuid4(), "activity_id": email_id, **party})
        for attachment in attachments:
            self.rows["attachment"].append(
                {"id": uuid.uuid4(), "activity_id": email_id, **attachment}
            )

    def add_decision(self, values: dict[str, Any]) -> None:
        self.rows["decision"].append({"id": uuid.uuid4(), **values})

    def add_link(self, values: dict[str, Any]) -> None:
        self.links.append({"id": uuid.uuid4(), **values})

    def write(self, session: Session) -> None:
        for name in _ORDER:
            rows = self.rows[name]
            if rows:
                session.execute(sa.insert(_TABLES[name]), _uniform(rows))
        if self.links:
            # A second copy of a message in the same mailbox (a duplicate delivery) links once.
            session.execute(
                insert(TrackedMessage.__table__)
                .values(_uniform(self.links))
                .on_conflict_do_nothing(index_elements=["email_id", "mailbox_id"])
            )


def _uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row with the same keys (a multi-row INSERT needs one column list); a key missing
    from a row takes the column's default, so rows that have one keep theirs."""
    keys: set[str] = set()
    for row in rows:
        keys.update(row)
    if all(len(row) == len(keys) for row in rows):
        return rows
    missing = [k for k in keys if not all(k in row for row in rows)]
    raise ValueError(f"batch rows differ in their columns: {sorted(missing)}")
