"""When is the next attempt slot? The pure scheduling rules of a call.

Every function here is pure: time arrives as arguments (aware datetimes; results are UTC), so the
workflow can call them during an activation and tests can table them without Temporal.

Calling windows are wall-clock times in the donor's time zone, so a 09:00-21:00 window stays
09:00-21:00 local across daylight-saving changes. Local times that do not exist or exist twice
are read so that a window never shrinks:

* a nonexistent time (inside a spring-forward gap) is read with the offset before the change,
  i.e. moved forward by the gap: a window opening at 02:30 on that night opens at 03:30;
* an ambiguous time (inside a fall-back overlap) opens a window at its first occurrence and
  closes a window at its second one.

Searches step window by window and day by day (never minute by minute), bounded by
`MAX_SEARCH_DAYS`, so a decision costs microseconds to a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Final, TypeAlias
from zoneinfo import ZoneInfo

from workflows.policy import DEFAULT_TIMEZONE, AttemptOutcome, CallPolicy, Weekday, zone

MAX_SEARCH_DAYS: Final = 400
# A callback asked for "now" reaches the workflow a little later; don't refuse it for that.
CALLBACK_TOLERANCE: Final = timedelta(minutes=5)
# `window_end` follows windows that touch (e.g. 00:00-24:00 then 00:00-24:00) at most this far.
_MAX_WINDOW_SPAN: Final = timedelta(days=7)
_DAY_NAMES: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class ExpiryReason(StrEnum):
    """Why a call gets no further slot."""

    MAX_ATTEMPTS = "max_attempts"
    DEADLINE = "deadline"
    FINAL_OUTCOME = "final_outcome"


@dataclass(frozen=True, slots=True)
class Slot:
    """The next attempt: due at `at`, waiting for a report until `due_until` (both UTC)."""

    at: datetime
    due_until: datetime


@dataclass(frozen=True, slots=True)
class Expire:
    """No further attempt: the call expires for `reason`."""

    reason: ExpiryReason


SlotDecision: TypeAlias = Slot | Expire


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{t!r} is a naive datetime; scheduling needs aware datetimes")
    return t.astimezone(UTC)


def effective_timezone(policy: CallPolicy, call_timezone: str | None = None) -> str:
    """The donor's time zone: the call's own, else the policy's, else Europe/Amsterdam."""
    return call_timezone or policy.timezone or DEFAULT_TIMEZONE


def call_deadline(policy: CallPolicy, requested_at: datetime) -> datetime:
    """The instant (UTC) at which the call expires, attempted or not."""
    return _utc(requested_at) + policy.deadline


def _instant(day: date, minute: int, zone: ZoneInfo, *, closing: bool) -> datetime:
    """The UTC instant of a local wall time `minute` minutes after midnight of `day`."""
    wall = datetime.combine(day, time()) + timedelta(minutes=minute)
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if not closing:
        return first
    # fold=1 is the later reading of an ambiguous time; in a gap, fold=0 is the later one.
    return max(first, wall.replace(tzinfo=zone, fold=1).astimezone(UTC))


def _windows(
    policy: CallPolicy, zone: ZoneInfo, t: datetime
) -> Iterator[tuple[datetime, datetime]]:
    """Calling windows as UTC [start, end) pairs, sorted and disjoint, from around `t` on."""
    blackouts = frozenset(policy.blackout_dates)
    # Start a day early: around a DST change at midnight, yesterday's window may still be open.
    first_day = t.astimezone(zone).date() - timedelta(days=1)
    pending: tuple[datetime, datetime] | None = None
    for offset in range(MAX_SEARCH_DAYS + 1):
        day = first_day + timedelta(days=offset)
        if day in blackouts:
            continue
        spans = sorted(
            (
                _instant(day, w.start_minute, zone, closing=False),
                _instant(day, w.end_minute, zone, closing=True),
            )
            for w in policy.windows.get(Weekday.of(day), ())
        )
        for start, end in spans:
            if pending is not None and start < pending[1]:
                # Only DST oddities make windows overlap once in UTC; merge them.
                pending = (pending[0], max(pending[1], end))
                continue
            if pending is not None:
                yield pending
            pending = (start, end)
    if pending is not None:
        yield pending


def align_to_window(policy: CallPolicy, tz: str, t: datetime) -> datetime | None:
    """The first instant at or after `t` inside a calling window, in UTC.

    Windows are read in `tz` (IANA) and skipped on blackout dates (local calendar). Returns
    `None` when no window opens within `MAX_SEARCH_DAYS`.
    """
    t = _utc(t)
    for start, end in _windows(policy, zone(tz), t):
        if end > t:
            return max(start, t)
    return None


def window_end(
    policy: CallPolicy, tz: str, t: datetime, *, until: datetime | None = None
) -> datetime:
    """The end (UTC) of the calling window containing `t`, or of the next one if `t` is outside.

    Windows that touch (a day open until 24:00 and the next from 00:00) count as one; following
    them stops once the end reaches `until` (default: a week after `t`).

    Raises:
        ValueError: when no calling window follows `t` within `MAX_SEARCH_DAYS`.
    """
    t = _utc(t)
    horizon = _utc(until) if until is not None else t + _MAX_WINDOW_SPAN
    found: datetime | None = None
    for start, end in _windows(policy, zone(tz), t):
        if found is None:
            if end > t:
                found = end
        elif start == found:
            found = end
        else:
            break
        if found is not None and found >= horizon:
            break
    if found is None:
        raise ValueError(f"no calling window within {MAX_SEARCH_DAYS} days after {t}")
    return found


def due_until(policy: CallPolicy, tz: str, at: datetime, *, requested_at: datetime) -> datetime:
    """How long a slot due at `at` waits for a report (UTC).

    The earliest of `at + attempt_window`, the end of its calling window, and the deadline, so a
    due slot never runs past its window or the call's life.
    """
    cap = min(_utc(at) + policy.attempt_window, call_deadline(policy, requested_at))
    return min(cap, window_end(policy, tz, at, until=cap))


def next_slot(
    policy: CallPolicy,
    *,
    tz: str,
    requested_at: datetime,
    now: datetime,
    attempts_made: int,
    last_outcome: AttemptOutcome | None,
    last_attempt_at: datetime | None,
    callback_at: datetime | None = None,
    missed_slot_at: datetime | None = None,
) -> SlotDecision:
    """Decide the call's next attempt slot, or that it expires.

    Rules, in order:
    1. `last_outcome` is final (e.g. wrong_number) → expire(final_outcome).
    2. `attempts_made >= max_attempts` → expire(max_attempts).
    3. The earliest moment is the latest of: `requested_at + first_attempt_delay`;
       `last_attempt_at + retry_delays[last_outcome]` (no_answer's delay if the outcome is
       unknown); `missed_slot_at + missed_slot_delay`; and `now`. A donor's `callback_at`
       replaces the first three (it may be sooner than a retry delay), never `now`.
    4. That moment is aligned into a calling window; at or after the deadline → expire(deadline).

    Args:
        policy: the call's resolved policy.
        tz: the donor's IANA time zone (see `effective_timezone`).
        requested_at: when the call was requested (the deadline counts from here).
        now: the current time (`workflow.now()` in workflow code).
        attempts_made: unanswered attempts reported so far.
        last_outcome: the outcome of the latest attempt, if any.
        last_attempt_at: when the latest attempt was made, if any.
        callback_at: a callback time the donor asked for, to be used for the next slot only;
            clear it once the slot it produced has become due.
        missed_slot_at: when the latest due slot lapsed without a report (its `due_until`),
            if that happened after the latest attempt.

    Returns:
        `Slot(at, due_until)` or `Expire(reason)`. Given non-decreasing inputs the slots are
        non-decreasing.
    """
    if last_outcome is not None and last_outcome in policy.final_outcomes:
        return Expire(ExpiryReason.FINAL_OUTCOME)
    if attempts_made >= policy.max_attempts:
        return Expire(ExpiryReason.MAX_ATTEMPTS)
    deadline = call_deadline(policy, requested_at)
    if callback_at is not None:
        earliest = _utc(callback_at)
    else:
        earliest = _earliest_by_delays(
            policy, requested_at, last_outcome, last_attempt_at, missed_slot_at
        )
    earliest = max(earliest, _utc(now))
    if earliest >= deadline:
        return Expire(ExpiryReason.DEADLINE)
    at = align_to_window(policy, tz, earliest)
    if at is None or at >= deadline:
        return Expire(ExpiryReason.DEADLINE)
    return Slot(at=at, due_until=due_until(policy, tz, at, requested_at=requested_at))


def _earliest_by_delays(
    policy: CallPolicy,
    requested_at: datetime,
    last_outcome: AttemptOutcome | None,
    last_attempt_at: datetime | None,
    missed_slot_at: datetime | None,
) -> datetime:
    """Rule 3 of `next_slot` without a callback: the latest moment the policy's delays allow."""
    earliest = _utc(requested_at) + policy.first_attempt_delay
    if last_attempt_at is not None:
        outcome = last_outcome or AttemptOutcome.NO_ANSWER
        delay = policy.retry_delays.get(outcome, timedelta(0))
        earliest = max(earliest, _utc(last_attempt_at) + delay)
    if missed_slot_at is not None:
        earliest = max(earliest, _utc(missed_slot_at) + policy.missed_slot_delay)
    return earliest


def validate_callback(
    policy: CallPolicy, tz: str, requested_at: datetime, at: datetime, now: datetime
) -> datetime:
    """Check a donor's requested callback time and return the slot it becomes (UTC).

    A time slightly in the past (within `CALLBACK_TOLERANCE`) means "now". A time outside a
    calling window moves to the next window.

    Raises:
        ValueError: when `at` is in the past, at or after the call's deadline, or no calling
            window opens between `at` and the deadline. The message says which.
    """
    at, now = _utc(at), _utc(now)
    deadline = call_deadline(policy, requested_at)
    if at < now - CALLBACK_TOLERANCE:
        raise ValueError(f"callback time {at:%Y-%m-%d %H:%M} UTC is in the past")
    if at >= deadline:
        raise ValueError(
            f"callback time {format_local(at, tz)} is after the call's deadline "
            f"{format_local(deadline, tz)}"
        )
    slot = align_to_window(policy, tz, max(at, now))
    if slot is None or slot >= deadline:
        raise ValueError(
            f"no calling window between {format_local(at, tz)} and the call's deadline "
            f"{format_local(deadline, tz)}"
        )
    return slot


def to_local(t: datetime, tz: str) -> datetime:
    """`t` in the donor's local time."""
    return _utc(t).astimezone(zone(tz))


def format_local(t: datetime, tz: str) -> str:
    """`t` for people, in local time: "Tue 2026-12-01 09:00 CET"."""
    local = to_local(t, tz)
    # Day names from a table rather than strftime("%a"), which follows the process locale.
    return f"{_DAY_NAMES[local.weekday()]} {local:%Y-%m-%d %H:%M} {local.tzname()}"
