"""Rows as read from a file (with where they came from) and as validated (with typed values)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SourceRow:
    file: str
    """The file's display name (as given, or its base name), for messages."""
    line: int
    """Line in the file where the row starts (1-based)."""
    type_key: str
    """Canonical type name, e.g. ``contacts``."""
    data: dict[str, Any]
    """Raw values by field name: strings from CSV, any JSON value from JSON."""

    @property
    def where(self) -> str:
        return f"{self.file} line {self.line}"


@dataclass
class ValidRow:
    source: SourceRow
    ext_id: str
    values: dict[str, Any] = field(default_factory=dict)
    """Typed values of the fields the row gives; an empty field is present with value None."""

    @property
    def type_key(self) -> str:
        return self.source.type_key

    def has(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str) -> Any:
        return self.values.get(name)
