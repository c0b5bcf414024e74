"""The administrator's overview: where the data lives, what is in it, how each mailbox stands."""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from crmsync.admin.mailboxes import describe, list_mailboxes
from crmsync.crm.records import Record
from crmsync.crm.settings import get_setting, org_privacy_level
from crmsync.db import current_revision, describe_url, head_revision, session_scope


def collect_status(engine: Engine, *, embedded: bool) -> dict[str, Any]:
    revision = current_revision(engine)
    with session_scope(engine) as session:
        counts = dict(
            session.execute(
                sa.select(Record.record_type, sa.func.count()).group_by(Record.record_type)
            ).all()
        )
        org_privacy = org_privacy_level(session)
        mailboxes = [describe(m, org_privacy=org_privacy) for m in list_mailboxes(session)]
        approval_required = get_setting(session, "process_email_only_for_approved_mailboxes")
    states = Counter(f"{m['state']}/{m['approval']}" for m in mailboxes)
    return {
        "database": {
            "url": describe_url(str(engine.url)),
            "embedded": embedded,
            "schema_revision": revision,
            "schema_current": revision == head_revision(),
        },
        "records": {k: counts[k] for k in sorted(counts)},
        "mailboxes": {
            "total": len(mailboxes),
            "by_state": dict(sorted(states.items())),
            "approval_required": approval_required,
            "org_privacy_level": org_privacy.value,
            "items": mailboxes,
        },
    }
