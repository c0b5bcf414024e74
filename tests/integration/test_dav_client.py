"""The CalDAV/CardDAV client against the real Radicale of the test stack (127.0.0.1)."""

from __future__ import annotations

import pytest

from crmsync.dav.client import (
    CollectionKind,
    ConflictError,
    DavAuthenticationFailed,
    DavClient,
    DavItemRejected,
)
from crmsync.secrets import Secret
from tests.stackfix import MailUser, Stack

pytestmark = pytest.mark.integration

CAL = CollectionKind.CALENDAR
BOOK = CollectionKind.ADDRESSBOOK


def _event(uid: str, summary: str = "Meeting") -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:20261001T000000Z\r\nDTSTART:20261101T100000Z\r\n"
        f"DTEND:20261101T110000Z\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def _card(uid: str, name: str = "Ann Example") -> str:
    return (
        f"BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:{name}\r\nN:Example;Ann;;;\r\nEND:VCARD\r\n"
    )


def _client(stack: Stack, user: MailUser, password: str | None = None) -> DavClient:
    url = f"{stack.radicale_url}{user.username}/"
    return DavClient(url, user.username, Secret(password or user.password), timeout=30)


@pytest.fixture
def dav(stack: Stack, mail_user: MailUser):
    with _client(stack, mail_user) as client:
        yield client


def test_collections_are_created_once_and_found(dav: DavClient) -> None:
    cal = dav.ensure_calendar()
    book = dav.ensure_addressbook()
    assert cal.kind is CAL and {"VEVENT", "VTODO"} <= cal.components
    assert book.kind is BOOK
    assert cal.sync_token and book.sync_token
    again = dav.ensure_calendar()
    assert again.href == cal.href
    kinds = {c.href: c.kind for c in dav.collections()}
    assert kinds == {cal.href: CAL, book.href: BOOK}


def test_put_get_list_and_changes_by_token(dav: DavClient) -> None:
    cal = dav.ensure_calendar()
    first = dav.changes(cal.href, None)
    assert first.full and first.changed == {} and first.token

    hrefs = [dav.item_href(cal.href, f"ev-{i}@test", CAL) for i in range(3)]
    etags = [
        dav.put(h, _event(f"ev-{i}@test"), CAL, if_none_match=True) for i, h in enumerate(hrefs)
    ]
    assert all(etags)
    assert dav.list_etags(cal.href) == dict(zip(hrefs, etags, strict=True))

    delta = dav.changes(cal.href, first.token)
    assert not delta.full and delta.changed == dict(zip(hrefs, etags, strict=True))
    assert delta.deleted == frozenset() and delta.token != first.token

    fetched = dav.get_many(cal.href, [*hrefs, cal.href + "gone.ics"], CAL, batch=2)
    assert sorted(r.href for r in fetched.resources) == sorted(hrefs)
    assert fetched.missing == [cal.href + "gone.ics"]
    assert all("BEGIN:VEVENT" in r.body for r in fetched.resources)
    assert {r.href: r.etag for r in fetched.resources} == dict(zip(hrefs, etags, strict=True))

    new_etag = dav.put(hrefs[0], _event("ev-0@test", "Moved"), CAL, if_match=etags[0])
    assert new_etag and new_etag != etags[0]
    assert dav.delete(hrefs[1], if_match=etags[1]) is True
    assert dav.delete(hrefs[1]) is False  # already gone: not an error

    later = dav.changes(cal.href, delta.token)
    assert later.changed == {hrefs[0]: new_etag}
    assert later.deleted == frozenset({hrefs[1]})


def test_no_change_sync_is_one_request_per_collection(dav: DavClient) -> None:
    cal = dav.ensure_calendar()
    book = dav.ensure_addressbook()
    for i in range(5):
        dav.put(dav.item_href(cal.href, f"e{i}", CAL), _event(f"e{i}"), CAL)
        dav.put(dav.item_href(book.href, f"c{i}", BOOK), _card(f"c{i}"), BOOK)
    tokens = {c.href: dav.changes(c.href, None).token for c in (cal, book)}
    before = dav.requests
    for href, token in tokens.items():
        delta = dav.changes(href, token)
        assert delta.changed == {} and delta.deleted == frozenset() and not delta.full
        assert delta.token == token
    assert dav.requests - before == 2


def test_conflicts_are_conflict_errors(dav: DavClient) -> None:
    book = dav.ensure_addressbook()
    href = dav.item_href(book.href, "card-1", BOOK)
    etag = dav.put(href, _card("card-1"), BOOK, if_none_match=True)
    with pytest.raises(ConflictError, match="changed on the server") as exists:
        dav.put(href, _card("card-1", "Other"), BOOK, if_none_match=True)
    assert exists.value.href == href and not exists.value.transient
    newer = dav.put(href, _card("card-1", "Ann B. Example"), BOOK, if_match=etag)
    with pytest.raises(ConflictError):
        dav.put(href, _card("card-1", "Stale"), BOOK, if_match=etag)
    with pytest.raises(ConflictError):
        dav.delete(href, if_match=etag)
    fetched = dav.get_many(book.href, [href], BOOK)
    assert fetched.resources[0].etag == newer and "Ann B. Example" in fetched.resources[0].body


def test_invalid_sync_token_falls_back_to_full_listing(dav: DavClient) -> None:
    book = dav.ensure_addressbook()
    href = dav.item_href(book.href, "c1", BOOK)
    etag = dav.put(href, _card("c1"), BOOK)
    delta = dav.changes(book.href, "http://radicale.org/ns/sync/" + "0" * 64)
    assert delta.full and delta.changed == {href: etag} and delta.token


def test_item_the_server_refuses_is_an_item_error(dav: DavClient) -> None:
    cal = dav.ensure_calendar()
    href = dav.item_href(cal.href, "broken", CAL)
    with pytest.raises(DavItemRejected) as refused:
        dav.put(href, "BEGIN:VCALENDAR\r\nthis is not iCalendar\r\n", CAL)
    assert refused.value.href == href and not refused.value.transient


def test_wrong_password_is_permanent_and_never_shown(stack: Stack, mail_user: MailUser) -> None:
    wrong = "not-the-password-" + mail_user.password
    with (
        _client(stack, mail_user, wrong) as dav,
        pytest.raises(DavAuthenticationFailed, match="refused the login") as failed,
    ):
        dav.ensure_calendar()
    assert not failed.value.transient
    assert "mailbox add --update" in str(failed.value)
    assert wrong not in str(failed.value) and mail_user.password not in str(failed.value)


def test_other_users_collection_is_refused(stack: Stack, stack_user_factory) -> None:
    anna, bert = stack_user_factory(), stack_user_factory()
    url = f"{stack.radicale_url}{anna.username}/"
    with (
        DavClient(url, bert.username, Secret(bert.password)) as dav,
        pytest.raises(DavAuthenticationFailed),
    ):
        dav.ensure_calendar()


def test_unicode_uid_gets_a_safe_href(dav: DavClient) -> None:
    cal = dav.ensure_calendar()
    href = dav.item_href(cal.href, "weird/uid with spaces ä", CAL)
    assert href.startswith(cal.href) and href.endswith(".ics") and " " not in href
    dav.put(href, _event("weird/uid with spaces ä"), CAL, if_none_match=True)
    assert href in dav.list_etags(cal.href)
