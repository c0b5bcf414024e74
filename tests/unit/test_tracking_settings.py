"""The organization settings of the tracking decision: defaults and parsing (no database)."""

from __future__ import annotations

import pytest

from crmsync.core.promote import TrackingSettings
from crmsync.crm.settings import SETTINGS

BOOLEAN_SETTINGS = (
    "restrict_to_syncing_mailbox",
    "track_sent_items",
    "track_bulk_mail",
    "track_automatic_mail",
)


def test_the_existing_settings_are_intact() -> None:
    assert SETTINGS["process_email_only_for_approved_mailboxes"].default is True
    assert SETTINGS["privacy_level"].default == "everything"


@pytest.mark.parametrize("key", BOOLEAN_SETTINGS)
def test_a_boolean_tracking_setting_defaults_like_the_core_and_parses(key: str) -> None:
    spec = SETTINGS[key]
    assert spec.default is False
    assert spec.default == getattr(TrackingSettings(), key)
    assert spec.parse(" On ") is True
    assert spec.parse("no") is False
    with pytest.raises(ValueError, match="true or false"):
        spec.parse("sometimes")


def test_the_blocklist_is_empty_by_default_and_parses_comma_separated_entries() -> None:
    spec = SETTINGS["blocklist"]
    assert spec.default == []
    assert not TrackingSettings().blocklist
    assert spec.parse("") == []
    assert spec.parse(" @Spam.Example, Bob@Example.COM ,, *@spam.example") == [
        "@spam.example",
        "bob@example.com",
    ]


def test_the_blocklist_names_every_bad_entry() -> None:
    with pytest.raises(ValueError) as exc:
        SETTINGS["blocklist"].parse("example.com, @ok.example, x@@y")
    assert "'example.com'" in str(exc.value) and "'x@@y'" in str(exc.value)
