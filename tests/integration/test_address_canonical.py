"""One canonical address form everywhere: stored, imported, looked up."""

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from crmsync.admin.mailboxes import find_owner
from crmsync.crm.records import EmailAddress
from crmsync.db import session_scope
from crmsync.importing import import_files

pytestmark = pytest.mark.integration


def test_punycode_and_unicode_forms_are_one_address(engine: Engine, tmp_path: Path) -> None:
    people = tmp_path / "people.json"
    people.write_text(
        json.dumps(
            {
                "business_units": [{"id": "bu", "name": "Root"}],
                "users": [
                    {
                        "id": "u1",
                        "username": "aino",
                        "last_name": "Aalto",
                        "business_unit": "bu",
                        "email": "Aino@XN--TST-QLA.example",
                    }
                ],
            }
        )
    )
    people_plain = tmp_path / "people2.json"
    people_plain.write_text(
        people.read_text().replace("Aino@XN--TST-QLA.example", "aino@täst.example")
    )
    first = import_files(engine, [people])
    assert first.ok, [str(e) for e in first.errors]
    again = import_files(engine, [people_plain])  # the same address, written the other way
    assert again.counts["users"].unchanged == 1 and again.counts["users"].updated == 0
    with session_scope(engine) as s:
        assert s.scalars(sa.select(EmailAddress.address)).all() == ["aino@täst.example"]
        assert find_owner(s, "AINO@xn--tst-qla.example").username == "aino"
        assert find_owner(s, "aino@TÄST.example").username == "aino"
