"""Scheduling policy: intervals from traffic, the profile minimum, the 12-minute ceiling, errors."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.core.schedule import (
    MAX_TRANSIENT_ERRORS,
    Action,
    MailboxHistory,
    Plan,
    RunOutcome,
    ScheduleReason,
    ScheduleSettings,
    next_run,
    profile_alert,
    record,
)

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
DEFAULT = ScheduleSettings()
R = ScheduleReason


def ok(items: int = 0) -> tuple[int, str | None, bool | None]:
    return (items, None, None)


def transient(code: str = "timeout") -> tuple[int, str | None, bool | None]:
    return (0, code, True)


def permanent(code: str = "auth_failed") -> tuple[int, str | None, bool | None]:
    return (0, code, False)


def replay(
    runs: Iterable[tuple[int, str | None, bool | None]],
    schedule: ScheduleSettings = DEFAULT,
    *,
    push_live: bool = False,
) -> list[Plan]:
    """Run the mailbox each time its plan says, until the end or a DISABLE; the plans made."""
    history = MailboxHistory(push_live=push_live)
    plans: list[Plan] = []
    at = T0
    for items, code, is_transient in runs:
        outcome = RunOutcome(at + timedelta(seconds=30), items, code, is_transient)
        history = record(history, outcome)
        plan = next_run(history, schedule, now=outcome.finished_at)
        plans.append(plan)
        if plan.action is Action.DISABLE:
            break
        assert plan.at is not None
        at = plan.at
    return plans


def minutes(plans: list[Plan]) -> list[int | None]:
    return [None if p.interval is None else int(p.interval.total_seconds() // 60) for p in plans]


# --- successful runs ---------------------------------------------------------------------------


def test_a_mailbox_that_never_ran_runs_now() -> None:
    plan = next_run(MailboxHistory(), DEFAULT, now=T0)
    assert (plan.action, plan.at, plan.interval, plan.code) == (
        Action.RUN,
        T0,
        timedelta(0),
        R.FIRST_RUN,
    )


def test_some_messages_is_the_normal_five_minutes() -> None:
    [plan] = replay([ok(3)])
    assert plan.code is R.NORMAL
    assert plan.reason == "3 messages in the last run → 5 min"
    assert plan.interval == timedelta(minutes=5)


def test_the_next_run_counts_from_the_end_of_the_last_run_not_from_now() -> None:
    outcome = RunOutcome(T0, 3)
    plan = next_run(record(MailboxHistory(), outcome), DEFAULT, now=T0 + timedelta(hours=1))
    assert plan.at == T0 + timedelta(minutes=5)


def test_busy_runs_every_two_minutes() -> None:
    [plan] = replay([ok(14)])
    assert plan.code is R.BUSY
    assert plan.reason == "busy: 14 messages in the last run → 2 min"
    assert plan.interval == timedelta(minutes=2)


def test_rising_traffic_shrinks_toward_busy() -> None:
    plans = replay([ok(1), ok(4)])
    assert minutes(plans) == [5, 3]
    assert plans[1].code is R.PICKING_UP
    assert plans[1].reason == "picking up: 4 messages in the last run, up from 1 → 3 min"


def test_quiet_runs_grow_stepwise_to_twelve_and_stay() -> None:
    plans = replay([ok(2)] + [ok(0)] * 8)
    assert minutes(plans) == [5, 5, 7, 9, 11, 12, 12, 12, 12]
    assert plans[3].reason == "quiet for 3 runs → 9 min"
    assert plans[5].reason == "quiet for 5 runs → 12 min (the 12-minute ceiling)"
    assert plans[1].code is R.NORMAL and plans[3].code is R.QUIET


def test_one_message_after_a_quiet_spell_speeds_back_up() -> None:
    assert minutes(replay([ok(0)] * 6 + [ok(1)]))[-1] == 3  # 1 > 0: picking up


def test_an_error_breaks_a_quiet_streak() -> None:
    assert minutes(replay([ok(0)] * 4 + [transient(), ok(0)]))[-1] == 5


def test_push_live_polls_at_the_quiet_end_even_when_busy() -> None:
    plans = replay([ok(50), ok(0)], push_live=True)
    assert minutes(plans) == [12, 12]
    assert plans[0].code is R.PUSH


def test_the_profile_minimum_is_a_floor() -> None:
    plans = replay([ok(14), ok(3), ok(0), ok(0)], ScheduleSettings(min_interval=4))
    assert minutes(plans) == [4, 5, 5, 7]
    assert plans[0].reason == "busy: 14 messages in the last run → 4 min (the profile's minimum)"


def test_a_minimum_of_one_still_busies_at_two() -> None:
    assert minutes(replay([ok(14)], ScheduleSettings(min_interval=1))) == [2]


def test_a_minimum_of_twelve_pins_everything_to_twelve() -> None:
    runs = [ok(14), ok(0), transient(), ok(1)]
    assert minutes(replay(runs, ScheduleSettings(min_interval=12))) == [12, 12, 12, 12]


def test_the_busy_threshold_is_a_setting() -> None:
    assert minutes(replay([ok(5)], ScheduleSettings(busy_items=5))) == [2]


# --- errors ------------------------------------------------------------------------------------


def test_transient_errors_retry_every_five_minutes_then_disable_at_the_tenth() -> None:
    plans = replay([ok(1)] + [transient()] * 12)
    errors = plans[1:]
    assert len(errors) == MAX_TRANSIENT_ERRORS  # stopped at the DISABLE
    assert all(p.action is Action.RUN for p in errors[:-1])
    assert minutes(errors[:-1]) == [5] * 9
    assert errors[2].reason == "transient error 3 of 10 (timeout) → retry in 5 min"
    assert [p.error_count for p in errors] == list(range(1, 11))
    last = errors[-1]
    assert (last.action, last.code, last.at, last.interval) == (
        Action.DISABLE,
        R.TRANSIENT_EXHAUSTED,
        None,
        None,
    )
    assert last.alert
    assert last.reason == (
        "transient error 10 of 10 (timeout), retries exhausted → mailbox disabled"
    )


def test_a_success_resets_the_error_count() -> None:
    plans = replay([transient()] * 9 + [ok(0)] + [transient()] * 9)
    assert all(p.action is Action.RUN for p in plans)
    assert plans[9].error_count == 0
    assert plans[-1].error_count == 9


def test_a_permanent_error_disables_at_once() -> None:
    [plan] = replay([permanent()])
    assert plan.action is Action.DISABLE and plan.code is R.PERMANENT and plan.alert
    assert plan.reason == "permanent error (auth_failed): retrying cannot help → mailbox disabled"


def test_a_permanent_error_after_transient_ones_disables() -> None:
    plans = replay([transient(), transient(), permanent("tls")])
    assert [p.action for p in plans] == [Action.RUN, Action.RUN, Action.DISABLE]
    assert plans[-1].error_count == 3


def test_errors_win_over_push() -> None:
    plans = replay([transient(), permanent()], push_live=True)
    assert [p.code for p in plans] == [R.TRANSIENT_RETRY, R.PERMANENT]


def test_an_error_with_a_stale_zero_count_counts_as_the_first() -> None:
    outcome = RunOutcome(T0, error_code="timeout", transient=True)
    plan = next_run(MailboxHistory((outcome,), error_count=0), DEFAULT, now=T0)
    assert plan.error_count == 1 and plan.action is Action.RUN


def test_record_keeps_the_newest_outcomes_and_counts_errors() -> None:
    history = MailboxHistory(push_live=True)
    for i in range(8):
        history = record(history, RunOutcome(T0 + timedelta(minutes=i), i))
    assert [o.items for o in history.outcomes] == [2, 3, 4, 5, 6, 7]
    assert history.push_live
    history = record(history, RunOutcome(T0, error_code="x", transient=True))
    history = record(history, RunOutcome(T0, error_code="x", transient=True))
    assert history.error_count == 2
    assert record(history, RunOutcome(T0, 0)).error_count == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: RunOutcome(datetime(2026, 1, 1)),  # naive
        lambda: RunOutcome(T0, -1),
        lambda: RunOutcome(T0, error_code="timeout"),  # transient unknown
        lambda: RunOutcome(T0, transient=True),  # no error
        lambda: ScheduleSettings(min_interval=0),
        lambda: ScheduleSettings(min_interval=13),
        lambda: ScheduleSettings(busy_items=0),
        lambda: MailboxHistory(error_count=-1),
        lambda: next_run(MailboxHistory(), DEFAULT, now=datetime(2026, 1, 1)),
        lambda: record(MailboxHistory(), RunOutcome(T0), keep=1),
    ],
)
def test_bad_inputs_are_refused(make) -> None:
    with pytest.raises(ValueError):
        make()


# --- the profile alert -------------------------------------------------------------------------


def test_profile_alert_needs_more_than_the_threshold() -> None:
    assert profile_alert(2, 4, 50) is None  # exactly 50% is not "more than 50%"
    assert profile_alert(3, 4, 50) == (
        "3 of 4 mailboxes on this profile are failing (75%), more than the 50% alert threshold"
    )
    assert profile_alert(1, 1) == (
        "1 of 1 mailbox on this profile is failing (100%), more than the 50% alert threshold"
    )
    assert profile_alert(0, 0) is None
    assert profile_alert(0, 5, 0) is None
    assert profile_alert(1, 5, 0) is not None
    assert profile_alert(5, 5, 100) is None


@pytest.mark.parametrize(("failing", "total", "percent"), [(3, 2, 50), (-1, 2, 50), (1, 2, 101)])
def test_profile_alert_refuses_impossible_counts(failing: int, total: int, percent: int) -> None:
    with pytest.raises(ValueError):
        profile_alert(failing, total, percent)


# --- properties --------------------------------------------------------------------------------

min_intervals = st.integers(min_value=1, max_value=12)
item_counts = st.integers(min_value=0, max_value=40)
run_kinds = st.one_of(
    item_counts.map(ok),
    st.sampled_from(["timeout", "busy", "network"]).map(transient),
    st.sampled_from(["auth_failed", "tls", "gone"]).map(permanent),
)


def _gaps(plans: list[Plan]) -> list[timedelta]:
    return [p.interval for p in plans if p.interval is not None]


@settings(max_examples=300, deadline=None)
@given(st.lists(item_counts, min_size=1, max_size=40), min_intervals, st.booleans())
def test_without_errors_every_interval_is_within_the_minimum_and_twelve(
    items: list[int], min_interval: int, push_live: bool
) -> None:
    plans = replay([ok(n) for n in items], ScheduleSettings(min_interval), push_live=push_live)
    assert len(plans) == len(items)
    assert all(p.action is Action.RUN for p in plans)
    floor = timedelta(minutes=max(1, min_interval))
    for gap in _gaps(plans):
        assert floor <= gap <= timedelta(minutes=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(run_kinds, min_size=1, max_size=60), min_intervals)
def test_disable_comes_exactly_at_the_tenth_transient_or_the_first_permanent(
    runs: list[tuple[int, str | None, bool | None]], min_interval: int
) -> None:
    # The expected stop, computed independently of the policy.
    expected_stop = None
    streak = 0
    for i, (_, code, is_transient) in enumerate(runs):
        if code is None:
            streak = 0
            continue
        streak += 1
        if not is_transient or streak == MAX_TRANSIENT_ERRORS:
            expected_stop = i
            break

    plans = replay(runs, ScheduleSettings(min_interval))
    disabled = [i for i, p in enumerate(plans) if p.action is Action.DISABLE]
    assert disabled == ([] if expected_stop is None else [expected_stop])
    for gap in _gaps(plans):  # while enabled, still never more than 12 minutes
        assert timedelta(minutes=max(1, min_interval)) <= gap <= timedelta(minutes=12)
