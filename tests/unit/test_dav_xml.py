"""DAV Multi-Status parsing (pure): hrefs compared in one encoding, statuses, tokens, refusals."""

from __future__ import annotations

import pytest

from crmsync.dav._xml import (
    MultiStatusError,
    error_conditions,
    normalize_href,
    parse_multistatus,
)

SYNC_ANSWER = b"""<?xml version="1.0"?>
<multistatus xmlns="DAV:">
  <response><href>http://h:1/anna/cal/a%40x.ics</href>
    <propstat><prop><getetag>"e1"</getetag></prop><status>HTTP/1.1 200 OK</status></propstat>
  </response>
  <response><href>/anna/cal/b.ics</href><status>HTTP/1.1 404 Not Found</status></response>
  <sync-token>http://radicale.org/ns/sync/abc</sync-token>
</multistatus>"""


def test_sync_answer() -> None:
    responses, token = parse_multistatus(SYNC_ANSWER)
    assert token == "http://radicale.org/ns/sync/abc"
    assert [r.href for r in responses] == ["/anna/cal/a@x.ics", "/anna/cal/b.ics"]
    assert responses[0].text("{DAV:}getetag") == '"e1"' and responses[0].status is None
    assert responses[1].status == 404 and responses[1].props == {}


def test_hrefs_compare_in_one_encoding() -> None:
    assert normalize_href("/a/b%20c.ics") == normalize_href("http://x/a/b c.ics")
    assert normalize_href("/a/%C3%A4.vcf") == normalize_href("/a/ä.vcf")


@pytest.mark.parametrize(
    "body",
    [b"not xml", b"<error xmlns='DAV:'/>", b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'],
)
def test_bad_answers_are_refused(body: bytes) -> None:
    with pytest.raises(MultiStatusError):
        parse_multistatus(body)


def test_error_conditions() -> None:
    body = b'<?xml version="1.0"?><D:error xmlns:D="DAV:"><D:valid-sync-token/></D:error>'
    assert error_conditions(body) == ["valid-sync-token"]
    assert error_conditions(b"<html>no</html>") == []
