"""The administrator's overview: where the data lives, what is in it, how each mailbox stands."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.admin.mailboxes import describe, list_mailboxes
from crmsync.crm.alerts import Alert
from crmsync.crm.base import utcnow
from crmsync.crm.mailboxes import Mailbox
from crmsync.crm.records import Record
from crmsync.crm.settings import get_setting, org_privacy_level
from crmsync.db import current_revision, describe_url, head_revision, session_scope
from crmsync.scheduler.dispatch import syncable


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
        service = _service(session)
    states = Counter(f"{m['state']}/{m['approval']}" for m in mailboxes)
    return {
        "database": {
            "url": describe_url(str(engine.url)),
            "embedded": embedded,
            "schema_revision": revision,
            "schema_current": revision == head_revision(),
        },
        "records": {k: counts[k] for k in sorted(counts)},
        "service": service,
        "mailboxes": {
            "total": len(mailboxes),
            "by_state": dict(sorted(states.items())),
            "approval_required": approval_required,
            "org_privacy_level": org_privacy.value,
            "items": mailboxes,
        },
    }


def _service(session: Session) -> dict[str, Any]:
    """How the sync service stands: live workers, queued and running jobs, overdue mailboxes,
    push connections, unread alerts."""
    now = utcnow()
    jobs = dict(
        session.execute(
            sa.text(
                "SELECT status::text, count(*) FROM procrastinate_jobs "
                "WHERE status IN ('todo', 'doing') GROUP BY status"
            )
        ).all()
    )
    workers = session.scalar(
        sa.text(
            "SELECT count(*) FROM procrastinate_workers "
            "WHERE last_heartbeat > now() - interval '60 seconds'"
        )
    )
    overdue = session.scalar(
        sa.select(sa.func.count()).where(
            *syncable(), Mailbox.next_sync_at < now - timedelta(minutes=1)
        )
    )
    push = dict(
        session.execute(
            sa.select(Mailbox.push_state, sa.func.count())
            .where(Mailbox.push_state.is_not(None))
            .group_by(Mailbox.push_state)
        ).all()
    )
    alerts = session.scalar(
        sa.select(sa.func.count()).select_from(Alert).where(Alert.read_at.is_(None))
    )
    return {
        "live_workers": int(workers or 0),
        "queued_jobs": int(jobs.get("todo", 0)),
        "running_jobs": int(jobs.get("doing", 0)),
        "overdue_mailboxes": int(overdue or 0),
        "push": {str(k): int(v) for k, v in sorted(push.items())},
        "unread_alerts": int(alerts or 0),
    }
