"""crmsync: keep a CRM and people's mailboxes in sync on open standards."""

__version__ = "0.1.0"
