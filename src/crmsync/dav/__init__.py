"""The CalDAV/CardDAV adapter: the connectivity probe, the client (``crmsync.dav.client``) and
the iCalendar/vCard converters (``crmsync.dav.ical``, ``crmsync.dav.vcard``). It knows its
protocol and the act_fields vocabulary, nothing of the CRM."""

from crmsync.dav.probe import (
    DavAuthenticationFailed,
    DavError,
    DavInsecureTransportRefused,
    DavNotFound,
    DavProbe,
    DavTlsFailure,
    DavUnavailable,
    probe_collection,
)

__all__ = [
    "DavAuthenticationFailed",
    "DavError",
    "DavInsecureTransportRefused",
    "DavNotFound",
    "DavProbe",
    "DavTlsFailure",
    "DavUnavailable",
    "probe_collection",
]
