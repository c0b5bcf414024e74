"""A small CalDAV/CardDAV client: the collections, the changes, the items (standard library
``http.client``, one persistent connection per client).

    with DavClient("https://dav.example.com/anna/", "anna", secret) as dav:
        cal = dav.ensure_calendar()                       # VEVENT + VTODO, created if missing
        delta = dav.changes(cal.href, stored_token)       # one REPORT when nothing changed
        got = dav.get_many(cal.href, list(delta.changed)) # calendar-multiget, batched
        etag = dav.put(dav.item_href(cal.href, uid), text, if_none_match=True)
        dav.delete(href, if_match=etag)

Hrefs are server paths in one canonical encoding (``crmsync.dav._xml.normalize_href``), as the
server listed them. Writes are optimistic: ``if_match`` / ``if_none_match`` make a concurrent
change a ``ConflictError`` (412) instead of a lost update. Every error is a ``DavError`` whose
``transient`` says whether to retry later; errors about one item (``ConflictError``,
``DavItemRejected``) say which item and leave the rest of the sync to go on.
The password is sent only as an ``Authorization`` header and never appears in a message.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

from crmsync.dav import _xml
from crmsync.dav._http import (
    DEFAULT_TIMEOUT,
    DavAuthenticationFailed,
    DavError,
    DavNotFound,
    DavUnavailable,
    SourceAddress,
    basic_auth,
    open_connection,
    parse_target,
    redirect_error,
    refusal,
    scrub,
    translate_failure,
)
from crmsync.dav._xml import CALDAV, CARDDAV, DAV, MultiStatusError, normalize_href, tag
from crmsync.secrets import Secret

MAX_RESPONSE = 64 * 1024 * 1024
"""Largest answer read (a multiget batch of big items); more is refused, not buffered."""
MULTIGET_BATCH = 100
MAX_SYNC_ROUNDS = 1000
"""A truncated sync-collection answer (507 on the collection) is continued at most this often."""
_SIMPLE_UID = re.compile(r"[A-Za-z0-9@._-]{1,200}")
_RETRYABLE_DISCONNECTS = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class CollectionKind(StrEnum):
    CALENDAR = "calendar"
    ADDRESSBOOK = "addressbook"

    @property
    def content_type(self) -> str:
        if self is CollectionKind.CALENDAR:
            return "text/calendar; charset=utf-8"
        return "text/vcard; charset=utf-8"

    @property
    def suffix(self) -> str:
        return ".ics" if self is CollectionKind.CALENDAR else ".vcf"


class ConflictError(DavError):
    """412 Precondition Failed: the item changed (If-Match) or exists (If-None-Match) on the
    server since crmsync last saw it. Fetch it again and re-plan; nothing was written."""

    transient = False

    def __init__(self, message: str, *, href: str) -> None:
        super().__init__(message)
        self.href = href


class DavItemRejected(DavError):
    """The server refused one item (400/403 precondition/409/413/415/422): skip that item;
    the message carries the server's own words."""

    transient = False

    def __init__(self, message: str, *, href: str) -> None:
        super().__init__(message)
        self.href = href


class DavStorageFull(DavError):
    """507 Insufficient Storage: the account's quota is full; retry once space is freed."""

    transient = True


class DavProtocolError(DavError):
    """The server's answer makes no sense as CalDAV/CardDAV (not a collection, bad XML...)."""

    transient = False


@dataclass(frozen=True)
class Collection:
    href: str
    kind: CollectionKind
    display_name: str | None
    components: frozenset[str]
    """Calendars: the component types it accepts (VEVENT, VTODO); empty for address books."""
    sync_token: str | None
    """The current RFC 6578 token, when the server offers one (None: changes are found by
    listing etags)."""


@dataclass(frozen=True)
class Changes:
    """What changed in a collection since a token (or everything, when ``full``)."""

    token: str | None
    """Store this and pass it to the next ``changes`` (None: the server offers no tokens)."""
    changed: dict[str, str]
    """href -> etag of items added or changed (when ``full``: of every item)."""
    deleted: frozenset[str]
    full: bool
    """A complete listing (first sync, an expired token, or no token support): every known href
    missing from ``changed`` is gone too."""


@dataclass(frozen=True)
class Resource:
    href: str
    etag: str | None
    body: str


@dataclass(frozen=True)
class Fetched:
    resources: list[Resource]
    missing: list[str]
    """Hrefs the server no longer has (deleted between listing and fetching)."""


class DavClient:
    """A CalDAV/CardDAV session as USERNAME at the home URL (the mailbox's DAV URL)."""

    def __init__(
        self,
        url: str,
        username: str,
        password: Secret,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        source_address: SourceAddress | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._authorization = basic_auth(username, password)
        self._username = username
        self._password = password
        self._timeout = timeout
        self._target = parse_target(url)
        self.home = normalize_href(self._target.path.split("?", 1)[0])
        if not self.home.endswith("/"):
            self.home += "/"
        self._where = f"the DAV server at {self._target.origin}"
        self._conn = open_connection(
            self._target, timeout=timeout, source_address=source_address, ssl_context=ssl_context
        )
        self._no_sync_report: set[str] = set()
        self.requests = 0
        """Requests sent so far (tests and the benchmark check a no-change sync costs one)."""

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> DavClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- collections --------------------------------------------------------------------------
    _COLLECTION_PROPS = (
        "D:resourcetype",
        "D:displayname",
        "D:sync-token",
        "C:supported-calendar-component-set",
    )

    def collections(self) -> list[Collection]:
        """The calendars and address books directly under the home URL."""
        found = self._propfind(self.home, "1", self._COLLECTION_PROPS)
        return [c for r in found if (c := _as_collection(r)) is not None]

    def collection(self, href: str) -> Collection | None:
        """The calendar or address book at HREF; None when nothing is there."""
        try:
            found = self._propfind(normalize_href(href), "0", self._COLLECTION_PROPS)
        except DavNotFound:
            return None
        for response in found:
            if response.href.rstrip("/") == normalize_href(href).rstrip("/"):
                if (c := _as_collection(response)) is not None:
                    return c
                raise DavProtocolError(
                    f"{self._where} has something at {href} that is neither a calendar nor an "
                    "address book: choose another collection name"
                )
        return None

    def ensure_calendar(
        self, name: str = "crmsync", *, display_name: str = "CRM (crmsync)"
    ) -> Collection:
        """The calendar HOME/NAME/ accepting VEVENT and VTODO, created (MKCALENDAR) if missing."""
        href = self._child(name)
        existing = self.collection(href)
        if existing is None:
            body = _xml.mkcalendar(display_name, ("VEVENT", "VTODO"))
            self._send("MKCALENDAR", href, body, expect=(201,), what=f"create calendar {href}")
            existing = self.collection(href)
        if existing is None or existing.kind is not CollectionKind.CALENDAR:
            raise DavProtocolError(f"{href} on {self._where} is not a calendar")
        missing = {"VEVENT", "VTODO"} - existing.components
        if existing.components and missing:
            raise DavProtocolError(
                f"the calendar {href} on {self._where} does not accept "
                f"{', '.join(sorted(missing))}: choose another calendar name"
            )
        return existing

    def ensure_addressbook(
        self, name: str = "crmsync-contacts", *, display_name: str = "CRM contacts (crmsync)"
    ) -> Collection:
        """The address book HOME/NAME/, created (extended MKCOL) if missing."""
        href = self._child(name)
        existing = self.collection(href)
        if existing is None:
            body = _xml.mkcol_addressbook(display_name)
            self._send("MKCOL", href, body, expect=(201,), what=f"create address book {href}")
            existing = self.collection(href)
        if existing is None or existing.kind is not CollectionKind.ADDRESSBOOK:
            raise DavProtocolError(f"{href} on {self._where} is not an address book")
        return existing

    def item_href(self, collection_href: str, uid: str, kind: CollectionKind) -> str:
        """Where a new item with UID goes: its UID when that is a safe file name, else a hash."""
        stem = uid if _SIMPLE_UID.fullmatch(uid) else hashlib.sha256(uid.encode()).hexdigest()
        return normalize_href(collection_href.rstrip("/") + "/" + stem + kind.suffix)

    # -- changes ------------------------------------------------------------------------------
    def changes(self, collection_href: str, sync_token: str | None) -> Changes:
        """What changed since SYNC_TOKEN: one sync-collection REPORT (RFC 6578) when the server
        offers it; a full listing when the token is None or expired, or without token support."""
        href = normalize_href(collection_href)
        if href in self._no_sync_report:
            return Changes(None, self.list_etags(href), frozenset(), full=True)
        token = sync_token
        changed: dict[str, str] = {}
        deleted: set[str] = set()
        for _round in range(MAX_SYNC_ROUNDS):
            status, body = self._report_sync(href, token)
            if status is None:  # no RFC 6578 here: list etags from now on
                self._no_sync_report.add(href)
                return Changes(None, self.list_etags(href), frozenset(), full=True)
            if status == "invalid-token":
                if token is None or token == "":
                    raise DavProtocolError(
                        f"{self._where} refused a sync-collection REPORT without a token on "
                        f"{href}; it does not implement RFC 6578 correctly"
                    )
                token, changed, deleted = None, {}, set()
                sync_token = None  # the listing that follows is a full one
                continue
            truncated, token = self._read_sync(href, body, changed, deleted)
            if not truncated:
                return Changes(token, changed, frozenset(deleted), full=sync_token is None)
        raise DavProtocolError(
            f"{self._where} kept truncating the changes of {href} after {MAX_SYNC_ROUNDS} "
            "rounds; try again later"
        )

    def _report_sync(self, href: str, token: str | None) -> tuple[str | None, bytes]:
        status, reason, _headers, body = self._exchange(
            "REPORT",
            href,
            _xml.sync_collection(token),
            {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"},
        )
        if status == 207:
            return "ok", body
        conditions = _xml.error_conditions(body)
        if "valid-sync-token" in conditions:
            return "invalid-token", body
        if status in (405, 501) or "supported-report" in conditions:
            return None, body
        if status == 400 and token:  # some servers answer an unknown token with 400
            return "invalid-token", body
        raise self._error(status, reason, body, href, what=f"list changes of {href}")

    def _read_sync(
        self, href: str, body: bytes, changed: dict[str, str], deleted: set[str]
    ) -> tuple[bool, str | None]:
        responses, token = self._multistatus(body, href)
        truncated = False
        for r in responses:
            if r.href.rstrip("/") == href.rstrip("/"):
                truncated = truncated or r.status == 507
                continue
            if r.status == 404:
                deleted.add(r.href)
                changed.pop(r.href, None)
            elif (etag := r.text(tag(DAV, "getetag"))) is not None:
                changed[r.href] = etag
                deleted.discard(r.href)
        if token is None:
            raise DavProtocolError(
                f"{self._where} answered a sync REPORT on {href} without a token"
            )
        return truncated, token

    def list_etags(self, collection_href: str) -> dict[str, str]:
        """href -> etag of every item in the collection (PROPFIND, Depth 1)."""
        href = normalize_href(collection_href)
        found = self._propfind(href, "1", ("D:getetag", "D:resourcetype"))
        etags = {}
        for r in found:
            if r.href.rstrip("/") == href.rstrip("/") or _is_collection(r):
                continue
            if (etag := r.text(tag(DAV, "getetag"))) is not None:
                etags[r.href] = etag
        return etags

    # -- items --------------------------------------------------------------------------------
    def get_many(
        self,
        collection_href: str,
        hrefs: Iterable[str],
        kind: CollectionKind,
        *,
        batch: int = MULTIGET_BATCH,
    ) -> Fetched:
        """The items at HREFS, by calendar-multiget / addressbook-multiget REPORTs of BATCH."""
        wanted = list(dict.fromkeys(normalize_href(h) for h in hrefs))
        href = normalize_href(collection_href)
        data_tag = (
            tag(CALDAV, "calendar-data")
            if kind is CollectionKind.CALENDAR
            else tag(CARDDAV, "address-data")
        )
        resources: list[Resource] = []
        missing: list[str] = []
        for start in range(0, len(wanted), max(1, batch)):
            chunk = wanted[start : start + max(1, batch)]
            body = _xml.multiget(kind is CollectionKind.CALENDAR, chunk)
            answer = self._send(
                "REPORT",
                href,
                body,
                expect=(207,),
                what=f"fetch {len(chunk)} items of {href}",
                headers={"Depth": "1"},
            )
            seen = set()
            for r in self._multistatus(answer, href)[0]:
                data = r.text(data_tag)
                if data is None or r.status == 404:
                    continue
                seen.add(r.href)
                resources.append(Resource(r.href, r.text(tag(DAV, "getetag")), data))
            missing.extend(h for h in chunk if h not in seen)
        return Fetched(resources, missing)

    def put(
        self,
        href: str,
        body: str,
        kind: CollectionKind,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str | None:
        """Write BODY at HREF; the new etag (None when the server gave none: fetch to learn it).

        ``if_none_match=True`` creates only (412 if something is there); ``if_match=ETAG``
        replaces only that version. Either failing raises ``ConflictError``.
        """
        if if_match and if_none_match:
            raise ValueError("put: if_match and if_none_match exclude each other")
        headers = {"Content-Type": kind.content_type}
        if if_match:
            headers["If-Match"] = if_match
        if if_none_match:
            headers["If-None-Match"] = "*"
        path = normalize_href(href)
        status, reason, answer_headers, answer = self._exchange(
            "PUT", path, body.encode("utf-8"), headers
        )
        if status in (200, 201, 204):
            return answer_headers.get("ETag")
        raise self._error(status, reason, answer, path, what=f"write {path}")

    def delete(self, href: str, *, if_match: str | None = None) -> bool:
        """Delete HREF (only that version with IF_MATCH); False when it was already gone."""
        path = normalize_href(href)
        headers = {"If-Match": if_match} if if_match else {}
        status, reason, _h, answer = self._exchange("DELETE", path, None, headers)
        if status in (200, 204):
            return True
        if status in (404, 410):
            return False
        raise self._error(status, reason, answer, path, what=f"delete {path}")

    # -- plumbing -----------------------------------------------------------------------------
    def _child(self, name: str) -> str:
        if not name or "/" in name.strip("/") or name.strip("/") in (".", ".."):
            raise ValueError(f"collection name {name!r} must be one path segment")
        return normalize_href(self.home + name.strip("/") + "/")

    def _propfind(self, href: str, depth: str, props: tuple[str, ...]) -> list[_xml.DavResponse]:
        body = self._send(
            "PROPFIND",
            href,
            _xml.propfind(*props),
            expect=(207,),
            what=f"list {href}",
            headers={"Depth": depth},
        )
        return self._multistatus(body, href)[0]

    def _multistatus(self, body: bytes, href: str) -> tuple[list[_xml.DavResponse], str | None]:
        try:
            return _xml.parse_multistatus(body)
        except MultiStatusError as exc:
            raise DavProtocolError(f"{self._where} sent a bad answer for {href}: {exc}") from None

    def _send(
        self,
        method: str,
        href: str,
        body: bytes | None,
        *,
        expect: tuple[int, ...],
        what: str,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        all_headers = {"Content-Type": "application/xml; charset=utf-8", **(headers or {})}
        status, reason, _h, answer = self._exchange(method, href, body, all_headers)
        if status in expect:
            return answer
        raise self._error(status, reason, answer, href, what=what)

    def _exchange(
        self, method: str, href: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, http.client.HTTPMessage, bytes]:
        all_headers = {"Authorization": self._authorization, "User-Agent": "crmsync", **headers}
        # A kept-alive connection the server closed while idle fails on the next request: one
        # retry on a fresh connection, only when the request may have never been processed.
        for attempt in (1, 2):
            reused = self._conn.sock is not None
            try:
                self.requests += 1
                self._conn.request(method, href, body=body, headers=all_headers)
                response = self._conn.getresponse()
                answer = response.read(MAX_RESPONSE + 1)
            except _RETRYABLE_DISCONNECTS as exc:
                self._conn.close()
                if attempt == 1 and reused:
                    continue
                raise translate_failure(
                    exc, self._where, self._target, self._timeout, self._password
                ) from None
            except Exception as exc:
                self._conn.close()
                raise translate_failure(
                    exc, self._where, self._target, self._timeout, self._password
                ) from None
            if len(answer) > MAX_RESPONSE:
                self._conn.close()
                raise DavProtocolError(
                    f"{self._where} sent more than {MAX_RESPONSE // (1024 * 1024)} MiB for "
                    f"{method} {href}; fetch fewer items at a time"
                )
            if response.will_close:
                self._conn.close()
            return response.status, response.reason, response.headers, answer
        raise AssertionError("unreachable: the loop returns or raises")

    def _error(self, status: int, reason: str, body: bytes, href: str, *, what: str) -> DavError:
        said = scrub(f"{status} {reason}".strip(), self._password)
        server_says = _server_message(body, self._password)
        detail = f"{said}{': ' + server_says if server_says else ''}"
        if status == 412:
            return ConflictError(
                f"{self._where} refused to {what} ({said}): the item changed on the server "
                "since crmsync read it; it will be read again on the next sync",
                href=href,
            )
        if status == 507:
            return DavStorageFull(
                f"{self._where} could not {what} ({detail}): the account's storage is full; "
                "free space or raise the quota on the server"
            )
        conditions = _xml.error_conditions(body)
        if status in (400, 409, 413, 415, 422) or (status == 403 and conditions):
            return DavItemRejected(
                f"{self._where} refused to {what} ({detail}); this item is skipped, the rest "
                "goes on",
                href=href,
            )
        if status in (404, 410):
            return DavNotFound(f"{self._where} has nothing at {href} ({said}) (to {what})")
        refused = refusal(status, reason, self._where, self._username, href, self._password)
        if isinstance(refused, DavAuthenticationFailed | DavUnavailable):
            return refused
        if 300 <= status < 400:
            return redirect_error(self._where, said, None, self._password)
        if status in (405, 501):
            return DavProtocolError(
                f"{self._where} does not support what crmsync needs to {what} ({said}): is the "
                "URL a CalDAV/CardDAV server?"
            )
        return DavError(f"{self._where} could not {what} ({detail})")


def _server_message(body: bytes, password: Secret) -> str:
    text = body[:2000].decode("utf-8", "replace")
    text = re.sub(r"<[^>]*>", " ", text)
    text = " ".join(text.split())
    return scrub(text[:300], password)


def _is_collection(r: _xml.DavResponse) -> bool:
    rtype = r.props.get(tag(DAV, "resourcetype"))
    return rtype is not None and rtype.find(tag(DAV, "collection")) is not None


def _as_collection(r: _xml.DavResponse) -> Collection | None:
    rtype = r.props.get(tag(DAV, "resourcetype"))
    if rtype is None:
        return None
    if rtype.find(tag(CALDAV, "calendar")) is not None:
        kind = CollectionKind.CALENDAR
    elif rtype.find(tag(CARDDAV, "addressbook")) is not None:
        kind = CollectionKind.ADDRESSBOOK
    else:
        return None
    comps = r.props.get(tag(CALDAV, "supported-calendar-component-set"))
    names = (
        frozenset(c.get("name", "").upper() for c in comps if c.get("name"))
        if comps is not None
        else frozenset()
    )
    href = r.href if r.href.endswith("/") else r.href + "/"
    return Collection(
        href,
        kind,
        r.text(tag(DAV, "displayname")) or None,
        names,
        r.text(tag(DAV, "sync-token")) or None,
    )
