"""Printing results: JSON for scripts (stdout), tables for people, messages on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Piped or redirected output has no terminal width; rich would assume 80 columns and fold
# addresses mid-word. A log file or CI page is wider than that.
PIPE_WIDTH = 160
out = Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else PIPE_WIDTH)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left", show_lines=False)
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*("—" if v is None else str(v) for v in row))
    return t


def progress_bar(*, show: bool = True, transient: bool = False) -> Progress:
    """The progress bar of long commands, on stderr: what, how far of how much, how long."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not show,
        transient=transient,
    )


def info(message: str) -> None:
    err.print(message)
