"""A Hypothesis state machine over the planner: random edits, deletes, filter changes and
syncs on both sides; after a sync that settles, the sides agree and nothing is lost or doubled."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crmsync.core.act_fields import ItemKind
from crmsync.core.reconcile import CrmItem, Op, Policy
from tests.unit.actworld import World

WORDS = st.sampled_from(["a", "b", "c", "d"])


class SyncMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w = World(kind=ItemKind.TASK, policy=Policy.CRM_WINS)
        self.deleted_crm: set[str] = set()

    @rule(subject=WORDS, in_filter=st.booleans())
    def crm_add(self, subject: str, in_filter: bool) -> None:
        self.w.crm_add(subject, in_filter=in_filter)

    @rule(subject=WORDS, tracked=st.booleans())
    def mb_add(self, subject: str, tracked: bool) -> None:
        self.w.mb_add(subject, tracked=tracked)

    @precondition(lambda self: self.w.crm)
    @rule(data=st.data(), subject=WORDS, notes=WORDS)
    def crm_edit(self, data: st.DataObject, subject: str, notes: str) -> None:
        cid = data.draw(st.sampled_from(sorted(self.w.crm)))
        self.w.crm_edit(cid, **{data.draw(st.sampled_from(["subject", "description"])): subject})

    @precondition(lambda self: self.w.mailbox)
    @rule(data=st.data(), value=WORDS)
    def mb_edit(self, data: st.DataObject, value: str) -> None:
        href = data.draw(st.sampled_from(sorted(self.w.mailbox)))
        name = data.draw(st.sampled_from(["subject", "description", "status"]))
        self.w.mb_edit(href, **{name: "completed" if name == "status" else value})

    @precondition(lambda self: len(self.w.crm) > 1)
    @rule(data=st.data())
    def crm_delete(self, data: st.DataObject) -> None:
        del self.w.crm[data.draw(st.sampled_from(sorted(self.w.crm)))]

    @precondition(lambda self: len(self.w.mailbox) > 1)
    @rule(data=st.data())
    def mb_delete(self, data: st.DataObject) -> None:
        del self.w.mailbox[data.draw(st.sampled_from(sorted(self.w.mailbox)))]

    @precondition(lambda self: self.w.crm)
    @rule(data=st.data())
    def toggle_filter(self, data: st.DataObject) -> None:
        c = self.w.crm[data.draw(st.sampled_from(sorted(self.w.crm)))]
        self.w.crm[c.crm_id] = CrmItem(c.crm_id, c.version, c.fields, not c.in_filter)

    @rule()
    def sync(self) -> None:
        self.w.sync()

    @invariant()
    def settled_sync_converges(self) -> None:
        # Settle on a copy so the random history goes on from the unsettled state.
        w = World(
            self.w.kind,
            self.w.policy,
            dict(self.w.crm),
            dict(self.w.mailbox),
            dict(self.w.status),
            self.w.counter,
        )
        for _ in range(3):
            if not w.sync():
                break
        assert w.sync() == [], w.last_actions
        if any(a.op == Op.REFUSED for a in w.last_actions):
            return
        crm_ids_in_mailbox = [m.crm_id for m in w.mailbox.values() if m.crm_id]
        assert len(crm_ids_in_mailbox) == len(set(crm_ids_in_mailbox)), "a row is doubled"
        linked = {link.href for link in w.status.values() if link.href}
        for link in w.status.values():
            if link.suppressed:
                continue
            c, m = w.crm[link.crm_id], w.mailbox[link.href]
            assert c.fields["subject"] == m.fields["subject"]
            assert c.fields["description"] == m.fields["description"]
        for c in w.crm.values():
            if c.in_filter:
                assert c.crm_id in w.status, "an in-filter row never reached the mailbox"
        for m in w.mailbox.values():
            if m.tracked:
                assert m.href in linked, "a tracked item was lost"


SyncMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestSyncMachine = SyncMachine.TestCase
