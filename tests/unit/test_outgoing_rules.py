"""The outgoing email rules of the pure core: status flow, retries, recipients, size limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.core import outgoing as o

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (o.DRAFT, o.PENDING),
        (o.PENDING, o.SENDING),
        (o.SENDING, o.SENT),
        (o.SENDING, o.PENDING),  # a transient failure
        (o.SENDING, o.FAILED),
        (o.FAILED, o.PENDING),  # sent again by its owner
        (o.PENDING, o.CANCELED),
        (o.DRAFT, o.CANCELED),
    ],
)
def test_the_flow_allows_what_the_reference_describes(current: str, target: str) -> None:
    o.check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [(o.SENT, o.PENDING), (o.SENT, o.CANCELED), (o.CANCELED, o.PENDING), (o.DRAFT, o.SENT)],
)
def test_the_flow_refuses_the_rest_saying_what_is_allowed(current: str, target: str) -> None:
    with pytest.raises(o.StatusError, match="cannot become"):
        o.check_transition(current, target)


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(o.StatusError, match="unknown"):
        o.check_transition("lost", o.SENT)


def test_retries_back_off_then_give_up() -> None:
    waits = [o.next_attempt(n, NOW) for n in range(1, o.MAX_ATTEMPTS + 1)]
    assert waits[-1] is None
    minutes = [(w - NOW) / timedelta(minutes=1) for w in waits[:-1] if w is not None]
    assert minutes == list(o.RETRY_MINUTES)
    assert minutes == sorted(minutes)


@given(st.integers(min_value=1, max_value=1000))
def test_every_retry_is_later_and_ends(attempts: int) -> None:
    at = o.next_attempt(attempts, NOW)
    assert at is None or at > NOW
    assert (at is None) == (attempts >= o.MAX_ATTEMPTS)


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        o.next_attempt(0, NOW)


def test_recipients_need_an_address_and_a_record_unless_allowed() -> None:
    carl = o.Recipient("to", "carl@customer.test", "Carl")
    acme = o.Recipient("to", None, "Acme")
    stranger = o.Recipient("cc", "x@elsewhere.test")
    assert o.recipient_problems([carl], allow_unresolved=False) == []
    [no_address] = o.recipient_problems([carl, acme], allow_unresolved=True)
    assert "Acme has no primary email address" in no_address
    [unresolved] = o.recipient_problems([carl, stranger], allow_unresolved=False)
    assert "allow_unresolved_recipients" in unresolved
    assert o.recipient_problems([carl, stranger], allow_unresolved=True) == []
    assert o.recipient_problems([], allow_unresolved=True) == [
        "the email has no recipient (To, Cc or Bcc)"
    ]


def test_each_attachment_must_fit_the_limit() -> None:
    assert o.attachment_problem([5120 * 1024, 10], o.DEFAULT_ATTACHMENT_KB) is None
    problem = o.attachment_problem([10, 5120 * 1024 + 1], o.DEFAULT_ATTACHMENT_KB)
    assert problem is not None and "max_attachment_kb" in problem and "5,120 KB" in problem
