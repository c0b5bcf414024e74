"""One message copy as the incoming sync sees it: the facts taken from its header fetch.

Everything here comes from the headers-only fetch (``mail.imap.fetch.HeaderFetch``), so it is
available at every privacy level; the subject only when the mailbox's level allows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from crmsync.core.addresses import AutomaticMail, classify_automatic, normalize_address
from crmsync.core.correlate import normalize_message_id, parse_message_ids, thread_key
from crmsync.core.dedupe import dedupe_key
from crmsync.core.tokens import Token, TokenFormat, find_token
from crmsync.mail.imap.fetch import HeaderFetch
from crmsync.mail.imap.headers import Address


def _canonical(addresses: tuple[Address, ...], names: dict[str, str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in addresses:
        canonical = normalize_address(item.address)
        if canonical is None:
            continue
        seen.setdefault(canonical, None)
        if item.name and canonical not in names:
            names[canonical] = item.name[:300]
    return tuple(seen)


@dataclass(frozen=True)
class MessageCopy:
    uid: int
    fetch: HeaderFetch
    message_id: str | None
    """Normalized."""
    dedupe_key: str
    sender: str | None
    """Canonical From address (the first one)."""
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    names: dict[str, str]
    """Display names by canonical address, for the parties."""
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    thread_key: str | None
    subject: str | None
    token: Token | None
    automatic: AutomaticMail | None
    received_at: datetime | None

    @property
    def recipients(self) -> tuple[str, ...]:
        return (*self.to, *self.cc, *self.bcc)

    @property
    def addresses(self) -> tuple[str, ...]:
        return ((self.sender,) if self.sender else ()) + self.recipients

    @classmethod
    def from_fetch(cls, fetch: HeaderFetch, token_format: TokenFormat | None) -> MessageCopy:
        headers = fetch.headers
        names: dict[str, str] = {}
        senders = _canonical(headers.from_, names)
        sender = senders[0] if senders else None
        to = _canonical(headers.to, names)
        cc = _canonical(headers.cc, names)
        bcc = _canonical(headers.bcc, names)
        message_id = normalize_message_id(headers.message_id)
        in_reply_to = parse_message_ids(headers.in_reply_to)
        references = parse_message_ids(headers.references)
        subject = headers.subject
        token = find_token(subject, token_format) if token_format is not None else None
        automatic = classify_automatic(
            {
                "List-Id": headers.list_id,
                "List-Unsubscribe": headers.list_unsubscribe,
                "Auto-Submitted": headers.auto_submitted,
                "Precedence": headers.precedence,
                "X-Auto-Response-Suppress": headers.auto_response_suppress,
            },
            sender=headers.from_[0].address if headers.from_ else None,
        )
        return cls(
            uid=fetch.uid,
            fetch=fetch,
            message_id=message_id,
            dedupe_key=dedupe_key(
                message_id,
                sender=sender,
                recipients=(*to, *cc, *bcc),
                date=headers.date,
                in_reply_to=in_reply_to,
            ),
            sender=sender,
            to=to,
            cc=cc,
            bcc=bcc,
            names=names,
            in_reply_to=in_reply_to,
            references=references,
            thread_key=thread_key(message_id, in_reply_to, references),
            subject=subject,
            token=token,
            automatic=automatic,
            received_at=fetch.internaldate,
        )
