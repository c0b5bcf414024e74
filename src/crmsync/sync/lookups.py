"""The database implementation of the core's ``IncomingLookup`` (``crmsync.core.promote``).

``check_incoming`` asks the CRM only about addresses, message ids and a tracking token, never a
subject or a body; each method here answers with one query. Addresses are compared in the one
canonical form crmsync stores them in (``email_address.address``, ``mailbox.email_address``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from crmsync.core.parties import SENDER_MATCH_LIMIT, Candidate, PartyOptions
from crmsync.core.promote import CrmOwner, IncomingFilter, OwnerKind, TrackingSettings
from crmsync.core.tokens import TokenFormat
from crmsync.crm.activities import Email
from crmsync.crm.base import RecordState
from crmsync.crm.mailboxes import Mailbox
from crmsync.crm.records import EmailAddress, Queue, Record, User
from crmsync.crm.settings import tracking_settings

_record = Record.__table__
_user = User.__table__
_queue = Queue.__table__
_address = EmailAddress.__table__
_mailbox = Mailbox.__table__
_email = Email.__table__

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
        # No organization settings for party resolution yet: Dynamics' defaults.
        return PartyOptions()

    def token_format(self) -> TokenFormat | None:
        # No organization settings for the token format yet: the default ``CRM:`` + 3 + 3.
        return TokenFormat()
