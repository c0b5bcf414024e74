"""The demo: a small CRM with real mailboxes on the local test stack, and mail in them."""
