"""Reading import files (JSON or CSV) into rows that know their file and line.

Problems with a whole file (missing, not UTF-8, not JSON, unknown type or column) raise
``InvalidInput``; problems with one row become ``RowError``s so the rest of the file still loads.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crmsync.errors import InvalidInput
from crmsync.importing.report import RowError
from crmsync.importing.rows import SourceRow
from crmsync.importing.schemas import SPECS, canonical_type, type_names

FORMATS = {".json": "json", ".csv": "csv"}
DOCS_HINT = "see docs/import.md"


@dataclass
class ParsedFile:
    path: Path
    name: str
    """Display name used in messages."""
    rows: list[SourceRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    """Rows refused while reading (no type, not an object, too many cells)."""
    refused_rows: int = 0
    type_key: str | None = None
    """The one type of a CSV file (JSON files may mix types)."""

    @property
    def row_count(self) -> int:
        return len(self.rows) + self.refused_rows


def types_in_name(path: Path) -> set[str]:
    """Types named in a file name: ``05_contacts-2026.csv`` -> {"contacts"}."""
    words = [w for w in re.split(r"[^0-9a-z]+", path.stem.lower()) if w]
    found: set[str] = set()
    for i in range(len(words)):
        # Two-word names too: business_units, security_roles.
        for n in (1, 2):
            if i + n <= len(words) and (key := canonical_type("_".join(words[i : i + n]))):
                found.add(key)
    return found


def type_from_name(path: Path, display: str) -> str:
    found = types_in_name(path)
    if len(found) == 1:
        return found.pop()
    if found:
        which = " and ".join(sorted(found))
        raise InvalidInput(
            f"{display}: the file name names more than one type ({which}); a CSV file holds one "
            f"type, named in its file name, e.g. contacts.csv or 05_contacts-2026.csv"
        )
    raise InvalidInput(
        f"{display}: cannot tell which type of rows it holds from its name; name a CSV file "
        f"after its type, e.g. contacts.csv or 05_contacts-2026.csv (types: {type_names()})"
    )


def normalize_name(name: str) -> str:
    """Column and JSON keys: case, spaces and hyphens do not matter."""
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def read_file(path: Path, display: str) -> ParsedFile:
    fmt = FORMATS.get(path.suffix.lower())
    if not path.exists():
        raise InvalidInput(f"{display}: no such file; check the path")
    if not path.is_file():
        raise InvalidInput(f"{display}: not a file; give JSON or CSV files or a folder of them")
    if fmt is None:
        raise InvalidInput(
            f"{display}: not a JSON or CSV file; import files must end in .json or .csv "
            f"({DOCS_HINT})"
        )
    text = decode(path, display)
    if fmt == "csv":
        return read_csv(text, path, display)
    return read_json(text, path, display)


def decode(path: Path, display: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(
            f"{display}: cannot read it ({exc.strerror}); check its permissions"
        ) from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InvalidInput(f"{display} is UTF-16 text; save it as UTF-8 (Excel: CSV UTF-8)")
    try:
        return data.decode("utf-8-sig")  # a BOM (Excel's "CSV UTF-8") is dropped
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidInput(
            f"{display} line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x}); save the "
            "file as UTF-8 (Excel: CSV UTF-8)"
        ) from None


# --- CSV ------------------------------------------------------------------------------------


def sniff_delimiter(header_line: str) -> str:
    """Comma, unless the header clearly uses ; or tab (Excel in Finnish and other locales)."""
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


def read_csv(text: str, path: Path, display: str) -> ParsedFile:
    type_key = type_from_name(path, display)
    spec = SPECS[type_key]
    parsed = ParsedFile(path, display, type_key=type_key)
    # strict: an unclosed quote is an error, not the rest of the file swallowed into one cell.
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=sniff_delimiter(text.partition("\n")[0]),
        strict=True,
    )
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise InvalidInput(
                f"{display}: the first line must name the columns, e.g. "
                f"{','.join(spec.columns[:4])},... (columns of {type_key}: "
                f"{', '.join(spec.columns)})"
            )
        columns = _check_header(header, type_key, display)
        previous_end = reader.line_num
        for cells in reader:
            # line_num counts physical lines read so far, so a row spans previous_end+1..line_num
            # even when a quoted cell holds line breaks.
            start, previous_end = previous_end + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            extra = cells[len(columns) :]
            if any(cell.strip() for cell in extra):
                parsed.refused_rows += 1
                parsed.errors.append(
                    RowError(
                        display,
                        start,
                        None,
                        f"the row has {len(cells)} cells but the header names {len(columns)} "
                        "columns; quote cells that contain the delimiter",
                    )
                )
                continue
            # Short rows (trailing empty cells trimmed by some editors) read as empty cells.
            data = {col: (cells[i] if i < len(cells) else "") for i, col in enumerate(columns)}
            parsed.rows.append(SourceRow(display, start, type_key, data))
    except csv.Error as exc:
        raise InvalidInput(
            f"{display} line {reader.line_num}: cannot read the CSV ({exc}); check the quotes"
        ) from None
    return parsed


def _check_header(header: list[str], type_key: str, display: str) -> list[str]:
    spec = SPECS[type_key]
    columns = [normalize_name(h) for h in header]
    allowed = f"the columns of {type_key} are: {', '.join(spec.columns)}"
    for position, name in enumerate(columns, start=1):
        if not name:
            raise InvalidInput(f"{display} line 1: column {position} has no name; {allowed}")
        if spec.field(name) is None:
            raise InvalidInput(
                f'{display} line 1: unknown column "{header[position - 1]}"; {allowed}'
            )
        if columns.count(name) > 1:
            raise InvalidInput(f'{display} line 1: column "{name}" appears twice; keep one')
    return columns


# --- JSON -----------------------------------------------------------------------------------

_WHITESPACE = re.compile(r"[ \t\n\r]*")


class _Lines:
    """Offset -> line number, by binary search over the line starts."""

    def __init__(self, text: str) -> None:
        self._starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self._starts, offset)


def _skip(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    assert match is not None
    return match.end()


def _array_items(text: str, pos: int, decoder: json.JSONDecoder) -> list[tuple[int, Any]]:
    """Each item of the array starting at ``pos`` with the offset where the item starts.

    The document was already parsed once, so it is known to be valid JSON here.
    """
    items: list[tuple[int, Any]] = []
    pos = _skip(text, pos + 1)
    if text[pos] == "]":
        return items
    while True:
        value, end = decoder.raw_decode(text, pos)
        items.append((pos, value))
        pos = _skip(text, end)
        if text[pos] == "]":
            return items
        pos = _skip(text, pos + 1)  # the comma


def _object_members(text: str, pos: int, decoder: json.JSONDecoder) -> list[tuple[str, int]]:
    """Each key of the object starting at ``pos`` with the offset where its value starts."""
    members: list[tuple[str, int]] = []
    pos = _skip(text, pos + 1)
    if text[pos] == "}":
        return members
    while True:
        key, end = decoder.raw_decode(text, pos)
        pos = _skip(text, _skip(text, end) + 1)  # past the colon
        members.append((key, pos))
        _, end = decoder.raw_decode(text, pos)
        pos = _skip(text, end)
        if text[pos] == "}":
            return members
        pos = _skip(text, pos + 1)


def read_json(text: str, path: Path, display: str) -> ParsedFile:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{display} line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
            "fix the file"
        ) from None
    parsed = ParsedFile(path, display)
    lines = _Lines(text)
    decoder = json.JSONDecoder()
    start = _skip(text, 0)
    if isinstance(document, list):
        # A list of rows, each with its "type"; a file named after one type may leave it out.
        named = types_in_name(path)
        default = named.pop() if len(named) == 1 else None
        for offset, item in _array_items(text, start, decoder):
            _add_json_row(parsed, item, lines.line_of(offset), None, default)
    elif isinstance(document, dict):
        for key, offset in _object_members(text, start, decoder):
            type_key = canonical_type(key)
            if type_key is None:
                raise InvalidInput(
                    f'{display} line {lines.line_of(offset)}: unknown type "{key}"; the types '
                    f"are: {type_names()}"
                )
            if not isinstance(document[key], list):
                raise InvalidInput(
                    f'{display} line {lines.line_of(offset)}: "{key}" must be a list of rows '
                    f'([{{"id": ...}}, ...])'
                )
            for item_offset, item in _array_items(text, offset, decoder):
                _add_json_row(parsed, item, lines.line_of(item_offset), type_key, type_key)
    else:
        raise InvalidInput(
            f'{display}: the file must hold an object keyed by type ({{"contacts": [...]}}) '
            f"or a list of rows with a type ({DOCS_HINT})"
        )
    return parsed


def _add_json_row(
    parsed: ParsedFile, item: Any, line: int, section: str | None, default: str | None
) -> None:
    def refuse(field: str | None, message: str) -> None:
        parsed.refused_rows += 1
        parsed.errors.append(RowError(parsed.name, line, field, message))

    if not isinstance(item, dict):
        refuse(None, f"a row must be a JSON object ({{...}}), not {type(item).__name__}")
        return
    data = {normalize_name(str(k)): value for k, value in item.items()}
    declared = data.pop("type", None)
    type_key = default
    if declared is not None:
        type_key = canonical_type(str(declared))
        if type_key is None:
            refuse("type", f'"{declared}" is not a type; use one of: {type_names()}')
            return
        if section is not None and type_key != section:
            refuse("type", f'a row of type "{declared}" in the "{section}" list')
            return
    if type_key is None:
        refuse(
            "type",
            'the row has no "type"; add one (e.g. "type": "contact") or put the rows in an '
            'object keyed by type ({"contacts": [...]})',
        )
        return
    parsed.rows.append(SourceRow(parsed.name, line, type_key, data))
