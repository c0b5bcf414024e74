"""Gates of the privileges that are not about one record (privileges.MISC_PRIVILEGES).

Those that act on another user (send as them, manage their sync filters) need a depth that reaches
the target user, measured as for a user record: own-role depth from the principal's unit,
team-role depth from the team's unit. The others only need the privilege held.
"""

from __future__ import annotations

from crmsync.crm.records import User
from crmsync.crm.roles import AccessRight
from crmsync.crm.security.decisions import Decision, disabled, holds
from crmsync.crm.security.principal import Principal
from crmsync.crm.security.scope import keys_for, missing, scope_of

SEND_AS_DENIED = "You cannot send email as the selected user"


def may_sync_to_mailbox(principal: Principal) -> Decision:
    """Synchronize appointments, contacts and tasks with one's own mailbox."""
    return holds(principal, "sync_to_mailbox")


def may_use_pane(principal: Principal) -> Decision:
    """Track, set regarding and untrack from the pane beside the mail."""
    return holds(principal, "use_pane")


def may_approve_mailbox(principal: Principal) -> Decision:
    """Approve or reject a mailbox's email address."""
    return holds(principal, "approve_mailbox")


def may_manage_org_settings(principal: Principal) -> Decision:
    """Change organization-wide settings: they affect everyone, so only organization depth."""
    decision = holds(principal, "manage_org_settings")
    if not decision:
        return decision
    scope = scope_of(principal, "manage_org_settings", AccessRight.READ)
    if scope.everything is not None:
        return Decision(True, scope.everything, "manage_org_settings")
    return Decision(
        False,
        "missing privilege manage_org_settings (needs depth organization; you hold it only at "
        + ", ".join(scope.held)
        + ")",
        "manage_org_settings",
    )


def may_send_as(principal: Principal, target: User) -> Decision:
    """Send email as ``target``: needs send_as_user reaching the target's business unit AND the
    target's consent (``allow_send_on_behalf``), as in Dynamics."""
    if principal.is_disabled:
        return disabled(principal)
    if target.id == principal.user_id:
        return Decision(True, "sending as yourself needs no send-as privilege")
    problems: list[str] = []
    reach = _reaches_user(principal, "send_as_user", target)
    if not reach:
        problems.append(reach.reason)
    if not target.allow_send_on_behalf:
        problems.append(
            f"{_who(target)} has not allowed others to send email on their behalf "
            "(allow_send_on_behalf is off)"
        )
    if target.is_disabled:
        problems.append(f"{_who(target)} is disabled")
    if problems:
        return Decision(False, f"{SEND_AS_DENIED}: " + "; ".join(problems), "send_as_user")
    return Decision(
        True, f"{reach.reason}; {_who(target)} allows sending on their behalf", "send_as_user"
    )


def may_manage_user_sync_filters(principal: Principal, target: User) -> Decision:
    """Manage ``target``'s synchronization filters. One's own filters need no privilege (they are
    personal options in Dynamics); another user's need the privilege reaching their unit."""
    if principal.is_disabled:
        return disabled(principal)
    if target.id == principal.user_id:
        return Decision(True, "managing your own synchronization filters needs no privilege")
    return _reaches_user(principal, "manage_user_sync_filters", target)


def _reaches_user(principal: Principal, privilege: str, target: User) -> Decision:
    keys = keys_for("user", target.id, None, target.business_unit_id)
    scope = scope_of(principal, privilege, AccessRight.READ)
    reason = scope.reach(keys)
    if reason is not None:
        return Decision(True, reason, privilege)
    return Decision(False, missing(principal, scope, keys, noun="user"), privilege)


def _who(user: User) -> str:
    return f"user {user.username}"
