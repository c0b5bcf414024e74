"""What an import did: counts per type, the rows it refused, and progress events for the faces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, order=True)
class RowError:
    """One problem with one row; the row was skipped, every other row still loaded."""

    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file} line {self.line}"
        if self.field:
            where += f', field "{self.field}"'
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "message": self.message,
            "text": str(self),
        }


@dataclass
class TypeCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    """Rows of this type that were skipped because of an error (see ImportReport.errors)."""

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged + self.failed

    def to_dict(self) -> dict[str, int]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": self.failed,
        }


@dataclass
class ImportReport:
    files: list[str] = field(default_factory=list)
    counts: dict[str, TypeCounts] = field(default_factory=dict)
    """Keyed by type name (``contacts``), in the order the types were loaded."""
    errors: list[RowError] = field(default_factory=list)
    elapsed_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def count(self, type_key: str) -> TypeCounts:
        return self.counts.setdefault(type_key, TypeCounts())

    @property
    def created(self) -> int:
        return sum(c.created for c in self.counts.values())

    @property
    def updated(self) -> int:
        return sum(c.updated for c in self.counts.values())

    @property
    def unchanged(self) -> int:
        return sum(c.unchanged for c in self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable data, for ``crmsync import --json``."""
        return {
            "ok": self.ok,
            "files": list(self.files),
            "counts": {key: c.to_dict() for key, c in self.counts.items()},
            "totals": {
                "created": self.created,
                "updated": self.updated,
                "unchanged": self.unchanged,
                "failed": sum(c.failed for c in self.counts.values()),
                "errors": len(self.errors),
            },
            "errors": [e.to_dict() for e in self.errors],
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


@dataclass(frozen=True)
class ProgressEvent:
    """Sent to the ``progress`` callback so a face can draw a progress bar.

    ``start`` comes once after every file is parsed (``total`` is then known), ``rows`` after each
    batch (``advance`` rows of ``file`` were handled, loaded or refused), ``finish`` at the end.
    """

    stage: Literal["start", "rows", "finish"]
    total: int
    done: int
    advance: int = 0
    file: str | None = None
    type_key: str | None = None
