"""Call policies: the shipped file, layered resolution, holidays, validation and the wire format."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from tests.helpers import first_slot
from workflows.policy import (
    AttemptOutcome,
    CallPolicy,
    PolicyBook,
    PolicyOverrides,
    TimeWindow,
    Weekday,
    demo_policy,
)
from workflows.schedule import Slot, align_to_window

pytestmark = pytest.mark.timeout(60)

ORG = "2f1c9a4e-8d3b-4c1a-9e7f-5b6d0c2a1e3f"
OTHER_ORG = "7d0e3b52-1111-4a2b-8c3d-9e8f7a6b5c4d"
REQUESTED_AT = datetime(2026, 4, 20, 8, tzinfo=UTC)  # a week before King's Day


@pytest.fixture(scope="module")
def book() -> PolicyBook:
    return PolicyBook.load()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policies.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the shipped file ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call_type", "deadline_days"),
    [("verification", 7), ("happy_call", 14), ("winback", 30)],
)
def test_shipped_policy_per_call_type(book: PolicyBook, call_type: str, deadline_days: int) -> None:
    policy = book.resolve(call_type, None, None, requested_at=REQUESTED_AT)
    assert policy.deadline == timedelta(days=deadline_days)
    assert policy.windows[Weekday.MON] == [TimeWindow(start="09:00", end="21:00")]
    assert policy.windows[Weekday.FRI] == [TimeWindow(start="09:00", end="21:00")]
    assert policy.windows[Weekday.SAT] == [TimeWindow(start="10:00", end="16:00")]
    assert policy.windows[Weekday.SUN] == []
    assert policy.retry_delays == {
        AttemptOutcome.NO_ANSWER: timedelta(hours=4),
        AttemptOutcome.BUSY: timedelta(minutes=30),
        AttemptOutcome.VOICEMAIL: timedelta(days=1),
    }
    assert policy.final_outcomes == [AttemptOutcome.WRONG_NUMBER]
    assert (policy.max_attempts, policy.timezone) == (5, "Europe/Amsterdam")
    assert (policy.attempt_window, policy.missed_slot_delay) == (
        timedelta(hours=2),
        timedelta(hours=1),
    )
    assert policy.first_attempt_delay == timedelta(0)
    assert policy.holiday_countries == ["NL"]


def test_model_defaults_match_the_shipped_defaults(book: PolicyBook) -> None:
    """A history recorded before a field existed decodes to what the file would have given."""
    resolved = book.resolve("verification", None, None, requested_at=REQUESTED_AT)
    shipped = resolved.model_copy(update={"blackout_dates": []})
    # One exception: the phase `due`, on when the field did not exist, is off in the file.
    assert not shipped.due_phase and CallPolicy().due_phase
    assert shipped.model_copy(update={"due_phase": True}) == CallPolicy()


def test_unknown_call_type_is_refused(book: PolicyBook) -> None:
    with pytest.raises(ValueError, match=r"unknown call type 'survey'.*verification"):
        book.resolve("survey", None, None, requested_at=REQUESTED_AT)


# --- layers -------------------------------------------------------------------------------------

LAYERED = f"""
[defaults]
max_attempts = 5
deadline = "P7D"
[defaults.windows]
mon = ["09:00-21:00"]
sat = ["10:00-16:00"]
[defaults.retry_delays]
no_answer = "PT4H"
busy = "PT30M"
voicemail = "P1D"

[types.verification]
[types.winback]
deadline = "P30D"

[organizations."{ORG.upper()}"]
max_attempts = 3
[organizations."{ORG.upper()}".windows]
sat = []
[organizations."{ORG.upper()}".types.winback]
deadline = "P21D"
"""


@pytest.mark.parametrize(
    ("call_type", "organization", "max_attempts", "deadline_days", "saturday"),
    [
        pytest.param("verification", None, 5, 7, ["10:00-16:00"], id="no_organization"),
        pytest.param("verification", OTHER_ORG, 5, 7, ["10:00-16:00"], id="organization_unlisted"),
        pytest.param("verification", ORG, 3, 7, [], id="organization_overrides"),
        pytest.param("winback", None, 5, 30, ["10:00-16:00"], id="type_overrides_defaults"),
        pytest.param("winback", ORG, 3, 21, [], id="organization_type_overrides_type"),
    ],
)
def test_layers_override_only_what_they_name(
    tmp_path: Path,
    call_type: str,
    organization: str | None,
    max_attempts: int,
    deadline_days: int,
    saturday: list[str],
) -> None:
    book = PolicyBook.load(write(tmp_path, LAYERED))
    policy = book.resolve(call_type, organization, None, requested_at=REQUESTED_AT)
    assert policy.max_attempts == max_attempts
    assert policy.deadline == timedelta(days=deadline_days)
    assert policy.windows[Weekday.SAT] == [TimeWindow.model_validate(w) for w in saturday]
    assert policy.windows[Weekday.MON] == [TimeWindow(start="09:00", end="21:00")]


@pytest.mark.parametrize(
    ("overrides", "changed"),
    [
        pytest.param({"maxAttempts": 1}, {"max_attempts": 1}, id="max_attempts_only"),
        pytest.param(PolicyOverrides(max_attempts=1), {"max_attempts": 1}, id="typed_overrides"),
        pytest.param({"max_attempts": 2}, {"max_attempts": 2}, id="snake_case_accepted"),
        pytest.param(
            {"retryDelays": {"busy": "PT10M"}},
            {
                "retry_delays": {
                    AttemptOutcome.NO_ANSWER: timedelta(hours=4),
                    AttemptOutcome.BUSY: timedelta(minutes=10),
                    AttemptOutcome.VOICEMAIL: timedelta(days=1),
                }
            },
            id="retry_delays_merge_per_outcome",
        ),
        pytest.param({"timezone": "Europe/London"}, {"timezone": "Europe/London"}, id="timezone"),
        pytest.param({}, {}, id="empty_changes_nothing"),
        pytest.param(None, {}, id="none_changes_nothing"),
    ],
)
def test_call_overrides_change_only_what_they_name(
    book: PolicyBook, overrides: Any, changed: dict[str, Any]
) -> None:
    base = book.resolve("verification", None, None, requested_at=REQUESTED_AT)
    policy = book.resolve("verification", None, overrides, requested_at=REQUESTED_AT)
    assert policy == base.model_copy(update=changed)


def test_closing_a_day_keeps_the_others(book: PolicyBook) -> None:
    policy = book.resolve("verification", None, {"windows": {"sat": []}}, requested_at=REQUESTED_AT)
    assert policy.windows[Weekday.SAT] == []
    assert policy.windows[Weekday.MON] == [TimeWindow(start="09:00", end="21:00")]


def test_demo_policy_passes_through_as_call_overrides(book: PolicyBook) -> None:
    demo = demo_policy()
    overrides = demo.model_dump(mode="json")
    assert book.resolve("winback", ORG, overrides, requested_at=REQUESTED_AT) == demo


# --- holidays -----------------------------------------------------------------------------------


def test_holidays_are_expanded_into_blackout_dates(book: PolicyBook) -> None:
    policy = book.resolve("verification", None, None, requested_at=REQUESTED_AT)
    assert date(2026, 4, 27) in policy.blackout_dates  # King's Day
    # Only the call's lifetime (plus a small margin) is expanded.
    assert date(2026, 12, 25) not in policy.blackout_dates
    winter = book.resolve("winback", None, None, requested_at=datetime(2026, 12, 1, tzinfo=UTC))
    assert {date(2026, 12, 25), date(2026, 12, 26), date(2027, 1, 1)} <= set(winter.blackout_dates)


def test_holidays_merge_with_explicit_blackout_dates(book: PolicyBook) -> None:
    overrides = {"blackoutDates": ["2026-04-28", "2026-04-27", "2026-04-28"]}
    policy = book.resolve("verification", None, overrides, requested_at=REQUESTED_AT)
    assert policy.blackout_dates == [date(2026, 4, 27), date(2026, 4, 28)]


def test_other_countries_and_subdivisions(book: PolicyBook) -> None:
    overrides = {"holidayCountries": ["GB", "DE-BY"], "deadline": "P60D"}
    policy = book.resolve("verification", None, overrides, requested_at=REQUESTED_AT)
    assert date(2026, 5, 4) in policy.blackout_dates  # Early May bank holiday (GB)
    assert date(2026, 6, 4) in policy.blackout_dates  # Corpus Christi (Bavaria)
    assert date(2026, 4, 27) not in policy.blackout_dates


def test_unknown_holiday_country_names_the_field(book: PolicyBook) -> None:
    with pytest.raises(ValueError, match=r"holidayCountries.*'XX'"):
        book.resolve("verification", None, {"holidayCountries": ["XX"]}, requested_at=REQUESTED_AT)


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("PT4H", timedelta(hours=4), id="iso_hours"),
        pytest.param("P7D", timedelta(days=7), id="iso_days"),
        pytest.param("PT30M", timedelta(minutes=30), id="iso_minutes"),
        pytest.param("P1DT2H", timedelta(days=1, hours=2), id="iso_days_and_hours"),
        pytest.param(14400, timedelta(hours=4), id="seconds"),
        pytest.param(1.5, timedelta(seconds=1.5), id="fractional_seconds"),
    ],
)
def test_durations_accept_iso_8601_and_seconds(value: Any, expected: timedelta) -> None:
    policy = CallPolicy.model_validate({"deadline": value, "retryDelays": {"busy": value, **_REST}})
    assert policy.deadline == expected
    assert policy.retry_delays[AttemptOutcome.BUSY] == expected


_REST = {"no_answer": "PT4H", "voicemail": "P1D"}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param({"maxAttempts": 0}, "maxAttempts", id="zero_attempts"),
        pytest.param({"deadline": "PT0S"}, "deadline", id="zero_deadline"),
        pytest.param({"retryDelays": {"busy": -60}}, "retryDelays", id="negative_delay"),
        pytest.param({"retryDelays": {"hung_up": 60}}, "retryDelays", id="unknown_outcome"),
        pytest.param({"finalOutcomes": ["hung_up"]}, "finalOutcomes", id="unknown_final_outcome"),
        pytest.param({"attemptWindow": "soon"}, "attemptWindow", id="unreadable_duration"),
        pytest.param({"timezone": "Mars/Olympus"}, "timezone", id="unknown_timezone"),
        pytest.param({"windows": {"mon": ["21:00-09:00"]}}, "windows", id="start_after_end"),
        pytest.param({"windows": {"mon": ["09:00-25:00"]}}, "windows", id="hour_25"),
        pytest.param({"windows": {"mon": ["24:00-24:00"]}}, "windows", id="start_at_24"),
        pytest.param({"windows": {"mon": ["9-17"]}}, "windows", id="sloppy_time"),
        pytest.param({"windows": {"mon": ["09:00-13:00", "12:00-17:00"]}}, "windows", id="overlap"),
        pytest.param({"windows": {"monday": []}}, "windows", id="unknown_weekday"),
        pytest.param({"blackoutDates": ["27-04-2026"]}, "blackoutDates", id="bad_date"),
        pytest.param({"maxAttempt": 3}, "maxAttempt", id="unknown_field"),
    ],
)
def test_bad_values_are_refused_naming_the_field(payload: dict[str, Any], field: str) -> None:
    for model in (CallPolicy, PolicyOverrides):
        with pytest.raises(ValidationError, match=field):
            model.model_validate(payload)


def test_every_non_final_outcome_needs_a_retry_delay() -> None:
    with pytest.raises(ValidationError, match=r"retryDelays: no delay for .*no_answer, voicemail"):
        CallPolicy.model_validate({"retryDelays": {"busy": 60}})
    policy = CallPolicy.model_validate(
        {"retryDelays": {"busy": 60}, "finalOutcomes": ["no_answer", "voicemail", "wrong_number"]}
    )
    assert policy.retry_delays == {AttemptOutcome.BUSY: timedelta(minutes=1)}


def test_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(AttemptOutcome).validate_python("hung_up")


def test_overrides_refuse_null_for_required_fields() -> None:
    with pytest.raises(ValidationError, match="maxAttempts may not be null"):
        PolicyOverrides.model_validate({"maxAttempts": None})
    assert PolicyOverrides.model_validate({"timezone": None}).given() == {"timezone": None}


def test_windows_may_end_at_midnight_and_touch() -> None:
    policy = CallPolicy.model_validate({"windows": {"sun": ["18:00-24:00", "12:00-18:00"]}})
    assert [(w.start, w.end) for w in policy.windows[Weekday.SUN]] == [
        ("12:00", "18:00"),
        ("18:00", "24:00"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "[types.verification]\nmax_attempts = 0\n",
            r"types\.verification\.max_attempts",
            id="bad_value",
        ),
        pytest.param(
            "[types.verification]\nmaxattempts = 3\n",
            r"types\.verification\.maxattempts",
            id="misspelt_field",
        ),
        pytest.param("[defaults]\ndeadline = 'a week'\n", r"defaults\.deadline", id="bad_duration"),
        pytest.param("[defaults\n", "not valid TOML", id="not_toml"),
        pytest.param("[colours]\n", "colours", id="unknown_section"),
        pytest.param(
            "[types.verification]\n[organizations.acme]\n",
            "organization key 'acme' is not a UUID",
            id="organization_not_a_uuid",
        ),
        pytest.param(
            f'[types.verification]\n[organizations."{ORG}".types.survey]\n',
            "unknown call type.*survey",
            id="organization_type_unknown",
        ),
    ],
)
def test_bad_policy_file_names_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=expected) as raised:
        PolicyBook.load(path)
    assert str(path) in str(raised.value)


# --- the wire format ----------------------------------------------------------------------------


def test_policy_round_trips_as_camel_case_json(book: PolicyBook) -> None:
    policy = book.resolve("winback", None, None, requested_at=REQUESTED_AT)
    wire = policy.model_dump_json()
    for key in ('"maxAttempts"', '"blackoutDates"', '"retryDelays"', '"attemptWindow"'):
        assert key in wire
    assert "max_attempts" not in wire
    assert '"deadline":"P30D"' in wire
    assert CallPolicy.model_validate_json(wire) == policy


def test_overrides_round_trip_and_keep_only_given_fields() -> None:
    overrides = PolicyOverrides.model_validate({"maxAttempts": 1, "deadline": 3600})
    wire = overrides.model_dump_json(exclude_unset=True)
    assert wire == '{"maxAttempts":1,"deadline":"PT1H"}'
    assert PolicyOverrides.model_validate_json(wire) == overrides


def test_old_recorded_policy_without_new_fields_still_decodes() -> None:
    assert CallPolicy.model_validate_json('{"maxAttempts": 2}').max_attempts == 2


# --- the demo policy ----------------------------------------------------------------------------


def test_demo_policy_is_valid_and_fast() -> None:
    demo = demo_policy()
    assert CallPolicy.model_validate_json(demo.model_dump_json()) == demo
    assert demo.blackout_dates == [] and demo.holiday_countries == []
    assert demo.deadline <= timedelta(minutes=5)
    assert demo.attempt_window <= timedelta(seconds=30)
    assert max(demo.retry_delays.values()) <= timedelta(seconds=15)
    # Always open: any moment, e.g. Sunday 03:00 on Christmas Day, is inside a window.
    christmas_night = datetime(2026, 12, 25, 2, tzinfo=UTC)
    assert align_to_window(demo, "Europe/Amsterdam", christmas_night) == christmas_night
    first = first_slot(demo, "Europe/Amsterdam", christmas_night)
    assert isinstance(first, Slot)
    assert first.at - christmas_night <= timedelta(seconds=5)
    assert first.due_until - first.at == demo.attempt_window
