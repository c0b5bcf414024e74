"""Organization-wide settings: defaults in code, overrides in the ``org_setting`` table.

Each setting declares its type and allowed values, so a bad value is refused with a message that
lists what is allowed, and the stored JSON is always of the declared type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from crmsync.core.addresses import Blocklist, parse_blocklist_entry
from crmsync.core.privacy import DEFAULT_ORG_LEVEL, PrivacyLevel
from crmsync.core.promote import TrackingSettings
from crmsync.crm.mailboxes import OrgSetting
from crmsync.errors import InvalidInput


@dataclass(frozen=True)
class SettingSpec:
    default: Any
    help: str
    parse: Callable[[str], Any]


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


def tracking_settings(session: Session) -> TrackingSettings:
    """The organization's settings of the tracking decision (one query)."""
    values = all_settings(session)
    return TrackingSettings(
        restrict_to_syncing_mailbox=bool(values["restrict_to_syncing_mailbox"]),
        track_sent_items=bool(values["track_sent_items"]),
        track_bulk_mail=bool(values["track_bulk_mail"]),
        track_automatic_mail=bool(values["track_automatic_mail"]),
        blocklist=Blocklist.from_entries(values["blocklist"]),
    )
