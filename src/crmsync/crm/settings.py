"""Organization-wide settings: defaults in code, overrides in the ``org_setting`` table."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from crmsync.crm.mailboxes import OrgSetting
from crmsync.errors import InvalidInput

DEFAULTS: dict[str, Any] = {
    # reference §1: "Process emails only for approved users/queues" is on by default
    # (later issues add their settings here, each with the reference's default)
    "process_email_only_for_approved_mailboxes": True,
}


def get_setting(session: Session, key: str) -> Any:
    if key not in DEFAULTS:
        raise InvalidInput(f"unknown organization setting {key!r}; known: {', '.join(DEFAULTS)}")
    row = session.get(OrgSetting, key)
    return DEFAULTS[key] if row is None else row.value


def all_settings(session: Session) -> dict[str, Any]:
    stored = {r.key: r.value for r in session.scalars(sa.select(OrgSetting))}
    return {k: stored.get(k, v) for k, v in DEFAULTS.items()}
