"""The key that makes one message one activity, however many mailboxes received it.

``mid:<normalized Message-ID>`` when the message has one. Without one (rare: some scanners,
old gateways, hand-made mail), a content hash of what every recipient's copy has in common and
what any privacy level may read: the sender, the recipients, the Date header and the
threading ids. Not the subject (a metadata-only mailbox never sees it, and the same message must
get the same key in every mailbox) and not the size (each delivery adds its own trace headers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from crmsync.core.correlate import normalize_message_id

MAX_KEY_CHARS = 1000
"""The width of the ``dedupe_key`` columns."""


def dedupe_key(
    message_id: str | None,
    *,
    sender: str | None = None,
    recipients: Sequence[str] = (),
    date: datetime | None = None,
    in_reply_to: Sequence[str] = (),
) -> str:
    normalized = normalize_message_id(message_id)
    if normalized is not None:
        return f"mid:{normalized}"[:MAX_KEY_CHARS]
    parts = [
        sender or "",
        ",".join(sorted(set(recipients))),
        date.isoformat() if date is not None else "",
        ",".join(in_reply_to),
    ]
    digest = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256:{digest}"
