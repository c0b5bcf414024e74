"""The planner's rules one by one (reference §6, issue 7), on the in-memory world."""

from __future__ import annotations

import datetime as dt

from crmsync.core.act_fields import Direction, ItemKind, field_names
from crmsync.core.reconcile import (
    Context,
    CrmItem,
    Link,
    MailboxSide,
    Op,
    Policy,
    default_directions,
    plan,
)
from tests.unit.actworld import World

NOW = dt.datetime(2026, 12, 4, 12, tzinfo=dt.UTC)


def ops(actions) -> list[Op]:
    return [a.op for a in actions]


def test_crm_rows_in_filter_go_to_the_mailbox_others_do_not() -> None:
    w = World()
    w.crm_add("in")
    w.crm_add("out", in_filter=False)
    assert ops(w.sync()) == [Op.CREATE_IN_MAILBOX]
    assert [m.fields["subject"] for m in w.mailbox.values()] == ["in"]
    assert w.sync() == []  # no change: nothing to do


def test_only_tracked_mailbox_items_reach_the_crm() -> None:
    w = World()
    w.mb_add("tracked")
    w.mb_add("private", tracked=False)
    assert ops(w.sync()) == [Op.CREATE_IN_CRM]
    assert [c.fields["subject"] for c in w.crm.values()] == ["tracked"]
    assert w.sync() == []


def test_linked_pairs_sync_both_ways() -> None:
    w = World()
    cid = w.crm_add("a")
    w.sync()
    (href,) = w.mailbox
    w.mb_edit(href, description="from mailbox")
    w.crm_edit(cid, subject="from crm")
    w.sync()
    assert w.crm[cid].fields["description"] == "from mailbox"
    assert w.mailbox[href].fields["subject"] == "from crm"
    assert w.sync() == []


def test_field_directions_are_respected() -> None:
    w = World()
    cid = w.crm_add("a")
    w.sync()
    (href,) = w.mailbox
    dirs = default_directions(ItemKind.TASK) | {
        "subject": Direction.TO_CRM,
        "description": Direction.NONE,
    }
    w.crm_edit(cid, subject="crm subject", description="crm notes")
    ctx = Context(ItemKind.TASK, dirs)
    actions = plan(ctx, list(w.crm.values()), list(w.mailbox.values()), list(w.status.values()))
    assert Op.UPDATE_MAILBOX not in ops(actions)
    w.mb_edit(href, subject="mb subject", description="mb notes")
    actions = plan(ctx, list(w.crm.values()), list(w.mailbox.values()), list(w.status.values()))
    (upd,) = [a for a in actions if a.op == Op.UPDATE_CRM]
    assert upd.fields == {"subject": "mb subject"}  # description is NONE: not carried


def test_logical_delete_removes_from_mailbox_keeps_crm_row() -> None:
    w = World()
    cid = w.crm_add("a")
    w.sync()
    w.crm[cid] = CrmItem(cid, w.crm[cid].version, w.crm[cid].fields, in_filter=False)
    actions = w.sync()
    assert ops(actions) == [Op.DELETE_IN_MAILBOX]
    assert "logical delete" in actions[0].reason
    assert w.mailbox == {} and cid in w.crm and w.status == {}


def test_items_tracked_from_the_mailbox_are_not_logically_deleted() -> None:
    w = World()
    href = w.mb_add("mine")
    w.sync()
    (cid,) = w.crm
    w.crm[cid] = CrmItem(cid, w.crm[cid].version, w.crm[cid].fields, in_filter=False)
    w.sync()
    assert href in w.mailbox


def test_empty_side_is_refused_not_mirrored() -> None:
    w = World()
    for i in range(6):
        w.crm_add(f"r{i}")
    w.sync()
    saved = dict(w.mailbox)
    w.mailbox.clear()
    actions = w.sync()
    assert ops(actions) == [Op.REFUSED] and "mailbox lists no" in actions[0].reason
    assert len(w.crm) == 6
    w.mailbox.update(saved)
    w.crm.clear()
    assert ops(w.sync()) == [Op.REFUSED]
    assert len(w.mailbox) == 6


def test_a_few_links_are_below_the_guard() -> None:
    w = World()
    w.crm_add("only")
    w.sync()
    w.mailbox.clear()
    assert ops(w.sync()) == [Op.DELETE_IN_CRM]  # tasks: a mailbox delete deletes the row


def _conflict(policy: Policy, crm_newer: bool = True) -> World:
    w = World(policy=policy)
    cid = w.crm_add("a")
    w.sync()
    (href,) = w.mailbox
    early, late = NOW, NOW + dt.timedelta(minutes=1)
    w.crm_edit(cid, subject="crm")
    w.crm[cid] = CrmItem(
        cid, w.crm[cid].version, w.crm[cid].fields, True, modified_at=late if crm_newer else early
    )
    w.mb_edit(href, subject="mb")
    m = w.mailbox[href]
    w.mailbox[href] = MailboxSide(
        m.href,
        m.etag,
        m.uid,
        m.fields,
        m.crm_id,
        m.tracked,
        modified_at=early if crm_newer else late,
    )
    actions = w.sync()
    assert Op.CONFLICT in ops(actions)
    return w


def test_conflict_policies() -> None:
    w = _conflict(Policy.CRM_WINS)
    assert {m.fields["subject"] for m in w.mailbox.values()} == {"crm"}
    w = _conflict(Policy.MAILBOX_WINS)
    assert {c.fields["subject"] for c in w.crm.values()} == {"mb"}
    w = _conflict(Policy.NEWEST_WINS, crm_newer=False)
    assert {c.fields["subject"] for c in w.crm.values()} == {"mb"}
    w = _conflict(Policy.NEWEST_WINS, crm_newer=True)
    assert {m.fields["subject"] for m in w.mailbox.values()} == {"crm"}
    w = _conflict(Policy.KEEP_BOTH)
    w.sync()
    assert sorted(c.fields["subject"] for c in w.crm.values()) == ["crm", "mb"]
    assert sorted(m.fields["subject"] for m in w.mailbox.values()) == ["crm", "mb"]
    assert w.sync() == []


def test_one_way_field_conflict_goes_to_its_source() -> None:
    w = World()
    cid = w.crm_add("a")
    w.sync()
    (href,) = w.mailbox
    w.crm_edit(cid, subject="crm")
    w.mb_edit(href, subject="mb")
    dirs = default_directions(ItemKind.TASK) | {"subject": Direction.TO_CRM}
    ctx = Context(ItemKind.TASK, dirs, Policy.CRM_WINS)
    actions = plan(ctx, list(w.crm.values()), list(w.mailbox.values()), list(w.status.values()))
    (upd,) = [a for a in actions if a.op == Op.UPDATE_CRM]
    assert upd.fields == {"subject": "mb"}


def test_copies_of_linked_items_are_ignored_and_lost_status_relinks() -> None:
    w = World()
    cid = w.crm_add("a")
    w.sync()
    (href,) = w.mailbox
    m = w.mailbox[href]
    w.mailbox["/m/copy.ics"] = MailboxSide("/m/copy.ics", "e", "copy", m.fields, cid, True)
    assert w.sync() == []
    w.status.clear()
    del w.mailbox["/m/copy.ics"]
    actions = w.sync()
    assert Op.CREATE_IN_MAILBOX not in ops(actions) and Op.LINK in ops(actions)
    assert w.sync() == [] and len(w.mailbox) == 1


def test_task_delete_rules() -> None:
    w = World()
    a = w.crm_add("open")
    b = w.crm_add("done")
    w.crm_add("third")
    w.sync()
    href_b = w.status[b].href
    w.mb_edit(href_b, status="completed")
    w.sync()
    del w.crm[a], w.crm[b]
    w.sync()
    assert href_b in w.mailbox  # completed in the mailbox: CRM delete does not reach it
    assert len(w.mailbox) == 2
    assert w.sync() == []  # the suppressed link keeps it from being re-created


def _appointment_world(organizer: str | None, start: dt.datetime) -> tuple[Context, Link, dict]:
    fields = dict.fromkeys(field_names(ItemKind.APPOINTMENT)) | {
        "subject": "m",
        "organizer": organizer,
        "start": start,
    }
    link = Link("c1", "/m/1.ics", "u1", "e1", "v1", fields)
    ctx = Context(
        ItemKind.APPOINTMENT,
        default_directions(ItemKind.APPOINTMENT),
        user_address="me@example.org",
        now=NOW,
    )
    return ctx, link, fields


def test_appointment_crm_delete_reaches_mailbox_only_for_future_organizer() -> None:
    future, past = NOW + dt.timedelta(days=1), NOW - dt.timedelta(days=1)
    cases = [
        ("me@example.org", future, Op.DELETE_IN_MAILBOX),
        ("other@example.org", future, Op.UNLINK),
        ("me@example.org", past, Op.UNLINK),
    ]
    for organizer, start, expected in cases:
        ctx, link, fields = _appointment_world(organizer, start)
        m = MailboxSide("/m/1.ics", "e1", "u1", fields, "c1", True)
        (action,) = plan(ctx, [CrmItem("c2", "v", fields, True)], [m], [link])[:1]
        assert action.op == expected, (organizer, start)


def test_appointment_mailbox_delete_rules() -> None:
    future = NOW + dt.timedelta(days=1)
    for organizer, status, expected in [
        ("me@example.org", None, Op.DELETE_IN_CRM),
        ("other@example.org", None, Op.UNLINK),
        ("me@example.org", "cancelled", Op.UNLINK),
    ]:
        ctx, link, fields = _appointment_world(organizer, future)
        c = CrmItem("c1", "v1", fields | {"status": status}, True)
        other = MailboxSide("/m/x.ics", "e", "x", fields, None, False)
        (action,) = plan(ctx, [c], [other], [link])
        assert action.op == expected


def test_closed_appointments_show_as_free_in_the_mailbox() -> None:
    ctx, _, fields = _appointment_world(None, NOW)
    c = CrmItem("c1", "v1", fields | {"status": "cancelled", "show_as": "busy"}, True)
    (action,) = plan(ctx, [c], [], [])
    assert action.op == Op.CREATE_IN_MAILBOX and action.fields["show_as"] == "free"


def test_contact_delete_rules() -> None:
    w = World(kind=ItemKind.CONTACT)
    w.crm_add("owned")
    w.sync()
    assert len(w.mailbox) == 1
    w.mailbox.clear()
    assert ops(w.sync()) == [Op.UNLINK]  # removed from an address book: kept in the CRM
    w = World(kind=ItemKind.CONTACT)
    cid = w.crm_add("owned")
    w.sync()
    w.crm.clear()
    assert ops(w.sync()) == [Op.UNLINK]  # the owner keeps the mailbox copy
    w = World(kind=ItemKind.CONTACT)
    cid = w.crm_add("someone else's")
    w.sync()
    link = w.status[cid]
    w.status[cid] = Link(
        link.crm_id,
        link.href,
        link.uid,
        link.etag,
        link.crm_version,
        link.fields,
        owned_by_user=False,
    )
    w.crm.clear()
    assert ops(w.sync()) == [Op.DELETE_IN_MAILBOX]


def test_a_412_is_replanned_next_run() -> None:
    w = World()
    cid = w.crm_add("a")
    w.sync()
    (href,) = w.mailbox
    w.crm_edit(cid, subject="new")
    ctx = Context(ItemKind.TASK, default_directions(ItemKind.TASK))
    actions = plan(ctx, list(w.crm.values()), list(w.mailbox.values()), list(w.status.values()))
    w.mb_edit(href, description="meanwhile")  # the item changes between listing and PUT
    failed: set[str] = set()
    for a in actions:
        w.apply(a, failed)
    assert failed == {cid} and w.mailbox[href].fields["subject"] == "a"
    w.sync()
    assert w.mailbox[href].fields["subject"] == "new"
    assert w.crm[cid].fields["description"] == "meanwhile"
