"""The privileges a security role can grant, by name.

Record privileges are ``<operation>:<record type>`` (``read:contact``); the others gate what a
person may do with sync and mail. The security issue builds the checks on this catalog; the
importer validates role files against it so a typo is an error, not a silently useless grant.
"""

from __future__ import annotations

RECORD_OPERATIONS = ("create", "read", "write", "delete", "append", "append_to", "assign", "share")

SECURED_RECORD_TYPES = (
    "account",
    "contact",
    "lead",
    "opportunity",
    "case",
    "email",
    "appointment",
    "task",
    "mailbox",
    "queue",
    "user",
    "team",
    "business_unit",
)

MISC_PRIVILEGES = {
    "sync_to_mailbox": "synchronize appointments, contacts and tasks with one's mailbox",
    "use_pane": "use the pane beside the mail (track, set regarding, untrack)",
    "send_as_user": "send email as another user (who must also allow it)",
    "approve_mailbox": "approve or reject a mailbox's email address",
    "manage_user_sync_filters": "manage other users' synchronization filters",
    "manage_org_settings": "change organization-wide settings",
}


def all_privileges() -> list[str]:
    names = [f"{op}:{rt}" for rt in SECURED_RECORD_TYPES for op in RECORD_OPERATIONS]
    return names + list(MISC_PRIVILEGES)


def is_known(name: str) -> bool:
    if name in MISC_PRIVILEGES:
        return True
    op, _, rt = name.partition(":")
    return op in RECORD_OPERATIONS and rt in SECURED_RECORD_TYPES
