"""WebDAV XML: the request bodies crmsync sends and the Multi-Status answers it reads.

Answers are parsed with defusedxml (a DAV server is configured by a user, so its XML is not
trusted: no entity expansion, no external entities).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit
from xml.etree.ElementTree import Element  # only the type; parsing goes through defusedxml
from xml.sax.saxutils import escape

from defusedxml import ElementTree as SafeET

DAV = "DAV:"
CALDAV = "urn:ietf:params:xml:ns:caldav"
CARDDAV = "urn:ietf:params:xml:ns:carddav"
_HREF_SAFE = "/:@!$&'()*+,;=-._~"


def tag(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def normalize_href(href: str) -> str:
    """The path of HREF in one canonical percent-encoding, so that hrefs crmsync builds and
    hrefs a server returns (absolute or relative, encoded differently) compare equal."""
    return quote(unquote(urlsplit(href.strip()).path), safe=_HREF_SAFE)


class MultiStatusError(ValueError):
    """The answer is not a well-formed DAV:multistatus document."""


@dataclass
class DavResponse:
    """One ``DAV:response`` of a Multi-Status answer."""

    href: str
    status: int | None = None
    """The response-level status (sync-collection: 404 = deleted, 507 = truncated)."""
    props: dict[str, Element] = field(default_factory=dict)
    """Properties found (propstat 200), by Clark name (``{DAV:}getetag``)."""

    def text(self, name: str) -> str | None:
        element = self.props.get(name)
        if element is None:
            return None
        return "".join(element.itertext()).strip()


def _status_code(text: str | None) -> int | None:
    parts = (text or "").split()
    if len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1])
    return None


def parse_multistatus(body: bytes) -> tuple[list[DavResponse], str | None]:
    """The responses of a Multi-Status BODY and its top-level ``DAV:sync-token`` (if any)."""
    try:
        root = SafeET.fromstring(body)
    except Exception as exc:  # defusedxml raises ParseError and its own refusal classes
        raise MultiStatusError(f"the answer is not valid XML ({exc})") from None
    if root.tag != tag(DAV, "multistatus"):
        raise MultiStatusError(f"the answer's root element is {root.tag}, not DAV:multistatus")
    responses = []
    for element in root.findall(tag(DAV, "response")):
        href = element.findtext(tag(DAV, "href"))
        if not href:
            continue
        response = DavResponse(normalize_href(href))
        response.status = _status_code(element.findtext(tag(DAV, "status")))
        for propstat in element.findall(tag(DAV, "propstat")):
            code = _status_code(propstat.findtext(tag(DAV, "status")))
            prop = propstat.find(tag(DAV, "prop"))
            if code == 200 and prop is not None:
                for child in prop:
                    response.props[child.tag] = child
        responses.append(response)
    token = root.findtext(tag(DAV, "sync-token"))
    return responses, token.strip() if token else None


def error_conditions(body: bytes) -> list[str]:
    """The precondition names of a ``DAV:error`` body (``valid-sync-token``...), else []."""
    try:
        root = SafeET.fromstring(body)
    except Exception:
        return []
    if root.tag != tag(DAV, "error"):
        return []
    return [child.tag.rsplit("}", 1)[-1] for child in root]


def _doc(body: str) -> bytes:
    return ('<?xml version="1.0" encoding="utf-8"?>\n' + body).encode()


def propfind(*props: str) -> bytes:
    """A PROPFIND body asking for PROPS, given as ``D:name``, ``C:name`` or ``CR:name``."""
    inner = "".join(f"<{p}/>" for p in props)
    return _doc(
        f'<D:propfind xmlns:D="{DAV}" xmlns:C="{CALDAV}" xmlns:CR="{CARDDAV}">'
        f"<D:prop>{inner}</D:prop></D:propfind>"
    )


def sync_collection(token: str | None) -> bytes:
    return _doc(
        f'<D:sync-collection xmlns:D="{DAV}">'
        f"<D:sync-token>{escape(token or '')}</D:sync-token><D:sync-level>1</D:sync-level>"
        "<D:prop><D:getetag/></D:prop></D:sync-collection>"
    )


def multiget(calendar: bool, hrefs: list[str]) -> bytes:
    links = "".join(f"<D:href>{escape(h)}</D:href>" for h in hrefs)
    if calendar:
        return _doc(
            f'<C:calendar-multiget xmlns:D="{DAV}" xmlns:C="{CALDAV}">'
            f"<D:prop><D:getetag/><C:calendar-data/></D:prop>{links}</C:calendar-multiget>"
        )
    return _doc(
        f'<CR:addressbook-multiget xmlns:D="{DAV}" xmlns:CR="{CARDDAV}">'
        f"<D:prop><D:getetag/><CR:address-data/></D:prop>{links}</CR:addressbook-multiget>"
    )


def mkcalendar(display_name: str, components: tuple[str, ...]) -> bytes:
    comps = "".join(f'<C:comp name="{escape(c)}"/>' for c in components)
    return _doc(
        f'<C:mkcalendar xmlns:D="{DAV}" xmlns:C="{CALDAV}"><D:set><D:prop>'
        f"<D:displayname>{escape(display_name)}</D:displayname>"
        f"<C:supported-calendar-component-set>{comps}</C:supported-calendar-component-set>"
        "</D:prop></D:set></C:mkcalendar>"
    )


def mkcol_addressbook(display_name: str) -> bytes:
    """Extended MKCOL (RFC 5689) creating an address book (RFC 6352 §6.3.1)."""
    return _doc(
        f'<D:mkcol xmlns:D="{DAV}" xmlns:CR="{CARDDAV}"><D:set><D:prop>'
        "<D:resourcetype><D:collection/><CR:addressbook/></D:resourcetype>"
        f"<D:displayname>{escape(display_name)}</D:displayname>"
        "</D:prop></D:set></D:mkcol>"
    )
