"""Tracked email: visible exactly to those whose read privilege reaches it; untrack deletes the
CRM copy only for its owner (reference §7), anyone else only loses their own mailbox's link."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from crmsync.crm.activities import ActivityParty, Attachment, Email, EmailDirection
from crmsync.crm.audit import Actor, AuditEvent
from crmsync.crm.base import Depth, PartyRole
from crmsync.crm.mailboxes import Mailbox
from crmsync.crm.models import BusinessUnit, RecordShare, RolePrivilege, SecurityRole, User
from crmsync.crm.roles import AccessRight, UserRole
from crmsync.crm.security import AccessDenied, access_filter, load_principal
from crmsync.crm.tracking import TrackedHow, TrackedMessage, UntrackOutcome, untrack
from crmsync.db import session_scope
from crmsync.errors import InvalidInput

pytestmark = pytest.mark.integration


@dataclass
class World:
    owner: User
    colleague: User  # same unit, reads the unit's email, has a mailbox link
    outsider: User  # other unit, reads only their own email
    reader_by_share: User  # other unit, the email is shared with them
    no_delete_owner: User  # owns an email but may not delete email
    email: Email
    other_email: Email  # owned by no_delete_owner


def _role(s, name: str, grants: dict[str, Depth]) -> SecurityRole:
    role = SecurityRole(name=name)
    role.privileges = [RolePrivilege(privilege=p, depth=d) for p, d in grants.items()]
    s.add(role)
    return role


def _user(s, name: str, bu: BusinessUnit, role: SecurityRole) -> User:
    user = User(name=name.title(), username=name, business_unit_id=bu.id)
    user.set_email(f"{name}@example.test")
    s.add(user)
    s.flush()
    s.add(UserRole(user_id=user.id, role_id=role.id))
    s.add(Mailbox(owner_id=user.id, name=name, email_address=f"{name}@example.test"))
    return user


def _email(s, subject: str, owner: User, *mailbox_owners: User) -> Email:
    email = Email(
        subject=subject,
        name=subject,
        direction=EmailDirection.INCOMING,
        dedupe_key=f"mid:{subject}@x.test",
        owner_id=owner.id,
        business_unit_id=owner.business_unit_id,
    )
    email.parties.append(ActivityParty(role=PartyRole.FROM, address="customer@customer.test"))
    content = f"attachment of {subject}".encode()
    email.attachments.append(
        Attachment(
            filename=f"{subject}.pdf",
            size_bytes=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            content=content,
        )
    )
    s.add(email)
    s.flush()
    for user in mailbox_owners:
        mailbox = s.scalars(sa.select(Mailbox).where(Mailbox.owner_id == user.id)).one()
        s.add(TrackedMessage(email_id=email.id, mailbox_id=mailbox.id, how=TrackedHow.AUTOMATIC))
    return email


@pytest.fixture
def world(engine: Engine) -> World:
    with session_scope(engine) as s:
        root = BusinessUnit(name="Root")
        s.add(root)
        s.flush()
        sales = BusinessUnit(name="Sales", parent_id=root.id)
        service = BusinessUnit(name="Service", parent_id=root.id)
        s.add_all([sales, service])
        s.flush()
        seller = _role(s, "Seller", {"read:email": Depth.BUSINESS_UNIT, "delete:email": Depth.USER})
        basic = _role(s, "Basic", {"read:email": Depth.USER, "delete:email": Depth.USER})
        no_delete = _role(s, "No delete", {"read:email": Depth.USER})
        s.flush()
        owner = _user(s, "owner", sales, seller)
        colleague = _user(s, "colleague", sales, seller)
        outsider = _user(s, "outsider", service, basic)
        reader_by_share = _user(s, "sharer", service, basic)
        no_delete_owner = _user(s, "nodelete", sales, no_delete)
        s.flush()
        email = _email(s, "quote", owner, owner, colleague)
        other_email = _email(s, "other", no_delete_owner, no_delete_owner)
        s.add(
            RecordShare(
                record_id=email.id, principal_id=reader_by_share.id, rights=int(AccessRight.READ)
            )
        )
    return World(owner, colleague, outsider, reader_by_share, no_delete_owner, email, other_email)


def _visible(engine: Engine, user: User) -> tuple[set[str], set[str]]:
    with session_scope(engine) as s:
        principal = load_principal(s, user.id)
        readable = access_filter(principal, "read", "email")
        emails = set(s.scalars(sa.select(Email.subject).where(readable)))
        files = set(
            s.scalars(
                sa.select(Attachment.filename)
                .join(Email, Attachment.activity_id == Email.id)
                .where(readable)
            )
        )
    return emails, files


def test_email_and_attachments_are_visible_exactly_by_read_privilege(
    engine: Engine, world: World
) -> None:
    assert _visible(engine, world.owner) == ({"quote", "other"}, {"quote.pdf", "other.pdf"})
    assert _visible(engine, world.colleague) == ({"quote", "other"}, {"quote.pdf", "other.pdf"})
    assert _visible(engine, world.outsider) == (set(), set())
    assert _visible(engine, world.reader_by_share) == ({"quote"}, {"quote.pdf"})
    assert _visible(engine, world.no_delete_owner) == ({"other"}, {"other.pdf"})


def test_untrack_by_someone_else_only_removes_their_link(engine: Engine, world: World) -> None:
    with session_scope(engine) as s:
        result = untrack(
            s,
            s.get(User, world.colleague.id),
            s.get(Email, world.email.id),
            actor=Actor("Colleague", world.colleague.id),
        )
        assert result.outcome is UntrackOutcome.UNLINKED
    with session_scope(engine) as s:
        email = s.get(Email, world.email.id)
        assert email is not None  # the activity stays
        owners = set(
            s.scalars(
                sa.select(Mailbox.owner_id)
                .join(TrackedMessage, TrackedMessage.mailbox_id == Mailbox.id)
                .where(TrackedMessage.email_id == email.id)
            )
        )
        assert owners == {world.owner.id}  # the owner's link stays
        event = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "email.untracked")).one()
        assert (event.actor_id, event.details["outcome"]) == (world.colleague.id, "unlinked")
    assert _visible(engine, world.colleague)[0] == {"quote", "other"}  # still readable by right
    with (
        pytest.raises(InvalidInput, match="not tracked in Colleague's mailbox"),
        session_scope(engine) as s,
    ):
        untrack(
            s,
            s.get(User, world.colleague.id),
            s.get(Email, world.email.id),
            actor=Actor("Colleague", world.colleague.id),
        )


def test_untrack_by_the_owner_deletes_the_activity(engine: Engine, world: World) -> None:
    with session_scope(engine) as s:
        result = untrack(
            s,
            s.get(User, world.owner.id),
            s.get(Email, world.email.id),
            actor=Actor("Owner", world.owner.id),
        )
        assert result.outcome is UntrackOutcome.DELETED
    with session_scope(engine) as s:
        assert s.get(Email, world.email.id) is None
        for model, column in (
            (TrackedMessage, TrackedMessage.email_id),
            (Attachment, Attachment.activity_id),
            (ActivityParty, ActivityParty.activity_id),
        ):
            assert (
                s.scalar(
                    sa.select(sa.func.count()).select_from(model).where(column == world.email.id)
                )
                == 0
            )
        assert s.scalars(sa.select(AuditEvent.details)).one()["outcome"] == "deleted"


def test_someone_who_cannot_read_it_cannot_untrack_it(engine: Engine, world: World) -> None:
    with pytest.raises(AccessDenied, match="read:email"), session_scope(engine) as s:
        untrack(
            s,
            s.get(User, world.outsider.id),
            s.get(Email, world.email.id),
            actor=Actor("Outsider", world.outsider.id),
        )
    with session_scope(engine) as s:
        assert s.get(Email, world.email.id) is not None


def test_an_owner_without_delete_privilege_is_refused_naming_it(
    engine: Engine, world: World
) -> None:
    with pytest.raises(AccessDenied, match="delete:email"), session_scope(engine) as s:
        untrack(
            s,
            s.get(User, world.no_delete_owner.id),
            s.get(Email, world.other_email.id),
            actor=Actor("No delete", world.no_delete_owner.id),
        )
    with session_scope(engine) as s:
        assert s.get(Email, world.other_email.id) is not None
