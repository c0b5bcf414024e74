"""The database implementations of the core's look-ups: ``IncomingLookup``
(``crmsync.core.promote``) and ``CorrelationLookup`` (``crmsync.core.correlate``).

``check_incoming`` asks the CRM only about addresses, message ids and a tracking token, never a
subject or a body; each method here answers with one query. Addresses are compared in the one
canonical form crmsync stores them in (``email_address.address``, ``mailbox.email_address``).
Message-IDs are stored and looked up normalized (``normalize_message_id``).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from crmsync.core.correlate import (
    CorrelationSettings,
    SmartCandidate,
    TrackedEmail,
    address_hashes,
    subject_hashes,
)
from crmsync.core.parties import SENDER_MATCH_LIMIT, Candidate, PartyOptions
from crmsync.core.promote import CrmOwner, IncomingFilter, OwnerKind, TrackingSettings
from crmsync.core.tokens import TokenFormat
from crmsync.crm.activities import Activity, Email, EmailMatchHash
from crmsync.crm.base import RecordState
from crmsync.crm.mailboxes import Mailbox
from crmsync.crm.records import EmailAddress, Queue, Record, User
from crmsync.crm.settings import (
    incoming_settings,
    party_options,
    token_format,
    tracking_settings,
)

_record = Record.__table__
_user = User.__table__
_queue = Queue.__table__
_address = EmailAddress.__table__
_mailbox = Mailbox.__table__
_email = Email.__table__
_activity = Activity.__table__
_hash = EmailMatchHash.__table__

_ACTIVE = RecordState.ACTIVE.value


class DatabaseIncomingLookup:
    """``IncomingLookup`` on a SQLAlchemy session (read-only: it never writes)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def candidates(self, address: str) -> Sequence[Candidate]:
        """Records carrying ``address`` (canonical), at most ``SENDER_MATCH_LIMIT``.

        Inactive or disabled users are left out here: the core never matches them, so they
        must not use up the limit. Other inactive records come back marked inactive; the core
        decides by the ``resolve_for_inactive`` option. Active records come first, so the limit
        never hides an active one behind inactive ones.
        """
        active = sa.and_(
            _record.c.state == _ACTIVE, sa.func.coalesce(_user.c.is_disabled, sa.false()).is_(False)
        )
        carries = (
            sa.select(_address.c.id)
            .where(_address.c.record_id == _record.c.id, _address.c.address == address)
            .exists()
        )
        query = (
            sa.select(
                _record.c.id, _record.c.record_type, _record.c.owner_id, active.label("active")
            )
            .select_from(_record.outerjoin(_user, _user.c.id == _record.c.id))
            .where(carries)
            .where(sa.or_(_record.c.record_type != "user", active))
            .order_by(active.desc(), _record.c.id)
            .limit(SENDER_MATCH_LIMIT)
        )
        return [
            Candidate(
                record_type=row.record_type,
                record_id=row.id,
                active=bool(row.active),
                owner_id=row.owner_id,
            )
            for row in self.session.execute(query)
        ]

    def is_tracked_message(self, message_id: str) -> bool:
        query = sa.select(sa.select(_email.c.id).where(_email.c.message_id == message_id).exists())
        return bool(self.session.scalar(query))

    def is_tracked_token(self, token: str) -> bool:
        query = sa.select(sa.select(_email.c.id).where(_email.c.tracking_token == token).exists())
        return bool(self.session.scalar(query))

    def mailbox_owners(self, addresses: Collection[str]) -> Sequence[CrmOwner]:
        """Active users and queues whose mailbox is at one of ``addresses`` (canonical).

        A disabled or inactive user, and an inactive queue, tracks nothing, so it is not asked.
        The mailbox's own sync state does not matter: the check answers what the rules say.
        """
        if not addresses:
            return []
        query = (
            sa.select(
                _mailbox.c.email_address,
                _record.c.id,
                _record.c.record_type,
                _record.c.name,
                _user.c.incoming_email_filter.label("user_filter"),
                _queue.c.incoming_email_filter.label("queue_filter"),
            )
            .select_from(
                _mailbox.join(_record, _record.c.id == _mailbox.c.owner_id)
                .outerjoin(_user, _user.c.id == _record.c.id)
                .outerjoin(_queue, _queue.c.id == _record.c.id)
            )
            .where(_mailbox.c.email_address.in_(sorted(set(addresses))))
            .where(_record.c.record_type.in_(("user", "queue")))
            .where(_record.c.state == _ACTIVE)
            .where(sa.func.coalesce(_user.c.is_disabled, sa.false()).is_(False))
            .order_by(_mailbox.c.email_address, _record.c.id)
        )
        owners: list[CrmOwner] = []
        for row in self.session.execute(query):
            kind = OwnerKind.USER if row.record_type == "user" else OwnerKind.QUEUE
            stored = row.user_filter if kind is OwnerKind.USER else row.queue_filter
            owners.append(
                CrmOwner(
                    id=row.id,
                    kind=kind,
                    filter=IncomingFilter(stored),
                    address=row.email_address,
                    name=row.name,
                )
            )
        return owners

    def tracking_settings(self) -> TrackingSettings:
        return tracking_settings(self.session)

    def party_options(self) -> PartyOptions:
        return party_options(self.session)

    def token_format(self) -> TokenFormat | None:
        return token_format(self.session)


# --- correlation ----------------------------------------------------------------------------

NEWEST_LIMIT = 50
"""At most this many emails per token or thread key: correlation takes the newest."""
SMART_CANDIDATE_LIMIT = 200
"""At most this many smart-matching candidates, the newest."""


def _tracked_columns() -> list[sa.ColumnElement]:
    return [
        _email.c.id,
        _activity.c.regarding_id,
        _email.c.message_id,
        _record.c.created_at.label("tracked_at"),
    ]


def _tracked_from() -> sa.FromClause:
    return _email.join(_activity, _activity.c.id == _email.c.id).join(
        _record, _record.c.id == _email.c.id
    )


def _tracked(row: sa.Row) -> TrackedEmail:
    return TrackedEmail(
        id=row.id,
        regarding_id=row.regarding_id,
        message_id=row.message_id,
        tracked_at=row.tracked_at,
    )


class DatabaseCorrelationLookup:
    """``CorrelationLookup`` on a SQLAlchemy session (read-only; one query per method).

    Every email activity counts, sent and received alike. An email's *tracked time* is when
    its activity was created (``record.created_at``); correlation prefers the newest.

    ``settings`` gives the smart-matching thresholds, which the candidate query applies so
    that the few emails that can match are not crowded out by the many that share only one
    address (the mailbox owner's is on every email): give the same settings as to
    ``correlate``. ``look_back_days`` is the smart-matching window. Either one left None is
    read from the organization settings, with one query, when smart matching first needs it;
    a sync that has read ``incoming_settings`` should pass ``settings.correlation`` and
    ``settings.smart_matching_look_back_days`` and build one lookup for the run.
    """

    def __init__(
        self,
        session: Session,
        settings: CorrelationSettings | None = None,
        *,
        look_back_days: int | None = None,
        now: datetime | None = None,
    ) -> None:
        self.session = session
        self._settings = settings
        self._look_back_days = look_back_days
        self._now = now

    def _read_org_settings(self) -> None:
        org = incoming_settings(self.session)
        if self._settings is None:
            self._settings = org.correlation
        if self._look_back_days is None:
            self._look_back_days = org.smart_matching_look_back_days

    @property
    def settings(self) -> CorrelationSettings:
        if self._settings is None:
            self._read_org_settings()
        assert self._settings is not None
        return self._settings

    @property
    def look_back_days(self) -> int:
        if self._look_back_days is None:
            self._read_org_settings()
        assert self._look_back_days is not None
        return self._look_back_days

    def by_message_ids(self, message_ids: Sequence[str]) -> Sequence[TrackedEmail]:
        ids = sorted(set(message_ids))
        if not ids:
            return []
        query = (
            sa.select(*_tracked_columns())
            .select_from(_tracked_from())
            .where(_email.c.message_id.in_(ids))
            .order_by(_record.c.created_at.desc(), _email.c.id)
        )
        return [_tracked(row) for row in self.session.execute(query)]

    def by_token(self, token: str) -> Sequence[TrackedEmail]:
        return self._newest(_email.c.tracking_token == token)

    def by_thread_key(self, thread_key: str) -> Sequence[TrackedEmail]:
        return self._newest(_email.c.thread_key == thread_key)

    def _newest(self, condition: sa.ColumnElement[bool]) -> list[TrackedEmail]:
        query = (
            sa.select(*_tracked_columns())
            .select_from(_tracked_from())
            .where(condition)
            .order_by(_record.c.created_at.desc(), _email.c.id)
            .limit(NEWEST_LIMIT)
        )
        return [_tracked(row) for row in self.session.execute(query)]

    def smart_candidates(
        self, subject_hashes: Collection[str], address_hashes: Collection[str]
    ) -> Sequence[SmartCandidate]:
        """Emails tracked in the look-back window that share enough of these hashes to be able
        to match (all subject words but ``delta_subject_count``, and ``min_address_count``
        addresses), newest first, at most ``SMART_CANDIDATE_LIMIT``, each with all its hashes.
        The core checks the rest (the subject-word counts)."""
        ours_s = sorted(set(subject_hashes))
        ours_a = sorted(set(address_hashes))
        smart = self.settings.smart
        need_s = max(len(ours_s) - smart.delta_subject_count, 0)
        need_a = smart.min_address_count
        if not ours_a or len(ours_a) < need_a or len(ours_s) < need_s:
            return []
        now = self._now or datetime.now(UTC)
        cutoff = now - timedelta(days=self.look_back_days)
        shared_s = sa.func.count().filter(_hash.c.kind == "s")
        shared_a = sa.func.count().filter(_hash.c.kind == "a")
        ours = sa.or_(
            sa.and_(_hash.c.kind == "s", _hash.c.hash.in_(ours_s)) if ours_s else sa.false(),
            sa.and_(_hash.c.kind == "a", _hash.c.hash.in_(ours_a)),
        )
        candidates = (
            sa.select(*_tracked_columns())
            .select_from(_tracked_from().join(_hash, _hash.c.email_id == _email.c.id))
            .where(ours, _record.c.created_at >= cutoff)
            .group_by(_email.c.id, _activity.c.regarding_id, _record.c.created_at)
            .having(sa.and_(shared_s >= need_s, shared_a >= need_a))
            .order_by(_record.c.created_at.desc(), _email.c.id)
            .limit(SMART_CANDIDATE_LIMIT)
            .cte("candidate")
        )
        every = _hash.alias("every_hash")
        query = (
            sa.select(
                candidates,
                sa.func.array_agg(every.c.hash).filter(every.c.kind == "s").label("s"),
                sa.func.array_agg(every.c.hash).filter(every.c.kind == "a").label("a"),
            )
            .select_from(candidates.join(every, every.c.email_id == candidates.c.id))
            .group_by(*candidates.c)
            .order_by(candidates.c.tracked_at.desc(), candidates.c.id)
        )
        return [
            SmartCandidate(
                email=_tracked(row),
                subject_hashes=frozenset(row.s or ()),
                address_hashes=frozenset(row.a or ()),
            )
            for row in self.session.execute(query)
        ]


def store_match_hashes(
    session: Session,
    email_id: uuid.UUID,
    subject: str | None,
    addresses: Iterable[str],
    settings: CorrelationSettings,
) -> None:
    """Store an email's smart-matching hashes (one statement; hashes it has already are kept).

    ``subject`` as the email was tracked with (None at the ``metadata`` privacy level: then only
    the addresses are hashed); ``addresses`` its from, to, cc and bcc. Hashed with the same
    settings and token format as correlation hashes a new email with.
    """
    rows = [
        {"email_id": email_id, "kind": "s", "hash": h}
        for h in subject_hashes(subject, settings.smart, settings.token_format)
    ]
    rows += [
        {"email_id": email_id, "kind": "a", "hash": h}
        for h in address_hashes(addresses, settings.smart)
    ]
    if rows:
        session.execute(pg_insert(_hash).values(rows).on_conflict_do_nothing())
