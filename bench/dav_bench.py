"""Benchmark (issue 7): the CalDAV/CardDAV client's upload and no-change sync against raw
``http.client`` requests for the same collections, on the real Radicale.

    .venv/bin/python -m bench.dav_bench [--count 5000] [--small 500] [--rounds 20] [--json PATH]

In one run, on a private stack (``stack/up.sh .stack/bench-dav``, stopped at the end unless it
was already running or ``--keep``):

1. two users, "small" (``--small`` items) and "large" (``--count`` items); for each, crmsync
   renders (``render_ical`` / ``render_vcard``) and uploads (``DavClient.put`` with
   ``If-None-Match: *``) that many events and that many contacts into its calendar and address
   book; timed as items/s;
2. baseline upload: the same bodies, already rendered, PUT by a bare ``http.client`` loop on one
   connection into a second collection of the small user; crmsync / baseline items/s;
3. no-change sync: ``changes(collection, token)`` ROUNDS times per collection, counting the
   requests it sends (target: 1 per collection), against the same sync-collection REPORT sent
   by bare ``http.client``; medians, the ratio crmsync / baseline, and large / small (target:
   flat, i.e. the client adds no per-item cost; what Radicale itself spends per item shows in
   the baseline's own large / small).
The machine is noisy and shared: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.client
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tests.stackfix import REPO_ROOT, MailUser, Stack, ensure_stack, stop_stack

from crmsync.core.act_fields import ItemKind
from crmsync.dav import _xml
from crmsync.dav.client import CollectionKind, DavClient
from crmsync.dav.ical import render_ical
from crmsync.dav.vcard import render_vcard
from crmsync.secrets import Secret

DEFAULT_STACK_DIR = REPO_ROOT / ".stack" / "bench-dav"
HEL = ZoneInfo("Europe/Helsinki")
CAL, BOOK = CollectionKind.CALENDAR, CollectionKind.ADDRESSBOOK


def say(text: str) -> None:
    print(text, flush=True)


def event_text(i: int) -> str:
    start = dt.datetime(2026, 1, 5, 9, tzinfo=HEL) + dt.timedelta(hours=3 * i)
    fields = {
        "subject": f"Customer meeting {i}",
        "description": "Agenda: pricing, delivery, next steps.",
        "location": f"Room {i % 40}",
        "start": start,
        "end": start + dt.timedelta(hours=1),
        "timezone": "Europe/Helsinki",
        "attendees": (f"person{i % 97}@example.test",),
    }
    return render_ical(ItemKind.APPOINTMENT, fields, uid=f"ev-{i}@bench", crm_id=f"a-{i}")


def card_text(i: int) -> str:
    fields = {
        "full_name": f"Contact {i} Example",
        "first_name": f"Contact {i}",
        "last_name": "Example",
        "company": f"Company {i % 300}",
        "email": f"contact{i}@example.test",
        "telephone": f"+358 9 {i:06d}",
        "city": "Helsinki",
    }
    return render_vcard(fields, uid=f"card-{i}@bench", crm_id=f"c-{i}")


def upload(dav: DavClient, n: int) -> tuple[dict[str, str], float]:
    """Render and PUT N events and N contacts with crmsync; returns hrefs and items/s."""
    cal, book = dav.ensure_calendar(), dav.ensure_addressbook()
    t0 = time.perf_counter()
    for i in range(n):
        dav.put(
            dav.item_href(cal.href, f"ev-{i}@bench", CAL), event_text(i), CAL, if_none_match=True
        )
        dav.put(
            dav.item_href(book.href, f"card-{i}@bench", BOOK),
            card_text(i),
            BOOK,
            if_none_match=True,
        )
    elapsed = time.perf_counter() - t0
    return {"calendar": cal.href, "addressbook": book.href}, 2 * n / elapsed


class Raw:
    """The baseline: bare http.client on one connection, Basic auth, no parsing beyond status."""

    def __init__(self, stack: Stack, user: MailUser) -> None:
        self.conn = http.client.HTTPConnection(stack.host, stack.radicale_port, timeout=60)
        token = base64.b64encode(f"{user.username}:{user.password}".encode()).decode()
        self.auth = f"Basic {token}"

    def send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        self.conn.request(method, path, body=body, headers={"Authorization": self.auth, **headers})
        response = self.conn.getresponse()
        data = response.read()
        if response.status >= 300 and response.status != 207:
            raise RuntimeError(f"baseline {method} {path}: {response.status}")
        if response.will_close:
            self.conn.close()
        return data

    def report(self, href: str, token: str) -> None:
        self.send(
            "REPORT",
            href,
            _xml.sync_collection(token),
            {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"},
        )


def baseline_upload(stack: Stack, user: MailUser, dav: DavClient, n: int) -> float:
    cal = dav.ensure_calendar("baseline-cal")
    book = dav.ensure_addressbook("baseline-book")
    bodies = [(event_text(i).encode(), card_text(i).encode()) for i in range(n)]
    raw = Raw(stack, user)
    t0 = time.perf_counter()
    for i, (ev, card) in enumerate(bodies):
        raw.send(
            "PUT",
            f"{cal.href}ev-{i}.ics",
            ev,
            {"Content-Type": "text/calendar", "If-None-Match": "*"},
        )
        raw.send(
            "PUT",
            f"{book.href}card-{i}.vcf",
            card,
            {"Content-Type": "text/vcard", "If-None-Match": "*"},
        )
    return 2 * n / (time.perf_counter() - t0)


def no_change(
    stack: Stack, user: MailUser, dav: DavClient, hrefs: dict[str, str], rounds: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    raw = Raw(stack, user)
    for name, href in hrefs.items():
        token = dav.changes(href, None).token
        assert token is not None
        mine, base, requests = [], [], []
        for _ in range(rounds):
            before = dav.requests
            t0 = time.perf_counter()
            delta = dav.changes(href, token)
            mine.append(time.perf_counter() - t0)
            requests.append(dav.requests - before)
            if delta.changed or delta.deleted or delta.token != token:
                raise RuntimeError(f"{name}: a no-change sync saw changes")
            t0 = time.perf_counter()
            raw.report(href, token)
            base.append(time.perf_counter() - t0)
        out[name] = {
            "requests_per_sync": max(requests),
            "crmsync_ms": statistics.median(mine) * 1000,
            "baseline_ms": statistics.median(base) * 1000,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5_000, help="events and contacts (large)")
    parser.add_argument("--small", type=int, default=500, help="events and contacts (small)")
    parser.add_argument("--rounds", type=int, default=20, help="no-change syncs timed")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--stack-dir", type=Path, default=DEFAULT_STACK_DIR)
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    small = min(args.small, args.count)
    figures: dict[str, Any] = {"count": args.count, "small": small, "cpus": os.cpu_count()}
    stack, started = ensure_stack(args.stack_dir)
    try:
        users = {"small": stack.new_user("bdavs"), "large": stack.new_user("bdavl")}
        sizes = {"small": small, "large": args.count}
        for label, user in users.items():
            url = f"{stack.radicale_url}{user.username}/"
            with DavClient(url, user.username, Secret(user.password), timeout=120) as dav:
                hrefs, rate = upload(dav, sizes[label])
                say(
                    f"{label}: uploaded {sizes[label]:,} events + {sizes[label]:,} contacts "
                    f"with crmsync at {rate:,.0f} items/s"
                )
                figures[f"{label}_upload_items_per_s"] = rate
                if label == "small":
                    base = baseline_upload(stack, user, dav, small)
                    figures["baseline_upload_items_per_s"] = base
                    say(
                        f"baseline upload (bare http.client PUT): {base:,.0f} items/s; "
                        f"crmsync / baseline = {rate / base:.2f}"
                    )
                figures[f"{label}_no_change"] = nc = no_change(stack, user, dav, hrefs, args.rounds)
                for name, f in nc.items():
                    say(
                        f"{label} {name}: no-change sync {f['requests_per_sync']} request(s), "
                        f"crmsync {f['crmsync_ms']:.1f} ms vs baseline {f['baseline_ms']:.1f} ms "
                        f"(ratio {f['crmsync_ms'] / f['baseline_ms']:.2f})"
                    )
        for name in ("calendar", "addressbook"):
            s, lg = figures["small_no_change"][name], figures["large_no_change"][name]
            say(
                f"{name}: no-change cost large/small: crmsync "
                f"{lg['crmsync_ms'] / s['crmsync_ms']:.2f}, baseline "
                f"{lg['baseline_ms'] / s['baseline_ms']:.2f} "
                f"({args.count:,} vs {small:,} items)"
            )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        if started and not args.keep:
            say("stopping the bench stack (stack/down.sh)")
            stop_stack(stack.dir)


if __name__ == "__main__":
    main()
