"""Turning one raw cell (a CSV string or a JSON value) into a typed value, or a clear complaint.

Each parser raises ``ValueProblem`` with a message that quotes the offending value and says what
would be accepted; the caller adds file, line and field.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from crmsync.core.addresses import normalize_address as canonical_address
from crmsync.crm.base import Depth
from crmsync.crm.privileges import (
    MISC_PRIVILEGES,
    RECORD_OPERATIONS,
    SECURED_RECORD_TYPES,
    all_privileges,
    is_known,
)

TRUE_WORDS = frozenset({"true", "yes", "y", "1", "on"})
FALSE_WORDS = frozenset({"false", "no", "n", "0", "off"})

# Deliberately simple: one @, no spaces, a dotted domain. Stricter checks reject real addresses;
# this catches the usual mistakes ("bob@", "bob.example.test", "bob @x.test").
EMAIL_FORM = re.compile(r"^[^@\s\"<>,;]+@[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)+$")
EMAIL_MAX = 320

# Dynamics' names for the depths, accepted as synonyms so role exports translate directly.
DEPTH_SYNONYMS = {
    "basic": Depth.USER,
    "local": Depth.BUSINESS_UNIT,
    "deep": Depth.PARENT_CHILD,
    "global": Depth.ORGANIZATION,
}


class ValueProblem(ValueError):
    """A value that cannot be used; the message is meant for the person who wrote the file."""


def show(value: Any, limit: int = 60) -> str:
    """The value as the file showed it, quoted and shortened for messages."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f'"{text}"'


def with_article(noun: str) -> str:
    """``an account``, ``a user`` (a vowel letter is not always a vowel sound)."""
    vowel_sound = noun[:1] in "aeio" or (noun.startswith("u") and not noun.startswith("us"))
    return ("an " if vowel_sound else "a ") + noun


def is_empty(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def parse_text(raw: Any, max_length: int | None = None) -> str:
    if isinstance(raw, bool | list | dict):
        raise ValueProblem(f"{show(raw)} is not text")
    text = str(raw).strip()
    if max_length is not None and len(text) > max_length:
        raise ValueProblem(
            f"is {len(text)} characters long; at most {max_length} fit ({show(text, 40)})"
        )
    return text


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueProblem(f"{show(raw)} is not a yes/no value; use true or false")


def parse_int(raw: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(raw, bool):
        raise ValueProblem(f"{show(raw)} is not a whole number")
    if isinstance(raw, int):
        number = raw
    elif isinstance(raw, float) and raw.is_integer():
        number = int(raw)
    else:
        text = str(raw).strip()
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueProblem(f"{show(raw)} is not a whole number")
        number = int(text)
    _check_range(raw, number, minimum, maximum)
    return number


def parse_decimal(raw: Any, precision: int | None = None, scale: int | None = None) -> Decimal:
    if isinstance(raw, bool | list | dict):
        raise ValueProblem(f"{show(raw)} is not a number")
    # str() of a JSON float keeps what was written (12.5 -> "12.5"), Decimal(float) would not.
    text = str(raw).strip()
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueProblem(
            f"{show(raw)} is not a number; write digits with a dot for decimals, e.g. 12500.50"
        ) from None
    if not number.is_finite():
        raise ValueProblem(f"{show(raw)} is not a number")
    if number < 0:
        raise ValueProblem(f"{show(raw)} is negative; give 0 or more")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # finite, checked above
    if scale is not None and -exponent > scale:
        raise ValueProblem(f"{show(raw)} has more than {scale} decimals")
    if (
        precision is not None
        and scale is not None
        and abs(number) >= Decimal(10) ** (precision - scale)
    ):
        raise ValueProblem(f"{show(raw)} is too large; at most {precision - scale} digits fit")
    return number


def parse_date(raw: Any) -> date:
    text = str(raw).strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueProblem(f"{show(raw)} is not a date; write it as YYYY-MM-DD") from None


def parse_choice(raw: Any, choices: tuple[str, ...], what: str) -> str:
    word = str(raw).strip().lower().replace(" ", "_").replace("-", "_")
    if word in choices:
        return word
    raise ValueProblem(f"{show(raw)} is not a valid {what}; use one of: {', '.join(choices)}")


def parse_email(raw: Any) -> str:
    text = parse_text(raw)
    canonical = canonical_address(text) if EMAIL_FORM.match(text) else None
    if len(text) > EMAIL_MAX or canonical is None:
        raise ValueProblem(f"{show(raw)} is not an email address")
    # The form Record.set_email stores, so re-importing the same file compares equal.
    return canonical


@dataclass(frozen=True)
class Ref:
    """A reference to another row by external id, optionally qualified with its record type."""

    ext_id: str
    record_type: str | None = None

    def __str__(self) -> str:
        return self.ext_id if self.record_type is None else f"{self.record_type}:{self.ext_id}"


def parse_ref(raw: Any, targets: tuple[str, ...]) -> Ref:
    text = parse_text(raw)
    prefix, sep, rest = text.partition(":")
    # Only a known target type counts as a prefix, so external ids that contain a colon
    # ("sf:0031x00") still work unqualified.
    if sep and prefix.strip().lower() in targets and rest.strip():
        return Ref(rest.strip(), prefix.strip().lower())
    return Ref(text)


def split_list(raw: Any) -> list[Any]:
    """A JSON list, or a ``;``-separated string (CSV cells; also accepted in JSON)."""
    if isinstance(raw, list):
        return [item for item in raw if not is_empty(item)]
    if isinstance(raw, dict | bool):
        raise ValueProblem(f"{show(raw)} is not a list; give a list or separate items with ;")
    return [part for part in str(raw).split(";") if part.strip()]


def parse_ref_list(raw: Any, targets: tuple[str, ...]) -> list[Ref]:
    refs: list[Ref] = []
    for item in split_list(raw):
        ref = parse_ref(item, targets)
        if ref not in refs:
            refs.append(ref)
    return refs


def parse_depth(raw: Any, privilege: str) -> Depth:
    word = str(raw).strip().lower().replace(" ", "_").replace("-", "_")
    if word in DEPTH_SYNONYMS:
        return DEPTH_SYNONYMS[word]
    try:
        return Depth(word)
    except ValueError:
        raise ValueProblem(
            f"{show(raw)} is not a depth (for {privilege}); use one of: {', '.join(Depth.values())}"
        ) from None


def parse_privileges(raw: Any) -> dict[str, Depth]:
    """``{"read:contact": "organization"}`` (JSON) or ``read:contact=organization;...`` (CSV)."""
    pairs: list[tuple[str, Any]]
    if isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        pairs = []
        for item in split_list(raw):
            if not isinstance(item, str) or "=" not in item:
                raise ValueProblem(
                    f"{show(item)} has no depth; write privilege=depth, e.g. "
                    "read:contact=organization"
                )
            name, _, depth = item.partition("=")
            pairs.append((name, depth))
    result: dict[str, Depth] = {}
    unknown: list[str] = []
    for name, depth in pairs:
        key = str(name).strip().lower()
        if not is_known(key):
            unknown.append(key)
            continue
        result[key] = parse_depth(depth, key)
    if unknown:
        raise ValueProblem(_unknown_privileges_message(unknown))
    return result


def _unknown_privileges_message(unknown: list[str]) -> str:
    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, all_privileges(), n=1)
        named.append(f'"{name}"' + (f' (did you mean "{close[0]}"?)' if close else ""))
    return (
        f"unknown privilege {', '.join(named)}; a privilege is <operation>:<record type> with "
        f"operation one of {', '.join(RECORD_OPERATIONS)} and record type one of "
        f"{', '.join(SECURED_RECORD_TYPES)}, or one of {', '.join(MISC_PRIVILEGES)}"
    )


def _check_range(raw: Any, number: int, minimum: int | None, maximum: int | None) -> None:
    if minimum is not None and maximum is not None and not minimum <= number <= maximum:
        raise ValueProblem(f"{show(raw)} is out of range; give {minimum} to {maximum}")
    if minimum is not None and number < minimum:
        raise ValueProblem(f"{show(raw)} is too small; give {minimum} or more")
    if maximum is not None and number > maximum:
        raise ValueProblem(f"{show(raw)} is too large; give at most {maximum}")
