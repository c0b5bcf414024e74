"""Whether a received (or sent) email becomes a CRM activity: the "promote" decision (reference §2).

The decision is a pure function of facts the caller looked up (:class:`MessageFacts`) and the
organization's settings (:class:`TrackingSettings`). It answers with a :class:`Decision` that
carries a stable :class:`ReasonCode` and a sentence an administrator reads in ``crmsync explain``.

Checks, in this order (the first that decides wins; ``docs/tracking-rules.md`` has the table):

1. **Manual** tracking (pane, API, folder, category) always tracks: Dynamics' manual track
   ignores the incoming filter, and crmsync also lets it pass the folder, blocklist and bulk
   checks — a person who tracks an email by hand has looked at it and decided.
2. **Folder**: Inbox is read; Sent items only with the org option; nothing else.
3. **Already tracked**: the same message is an activity already (another recipient's mailbox
   tracked it); this mailbox's copy is linked to it, whatever this mailbox's filter says.
4. **Blocklist**: the sender or any recipient that is not a CRM mailbox matches an entry.
5. **Bulk / automatic** mail, unless the org option tracks it.
6. **Incoming filters**: the syncing mailbox's owner first, then (unless the org restricts the
   check to the syncing mailbox) every other CRM user or queue among the recipients, in header
   order; the first that accepts is the *accepting entity*. ``none`` never accepts.

Filtering happens before correlation: "is a reply to a tracked email" is a fact the caller looked
up (by In-Reply-To / tracking token), not the correlation result.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from crmsync.core.addresses import (
    AutomaticKind,
    AutomaticMail,
    Blocklist,
    classify_automatic,
    normalize_address,
    parse_address_list,
)
from crmsync.core.correlate import normalize_message_id
from crmsync.core.parties import (
    LEAD_CONTACT_ACCOUNT,
    Candidate,
    PartyOptions,
    eligible,
)
from crmsync.core.tokens import TokenFormat, find_token

OwnerId = uuid.UUID | str


class IncomingFilter(enum.StrEnum):
    """Same values as ``crmsync.crm.base.IncomingEmailFilter`` (a test keeps them equal)."""

    ALL = "all"
    RESPONSES = "responses"
    LEADS_CONTACTS_ACCOUNTS = "leads_contacts_accounts"
    EMAIL_ENABLED = "email_enabled"
    NONE = "none"


DEFAULT_FILTER = IncomingFilter.RESPONSES
"""Dynamics' default and "the most common" option (reference §2)."""


class OwnerKind(enum.StrEnum):
    USER = "user"
    QUEUE = "queue"


class FolderKind(enum.StrEnum):
    INBOX = "inbox"
    SENT = "sent"
    OTHER = "other"


class SenderKind(enum.StrEnum):
    """What the other side of the email resolved to, as far as the filters care."""

    LEAD_CONTACT_ACCOUNT = "lead_contact_account"
    """At least one lead, contact or account has the address."""
    EMAIL_ENABLED = "email_enabled"
    """Only other email-enabled records (users, queues, teams, custom types) have it."""
    UNKNOWN = "unknown"
    """No record that party resolution could match has it."""


def sender_kind(candidates: Iterable[Candidate], options: PartyOptions | None = None) -> SenderKind:
    """The kind of an address from the records carrying it (inactive ones as party rules say).

    Any matching lead, contact or account counts, even when precedence would resolve the party
    to a user: the filter asks "is this someone we sell to", not "who is the party".
    """
    usable = eligible(candidates, options or PartyOptions())
    if any(c.kind in LEAD_CONTACT_ACCOUNT for c in usable):
        return SenderKind.LEAD_CONTACT_ACCOUNT
    if usable:
        return SenderKind.EMAIL_ENABLED
    return SenderKind.UNKNOWN


class ReasonCode(enum.StrEnum):
    """Why an email was or was not tracked. Stable: stored with every decision, never renamed."""

    # tracked
    MANUAL = "manual"
    ALREADY_TRACKED = "already_tracked"
    FILTER_ALL = "filter_all"
    REPLY_TO_TRACKED = "reply_to_tracked"
    FROM_CRM_RECORD = "from_crm_record"
    FROM_EMAIL_ENABLED_RECORD = "from_email_enabled_record"
    # not tracked
    FOLDER_NOT_TRACKED = "folder_not_tracked"
    SENT_ITEMS_OFF = "sent_items_off"
    BLOCKLISTED = "blocklisted"
    BULK_MAIL = "bulk_mail"
    AUTO_SUBMITTED = "auto_submitted"
    NO_CRM_RECIPIENT = "no_crm_recipient"
    FILTER_NONE = "filter_none"
    NOT_A_REPLY = "not_a_reply"
    SENDER_NOT_IN_CRM = "sender_not_in_crm"
    SENDER_NOT_LEAD_CONTACT_ACCOUNT = "sender_not_lead_contact_account"

    @property
    def tracks(self) -> bool:
        return self in _TRACKING_REASONS

    @property
    def sentence(self) -> str:
        """The general meaning, for documentation and lists; ``Decision.detail`` is specific."""
        return REASON_SENTENCES[self]


_TRACKING_REASONS = frozenset(
    {
        ReasonCode.MANUAL,
        ReasonCode.ALREADY_TRACKED,
        ReasonCode.FILTER_ALL,
        ReasonCode.REPLY_TO_TRACKED,
        ReasonCode.FROM_CRM_RECORD,
        ReasonCode.FROM_EMAIL_ENABLED_RECORD,
    }
)

REASON_SENTENCES: dict[ReasonCode, str] = {
    ReasonCode.MANUAL: "Tracked by hand; manual tracking ignores filters, folder, blocklist "
    "and bulk rules.",
    ReasonCode.ALREADY_TRACKED: "The same message is already a CRM activity (another mailbox "
    "tracked it); this copy is linked to it.",
    ReasonCode.FILTER_ALL: "A CRM recipient's incoming filter tracks all email.",
    ReasonCode.REPLY_TO_TRACKED: "A CRM recipient tracks replies to tracked email, and this "
    "email answers one.",
    ReasonCode.FROM_CRM_RECORD: "A CRM recipient tracks email from leads, contacts and "
    "accounts, and the sender is one.",
    ReasonCode.FROM_EMAIL_ENABLED_RECORD: "A CRM recipient tracks email from any email-enabled "
    "record, and the sender is one.",
    ReasonCode.FOLDER_NOT_TRACKED: "Only email in the Inbox (and Sent items, if the "
    "organization allows it) is tracked automatically.",
    ReasonCode.SENT_ITEMS_OFF: "The email is in Sent items, and the organization does not "
    "track Sent items automatically.",
    ReasonCode.BLOCKLISTED: "The sender or a recipient is on the organization's blocklist.",
    ReasonCode.BULK_MAIL: "Bulk mail (mailing list or newsletter), which the organization "
    "does not track.",
    ReasonCode.AUTO_SUBMITTED: "Automatic mail (auto-reply, bounce or notification), which the "
    "organization does not track.",
    ReasonCode.NO_CRM_RECIPIENT: "No CRM user or queue with a mailbox received this email.",
    ReasonCode.FILTER_NONE: "The incoming filter is 'no email messages': nothing is tracked "
    "automatically.",
    ReasonCode.NOT_A_REPLY: "The incoming filter tracks only replies to tracked email, and "
    "this email is not one.",
    ReasonCode.SENDER_NOT_IN_CRM: "The incoming filter tracks email from CRM records, and no "
    "CRM record has the sender's address.",
    ReasonCode.SENDER_NOT_LEAD_CONTACT_ACCOUNT: "The incoming filter tracks email from leads, "
    "contacts and accounts, and the sender is another kind of record.",
}


@dataclass(frozen=True)
class CrmOwner:
    """A CRM user or queue that has a mailbox, with its incoming filter."""

    id: OwnerId
    kind: OwnerKind = OwnerKind.USER
    filter: IncomingFilter = DEFAULT_FILTER
    address: str | None = None
    """The address it received the email at (canonical); exempt from the blocklist."""
    name: str = ""
    """For the explanation only."""

    def label(self) -> str:
        return f"{self.kind.value} {self.name or self.id}"


@dataclass(frozen=True)
class MessageFacts:
    """What the decision needs to know about one message, all looked up by the caller."""

    message_id: str | None
    subject: str | None
    """Carried for the trace; no rule reads it (the caller turned its tracking token into
    ``is_reply_to_tracked``), so the decision works at the ``metadata`` privacy level."""
    sender: str | None
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    folder: FolderKind = FolderKind.INBOX
    automatic: AutomaticMail | None = None
    """From :func:`crmsync.core.addresses.classify_automatic`."""
    is_reply_to_tracked: bool = False
    """In-Reply-To (or a tracking token) names an email that is tracked already."""
    already_tracked: bool = False
    """This very message (by normalized Message-ID) is an activity already."""
    sender_kind: SenderKind = SenderKind.UNKNOWN
    recipients_kind: SenderKind = SenderKind.UNKNOWN
    """The best kind among the recipients; the record filters read it for Sent items, where
    the sender is the mailbox owner and the other side is the recipients."""
    mailbox: CrmOwner | None = None
    """The owner of the mailbox being synced; None for a forward mailbox and for the
    privacy-minimal check, where only the recipients' filters count."""
    crm_recipients: tuple[CrmOwner, ...] = ()
    """Other CRM users and queues with a mailbox among to/cc/bcc, in header order."""

    @property
    def recipients(self) -> tuple[str, ...]:
        return (*self.to, *self.cc, *self.bcc)


@dataclass(frozen=True)
class TrackingSettings:
    """Organization settings of the tracking decision (Dynamics' names in brackets)."""

    restrict_to_syncing_mailbox: bool = False
    """[UseFilteringMethodOfSyncingMailboxOnlyForCorrelation] only the syncing mailbox's
    filter counts; by default any CRM recipient's filter may accept."""
    track_sent_items: bool = False
    """[AutoTrackSentFolderItems]"""
    track_bulk_mail: bool = False
    track_automatic_mail: bool = False
    blocklist: Blocklist = field(default_factory=Blocklist)


@dataclass(frozen=True)
class Decision:
    should_track: bool
    reason: ReasonCode
    accepted_by: OwnerId | None
    """The user or queue whose filter accepted the email (Dynamics' accepting entity)."""
    detail: str


def _decision(reason: ReasonCode, detail: str, accepted_by: OwnerId | None = None) -> Decision:
    return Decision(reason.tracks, reason, accepted_by, detail)


def decide(facts: MessageFacts, settings: TrackingSettings, *, manual: bool = False) -> Decision:
    """Track this message or not, why, and whose filter accepted it. See the module docstring."""
    if manual:
        owner = facts.mailbox
        who = f" by {owner.label()}" if owner else ""
        return _decision(
            ReasonCode.MANUAL,
            f"Tracked by hand{who}; manual tracking does not apply filters, folder, blocklist or "
            "bulk rules.",
            owner.id if owner else None,
        )

    if facts.folder is FolderKind.SENT and not settings.track_sent_items:
        return _decision(
            ReasonCode.SENT_ITEMS_OFF,
            "In Sent items; the organization does not track Sent items automatically "
            "(organization setting track_sent_items).",
        )
    if facts.folder is FolderKind.OTHER:
        return _decision(
            ReasonCode.FOLDER_NOT_TRACKED,
            "Not in the Inbox or Sent items; only those folders are tracked automatically "
            "(track other folders with folder tracking).",
        )

    if facts.already_tracked:
        return _decision(
            ReasonCode.ALREADY_TRACKED,
            "This message is already a CRM activity (tracked from another mailbox); this copy "
            "is linked to it.",
        )

    own = _own_addresses(facts)
    blocked = settings.blocklist.first_match(
        a for a in (facts.sender, *facts.recipients) if a and _canonical(a) not in own
    )
    if blocked is not None:
        address, entry = blocked
        return _decision(
            ReasonCode.BLOCKLISTED,
            f"{address} matches the blocklist entry {entry}; mail with blocklisted "
            "correspondents is never tracked automatically.",
        )

    auto = facts.automatic
    if auto is not None:
        if auto.kind is AutomaticKind.BULK and not settings.track_bulk_mail:
            return _decision(
                ReasonCode.BULK_MAIL,
                f"Bulk mail ({auto.evidence}); the organization does not track bulk mail "
                "(organization setting track_bulk_mail).",
            )
        if auto.kind is AutomaticKind.AUTOMATIC and not settings.track_automatic_mail:
            return _decision(
                ReasonCode.AUTO_SUBMITTED,
                f"Automatic mail ({auto.evidence}); the organization does not track automatic "
                "mail (organization setting track_automatic_mail).",
            )

    return _apply_filters(facts, settings)


def _canonical(address: str) -> str:
    return normalize_address(address) or address.strip().lower()


def _own_addresses(facts: MessageFacts) -> frozenset[str]:
    """Addresses of the CRM mailboxes involved: they are us, not correspondents to block."""
    owners = [facts.mailbox, *facts.crm_recipients]
    return frozenset(_canonical(o.address) for o in owners if o is not None and o.address)


def _filter_candidates(facts: MessageFacts, settings: TrackingSettings) -> list[CrmOwner]:
    """Whose filters count, in the order they are asked."""
    if facts.folder is FolderKind.SENT:
        # A sent email is judged by its sender's mailbox only; each CRM recipient judges its
        # own received copy in its own Inbox.
        return [facts.mailbox] if facts.mailbox is not None else []
    if settings.restrict_to_syncing_mailbox and facts.mailbox is not None:
        return [facts.mailbox]
    # Without a syncing mailbox (forward mailbox, privacy-minimal check) the restriction has
    # nothing to restrict to, so every CRM recipient counts.
    owners: list[CrmOwner] = []
    seen: set[OwnerId] = set()
    for owner in (facts.mailbox, *facts.crm_recipients):
        if owner is not None and owner.id not in seen:
            seen.add(owner.id)
            owners.append(owner)
    return owners


def _evaluate(owner: CrmOwner, facts: MessageFacts) -> tuple[ReasonCode, str]:
    """One owner's filter on this message: the reason code and a clause explaining it."""
    sent = facts.folder is FolderKind.SENT
    other_side = facts.recipients_kind if sent else facts.sender_kind
    who = "a recipient" if sent else f"the sender {facts.sender or '(none)'}"
    whose = (
        "any recipient's address" if sent else f"the sender's address {facts.sender or '(none)'}"
    )
    match owner.filter:
        case IncomingFilter.ALL:
            return ReasonCode.FILTER_ALL, f"{owner.label()} tracks all email"
        case IncomingFilter.NONE:
            return ReasonCode.FILTER_NONE, f"{owner.label()} tracks no email automatically"
        case IncomingFilter.RESPONSES:
            if facts.is_reply_to_tracked:
                return (
                    ReasonCode.REPLY_TO_TRACKED,
                    f"{owner.label()} tracks replies to tracked email, and this is one",
                )
            return (
                ReasonCode.NOT_A_REPLY,
                f"{owner.label()} tracks only replies to tracked email, and this is not one",
            )
        case IncomingFilter.LEADS_CONTACTS_ACCOUNTS:
            if other_side is SenderKind.LEAD_CONTACT_ACCOUNT:
                return (
                    ReasonCode.FROM_CRM_RECORD,
                    f"{owner.label()} tracks email with leads, contacts and accounts, and {who} "
                    "is one",
                )
            if other_side is SenderKind.EMAIL_ENABLED:
                return (
                    ReasonCode.SENDER_NOT_LEAD_CONTACT_ACCOUNT,
                    f"{owner.label()} tracks email with leads, contacts and accounts, and {who} "
                    "is another kind of record",
                )
            return (
                ReasonCode.SENDER_NOT_IN_CRM,
                f"{owner.label()} tracks email with leads, contacts and accounts, and no CRM "
                f"record has {whose}",
            )
        case IncomingFilter.EMAIL_ENABLED:
            if other_side is not SenderKind.UNKNOWN:
                return (
                    ReasonCode.FROM_EMAIL_ENABLED_RECORD,
                    f"{owner.label()} tracks email with email-enabled records, and {who} is one",
                )
            return (
                ReasonCode.SENDER_NOT_IN_CRM,
                f"{owner.label()} tracks email with email-enabled records, and no CRM record "
                f"has {whose}",
            )
    raise AssertionError(f"unhandled filter {owner.filter!r}")  # pragma: no cover


def _apply_filters(facts: MessageFacts, settings: TrackingSettings) -> Decision:
    owners = _filter_candidates(facts, settings)
    if not owners:
        return _decision(
            ReasonCode.NO_CRM_RECIPIENT,
            "No CRM user or queue with a mailbox is among the recipients, so no incoming filter "
            "applies.",
        )
    refusals: list[tuple[ReasonCode, str]] = []
    for owner in owners:
        reason, clause = _evaluate(owner, facts)
        if reason.tracks:
            skipped = ""
            if refusals:
                skipped = " (not accepted by: " + "; ".join(c for _, c in refusals) + ")"
            return _decision(reason, f"Tracked: {clause}{skipped}.", owner.id)
        refusals.append((reason, clause))
    # The first owner asked (the syncing mailbox when there is one) gives the reason code; the
    # sentence lists everyone's.
    first_reason, first_clause = refusals[0]
    rest = ""
    if len(refusals) > 1:
        rest = "; other CRM recipients did not accept it either: " + "; ".join(
            c for _, c in refusals[1:]
        )
    elif settings.restrict_to_syncing_mailbox and facts.crm_recipients and facts.mailbox:
        rest = (
            " (only the syncing mailbox's filter counts: organization setting "
            "restrict_to_syncing_mailbox)"
        )
    return _decision(first_reason, f"Not tracked: {first_clause}{rest}.")


# --- the privacy-minimal check --------------------------------------------------------------


class IncomingLookup(Protocol):
    """What :func:`check_incoming` asks the CRM; the service implements it on the database.

    It is only ever given addresses, message ids and a tracking token, never a subject or a
    body.
    """

    def candidates(self, address: str) -> Sequence[Candidate]:
        """Records carrying this canonical address (at most ``SENDER_MATCH_LIMIT``)."""
        ...

    def is_tracked_message(self, message_id: str) -> bool:
        """Whether an email activity has this normalized Message-ID."""
        ...

    def is_tracked_token(self, token: str) -> bool:
        """Whether a tracked email carries this tracking token (e.g. ``CRM:0001001``)."""
        ...

    def mailbox_owners(self, addresses: Collection[str]) -> Sequence[CrmOwner]:
        """The CRM users and queues with a mailbox at any of these canonical addresses, with
        their incoming filter and the address (``CrmOwner.address``) that matched."""
        ...

    def tracking_settings(self) -> TrackingSettings: ...

    def party_options(self) -> PartyOptions: ...

    def token_format(self) -> TokenFormat | None:
        """The organization's token format, or None when tracking tokens are off."""
        ...


def check_incoming(
    message_id: str | None,
    subject: str | None,
    sender: str | None,
    recipients: Iterable[str],
    lookup: IncomingLookup,
) -> Decision:
    """Should the CRM track this received email? From four fields only (Dynamics'
    ``CheckIncomingEmail``, and the seed's privacy promise: "the CRM decides from sender,
    recipients and subject only").

    With no headers there is no In-Reply-To and no List-Id: a reply is recognized by its
    tracking token, bulk mail not at all (except bounces, by their MAILER-DAEMON sender). The
    message is taken to be in an Inbox, and every CRM recipient's filter counts (there is no
    syncing mailbox to restrict to).
    """
    settings = lookup.tracking_settings()
    sender_address = normalize_address(sender)
    addresses = parse_address_list(list(recipients))

    normalized_id = normalize_message_id(message_id)
    already = normalized_id is not None and lookup.is_tracked_message(normalized_id)

    fmt = lookup.token_format()
    token = find_token(subject, fmt) if fmt is not None else None
    is_reply = token is not None and lookup.is_tracked_token(token.text)

    kind = SenderKind.UNKNOWN
    if sender_address is not None:
        kind = sender_kind(lookup.candidates(sender_address), lookup.party_options())

    owners = lookup.mailbox_owners(addresses) if addresses else ()
    order = {address: i for i, address in enumerate(addresses)}
    ordered = tuple(
        sorted(owners, key=lambda o: order.get(_canonical(o.address or ""), len(order)))
    )

    facts = MessageFacts(
        message_id=normalized_id,
        subject=subject,
        sender=sender_address or sender,
        to=addresses,
        folder=FolderKind.INBOX,
        automatic=classify_automatic({}, sender=sender),
        is_reply_to_tracked=is_reply,
        already_tracked=already,
        sender_kind=kind,
        crm_recipients=ordered,
    )
    return decide(facts, settings)
