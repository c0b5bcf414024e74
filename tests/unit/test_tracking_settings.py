"""The organization settings of tracking, correlation, tokens and party resolution: defaults
and parsing (no database)."""

from __future__ import annotations

import pytest

from crmsync.core.correlate import CorrelationSettings, SmartMatchingSettings
from crmsync.core.parties import PartyOptions
from crmsync.core.promote import TrackingSettings
from crmsync.core.tokens import TokenFormat, TokenFormatError
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


# --- correlation, tracking tokens, party resolution, activities -----------------------------

CORRELATION_DEFAULTS = {
    "use_correlation": ("enabled", True),
    "correlate_by_in_reply_to": ("use_in_reply_to", True),
    "correlate_by_tracking_token": ("use_tracking_token", True),
    "correlate_by_thread": ("use_thread", True),
    "correlate_by_smart_matching": ("use_smart_matching", False),
}
PARTY_DEFAULTS = {
    "unresolve_sender_on_multiple_matches": "unresolve_sender_on_multiple_matches",
    "unresolve_recipients_on_multiple_matches": "unresolve_recipients_on_multiple_matches",
    "resolve_for_inactive_records": "resolve_for_inactive",
}
TOKEN_DEFAULTS = {
    "tracking_token_prefix": "prefix",
    "tracking_token_base_number": "base_tracking_number",
    "tracking_token_user_digits": "user_digits",
    "tracking_token_counter_digits": "counter_digits",
}


def _defaults() -> dict[str, object]:
    return {k: spec.default for k, spec in SETTINGS.items()}


@pytest.mark.parametrize(("key", "field_and_default"), CORRELATION_DEFAULTS.items())
def test_a_correlation_switch_defaults_like_the_core(
    key: str, field_and_default: tuple[str, bool]
) -> None:
    field, default = field_and_default
    assert SETTINGS[key].default is default
    assert getattr(CorrelationSettings(), field) is default
    assert SETTINGS[key].parse("OFF") is False and SETTINGS[key].parse("1") is True


@pytest.mark.parametrize(("key", "field"), PARTY_DEFAULTS.items())
def test_a_party_option_defaults_like_the_core(key: str, field: str) -> None:
    assert SETTINGS[key].default is False is getattr(PartyOptions(), field)


def test_the_other_switches_default_on() -> None:
    for key in (
        "use_tracking_token",
        "auto_create_records_on_promote",
        "track_internal_email_as_two_activities",
    ):
        assert SETTINGS[key].default is True, key
    assert SETTINGS["smart_matching_min_addresses"].default == 2
    assert SmartMatchingSettings().min_address_count == 2
    assert SETTINGS["smart_matching_look_back_days"].default == 90


def test_the_token_settings_default_to_the_cores_format() -> None:
    fmt = TokenFormat()
    for key, field in TOKEN_DEFAULTS.items():
        assert SETTINGS[key].default == getattr(fmt, field), key
    SETTINGS["tracking_token_prefix"].check(_defaults())  # type: ignore[misc]


def test_the_help_names_dynamics_equivalents() -> None:
    assert "not recommended" in SETTINGS["correlate_by_smart_matching"].help
    assert "AutoCreateContactOnPromote" in SETTINGS["auto_create_records_on_promote"].help
    assert "ResolveForInactiveEntities" in SETTINGS["resolve_for_inactive_records"].help
    assert "HashMinAddressCount" in SETTINGS["smart_matching_min_addresses"].help
    assert "two activities" in SETTINGS["track_internal_email_as_two_activities"].help
    assert "UnresolveSenderInCaseOfMultipleMatch" in (
        SETTINGS["unresolve_sender_on_multiple_matches"].help
    )


@pytest.mark.parametrize(
    ("key", "low", "high", "shown"),
    [
        ("smart_matching_min_addresses", 1, 20, "from 1 to 20"),
        ("smart_matching_look_back_days", 1, 3650, "from 1 to 3,650"),
        ("tracking_token_base_number", 0, 2_147_483_647, "from 0 to 2,147,483,647"),
        ("tracking_token_user_digits", 1, 10, "from 1 to 10"),
        ("tracking_token_counter_digits", 1, 9, "from 1 to 9"),
    ],
)
def test_a_number_setting_parses_within_its_range(
    key: str, low: int, high: int, shown: str
) -> None:
    parse = SETTINGS[key].parse
    assert parse(f" {low} ") == low
    assert parse(str(high)) == high
    assert parse(f"+{high}") == high
    for bad in (str(low - 1), str(high + 1), "", "many", "2.5", "1e3", "1_0", "٣"):
        with pytest.raises(ValueError, match=f"expected a whole number {shown}$"):
            parse(bad)


def test_the_token_prefix_is_checked_by_the_token_format() -> None:
    parse = SETTINGS["tracking_token_prefix"].parse
    assert parse(" ACME: ") == "ACME:"
    assert parse("X") == "X"
    assert parse("A" * 20) == "A" * 20
    for bad, message in (
        ("", "prefix must be 1 to 20 characters"),
        ("A" * 21, "prefix must be 1 to 20 characters"),
        ("CR M:", "must not contain spaces"),
        ("CRM1", "must not end with a digit"),
    ):
        with pytest.raises(TokenFormatError, match=message):
            parse(bad)


def test_a_token_combination_the_format_refuses_is_refused_with_its_message() -> None:
    values = _defaults() | {"tracking_token_base_number": 1000, "tracking_token_user_digits": 3}
    for key in TOKEN_DEFAULTS:
        check = SETTINGS[key].check
        assert check is not None, key
        with pytest.raises(
            TokenFormatError,
            match="base tracking number 1,000 does not fit in 3 user number digits",
        ):
            check(values)
    SETTINGS["tracking_token_user_digits"].check(  # type: ignore[misc]
        values | {"tracking_token_user_digits": 4}
    )
    assert SETTINGS["use_correlation"].check is None
