"""A finished run's effect on its mailbox: the next run, or disabling and alerts.

Called in the transaction that records the run's outcome (``crmsync.sync.incoming._finish``), so
the outcome, the next run and any alert commit together or not at all. The rules are the pure
policy's (``crmsync.core.schedule``); this module only loads its inputs from the mailbox row
and writes its answer back:

- ``sync_history`` keeps the newest outcomes as JSON, ``last_error_count`` the error streak;
- a ``RUN`` plan sets ``next_sync_at`` (divided by the org's ``schedule_speedup``, 1 in real
  use) with ``schedule_code`` / ``schedule_reason`` saying why;
- a ``DISABLE`` plan disables the mailbox, says why in ``disabled_reason`` and alerts the
  mailbox's owner and its profile's owner; a first transient error warns them once;
- when more of a profile's mailboxes fail than its ``failure_alert_percent``, the profile's
  owner is alerted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from crmsync.core.schedule import (
    Action,
    MailboxHistory,
    Plan,
    RunOutcome,
    ScheduleSettings,
    next_run,
    profile_alert,
    record,
)
from crmsync.crm.alerts import Severity, raise_alert
from crmsync.crm.mailboxes import EmailServerProfile, Mailbox, MailboxState
from crmsync.crm.settings import get_setting

PUSH_LIVE = "live"
"""``Mailbox.push_state`` while an IDLE watcher holds a live connection (``PushState.LIVE``)."""


def outcome_to_json(outcome: RunOutcome) -> dict[str, Any]:
    return {
        "finished_at": outcome.finished_at.isoformat(),
        "items": outcome.items,
        "error_code": outcome.error_code,
        "transient": outcome.transient,
    }


def outcome_from_json(data: dict[str, Any]) -> RunOutcome:
    return RunOutcome(
        finished_at=datetime.fromisoformat(data["finished_at"]),
        items=int(data.get("items", 0)),
        error_code=data.get("error_code"),
        transient=data.get("transient"),
    )


def history_of(mailbox: Mailbox) -> MailboxHistory:
    """What the policy knows of a mailbox: its stored outcomes, error streak and push state.
    Unreadable stored outcomes are dropped (the worst effect: one normal 5-minute interval)."""
    outcomes: list[RunOutcome] = []
    for item in mailbox.sync_history or []:
        try:
            outcomes.append(outcome_from_json(item))
        except (KeyError, TypeError, ValueError):
            continue
    return MailboxHistory(
        outcomes=tuple(outcomes),
        error_count=max(mailbox.last_error_count or 0, 0),
        push_live=mailbox.push_state == PUSH_LIVE,
    )


def settings_of(mailbox: Mailbox) -> ScheduleSettings:
    profile = mailbox.profile
    return ScheduleSettings(min_interval=profile.min_polling_minutes if profile else 2)


def speedup(session: Session) -> int:
    # Read without flushing the outcome half-recorded on the mailbox: it goes to the database
    # as one UPDATE at the end instead of two.
    with session.no_autoflush:
        return int(get_setting(session, "schedule_speedup"))


def apply_outcome(
    session: Session,
    mailbox: Mailbox,
    outcome: RunOutcome,
    *,
    error_message: str | None = None,
) -> Plan:
    """Record ``outcome`` on ``mailbox`` and act on the plan that follows (see module doc)."""
    history = record(history_of(mailbox), outcome)
    plan = next_run(history, settings_of(mailbox), outcome.finished_at)
    mailbox.sync_history = [outcome_to_json(o) for o in history.outcomes]
    mailbox.last_error_count = plan.error_count
    mailbox.schedule_code = plan.code.value
    mailbox.schedule_reason = plan.reason
    if mailbox.state is not MailboxState.ENABLED:
        # Disabled while it ran: the outcome is kept, but nothing is scheduled.
        mailbox.next_sync_at = None
    elif plan.action is Action.RUN:
        assert plan.interval is not None
        mailbox.next_sync_at = outcome.finished_at + plan.interval / speedup(session)
    else:
        _disable(session, mailbox, plan, outcome, error_message)
    if outcome.failed and plan.action is Action.RUN and plan.error_count == 1:
        _alert_owners(
            session,
            mailbox,
            Severity.WARNING,
            "mailbox.error",
            f"Mailbox {mailbox.email_address} could not be synced: "
            f"{error_message or outcome.error_code}. crmsync retries every "
            f"{plan.interval.seconds // 60 if plan.interval else 5} minutes and disables the "
            "mailbox after 10 failures in a row.",
        )
    if outcome.failed and mailbox.profile_id is not None:
        _check_profile(session, mailbox)
    return plan


def _disable(
    session: Session,
    mailbox: Mailbox,
    plan: Plan,
    outcome: RunOutcome,
    error_message: str | None,
) -> None:
    mailbox.state = MailboxState.DISABLED
    mailbox.next_sync_at = None
    mailbox.disabled_at = outcome.finished_at
    detail = f": {error_message}" if error_message else ""
    mailbox.disabled_reason = f"{plan.reason}{detail}"
    _alert_owners(
        session,
        mailbox,
        Severity.ERROR,
        "mailbox.disabled",
        f"Mailbox {mailbox.email_address} was disabled: {plan.reason}{detail}. Fix the cause, "
        f"then enable it again: crmsync mailbox enable {mailbox.email_address}",
    )


def _alert_owners(
    session: Session, mailbox: Mailbox, severity: Severity, code: str, message: str
) -> None:
    profile = mailbox.profile
    raise_alert(
        session,
        recipients=[_owner_to_tell(mailbox), profile.owner_id if profile else None],
        severity=severity,
        code=code,
        message=message,
        mailbox_id=mailbox.id,
        profile_id=mailbox.profile_id,
    )


def _owner_to_tell(mailbox: Mailbox) -> Any:
    """A user's mailbox tells the user; a queue's tells whoever owns the queue."""
    owner = mailbox.owner
    if owner.record_type == "queue":
        return owner.owner_id
    return owner.id


def _check_profile(session: Session, mailbox: Mailbox) -> None:
    """Alert the profile's owner when more of its mailboxes fail than the profile allows.
    Counted: mailboxes that are enabled or that an error stopped; failing: those with an error
    recorded (cleared by the next successful run, kept when an error disabled the mailbox)."""
    profile = session.get(EmailServerProfile, mailbox.profile_id)
    if profile is None or profile.owner_id is None:
        return
    session.flush()
    failing_expr = Mailbox.last_error_code.is_not(None)
    counted = sa.or_(Mailbox.state == MailboxState.ENABLED, failing_expr)
    total, failing = session.execute(
        sa.select(sa.func.count(), sa.func.count().filter(failing_expr)).where(
            Mailbox.profile_id == profile.id, counted
        )
    ).one()
    sentence = profile_alert(int(failing), int(total), profile.failure_alert_percent)
    if sentence is None:
        return
    raise_alert(
        session,
        recipients=[profile.owner_id],
        severity=Severity.ERROR,
        code="profile.failing",
        message=f"Email server profile {profile.name}: {sentence}. Check the server and the "
        "profile's settings (crmsync status lists each mailbox's error).",
        profile_id=profile.id,
    )
