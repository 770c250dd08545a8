"""Pydantic models for the TapRaise calls API, mark-processed and pagination.

Python attributes are snake_case; the wire speaks camelCase through aliases. Requests forbid
unknown fields so that a typo fails before it reaches TapRaise; responses ignore unknown fields
so that TapRaise can grow its payloads without breaking us. Nested value objects (result,
external metadata, attempt) appear in both directions and ignore unknown fields for the same
reason.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Self
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel


def format_timestamp(value: datetime) -> str:
    """Format an aware datetime the way TapRaise writes them: UTC, milliseconds, ``Z``.

    Args:
        value: A timezone-aware datetime.

    Returns:
        A string such as ``2023-05-01T00:00:00.000Z``.

    Raises:
        ValueError: If ``value`` is naive (its meaning would depend on the host's zone).
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_millis(value: datetime) -> datetime:
    """Return an aware datetime in UTC, truncated to whole milliseconds (TapRaise's precision).

    Truncating makes a value equal to itself after a trip over the wire (or through a workflow
    history), and tells whether two records name the same millisecond.
    """
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


Timestamp = Annotated[
    AwareDatetime,
    AfterValidator(to_millis),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
]
"""An aware datetime, normalised to UTC milliseconds, written as ``2023-05-01T00:00:00.000Z``."""


class CallStatus(StrEnum):
    """Lifecycle status of a call; everything but ``requested`` is final."""

    REQUESTED = "requested"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class CallType(StrEnum):
    """Why the donor is called."""

    VERIFICATION = "verification"
    HAPPY_CALL = "happy_call"
    WINBACK = "winback"


class EntityName(StrEnum):
    """Entities that can be marked as processed."""

    PERSON = "person"
    PLEDGE = "pledge"
    CALL = "call"
    TRANSACTION = "transaction"


class CamelModel(BaseModel):
    """Snake_case attributes in Python, camelCase names on the wire.

    The config: ``alias_generator=to_camel``; ``validate_by_name=True`` and
    ``validate_by_alias=True`` (either name is accepted, which is what ``populate_by_name=True``
    means); ``serialize_by_alias=True``, so that every dump (also Temporal's pydantic data
    converter) writes camelCase. Subclasses add ``extra`` and ``frozen`` as they need.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class _Response(CamelModel):
    model_config = ConfigDict(extra="ignore")


class _Request(CamelModel):
    model_config = ConfigDict(extra="forbid")

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON body for TapRaise: camelCase keys, no nulls, ``Z`` timestamps."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- value objects used in requests and responses ---------------------------------------------


class CallResult(_Response):
    """The outcome of a completed call.

    Attributes:
        result_code: TapRaise's result code, e.g. ``confirmed`` (1-64 characters).
        completed_at: When the call was completed; TapRaise defaults it to now.
        notes: Free text.
        duration: Call duration in seconds (decimal, at least 0).
        donor_retention_rating: An integer from 1 to 10.
    """

    result_code: Annotated[str, Field(min_length=1, max_length=64)]
    completed_at: Timestamp | None = None
    notes: str | None = None
    duration: Annotated[float, Field(ge=0)] | None = None
    donor_retention_rating: Annotated[int, Field(ge=1, le=10)] | None = None


class ExternalMetadata(_Response):
    """Reference to the external system that manages a call.

    ``additional_properties`` is accepted as an object or as a JSON string holding an object
    (the published request example sends a string) and is always an object afterwards.
    """

    application_name: str | None = None
    reference_id: str | None = None
    agent_reference_id: str | None = None
    status_code: str | None = None
    status_description: str | None = None
    additional_properties: dict[str, Any] | None = None

    @field_validator("additional_properties", mode="before")
    @classmethod
    def _parse_json_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"additionalProperties is not valid JSON: {exc.msg}") from None
            except RecursionError:  # not a ValueError: it would escape validation as a crash
                raise ValueError("additionalProperties is nested too deeply") from None
            if not isinstance(value, dict):
                raise ValueError("additionalProperties must be a JSON object")
        return value


class Attempt(_Response):
    """One attempt to reach the person."""

    user_uuid: UUID | None = None
    attempt_at: Timestamp | None = None
    created_at: Timestamp | None = None


# --- responses --------------------------------------------------------------------------------


class Call(_Response):
    """A call as TapRaise returns it from every call endpoint."""

    uuid: UUID
    status: CallStatus
    type: CallType
    requested_at: Timestamp
    person_uuid: UUID
    external_metadata: ExternalMetadata | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    attempts_count: int = 0
    result: CallResult | None = None
    last_updated_at: Timestamp | None = None
    cancelled_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    expired_at: Timestamp | None = None
    notes: str | None = None
    related_case_uuid: UUID | None = None
    calling_organization_uuid: UUID | None = None
    requested_by_user_uuid: UUID | None = None

    @property
    def is_final(self) -> bool:
        """Whether the call is completed, cancelled or expired."""
        return self.status is not CallStatus.REQUESTED


class PageInfo(_Response):
    """Cursor information of one page."""

    start_cursor: str | None = None
    end_cursor: str | None = None
    has_previous_page: bool = False
    has_next_page: bool = False


class CallEdge(_Response):
    """One call on a page, with its opaque cursor."""

    node: Call
    cursor: str


class CallPage(_Response):
    """One page of ``GET /api/v1/calls``."""

    edges: list[CallEdge] = Field(default_factory=list)
    page_info: PageInfo = Field(default_factory=PageInfo)

    @property
    def calls(self) -> list[Call]:
        """The calls on this page, in the order TapRaise presented them."""
        return [edge.node for edge in self.edges]


class MarkProcessedFailure(_Response):
    """One entry that TapRaise could not mark as processed (in a 400 body's ``errors``)."""

    entity_name: str
    entity_uuid: str
    message: str


class MarkProcessedErrors(_Response):
    """The 400 body of mark-processed; parse ``BadRequestError.body`` with it."""

    errors: list[MarkProcessedFailure] = Field(default_factory=list)


# --- requests ---------------------------------------------------------------------------------


class CreateCallRequest(_Request):
    """Body of ``POST /api/v1/calls``.

    The presence of ``external_metadata`` chooses the management mode:

    * managed in TapRaise (no ``external_metadata``): ``type`` is required; ``status``,
      ``result``, ``attempts``, ``completed_at`` and ``cancelled_at`` are not allowed;
    * managed externally: ``type`` is not allowed (TapRaise sets ``verification``); any
      ``status``; ``result`` is required when ``status`` is ``completed``.

    Send your own ``uuid`` to make creation idempotent (a repeat answers 409).
    """

    uuid: UUID | None = None
    person_uuid: UUID
    requested_at: Timestamp
    type: CallType | None = None
    status: CallStatus | None = None
    external_metadata: ExternalMetadata | None = None
    attempts: list[Attempt] | None = None
    result: CallResult | None = None
    requested_by_user_uuid: UUID | None = None
    cancelled_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    notes: str | None = None
    related_case_uuid: UUID | None = None
    calling_organization_uuid: UUID | None = None

    @model_validator(mode="after")
    def _check_management_mode(self) -> Self:
        problems: list[str] = []
        if self.external_metadata is None:
            if self.type is None:
                problems.append("type is required when externalMetadata is absent")
            forbidden = {
                "status": self.status,
                "result": self.result,
                "attempts": self.attempts,
                "completedAt": self.completed_at,
                "cancelledAt": self.cancelled_at,
            }
            problems += [
                f"{name} is not allowed when externalMetadata is absent"
                for name, value in forbidden.items()
                if value is not None
            ]
        else:
            if self.type is not None:
                problems.append("type is not allowed when externalMetadata is given")
            if self.status is CallStatus.COMPLETED and self.result is None:
                problems.append("result is required when status is completed")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class AddAttemptRequest(_Request):
    """Body of ``PUT /api/v1/calls/{uuid}/actions/add-attempt``; ``attempt_at`` defaults to now."""

    user_uuid: UUID | None = None
    attempt_at: Timestamp | None = None


class CompleteCallRequest(_Request):
    """Body of ``PUT /api/v1/calls/{uuid}/actions/complete``."""

    user_uuid: UUID | None = None
    result: CallResult


class CancelCallRequest(_Request):
    """Body of ``PUT /api/v1/calls/{uuid}/actions/cancel``; ``cancelled_at`` defaults to now."""

    cancelled_at: Timestamp | None = None


class ExpireCallRequest(_Request):
    """Body of ``PUT /api/v1/calls/{uuid}/actions/expire``; ``expired_at`` defaults to now."""

    expired_at: Timestamp | None = None


class MarkProcessedEntry(_Request):
    """One entity to mark as processed.

    ``consumer_identifier`` is any string (the published example sends a number as text).
    """

    entity_name: EntityName
    entity_uuid: UUID
    processed_at: Timestamp
    consumer_identifier: str | None = None
    external_source_name: str | None = None


class MarkProcessedRequest(_Request):
    """Body of ``POST /api/v1/entity-access/actions/mark-processed``."""

    entries: Annotated[list[MarkProcessedEntry], Field(min_length=1)]
