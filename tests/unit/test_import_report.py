"""The import report (as text and JSON) and the progress events."""

from __future__ import annotations

import json
from pathlib import Path

from crmsync.importing import ImportReport, ProgressEvent, RowError
from crmsync.importing.rows import SourceRow, ValidRow
from crmsync.importing.service import Progress


def test_row_error_text() -> None:
    assert str(RowError("contacts.csv", 17, "email", '"bob@" is not an email address')) == (
        'contacts.csv line 17, field "email": "bob@" is not an email address'
    )
    assert str(RowError("rows.json", 4, None, "not an object")) == "rows.json line 4: not an object"
    assert str(RowError("x.csv", None, None, "m")) == "x.csv: m"


def test_report_is_json_serializable_and_ok_means_no_errors() -> None:
    report = ImportReport(files=["contacts.csv"])
    report.count("contacts").created = 997
    assert report.ok
    report.errors.append(RowError("contacts.csv", 5, "email", "bad"))
    report.count("contacts").failed += 1
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert data["counts"] == {
        "contacts": {"created": 997, "updated": 0, "unchanged": 0, "failed": 1}
    }
    assert data["totals"]["created"] == 997
    assert data["errors"] == [
        {
            "file": "contacts.csv",
            "line": 5,
            "field": "email",
            "message": "bad",
            "text": 'contacts.csv line 5, field "email": bad',
        }
    ]


def test_progress_events_per_file() -> None:
    events: list[ProgressEvent] = []
    progress = Progress(events.append, total=3)
    progress.start()
    rows = [
        ValidRow(SourceRow("a.csv", 2, "contacts", {}), "c-1"),
        ValidRow(SourceRow("b.json", 3, "contacts", {}), "c-2"),
        ValidRow(SourceRow("a.csv", 3, "contacts", {}), "c-3"),
    ]
    progress.advance(rows, "contacts")
    progress.finish()
    assert [(e.stage, e.done, e.advance, e.file) for e in events] == [
        ("start", 0, 0, None),
        ("rows", 2, 2, "a.csv"),
        ("rows", 3, 1, "b.json"),
        ("finish", 3, 0, None),
    ]
    assert {e.total for e in events} == {3}


def test_progress_without_a_callback_is_silent() -> None:
    progress = Progress(None, total=1)
    progress.start()
    progress.advance_by(str(Path("a.csv")), 1, None)
    progress.finish()
    assert progress.done == 1
