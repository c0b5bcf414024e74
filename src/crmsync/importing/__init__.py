"""Bulk import of CRM data (users, teams, roles, accounts, contacts...) from JSON and CSV files.

``import_files`` is the whole service; the CLI's ``crmsync import`` calls it. The file formats
are described in docs/import.md.
"""

from crmsync.importing.report import ImportReport, ProgressEvent, RowError, TypeCounts
from crmsync.importing.service import import_files

__all__ = ["ImportReport", "ProgressEvent", "RowError", "TypeCounts", "import_files"]
