"""Field security on hand-built principals: both sync directions, and the reasons for drops."""

from __future__ import annotations

import uuid

from crmsync.crm.security import (
    DroppedField,
    Principal,
    field_access,
    incoming_change,
    outgoing_values,
)
from crmsync.crm.security.principal import FieldGrant, UnitTree

SECURED = {"contact": frozenset({"mobile_phone", "job_title", "telephone"})}


def make(grants: dict[str, FieldGrant], *, disabled: bool = False) -> Principal:
    return Principal(
        uuid.uuid4(),
        "alice",
        None,
        disabled,
        {},
        {},
        UnitTree.from_rows([]),
        secured_fields=SECURED,
        field_grants={("contact", f): g for f, g in grants.items()},
    )


READ = FieldGrant(can_read=True)
ALL = FieldGrant(can_read=True, can_create=True, can_update=True)
CREATE_ONLY = FieldGrant(can_read=True, can_create=True)


def test_field_access_sets() -> None:
    access = field_access(make({"mobile_phone": READ, "telephone": CREATE_ONLY}), "contact")
    assert access.can_read("last_name") and access.can_update("last_name")  # not secured
    assert access.can_read("mobile_phone") and not access.can_update("mobile_phone")
    assert access.can_create("telephone") and not access.can_update("telephone")
    assert access.unreadable == {"job_title"}
    assert access.unupdatable == {"job_title", "mobile_phone", "telephone"}
    assert access.uncreatable == {"job_title", "mobile_phone"}
    assert field_access(make({}), "account").secured == frozenset()


def test_outgoing_leaves_unreadable_secured_fields_out() -> None:
    values = {"last_name": "Virtanen", "mobile_phone": "+358 40 1", "job_title": "CEO"}
    out = outgoing_values(make({"mobile_phone": READ}), "contact", values)
    assert out == {"last_name": "Virtanen", "mobile_phone": "+358 40 1"}
    assert "job_title" not in out
    assert outgoing_values(make({}), "contact", values) == {"last_name": "Virtanen"}


def test_incoming_update_drops_what_may_not_be_updated_with_reasons() -> None:
    changes = {"last_name": "Korhonen", "mobile_phone": "+358 40 2", "job_title": "CTO"}
    allowed, dropped = incoming_change(
        make({"mobile_phone": READ, "job_title": ALL}), "contact", changes, creating=False
    )
    assert allowed == {"last_name": "Korhonen", "job_title": "CTO"}
    assert dropped == [
        DroppedField(
            "mobile_phone",
            "contact.mobile_phone is a secured field and no field security profile of user alice "
            "or their teams grants update",
        )
    ]


def test_incoming_create_uses_the_create_permission() -> None:
    changes = {"telephone": "1", "mobile_phone": "2"}
    grants = {"telephone": CREATE_ONLY, "mobile_phone": FieldGrant(can_update=True)}
    allowed, dropped = incoming_change(make(grants), "contact", changes, creating=True)
    assert allowed == {"telephone": "1"}
    assert [d.field for d in dropped] == ["mobile_phone"]
    assert dropped[0].reason.endswith("grants create")
    allowed, dropped = incoming_change(make(grants), "contact", changes, creating=False)
    assert allowed == {"mobile_phone": "2"}
    assert [d.field for d in dropped] == ["telephone"]


def test_disabled_user_gets_and_sets_nothing() -> None:
    p = make({"mobile_phone": ALL}, disabled=True)
    assert outgoing_values(p, "contact", {"last_name": "x"}) == {}
    allowed, dropped = incoming_change(p, "contact", {"last_name": "x"}, creating=False)
    assert allowed == {}
    assert dropped == [DroppedField("last_name", "user alice is disabled and may do nothing")]
