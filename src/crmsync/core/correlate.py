"""Which tracked email a new email belongs with (reference §3, "correlation").

Methods, in order, each switchable; the first that finds a tracked email wins:

1. **In-Reply-To** names a tracked email's Message-ID (on by default; "no false positives").
2. **Tracking token** in the subject (on by default).
3. **Thread** (on by default; crmsync's stand-in for Exchange's ConversationIndex, which IMAP
   does not have): a References entry names a tracked email's Message-ID, nearest ancestor
   first; failing that, a tracked email shares the *thread key*.
4. **Smart matching** (off by default; "not recommended"): same subject words and at least two
   shared addresses.

A correlated email inherits the regarding record of the email it matched. This runs after the
tracking decision: filtering happens before correlation.

The thread key is twenty's: the first References entry (the thread's root), else In-Reply-To,
else the message's own Message-ID. Every message of a thread whose clients keep References
(all common ones do) has the same key, even when the message in between was never tracked.
"""

from __future__ import annotations

import enum
import hashlib
import re
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from crmsync.core.addresses import parse_address_list
from crmsync.core.tokens import TokenFormat, find_token, strip_tokens

RecordId = uuid.UUID | str

MAX_MESSAGE_ID_CHARS = 998
"""RFC 5322's line limit; also the width of the database column."""
DEFAULT_HASH_FILTER_KEYWORDS = r"^[\s]*([\w]+\s?:[\s]*)+"
"""Dynamics' ``HashFilterKeywords``: strips ``RE: FW: AW:``-style prefixes before hashing."""
MAX_SUBJECT_CHARS_FOR_HASHING = 1000
"""Subjects are cut before the (admin-configurable) keyword regex runs: bounded work."""


class CorrelationMethod(enum.StrEnum):
    """Same values as ``crmsync.crm.activities.CorrelationMethod`` (a test keeps them equal)."""

    NONE = "none"
    SKIPPED = "skipped"
    IN_REPLY_TO = "in_reply_to"
    TRACKING_TOKEN = "tracking_token"  # noqa: S105  (a method name, not a secret)
    THREAD = "thread"
    SMART_MATCHING = "smart_matching"


# --- message ids ----------------------------------------------------------------------------

_BRACKETED = re.compile(r"<([^<>]*)>")
_WHITESPACE = re.compile(r"\s+")


def normalize_message_id(value: str | None) -> str | None:
    """A Message-ID as the key it is stored and looked up by, or None for none.

    Angle brackets and whitespace (folding) go; the part after the last ``@`` is lower-cased and
    the part before it is kept as is. The right part is a domain (or domain-like name), which
    some gateways re-case and whose case never distinguishes anything; the left part is an
    opaque string the sender generated, where case can be the only difference between two
    messages (base64-style generators), so lower-casing it could merge two emails into one.
    """
    if value is None:
        return None
    bracketed = _BRACKETED.search(value)
    text = bracketed.group(1) if bracketed else value
    text = _WHITESPACE.sub("", text).strip("<>")
    if not text:
        return None
    text = text[:MAX_MESSAGE_ID_CHARS]
    left, at, right = text.rpartition("@")
    if not at:
        return text
    return f"{left}@{right.lower()}"


def parse_message_ids(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """The normalized ids of an In-Reply-To or References field (a raw value, or ids already
    split by the header parser), in order, without repeats."""
    if value is None:
        return ()
    if isinstance(value, str):
        raw = _BRACKETED.findall(value) or [w for w in re.split(r"[\s,]+", value) if w]
    else:
        raw = list(value)
    seen: dict[str, None] = {}
    for item in raw:
        normalized = normalize_message_id(item)
        if normalized is not None:
            seen.setdefault(normalized, None)
    return tuple(seen)


def thread_key(
    message_id: str | None,
    in_reply_to: Sequence[str] = (),
    references: Sequence[str] = (),
) -> str | None:
    """First References entry, else first In-Reply-To, else the own Message-ID (normalized)."""
    for ids in (references, in_reply_to):
        for candidate in ids:
            normalized = normalize_message_id(candidate)
            if normalized is not None:
                return normalized
    return normalize_message_id(message_id)


# --- smart matching hashes ------------------------------------------------------------------


@dataclass(frozen=True)
class SmartMatchingSettings:
    """Dynamics' EmailHash settings (reference §3)."""

    filter_keywords: str = DEFAULT_HASH_FILTER_KEYWORDS
    """[HashFilterKeywords] removed from the subject (first match) before it is split."""
    min_address_count: int = 2
    """[HashMinAddressCount] shared addresses needed for a match."""
    max_count: int = 20
    """[HashMaxCount] at most this many hashes of each kind per email."""
    delta_subject_count: int = 0
    """[HashDeltaSubjectCount] how many subject words may differ (0: all the same)."""
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            pattern = re.compile(self.filter_keywords)
        except re.error as exc:
            raise ValueError(
                f"hash filter keywords {self.filter_keywords!r} is not a valid regular "
                f"expression: {exc}"
            ) from None
        for name, value, low in (
            ("min address count", self.min_address_count, 1),
            ("max count", self.max_count, 1),
            ("delta subject count", self.delta_subject_count, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a whole number of at least {low}, got {value!r}")
        object.__setattr__(self, "_pattern", pattern)

    @property
    def pattern(self) -> re.Pattern[str]:
        return self._pattern


def _hash(kind: str, value: str) -> str:
    # Stored with every tracked email and compared across years: this must never change.
    # 64 bits: collisions among one mailbox's mail are negligible, and a collision can only
    # add a candidate that the other conditions still have to confirm.
    return hashlib.sha256(f"{kind}\0{value}".encode()).hexdigest()[:16]


def subject_words(
    subject: str | None,
    settings: SmartMatchingSettings | None = None,
    token_format: TokenFormat | None = None,
) -> tuple[str, ...]:
    """The subject's words as smart matching compares them: tracking tokens and the
    ``RE:``/``FW:`` noise removed, case-folded, unique, in order, at most ``max_count``."""
    settings = settings or SmartMatchingSettings()
    if not subject:
        return ()
    text = subject[:MAX_SUBJECT_CHARS_FOR_HASHING]
    if token_format is not None:
        text = strip_tokens(text, token_format)
    text = settings.pattern.sub("", text, count=1)
    seen: dict[str, None] = {}
    for word in re.findall(r"\w+", text.casefold()):
        seen.setdefault(word, None)
        if len(seen) >= settings.max_count:
            break
    return tuple(seen)


def subject_hashes(
    subject: str | None,
    settings: SmartMatchingSettings | None = None,
    token_format: TokenFormat | None = None,
) -> tuple[str, ...]:
    return tuple(_hash("s", w) for w in subject_words(subject, settings, token_format))


def address_hashes(
    addresses: Iterable[str], settings: SmartMatchingSettings | None = None
) -> tuple[str, ...]:
    """One hash per unique from/to/cc/bcc address (canonical), at most ``max_count``."""
    settings = settings or SmartMatchingSettings()
    return tuple(_hash("a", a) for a in parse_address_list(list(addresses))[: settings.max_count])


# --- the correlation ------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackedEmail:
    """A tracked email a lookup found."""

    id: RecordId
    regarding_id: RecordId | None = None
    message_id: str | None = None
    """Normalized; required in answers to ``by_message_ids`` (it says which id matched)."""
    tracked_at: datetime | None = None
    """When it was tracked; the newest wins where several match (None counts as oldest)."""


@dataclass(frozen=True)
class SmartCandidate:
    email: TrackedEmail
    subject_hashes: frozenset[str]
    address_hashes: frozenset[str]


class CorrelationLookup(Protocol):
    """What correlation asks the CRM; the service implements it on the database."""

    def by_message_ids(self, message_ids: Sequence[str]) -> Sequence[TrackedEmail]:
        """Tracked emails whose normalized Message-ID is one of these (both directions)."""
        ...

    def by_token(self, token: str) -> Sequence[TrackedEmail]:
        """Tracked emails that carry this tracking token."""
        ...

    def by_thread_key(self, thread_key: str) -> Sequence[TrackedEmail]:
        """Tracked emails with this thread key."""
        ...

    def smart_candidates(
        self, subject_hashes: Collection[str], address_hashes: Collection[str]
    ) -> Sequence[SmartCandidate]:
        """Tracked emails sharing any of these hashes (in the look-back window, e.g. 90 days),
        with all their hashes."""
        ...


@dataclass(frozen=True)
class CorrelationSettings:
    """Organization settings of correlation (Dynamics' names in brackets)."""

    enabled: bool = True
    """["Use correlation"] off: nothing is correlated (method ``skipped``)."""
    use_in_reply_to: bool = True
    use_tracking_token: bool = True
    use_thread: bool = True
    use_smart_matching: bool = False
    token_format: TokenFormat | None = field(default_factory=TokenFormat)
    """None when tracking tokens are off for the organization."""
    smart: SmartMatchingSettings = field(default_factory=SmartMatchingSettings)

    @classmethod
    def ignoring_headers(cls) -> CorrelationSettings:
        """[IgnoreConversationIndexAndInReplyToForCorrelation] on."""
        return cls(use_in_reply_to=False, use_thread=False)


@dataclass(frozen=True)
class CorrelationFacts:
    """The parts of a message correlation reads (all normalized)."""

    message_id: str | None = None
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    subject: str | None = None
    """Only for the token and smart matching; None at the ``metadata`` privacy level."""
    addresses: tuple[str, ...] = ()
    """From, to, cc and bcc, canonical."""

    @classmethod
    def from_headers(
        cls,
        *,
        message_id: str | None,
        in_reply_to: str | Iterable[str] | None = None,
        references: str | Iterable[str] | None = None,
        subject: str | None = None,
        addresses: Iterable[str] = (),
    ) -> CorrelationFacts:
        return cls(
            message_id=normalize_message_id(message_id),
            in_reply_to=parse_message_ids(in_reply_to),
            references=parse_message_ids(references),
            subject=subject,
            addresses=parse_address_list(list(addresses)),
        )

    @property
    def thread_key(self) -> str | None:
        return thread_key(self.message_id, self.in_reply_to, self.references)


@dataclass(frozen=True)
class Correlation:
    method: CorrelationMethod
    matched_email_id: RecordId | None
    """The tracked email this one correlates with (Dynamics' Correlated Activity Id)."""
    inherit_regarding_from: RecordId | None
    """The email whose regarding record the new one takes; None when the match has none."""
    detail: str
    parent_email_id: RecordId | None = None
    """The email this one directly answers (Dynamics' Parent Activity Id): set only when the
    match is an ancestor named by In-Reply-To or References."""


def _newest_key(email: TrackedEmail) -> tuple[bool, datetime]:
    return (email.tracked_at is not None, email.tracked_at or datetime.min)


def _newest_first(emails: Iterable[TrackedEmail]) -> list[TrackedEmail]:
    # Stable sort: among equal times the lookup's order stands.
    return sorted(emails, key=_newest_key, reverse=True)


def _best_copy(emails: Sequence[TrackedEmail]) -> TrackedEmail:
    """Of several activities of one message (its sent and received copies), the one with a
    regarding record, newest first."""
    newest = _newest_first(emails)
    return next((e for e in newest if e.regarding_id is not None), newest[0])


def _first_by_id_order(
    ids: Sequence[str], found: Sequence[TrackedEmail]
) -> tuple[str, TrackedEmail] | None:
    by_id: dict[str, list[TrackedEmail]] = {}
    for email in found:
        if email.message_id is not None:
            by_id.setdefault(normalize_message_id(email.message_id) or "", []).append(email)
    for message_id in ids:
        if message_id in by_id:
            return message_id, _best_copy(by_id[message_id])
    return None


def _result(
    method: CorrelationMethod, email: TrackedEmail, detail: str, *, parent: bool = False
) -> Correlation:
    regarding = email.id if email.regarding_id is not None else None
    inherits = (
        f" and inherits its regarding record {email.regarding_id}"
        if regarding is not None
        else " (it has no regarding record to inherit)"
    )
    return Correlation(
        method=method,
        matched_email_id=email.id,
        inherit_regarding_from=regarding,
        detail=f"{detail}: correlated with tracked email {email.id}{inherits}.",
        parent_email_id=email.id if parent else None,
    )


def correlate(
    facts: CorrelationFacts,
    lookup: CorrelationLookup,
    settings: CorrelationSettings | None = None,
) -> Correlation:
    """The first method (in the documented order) that finds a tracked email, or none."""
    settings = settings or CorrelationSettings()
    if not settings.enabled:
        return Correlation(
            CorrelationMethod.SKIPPED, None, None, "Correlation is turned off (setting)."
        )
    own = facts.message_id

    def others(emails: Iterable[TrackedEmail]) -> list[TrackedEmail]:
        return [e for e in emails if _not_self(e, own)]

    tried: list[str] = []
    looked_up: set[str] = set()  # ids already asked for by Message-ID: no need to ask twice

    if settings.use_in_reply_to:
        ids = [i for i in facts.in_reply_to if i != own]
        looked_up.update(ids)
        if ids:
            found = _first_by_id_order(ids, others(lookup.by_message_ids(ids)))
            if found is not None:
                message_id, email = found
                return _result(
                    CorrelationMethod.IN_REPLY_TO,
                    email,
                    f"In-Reply-To <{message_id}> is a tracked email",
                    parent=True,
                )
            tried.append("In-Reply-To names no tracked email")
        else:
            tried.append("no In-Reply-To")

    fmt = settings.token_format
    if settings.use_tracking_token and fmt is not None:
        token = find_token(facts.subject, fmt)
        if token is not None:
            matches = _newest_first(others(lookup.by_token(token.text)))
            if matches:
                return _result(
                    CorrelationMethod.TRACKING_TOKEN,
                    matches[0],
                    f"The subject carries tracking token {token.text}",
                )
            tried.append(f"token {token.text} is on no tracked email")
        else:
            tried.append("no tracking token in the subject")

    if settings.use_thread:
        if facts.references or facts.in_reply_to:
            # Nearest ancestor first: References lists the root first and the parent last.
            ancestors = [i for i in reversed(facts.references) if i != own and i not in looked_up]
            found = None
            if ancestors:
                found = _first_by_id_order(ancestors, others(lookup.by_message_ids(ancestors)))
            if found is not None:
                message_id, email = found
                return _result(
                    CorrelationMethod.THREAD,
                    email,
                    f"References names tracked email <{message_id}>",
                    parent=True,
                )
            key = facts.thread_key
            if key is not None:
                matches = _newest_first(others(lookup.by_thread_key(key)))
                if matches:
                    return _result(
                        CorrelationMethod.THREAD,
                        matches[0],
                        f"Thread <{key}> has tracked email (newest taken)",
                    )
            tried.append("no tracked email in the thread")
        else:
            tried.append("no References or In-Reply-To (a new thread)")

    if settings.use_smart_matching:
        smart = _smart_match(facts, lookup, settings)
        if isinstance(smart, Correlation):
            return smart
        tried.append(smart)

    if not tried:
        return Correlation(
            CorrelationMethod.SKIPPED, None, None, "Every correlation method is turned off."
        )
    return Correlation(
        CorrelationMethod.NONE, None, None, "Not correlated: " + "; ".join(tried) + "."
    )


def _smart_match(
    facts: CorrelationFacts, lookup: CorrelationLookup, settings: CorrelationSettings
) -> Correlation | str:
    """A match, or the clause saying why there was none."""
    smart = settings.smart
    ours_s = frozenset(subject_hashes(facts.subject, smart, settings.token_format))
    ours_a = frozenset(address_hashes(facts.addresses, smart))
    if not ours_s:
        # An empty subject ("", "RE:") would match every email between the same people.
        return "smart matching needs subject words"
    if len(ours_a) < smart.min_address_count:
        return f"smart matching needs {smart.min_address_count} addresses"
    candidates = [
        c for c in lookup.smart_candidates(ours_s, ours_a) if _not_self(c.email, facts.message_id)
    ]
    best: tuple[int, SmartCandidate] | None = None
    # Newest first, and only a strictly better overlap replaces the best: ties go to the newest.
    for candidate in sorted(candidates, key=lambda c: _newest_key(c.email), reverse=True):
        theirs_s = candidate.subject_hashes
        if abs(len(theirs_s) - len(ours_s)) > smart.delta_subject_count:
            continue
        if len(ours_s & theirs_s) < len(ours_s) - smart.delta_subject_count:
            continue
        shared = len(ours_a & candidate.address_hashes)
        if shared < smart.min_address_count:
            continue
        if best is None or shared > best[0]:
            best = (shared, candidate)
    if best is None:
        return "no smart match (same subject words and enough shared addresses)"
    shared, chosen = best
    return _result(
        CorrelationMethod.SMART_MATCHING,
        chosen.email,
        f"Smart matching: the same {len(ours_s)} subject word(s) and {shared} shared addresses",
    )


def _not_self(email: TrackedEmail, own: str | None) -> bool:
    # Never correlate a message with itself (its other copy is the dedupe step's business).
    return own is None or normalize_message_id(email.message_id) != own
