"""When a mailbox syncs next, and when it stops: the scheduling and error policy (reference §5).

A pure function of what the mailbox's recent runs saw (:class:`MailboxHistory`) and its
profile's settings (:class:`ScheduleSettings`). :func:`next_run` answers with a :class:`Plan`: run
again at a time, or disable, with a stable :class:`ScheduleReason` and a sentence for ``crmsync
status`` / ``explain``. ``docs/scheduling.md`` has the rules as a table.

The interval after a successful run (checks in this order, the first that applies wins):

1. **Push live** (IMAP IDLE for this mailbox): 12 min. Polling is only the fallback; push pulls
   the next run forward whenever something arrives.
2. **Busy**: at least ``busy_items`` (10) items in the last run → the fastest, 2 min.
3. **Picking up**: more items than the run before (both successful) → 3 min.
4. **Quiet**: no items for ``n`` consecutive successful runs → 5 + 2·(n-1) min (5, 7, 9, 11,
   12): one empty run is normal, each further one slows polling by a step.
5. Otherwise **normal**: 5 min.

Every interval is then clamped to ``[min_interval, 12]``: the profile's minimum is a floor (a
busy mailbox on a profile whose minimum is 4 runs every 4 min), and 12 min is a hard ceiling,
so no enabled mailbox waits longer than Dynamics' "at least once every 12 minutes". With the
default minimum of 2 (and with 1) the busy floor is 2, Dynamics' "reduced dynamically to 2".

Errors (the newest run failed):

- **Permanent** (authentication refused, mailbox gone, TLS failure...): disable at once.
- **Transient** (network, timeout, server busy): retry in 5 min (the reference's "5 minute gap",
  also clamped to the profile minimum), counting consecutive errors; the 10th consecutive error
  disables the mailbox. Dynamics says "retried up to 10 times" and then treats the error as
  permanent; crmsync reads that as 10 failed attempts in a row, ``MAX_TRANSIENT_ERRORS``.
- Any success resets the count (:func:`record` keeps it).

A ``DISABLE`` plan always means "disable and alert": its ``reason`` is the alert's sentence. The
caller also records each error on the mailbox: ``last_error_code`` (``RunOutcome.error_code``),
``last_error_message`` (the exception's text, which this module never sees),
``last_error_count`` (``MailboxHistory.error_count``) and ``last_error_at``
(``RunOutcome.finished_at``). :func:`profile_alert` decides the profile-level alert.

Design choices, and why:

- ``Plan.at`` and ``Plan.interval`` are ``None`` for ``DISABLE``: a disabled mailbox has no
  next run, and ``Mailbox.next_sync_at`` (nullable, indexed for the "due" query) takes ``None``
  as is, so a disabled mailbox cannot be picked up by mistake.
- The next run is counted from the end of the last run (``finished_at``), not from ``now``: the
  reference schedules "at the end of a cycle", recomputing a plan later (status, explain, a
  restart) gives the same answer, and the 12-minute guarantee holds between runs. An overdue
  ``at`` (in the past) simply means "due now". ``now`` is used only before the first run.
- :func:`profile_alert` returns the sentence (or ``None``): the alert needs the words anyway.
- No jitter: plans are deterministic. Mailboxes enabled together drift apart as soon as their
  traffic differs; if lockstep ever matters, add an explicit offset input, not randomness.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

NORMAL_MINUTES = 5
"""Dynamics: "Normally … every 5 minutes"; incoming is postponed 5 minutes after each cycle."""
FASTEST_MINUTES = 2
"""Dynamics: "reduced dynamically to 2 minutes"."""
PICKING_UP_MINUTES = 3
"""crmsync: traffic is rising but not yet busy; halfway between normal and fastest."""
SLOWEST_MINUTES = 12
"""Dynamics: "increased up to 12 minutes", and "at least once every 12 minutes". A hard ceiling."""
QUIET_STEP_MINUTES = 2
"""crmsync: each further empty run adds this much, so 5, 7, 9, 11, 12."""
BUSY_ITEMS = 10
"""crmsync: this many items in one run counts as busy (the reference gives no figure)."""
RETRY_MINUTES = 5
"""Dynamics: transient errors are "retried up to 10 times with a 5 minute gap"."""
MAX_TRANSIENT_ERRORS = 10
"""Dynamics: after 10 transient failures the error counts as permanent: disable."""
DEFAULT_MIN_INTERVAL = 2
"""Same default as ``EmailServerProfile.min_polling_minutes`` (allowed 1..12)."""
DEFAULT_FAILURE_ALERT_PERCENT = 50
"""Same default as ``EmailServerProfile.failure_alert_percent``: Dynamics alerts the profile owner
when "more than 50% of the mailboxes fail"."""
KEEP_OUTCOMES = 6
"""How many outcomes :func:`record` keeps: enough for the quiet steps to reach 12 min."""


class Action(enum.StrEnum):
    RUN = "run"
    DISABLE = "disable"


class ScheduleReason(enum.StrEnum):
    """Why a plan is what it is. Stable: shown by status and explain, never renamed."""

    FIRST_RUN = "first_run"
    PUSH = "push"
    BUSY = "busy"
    PICKING_UP = "picking_up"
    NORMAL = "normal"
    QUIET = "quiet"
    TRANSIENT_RETRY = "transient_retry"
    TRANSIENT_EXHAUSTED = "transient_exhausted"
    PERMANENT = "permanent"


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What one sync run of a mailbox saw.

    ``items`` counts messages seen or changed. ``error_code`` is ``None`` for a successful run;
    for a failed one it is a short stable code (for example the ``ImapError`` class name) and
    ``transient`` says whether retrying can help (``ImapError.transient``).
    """

    finished_at: datetime
    items: int = 0
    error_code: str | None = None
    transient: bool | None = None

    def __post_init__(self) -> None:
        _require_aware(self.finished_at, "finished_at")
        if self.items < 0:
            raise ValueError(f"items must not be negative, got {self.items}")
        if self.error_code is None and self.transient is not None:
            raise ValueError("transient is only meaningful with an error_code")
        if self.error_code is not None and self.transient is None:
            raise ValueError(f"error {self.error_code!r} must say whether it is transient")

    @property
    def failed(self) -> bool:
        return self.error_code is not None


@dataclass(frozen=True, slots=True)
class MailboxHistory:
    """A mailbox's recent runs, newest last, and the count of consecutive errors ending at the
    newest one (``Mailbox.last_error_count``; 0 after a success). :func:`record` maintains both.

    ``push_live``: push (IMAP IDLE) is connected for this mailbox right now. Re-enabling a
    mailbox starts from a fresh ``MailboxHistory()``.
    """

    outcomes: tuple[RunOutcome, ...] = ()
    error_count: int = 0
    push_live: bool = False

    def __post_init__(self) -> None:
        if self.error_count < 0:
            raise ValueError(f"error_count must not be negative, got {self.error_count}")


def record(
    history: MailboxHistory, outcome: RunOutcome, *, keep: int = KEEP_OUTCOMES
) -> MailboxHistory:
    """The history after ``outcome``: appended (the last ``keep`` kept), errors counted."""
    if keep < 2:
        raise ValueError(f"keep must be at least 2 (busy compares two runs), got {keep}")
    return MailboxHistory(
        outcomes=(*history.outcomes, outcome)[-keep:],
        error_count=history.error_count + 1 if outcome.failed else 0,
        push_live=history.push_live,
    )


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    """The profile's settings: ``min_interval`` is ``EmailServerProfile.min_polling_minutes``."""

    min_interval: int = DEFAULT_MIN_INTERVAL
    busy_items: int = BUSY_ITEMS

    def __post_init__(self) -> None:
        if not 1 <= self.min_interval <= SLOWEST_MINUTES:
            raise ValueError(
                f"min_interval must be 1..{SLOWEST_MINUTES} minutes, got {self.min_interval}"
            )
        if self.busy_items < 1:
            raise ValueError(f"busy_items must be at least 1, got {self.busy_items}")


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do next. ``at``/``interval`` are ``None`` when the mailbox is to be disabled."""

    action: Action
    at: datetime | None
    interval: timedelta | None
    code: ScheduleReason
    reason: str
    error_count: int = 0
    """Consecutive errors so far (0 after a success), to store as ``last_error_count``."""

    @property
    def alert(self) -> bool:
        """Disabling a mailbox always alerts (reference §5, §10)."""
        return self.action is Action.DISABLE


def _minutes(n: int) -> str:
    return f"{n} min"


def _messages(n: int) -> str:
    return f"{n} message" if n == 1 else f"{n} messages"


def _quiet_streak(outcomes: Sequence[RunOutcome]) -> int:
    """How many successful runs in a row, ending with the newest, saw no items."""
    streak = 0
    for outcome in reversed(outcomes):
        if outcome.failed or outcome.items:
            break
        streak += 1
    return streak


def _success_interval(
    outcomes: Sequence[RunOutcome], settings: ScheduleSettings, push_live: bool
) -> tuple[int, ScheduleReason, str]:
    """The unclamped interval after a successful run, its reason code and the sentence's start."""
    last = outcomes[-1]
    previous = outcomes[-2] if len(outcomes) >= 2 else None
    if push_live:
        return SLOWEST_MINUTES, ScheduleReason.PUSH, "push (IDLE) is live, polling is a fallback"
    if last.items >= settings.busy_items:
        return (
            FASTEST_MINUTES,
            ScheduleReason.BUSY,
            f"busy: {_messages(last.items)} in the last run",
        )
    if previous is not None and not previous.failed and last.items > previous.items:
        return (
            PICKING_UP_MINUTES,
            ScheduleReason.PICKING_UP,
            f"picking up: {_messages(last.items)} in the last run, up from {previous.items}",
        )
    if last.items == 0:
        streak = _quiet_streak(outcomes)
        if streak > 1:
            minutes = NORMAL_MINUTES + QUIET_STEP_MINUTES * (streak - 1)
            return minutes, ScheduleReason.QUIET, f"quiet for {streak} runs"
        return NORMAL_MINUTES, ScheduleReason.NORMAL, "no messages in the last run"
    return NORMAL_MINUTES, ScheduleReason.NORMAL, f"{_messages(last.items)} in the last run"


def _clamp(minutes: int, settings: ScheduleSettings) -> tuple[int, str]:
    """Clamp to [profile minimum, 12]; the note says which bound applied, if one did."""
    if minutes < settings.min_interval:
        return settings.min_interval, " (the profile's minimum)"
    if minutes > SLOWEST_MINUTES:
        return SLOWEST_MINUTES, " (the 12-minute ceiling)"
    return minutes, ""


def _run(
    last: RunOutcome,
    minutes: int,
    settings: ScheduleSettings,
    code: ScheduleReason,
    sentence: str,
    error_count: int,
    verb: str = "",
) -> Plan:
    minutes, note = _clamp(minutes, settings)
    interval = timedelta(minutes=minutes)
    return Plan(
        action=Action.RUN,
        at=last.finished_at + interval,
        interval=interval,
        code=code,
        reason=f"{sentence} → {verb}{_minutes(minutes)}{note}",
        error_count=error_count,
    )


def next_run(history: MailboxHistory, settings: ScheduleSettings, now: datetime) -> Plan:
    """The next run of a mailbox (or its disabling), and why. See the module docstring.

    ``now`` matters only before the first run: a mailbox with no history runs at once.
    """
    _require_aware(now, "now")
    if not history.outcomes:
        return Plan(
            action=Action.RUN,
            at=now,
            interval=timedelta(0),
            code=ScheduleReason.FIRST_RUN,
            reason="not synced yet → now",
        )

    last = history.outcomes[-1]
    if not last.failed:
        minutes, code, sentence = _success_interval(history.outcomes, settings, history.push_live)
        return _run(last, minutes, settings, code, sentence, error_count=0)

    count = max(history.error_count, 1)
    if not last.transient:
        return Plan(
            action=Action.DISABLE,
            at=None,
            interval=None,
            code=ScheduleReason.PERMANENT,
            reason=(
                f"permanent error ({last.error_code}): retrying cannot help → mailbox disabled"
            ),
            error_count=count,
        )
    if count >= MAX_TRANSIENT_ERRORS:
        return Plan(
            action=Action.DISABLE,
            at=None,
            interval=None,
            code=ScheduleReason.TRANSIENT_EXHAUSTED,
            reason=(
                f"transient error {count} of {MAX_TRANSIENT_ERRORS} ({last.error_code}), "
                "retries exhausted → mailbox disabled"
            ),
            error_count=count,
        )
    return _run(
        last,
        RETRY_MINUTES,
        settings,
        ScheduleReason.TRANSIENT_RETRY,
        f"transient error {count} of {MAX_TRANSIENT_ERRORS} ({last.error_code})",
        error_count=count,
        verb="retry in ",
    )


def profile_alert(
    failing: int, total: int, threshold_percent: int = DEFAULT_FAILURE_ALERT_PERCENT
) -> str | None:
    """The profile-level alert's sentence when *more than* ``threshold_percent`` of the
    profile's ``total`` mailboxes are failing, else ``None`` (Dynamics: "more than 50%").

    What counts as failing is the caller's: a mailbox whose newest run failed or that an error
    disabled. A profile without mailboxes never alerts.
    """
    if not 0 <= threshold_percent <= 100:
        raise ValueError(f"threshold_percent must be 0..100, got {threshold_percent}")
    if total < 0 or not 0 <= failing <= total:
        raise ValueError(f"need 0 <= failing <= total, got failing={failing}, total={total}")
    if total == 0 or failing * 100 <= threshold_percent * total:
        return None
    share = failing * 100 // total
    noun = "mailbox" if total == 1 else "mailboxes"
    verb = "is" if failing == 1 else "are"
    return (
        f"{failing} of {total} {noun} on this profile {verb} failing ({share}%), "
        f"more than the {threshold_percent}% alert threshold"
    )
