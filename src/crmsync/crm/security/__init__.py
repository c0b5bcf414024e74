"""Authorization: may principal P do operation O on row R, and with which of its fields?

The model follows Dynamics 365 (docs/security.md has the rules and a diagram):

- ``load_principal`` resolves a user's roles, teams, units and field profiles once;
- ``can`` / ``require_can`` decide one row, ``access_filter`` selects the same rows in SQL;
- ``require`` and the ``may_*`` gates check the privileges that are not about a row;
- ``field_access``, ``outgoing_values`` and ``incoming_change`` apply field security to sync.
"""

from crmsync.crm.security.decisions import (
    AccessDenied,
    Decision,
    RowRef,
    can,
    require,
    require_can,
)
from crmsync.crm.security.fields import (
    DroppedField,
    FieldAccess,
    field_access,
    incoming_change,
    outgoing_values,
)
from crmsync.crm.security.filters import access_filter
from crmsync.crm.security.gates import (
    may_approve_mailbox,
    may_manage_org_settings,
    may_manage_user_sync_filters,
    may_send_as,
    may_sync_to_mailbox,
    may_use_pane,
)
from crmsync.crm.security.principal import Principal, load_principal

__all__ = [
    "AccessDenied",
    "Decision",
    "DroppedField",
    "FieldAccess",
    "Principal",
    "RowRef",
    "access_filter",
    "can",
    "field_access",
    "incoming_change",
    "load_principal",
    "may_approve_mailbox",
    "may_manage_org_settings",
    "may_manage_user_sync_filters",
    "may_send_as",
    "may_sync_to_mailbox",
    "may_use_pane",
    "outgoing_values",
    "require",
    "require_can",
]
