"""Every mapped class, imported in one place so the metadata is complete (migrations, tests)."""

from crmsync.crm.activities import (
    Activity,
    ActivityParty,
    Appointment,
    Attachment,
    Email,
    EmailMatchHash,
    Task,
    TokenSender,
)
from crmsync.crm.alerts import Alert
from crmsync.crm.audit import AuditEvent
from crmsync.crm.decisions import MessageDecision
from crmsync.crm.mailboxes import EmailServerProfile, Mailbox, MailboxFolder, OrgSetting
from crmsync.crm.records import (
    Account,
    BusinessUnit,
    Case,
    Contact,
    EmailAddress,
    Lead,
    Opportunity,
    Queue,
    Record,
    Team,
    TeamMembership,
    User,
)
from crmsync.crm.roles import (
    FieldPermission,
    FieldProfileMember,
    FieldSecurityProfile,
    RecordShare,
    RolePrivilege,
    SecuredField,
    SecurityRole,
    TeamRole,
    UserRole,
)
from crmsync.crm.tracking import TrackedMessage

__all__ = [
    "Account",
    "Activity",
    "ActivityParty",
    "Alert",
    "Appointment",
    "Attachment",
    "AuditEvent",
    "BusinessUnit",
    "Case",
    "Contact",
    "Email",
    "EmailAddress",
    "EmailMatchHash",
    "EmailServerProfile",
    "FieldPermission",
    "FieldProfileMember",
    "FieldSecurityProfile",
    "Lead",
    "Mailbox",
    "MailboxFolder",
    "MessageDecision",
    "Opportunity",
    "OrgSetting",
    "Queue",
    "Record",
    "RecordShare",
    "RolePrivilege",
    "SecuredField",
    "SecurityRole",
    "Task",
    "Team",
    "TeamMembership",
    "TeamRole",
    "TokenSender",
    "TrackedMessage",
    "User",
    "UserRole",
]
