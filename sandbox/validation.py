"""Request bodies as TapRaise validates them, and the error answers it gives.

Bodies are parsed from the raw bytes in strict JSON mode, so a number where a string belongs, a
naive datetime, a malformed or non-v4 UUID or an unknown field is a 400 naming the field, never a
silent coercion.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, overload

from pydantic import (
    UUID4,
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

CallStatus = Literal["requested", "completed", "cancelled", "expired"]
CallType = Literal["verification", "happy_call", "winback"]
EntityName = Literal["person", "pledge", "call", "transaction"]
# What a service account can be allowed to do: the API's endpoints.
Action = Literal["create", "add-attempt", "complete", "cancel", "expire", "list", "mark-processed"]
M = TypeVar("M", bound=BaseModel)
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "cancelled", "expired"})
# How TapRaise words the problems pydantic names by type; the others keep pydantic's message.
_TAPRAISE_MESSAGES: Mapping[str, str] = {
    "json_invalid": "Body is not valid JSON",
    "model_type": "Must be a JSON object",
    "extra_forbidden": "Unknown field",
    "missing": "Required",
}


class CamelModel(BaseModel):
    """A body with camelCase names on the wire: unknown fields are refused, and the snake_case
    names are accepted too (TapRaise's own bodies switch that off)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, validate_by_name=True)


class ApiError(Exception):
    """An answer other than success, in TapRaise's error shape.

    Attributes:
        status: HTTP status code.
        message: Human-readable summary.
        errors: Per-field (or per-entry) details.
        headers: Extra response headers.
    """

    def __init__(
        self,
        status: int,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """Return the JSON body: ``{"statusCode", "message", "errors"}``."""
        return {"statusCode": self.status, "message": self.message, "errors": self.errors}

    @classmethod
    def invalid(cls, errors: list[tuple[str, str]]) -> ApiError:
        """Build a 400 from ``(field, message)`` pairs."""
        summary = "; ".join(f"{field}: {message}" for field, message in errors)
        return cls(
            400,
            f"Validation failed: {summary}",
            [{"field": field, "message": message} for field, message in errors],
        )


def error_pairs(
    errors: Iterable[Mapping[str, Any]],
    messages: Mapping[str, str],
    *,
    strip: str = "",
    sources: tuple[str, ...] = (),
) -> list[tuple[str, str]]:
    """Turn pydantic's errors into ``(field, message)`` pairs with dotted paths.

    Args:
        errors: The errors, as ``ValidationError.errors()`` lists them.
        messages: The message for an error type, in place of pydantic's.
        strip: A prefix taken off pydantic's messages.
        sources: Leading path parts that say where a value came from (``body``, ``query``),
            left out of the field.
    """
    pairs: list[tuple[str, str]] = []
    for error in errors:
        loc = [str(part) for part in error["loc"]]
        if loc and loc[0] in sources:
            loc = loc[1:]
        message = messages.get(error["type"]) or str(error["msg"]).removeprefix(strip)
        pairs.append((".".join(loc) or "body", message))
    return pairs


def field_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """Turn pydantic's errors into ``(field, message)`` pairs, worded as TapRaise does."""
    return error_pairs(exc.errors(include_url=False), _TAPRAISE_MESSAGES, strip="Value error, ")


def parse_body(model: type[M], raw: bytes, *, empty_ok: bool = False) -> M:
    """Validate a raw request body against ``model``.

    Args:
        model: The request model.
        raw: The body bytes as received.
        empty_ok: Treat an empty body as ``{}`` (actions whose fields are all optional).

    Raises:
        ApiError: 400 with one entry per offending field.
    """
    if not raw.strip():
        if not empty_ok:
            raise ApiError.invalid([("body", "A JSON object is required")])
        raw = b"{}"
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise ApiError.invalid(field_errors(exc)) from None


def to_ms(moment: datetime) -> datetime:
    """Return ``moment`` in UTC, truncated to milliseconds (TapRaise's precision).

    Raises:
        ValueError: The moment falls outside the calendar once in UTC
            (``0001-01-01T00:00:00+01:00`` is valid ISO-8601, and must be a 400 naming the
            field, not a crash).
    """
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("Out of range once converted to UTC") from None
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@overload
def iso(moment: datetime) -> str: ...
@overload
def iso(moment: None) -> None: ...
@overload
def iso(moment: datetime | None) -> str | None: ...
def iso(moment: datetime | None) -> str | None:
    """Format a datetime the way TapRaise does: ``2023-05-01T00:00:00.000Z``.

    The year always has four digits, so that stored timestamps sort as text.
    """
    if moment is None:
        return None
    moment = to_ms(moment)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse a timestamp written by :func:`iso`."""
    return datetime.fromisoformat(text)


class _Body(CamelModel):
    # TapRaise accepts its camelCase names only.
    model_config = ConfigDict(validate_by_name=False)


ResultCode = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Moment = Annotated[AwareDatetime, AfterValidator(to_ms)]
"""A timestamp with a zone, normalised to UTC milliseconds as TapRaise stores it."""


class ResultIn(_Body):
    """A call's result."""

    result_code: ResultCode
    completed_at: Moment | None = None
    notes: str | None = None
    duration: Annotated[float, Field(ge=0)] | None = None
    donor_retention_rating: Annotated[int, Field(ge=1, le=10)] | None = None


class ExternalMetadataIn(_Body):
    """Where an externally managed call lives."""

    application_name: str | None = None
    reference_id: str | None = None
    agent_reference_id: str | None = None
    status_code: str | None = None
    status_description: str | None = None
    additional_properties: Any = None

    @field_validator("additional_properties")
    @classmethod
    def _object_or_json_string(cls, value: Any) -> dict[str, Any] | None:
        # The published request example sends a JSON string while responses carry an object.
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("Must be an object or a JSON string of an object") from None
        if value is not None and not isinstance(value, dict):
            raise ValueError("Must be an object or a JSON string of an object")
        return value


class AddAttemptIn(_Body):
    """Body of ``PUT …/actions/add-attempt``."""

    user_uuid: UUID4 | None = None
    attempt_at: Moment | None = None


class AttemptIn(AddAttemptIn):
    """An attempt sent along with an externally managed call."""

    created_at: Moment | None = None


class CreateCallIn(_Body):
    """Body of ``POST /api/v1/calls``."""

    uuid: UUID4 | None = None
    status: CallStatus | None = None
    requested_at: Moment
    external_metadata: ExternalMetadataIn | None = None
    attempts: list[AttemptIn] | None = None
    result: ResultIn | None = None
    requested_by_user_uuid: UUID4 | None = None
    cancelled_at: Moment | None = None
    completed_at: Moment | None = None
    notes: str | None = None
    person_uuid: UUID4
    related_case_uuid: UUID4 | None = None
    calling_organization_uuid: UUID4 | None = None
    type: CallType | None = None


class CompleteIn(_Body):
    """Body of ``PUT …/actions/complete``."""

    user_uuid: UUID4 | None = None
    result: ResultIn


class CancelIn(_Body):
    """Body of ``PUT …/actions/cancel``."""

    cancelled_at: Moment | None = None


class ExpireIn(_Body):
    """Body of ``PUT …/actions/expire``."""

    expired_at: Moment | None = None


class AppCallIn(_Body):
    """Body of ``POST /_sandbox/app/calls``: a call requested by a user in the TapRaise app.

    A call requested in the app is managed in TapRaise: it has a type and no external metadata,
    and the app knows who asked for it. ``requestedAt`` defaults to the time of the request.
    """

    uuid: UUID4 | None = None
    person_uuid: UUID4
    type: CallType
    requested_by_user_uuid: UUID4
    calling_organization_uuid: UUID4 | None = None
    related_case_uuid: UUID4 | None = None
    notes: str | None = None
    requested_at: Moment | None = None


class AppCancelIn(CancelIn):
    """Body of ``PUT /_sandbox/app/calls/{uuid}/cancel``: the API's, and the app user who
    cancelled (kept in the request log; the call object has no field for it)."""

    user_uuid: UUID4 | None = None


class AppExpireIn(ExpireIn):
    """Body of ``PUT /_sandbox/app/calls/{uuid}/expire``: the API's, and the app user who
    expired the call (kept in the request log)."""

    user_uuid: UUID4 | None = None


class MarkEntryIn(_Body):
    """One entity to mark as processed."""

    entity_name: EntityName
    entity_uuid: UUID4
    processed_at: Moment
    consumer_identifier: str | None = None
    external_source_name: str | None = None


class MarkProcessedIn(_Body):
    """Body of ``POST /api/v1/entity-access/actions/mark-processed``."""

    entries: Annotated[list[MarkEntryIn], Field(min_length=1)]
