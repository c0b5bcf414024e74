"""An in-memory pair of sides for exercising the pure planner (crmsync.core.reconcile): it
applies the planner's actions the way the applier does (etag checks, status rows), so planner
tests can run many syncs without servers. It stands in for no server: the planner does no I/O."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from crmsync.core.act_fields import ItemKind, field_names
from crmsync.core.reconcile import (
    Action,
    Context,
    CrmItem,
    Link,
    MailboxSide,
    Op,
    Policy,
    default_directions,
    plan,
)


@dataclass
class World:
    kind: ItemKind = ItemKind.TASK
    policy: Policy = Policy.CRM_WINS
    crm: dict[str, CrmItem] = field(default_factory=dict)
    mailbox: dict[str, MailboxSide] = field(default_factory=dict)
    status: dict[str, Link] = field(default_factory=dict)
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))
    last_actions: list[Action] = field(default_factory=list)

    def tick(self) -> str:
        return str(next(self.counter))

    def blank(self) -> dict[str, object]:
        return dict.fromkeys(field_names(self.kind))

    def crm_add(self, subject: str, *, in_filter: bool = True) -> str:
        crm_id = f"c{self.tick()}"
        fields = self.blank() | {"subject": subject}
        self.crm[crm_id] = CrmItem(crm_id, self.tick(), fields, in_filter)
        return crm_id

    def crm_edit(self, crm_id: str, **changes: object) -> None:
        c = self.crm[crm_id]
        self.crm[crm_id] = replace(c, version=self.tick(), fields=dict(c.fields) | changes)

    def mb_add(self, subject: str, *, tracked: bool = True) -> str:
        href = f"/m/{self.tick()}.ics"
        fields = self.blank() | {"subject": subject}
        self.mailbox[href] = MailboxSide(href, self.tick(), href, fields, None, tracked)
        return href

    def mb_edit(self, href: str, **changes: object) -> None:
        m = self.mailbox[href]
        self.mailbox[href] = replace(m, etag=self.tick(), fields=dict(m.fields) | changes)

    def sync(self) -> list[Action]:
        ctx = Context(self.kind, default_directions(self.kind), self.policy)
        actions = plan(
            ctx, list(self.crm.values()), list(self.mailbox.values()), list(self.status.values())
        )
        self.last_actions = actions
        failed: set[str] = set()
        for a in actions:
            self.apply(a, failed)
        return actions

    def apply(self, a: Action, failed: set[str]) -> None:
        if a.op == Op.CREATE_IN_MAILBOX:
            c = self.crm[a.crm_id]
            href = f"/m/{self.tick()}.ics"
            fields = self.blank() | dict(a.fields)
            self.mailbox[href] = MailboxSide(href, self.tick(), href, fields, c.crm_id, True)
            agreed = {n: c.fields.get(n) for n in fields}
            self.status[c.crm_id] = Link(
                c.crm_id, href, href, self.mailbox[href].etag, c.version, agreed
            )
        elif a.op == Op.UPDATE_MAILBOX:
            m = self.mailbox.get(a.href)
            if m is None or m.etag != a.etag:
                failed.add(a.crm_id)  # 412: re-planned next run
                return
            self.mb_edit(a.href, **a.fields)
        elif a.op == Op.DELETE_IN_MAILBOX:
            self.mailbox.pop(a.href, None)
            self.status.pop(a.crm_id, None)
        elif a.op == Op.CREATE_IN_CRM:
            crm_id = f"c{self.tick()}"
            fields = self.blank() | dict(a.fields)
            self.crm[crm_id] = CrmItem(crm_id, self.tick(), fields, True)
            if a.copy_of is None:
                m = self.mailbox[a.href]
                self.mailbox[a.href] = replace(m, etag=self.tick(), crm_id=crm_id)
                agreed = {n: m.fields.get(n) for n in fields}
                self.status[crm_id] = Link(
                    crm_id,
                    a.href,
                    m.uid,
                    self.mailbox[a.href].etag,
                    self.crm[crm_id].version,
                    agreed,
                    origin="mailbox",
                )
        elif a.op == Op.UPDATE_CRM:
            self.crm_edit(a.crm_id, **a.fields)
        elif a.op == Op.DELETE_IN_CRM:
            self.crm.pop(a.crm_id, None)
            self.status.pop(a.crm_id, None)
        elif a.op == Op.UNLINK:
            if a.suppress:
                self.status[a.crm_id] = replace(self.status[a.crm_id], suppressed=True)
            else:
                self.status.pop(a.crm_id, None)
        elif a.op == Op.LINK and a.crm_id not in failed:
            old = self.status.get(a.crm_id)
            origin = old.origin if old else a.origin
            self.status[a.crm_id] = Link(
                a.crm_id,
                a.href,
                a.uid,
                self.mailbox[a.href].etag,
                self.crm[a.crm_id].version,
                dict(a.fields),
                origin=origin,
            )
