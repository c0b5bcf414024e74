"""Tracking tokens in email subjects, as in Dynamics (reference §3).

A token is ``<prefix><online/offline digit><user number><counter>``, e.g. ``CRM:0001001``: the
default "four character prefix and a 7-digit identifier". Replies keep the subject, so the token
comes back and ties the reply to the email that carried it even when a mail system dropped
In-Reply-To and References.

- The prefix (1 to 20 characters, default ``CRM:``) is configurable; deployments that mail each
  other should use different prefixes.
- The online/offline digit is not configurable and always present: Dynamics writes 0 online and
  1 offline. crmsync has no offline client, so it always writes 0; it reads both.
- The user number identifies the sender (user or queue), with 1 to 10 digits (default 3). The
  org's *base tracking number* (0 to 2,147,483,647, default 0) is added to it, so two deployments
  that share a prefix can hand out disjoint user-number ranges; a token whose user segment is
  below the base belongs to someone else and is ignored.
- The counter counts that sender's tokens, with 1 to 9 digits (default 3), and wraps 999 → 000.
  Wrapping reuses tokens, which is why correlation by token prefers the newest email bearing it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

DEFAULT_PREFIX = "CRM:"
MAX_PREFIX_CHARS = 20
MAX_BASE_TRACKING_NUMBER = 2_147_483_647
USER_DIGITS_RANGE = (1, 10)
COUNTER_DIGITS_RANGE = (1, 9)
MAX_SUBJECT_LENGTH = 255
"""Dynamics' ``MaximumSubjectLengthOnMailServer``."""
ONLINE_DIGIT = "0"
OFFLINE_DIGIT = "1"


class TokenFormatError(ValueError):
    """A tracking-token setting out of range; the message says which and what is allowed."""


@dataclass(frozen=True)
class TokenFormat:
    prefix: str = DEFAULT_PREFIX
    base_tracking_number: int = 0
    user_digits: int = 3
    counter_digits: int = 3
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        errors = _format_errors(self)
        if errors:
            raise TokenFormatError("; ".join(errors))
        # Case-insensitive: some mail systems upper-case subjects of replies. Not preceded by a
        # letter or digit when the prefix starts with one, so "XCRM:0001001" is not our token;
        # not followed by a digit, so a longer number is not cut into a token.
        lead = r"(?<![^\W_])" if self.prefix[0].isalnum() else ""
        digits = 1 + self.user_digits + self.counter_digits
        object.__setattr__(
            self,
            "_pattern",
            re.compile(
                rf"{lead}{re.escape(self.prefix)}([01])(\d{{{digits - 1}}})(?!\d)", re.IGNORECASE
            ),
        )

    @property
    def digits(self) -> int:
        """Length of the number after the prefix (7 by default)."""
        return 1 + self.user_digits + self.counter_digits

    @property
    def length(self) -> int:
        """Length of a whole token (11 by default)."""
        return len(self.prefix) + self.digits

    @property
    def counter_modulus(self) -> int:
        return int(10**self.counter_digits)  # int(): mypy types int ** int as Any

    @property
    def max_user_number(self) -> int:
        """The highest user number a token of this format can carry (base included)."""
        return int(10**self.user_digits) - 1 - self.base_tracking_number

    def next_counter(self, counter: int) -> int:
        """The counter after ``counter``: 999 → 000 with three digits."""
        return (counter + 1) % self.counter_modulus

    @property
    def pattern(self) -> re.Pattern[str]:
        return self._pattern


def _format_errors(fmt: TokenFormat) -> list[str]:
    errors: list[str] = []
    prefix = fmt.prefix
    if not isinstance(prefix, str) or not 1 <= len(prefix) <= MAX_PREFIX_CHARS:
        errors.append(f"prefix must be 1 to {MAX_PREFIX_CHARS} characters, got {prefix!r}")
    else:
        # Mail systems fold and collapse whitespace in subjects, and a prefix ending in a digit
        # would run into the number that follows it.
        if any(c.isspace() or unicodedata.category(c)[0] == "C" for c in prefix):
            errors.append(f"prefix must not contain spaces or control characters: {prefix!r}")
        if prefix[-1].isdigit():
            errors.append(f"prefix must not end with a digit: {prefix!r}")
    for name, value, (low, high) in (
        ("user number digits", fmt.user_digits, USER_DIGITS_RANGE),
        ("counter digits", fmt.counter_digits, COUNTER_DIGITS_RANGE),
        ("base tracking number", fmt.base_tracking_number, (0, MAX_BASE_TRACKING_NUMBER)),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            errors.append(f"{name} must be a whole number from {low} to {high:,}, got {value!r}")
    if not errors and fmt.base_tracking_number >= 10**fmt.user_digits:
        errors.append(
            f"base tracking number {fmt.base_tracking_number:,} does not fit in "
            f"{fmt.user_digits} user number digits: no user could get a token"
        )
    return errors


@dataclass(frozen=True)
class Token:
    text: str
    """The token as written and as stored (``CRM:0001001``); the key for looking it up."""
    user_number: int
    """The sender's number, the base tracking number already taken off."""
    counter: int
    offline: bool = False


def make_token(fmt: TokenFormat, user_number: int, counter: int) -> Token:
    """The token for the sender ``user_number``'s ``counter``-th email (the counter wraps).

    Raises ValueError when the user number (plus the base) does not fit the user digits: a
    token cut to fit would name another user.
    """
    if user_number < 0:
        raise ValueError(f"user number must not be negative, got {user_number}")
    if counter < 0:
        raise ValueError(f"counter must not be negative, got {counter}")
    segment = fmt.base_tracking_number + user_number
    if segment >= 10**fmt.user_digits:
        raise ValueError(
            f"user number {user_number} does not fit in {fmt.user_digits} digits"
            + (f" with base {fmt.base_tracking_number}" if fmt.base_tracking_number else "")
            + f" (highest: {fmt.max_user_number}); raise the number of user digits"
        )
    wrapped = counter % fmt.counter_modulus
    text = (
        f"{fmt.prefix}{ONLINE_DIGIT}{segment:0{fmt.user_digits}d}{wrapped:0{fmt.counter_digits}d}"
    )
    return Token(text=text, user_number=user_number, counter=wrapped)


def find_tokens(subject: str | None, fmt: TokenFormat) -> list[Token]:
    """Every token of this format in ``subject``, left to right."""
    if not subject:
        return []
    tokens: list[Token] = []
    for match in fmt.pattern.finditer(subject):
        number = match.group(2)
        segment = int(number[: fmt.user_digits])
        if segment < fmt.base_tracking_number:
            continue  # another deployment's token that shares our prefix
        tokens.append(
            Token(
                text=f"{fmt.prefix}{match.group(1)}{number}",
                user_number=segment - fmt.base_tracking_number,
                counter=int(number[fmt.user_digits :]),
                offline=match.group(1) == OFFLINE_DIGIT,
            )
        )
    return tokens


def find_token(subject: str | None, fmt: TokenFormat) -> Token | None:
    """The token in ``subject``, wherever it sits (``Re:``/``AW:`` prefixes, brackets, text).

    When there are several (a thread forwarded and re-sent from the CRM), the last one wins:
    tokens are appended at the end, so the last is the newest.
    """
    tokens = find_tokens(subject, fmt)
    return tokens[-1] if tokens else None


def strip_tokens(subject: str, fmt: TokenFormat) -> str:
    """``subject`` without any token of this format, whitespace tidied (for display and hashes)."""
    cleaned = fmt.pattern.sub("", subject)
    return re.sub(r"\s+", " ", cleaned).strip()


def append_token(subject: str | None, token: Token, max_len: int = MAX_SUBJECT_LENGTH) -> str:
    """``subject`` with `` <token>`` at the end, never longer than ``max_len`` characters.

    The subject is cut to make room for the token; a token that alone does not fit is dropped
    (the subject, cut to ``max_len``, is sent without it), as Dynamics does with
    ``MaximumSubjectLengthOnMailServer``. A subject already ending in this token is left as is,
    so sending a draft twice does not stack tokens.
    """
    if max_len < 0:
        raise ValueError(f"max_len must not be negative, got {max_len}")
    text = (subject or "").strip()
    if text.endswith(token.text):
        if len(text) <= max_len:
            return text
        text = text[: -len(token.text)].rstrip()
    if len(token.text) > max_len:
        return text[:max_len].rstrip()
    if not text:
        return token.text
    room = max_len - len(token.text) - 1  # one space between subject and token
    if room <= 0:
        return token.text
    return f"{text[:room].rstrip()} {token.text}"
