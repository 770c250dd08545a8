"""The scheduling rules: calling windows, holidays, DST, retries, deadlines, callbacks."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import first_slot
from workflows.policy import (
    AttemptOutcome,
    CallPolicy,
    TimeWindow,
    Weekday,
    demo_policy,
    expand_holidays,
)
from workflows.schedule import (
    Expire,
    ExpiryReason,
    Slot,
    align_to_window,
    call_deadline,
    due_until,
    effective_timezone,
    format_local,
    next_slot,
    to_local,
    validate_callback,
    window_end,
)

pytestmark = pytest.mark.timeout(60)

AMS = "Europe/Amsterdam"
NL_HOLIDAYS = expand_holidays(["NL"], date(2025, 12, 1), date(2028, 12, 31))
# The shipped defaults (Mon-Fri 09-21, Sat 10-16, no Sunday) with Dutch holidays expanded.
NL = CallPolicy(blackout_dates=NL_HOLIDAYS)


def local(text: str, tz: str = AMS) -> datetime:
    """'2026-03-02 09:00' in `tz`, as an aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz))


def wall(t: datetime, tz: str = AMS) -> str:
    return to_local(t, tz).strftime("%Y-%m-%d %H:%M")


# --- aligning a moment into a calling window ----------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "tz", "expected", "utc_offset"),
    [
        pytest.param("2026-03-04 11:00", AMS, "2026-03-04 11:00", 1, id="inside_window_unchanged"),
        pytest.param(
            "2026-03-04 07:30", AMS, "2026-03-04 09:00", 1, id="early_morning_waits_for_9"
        ),
        pytest.param("2026-03-04 21:00", AMS, "2026-03-05 09:00", 1, id="window_end_is_exclusive"),
        pytest.param("2026-03-01 12:00", AMS, "2026-03-02 09:00", 1, id="sunday_moves_to_monday"),
        pytest.param(
            "2026-03-07 17:00", AMS, "2026-03-09 09:00", 1, id="saturday_after_16_to_monday"
        ),
        pytest.param(
            "2026-03-06 22:00", AMS, "2026-03-07 10:00", 1, id="friday_night_to_saturday_10"
        ),
        pytest.param("2026-04-26 12:00", AMS, "2026-04-28 09:00", 2, id="kings_day_monday_skipped"),
        pytest.param(
            "2026-12-24 21:30", AMS, "2026-12-28 09:00", 1, id="christmas_weekend_skipped"
        ),
        pytest.param(
            "2026-03-28 17:00", AMS, "2026-03-30 09:00", 2, id="dst_spring_forward_keeps_9"
        ),
        pytest.param("2026-10-24 17:00", AMS, "2026-10-26 09:00", 1, id="dst_fall_back_keeps_9"),
        pytest.param("2026-03-01 12:00", "Europe/London", "2026-03-02 09:00", 0, id="london"),
        pytest.param(
            "2026-03-07 17:00", "America/New_York", "2026-03-09 09:00", -4, id="new_york_dst"
        ),
    ],
)
def test_align_to_window(moment: str, tz: str, expected: str, utc_offset: int) -> None:
    at = align_to_window(NL, tz, local(moment, tz))
    assert at is not None
    assert at.tzinfo is UTC
    assert wall(at, tz) == expected
    assert to_local(at, tz).utcoffset() == timedelta(hours=utc_offset)


def test_no_window_at_all_gives_none() -> None:
    closed = CallPolicy(windows={})
    assert align_to_window(closed, AMS, local("2026-03-02 09:00")) is None


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        align_to_window(NL, AMS, datetime(2026, 3, 2, 9))


@pytest.mark.parametrize(
    ("window", "day", "opens", "closes"),
    [
        # 02:00-03:00 does not exist on 29 March: 02:30 is read as 03:30 (shifted by the gap).
        pytest.param("02:30-04:00", "2026-03-29", "2026-03-29 01:30", "2026-03-29 02:00", id="gap"),
        # 02:00-03:00 happens twice on 25 October: open at the first, close at the second.
        pytest.param(
            "00:00-02:30", "2026-10-25", "2026-10-24 22:00", "2026-10-25 01:30", id="overlap"
        ),
    ],
)
def test_dst_edge_times_never_shrink_a_window(
    window: str, day: str, opens: str, closes: str
) -> None:
    everyday = CallPolicy(windows={day: [TimeWindow.model_validate(window)] for day in Weekday})
    start = local(f"{day} 00:00")
    at = align_to_window(everyday, AMS, start)
    assert at == datetime.fromisoformat(opens).replace(tzinfo=UTC)
    assert window_end(everyday, AMS, at) == datetime.fromisoformat(closes).replace(tzinfo=UTC)


# --- how long a due slot waits ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "slot", "requested", "expected"),
    [
        pytest.param(
            NL, "2026-03-02 10:00", "2026-03-02 09:00", "2026-03-02 12:00", id="attempt_window"
        ),
        pytest.param(
            NL, "2026-03-02 20:00", "2026-03-02 09:00", "2026-03-02 21:00", id="window_end"
        ),
        pytest.param(NL, "2026-03-09 09:00", "2026-03-02 10:00", "2026-03-09 10:00", id="deadline"),
        pytest.param(
            demo_policy(),
            "2026-03-02 23:59:55",
            "2026-03-02 23:59",
            "2026-03-03 00:00:15",
            id="always_open_days_join_at_midnight",
        ),
    ],
)
def test_due_until_is_earliest_of_window_deadline_and_attempt_window(
    policy: CallPolicy, slot: str, requested: str, expected: str
) -> None:
    result = due_until(policy, AMS, local(slot), requested_at=local(requested))
    assert result == local(expected)


# --- the next slot ------------------------------------------------------------------------------

REQUESTED = "2026-03-02 10:00"  # a Monday; the default deadline is Monday 2026-03-09 10:00


def attempt(outcome: str, at: str, made: int = 1) -> dict[str, Any]:
    """The latest of `made` attempts: `outcome` at local time `at`."""
    return {"attempts_made": made, "last_outcome": outcome, "last_attempt_at": at}


@pytest.mark.parametrize(
    ("changes", "now", "kwargs", "expected"),
    [
        pytest.param({}, REQUESTED, {}, "2026-03-02 10:00", id="first_slot_right_away"),
        pytest.param(
            {"first_attempt_delay": timedelta(hours=12)},
            REQUESTED,
            {},
            "2026-03-03 09:00",
            id="first_attempt_delay_then_aligned",
        ),
        pytest.param(
            {},
            "2026-03-02 20:10",
            attempt("no_answer", "2026-03-02 20:00"),
            "2026-03-03 09:00",
            id="no_answer_at_20_retries_next_morning",
        ),
        pytest.param(
            {},
            "2026-03-02 14:01",
            attempt("busy", "2026-03-02 14:00"),
            "2026-03-02 14:30",
            id="busy_retries_30_minutes_later",
        ),
        pytest.param(
            {},
            "2026-03-02 20:46",
            attempt("busy", "2026-03-02 20:45"),
            "2026-03-03 09:00",
            id="busy_late_evening_retries_next_morning",
        ),
        pytest.param(
            {},
            "2026-03-02 11:00",
            attempt("voicemail", "2026-03-02 11:00", made=2),
            "2026-03-03 11:00",
            id="voicemail_retries_a_day_later",
        ),
        pytest.param(
            {},
            "2026-03-03 15:00",
            attempt("busy", "2026-03-02 14:00"),
            "2026-03-03 15:00",
            id="never_before_now",
        ),
        pytest.param(
            {},
            "2026-03-02 11:00",
            attempt("wrong_number", "2026-03-02 11:00"),
            ExpiryReason.FINAL_OUTCOME,
            id="wrong_number_expires",
        ),
        pytest.param(
            {},
            "2026-03-04 11:00",
            attempt("busy", "2026-03-04 11:00", made=5),
            ExpiryReason.MAX_ATTEMPTS,
            id="max_attempts_expires",
        ),
        pytest.param(
            {"max_attempts": 1},
            "2026-03-02 11:00",
            attempt("busy", "2026-03-02 11:00"),
            ExpiryReason.MAX_ATTEMPTS,
            id="single_attempt_policy_expires_after_one",
        ),
        pytest.param(
            {"deadline": timedelta(days=5)},
            "2026-03-06 20:01",
            attempt("no_answer", "2026-03-06 20:00"),
            ExpiryReason.DEADLINE,
            id="slot_exactly_at_deadline_expires",
        ),
        pytest.param(
            {"deadline": timedelta(days=6, hours=12)},
            "2026-03-07 15:01",
            attempt("voicemail", "2026-03-07 15:00"),
            ExpiryReason.DEADLINE,
            id="next_window_beyond_deadline_expires",
        ),
        pytest.param({}, "2026-03-09 10:00", {}, ExpiryReason.DEADLINE, id="now_past_deadline"),
        pytest.param(
            {},
            "2026-03-02 14:01",
            {**attempt("busy", "2026-03-02 14:00"), "callback_at": "2026-03-04 15:00"},
            "2026-03-04 15:00",
            id="callback_honoured",
        ),
        pytest.param(
            {},
            "2026-03-02 11:01",
            {**attempt("voicemail", "2026-03-02 11:00"), "callback_at": "2026-03-02 12:00"},
            "2026-03-02 12:00",
            id="callback_sooner_than_retry_delay",
        ),
        pytest.param(
            {},
            "2026-03-02 11:01",
            {"callback_at": "2026-03-08 12:00"},
            "2026-03-09 09:00",
            id="callback_on_sunday_moves_to_monday",
        ),
        pytest.param(
            {},
            "2026-03-02 11:01",
            {"callback_at": "2026-03-09 12:00"},
            ExpiryReason.DEADLINE,
            id="callback_after_deadline_expires",
        ),
        pytest.param(
            {},
            "2026-03-02 12:00",
            {"missed_slot_at": "2026-03-02 12:00"},
            "2026-03-02 13:00",
            id="missed_slot_waits_missed_slot_delay",
        ),
        pytest.param(
            {},
            "2026-03-02 20:30",
            {"missed_slot_at": "2026-03-02 20:30"},
            "2026-03-03 09:00",
            id="missed_slot_late_evening_next_morning",
        ),
        pytest.param(
            {},
            "2026-03-02 16:00",
            {**attempt("no_answer", "2026-03-02 14:00"), "missed_slot_at": "2026-03-02 16:00"},
            "2026-03-02 18:00",
            id="missed_slot_never_sooner_than_retry_delay",
        ),
    ],
)
def test_next_slot(
    changes: dict[str, Any], now: str, kwargs: dict[str, Any], expected: str | ExpiryReason
) -> None:
    policy = NL.model_copy(update=changes)
    args: dict[str, Any] = {
        "attempts_made": 0,
        "last_outcome": None,
        "last_attempt_at": None,
        **{k: local(v) if k.endswith("_at") else v for k, v in kwargs.items()},
    }
    if args["last_outcome"] is not None:
        args["last_outcome"] = AttemptOutcome(args["last_outcome"])
    decision = next_slot(policy, tz=AMS, requested_at=local(REQUESTED), now=local(now), **args)
    if isinstance(expected, ExpiryReason):
        assert decision == Expire(expected)
    else:
        assert isinstance(decision, Slot)
        assert wall(decision.at) == expected


def test_slot_in_new_york_follows_new_york_windows() -> None:
    requested = local("2026-03-07 17:00", "America/New_York")  # Saturday evening
    decision = first_slot(NL, "America/New_York", requested)
    assert decision == Slot(
        at=datetime(2026, 3, 9, 13, tzinfo=UTC), due_until=datetime(2026, 3, 9, 15, tzinfo=UTC)
    )


# --- callbacks asked for by the donor -----------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "now", "expected"),
    [
        pytest.param("2026-03-04 15:00", "2026-03-02 11:00", "2026-03-04 15:00", id="accepted"),
        pytest.param("2026-03-06 22:00", "2026-03-02 11:00", "2026-03-07 10:00", id="aligned"),
        pytest.param(
            "2026-03-02 10:58", "2026-03-02 11:00", "2026-03-02 11:00", id="just_past_is_now"
        ),
        pytest.param("2026-03-02 09:00", "2026-03-02 11:00", "in the past", id="past_refused"),
        pytest.param(
            "2026-03-09 10:00",
            "2026-03-02 11:00",
            "after the call's deadline",
            id="after_deadline_refused",
        ),
        pytest.param(
            "2026-03-08 12:00",
            "2026-03-02 11:00",
            "no calling window",
            id="no_window_before_deadline_refused",
        ),
    ],
)
def test_validate_callback(at: str, now: str, expected: str) -> None:
    # A deadline on Monday 08:00 leaves no window after a Sunday callback.
    policy = NL.model_copy(update={"deadline": timedelta(days=6, hours=22)})
    if expected[0].isdigit():
        slot = validate_callback(policy, AMS, local(REQUESTED), local(at), local(now))
        assert wall(slot) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            validate_callback(policy, AMS, local(REQUESTED), local(at), local(now))


# --- helpers for people -------------------------------------------------------------------------


def test_format_local() -> None:
    assert format_local(datetime(2026, 12, 1, 8, tzinfo=UTC), AMS) == "Tue 2026-12-01 09:00 CET"
    assert format_local(datetime(2026, 7, 1, 7, tzinfo=UTC), AMS) == "Wed 2026-07-01 09:00 CEST"


def test_effective_timezone_prefers_the_call() -> None:
    assert effective_timezone(NL, "Europe/London") == "Europe/London"
    assert effective_timezone(NL) == AMS
    assert effective_timezone(NL.model_copy(update={"timezone": None})) == AMS


def test_call_deadline() -> None:
    assert call_deadline(NL, local(REQUESTED)) == local("2026-03-09 10:00")


# --- properties ---------------------------------------------------------------------------------

ZONES = ["Europe/Amsterdam", "Europe/London", "America/New_York"]
POLICIES = [NL, NL.model_copy(update={"deadline": timedelta(days=30)}), demo_policy()]

requested_ats = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 1), timezones=st.just(UTC)
)
offsets = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10))
outcomes = st.sampled_from(list(AttemptOutcome))


def assert_valid_slot(
    policy: CallPolicy, tz: str, slot: Slot, requested_at: datetime, now: datetime
) -> None:
    at = to_local(slot.at, tz)
    minute = at.hour * 60 + at.minute
    windows = policy.windows.get(Weekday.of(at.date()), [])
    assert any(w.start_minute <= minute < w.end_minute for w in windows), "outside a window"
    assert at.date() not in policy.blackout_dates
    assert now <= slot.at < slot.due_until <= call_deadline(policy, requested_at)
    assert slot.due_until <= slot.at + policy.attempt_window


@settings(max_examples=200, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    tz=st.sampled_from(ZONES),
    requested_at=requested_ats,
    now_after=offsets,
    attempts_made=st.integers(min_value=0, max_value=6),
    last=st.none() | st.tuples(outcomes, offsets),
    callback_after=st.none() | offsets,
    missed_after=st.none() | offsets,
)
def test_every_slot_is_in_a_window_before_the_deadline_and_not_before_now(
    policy: CallPolicy,
    tz: str,
    requested_at: datetime,
    now_after: timedelta,
    attempts_made: int,
    last: tuple[AttemptOutcome, timedelta] | None,
    callback_after: timedelta | None,
    missed_after: timedelta | None,
) -> None:
    now = requested_at + now_after
    decision = next_slot(
        policy,
        tz=tz,
        requested_at=requested_at,
        now=now,
        attempts_made=attempts_made,
        last_outcome=last[0] if last else None,
        last_attempt_at=requested_at + last[1] if last else None,
        callback_at=requested_at + callback_after if callback_after is not None else None,
        missed_slot_at=requested_at + missed_after if missed_after is not None else None,
    )
    if isinstance(decision, Slot):
        assert_valid_slot(policy, tz, decision, requested_at, now)
    elif last and last[0] in policy.final_outcomes:
        assert decision.reason is ExpiryReason.FINAL_OUTCOME
    elif attempts_made >= policy.max_attempts:
        assert decision.reason is ExpiryReason.MAX_ATTEMPTS
    else:
        assert decision.reason is ExpiryReason.DEADLINE


@settings(max_examples=200, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    tz=st.sampled_from(ZONES),
    requested_at=requested_ats,
    # Each step: None = the due slot is missed; else an attempt (outcome, share of the due span).
    steps=st.lists(st.none() | st.tuples(outcomes, st.floats(0, 1)), min_size=1, max_size=12),
)
def test_slots_of_a_call_only_move_forward(
    policy: CallPolicy,
    tz: str,
    requested_at: datetime,
    steps: list[tuple[AttemptOutcome, float] | None],
) -> None:
    now, attempts = requested_at, 0
    last_outcome: AttemptOutcome | None = None
    last_attempt_at: datetime | None = None
    missed_slot_at: datetime | None = None
    previous: Slot | None = None
    for step in steps:
        decision = next_slot(
            policy,
            tz=tz,
            requested_at=requested_at,
            now=now,
            attempts_made=attempts,
            last_outcome=last_outcome,
            last_attempt_at=last_attempt_at,
            missed_slot_at=missed_slot_at,
        )
        if isinstance(decision, Expire):
            return
        assert_valid_slot(policy, tz, decision, requested_at, now)
        if previous is not None:
            assert decision.at > previous.at
        previous = decision
        if step is None:
            missed_slot_at = now = decision.due_until
        else:
            outcome, share = step
            now = decision.at + (decision.due_until - decision.at) * share
            attempts, last_outcome, last_attempt_at = attempts + 1, outcome, now
            missed_slot_at = None
