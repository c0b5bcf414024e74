"""The CalDAV/CardDAV adapter (standard library only). So far: the connectivity probe."""

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
