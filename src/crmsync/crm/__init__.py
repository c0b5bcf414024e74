"""The CRM domain: records, activities, mailboxes, roles, and (later) the security checks."""
