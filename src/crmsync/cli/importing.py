"""``crmsync import``: bulk load CRM records from JSON and CSV files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crmsync.cli.context import Context
from crmsync.cli.output import err, info, out, print_json, progress_bar, table
from crmsync.importing import ImportReport, ProgressEvent, import_files

MAX_ERRORS_SHOWN = 50


def import_command(
    files: Annotated[list[Path], typer.Argument(help="JSON or CSV files, or folders of them.")],
    default_owner: Annotated[
        str | None,
        typer.Option(help="User (id or username) owning rows that name no owner."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Load users, teams, roles, accounts, contacts, leads, opportunities and cases.

    Rows are matched by their `id` (external id): importing the same file again changes nothing.
    Bad rows are reported with file, line and field and skipped; the good rows still load, and
    the command then exits 1. Formats: docs/import.md.
    """
    ctx = Context()
    engine = ctx.engine()
    show_bar = not json_out and err.is_terminal
    with progress_bar(show=show_bar, transient=True) as bar:
        task = bar.add_task("reading files", total=None)

        def on_progress(event: ProgressEvent) -> None:
            if event.stage == "start":
                bar.update(task, total=event.total, description="importing")
            elif event.stage == "rows":
                bar.update(task, advance=event.advance, description=f"importing {event.file}")

        report = import_files(engine, files, progress=on_progress, default_owner=default_owner)
    if json_out:
        print_json(report.to_dict())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


def _print_report(report: ImportReport) -> None:
    rows = [
        (kind, c.created, c.updated, c.unchanged, c.failed) for kind, c in report.counts.items()
    ]
    out.print(table(None, ["Type", "Created", "Updated", "Unchanged", "Failed"], rows))
    for error in report.errors[:MAX_ERRORS_SHOWN]:
        err.print(f"[red]error:[/red] {error}", markup=True, highlight=False)
    hidden = len(report.errors) - MAX_ERRORS_SHOWN
    if hidden > 0:
        info(f"... and {hidden} more errors (all of them with --json)")
    if report.errors:
        info(f"{len(report.errors)} row(s) refused; every other row was loaded")
