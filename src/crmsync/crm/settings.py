"""Organization-wide settings: defaults in code, overrides in the ``org_setting`` table.

Each setting declares its type and allowed values, so a bad value is refused with a message that
lists what is allowed, and the stored JSON is always of the declared type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from crmsync.core.addresses import Blocklist, parse_blocklist_entry
from crmsync.core.correlate import CorrelationSettings, SmartMatchingSettings
from crmsync.core.parties import PartyOptions
from crmsync.core.privacy import DEFAULT_ORG_LEVEL, PrivacyLevel
from crmsync.core.promote import TrackingSettings
from crmsync.core.tokens import (
    COUNTER_DIGITS_RANGE,
    DEFAULT_PREFIX,
    MAX_BASE_TRACKING_NUMBER,
    MAX_PREFIX_CHARS,
    USER_DIGITS_RANGE,
    TokenFormat,
)
from crmsync.crm.mailboxes import OrgSetting
from crmsync.errors import InvalidInput


@dataclass(frozen=True)
class SettingSpec:
    default: Any
    help: str
    parse: Callable[[str], Any]
    check: Callable[[Mapping[str, Any]], None] | None = None
    """Validates the setting together with the others (all values, the new one included);
    raises ValueError with the reason. For settings only valid in combination."""


def _bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("true", "yes", "on", "1"):
        return True
    if word in ("false", "no", "off", "0"):
        return False
    raise ValueError("expected true or false")


def _choice(values: list[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in values:
            raise ValueError(f"expected one of {', '.join(values)}")
        return word

    return parse


_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        word = text.strip()
        value = int(word) if _WHOLE_NUMBER.fullmatch(word) else None
        if value is None or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high:,}")
        return value

    return parse


def _token_prefix(text: str) -> str:
    """1 to 20 characters, no spaces, not ending in a digit: what ``TokenFormat`` accepts."""
    prefix = text.strip()
    TokenFormat(prefix=prefix)  # TokenFormatError (a ValueError) says what is wrong
    return prefix


def _token_format_of(values: Mapping[str, Any]) -> TokenFormat:
    return TokenFormat(
        prefix=values["tracking_token_prefix"],
        base_tracking_number=values["tracking_token_base_number"],
        user_digits=values["tracking_token_user_digits"],
        counter_digits=values["tracking_token_counter_digits"],
    )


def _check_token_format(values: Mapping[str, Any]) -> None:
    """The four token settings together (e.g. the base must fit the user-number digits)."""
    _token_format_of(values)


def _blocklist(text: str) -> list[str]:
    """Comma-separated ``user@domain`` / ``@domain`` entries, stored canonical; empty clears."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    Blocklist.from_entries(entries)  # names every bad entry at once (BlocklistError)
    return list(dict.fromkeys(parse_blocklist_entry(e) for e in entries))


SETTINGS: dict[str, SettingSpec] = {
    # reference §1: "Process emails only for approved users/queues" is on by default
    "process_email_only_for_approved_mailboxes": SettingSpec(
        True, "process email only for mailboxes whose address an administrator approved", _bool
    ),
    "privacy_level": SettingSpec(
        DEFAULT_ORG_LEVEL.value,
        "the most crmsync may take from any mailbox: metadata, subject or everything "
        "(a mailbox may be set stricter, never looser)",
        _choice([level.value for level in PrivacyLevel]),
    ),
    # The tracking decision (docs/tracking-rules.md §1; Dynamics' names in the help)
    "restrict_to_syncing_mailbox": SettingSpec(
        False,
        "only the syncing mailbox's incoming filter decides; off: any CRM recipient's filter "
        "may accept (UseFilteringMethodOfSyncingMailboxOnlyForCorrelation)",
        _bool,
    ),
    "track_sent_items": SettingSpec(
        False, "track email in Sent items automatically (AutoTrackSentFolderItems)", _bool
    ),
    "track_bulk_mail": SettingSpec(
        False, "track bulk mail (mailing lists, newsletters) automatically", _bool
    ),
    "track_automatic_mail": SettingSpec(
        False, "track automatic mail (auto-replies, bounces, notifications) automatically", _bool
    ),
    "blocklist": SettingSpec(
        [],
        "addresses and domains whose mail is never tracked automatically: comma-separated "
        "user@domain and @domain entries (a domain includes its subdomains)",
        _blocklist,
    ),
    # Correlation (docs/tracking-rules.md §3)
    "use_correlation": SettingSpec(
        True,
        "tie a tracked email to the earlier tracked email it belongs with, and take its "
        "regarding record; off turns every method below off (Dynamics' \"Use correlation to "
        'track email conversations")',
        _bool,
    ),
    "correlate_by_in_reply_to": SettingSpec(
        True,
        "correlate by In-Reply-To naming a tracked email's Message-ID (Dynamics' In-Reply-To "
        "correlation; off is like IgnoreConversationIndexAndInReplyToForCorrelation)",
        _bool,
    ),
    "correlate_by_tracking_token": SettingSpec(
        True,
        "correlate by the tracking token in the subject, newest tracked email first (Dynamics' "
        '"Use tracking token" for correlation; needs use_tracking_token)',
        _bool,
    ),
    "correlate_by_thread": SettingSpec(
        True,
        "correlate by References and the thread key (crmsync's stand-in for Dynamics' "
        "ConversationIndex, which IMAP lacks)",
        _bool,
    ),
    "correlate_by_smart_matching": SettingSpec(
        False,
        "correlate by the same subject words and shared addresses (Dynamics' \"Use smart "
        'matching"); not recommended: unrelated mail with a common subject can match',
        _bool,
    ),
    "smart_matching_min_addresses": SettingSpec(
        SmartMatchingSettings().min_address_count,
        "addresses (from, to, cc, bcc) two emails must share to smart-match, 1 to 20 "
        "(Dynamics' HashMinAddressCount)",
        _integer(1, 20),
    ),
    "smart_matching_look_back_days": SettingSpec(
        90,
        "how many days back smart matching looks for a tracked email, 1 to 3650 (Dynamics "
        "looks back 90 days)",
        _integer(1, 3650),
    ),
    # Tracking tokens (docs/tracking-rules.md §2)
    "use_tracking_token": SettingSpec(
        True,
        "append a tracking token to the subject of email sent from the CRM and recognize it in "
        'replies (Dynamics\' "Use tracking token")',
        _bool,
    ),
    "tracking_token_prefix": SettingSpec(
        DEFAULT_PREFIX,
        f"tracking token prefix: 1 to {MAX_PREFIX_CHARS} characters, no spaces, not ending in "
        "a digit; deployments that mail each other need different prefixes (Dynamics' "
        '"Prefix")',
        _token_prefix,
        _check_token_format,
    ),
    "tracking_token_base_number": SettingSpec(
        0,
        f"base tracking number, 0 to {MAX_BASE_TRACKING_NUMBER:,}, added to every user number; "
        'it must fit in the user-number digits (Dynamics\' "Base tracking number")',
        _integer(0, MAX_BASE_TRACKING_NUMBER),
        _check_token_format,
    ),
    "tracking_token_user_digits": SettingSpec(
        3,
        f"digits of the user number in a token, {USER_DIGITS_RANGE[0]} to "
        f'{USER_DIGITS_RANGE[1]} (Dynamics\' "Number of digits for user numbers")',
        _integer(*USER_DIGITS_RANGE),
        _check_token_format,
    ),
    "tracking_token_counter_digits": SettingSpec(
        3,
        f"digits of the per-sender counter in a token, {COUNTER_DIGITS_RANGE[0]} to "
        f"{COUNTER_DIGITS_RANGE[1]}; it wraps 999 -> 000 with 3 (Dynamics' \"Number of digits "
        'for incremental message counter")',
        _integer(*COUNTER_DIGITS_RANGE),
        _check_token_format,
    ),
    # Party resolution (docs/tracking-rules.md §4)
    "unresolve_sender_on_multiple_matches": SettingSpec(
        False,
        "leave the sender unresolved when several records carry its address "
        "(UnresolveSenderInCaseOfMultipleMatch)",
        _bool,
    ),
    "unresolve_recipients_on_multiple_matches": SettingSpec(
        False,
        "leave a To/Cc/Bcc recipient unresolved when several records carry its address "
        "(Dynamics' \"Set To, cc, bcc fields as unresolved values if multiple matches are "
        'found")',
        _bool,
    ),
    "resolve_for_inactive_records": SettingSpec(
        False,
        "let inactive records (never inactive users) be matched to addresses, after active "
        "ones (ResolveForInactiveEntities)",
        _bool,
    ),
    "auto_create_records_on_promote": SettingSpec(
        True,
        "allow creating a contact or lead for the unknown sender of a tracked email, for users "
        "whose personal option asks for it (AutoCreateContactOnPromote)",
        _bool,
    ),
    "track_internal_email_as_two_activities": SettingSpec(
        True,
        "email between two CRM mailboxes becomes two activities, the sent and the received copy "
        '(Dynamics\' "Track emails sent between users as two activities")',
        _bool,
    ),
    # Outgoing email (docs/outgoing.md; reference §4)
    "allow_unresolved_recipients": SettingSpec(
        False,
        "send CRM email to addresses no CRM record has (Dynamics' \"Allow messages with "
        'unresolved email recipients to be sent")',
        _bool,
    ),
    "max_attachment_kb": SettingSpec(
        5120,
        "the largest attachment CRM email may carry, in KB (Dynamics: default 5,120, at most "
        "131,072)",
        _integer(1, 131072),
    ),
    # Scheduling (docs/scheduling.md)
    "schedule_speedup": SettingSpec(
        1,
        "for tests and demonstrations only: every sync interval (2, 5, 12 minutes...) is divided "
        "by this; 1 is real time, 60 turns minutes into seconds",
        _integer(1, 600),
    ),
}


def _spec(key: str) -> SettingSpec:
    try:
        return SETTINGS[key]
    except KeyError:
        raise InvalidInput(
            f"unknown organization setting {key!r}; known: {', '.join(SETTINGS)}"
        ) from None


def get_setting(session: Session, key: str) -> Any:
    spec = _spec(key)
    row = session.get(OrgSetting, key)
    return spec.default if row is None else row.value


def all_settings(session: Session) -> dict[str, Any]:
    stored = {r.key: r.value for r in session.scalars(sa.select(OrgSetting))}
    return {k: stored.get(k, spec.default) for k, spec in SETTINGS.items()}


def set_setting(session: Session, key: str, text: str) -> tuple[Any, Any]:
    """Parse and store a value given as text; returns (old, new)."""
    spec = _spec(key)
    try:
        value = spec.parse(text)
    except ValueError as exc:
        raise InvalidInput(f"{key}: {text!r} is not valid: {exc}") from None
    if spec.check is not None:
        values = all_settings(session)
        values[key] = value
        try:
            spec.check(values)
        except ValueError as exc:
            raise InvalidInput(
                f"{key}: {text!r} does not go with the other settings: {exc}"
            ) from None
    old = get_setting(session, key)
    row = session.get(OrgSetting, key)
    if row is None:
        session.add(OrgSetting(key=key, value=value))
    else:
        row.value = value
    session.flush()
    return old, value


def org_privacy_level(session: Session) -> PrivacyLevel:
    return PrivacyLevel(get_setting(session, "privacy_level"))


def _tracking(values: Mapping[str, Any]) -> TrackingSettings:
    return TrackingSettings(
        restrict_to_syncing_mailbox=bool(values["restrict_to_syncing_mailbox"]),
        track_sent_items=bool(values["track_sent_items"]),
        track_bulk_mail=bool(values["track_bulk_mail"]),
        track_automatic_mail=bool(values["track_automatic_mail"]),
        blocklist=Blocklist.from_entries(values["blocklist"]),
    )


def _token_format(values: Mapping[str, Any]) -> TokenFormat | None:
    return _token_format_of(values) if values["use_tracking_token"] else None


def _correlation(values: Mapping[str, Any]) -> CorrelationSettings:
    return CorrelationSettings(
        enabled=bool(values["use_correlation"]),
        use_in_reply_to=bool(values["correlate_by_in_reply_to"]),
        use_tracking_token=bool(values["correlate_by_tracking_token"]),
        use_thread=bool(values["correlate_by_thread"]),
        use_smart_matching=bool(values["correlate_by_smart_matching"]),
        token_format=_token_format(values),
        smart=SmartMatchingSettings(min_address_count=int(values["smart_matching_min_addresses"])),
    )


def _parties(values: Mapping[str, Any]) -> PartyOptions:
    return PartyOptions(
        unresolve_sender_on_multiple_matches=bool(values["unresolve_sender_on_multiple_matches"]),
        unresolve_recipients_on_multiple_matches=bool(
            values["unresolve_recipients_on_multiple_matches"]
        ),
        resolve_for_inactive=bool(values["resolve_for_inactive_records"]),
    )


def tracking_settings(session: Session) -> TrackingSettings:
    """The organization's settings of the tracking decision (one query)."""
    return _tracking(all_settings(session))


def token_format(session: Session) -> TokenFormat | None:
    """The organization's tracking-token format, None when ``use_tracking_token`` is off
    (one query)."""
    return _token_format(all_settings(session))


def correlation_settings(session: Session) -> CorrelationSettings:
    """The organization's correlation settings, the token format included (one query)."""
    return _correlation(all_settings(session))


def party_options(session: Session) -> PartyOptions:
    """The organization's options of party resolution (one query)."""
    return _parties(all_settings(session))


@dataclass(frozen=True)
class IncomingSettings:
    """Every organization setting that processing received mail reads, read at once: the sync
    reads them once per run, so one run works with one consistent set."""

    tracking: TrackingSettings
    correlation: CorrelationSettings
    parties: PartyOptions
    token_format: TokenFormat | None
    """None when tracking tokens are off (``use_tracking_token``)."""
    auto_create_on_promote: bool
    """[AutoCreateContactOnPromote] the org switch of automatic record creation."""
    two_activities: bool
    """["Track emails sent between users as two activities"] the sent and the received copy
    of mail between two CRM mailboxes are separate activities."""
    privacy_level: PrivacyLevel
    """The organization's level; a mailbox may be stricter."""
    smart_matching_look_back_days: int
    """How far back smart matching looks (``DatabaseCorrelationLookup``'s window)."""


def incoming_settings(session: Session) -> IncomingSettings:
    """The organization settings of received mail (one query)."""
    values = all_settings(session)
    return IncomingSettings(
        tracking=_tracking(values),
        correlation=_correlation(values),
        parties=_parties(values),
        token_format=_token_format(values),
        auto_create_on_promote=bool(values["auto_create_records_on_promote"]),
        two_activities=bool(values["track_internal_email_as_two_activities"]),
        privacy_level=PrivacyLevel(values["privacy_level"]),
        smart_matching_look_back_days=int(values["smart_matching_look_back_days"]),
    )
