"""The pure planner of appointment, contact and task sync: (CRM side, mailbox side, status
table) -> actions. No I/O; the applier performs the actions with etags and writes the status.

Rules (reference §6, issue 7):

- CRM -> mailbox for rows that match the user's filters; a linked row created from the CRM that
  stops matching is a *logical delete*: removed from the mailbox, kept in the CRM.
- Mailbox -> CRM only for items tracked from the mailbox side (the category, or crmsync's
  ``X-CRMSYNC-ID``); once linked, each field travels by its direction.
- A field changed on both sides since the last sync is a conflict: a one-way field's source wins,
  a two-way field is settled by the policy (crm_wins, mailbox_wins, newest_wins, keep_both).
- A side that lists empty while many links exist is never mirrored as mass deletion.
- Deletes follow the per-kind rules in ``_crm_delete_reaches_mailbox`` and
  ``_mailbox_delete_reaches_crm``; a delete that does not propagate leaves a *suppressed* link so
  the surviving side is not re-created on the other one at every run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from crmsync.core.act_fields import FIELDS, Direction, ItemKind

Value = object
"""A field value as in act_fields: equal values mean no change."""

MIN_LINKS_FOR_EMPTY_GUARD = 5
"""A side listing nothing while at least this many links exist is refused, not mirrored."""


class Policy(StrEnum):
    CRM_WINS = "crm_wins"
    MAILBOX_WINS = "mailbox_wins"
    NEWEST_WINS = "newest_wins"
    KEEP_BOTH = "keep_both"


class Op(StrEnum):
    CREATE_IN_MAILBOX = "create_in_mailbox"
    UPDATE_MAILBOX = "update_mailbox"
    DELETE_IN_MAILBOX = "delete_in_mailbox"
    CREATE_IN_CRM = "create_in_crm"
    UPDATE_CRM = "update_crm"
    DELETE_IN_CRM = "delete_in_crm"
    UNLINK = "unlink"
    """Forget the pair; ``suppress`` keeps a tombstone so the survivor is not copied back."""
    LINK = "link"
    """Write/refresh the status row (fields = the values both sides now agree on)."""
    CONFLICT = "conflict"
    REFUSED = "refused"


@dataclass(frozen=True)
class CrmItem:
    crm_id: str
    version: str
    """Changes whenever the row changes (row version or a hash of the synced fields)."""
    fields: Mapping[str, Value]
    in_filter: bool
    owned_by_user: bool = True
    modified_at: dt.datetime | None = None


@dataclass(frozen=True)
class MailboxSide:
    href: str
    etag: str
    uid: str
    fields: Mapping[str, Value]
    crm_id: str | None
    tracked: bool
    modified_at: dt.datetime | None = None


@dataclass(frozen=True)
class Link:
    """One row of act_sync_status: the pair and what both sides agreed on at the last sync."""

    crm_id: str
    href: str | None
    uid: str | None
    etag: str | None
    crm_version: str | None
    fields: Mapping[str, Value]
    origin: str = "crm"
    """Which side the pair was created from ("crm" or "mailbox"); logical deletes apply to
    rows the CRM put in the mailbox, not to items the user tracked from the mailbox."""
    owned_by_user: bool = True
    suppressed: bool = False
    """A delete that did not propagate: neither side is re-created on the other."""


@dataclass(frozen=True)
class Action:
    op: Op
    crm_id: str | None = None
    href: str | None = None
    fields: Mapping[str, Value] = field(default_factory=dict)
    """Values to write (updates: only the changed fields); LINK: the agreed values."""
    reason: str = ""
    etag: str | None = None
    """The etag the mailbox write must match (If-Match)."""
    uid: str | None = None
    origin: str = "crm"
    suppress: bool = False
    copy_of: str | None = None
    crm_version: str | None = None
    """LINK: the CRM version seen; the applier replaces it (and ``etag``) after its writes."""


@dataclass(frozen=True)
class Context:
    kind: ItemKind
    directions: Mapping[str, Direction]
    policy: Policy = Policy.CRM_WINS
    user_address: str | None = None
    """The syncing user's address: is the user an appointment's organizer?"""
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def direction(self, name: str) -> Direction:
        return self.directions.get(name, Direction.BOTH)


def default_directions(kind: ItemKind) -> dict[str, Direction]:
    return {spec.name: spec.default for spec in FIELDS[kind]}


def plan(
    ctx: Context,
    crm: Sequence[CrmItem],
    mailbox: Sequence[MailboxSide],
    status: Sequence[Link],
) -> list[Action]:
    crm_by_id = {c.crm_id: c for c in crm}
    mb_by_href = {m.href: m for m in mailbox}
    links_by_crm = {link.crm_id: link for link in status}
    linked_hrefs = {link.href for link in status if link.href}
    live_links = [link for link in status if not link.suppressed]
    crm_empty = _empty_guard(len(crm), live_links)
    mailbox_empty = _empty_guard(len(mailbox), live_links)
    actions: list[Action] = []
    if crm_empty:
        actions.append(
            Action(
                Op.REFUSED,
                reason=f"the CRM side lists no {ctx.kind} rows but "
                f"{len(live_links)} are linked: not mirrored as deletion",
            )
        )
    if mailbox_empty:
        actions.append(
            Action(
                Op.REFUSED,
                reason=f"the mailbox lists no {ctx.kind} items but "
                f"{len(live_links)} are linked: not mirrored as deletion",
            )
        )
    if crm_empty or mailbox_empty:
        return actions  # nothing else is trustworthy while one side looks wiped

    for link in status:
        c = crm_by_id.get(link.crm_id)
        m = mb_by_href.get(link.href) if link.href else None
        if link.suppressed:
            if c is None and m is None:
                actions.append(Action(Op.UNLINK, crm_id=link.crm_id, reason="both sides gone"))
            continue
        actions.extend(_plan_link(ctx, link, c, m))

    linked_ids = set(links_by_crm)
    relinked: set[str] = set()
    unlinked_by_crm_id: dict[str, MailboxSide] = {}
    for m in mailbox:
        if m.href not in linked_hrefs and m.crm_id and m.crm_id not in linked_ids:
            unlinked_by_crm_id.setdefault(m.crm_id, m)
    for c in crm:
        if c.crm_id in linked_ids or not c.in_filter:
            continue
        found = unlinked_by_crm_id.get(c.crm_id)
        if found is not None:  # the status table lost the pair; X-CRMSYNC-ID recovers it
            relinked.add(found.href)
            actions.extend(_plan_relink(ctx, c, found))
            continue
        actions.append(
            Action(
                Op.CREATE_IN_MAILBOX,
                crm_id=c.crm_id,
                fields=_outgoing(ctx, c.fields),
                reason="matches a sync filter",
            )
        )
    for m in mailbox:
        if m.href in linked_hrefs or m.href in relinked:
            continue
        if m.crm_id is not None:
            continue  # a copy of a linked item, or one whose row left: ignored (reference §6)
        if m.tracked:
            actions.append(
                Action(
                    Op.CREATE_IN_CRM,
                    href=m.href,
                    etag=m.etag,
                    uid=m.uid,
                    fields=_incoming_create(ctx, m.fields),
                    origin="mailbox",
                    reason="tracked from the mailbox",
                )
            )
    return actions


def _empty_guard(listed: int, live_links: Sequence[Link]) -> bool:
    return listed == 0 and len(live_links) >= MIN_LINKS_FOR_EMPTY_GUARD


def _plan_link(ctx: Context, link: Link, c: CrmItem | None, m: MailboxSide | None) -> list[Action]:
    if c is None and m is None:
        return [Action(Op.UNLINK, crm_id=link.crm_id, reason="deleted on both sides")]
    if c is None:
        assert m is not None
        if _crm_delete_reaches_mailbox(ctx, link, m):
            return [
                Action(
                    Op.DELETE_IN_MAILBOX,
                    crm_id=link.crm_id,
                    href=m.href,
                    etag=m.etag,
                    reason="deleted in the CRM",
                )
            ]
        return [
            Action(
                Op.UNLINK,
                crm_id=link.crm_id,
                href=m.href,
                suppress=True,
                reason="deleted in the CRM; kept in the mailbox by the delete rules",
            )
        ]
    if m is None:
        if _mailbox_delete_reaches_crm(ctx, link, c):
            return [Action(Op.DELETE_IN_CRM, crm_id=c.crm_id, reason="deleted in the mailbox")]
        return [
            Action(
                Op.UNLINK,
                crm_id=c.crm_id,
                suppress=True,
                reason="deleted in the mailbox; kept in the CRM by the delete rules",
            )
        ]
    if not c.in_filter and link.origin == "crm":
        return [
            Action(
                Op.DELETE_IN_MAILBOX,
                crm_id=c.crm_id,
                href=m.href,
                etag=m.etag,
                reason="logical delete: the row no longer matches a sync filter",
            )
        ]
    if c.version == link.crm_version and m.etag == link.etag:
        return []  # the cheap path of a no-change sync: no field is compared
    return _merge(ctx, link, c, m)


def _merge(ctx: Context, link: Link, c: CrmItem, m: MailboxSide) -> list[Action]:
    to_mailbox: dict[str, Value] = {}
    to_crm: dict[str, Value] = {}
    agreed: dict[str, Value] = dict(link.fields)
    conflicts: list[str] = []
    keep_both = False
    wanted_mb = _outgoing(ctx, c.fields)
    for name, direction in _directions(ctx):
        last = link.fields.get(name)
        cv, mv = c.fields.get(name), m.fields.get(name)
        out_cv = wanted_mb.get(name, cv)
        c_diff, m_diff = cv != last, mv != last
        if not c_diff and not m_diff:
            continue
        if cv == mv:
            agreed[name] = cv
            continue
        winner = None
        if c_diff and m_diff:
            winner = _conflict_winner(ctx, direction, c, m)
            conflicts.append(name)
            if winner == "both":
                keep_both, winner = True, "crm"
        elif c_diff and direction.to_mailbox:
            winner = "crm"
        elif m_diff and direction.to_crm:
            winner = "mailbox"
        if winner == "crm" and direction.to_mailbox:
            if out_cv != mv:
                to_mailbox[name] = out_cv
            agreed[name] = cv
        elif winner == "mailbox" and direction.to_crm:
            to_crm[name] = mv
            agreed[name] = mv
    actions: list[Action] = []
    if conflicts:
        actions.append(
            Action(
                Op.CONFLICT,
                crm_id=c.crm_id,
                href=m.href,
                fields={n: (c.fields.get(n), m.fields.get(n)) for n in conflicts},
                reason=f"changed on both sides; policy {ctx.policy}",
            )
        )
    if keep_both:
        actions.append(
            Action(
                Op.CREATE_IN_CRM,
                fields=_incoming_create(ctx, m.fields),
                origin="mailbox",
                copy_of=c.crm_id,
                reason="keep both: the mailbox version becomes its own row",
            )
        )
    if to_mailbox:
        actions.append(
            Action(
                Op.UPDATE_MAILBOX,
                crm_id=c.crm_id,
                href=m.href,
                etag=m.etag,
                fields=to_mailbox,
                reason="changed in the CRM",
            )
        )
    if to_crm:
        actions.append(
            Action(
                Op.UPDATE_CRM,
                crm_id=c.crm_id,
                href=m.href,
                fields=to_crm,
                reason="changed in the mailbox",
            )
        )
    actions.append(
        Action(
            Op.LINK,
            crm_id=c.crm_id,
            href=m.href,
            uid=m.uid,
            etag=m.etag,
            fields=agreed,
            origin=link.origin,
            crm_version=c.version,
        )
    )
    return actions


def _plan_relink(ctx: Context, c: CrmItem, m: MailboxSide) -> list[Action]:
    """A pair found by X-CRMSYNC-ID without a status row: nothing was agreed, so every differing
    field counts as changed on the CRM side (the CRM is the system of record for its rows)."""
    base = Link(
        c.crm_id,
        m.href,
        m.uid,
        m.etag,
        None,
        dict(m.fields),
        origin="crm",
        owned_by_user=c.owned_by_user,
    )
    return _merge(ctx, base, c, m)


def _conflict_winner(ctx: Context, direction: Direction, c: CrmItem, m: MailboxSide) -> str | None:
    if direction == Direction.TO_MAILBOX:
        return "crm"
    if direction == Direction.TO_CRM:
        return "mailbox"
    if direction == Direction.NONE:
        return None
    if ctx.policy == Policy.MAILBOX_WINS:
        return "mailbox"
    if ctx.policy == Policy.NEWEST_WINS:
        if c.modified_at and m.modified_at and m.modified_at > c.modified_at:
            return "mailbox"
        return "crm"  # ties and unknown times: the system of record
    if ctx.policy == Policy.KEEP_BOTH:
        return "both"
    return "crm"


def _directions(ctx: Context) -> list[tuple[str, Direction]]:
    return [(spec.name, ctx.direction(spec.name)) for spec in FIELDS[ctx.kind]]


def _outgoing(ctx: Context, fields: Mapping[str, Value]) -> dict[str, Value]:
    """The fields written to the mailbox. Completed and cancelled appointments show as free
    (reference §6)."""
    out = {n: fields.get(n) for n, d in _directions(ctx) if d.to_mailbox}
    closed = fields.get("status") in ("completed", "cancelled")
    if ctx.kind == ItemKind.APPOINTMENT and closed and "show_as" in out:
        out["show_as"] = "free"
    return out


def _incoming_create(ctx: Context, fields: Mapping[str, Value]) -> dict[str, Value]:
    return {n: fields.get(n) for n, d in _directions(ctx) if d.to_crm}


def _is_organizer(ctx: Context, fields: Mapping[str, Value]) -> bool:
    organizer = fields.get("organizer")
    if organizer is None:
        return True  # no organizer: a personal appointment of the syncing user
    return bool(ctx.user_address) and str(organizer).casefold() == ctx.user_address.casefold()


def _in_future(ctx: Context, fields: Mapping[str, Value]) -> bool:
    start = fields.get("start")
    if isinstance(start, dt.datetime):
        return start > ctx.now
    if isinstance(start, dt.date):
        return start > ctx.now.date()
    return True


def _crm_delete_reaches_mailbox(ctx: Context, link: Link, m: MailboxSide) -> bool:
    last = link.fields
    if ctx.kind == ItemKind.APPOINTMENT:
        return _is_organizer(ctx, last) and _in_future(ctx, last)
    if ctx.kind == ItemKind.TASK:
        done = m.fields.get("status") == "completed" or m.fields.get("completed") is not None
        return not done
    return not link.owned_by_user  # contacts: the owner keeps the mailbox copy


def _mailbox_delete_reaches_crm(ctx: Context, link: Link, c: CrmItem) -> bool:
    if ctx.kind == ItemKind.APPOINTMENT:
        closed = c.fields.get("status") in ("completed", "cancelled")
        return _is_organizer(ctx, c.fields) and _in_future(ctx, c.fields) and not closed
    # Tasks: a delete in the mailbox deletes the CRM row. Contacts: a contact removed from an
    # address book stays in the CRM.
    return ctx.kind == ItemKind.TASK
