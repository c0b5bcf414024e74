"""Adding, listing and describing mailboxes.

A mailbox is where crmsync reaches one user's or queue's mail. Adding one stores its connection
settings and its password (encrypted, bound to the mailbox id); it starts disabled and, with the
organization's default, pending approval — enabling is Test & Enable's job.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from crmsync.core.privacy import PrivacyLevel, effective_level
from crmsync.crm import audit
from crmsync.crm.base import utcnow
from crmsync.crm.mailboxes import ApprovalStatus, Mailbox, MailboxState, SyncMethod
from crmsync.crm.records import EmailAddress, Queue, Record, User, normalize_address
from crmsync.crm.settings import get_setting
from crmsync.errors import InvalidInput, NotFound
from crmsync.mail.imap import ImapEndpoint
from crmsync.secrets import Secret, SecretBox

URL_SCHEMES = {
    "imap": ("imap", "imaps"),
    "smtp": ("smtp", "smtps", "submission"),
    "caldav": ("http", "https"),
    "carddav": ("http", "https"),
}


def validate_url(kind: str, url: str | None) -> str | None:
    """Check a server URL's form (not reachability: that is Test & Enable's job)."""
    if url is None or url.strip() == "":
        return None
    url = url.strip()
    if kind == "imap":
        # The adapter's own parser: what is accepted here is exactly what it can connect to.
        ImapEndpoint.from_url(url)
        return url
    parts = urlsplit(url)
    schemes = URL_SCHEMES[kind]
    if parts.scheme not in schemes:
        raise InvalidInput(
            f"--{kind} {url!r}: the scheme must be one of {', '.join(s + '://' for s in schemes)}"
        )
    if not parts.hostname:
        raise InvalidInput(f"--{kind} {url!r} names no host")
    try:
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise InvalidInput(f"--{kind} {url!r} has an invalid port") from None
    if parts.password is not None:
        raise InvalidInput(
            f"--{kind} must not contain a password; give it through the environment or the prompt"
        )
    return url


def find_owner(session: Session, ref: str) -> Record:
    """A user by username, email address or external id; a queue by name or email address."""
    ref = ref.strip()
    kind, sep, rest = ref.partition(":")
    if sep and kind == "queue":
        return _find_queue(session, rest)
    user = session.scalars(
        sa.select(User).where(
            sa.or_(
                sa.func.lower(User.username) == ref.lower(),
                User.external_id == ref,
                User.id.in_(
                    sa.select(EmailAddress.record_id).where(
                        EmailAddress.address == normalize_address(ref)
                    )
                ),
            )
        )
    ).all()
    if len(user) == 1:
        return user[0]
    if len(user) > 1:
        raise InvalidInput(f"{ref!r} matches {len(user)} users; give the username instead")
    try:
        return _find_queue(session, ref)
    except NotFound:
        raise NotFound(
            f"no user or queue {ref!r} (give a username, an email address, an external id, "
            "or queue:NAME); import users with: crmsync import FILE"
        ) from None


def _find_queue(session: Session, ref: str) -> Queue:
    addr = normalize_address(ref)
    queue = session.scalars(
        sa.select(Queue).where(
            sa.or_(
                Queue.name == ref,
                Queue.id.in_(sa.select(EmailAddress.record_id).where(EmailAddress.address == addr)),
            )
        )
    ).first()
    if queue is None:
        raise NotFound(f"no queue {ref!r}")
    return queue


def find_mailbox(session: Session, ref: str) -> Mailbox:
    """A mailbox by id, email address, or its owner (see find_owner)."""
    try:
        mailbox = session.get(Mailbox, uuid.UUID(ref))
        if mailbox is not None:
            return mailbox
    except ValueError:
        pass
    by_address = session.scalars(
        sa.select(Mailbox).where(Mailbox.email_address == normalize_address(ref))
    ).first()
    if by_address is not None:
        return by_address
    try:
        owner = find_owner(session, ref)
    except NotFound:
        raise NotFound(f"no mailbox {ref!r}; see: crmsync mailbox list") from None
    mailbox = session.scalars(sa.select(Mailbox).where(Mailbox.owner_id == owner.id)).first()
    if mailbox is None:
        raise NotFound(f"{owner.name} has no mailbox; add one with: crmsync mailbox add")
    return mailbox


@dataclass(frozen=True)
class MailboxSpec:
    owner: str
    imap_url: str | None
    smtp_url: str | None
    caldav_url: str | None = None
    carddav_url: str | None = None
    username: str | None = None
    email_address: str | None = None
    name: str | None = None
    privacy_level: PrivacyLevel | None = None
    """None: follow the organization's level."""


AUDITED_FIELDS = (
    "name",
    "email_address",
    "imap_url",
    "smtp_url",
    "caldav_url",
    "carddav_url",
    "username",
    "privacy_level",
)


def add_mailbox(
    session: Session,
    box: SecretBox,
    spec: MailboxSpec,
    password: Secret,
    *,
    actor: audit.Actor,
    update: bool = False,
) -> tuple[Mailbox, bool]:
    """Create (or, with update=True, reconfigure) the owner's mailbox; returns (it, created)."""
    owner = find_owner(session, spec.owner)
    imap = validate_url("imap", spec.imap_url)
    smtp = validate_url("smtp", spec.smtp_url)
    if imap is None and smtp is None:
        raise InvalidInput("give at least --imap (incoming) or --smtp (outgoing)")
    caldav = validate_url("caldav", spec.caldav_url)
    carddav = validate_url("carddav", spec.carddav_url)
    address = spec.email_address or owner.primary_email
    if not address:
        raise InvalidInput(f"{owner.name} has no email address; give --email")
    address = normalize_address(address)
    if "@" not in address:
        raise InvalidInput(f"--email {address!r} is not an email address")
    if not password.reveal():
        raise InvalidInput("the password is empty")

    mailbox = session.scalars(sa.select(Mailbox).where(Mailbox.owner_id == owner.id)).first()
    created = mailbox is None
    if mailbox is not None and not update:
        raise InvalidInput(
            f"{owner.name} already has mailbox {mailbox.email_address}; "
            "to change it run the same command with --update"
        )
    before = {f: getattr(mailbox, f) for f in AUDITED_FIELDS} if mailbox is not None else {}
    if mailbox is None:
        approval_needed = get_setting(session, "process_email_only_for_approved_mailboxes")
        mailbox = Mailbox(
            id=uuid.uuid4(),
            owner_id=owner.id,
            approval_status=ApprovalStatus.PENDING if approval_needed else ApprovalStatus.EMPTY,
            state=MailboxState.DISABLED,
        )
        session.add(mailbox)
    mailbox.name = spec.name or owner.name or address
    mailbox.email_address = address
    mailbox.imap_url, mailbox.smtp_url = imap, smtp
    mailbox.caldav_url, mailbox.carddav_url = caldav, carddav
    mailbox.incoming_method = SyncMethod.SERVER_SYNC if imap else SyncMethod.NONE
    mailbox.outgoing_method = SyncMethod.SERVER_SYNC if smtp else SyncMethod.NONE
    mailbox.act_method = SyncMethod.SERVER_SYNC if (caldav or carddav) else SyncMethod.NONE
    mailbox.username = spec.username or address
    mailbox.privacy_level = spec.privacy_level
    mailbox.credential = box.encrypt(password, bound_to=credential_binding(mailbox.id))
    session.flush()
    changed = sorted(f for f in AUDITED_FIELDS if before.get(f) != getattr(mailbox, f))
    audit.record(
        session,
        actor,
        "mailbox.added" if created else "mailbox.updated",
        target_type="mailbox",
        target_id=mailbox.id,
        target_name=mailbox.email_address,
        changed_fields=changed,
        credential_replaced=True,  # that it changed, never what it is
    )
    return mailbox, created


def credential_binding(mailbox_id: uuid.UUID) -> str:
    return f"mailbox:{mailbox_id}"


def list_mailboxes(session: Session) -> list[Mailbox]:
    return list(session.scalars(sa.select(Mailbox).order_by(Mailbox.email_address)))


def describe(
    mailbox: Mailbox, *, org_privacy: PrivacyLevel, detail: bool = False
) -> dict[str, Any]:
    """What a person (or script) may see of a mailbox. Never the credential itself."""
    owner = mailbox.owner
    out: dict[str, Any] = {
        "id": str(mailbox.id),
        "email_address": mailbox.email_address,
        "owner": owner.name,
        "owner_type": owner.record_type,
        "approval": mailbox.approval_status.value,
        "state": mailbox.state.value,
        "incoming": mailbox.incoming_method.value,
        "outgoing": mailbox.outgoing_method.value,
        "act": mailbox.act_method.value,
        "privacy": effective_level(org_privacy, mailbox.privacy_level).value,
        "last_sync": _iso(mailbox.last_sync_finished_at),
        "next_sync": _iso(mailbox.next_sync_at),
        "schedule": mailbox.disabled_reason
        if mailbox.state is MailboxState.DISABLED
        else mailbox.schedule_reason,
        "push": mailbox.push_state,
        "last_error": mailbox.last_error_message,
        "error_count": mailbox.last_error_count,
    }
    if detail:
        out.update(
            {
                "name": mailbox.name,
                "username": mailbox.username,
                "credential": "stored, encrypted" if mailbox.credential else "none",
                "privacy_setting": mailbox.privacy_level.value if mailbox.privacy_level else "org",
                "imap_url": mailbox.imap_url,
                "smtp_url": mailbox.smtp_url,
                "caldav_url": mailbox.caldav_url,
                "carddav_url": mailbox.carddav_url,
                "incoming_test": mailbox.incoming_status.value,
                "outgoing_test": mailbox.outgoing_status.value,
                "act_test": mailbox.act_status.value,
                "tested_at": _iso(mailbox.tested_at),
                "process_email_received_after": _iso(mailbox.process_email_received_after),
                "items_processed_last_sync": mailbox.items_processed_last_sync,
                "items_failed_last_sync": mailbox.items_failed_last_sync,
                "last_error_code": mailbox.last_error_code,
                "last_error_count": mailbox.last_error_count,
                "last_error_at": _iso(mailbox.last_error_at),
                "schedule_code": mailbox.schedule_code,
                "sync_requested_at": _iso(mailbox.sync_requested_at),
                "recent_runs": mailbox.sync_history,
                "push_changed_at": _iso(mailbox.push_changed_at),
                "disabled_at": _iso(mailbox.disabled_at),
                "disabled_reason": mailbox.disabled_reason,
                "created_at": _iso(mailbox.created_at),
            }
        )
    return out


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def set_approval(
    session: Session, mailbox: Mailbox, approved: bool, *, actor: audit.Actor
) -> ApprovalStatus:
    """Approve or reject a mailbox's email address (the caller has checked approve_mailbox)."""
    old = mailbox.approval_status
    mailbox.approval_status = ApprovalStatus.APPROVED if approved else ApprovalStatus.REJECTED
    session.flush()
    audit.record(
        session,
        actor,
        "mailbox.approved" if approved else "mailbox.rejected",
        target_type="mailbox",
        target_id=mailbox.id,
        target_name=mailbox.email_address,
        previous=old.value,
    )
    return mailbox.approval_status


@dataclass(frozen=True)
class EnableResult:
    changed: bool
    """False: the mailbox was already in the asked state (nothing changed, nothing audited)."""
    process_after: datetime | None


def enable_mailbox(
    session: Session,
    mailbox: Mailbox,
    *,
    actor: audit.Actor,
    process_after: datetime | None = None,
) -> EnableResult:
    """Turn a mailbox's sync on (the caller has checked approve_mailbox).

    Mail received before ``process_after`` (default: now) is never processed. Refused while the
    organization processes email only for approved mailboxes and this one is not approved.
    Enabling an enabled mailbox changes nothing (its start date included)."""
    if mailbox.state is MailboxState.ENABLED:
        return EnableResult(False, mailbox.process_email_received_after)
    if (
        get_setting(session, "process_email_only_for_approved_mailboxes")
        and mailbox.approval_status is not ApprovalStatus.APPROVED
    ):
        raise InvalidInput(
            f"mailbox {mailbox.email_address} is not approved (approval "
            f"{mailbox.approval_status.value}) and the organization processes email only for "
            f"approved mailboxes; approve it first: crmsync mailbox approve {mailbox.email_address}"
        )
    if process_after is not None and process_after.tzinfo is None:
        raise InvalidInput("the start date needs a time zone (e.g. 2024-05-01T00:00:00+00:00)")
    now = utcnow()
    mailbox.state = MailboxState.ENABLED
    mailbox.enabled_at = now
    mailbox.process_email_received_after = process_after.astimezone(UTC) if process_after else now
    # A fresh start for the scheduler: due now, no history, no error streak (reference §5:
    # an administrator re-enabling a mailbox an error disabled starts it over).
    mailbox.next_sync_at = now
    mailbox.sync_history = []
    mailbox.last_error_count = 0
    mailbox.schedule_code = "first_run"
    mailbox.schedule_reason = "enabled → sync now"
    mailbox.disabled_reason = None
    mailbox.disabled_at = None
    session.flush()
    audit.record(
        session,
        actor,
        "mailbox.enabled",
        target_type="mailbox",
        target_id=mailbox.id,
        target_name=mailbox.email_address,
        process_email_received_after=mailbox.process_email_received_after.isoformat(),
    )
    return EnableResult(True, mailbox.process_email_received_after)


def disable_mailbox(session: Session, mailbox: Mailbox, *, actor: audit.Actor) -> EnableResult:
    """Turn a mailbox's sync off (the caller has checked approve_mailbox). Its decisions, cursors
    and tracked email stay; disabling a disabled mailbox changes nothing."""
    if mailbox.state is MailboxState.DISABLED:
        return EnableResult(False, mailbox.process_email_received_after)
    mailbox.state = MailboxState.DISABLED
    mailbox.next_sync_at = None
    mailbox.disabled_at = utcnow()
    mailbox.disabled_reason = f"disabled by {actor.name}"
    session.flush()
    after = mailbox.process_email_received_after
    audit.record(
        session,
        actor,
        "mailbox.disabled",
        target_type="mailbox",
        target_id=mailbox.id,
        target_name=mailbox.email_address,
        process_email_received_after=after.isoformat() if after else None,
    )
    return EnableResult(True, after)
