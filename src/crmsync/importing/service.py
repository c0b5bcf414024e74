"""``import_files``: read every file, check every row, then load in one transaction."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy.engine import Engine

from crmsync.db import session_scope
from crmsync.errors import InvalidInput
from crmsync.importing.formats import FORMATS, ParsedFile, read_file
from crmsync.importing.loader import Loader
from crmsync.importing.report import ImportReport, ProgressEvent, RowError
from crmsync.importing.rows import SourceRow, ValidRow
from crmsync.importing.schemas import SPECS, validate_row
from crmsync.importing.values import is_empty

ProgressCallback = Callable[[ProgressEvent], None]


def import_files(
    engine: Engine,
    paths: list[Path],
    *,
    progress: ProgressCallback | None = None,
    default_owner: str | None = None,
) -> ImportReport:
    """Load business units, users, teams, roles, accounts, contacts, leads, opportunities and
    cases from JSON and CSV files (format: docs/import.md).

    Bad rows are reported in the returned report and skipped; every good row loads. Importing the
    same files again changes nothing. ``default_owner`` (a user's id or username) owns records
    whose ``owner`` is empty. Raises ``InvalidInput`` for a problem with a whole file, before
    anything is written.
    """
    started = time.perf_counter()
    files = expand_paths(paths)
    names = display_names(files)
    parsed = [read_file(path, names[path]) for path in files]
    report = ImportReport(files=[p.name for p in parsed])
    tracker = Progress(progress, sum(p.row_count for p in parsed))

    for pf in parsed:
        report.errors.extend(pf.errors)
        if pf.errors and pf.type_key is not None:
            report.count(pf.type_key).failed += len(pf.errors)
    valid, refused = validate(parsed, report)
    tracker.start()
    for pf in parsed:
        tracker.advance_by(pf.name, pf.refused_rows, None)
    tracker.advance(refused, None)

    with session_scope(engine) as session:
        loader = Loader(session, report, tracker.advance)
        for row in refused:
            raw_id = row.data.get("id")
            if not is_empty(raw_id) and isinstance(raw_id, str | int):
                loader.note_refused(row.type_key, str(raw_id).strip(), row.where)
        loader.set_default_owner(default_owner, user_names(valid, refused))
        loader.load(valid)

    order = {name: i for i, name in enumerate(report.files)}
    report.errors.sort(key=lambda e: (order.get(e.file, len(order)), e.line or 0))
    report.counts = {k: report.counts[k] for k in SPECS if k in report.counts}
    report.elapsed_seconds = time.perf_counter() - started
    tracker.finish()
    return report


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a folder stands for its .json and .csv files (by name). No file twice."""
    files: list[Path] = []
    seen: set[Path] = set()
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in FORMATS)
            if not found:
                raise InvalidInput(f"{path}: the folder holds no .json or .csv files")
        else:
            found = [path]
        for file in found:
            key = file.resolve() if file.exists() else file
            if key not in seen:
                seen.add(key)
                files.append(file)
    if not files:
        raise InvalidInput("no files to import; name one or more JSON or CSV files")
    return files


def display_names(files: list[Path]) -> dict[Path, str]:
    """Base names in messages (``contacts.csv line 17``), whole paths only where names clash."""
    counts = Counter(f.name for f in files)
    return {f: f.name if counts[f.name] == 1 else str(f) for f in files}


def validate(
    parsed: list[ParsedFile], report: ImportReport
) -> tuple[dict[str, list[ValidRow]], list[SourceRow]]:
    """Check every row; group the good ones by type. Later rows reusing an id are refused."""
    valid: dict[str, list[ValidRow]] = {}
    refused: list[SourceRow] = []
    first_seen: dict[tuple[str, str], str] = {}
    for pf in parsed:
        for row in pf.rows:
            checked, errors = validate_row(row)
            if checked is not None:
                key = (row.type_key, checked.ext_id)
                if key in first_seen:
                    label = SPECS[row.type_key].label
                    message = (
                        f'id "{checked.ext_id}" is already used by the {label} in '
                        f"{first_seen[key]}; every row needs its own id"
                    )
                    errors = [RowError(row.file, row.line, "id", message)]
                else:
                    first_seen[key] = row.where
                    valid.setdefault(row.type_key, []).append(checked)
                    continue
            report.errors.extend(errors)
            report.count(row.type_key).failed += 1
            refused.append(row)
    return valid, refused


def user_names(valid: dict[str, list[ValidRow]], refused: list[SourceRow]) -> list[tuple[str, str]]:
    names = [(r.ext_id, r.get("username")) for r in valid.get("users", [])]
    names += [
        (str(r.data.get("id") or "").strip(), str(r.data.get("username") or "").strip())
        for r in refused
        if r.type_key == "users"
    ]
    return names


class Progress:
    """Turns the loader's per-batch notices into ProgressEvents, one per file in the batch."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.done = 0

    def start(self) -> None:
        if self.callback:
            self.callback(ProgressEvent("start", self.total, 0))

    def advance(self, rows: Iterable[ValidRow | SourceRow], type_key: str | None) -> None:
        per_file: Counter[str] = Counter()
        for row in rows:
            source = row.source if isinstance(row, ValidRow) else row
            per_file[source.file] += 1
        for file, n in per_file.items():
            self.advance_by(file, n, type_key)

    def advance_by(self, file: str, n: int, type_key: str | None) -> None:
        if n <= 0:
            return
        self.done += n
        if self.callback:
            self.callback(ProgressEvent("rows", self.total, self.done, n, file, type_key))

    def finish(self) -> None:
        if self.callback:
            self.callback(ProgressEvent("finish", self.total, self.done))
