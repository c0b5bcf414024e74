"""Email addresses as the CRM compares them, the blocklist, and the signs of bulk or automatic mail.

Everything here takes text from strangers (header values) and never raises on it: garbage becomes
``None`` or is dropped. The parser is hand-written and linear on purpose: the stdlib ``email``
parsers recurse on nested comments and are quadratic on long lists, and a decision function must
not be the place where one hostile message stops a mailbox.

The canonical form (:func:`normalize_address`) is the key the address index, the blocklist and
party resolution all use, so the service must store CRM addresses in the same form:

- the addr-spec only: display names, comments, angle brackets and group names are dropped;
- lower-cased, local part included: RFC 5321 lets the local part be case-sensitive, but no mail
  system a CRM talks to uses that, and people type ``John.Doe@`` and ``john.doe@`` for the same
  person (Dynamics, HubSpot and twenty all compare case-insensitively too);
- the domain in Unicode (U-label) form, NFC-normalized: ``xn--mller-kva.de`` and ``müller.de``
  are the same domain and must meet in one index entry. Punycode decoding is exact; the
  alternative (encoding to ASCII with the stdlib's IDNA 2003 codec) would silently map ``ß`` to
  ``ss`` and merge domains that IDNA 2008 keeps apart.
"""

from __future__ import annotations

import enum
import functools
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_FIELD_CHARS = 64 * 1024
"""An address field longer than this is cut before parsing: bounded work for hostile input."""
MAX_LOCAL_CHARS = 64
"""RFC 5321 §4.5.3.1.1."""
MAX_DOMAIN_CHARS = 253
"""RFC 1035 in its ASCII (A-label) form, minus the trailing dot."""
MAX_LABEL_CHARS = 63

# atext of RFC 5322 §3.2.3; anything above ASCII is allowed too (RFC 6532, SMTPUTF8).
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~")
# Full stops IDNA treats as label separators (ideographic, fullwidth, halfwidth).
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


# --- parsing --------------------------------------------------------------------------------


class _Element:
    """One comma-separated element of an address field, as the tokenizer sees it.

    Characters are collected in lists (joined once at the end): repeated string concatenation
    would make a long hostile field quadratic.
    """

    __slots__ = ("angle", "has_angle", "words")

    def __init__(self) -> None:
        self.words: list[list[str]] = [[]]
        self.angle: list[str] = []
        self.has_angle = False

    def add(self, text: str, in_angle: bool) -> None:
        if in_angle:
            self.angle.append(text)
        else:
            self.words[-1].append(text)

    def split_word(self) -> None:
        if self.words[-1]:
            self.words.append([])

    def open_angle(self) -> None:
        # A later <...> wins over an earlier one: "a <b> <c>" is broken, and the last bracket is
        # what most clients show.
        self.has_angle = True
        self.angle = []

    def candidate(self) -> str | None:
        """The addr-spec this element carries: inside the angle brackets, else the bare word."""
        if self.has_angle:
            angle = "".join(self.angle)
            # An obsolete source route (<@relay1,@relay2:user@host>) ends at the last colon.
            return angle.rsplit(":", 1)[-1] if angle.startswith("@") else angle
        words = ["".join(w) for w in self.words if w]
        if len(words) == 1:
            return words[0]
        # "John Doe john@example.com" (angle brackets forgotten) still names one address: the
        # last word, when it is the only one with an @ ("a@b.exa mple" is garbage, not "a@b.exa").
        with_at = [w for w in words if "@" in w]
        return words[-1] if words and with_at == words[-1:] else None


def split_address_field(value: str | None) -> list[str]:
    """The raw addr-specs of an address header field (not yet validated), in order.

    Handles quoted display names (``"Doe, John" <j@x>``), comments, group syntax
    (``Team: a@x, b@x;`` gives both members, ``undisclosed-recipients:;`` gives none), domain
    literals and a missing closing bracket. Linear in the length of the field; never raises.
    """
    if not value:
        return []
    found: list[str] = []
    current = _Element()
    in_quote = in_literal = in_angle = escaped = False
    comment_depth = 0

    def finish() -> None:
        nonlocal current
        candidate = current.candidate()
        if candidate:
            found.append(candidate)
        current = _Element()

    for char in value[:MAX_FIELD_CHARS]:
        if escaped:
            escaped = False
            if not comment_depth:
                current.add("\\" + char, in_angle)
        elif char == "\\" and (in_quote or comment_depth):
            escaped = True
        elif in_literal:
            # A domain literal ([IPv6:2001:db8::1]) holds colons that are not group syntax.
            in_literal = char != "]"
            current.add(char, in_angle)
        elif in_quote:
            in_quote = char != '"'
            current.add(char, in_angle)
        elif comment_depth:
            if char == "(":
                comment_depth += 1
            elif char == ")":
                comment_depth -= 1
        elif char == "(":
            comment_depth = 1
        elif char in '"[':
            in_quote = char == '"'
            in_literal = char == "["
            current.add(char, in_angle)
        elif in_angle:
            if char == ">":
                in_angle = False
            elif not char.isspace():
                current.add(char, in_angle)
        elif char == "<":
            in_angle = True
            current.open_angle()
        elif char in ",;":
            # ";" ends a group; both end the element.
            finish()
        elif char == ":":
            # Group syntax: what came before the colon was the group's name, not an address.
            current = _Element()
        elif char.isspace():
            current.split_word()
        else:
            current.add(char, in_angle)
    finish()
    return found


def normalize_domain(domain: str) -> str | None:
    """A domain in the canonical (Unicode, lower-case, NFC) form, or None when it is not one."""
    domain = domain.strip().translate(_DOTS)
    if domain.startswith("[") and domain.endswith("]"):
        # A domain literal ([192.0.2.1]): kept verbatim, it has no other form.
        inner = domain[1:-1]
        if not inner or any(c.isspace() or c in "[]\\" for c in inner):
            return None
        return domain.lower()
    domain = domain.removesuffix(".")
    if not domain:
        return None
    labels: list[str] = []
    ascii_length = 0
    for raw_label in domain.split("."):
        label = _normalize_label(raw_label)
        if label is None:
            return None
        labels.append(label)
        ascii_length += len(_ascii_label(label)) + 1
    if ascii_length - 1 > MAX_DOMAIN_CHARS:
        return None
    return ".".join(labels)


def _normalize_label(label: str) -> str | None:
    if not label:
        return None
    lowered = label.lower()
    if lowered.startswith("xn--"):
        try:
            lowered = lowered[4:].encode("ascii").decode("punycode")
        except (UnicodeError, ValueError):
            return None  # a broken A-label names no domain anyone can receive mail at
        if not lowered:
            return None
    lowered = unicodedata.normalize("NFC", lowered).lower()
    # Letters and digits of any script, hyphen, and underscore (seen in real host names); a
    # hyphen neither first nor last (LDH rule).
    if not all(c.isalnum() or c in "-_" for c in lowered):
        return None
    if lowered.startswith("-") or lowered.endswith("-"):
        return None
    if len(_ascii_label(lowered)) > MAX_LABEL_CHARS:
        return None
    return lowered


def _ascii_label(label: str) -> str:
    if label.isascii():
        return label
    return "xn--" + label.encode("punycode").decode("ascii")


def _normalize_local(local: str) -> str | None:
    if not local or len(local) > MAX_LOCAL_CHARS:
        return None
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        inner = local[1:-1]
        if any(unicodedata.category(c) == "Cc" for c in inner):
            return None
        return local.lower()
    lowered = local.lower()
    if lowered.startswith(".") or lowered.endswith("."):
        return None
    # Consecutive dots are invalid but real (some mobile carriers issued such addresses):
    # accepted, because refusing them would only hide a real correspondent.
    for c in lowered:
        if c == "." or c in _ATEXT:
            continue
        if ord(c) > 127 and not c.isspace() and unicodedata.category(c)[0] not in "CZ":
            continue
        return None
    return unicodedata.normalize("NFC", lowered)


def normalize_addr_spec(addr_spec: str) -> str | None:
    """``local@domain`` in canonical form, or None when it is not an address."""
    if "@" not in addr_spec:
        return None
    local, _, domain = addr_spec.strip().rpartition("@")
    norm_local = _normalize_local(local)
    norm_domain = normalize_domain(domain)
    if norm_local is None or norm_domain is None:
        return None
    return f"{norm_local}@{norm_domain}"


def normalize_address(value: str | None) -> str | None:
    """The one address ``value`` names, canonical, or None (garbage, none, or several)."""
    if value is None:
        return None
    return _normalize_address(value)


@functools.lru_cache(maxsize=65536)
def _normalize_address(value: str) -> str | None:
    # Cached: a sync normalizes the same few hundred addresses thousands of times (every
    # message's From and To, the blocklist and filter checks), and the result is a pure
    # function of the text.
    candidates = split_address_field(value)
    if len(candidates) != 1:
        return None
    return normalize_addr_spec(candidates[0])


def parse_address_list(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Every valid address of a field (or of several values), canonical, deduplicated, in order."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else list(value)
    seen: dict[str, None] = {}
    for item in values:
        for candidate in split_address_field(item):
            address = normalize_addr_spec(candidate)
            if address is not None:
                seen.setdefault(address, None)
    return tuple(seen)


def domain_of(address: str) -> str:
    """The domain of a canonical address."""
    return address.rpartition("@")[2]


# --- blocklist ------------------------------------------------------------------------------


class BlocklistError(ValueError):
    """A blocklist entry that is neither ``user@domain`` nor ``@domain``."""


def parse_blocklist_entry(entry: str) -> str:
    """``user@domain`` or ``@domain`` (``*@domain`` accepted), canonical; raises BlocklistError.

    A bare ``example.com`` is refused rather than guessed at: it could be a domain or a typo for
    an address, and a blocklist that silently blocks more (or less) than meant is worse than an
    error that says how to write it.
    """
    text = entry.strip()
    if text.startswith("*@"):
        text = text[1:]
    if text.startswith("@"):
        domain = normalize_domain(text[1:])
        if domain is None or "@" in text[1:]:
            raise BlocklistError(f"{entry!r} is not a valid domain entry (write @example.com)")
        return "@" + domain
    if "@" not in text:
        raise BlocklistError(
            f"{entry!r} is neither an address (user@example.com) nor a domain (@example.com)"
        )
    address = normalize_address(text)
    if address is None:
        raise BlocklistError(f"{entry!r} is not a valid email address")
    return address


@dataclass(frozen=True)
class Blocklist:
    """Addresses and domains whose mail is never tracked automatically (twenty's semantics).

    ``@example.com`` also blocks every subdomain (``mail.example.com``): an organization's
    mail often comes from several of its hosts, and an administrator who blocks a company means
    all of it.
    """

    addresses: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> Blocklist:
        """Parse every entry; raises BlocklistError naming all the bad ones at once."""
        addresses: set[str] = set()
        domains: set[str] = set()
        errors: list[str] = []
        for entry in entries:
            if not entry.strip():
                continue
            try:
                parsed = parse_blocklist_entry(entry)
            except BlocklistError as exc:
                errors.append(str(exc))
                continue
            if parsed.startswith("@"):
                domains.add(parsed[1:])
            else:
                addresses.add(parsed)
        if errors:
            raise BlocklistError("; ".join(errors))
        return cls(frozenset(addresses), frozenset(domains))

    def __bool__(self) -> bool:
        return bool(self.addresses or self.domains)

    def match(self, address: str | None) -> str | None:
        """The entry that blocks ``address`` (``a@b`` or ``@domain``), or None."""
        if not address:
            return None
        canonical = normalize_address(address)
        if canonical is None:
            return None
        if canonical in self.addresses:
            return canonical
        if not self.domains:
            return None
        labels = domain_of(canonical).split(".")
        # Walk the suffixes: a.b.example.com, b.example.com, example.com, com.
        for start in range(len(labels)):
            suffix = ".".join(labels[start:])
            if suffix in self.domains:
                return "@" + suffix
        return None

    def first_match(self, addresses: Iterable[str]) -> tuple[str, str] | None:
        """The first ``(address, entry)`` of ``addresses`` that is blocked, or None."""
        for address in addresses:
            entry = self.match(address)
            if entry is not None:
                return address, entry
        return None


# --- bulk and automatic mail ----------------------------------------------------------------


class AutomaticKind(enum.StrEnum):
    BULK = "bulk"
    """Sent to many: mailing lists, newsletters, marketing."""
    AUTOMATIC = "automatic"
    """Written by a program: auto-replies, bounces, notifications."""


class AutomaticReason(enum.StrEnum):
    """Which sign gave the message away (checked in this order, the first sign wins)."""

    NULL_SENDER = "null_sender"
    MAILER_DAEMON = "mailer_daemon"
    AUTO_SUBMITTED = "auto_submitted"
    AUTOREPLY_HEADER = "autoreply_header"
    PRECEDENCE = "precedence"
    LIST_ID = "list_id"
    LIST_UNSUBSCRIBE = "list_unsubscribe"
    AUTO_RESPONSE_SUPPRESS = "auto_response_suppress"


@dataclass(frozen=True)
class AutomaticMail:
    kind: AutomaticKind
    reason: AutomaticReason
    evidence: str
    """The header and (clipped) value that showed it, for the administrator's explanation."""


_EVIDENCE_CHARS = 80
_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
_AUTOREPLY_HEADERS = ("x-autoreply", "x-autorespond")


def _header(headers: Mapping[str, str | None], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered and value is not None and value.strip():
            return value.strip()
    return None


def _keyword(value: str) -> str:
    """``auto-replied; (comment)`` -> ``auto-replied``."""
    return value.split(";", 1)[0].split("(", 1)[0].strip().lower()


def _evidence(name: str, value: str) -> str:
    clipped = value if len(value) <= _EVIDENCE_CHARS else value[: _EVIDENCE_CHARS - 1] + "…"
    return f"{name}: {clipped}"


def is_null_sender(value: str | None) -> bool:
    """``<>``: the envelope sender of bounces and other mail that must never be answered."""
    return value is not None and value.replace(" ", "").strip() == "<>"


def is_mailer_daemon(value: str | None) -> bool:
    """``MAILER-DAEMON`` (with or without a domain): the sender of delivery reports."""
    if not value:
        return False
    candidates = split_address_field(value)
    if len(candidates) != 1:
        return False
    local = candidates[0].rpartition("@")[0] if "@" in candidates[0] else candidates[0]
    return local.lower() == "mailer-daemon"


def classify_automatic(
    headers: Mapping[str, str | None], *, sender: str | None = None
) -> AutomaticMail | None:
    """Whether a message is bulk or automatic mail, and the first sign of it; None for a person.

    ``headers`` maps header names (any case) to values; absent headers may be missing or None.
    ``sender`` is the From address (raw or canonical). Signs, in order: null return path, a
    MAILER-DAEMON sender, ``Auto-Submitted`` other than ``no`` (RFC 3834), ``X-Autoreply`` /
    ``X-Autorespond``, ``Precedence: auto_reply``, ``List-Id``, ``List-Unsubscribe``,
    ``Precedence: bulk|list|junk``, ``X-Auto-Response-Suppress``. The automatic signs come first
    so that a bounce of list mail counts as automatic; X-Auto-Response-Suppress comes last
    because it is the weakest (list servers add it too).
    """
    return_path = _header(headers, "Return-Path")
    if is_null_sender(return_path) or is_null_sender(sender):
        return AutomaticMail(
            AutomaticKind.AUTOMATIC, AutomaticReason.NULL_SENDER, "Return-Path: <>"
        )
    from_value = sender if sender is not None else _header(headers, "From")
    if is_mailer_daemon(from_value):
        return AutomaticMail(
            AutomaticKind.AUTOMATIC,
            AutomaticReason.MAILER_DAEMON,
            _evidence("From", from_value or ""),
        )
    auto_submitted = _header(headers, "Auto-Submitted")
    if auto_submitted is not None and _keyword(auto_submitted) not in ("", "no"):
        return AutomaticMail(
            AutomaticKind.AUTOMATIC,
            AutomaticReason.AUTO_SUBMITTED,
            _evidence("Auto-Submitted", auto_submitted),
        )
    for name in _AUTOREPLY_HEADERS:
        value = _header(headers, name)
        if value is not None:
            return AutomaticMail(
                AutomaticKind.AUTOMATIC, AutomaticReason.AUTOREPLY_HEADER, _evidence(name, value)
            )
    precedence = _header(headers, "Precedence")
    precedence_word = _keyword(precedence) if precedence is not None else ""
    if precedence is not None and precedence_word == "auto_reply":
        return AutomaticMail(
            AutomaticKind.AUTOMATIC,
            AutomaticReason.PRECEDENCE,
            _evidence("Precedence", precedence),
        )
    list_id = _header(headers, "List-Id")
    if list_id is not None:
        return AutomaticMail(
            AutomaticKind.BULK, AutomaticReason.LIST_ID, _evidence("List-Id", list_id)
        )
    list_unsubscribe = _header(headers, "List-Unsubscribe")
    if list_unsubscribe is not None:
        return AutomaticMail(
            AutomaticKind.BULK,
            AutomaticReason.LIST_UNSUBSCRIBE,
            _evidence("List-Unsubscribe", list_unsubscribe),
        )
    if precedence is not None and precedence_word in _BULK_PRECEDENCE:
        return AutomaticMail(
            AutomaticKind.BULK, AutomaticReason.PRECEDENCE, _evidence("Precedence", precedence)
        )
    suppress = _header(headers, "X-Auto-Response-Suppress")
    if suppress is not None:
        return AutomaticMail(
            AutomaticKind.AUTOMATIC,
            AutomaticReason.AUTO_RESPONSE_SUPPRESS,
            _evidence("X-Auto-Response-Suppress", suppress),
        )
    return None
