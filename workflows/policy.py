"""Call policies: when a call may be attempted, how often, and until when.

A `CallPolicy` is plain data. It is resolved once, on the worker (`PolicyBook.resolve`, inside an
activity), from `policies.toml` plus the call's own overrides, and handed to the workflow in full,
public holidays already expanded into concrete `blackout_dates`. So a policy edit or a new holiday
release never changes the history of a running call.

This module is imported by workflow code: at top level it touches only stdlib and pydantic. The
TOML file and the `holidays` package are read lazily, inside the resolution functions.
"""

from __future__ import annotations

import functools
import importlib.resources
import itertools
import re
import uuid
from datetime import date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from tapraise.errors import describe_validation_error
from tapraise.models import CamelModel

DEFAULT_POLICY_FILE: Final = Path(__file__).with_name("policies.toml")
DEFAULT_TIMEZONE: Final = "Europe/Amsterdam"
MINUTES_PER_DAY: Final = 24 * 60

# How far past the deadline holidays are expanded, so that a slot aligned just past the deadline
# (and then expired) or a late clock skew never lands on an unlisted holiday.
_HOLIDAY_MARGIN: Final = timedelta(days=3)


class AttemptOutcome(StrEnum):
    """Why an attempt did not reach the donor (reported by the agent's tooling)."""

    NO_ANSWER = "no_answer"
    BUSY = "busy"
    VOICEMAIL = "voicemail"
    WRONG_NUMBER = "wrong_number"


class Weekday(StrEnum):
    """Keys of `CallPolicy.windows`, in `date.weekday()` order."""

    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"

    @classmethod
    def of(cls, day: date) -> Weekday:
        """The weekday of a calendar date."""
        return _WEEKDAYS[day.weekday()]


_WEEKDAYS: Final = tuple(Weekday)


def _non_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative")
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be positive")
    return value


# pydantic already reads ISO-8601 ("PT4H", "P7D") and numbers of seconds into a timedelta and
# writes ISO-8601 back on the wire.
Duration = Annotated[timedelta, AfterValidator(_non_negative)]
PositiveDuration = Annotated[timedelta, AfterValidator(_positive)]


class _Wire(CamelModel):
    """camelCase on the wire, snake_case in Python (and accepted in TOML); unknown fields
    are refused; frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_CLOCK = re.compile(r"^(\d{2}):(\d{2})$")


def _minutes(clock: str) -> int:
    match = _CLOCK.match(clock)
    if not match:
        raise ValueError(f"{clock!r} is not a time of day like '09:00'")
    hours, minutes = int(match[1]), int(match[2])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{clock!r} is not a time of day between 00:00 and 24:00")
    return hours * 60 + minutes


class TimeWindow(_Wire):
    """A calling window within one local day: `start` inclusive, `end` exclusive.

    Times are "HH:MM" in the donor's local time; `end` may be "24:00" (midnight at the end of the
    day). In TOML a window may also be written as one string, "09:00-21:00".
    """

    start: str = "09:00"
    end: str = "21:00"

    @model_validator(mode="before")
    @classmethod
    def _from_range(cls, value: Any) -> Any:
        if isinstance(value, str):
            start, sep, end = value.partition("-")
            if not sep:
                raise ValueError(f"{value!r} is not a window like '09:00-21:00'")
            return {"start": start.strip(), "end": end.strip()}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if _minutes(self.start) == MINUTES_PER_DAY:
            raise ValueError("start may not be 24:00")
        if self.start_minute >= self.end_minute:
            raise ValueError(f"start {self.start} must be before end {self.end}")
        return self

    @property
    def start_minute(self) -> int:
        """Minutes after local midnight at which the window opens."""
        return _minutes(self.start)

    @property
    def end_minute(self) -> int:
        """Minutes after local midnight at which the window closes (1440 for "24:00")."""
        return _minutes(self.end)


def _sorted_disjoint(windows: list[TimeWindow]) -> list[TimeWindow]:
    windows = sorted(windows, key=lambda w: w.start_minute)
    for before, after in itertools.pairwise(windows):
        if after.start_minute < before.end_minute:
            raise ValueError(
                f"windows {before.start}-{before.end} and {after.start}-{after.end} overlap"
            )
    return windows


DayWindows = Annotated[list[TimeWindow], AfterValidator(_sorted_disjoint)]


_ZONE_NAME = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")


@functools.cache
def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`, read from the pinned `tzdata` package only.

    Never from the host's zone database: every worker (and every replay) must compute the same
    calling windows, whatever system it runs on. Upgrading `tzdata` is a deliberate release.

    Raises:
        ZoneInfoNotFoundError: when `tzdata` has no zone of that name.
    """
    if not _ZONE_NAME.fullmatch(name):
        raise ZoneInfoNotFoundError(f"not an IANA time zone name: {name!r}")
    resource = importlib.resources.files("tzdata.zoneinfo").joinpath(*name.split("/"))
    try:
        with resource.open("rb") as data:
            return ZoneInfo.from_file(data, key=name)
    except (OSError, ValueError):
        raise ZoneInfoNotFoundError(f"no time zone {name!r} in tzdata") from None


def valid_timezone(value: str | None) -> str | None:
    """A pydantic validator: `value` names a zone `tzdata` has (None passes)."""
    if value is None:
        return None
    try:
        zone(value)
    except ZoneInfoNotFoundError:
        raise ValueError(f"unknown IANA time zone {value!r}") from None
    return value


# The longest IANA name is 32 characters ("America/Argentina/ComodRivadavia"): the bound leaves
# room for new ones and keeps a refusal, which quotes the name, short.
TIMEZONE_MAX_LENGTH: Final = 64
TimeZoneName = Annotated[str, Field(max_length=TIMEZONE_MAX_LENGTH), AfterValidator(valid_timezone)]
ResultCode = Annotated[str, Field(min_length=1, max_length=64)]

_OFFICE_HOURS: Final = [TimeWindow(start="09:00", end="21:00")]


def _default_windows() -> dict[Weekday, list[TimeWindow]]:
    weekdays = (Weekday.MON, Weekday.TUE, Weekday.WED, Weekday.THU, Weekday.FRI)
    windows = {day: list(_OFFICE_HOURS) for day in weekdays}
    windows[Weekday.SAT] = [TimeWindow(start="10:00", end="16:00")]
    windows[Weekday.SUN] = []
    return windows


def _default_retry_delays() -> dict[AttemptOutcome, timedelta]:
    return {
        AttemptOutcome.NO_ANSWER: timedelta(hours=4),
        AttemptOutcome.BUSY: timedelta(minutes=30),
        AttemptOutcome.VOICEMAIL: timedelta(days=1),
    }


class CallPolicy(_Wire):
    """The complete, resolved scheduling policy of one call.

    Every field has a default (the shipped Dutch defaults) so that recorded histories keep
    decoding when fields are added. A weekday missing from `windows` has no calling window.
    """

    windows: dict[Weekday, DayWindows] = Field(default_factory=_default_windows)
    blackout_dates: list[date] = Field(default_factory=list)
    holiday_countries: list[str] = Field(default_factory=lambda: ["NL"])
    first_attempt_delay: Duration = timedelta(0)
    retry_delays: dict[AttemptOutcome, Duration] = Field(default_factory=_default_retry_delays)
    final_outcomes: list[AttemptOutcome] = Field(
        default_factory=lambda: [AttemptOutcome.WRONG_NUMBER]
    )
    max_attempts: int = Field(default=5, ge=1)
    # The result codes TapRaise accepts for this organization (None: any, as TapRaise publishes
    # no list). A completion with another code is refused before anything is sent.
    result_codes: list[ResultCode] | None = None
    deadline: PositiveDuration = timedelta(days=7)
    attempt_window: PositiveDuration = timedelta(hours=2)
    missed_slot_delay: Duration = timedelta(hours=1)
    # Whether a slot's attempt window shows as phase `due`. Off, the call stays `scheduled`
    # (its `NextAttemptAt` passed) until a report or the window's end: one durable timer and
    # one search-attribute upsert less per slot (Temporal Cloud bills both). The shipped
    # policies switch it off; the model's default stays on, because a policy recorded in a
    # running call's history before this field existed meant it on.
    due_phase: bool = True
    timezone: TimeZoneName | None = DEFAULT_TIMEZONE
    # A safety bound, not a calling rule: past this many history events the call continues as a
    # new run with its state carried over. A real call stays far below it.
    history_limit: int = Field(default=10_000, ge=20)

    @field_validator("blackout_dates")
    @classmethod
    def _unique_dates(cls, value: list[date]) -> list[date]:
        return sorted(set(value))

    @model_validator(mode="after")
    def _every_retry_has_a_delay(self) -> Self:
        missing = [
            o.value
            for o in AttemptOutcome
            if o not in self.final_outcomes and o not in self.retry_delays
        ]
        if missing:
            raise ValueError(
                f"retryDelays: no delay for non-final outcome(s) {', '.join(missing)} "
                "(give one, or list the outcome in finalOutcomes)"
            )
        return self


_NULLABLE: Final = frozenset({"timezone", "result_codes"})


class PolicyOverrides(_Wire):
    """A partial policy: only the fields given replace the inherited ones.

    `windows` and `retryDelays` merge per key (`{"windows": {"sat": []}}` closes Saturdays and
    keeps the other days); every other field is replaced as a whole.
    """

    windows: dict[Weekday, DayWindows] | None = None
    blackout_dates: list[date] | None = None
    holiday_countries: list[str] | None = None
    first_attempt_delay: Duration | None = None
    retry_delays: dict[AttemptOutcome, Duration] | None = None
    final_outcomes: list[AttemptOutcome] | None = None
    max_attempts: int | None = Field(default=None, ge=1)
    result_codes: list[ResultCode] | None = None
    history_limit: int | None = Field(default=None, ge=20)
    deadline: PositiveDuration | None = None
    attempt_window: PositiveDuration | None = None
    missed_slot_delay: Duration | None = None
    due_phase: bool | None = None
    timezone: TimeZoneName | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> Self:
        for name in self.model_fields_set - _NULLABLE:
            if getattr(self, name) is None:
                raise ValueError(f"{to_camel(name)} may not be null (leave it out to inherit)")
        return self

    def given(self) -> dict[str, Any]:
        """The fields this override names, by Python name."""
        return {name: getattr(self, name) for name in self.model_fields_set}

    @model_serializer(mode="wrap")
    def _only_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Written as given, so that the JSON in a workflow's history reads back the same.
        data: dict[str, Any] = handler(self)
        given = {type(self).model_fields[name].alias or name for name in self.model_fields_set}
        given |= self.model_fields_set
        return {key: value for key, value in data.items() if key in given}


class OrganizationPolicy(PolicyOverrides):
    """Overrides for one organization, optionally refined per call type."""

    types: dict[str, PolicyOverrides] = Field(default_factory=dict)

    def given(self) -> dict[str, Any]:
        """The policy fields this override names (without `types`)."""
        return {k: v for k, v in super().given().items() if k != "types"}


_MERGED_PER_KEY: Final = frozenset({"windows", "retry_delays"})


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for name, value in layer.items():
        if name in _MERGED_PER_KEY and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return merged


def expand_holidays(countries: list[str], first: date, last: date) -> list[date]:
    """Public holidays of `countries` between `first` and `last` (inclusive), sorted.

    A country is an ISO code ("NL") or a code with a subdivision ("DE-BY"). Runs on the worker
    only: it imports the `holidays` package, whose data is not part of workflow code.

    Raises:
        ValueError: for a country or subdivision the `holidays` package does not know.
    """
    import holidays

    found: set[date] = set()
    years = list(range(first.year, last.year + 1))
    for code in countries:
        country, _, subdivision = code.partition("-")
        try:
            calendar = holidays.country_holidays(
                country.upper(), subdiv=subdivision or None, years=years
            )
        except NotImplementedError:
            raise ValueError(f"holidayCountries: unknown country {code!r}") from None
        found.update(day for day in calendar if first <= day <= last)
    return sorted(found)


class PolicyBook(_Wire):
    """The policies file: shared defaults, per call type, per organization (and type).

    Resolution order, each layer replacing only what it names:
    `defaults` → `types.<type>` → `organizations.<uuid>` → `organizations.<uuid>.types.<type>`
    → the call's own overrides.
    """

    defaults: PolicyOverrides = Field(default_factory=PolicyOverrides)
    types: dict[str, PolicyOverrides] = Field(default_factory=dict)
    organizations: dict[str, OrganizationPolicy] = Field(default_factory=dict)

    @field_validator("organizations")
    @classmethod
    def _organization_uuids(
        cls, value: dict[str, OrganizationPolicy]
    ) -> dict[str, OrganizationPolicy]:
        normalized: dict[str, OrganizationPolicy] = {}
        for key, policy in value.items():
            try:
                normalized[str(uuid.UUID(key))] = policy
            except ValueError:
                raise ValueError(f"organization key {key!r} is not a UUID") from None
        return normalized

    @model_validator(mode="after")
    def _known_types(self) -> Self:
        for org, policy in self.organizations.items():
            unknown = sorted(set(policy.types) - set(self.types))
            if unknown:
                raise ValueError(
                    f"organizations.{org}.types: unknown call type(s) {', '.join(unknown)}"
                )
        return self

    @classmethod
    def load(cls, path: Path | None = None) -> PolicyBook:
        """Read a policies file (default: the `policies.toml` shipped next to this module).

        Raises:
            ValueError: naming the file and the offending field when the file is not valid
                TOML or not a valid policy book. A missing file raises `FileNotFoundError`.
        """
        import tomllib

        path = path or DEFAULT_POLICY_FILE
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: not valid TOML: {error}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ValueError(f"{path}: {describe_validation_error(error)}") from None

    @property
    def call_types(self) -> list[str]:
        """The call types this book has a policy for."""
        return sorted(self.types)

    def _organization(self, organization_uuid: str | uuid.UUID | None) -> OrganizationPolicy | None:
        if not organization_uuid:
            return None
        try:
            key = str(uuid.UUID(str(organization_uuid)))
        except ValueError:
            raise ValueError(f"organization {organization_uuid!r} is not a UUID") from None
        return self.organizations.get(key)

    def resolve(
        self,
        call_type: str,
        organization_uuid: str | uuid.UUID | None,
        overrides: PolicyOverrides | dict[str, Any] | None,
        *,
        requested_at: datetime,
    ) -> CallPolicy:
        """The complete policy of one call, holidays expanded into `blackout_dates`.

        Args:
            call_type: the call's type, e.g. "verification".
            organization_uuid: the owning/calling organization, if any (unknown ones just get
                no organization layer).
            overrides: the call's own partial policy (camelCase or snake_case keys).
            requested_at: when the call was requested; holidays are expanded from its date
                through its deadline plus a few days.

        Raises:
            ValueError: for an unknown call type or an invalid resulting policy (naming the
                field).
        """
        call_type = str(call_type)  # a StrEnum member reads as its value
        if call_type not in self.types:
            raise ValueError(
                f"unknown call type {call_type!r}; the policies know {', '.join(self.call_types)}"
            )
        try:
            if isinstance(overrides, dict):
                overrides = PolicyOverrides.model_validate(overrides)
            layers = [self.defaults.given(), self.types[call_type].given()]
            org = self._organization(organization_uuid)
            if org is not None:
                layers.append(org.given())
                if call_type in org.types:
                    layers.append(org.types[call_type].given())
            if overrides is not None:
                layers.append(overrides.given())
            merged: dict[str, Any] = {}
            for layer in layers:
                merged = _merge(merged, layer)
            policy = CallPolicy.model_validate(merged)
        except ValidationError as error:
            raise ValueError(
                f"policy for a {call_type} call: {describe_validation_error(error)}"
            ) from None
        return with_holidays(policy, requested_at)


def with_holidays(policy: CallPolicy, requested_at: datetime) -> CallPolicy:
    """`policy` with the public holidays of its `holiday_countries` added to `blackout_dates`.

    The range covers the day before `requested_at` (its local date may be a day behind UTC)
    through the deadline plus a small margin. Runs on the worker only.
    """
    if not policy.holiday_countries:
        return policy
    first = requested_at.date() - timedelta(days=1)
    last = (requested_at + policy.deadline + _HOLIDAY_MARGIN).date()
    found = expand_holidays(policy.holiday_countries, first, last)
    return policy.model_copy(
        update={"blackout_dates": sorted(set(policy.blackout_dates) | set(found))}
    )


def demo_policy() -> CallPolicy:
    """A compressed policy for demos: minutes become seconds, every phase within a minute.

    Windows are always open, there are no blackouts or holidays, retries follow in seconds, a
    due slot waits 20 s for a report and the call expires three minutes after it was requested.
    """
    always = [TimeWindow(start="00:00", end="24:00")]
    return CallPolicy(
        windows=dict.fromkeys(Weekday, always),
        blackout_dates=[],
        holiday_countries=[],
        first_attempt_delay=timedelta(seconds=2),
        retry_delays={
            AttemptOutcome.NO_ANSWER: timedelta(seconds=8),
            AttemptOutcome.BUSY: timedelta(seconds=4),
            AttemptOutcome.VOICEMAIL: timedelta(seconds=12),
        },
        final_outcomes=[AttemptOutcome.WRONG_NUMBER],
        max_attempts=5,
        deadline=timedelta(minutes=3),
        attempt_window=timedelta(seconds=20),
        missed_slot_delay=timedelta(seconds=5),
        timezone=DEFAULT_TIMEZONE,
        # The demo shows every phase, `due` included.
        due_phase=True,
    )
