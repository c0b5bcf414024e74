"""Reading import files: JSON and CSV rows with their line numbers, type detection, file errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmsync.errors import InvalidInput
from crmsync.importing.formats import read_file, sniff_delimiter, types_in_name
from crmsync.importing.service import display_names, expand_paths


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def read(path: Path):  # type: ignore[no-untyped-def]
    return read_file(path, path.name)


# --- JSON -----------------------------------------------------------------------------------


def test_json_object_form_reports_the_line_where_each_row_starts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "org.json",
        """{
  "business_units": [
    {"id": "bu-1", "name": "Root"}
  ],
  "users": [
    {
      "id": "u-1",
      "username": "anna"
    },

    {"id": "u-2",
     "username": "mikko"}
  ]
}
""",
    )
    parsed = read(path)
    assert [(r.type_key, r.data["id"], r.line) for r in parsed.rows] == [
        ("business_units", "bu-1", 3),
        ("users", "u-1", 6),
        ("users", "u-2", 11),
    ]
    assert parsed.errors == []


def test_json_list_form_takes_each_rows_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mixed.json",
        '[{"type": "account", "id": "a-1", "name": "A"},\n'
        ' {"type": "Contacts", "id": "c-1", "last_name": "B"}, {"type": "lead", "id": "l-1"}]',
    )
    parsed = read(path)
    assert [(r.type_key, r.line) for r in parsed.rows] == [
        ("accounts", 1),
        ("contacts", 2),
        ("leads", 2),
    ]
    assert "type" not in parsed.rows[0].data


def test_json_list_rows_without_type_take_it_from_the_file_name(tmp_path: Path) -> None:
    parsed = read(write(tmp_path, "cases-2026.json", '[{"id": "k-1", "name": "Broken"}]'))
    assert parsed.rows[0].type_key == "cases"


def test_json_row_problems_are_row_errors_not_file_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rows.json",
        '[\n  {"id": "x"},\n  {"type": "widget", "id": "w"},\n'
        '  42,\n  {"type": "lead", "id": "l"}\n]',
    )
    parsed = read(path)
    assert [str(e) for e in parsed.errors] == [
        'rows.json line 2, field "type": the row has no "type"; add one (e.g. "type": '
        '"contact") or put the rows in an object keyed by type ({"contacts": [...]})',
        'rows.json line 3, field "type": "widget" is not a type; use one of: business_units, '
        "roles, users, teams, accounts, contacts, leads, opportunities, cases",
        "rows.json line 4: a row must be a JSON object ({...}), not int",
    ]
    assert [r.line for r in parsed.rows] == [5]
    assert parsed.row_count == 4


def test_json_row_of_another_type_in_a_typed_list_is_refused(tmp_path: Path) -> None:
    parsed = read(write(tmp_path, "x.json", '{"leads": [{"type": "contact", "id": "c"}]}'))
    assert str(parsed.errors[0]) == (
        'x.json line 1, field "type": a row of type "contact" in the "leads" list'
    )


def test_json_keys_are_normalized(tmp_path: Path) -> None:
    parsed = read(write(tmp_path, "x.json", '{"Business-Units": [{"ID": "b", "Name": "R"}]}'))
    assert parsed.rows[0].type_key == "business_units"
    assert parsed.rows[0].data == {"id": "b", "name": "R"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"contacts": [\n  {"id": 1,}\n]}', "x.json line 2: not valid JSON"),
        ('{"widgets": []}', 'x.json line 1: unknown type "widgets"; the types are: business_units'),
        ('{"contacts": {"id": 1}}', 'x.json line 1: "contacts" must be a list of rows'),
        ('"hello"', "x.json: the file must hold an object keyed by type"),
        ("", "x.json line 1: not valid JSON"),
    ],
)
def test_json_whole_file_problems_raise(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        read(write(tmp_path, "x.json", text))
    assert str(caught.value).startswith(expected)


# --- CSV ------------------------------------------------------------------------------------


def test_csv_line_numbers_count_physical_lines_of_quoted_multiline_cells(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "contacts.csv",
        "id,last_name,job_title\n"
        'c-1,Virtanen,"Head of\nautomation,\n""Raahe"""\n'
        "\n"
        "c-2,Korhonen,CEO\r\n"
        'c-3,"Mäkelä",\n',
    )
    parsed = read(path)
    assert [(r.data["id"], r.line) for r in parsed.rows] == [("c-1", 2), ("c-2", 6), ("c-3", 7)]
    assert parsed.rows[0].data["job_title"] == 'Head of\nautomation,\n"Raahe"'
    assert parsed.rows[2].data["last_name"] == "Mäkelä"


def test_csv_with_bom_and_semicolons_as_excel_writes_it(tmp_path: Path) -> None:
    path = write(tmp_path, "05_contacts.csv", "\ufeffId;Last Name;City\nc-1;Öhman;Kemi\n")
    parsed = read(path)
    assert parsed.rows[0].data == {"id": "c-1", "last_name": "Öhman", "city": "Kemi"}


def test_csv_short_rows_read_as_empty_cells_long_rows_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "leads.csv", "id,last_name,company_name\nl-1,Nurmi\nl-2,A,B,C\nl-3,,,\n")
    parsed = read(path)
    assert [r.data for r in parsed.rows] == [
        {"id": "l-1", "last_name": "Nurmi", "company_name": ""},
        {"id": "l-3", "last_name": "", "company_name": ""},
    ]
    assert parsed.type_key == "leads"
    assert [str(e) for e in parsed.errors] == [
        "leads.csv line 3: the row has 4 cells but the header names 3 columns; quote cells "
        "that contain the delimiter"
    ]


def test_csv_unknown_column_is_a_file_error_naming_file_column_and_choices(
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidInput) as caught:
        read(write(tmp_path, "contacts.csv", "id,last_name,e-mail\n"))
    message = str(caught.value)
    assert message.startswith('contacts.csv line 1: unknown column "e-mail"; the columns of ')
    assert "email, email2, email3" in message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", "contacts.csv: the first line must name the columns"),
        ("id,,last_name\n", "contacts.csv line 1: column 2 has no name"),
        ("id,last_name,ID\n", 'contacts.csv line 1: column "id" appears twice'),
    ],
)
def test_csv_header_problems(tmp_path: Path, header: str, expected: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        read(write(tmp_path, "contacts.csv", header))
    assert str(caught.value).startswith(expected)


def test_csv_unclosed_quote_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"^contacts\.csv line \d+: cannot read the CSV"):
        read(write(tmp_path, "contacts.csv", 'id,last_name\nc-1,"Virtanen\n'))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("contacts.csv", {"contacts"}),
        ("contacts-2026.csv", {"contacts"}),
        ("05_contacts.csv", {"contacts"}),
        ("contact.csv", {"contacts"}),
        ("Business-Units.csv", {"business_units"}),
        ("02 business units.csv", {"business_units"}),
        ("security_roles.csv", {"roles"}),
        ("opportunity_export_2026-11.csv", {"opportunities"}),
        ("people.csv", set()),
        ("user_roles.csv", {"users", "roles"}),
    ],
)
def test_type_from_file_name(name: str, expected: set[str]) -> None:
    assert types_in_name(Path(name)) == expected


def test_csv_whose_type_cannot_be_told_raises(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        read(write(tmp_path, "people.csv", "id\n"))
    assert str(caught.value).startswith(
        "people.csv: cannot tell which type of rows it holds from its name; name a CSV file "
        "after its type, e.g. contacts.csv"
    )
    with pytest.raises(InvalidInput, match="names more than one type"):
        read(write(tmp_path, "user_roles.csv", "id\n"))


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [("id,name", ","), ("id;name;city", ";"), ("id\tname", "\t"), ("id", ","), ("a;b,c", ",")],
)
def test_delimiter_sniffing(header: str, delimiter: str) -> None:
    assert sniff_delimiter(header) == delimiter


# --- whole files ----------------------------------------------------------------------------


def test_missing_file_and_wrong_format_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"^nope\.csv: no such file; check the path$"):
        read(tmp_path / "nope.csv")
    with pytest.raises(InvalidInput, match=r"^notes\.txt: not a JSON or CSV file"):
        read(write(tmp_path, "notes.txt", "hello"))


def test_text_not_in_utf8_is_a_file_error_with_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "contacts.csv", "id,last_name\nc-1,Mäkelä\n", encoding="latin-1")
    with pytest.raises(InvalidInput) as caught:
        read(path)
    assert str(caught.value) == (
        "contacts.csv line 2 is not UTF-8 text (byte 0xe4); save the file as UTF-8 "
        "(Excel: CSV UTF-8)"
    )
    utf16 = write(tmp_path, "leads.csv", "\ufeffid\n", encoding="utf-16-le")
    with pytest.raises(InvalidInput, match="is UTF-16 text; save it as UTF-8"):
        read(utf16)


def test_folders_expand_to_their_files_and_duplicates_are_dropped(tmp_path: Path) -> None:
    a = write(tmp_path, "b.json", "[]")
    b = write(tmp_path, "a.csv", "id\n")
    write(tmp_path, "readme.txt", "")
    assert expand_paths([tmp_path, a]) == [b, a]
    with pytest.raises(InvalidInput, match="no files to import"):
        expand_paths([])


def test_display_names_are_base_names_unless_they_clash(tmp_path: Path) -> None:
    one, two, three = Path("x/contacts.csv"), Path("y/contacts.csv"), Path("y/leads.csv")
    assert display_names([one, two, three]) == {
        one: "x/contacts.csv",
        two: "y/contacts.csv",
        three: "leads.csv",
    }
