"""Which CRM records an email's sender and recipients are (reference §3, "party resolution").

The service finds the records that carry each address (the ``email_address`` index) and hands
them here as :class:`Candidate` values; this module only chooses. Resolution runs as the system
(it sees every record), as server-side sync does: what a user may see is decided when the email
is shown, not when it is stored.

Sender: one record, the first *active* one in the precedence order
user → contact → account → lead → team → business unit → any other email-enabled record, except
that a record owned by the mailbox's owner wins over the order. 100 or more matches, or several
matches with the "unresolve sender on multiple matches" option, leave the sender unresolved.
Recipients (to/cc/bcc): every matching record, unless the "set as unresolved if multiple
matches" option is on.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from crmsync.core.addresses import normalize_address

RecordId = uuid.UUID | str
"""Record ids are UUIDs in the database; tests may use strings. The core only compares them."""

SENDER_MATCH_LIMIT = 100
"""Dynamics resolves a sender among "fewer than 100" matches and gives up above; crmsync treats
exactly 100 as too many as well, so the service can fetch at most this many rows per address."""


class PartyRole(enum.StrEnum):
    """Same values as ``crmsync.crm.base.PartyRole`` (a test keeps them equal)."""

    FROM = "from"
    TO = "to"
    CC = "cc"
    BCC = "bcc"
    ORGANIZER = "organizer"
    REQUIRED = "required"
    OPTIONAL = "optional"
    OWNER = "owner"


class Resolution(enum.StrEnum):
    """Same values as ``crmsync.crm.base.Resolution``."""

    RESOLVED = "resolved"
    UNRESOLVED = "unresolved"
    AMBIGUOUS = "ambiguous"


class RecordKind(enum.StrEnum):
    """Record types party resolution ranks; anything else is "other email-enabled"."""

    USER = "user"
    CONTACT = "contact"
    ACCOUNT = "account"
    LEAD = "lead"
    EQUIPMENT = "equipment"
    TEAM = "team"
    BUSINESS_UNIT = "business_unit"
    QUEUE = "queue"
    OTHER = "other"


# Dynamics' sender order (reference §3). Equipment is in Dynamics' list but crmsync has no
# equipment records; it is never matched (kept here so a future type cannot jump the queue).
PRECEDENCE: tuple[RecordKind, ...] = (
    RecordKind.USER,
    RecordKind.CONTACT,
    RecordKind.ACCOUNT,
    RecordKind.LEAD,
    RecordKind.EQUIPMENT,
    RecordKind.TEAM,
    RecordKind.BUSINESS_UNIT,
)
_RANK = {kind: i for i, kind in enumerate(PRECEDENCE)}
_OTHER_RANK = len(PRECEDENCE)
LEAD_CONTACT_ACCOUNT = frozenset({RecordKind.LEAD, RecordKind.CONTACT, RecordKind.ACCOUNT})


def record_kind(record_type: str) -> RecordKind:
    """The kind of a CRM record type name (``contact``, ``crm_user``... → other if unknown)."""
    try:
        return RecordKind(record_type)
    except ValueError:
        return RecordKind.OTHER


@dataclass(frozen=True)
class Candidate:
    """A record that carries the address being resolved."""

    record_type: str
    """The CRM record type (``user``, ``contact``, ``account``, ``lead``, ``queue``...)."""
    record_id: RecordId
    active: bool = True
    owner_id: RecordId | None = None

    @property
    def kind(self) -> RecordKind:
        return record_kind(self.record_type)


@dataclass(frozen=True)
class PartyOptions:
    """Organization options of party resolution (Dynamics' names in brackets)."""

    unresolve_sender_on_multiple_matches: bool = False
    """[UnresolveSenderInCaseOfMultipleMatch] several matches leave the sender unresolved."""
    unresolve_recipients_on_multiple_matches: bool = False
    """["Set To, cc, bcc fields as unresolved values if multiple matches are found"]."""
    resolve_for_inactive: bool = False
    """[ResolveForInactiveEntities] inactive records may be matched (never inactive users)."""


@dataclass(frozen=True)
class PartyChoice:
    role: PartyRole
    address: str
    record_ids: tuple[RecordId, ...]
    """RESOLVED: the records the party points at (one for the sender). AMBIGUOUS: the records
    that matched, in precedence order, for a person to choose from; the party stays unresolved in
    the database. UNRESOLVED: empty."""
    resolution: Resolution
    reason: str
    matches: int = 0
    """How many records carry the address, usable or not (auto-create needs none)."""


def is_eligible(candidate: Candidate, options: PartyOptions) -> bool:
    """Whether a record may be matched at all."""
    if candidate.kind is RecordKind.EQUIPMENT:
        return False
    if candidate.active:
        return True
    # Inactive users are never matched: mail from a former employee's address is not "from" them
    # in the CRM's eyes. Other inactive records only with the option.
    return candidate.kind is not RecordKind.USER and options.resolve_for_inactive


def eligible(candidates: Iterable[Candidate], options: PartyOptions) -> list[Candidate]:
    return [c for c in candidates if is_eligible(c, options)]


def rank(
    candidates: Sequence[Candidate], mailbox_owner_id: RecordId | None = None
) -> list[Candidate]:
    """Candidates best first: active, then owned by the mailbox owner, then the type order.

    Ties keep the order the service gave (which should be stable, e.g. by address slot and id).
    """
    indexed = list(enumerate(candidates))

    def key(item: tuple[int, Candidate]) -> tuple[bool, bool, int, int]:
        position, candidate = item
        owned = mailbox_owner_id is not None and candidate.owner_id == mailbox_owner_id
        return (
            not candidate.active,
            not owned,
            _RANK.get(candidate.kind, _OTHER_RANK),
            position,
        )

    return [c for _, c in sorted(indexed, key=key)]


def _describe(candidate: Candidate) -> str:
    state = "" if candidate.active else "inactive "
    return f"{state}{candidate.record_type} {candidate.record_id}"


def resolve_sender(
    address: str | None,
    candidates: Sequence[Candidate],
    *,
    mailbox_owner_id: RecordId | None = None,
    options: PartyOptions | None = None,
) -> PartyChoice:
    """The one record the sender is, or why there is none."""
    options = options or PartyOptions()
    canonical = normalize_address(address) if address else None
    shown = canonical or (address or "")
    if canonical is None:
        return PartyChoice(
            PartyRole.FROM, shown, (), Resolution.UNRESOLVED, "not a valid email address"
        )
    if not candidates:
        return PartyChoice(
            PartyRole.FROM, canonical, (), Resolution.UNRESOLVED, "no CRM record has this address"
        )
    if len(candidates) >= SENDER_MATCH_LIMIT:
        return PartyChoice(
            PartyRole.FROM,
            canonical,
            (),
            Resolution.UNRESOLVED,
            f"{len(candidates)} records have this address ({SENDER_MATCH_LIMIT} or more are "
            "too many to choose from)",
            len(candidates),
        )
    usable = eligible(candidates, options)
    if not usable:
        return PartyChoice(
            PartyRole.FROM,
            canonical,
            (),
            Resolution.UNRESOLVED,
            _none_eligible_reason(candidates, options),
            len(candidates),
        )
    ranked = rank(usable, mailbox_owner_id)
    if len(ranked) > 1 and options.unresolve_sender_on_multiple_matches:
        return PartyChoice(
            PartyRole.FROM,
            canonical,
            tuple(c.record_id for c in ranked),
            Resolution.AMBIGUOUS,
            f"{len(ranked)} records have this address and the organization leaves the sender "
            "unresolved on multiple matches",
            len(candidates),
        )
    chosen = ranked[0]
    if len(ranked) == 1:
        why = f"the only matching record: {_describe(chosen)}"
    elif mailbox_owner_id is not None and chosen.owner_id == mailbox_owner_id:
        why = (
            f"{_describe(chosen)} is owned by the mailbox owner, which wins over the other "
            f"{len(ranked) - 1} match(es)"
        )
    else:
        why = (
            f"{_describe(chosen)} comes first of {len(ranked)} matches in the order user, "
            "contact, account, lead, team, business unit, other"
        )
    return PartyChoice(
        PartyRole.FROM, canonical, (chosen.record_id,), Resolution.RESOLVED, why, len(candidates)
    )


def _none_eligible_reason(candidates: Sequence[Candidate], options: PartyOptions) -> str:
    if all(c.kind is RecordKind.USER and not c.active for c in candidates):
        return "only inactive users have this address (inactive users are never matched)"
    if options.resolve_for_inactive:
        return "only inactive users or equipment have this address"
    return "only inactive records have this address (the organization does not resolve to them)"


def resolve_recipient(
    role: PartyRole,
    address: str | None,
    candidates: Sequence[Candidate],
    *,
    mailbox_owner_id: RecordId | None = None,
    options: PartyOptions | None = None,
) -> PartyChoice:
    """Every record a to/cc/bcc address is (reference §3), or why there is none.

    The 100-match limit applies here too, although the reference states it for senders only: a
    party list of hundreds of records (an info@ address on every account) helps no one and makes
    every such email slow to store and show.
    """
    options = options or PartyOptions()
    canonical = normalize_address(address) if address else None
    if canonical is None:
        return PartyChoice(role, address or "", (), Resolution.UNRESOLVED, "not a valid address")
    if not candidates:
        return PartyChoice(
            role, canonical, (), Resolution.UNRESOLVED, "no CRM record has this address"
        )
    if len(candidates) >= SENDER_MATCH_LIMIT:
        return PartyChoice(
            role,
            canonical,
            (),
            Resolution.UNRESOLVED,
            f"{len(candidates)} records have this address ({SENDER_MATCH_LIMIT} or more are "
            "too many)",
            len(candidates),
        )
    usable = eligible(candidates, options)
    if not usable:
        return PartyChoice(
            role,
            canonical,
            (),
            Resolution.UNRESOLVED,
            _none_eligible_reason(candidates, options),
            len(candidates),
        )
    ranked = rank(usable, mailbox_owner_id)
    ids = tuple(c.record_id for c in ranked)
    if len(ranked) > 1 and options.unresolve_recipients_on_multiple_matches:
        return PartyChoice(
            role,
            canonical,
            ids,
            Resolution.AMBIGUOUS,
            f"{len(ranked)} records have this address and the organization leaves recipients "
            "unresolved on multiple matches",
            len(candidates),
        )
    if len(ranked) == 1:
        why = f"the only matching record: {_describe(ranked[0])}"
    else:
        why = f"all {len(ranked)} matching records"
    return PartyChoice(role, canonical, ids, Resolution.RESOLVED, why, len(candidates))


def resolve_parties(
    *,
    sender: str | None,
    to: Sequence[str] = (),
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    candidates: Mapping[str, Sequence[Candidate]],
    mailbox_owner_id: RecordId | None = None,
    options: PartyOptions | None = None,
) -> list[PartyChoice]:
    """Parties of one email in header order: the sender, then to, cc, bcc.

    ``candidates`` maps canonical addresses to the records carrying them (a missing address has
    none). Invalid addresses are kept as unresolved parties (the email still shows what it said);
    an address repeated within one role is listed once.
    """
    options = options or PartyOptions()
    parties: list[PartyChoice] = []
    if sender:
        key = normalize_address(sender) or sender
        parties.append(
            resolve_sender(
                sender,
                candidates.get(key, ()),
                mailbox_owner_id=mailbox_owner_id,
                options=options,
            )
        )
    for role, addresses in ((PartyRole.TO, to), (PartyRole.CC, cc), (PartyRole.BCC, bcc)):
        seen: set[str] = set()
        for address in addresses:
            key = normalize_address(address) or address
            if key in seen:
                continue
            seen.add(key)
            parties.append(
                resolve_recipient(
                    role,
                    address,
                    candidates.get(key, ()),
                    mailbox_owner_id=mailbox_owner_id,
                    options=options,
                )
            )
    return parties


# --- creating a record for an unknown sender ------------------------------------------------


class AutoCreate(enum.StrEnum):
    """The personal option "Automatically create records": what to create for an unknown sender."""

    NONE = "none"
    CONTACT = "contact"
    LEAD = "lead"


@dataclass(frozen=True)
class AutoCreateDecision:
    create: AutoCreate
    """NONE when nothing is to be created."""
    reason: str


def auto_create_decision(
    party: PartyChoice,
    *,
    user_option: AutoCreate,
    can_create: bool,
    org_allows: bool = True,
) -> AutoCreateDecision:
    """Whether to create a contact or lead for an unresolved party of a tracked email.

    ``org_allows`` is the org switch (Dynamics' ``AutoCreateContactOnPromote``, default on);
    ``user_option`` the mailbox owner's personal option; ``can_create`` whether that user may
    create the record type (a fact the service checked). An AMBIGUOUS party is never
    auto-created: records with the address exist, another one would be a duplicate.
    """
    if party.resolution is Resolution.RESOLVED:
        return AutoCreateDecision(AutoCreate.NONE, "the address already resolved to a record")
    if party.resolution is Resolution.AMBIGUOUS:
        return AutoCreateDecision(
            AutoCreate.NONE, "records with this address exist; creating one more would duplicate"
        )
    if normalize_address(party.address) is None:
        return AutoCreateDecision(AutoCreate.NONE, "not a valid email address")
    if party.matches:
        # Only inactive records, or too many to choose from: the person is in the CRM already.
        return AutoCreateDecision(
            AutoCreate.NONE, f"{party.matches} record(s) with this address exist already"
        )
    if not org_allows:
        return AutoCreateDecision(
            AutoCreate.NONE, "the organization does not create records for unknown senders"
        )
    if user_option is AutoCreate.NONE:
        return AutoCreateDecision(
            AutoCreate.NONE, "the mailbox owner's option does not create records"
        )
    if not can_create:
        return AutoCreateDecision(
            AutoCreate.NONE, f"the mailbox owner may not create a {user_option.value}"
        )
    return AutoCreateDecision(
        user_option, f"a {user_option.value} is created for {party.address} (no record has it)"
    )
