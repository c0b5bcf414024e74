"""Everything one batch of messages asks the CRM, loaded with a handful of queries.

Deciding, correlating and resolving 200 messages one query at a time would cost thousands of
round trips per batch; here the addresses, message ids, tokens, thread keys and dedupe keys of
the whole batch are looked up at once, and the answers are kept in memory. Emails the batch
itself creates are added as it goes, so a reply later in the same batch correlates with them.

It answers the core's ``CorrelationLookup`` protocol from memory; smart matching, which needs
the hash index, goes to the database (``DatabaseCorrelationLookup``).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from crmsync.core.correlate import SmartCandidate, TrackedEmail
from crmsync.core.parties import SENDER_MATCH_LIMIT, Candidate
from crmsync.core.promote import CrmOwner
from crmsync.crm.activities import Activity, Email
from crmsync.crm.base import RecordState
from crmsync.crm.records import EmailAddress, Record, User
from crmsync.sync.lookups import DatabaseCorrelationLookup, DatabaseIncomingLookup

_record = Record.__table__
_user = User.__table__
_address = EmailAddress.__table__
_email = Email.__table__
_activity = Activity.__table__


@dataclass(frozen=True)
class BatchKeys:
    """What a batch will ask about."""

    addresses: frozenset[str]
    message_ids: frozenset[str]
    """In-Reply-To and References ids (normalized)."""
    tokens: frozenset[str]
    thread_keys: frozenset[str]
    dedupe_keys: frozenset[str]


@dataclass(frozen=True)
class KnownEmail:
    email: TrackedEmail
    direction: str
    dedupe_key: str


class BatchLookup:
    def __init__(self, session: Session, smart: DatabaseCorrelationLookup | None = None) -> None:
        self.session = session
        self._smart = smart
        """Smart matching's look-up (needs the hash index): given with the run's settings."""
        self.candidates: dict[str, list[Candidate]] = {}
        self.owners: dict[str, CrmOwner] = {}
        self._by_message_id: dict[str, list[TrackedEmail]] = defaultdict(list)
        self._by_token: dict[str, list[TrackedEmail]] = defaultdict(list)
        self._by_thread: dict[str, list[TrackedEmail]] = defaultdict(list)
        self._by_key: dict[tuple[str, str], uuid.UUID] = {}
        self._regarding: dict[uuid.UUID, uuid.UUID | None] = {}

    @classmethod
    def load(
        cls, session: Session, keys: BatchKeys, smart: DatabaseCorrelationLookup | None = None
    ) -> BatchLookup:
        lookup = cls(session, smart)
        lookup._load_candidates(keys.addresses)
        if keys.addresses:
            for owner in DatabaseIncomingLookup(session).mailbox_owners(keys.addresses):
                if owner.address is not None:
                    lookup.owners.setdefault(owner.address, owner)
        lookup._load_emails(keys)
        return lookup

    # ------------------------------------------------------------------ loading
    def _load_candidates(self, addresses: Collection[str]) -> None:
        if not addresses:
            return
        active = sa.and_(
            _record.c.state == RecordState.ACTIVE.value,
            sa.func.coalesce(_user.c.is_disabled, sa.false()).is_(False),
        )
        ranked = (
            sa.select(
                _address.c.address,
                _record.c.id,
                _record.c.record_type,
                _record.c.owner_id,
                active.label("active"),
                sa.func.row_number()
                .over(
                    partition_by=_address.c.address,
                    order_by=(active.desc(), _record.c.id),
                )
                .label("n"),
            )
            .select_from(
                _address.join(_record, _record.c.id == _address.c.record_id).outerjoin(
                    _user, _user.c.id == _record.c.id
                )
            )
            .where(_address.c.address.in_(sorted(addresses)))
            # inactive users are never matched, so they must not use up the limit
            .where(sa.or_(_record.c.record_type != "user", active))
            .distinct()
            .subquery()
        )
        query = sa.select(ranked).where(ranked.c.n <= SENDER_MATCH_LIMIT).order_by(ranked.c.n)
        for row in self.session.execute(query):
            self.candidates.setdefault(row.address, []).append(
                Candidate(
                    record_type=row.record_type,
                    record_id=row.id,
                    active=bool(row.active),
                    owner_id=row.owner_id,
                )
            )

    def _load_emails(self, keys: BatchKeys) -> None:
        conditions = []
        if keys.message_ids:
            conditions.append(_email.c.message_id.in_(sorted(keys.message_ids)))
        if keys.tokens:
            conditions.append(_email.c.tracking_token.in_(sorted(keys.tokens)))
        if keys.thread_keys:
            conditions.append(_email.c.thread_key.in_(sorted(keys.thread_keys)))
        if keys.dedupe_keys:
            conditions.append(_email.c.dedupe_key.in_(sorted(keys.dedupe_keys)))
        if not conditions:
            return
        query = (
            sa.select(
                _email.c.id,
                _email.c.message_id,
                _email.c.tracking_token,
                _email.c.thread_key,
                _email.c.dedupe_key,
                _email.c.direction,
                _activity.c.regarding_id,
                _record.c.created_at,
            )
            .select_from(
                _email.join(_activity, _activity.c.id == _email.c.id).join(
                    _record, _record.c.id == _email.c.id
                )
            )
            .where(sa.or_(*conditions))
            .order_by(_record.c.created_at, _email.c.id)
        )
        for row in self.session.execute(query):
            email = TrackedEmail(
                id=row.id,
                regarding_id=row.regarding_id,
                message_id=row.message_id,
                tracked_at=row.created_at,
            )
            self.add(
                email,
                direction=row.direction,
                dedupe_key=row.dedupe_key,
                token=row.tracking_token,
                thread_key=row.thread_key,
            )

    # ------------------------------------------------------------------ answers
    def add(
        self,
        email: TrackedEmail,
        *,
        direction: str,
        dedupe_key: str,
        token: str | None,
        thread_key: str | None,
    ) -> None:
        """Remember an email (loaded, or created by this batch)."""
        if email.message_id:
            self._by_message_id[email.message_id].append(email)
        if token:
            self._by_token[token.upper()].append(email)
        if thread_key:
            self._by_thread[thread_key].append(email)
        self._by_key.setdefault((dedupe_key, str(direction)), email.id)  # type: ignore[arg-type]
        self._regarding[email.id] = email.regarding_id  # type: ignore[index]

    def tracked(self, dedupe_key: str, directions: Iterable[str]) -> uuid.UUID | None:
        """The activity of this message in one of DIRECTIONS, first match in that order."""
        for direction in directions:
            found = self._by_key.get((dedupe_key, direction))
            if found is not None:
                return found
        return None

    def regarding_of(self, email_id: object) -> uuid.UUID | None:
        return self._regarding.get(email_id)  # type: ignore[call-overload]

    def is_reply_to_tracked(self, message_ids: Iterable[str], token: str | None) -> bool:
        if any(self._by_message_id.get(i) for i in message_ids):
            return True
        return token is not None and bool(self._by_token.get(token.upper()))

    # CorrelationLookup
    def by_message_ids(self, message_ids: Sequence[str]) -> Sequence[TrackedEmail]:
        return [e for i in message_ids for e in self._by_message_id.get(i, ())]

    def by_token(self, token: str) -> Sequence[TrackedEmail]:
        return list(self._by_token.get(token.upper(), ()))

    def by_thread_key(self, thread_key: str) -> Sequence[TrackedEmail]:
        return list(self._by_thread.get(thread_key, ()))

    def smart_candidates(
        self, subject_hashes: Collection[str], address_hashes: Collection[str]
    ) -> Sequence[SmartCandidate]:
        if self._smart is None:
            self._smart = DatabaseCorrelationLookup(self.session)
        found = self._smart.smart_candidates(subject_hashes, address_hashes)
        for candidate in found:  # so that a smart match's regarding record is inherited
            self._regarding.setdefault(candidate.email.id, candidate.email.regarding_id)  # type: ignore[arg-type]
        return found
