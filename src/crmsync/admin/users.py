"""A CRM user's (or queue's) personal email-tracking options.

Two options, as in Dynamics' personal options: "Track email messages" (the incoming filter,
``User.incoming_email_filter``; queues have it too) and "Automatically create records"
(``User.auto_create_records``; users only). One's own options need no privilege; another user's,
or a queue's, need ``manage_user_sync_filters`` at a depth reaching the target's business unit.
Every change is audited as ``user.tracking_options_changed`` with the old and new values.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from crmsync.admin.mailboxes import find_owner
from crmsync.core.parties import AutoCreate
from crmsync.crm import audit
from crmsync.crm.base import IncomingEmailFilter
from crmsync.crm.records import Queue, User
from crmsync.crm.roles import AccessRight
from crmsync.crm.security import Decision, Principal, may_manage_user_sync_filters
from crmsync.crm.security.decisions import disabled
from crmsync.crm.security.scope import keys_for, missing, scope_of
from crmsync.errors import InvalidInput

PRIVILEGE = "manage_user_sync_filters"
AUDIT_ACTION = "user.tracking_options_changed"

FILTER_MEANINGS: dict[IncomingEmailFilter, str] = {
    IncomingEmailFilter.ALL: "tracks all email messages",
    IncomingEmailFilter.RESPONSES: "tracks only replies to tracked email",
    IncomingEmailFilter.LEADS_CONTACTS_ACCOUNTS: "tracks email from leads, contacts and accounts",
    IncomingEmailFilter.EMAIL_ENABLED: "tracks email from any email-enabled CRM record",
    IncomingEmailFilter.NONE: "tracks no email automatically (manual tracking still works)",
}

AUTO_CREATE_MEANINGS: dict[AutoCreate, str] = {
    AutoCreate.NONE: "creates no record for an unknown sender",
    AutoCreate.CONTACT: "creates a contact for an unknown sender of tracked email",
    AutoCreate.LEAD: "creates a lead for an unknown sender of tracked email",
}

Target = User | Queue
E = TypeVar("E", bound=StrEnum)


def find_target(session: Session, ref: str) -> Target:
    """A user by username, email address or external id; a queue as ``queue:NAME`` (or by a
    name or address no user has), exactly as ``mailbox add --owner`` resolves owners."""
    owner = find_owner(session, ref)
    if not isinstance(owner, User | Queue):  # pragma: no cover - find_owner returns only these
        raise InvalidInput(f"{ref!r} is a {owner.record_type}, not a user or queue")
    return owner


def parse_incoming_filter(value: str) -> IncomingEmailFilter:
    return _parse(IncomingEmailFilter, value, "--incoming-filter")


def parse_auto_create(value: str) -> AutoCreate:
    return _parse(AutoCreate, value, "--auto-create")


def _parse(enum: type[E], value: str, option: str) -> E:
    text = value.strip().lower().replace("-", "_")
    try:
        return enum(text)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise InvalidInput(f"{option} {value!r} is not one of: {allowed}") from None


def target_kind(target: Target) -> str:
    return "user" if isinstance(target, User) else "queue"


def target_label(target: Target) -> str:
    if isinstance(target, User):
        return f"user {target.username}"
    return f"queue {target.name}"


def may_manage_tracking_options(principal: Principal, target: Target) -> Decision:
    """May ``principal`` change ``target``'s tracking options? Their own: always (personal
    options). Another user's: ``may_manage_user_sync_filters``. A queue's: the same privilege
    at a depth reaching the queue's business unit (measured like a user's: by unit, not owner)."""
    if isinstance(target, User):
        decision = may_manage_user_sync_filters(principal, target)
    elif principal.is_disabled:
        decision = disabled(principal)
    else:
        keys = keys_for("queue", target.id, None, target.business_unit_id)
        scope = scope_of(principal, PRIVILEGE, AccessRight.READ)
        reason = scope.reach(keys)
        if reason is not None:
            decision = Decision(True, reason, PRIVILEGE)
        else:
            decision = Decision(False, missing(principal, scope, keys, noun="queue"), PRIVILEGE)
    if decision:
        return decision
    return Decision(
        False,
        f"you may not change the tracking options of {target_label(target)}: {decision.reason}",
        decision.privilege,
    )


@dataclass(frozen=True)
class OptionsChange:
    old: dict[str, str]
    """Only the fields that changed, with their values before."""
    new: dict[str, str]

    @property
    def changed(self) -> bool:
        return bool(self.new)


def check_change(
    target: Target,
    *,
    incoming_filter: IncomingEmailFilter | None = None,
    auto_create: AutoCreate | None = None,
) -> None:
    """Refuse what cannot apply to the target (before any privilege is asked)."""
    if auto_create is not None and isinstance(target, Queue):
        raise InvalidInput(
            f"--auto-create applies to users only; {target_label(target)} has no "
            "'automatically create records' option (only --incoming-filter)"
        )


def set_tracking_options(
    session: Session,
    target: Target,
    *,
    actor: audit.Actor,
    incoming_filter: IncomingEmailFilter | None = None,
    auto_create: AutoCreate | None = None,
) -> OptionsChange:
    """Set the given options (the caller has checked may_manage_tracking_options). Audited when
    something changed; setting the values already held changes nothing and records nothing."""
    check_change(target, incoming_filter=incoming_filter, auto_create=auto_create)
    old: dict[str, str] = {}
    new: dict[str, str] = {}
    if incoming_filter is not None and target.incoming_email_filter != incoming_filter:
        old["incoming_email_filter"] = target.incoming_email_filter.value
        new["incoming_email_filter"] = incoming_filter.value
        target.incoming_email_filter = incoming_filter
    if (
        auto_create is not None
        and isinstance(target, User)
        and target.auto_create_records != auto_create
    ):
        old["auto_create_records"] = target.auto_create_records.value
        new["auto_create_records"] = auto_create.value
        target.auto_create_records = auto_create
    if not new:
        return OptionsChange({}, {})
    session.flush()
    audit.record(
        session,
        actor,
        AUDIT_ACTION,
        target_type=target_kind(target),
        target_id=target.id,
        target_name=target.username if isinstance(target, User) else target.name,
        old=old,
        new=new,
    )
    return OptionsChange(old, new)


def describe(target: Target) -> dict[str, Any]:
    """The target's tracking options as a script sees them (auto-create is null for a queue)."""
    auto = target.auto_create_records if isinstance(target, User) else None
    return {
        "type": target_kind(target),
        "id": str(target.id),
        "name": target.name,
        "username": target.username if isinstance(target, User) else None,
        "incoming_email_filter": target.incoming_email_filter.value,
        "incoming_email_filter_meaning": FILTER_MEANINGS[target.incoming_email_filter],
        "auto_create_records": auto.value if auto is not None else None,
        "auto_create_records_meaning": AUTO_CREATE_MEANINGS[auto] if auto is not None else None,
    }
