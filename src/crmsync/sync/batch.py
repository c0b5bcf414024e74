"""One batch of message copies from one folder: decide, correlate, resolve, fetch, store.

The caller (``sync.incoming``) runs ``process_batch`` inside one database transaction, so the
activities, their parties and attachments, the mailbox links and the decision trace of a batch
commit together or not at all. A copy that already has a decision is skipped (that is what
makes a re-run after a crash redo nothing twice), unless it is quarantined and due for a retry.

Two passes. The first decides every copy from its headers alone — tracking decision,
correlation, party resolution — registering each email it will create in the batch's look-up,
so a reply later in the same batch sees it. The second fetches the bodies of the emails to
create (only those: privacy, and speed) in one go, parses them and builds the rows. A copy whose
body cannot be fetched or parsed is quarantined; the rest of the batch goes on.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from crmsync.core.correlate import (
    Correlation,
    CorrelationFacts,
    CorrelationMethod,
    TrackedEmail,
    correlate,
)
from crmsync.core.parties import (
    AutoCreate,
    Candidate,
    PartyChoice,
    PartyRole,
    Resolution,
    auto_create_decision,
    resolve_parties,
)
from crmsync.core.privacy import FetchPlan
from crmsync.core.promote import (
    CrmOwner,
    Decision,
    FolderKind,
    MessageFacts,
    SenderKind,
    decide,
    sender_kind,
)
from crmsync.crm.activities import (
    ActivityStatus,
    EmailDirection,
    EmailStatus,
)
from crmsync.crm.base import utcnow
from crmsync.crm.decisions import MessageDecision, Outcome, ServiceReason
from crmsync.crm.records import Contact, EmailAddress, Lead
from crmsync.crm.settings import IncomingSettings
from crmsync.crm.tracking import TrackedHow, TrackedMessage
from crmsync.mail.imap.fetch import HeaderFetch
from crmsync.mail.message import MessageParseError, ParsedMessage
from crmsync.sync.batch_lookup import BatchKeys, BatchLookup
from crmsync.sync.copies import MessageCopy
from crmsync.sync.lookups import DatabaseCorrelationLookup, store_match_hashes
from crmsync.sync.parsing import ParseResult, parse_inline
from crmsync.sync.store import BatchRows

MAX_ATTEMPTS = 10
"""Quarantined this often, a message is left ``failed`` (no more automatic retries)."""
FIRST_RETRY = timedelta(minutes=5)
LONGEST_RETRY = timedelta(hours=6)
MAX_MESSAGE_BYTES = 150 * 1024 * 1024
"""Larger messages are quarantined, not fetched (Dynamics' largest attachment is 128 MB)."""
FETCH_GROUP_BYTES = 32 * 1024 * 1024
"""Whole messages fetched (and held in memory) at once, at most: big mail goes a few at a time."""
DEDUPE_LOCK_CLASS = 1769
"""Advisory-lock namespace of dedupe keys (the schema upgrade and mailbox locks use others)."""

BodyFetcher = Callable[[Sequence[int]], Mapping[int, bytes]]
"""Whole messages of these UIDs; a UID missing from the answer could not be fetched."""
Parser = Callable[[Sequence[bytes], int], list[ParseResult]]
"""Parses whole messages (with an attachment size limit); a failure is returned, not raised."""


@dataclass(frozen=True)
class MailboxContext:
    """What every batch of one mailbox's sync needs to know about the mailbox."""

    mailbox_id: uuid.UUID
    owner: CrmOwner
    """The mailbox's user or queue, with its incoming filter."""
    email_owner_id: uuid.UUID | None
    """Who owns the activities created: the user, or the queue's owner."""
    business_unit_id: uuid.UUID | None
    plan: FetchPlan
    settings: IncomingSettings
    received_after: datetime
    auto_create: AutoCreate = AutoCreate.NONE
    may_create: frozenset[str] = frozenset()
    """Record types (``contact``, ``lead``) the owner may create, for auto-create."""
    max_attachment_bytes: int = 5 * 1024 * 1024


@dataclass(frozen=True)
class FolderContext:
    name: str
    kind: FolderKind
    uidvalidity: int
    remap: bool = False
    """UIDVALIDITY changed: copies are first matched to earlier decisions by dedupe key."""

    @property
    def direction(self) -> EmailDirection:
        return EmailDirection.OUTGOING if self.kind is FolderKind.SENT else EmailDirection.INCOMING


@dataclass
class Counts:
    """What happened to the message copies of a batch (and, added up, of a run)."""

    tracked: int = 0
    linked: int = 0
    remapped: int = 0
    quarantined: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    """Not tracked, by reason code."""

    @property
    def seen(self) -> int:
        return (
            self.tracked
            + self.linked
            + self.remapped
            + self.quarantined
            + sum(self.skipped.values())
        )

    def add(self, other: Counts) -> None:
        self.tracked += other.tracked
        self.linked += other.linked
        self.remapped += other.remapped
        self.quarantined += other.quarantined
        self.skipped.update(other.skipped)


@dataclass
class _Plan:
    copy: MessageCopy
    outcome: Outcome
    reason: str
    detail: str
    accepted_by: object = None
    email_id: uuid.UUID | None = None
    correlation: Correlation | None = None
    regarding_id: uuid.UUID | None = None
    parties: list[PartyChoice] = field(default_factory=list)
    created: list[tuple[str, uuid.UUID, str]] = field(default_factory=list)
    """Records auto-created for unknown parties (type, id, address)."""


def retry_delay(attempts: int) -> timedelta:
    """5 min, 10, 20... up to 6 h between attempts of a quarantined message."""
    return min(FIRST_RETRY * (2 ** max(attempts - 1, 0)), LONGEST_RETRY)


# ---------------------------------------------------------------------- the batch
def process_batch(
    session: Session,
    ctx: MailboxContext,
    folder: FolderContext,
    fetches: Sequence[HeaderFetch],
    fetch_bodies: BodyFetcher,
    parse: Parser = parse_inline,
) -> Counts:
    now = utcnow()
    result = Counts()
    existing = _existing_decisions(session, ctx, folder, [f.uid for f in fetches])
    copies: list[MessageCopy] = []
    for fetched in fetches:
        known = existing.get(fetched.uid)
        if known is not None and not _due(known, now):
            continue
        try:
            copies.append(MessageCopy.from_fetch(fetched, ctx.settings.token_format))
        except Exception as exc:  # a bug must cost one message, not the mailbox
            quarantine(session, ctx, folder, fetched, ServiceReason.INTERNAL_ERROR, exc, known)
            result.quarantined += 1
    if folder.remap:
        copies = _remap(session, ctx, folder, copies, result)
    if not copies:
        return result

    _lock_dedupe_keys(session, {c.dedupe_key for c in copies})
    smart = DatabaseCorrelationLookup(
        session,
        ctx.settings.correlation,
        look_back_days=ctx.settings.smart_matching_look_back_days,
    )
    lookup = BatchLookup.load(session, _keys(copies), smart)
    plans = [_plan(ctx, folder, lookup, copy, now) for copy in copies]

    parsed_by_uid: dict[int, ParseResult] = {}
    if ctx.plan.full_message:
        for plan in plans:
            size = plan.copy.fetch.size or 0
            if plan.outcome is Outcome.TRACKED and size > MAX_MESSAGE_BYTES:
                _fail(
                    plan,
                    ServiceReason.FETCH_FAILED,
                    f"the message is {size:,} bytes, over crmsync's limit of "
                    f"{MAX_MESSAGE_BYTES:,} bytes for one message; it is not fetched",
                )
        for group in _by_size([p for p in plans if p.outcome is Outcome.TRACKED]):
            bodies = fetch_bodies([p.copy.uid for p in group])
            uids = [p.copy.uid for p in group if p.copy.uid in bodies]
            results = parse([bodies[uid] for uid in uids], ctx.max_attachment_bytes)
            parsed_by_uid.update(zip(uids, results, strict=True))

    failed: set[uuid.UUID] = set()
    rows = BatchRows()
    for plan in plans:
        if plan.outcome is Outcome.LINKED and plan.email_id in failed:
            _fail(
                plan,
                ServiceReason.STORE_FAILED,
                "the first copy of this message in the same batch could not be stored; "
                "retried with it",
            )
        if plan.outcome is not Outcome.TRACKED:
            continue
        parsed: ParsedMessage | None = None
        if ctx.plan.full_message:
            outcome = parsed_by_uid.get(plan.copy.uid)
            if outcome is None:
                _fail(
                    plan,
                    ServiceReason.FETCH_FAILED,
                    "the message could not be fetched from the server (deleted or moved "
                    "meanwhile, or the server refused)",
                )
            elif isinstance(outcome, MessageParseError):
                _fail(plan, ServiceReason.PARSE_FAILED, str(outcome))
            else:
                parsed = outcome
        if plan.outcome is not Outcome.TRACKED:
            assert plan.email_id is not None
            failed.add(plan.email_id)
            continue
        for record_type, record_id, address in plan.created:
            session.add(_new_record(ctx, record_type, record_id, address, plan.copy.names))
        _add_email(rows, ctx, folder, plan, parsed, failed)

    for plan in plans:
        known = existing.get(plan.copy.uid)
        if plan.outcome is Outcome.QUARANTINED:
            quarantine(
                session, ctx, folder, plan.copy.fetch, plan.reason, plan.detail, known, plan.copy
            )
            result.quarantined += 1
            continue
        _record_decision(session, rows, ctx, folder, plan, known)
        if plan.outcome in (Outcome.TRACKED, Outcome.LINKED):
            rows.add_link(
                {
                    "email_id": plan.email_id,
                    "mailbox_id": ctx.mailbox_id,
                    "folder": folder.name,
                    "uidvalidity": folder.uidvalidity,
                    "uid": plan.copy.uid,
                    "how": TrackedHow.AUTOMATIC,
                }
            )
            if plan.outcome is Outcome.TRACKED:
                result.tracked += 1
            else:
                result.linked += 1
        else:
            result.skipped[plan.reason] += 1

    session.flush()  # auto-created contacts and leads, updated decisions: before the rows
    rows.write(session)
    if ctx.settings.correlation.use_smart_matching:
        for plan in plans:
            if plan.outcome is Outcome.TRACKED and plan.email_id is not None:
                store_match_hashes(
                    session,
                    plan.email_id,
                    plan.copy.subject,
                    plan.copy.addresses,
                    ctx.settings.correlation,
                )
    return result


# ---------------------------------------------------------------------- pass 1: decide
def _plan(
    ctx: MailboxContext,
    folder: FolderContext,
    lookup: BatchLookup,
    copy: MessageCopy,
    now: datetime,
) -> _Plan:
    if copy.received_at is not None and copy.received_at < ctx.received_after:
        return _Plan(
            copy,
            Outcome.NOT_TRACKED,
            ServiceReason.RECEIVED_BEFORE_START.value,
            f"Received {copy.received_at.isoformat(timespec='seconds')}, before "
            f"{ctx.received_after.isoformat(timespec='seconds')} (the mailbox's 'process email "
            "received after'); older mail is never processed automatically.",
        )
    decision = _decide(ctx, folder, lookup, copy)
    if not decision.should_track:
        return _Plan(copy, Outcome.NOT_TRACKED, decision.reason.value, decision.detail)
    existing = lookup.tracked(copy.dedupe_key, _directions(ctx, folder))
    if existing is not None:
        return _Plan(
            copy,
            Outcome.LINKED,
            decision.reason.value,
            "This message is already a CRM activity (tracked from another mailbox or an "
            f"earlier copy); this copy is linked to activity {existing}. " + decision.detail,
            decision.accepted_by,
            existing,
        )

    plan = _Plan(
        copy,
        Outcome.TRACKED,
        decision.reason.value,
        decision.detail,
        decision.accepted_by,
        uuid.uuid4(),
    )
    plan.correlation = correlate(
        CorrelationFacts(
            message_id=copy.message_id,
            in_reply_to=copy.in_reply_to,
            references=copy.references,
            subject=copy.subject,
            addresses=copy.addresses,
        ),
        lookup,
        ctx.settings.correlation,
    )
    if plan.correlation.inherit_regarding_from is not None:
        plan.regarding_id = lookup.regarding_of(plan.correlation.inherit_regarding_from)
    plan.parties = resolve_parties(
        sender=copy.sender,
        to=copy.to,
        cc=copy.cc,
        bcc=copy.bcc,
        candidates=lookup.candidates,
        mailbox_owner_id=ctx.owner.id,
        options=ctx.settings.parties,
    )
    _auto_create(ctx, folder, lookup, plan)
    lookup.add(
        TrackedEmail(
            id=plan.email_id,  # type: ignore[arg-type]
            regarding_id=plan.regarding_id,
            message_id=copy.message_id,
            tracked_at=now,
        ),
        direction=folder.direction.value,
        dedupe_key=copy.dedupe_key,
        token=copy.token.text if copy.token else None,
        thread_key=copy.thread_key,
    )
    return plan


def _directions(ctx: MailboxContext, folder: FolderContext) -> list[str]:
    """Which activities count as "this message is tracked already" for this copy."""
    own = folder.direction.value
    if ctx.settings.two_activities:
        return [own]
    other = (
        EmailDirection.INCOMING
        if folder.direction is EmailDirection.OUTGOING
        else EmailDirection.OUTGOING
    )
    return [own, other.value]


def _decide(
    ctx: MailboxContext, folder: FolderContext, lookup: BatchLookup, copy: MessageCopy
) -> Decision:
    options = ctx.settings.parties
    crm_recipients: list[CrmOwner] = []
    seen = {ctx.owner.id}
    for address in copy.recipients:
        owner = lookup.owners.get(address)
        if owner is not None and owner.id not in seen:
            seen.add(owner.id)
            crm_recipients.append(owner)
    others: list[Candidate] = [
        c
        for address in copy.recipients
        if address != ctx.owner.address
        for c in lookup.candidates.get(address, ())
    ]
    facts = MessageFacts(
        message_id=copy.message_id,
        subject=copy.subject,
        sender=copy.sender,
        to=copy.to,
        cc=copy.cc,
        bcc=copy.bcc,
        folder=folder.kind,
        automatic=copy.automatic,
        is_reply_to_tracked=lookup.is_reply_to_tracked(
            copy.in_reply_to, copy.token.text if copy.token else None
        ),
        already_tracked=lookup.tracked(copy.dedupe_key, _directions(ctx, folder)) is not None,
        sender_kind=(
            sender_kind(lookup.candidates.get(copy.sender, ()), options)
            if copy.sender
            else SenderKind.UNKNOWN
        ),
        recipients_kind=sender_kind(others, options),
        mailbox=ctx.owner,
        crm_recipients=tuple(crm_recipients),
    )
    return decide(facts, ctx.settings.tracking)


def _auto_create(
    ctx: MailboxContext, folder: FolderContext, lookup: BatchLookup, plan: _Plan
) -> None:
    """A contact or lead for the unknown other side (reference §3, "Auto-create")."""
    if ctx.auto_create is AutoCreate.NONE:
        return
    # the other side: the sender of received mail, the To recipients of sent mail
    roles = (PartyRole.TO,) if folder.kind is FolderKind.SENT else (PartyRole.FROM,)
    for index, party in enumerate(plan.parties):
        if party.role not in roles or party.address == ctx.owner.address:
            continue
        choice = auto_create_decision(
            party,
            user_option=ctx.auto_create,
            can_create=ctx.auto_create.value in ctx.may_create,
            org_allows=ctx.settings.auto_create_on_promote,
        )
        if choice.create is AutoCreate.NONE:
            continue
        record_id = uuid.uuid4()
        plan.created.append((choice.create.value, record_id, party.address))
        plan.parties[index] = PartyChoice(
            party.role,
            party.address,
            (record_id,),
            Resolution.RESOLVED,
            choice.reason,
        )
        lookup.candidates[party.address] = [
            Candidate(choice.create.value, record_id, True, ctx.email_owner_id)
        ]


def _fail(plan: _Plan, reason: ServiceReason, detail: str) -> None:
    plan.outcome = Outcome.QUARANTINED
    plan.reason = reason.value
    plan.detail = detail


# ---------------------------------------------------------------------- pass 2: store
def _add_email(
    rows: BatchRows,
    ctx: MailboxContext,
    folder: FolderContext,
    plan: _Plan,
    parsed: ParsedMessage | None,
    failed: set[uuid.UUID],
) -> None:
    copy = plan.copy
    headers = copy.fetch.headers
    correlation = plan.correlation
    matched = correlation.matched_email_id if correlation else None
    parent = correlation.parent_email_id if correlation else None
    method = correlation.method if correlation else CorrelationMethod.NONE
    # a match created earlier in this batch that could not be stored is not there to point at
    if matched in failed:
        matched = parent = None
    subject = (copy.subject if copy.subject is not None else "")[:400]
    sent = folder.kind is FolderKind.SENT
    rows.add_email(
        record={
            "id": plan.email_id,
            "name": subject,
            "owner_id": ctx.email_owner_id,
            "business_unit_id": ctx.business_unit_id,
        },
        activity={
            "subject": subject,
            "description": parsed.text_body if parsed else None,
            "regarding_id": plan.regarding_id,
            "status": ActivityStatus.COMPLETED,
        },
        email={
            "direction": folder.direction,
            "email_status": EmailStatus.SENT if sent else EmailStatus.RECEIVED,
            "dedupe_key": copy.dedupe_key,
            "message_id": copy.message_id,
            "in_reply_to": copy.in_reply_to[0] if copy.in_reply_to else None,
            "references": " ".join(copy.references) or None,
            "thread_key": copy.thread_key,
            "tracking_token": copy.token.text if copy.token else None,
            "correlation_method": method,
            "correlated_activity_id": matched,
            "parent_activity_id": parent,
            "sender": copy.sender,
            "body_html": parsed.html_body if parsed else None,
            "has_body": ctx.plan.full_message,
            "size_bytes": copy.fetch.size,
            "sent_at": headers.date,
            "received_at": copy.received_at,
            "receiving_mailbox_id": ctx.mailbox_id,
            "accepting_record_id": plan.accepted_by,
        },
        parties=list(_party_rows(plan.parties, copy.names)),
        attachments=[
            {
                "filename": a.filename,
                "content_type": a.content_type,
                "content_id": a.content_id,
                "size_bytes": a.size,
                "sha256": a.sha256,
                # over the size limit the parser keeps the facts, not the content
                "content": a.content if a.content or not a.size else None,
            }
            for a in (parsed.attachments if parsed else ())
        ],
    )


def _new_record(
    ctx: MailboxContext,
    record_type: str,
    record_id: uuid.UUID,
    address: str,
    names: Mapping[str, str],
) -> Contact | Lead:
    """The contact or lead auto-created for ADDRESS, named from its display name."""
    name = (names.get(address) or "").strip() or address.partition("@")[0]
    first, _, last = name.rpartition(" ")
    kind = Lead if record_type == AutoCreate.LEAD.value else Contact
    return kind(
        id=record_id,
        name=name[:400],
        owner_id=ctx.email_owner_id,
        business_unit_id=ctx.business_unit_id,
        first_name=first[:100] or None,
        last_name=(last or name)[:100],
        email_addresses=[EmailAddress(address=address, slot=1)],
    )


def _party_rows(
    parties: Iterable[PartyChoice], names: Mapping[str, str]
) -> Iterable[dict[str, object]]:
    positions: Counter[PartyRole] = Counter()
    for party in parties:
        targets: Sequence[object] = (
            party.record_ids if party.resolution is Resolution.RESOLVED else (None,)
        )
        for record_id in targets:
            yield {
                "role": party.role,
                "position": positions[party.role],
                "party_id": record_id,
                "address": party.address[:320] or None,
                "display_name": names.get(party.address) or None,
                "resolution": party.resolution,
            }
            positions[party.role] += 1


# ---------------------------------------------------------------------- the trace
def _existing_decisions(
    session: Session, ctx: MailboxContext, folder: FolderContext, uids: Sequence[int]
) -> dict[int, MessageDecision]:
    if not uids:
        return {}
    rows = session.scalars(
        sa.select(MessageDecision).where(
            MessageDecision.mailbox_id == ctx.mailbox_id,
            MessageDecision.folder == folder.name,
            MessageDecision.uidvalidity == folder.uidvalidity,
            MessageDecision.uid.in_(uids),
        )
    )
    return {row.uid: row for row in rows}


def _due(decision: MessageDecision, now: datetime) -> bool:
    return decision.outcome is Outcome.QUARANTINED and (
        decision.next_attempt_at is None or decision.next_attempt_at <= now
    )


def _parties_json(parties: Sequence[PartyChoice]) -> list[dict[str, object]]:
    return [
        {
            "role": p.role.value,
            "address": p.address,
            "resolution": p.resolution.value,
            "records": [str(r) for r in p.record_ids],
            "why": p.reason,
        }
        for p in parties
    ]


def _record_decision(
    session: Session,
    rows: BatchRows,
    ctx: MailboxContext,
    folder: FolderContext,
    plan: _Plan,
    known: MessageDecision | None,
) -> None:
    fetched, copy = plan.copy.fetch, plan.copy
    values: dict[str, Any] = {
        "uid": fetched.uid,
        "message_id": copy.message_id,
        "dedupe_key": copy.dedupe_key,
        "sender": copy.sender,
        "received_at": fetched.internaldate,
        "size_bytes": fetched.size,
        "outcome": plan.outcome,
        "reason": plan.reason,
        "detail": plan.detail,
        "accepted_by_id": plan.accepted_by,
        "email_id": (plan.email_id if plan.outcome in (Outcome.TRACKED, Outcome.LINKED) else None),
        "correlation_method": plan.correlation.method.value if plan.correlation else None,
        "correlation_detail": plan.correlation.detail if plan.correlation else None,
        "parties": _parties_json(plan.parties) if plan.parties else None,
        "defects": list(fetched.defects) or None,
        "next_attempt_at": None,
    }
    if known is not None:  # a quarantined copy retried: the same row, now decided
        for key, value in values.items():
            setattr(known, key, value)
        return
    rows.add_decision(
        {
            "mailbox_id": ctx.mailbox_id,
            "folder": folder.name,
            "uidvalidity": folder.uidvalidity,
            "attempts": 0,
            "marked": False,
            **values,
        }
    )


def _fill_facts(row: MessageDecision, fetched: HeaderFetch, copy: MessageCopy | None) -> None:
    row.uid = fetched.uid
    row.message_id = copy.message_id if copy else None
    row.dedupe_key = (
        copy.dedupe_key if copy else f"uid:{row.folder}:{row.uidvalidity}:{fetched.uid}"
    )
    row.sender = copy.sender if copy else None
    row.received_at = fetched.internaldate
    row.size_bytes = fetched.size


def describe_error(exc: BaseException | str) -> str:
    """An error as one line for the trace and the log, without the data it was about.

    A database error's text carries the statement's parameters (subjects, bodies): only the
    driver's own message is kept, so the decision trace stays metadata-only.
    """
    if isinstance(exc, str):
        return exc[:2000]
    if isinstance(exc, sa.exc.StatementError) and exc.orig is not None:
        exc = exc.orig
    text = (str(exc) or "no details").splitlines()[0]
    return f"{type(exc).__name__}: {text}"[:2000]


def quarantine(
    session: Session,
    ctx: MailboxContext,
    folder: FolderContext,
    fetched: HeaderFetch,
    reason: ServiceReason | str,
    error: BaseException | str,
    known: MessageDecision | None = None,
    copy: MessageCopy | None = None,
) -> MessageDecision:
    """Record that this copy could not be processed; it is retried with back-off later."""
    row = known
    if row is None:
        row = session.scalars(
            sa.select(MessageDecision).where(
                MessageDecision.mailbox_id == ctx.mailbox_id,
                MessageDecision.folder == folder.name,
                MessageDecision.uidvalidity == folder.uidvalidity,
                MessageDecision.uid == fetched.uid,
            )
        ).first()
    if row is None:
        row = MessageDecision(
            mailbox_id=ctx.mailbox_id,
            folder=folder.name,
            uidvalidity=folder.uidvalidity,
            attempts=0,
        )
        session.add(row)
    _fill_facts(row, fetched, copy)
    attempts = (row.attempts or 0) + 1
    row.attempts = attempts
    row.reason = reason.value if isinstance(reason, ServiceReason) else reason
    if attempts >= MAX_ATTEMPTS:
        row.outcome = Outcome.FAILED
        row.next_attempt_at = None
        row.detail = f"{describe_error(error)} (attempt {attempts}; no more automatic retries)"
    else:
        row.outcome = Outcome.QUARANTINED
        row.next_attempt_at = utcnow() + retry_delay(attempts)
        row.detail = (
            f"{describe_error(error)} (attempt {attempts} of {MAX_ATTEMPTS}; retried after "
            f"{row.next_attempt_at.isoformat(timespec='minutes')})"
        )
    row.email_id = None
    row.defects = list(fetched.defects) or None
    return row


# ---------------------------------------------------------------------- helpers
def _by_size(plans: Sequence[_Plan]) -> Iterable[list[_Plan]]:
    """Consecutive groups of at most FETCH_GROUP_BYTES (by the server's RFC822.SIZE)."""
    group: list[_Plan] = []
    total = 0
    for plan in plans:
        size = plan.copy.fetch.size or 0
        if group and total + size > FETCH_GROUP_BYTES:
            yield group
            group, total = [], 0
        group.append(plan)
        total += size
    if group:
        yield group


def _keys(copies: Sequence[MessageCopy]) -> BatchKeys:
    addresses: set[str] = set()
    ids: set[str] = set()
    tokens: set[str] = set()
    threads: set[str] = set()
    for copy in copies:
        addresses.update(copy.addresses)
        ids.update(copy.in_reply_to)
        ids.update(copy.references)
        if copy.token is not None:
            tokens.add(copy.token.text)
        if copy.thread_key is not None:
            threads.add(copy.thread_key)
    return BatchKeys(
        addresses=frozenset(addresses),
        message_ids=frozenset(ids),
        tokens=frozenset(tokens),
        thread_keys=frozenset(threads),
        dedupe_keys=frozenset(c.dedupe_key for c in copies),
    )


def _lock_dedupe_keys(session: Session, keys: set[str]) -> None:
    """Serialize the storing of one message by two mailboxes' syncs running at once.

    Each sync locks the keys of its batch until its transaction ends, all in one statement and
    in one order, so two batches sharing messages wait for each other instead of deadlocking;
    the second then finds the first's activity and links to it.
    """
    session.execute(
        sa.text(
            "SELECT count(pg_advisory_xact_lock(:ns, k)) FROM "
            "(SELECT DISTINCT hashtext(key) AS k FROM unnest(CAST(:keys AS text[])) AS key "
            "ORDER BY k) AS ordered"
        ),
        {"ns": DEDUPE_LOCK_CLASS, "keys": sorted(keys)},
    )


def _remap(
    session: Session,
    ctx: MailboxContext,
    folder: FolderContext,
    copies: list[MessageCopy],
    result: Counts,
) -> list[MessageCopy]:
    """After a UIDVALIDITY change: give earlier decisions their copies' new UIDs.

    A copy whose dedupe key (normalized Message-ID, or content hash) matches a decision made
    under an older UIDVALIDITY is that message: its decision (and mailbox link) moves to the
    new UID, nothing is tracked again. The rest are new to crmsync and go through the batch.
    """
    keys = sorted({c.dedupe_key for c in copies})
    earlier: dict[str, list[MessageDecision]] = {}
    for row in session.scalars(
        sa.select(MessageDecision)
        .where(
            MessageDecision.mailbox_id == ctx.mailbox_id,
            MessageDecision.folder == folder.name,
            MessageDecision.uidvalidity != folder.uidvalidity,
            MessageDecision.dedupe_key.in_(keys),
        )
        .order_by(MessageDecision.decided_at)
    ):
        earlier.setdefault(row.dedupe_key, []).append(row)
    remaining: list[MessageCopy] = []
    for copy in copies:
        matches = earlier.get(copy.dedupe_key)
        if not matches:
            remaining.append(copy)
            continue
        row = matches.pop(0)
        old = f"UIDVALIDITY {row.uidvalidity} UID {row.uid}"
        if row.email_id is not None:
            session.execute(
                sa.update(TrackedMessage)
                .where(
                    TrackedMessage.email_id == row.email_id,
                    TrackedMessage.mailbox_id == ctx.mailbox_id,
                )
                .values(uidvalidity=folder.uidvalidity, uid=copy.uid)
            )
        row.uidvalidity = folder.uidvalidity
        row.uid = copy.uid
        row.marked = False
        row.detail = f"{row.detail} [Re-mapped from {old} after the folder's UIDVALIDITY changed.]"
        result.remapped += 1
    session.flush()
    return remaining
