"""Typed errors raised by the TapRaise client.

The hierarchy follows the httpx-era OpenAI and Anthropic SDKs so that callers classify a
failure by type (and by ``status_code``) instead of parsing messages::

    TapRaiseError
    ├── ConfigurationError
    ├── APIConnectionError
    │   └── APITimeoutError
    ├── APIResponseValidationError
    └── APIStatusError
        ├── BadRequestError (400)
        ├── AuthenticationError (401)
        ├── PermissionDeniedError (403)
        ├── NotFoundError (404)
        ├── ConflictError (409)
        ├── RateLimitError (429)
        └── InternalServerError (5xx)

No message or repr ever contains request headers, so the bearer token cannot leak through
logs or workflow failure details.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import ValidationError
from pydantic_core import ErrorDetails

# Error bodies are shown to people; a proxy's HTML page must not flood a log line.
_MAX_MESSAGE_CHARS = 500


class TapRaiseError(Exception):
    """Base class of every error raised by this package."""


class ConfigurationError(TapRaiseError, ValueError):
    """The TapRaise settings or service account credentials are missing or invalid."""


class APIConnectionError(TapRaiseError):
    """TapRaise could not be reached, or the connection broke before an answer arrived.

    Attributes:
        request: The request that failed.
    """

    def __init__(self, message: str, *, request: httpx.Request | None) -> None:
        super().__init__(message)
        self.request = request


class APITimeoutError(APIConnectionError):
    """A connect, read, write or pool timeout expired."""


class APIResponseValidationError(TapRaiseError):
    """TapRaise answered with success but the body is not what the API describes.

    Attributes:
        status_code: The HTTP status of the answer.
        request: The request sent.
        response: The response received.
    """

    def __init__(self, message: str, *, response: httpx.Response) -> None:
        super().__init__(message)
        self.status_code = response.status_code
        self.request = response.request
        self.response = response


class APIStatusError(TapRaiseError):
    """TapRaise answered with a non-success status.

    Attributes:
        status_code: The HTTP status code.
        message: The ``message`` of the error body, or the raw body text when it has none.
        body: The parsed JSON body, or ``None`` when the body is not JSON.
        retry_after: Seconds to wait as asked by ``Retry-After``, or ``None``.
        request: The request sent.
        response: The response received.
    """

    def __init__(self, *, response: httpx.Response) -> None:
        self.response = response
        self.request = response.request
        self.status_code = response.status_code
        self.body = _parse_json(response)
        self.message = _extract_message(self.body, response)
        self.retry_after = parse_retry_after(response.headers.get("retry-after"))
        super().__init__(
            f"TapRaise answered {response.status_code} {response.reason_phrase} on "
            f"{self.request.method} {self.request.url.path}: {self.message}"
        )


class BadRequestError(APIStatusError):
    """400: the request was rejected; ``body`` says why (per entry for mark-processed)."""


class AuthenticationError(APIStatusError):
    """401: the service account's token was not accepted."""


class PermissionDeniedError(APIStatusError):
    """403: the service account may not perform this action."""


class NotFoundError(APIStatusError):
    """404: the call (or other entity) does not exist for this account."""


class ConflictError(APIStatusError):
    """409: the call already exists, or is already in the requested final status."""


class RateLimitError(APIStatusError):
    """429: too many requests; honour ``retry_after``."""


class InternalServerError(APIStatusError):
    """Any 5xx answer."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
}


def make_status_error(response: httpx.Response) -> APIStatusError:
    """Build the error subclass that matches a non-success response.

    Args:
        response: A response whose status is not 2xx; its body must have been read.

    Returns:
        The matching subclass, or plain ``APIStatusError`` for statuses without one.
    """
    if response.status_code >= 500:
        return InternalServerError(response=response)
    return _STATUS_ERRORS.get(response.status_code, APIStatusError)(response=response)


# Pydantic's wording where a person reads the message at a prompt or in a results file.
_PLAIN_WORDING = {"extra_forbidden": "unknown field", "missing": "required"}


# A field path names keys as they were sent: an unknown key may be as long as its input.
_LONGEST_NAME = 64


def _name(part: str | int) -> str:
    text = str(part)
    return text if len(text) <= _LONGEST_NAME else f"{text[: _LONGEST_NAME - 1]}…"


def describe_problem(problem: ErrorDetails, whole: str = "value", *, plain: bool = False) -> str:
    """One pydantic problem as ``field.path: message``; ``whole`` names the value itself when
    the problem is not about one field. ``plain`` words it for people: "unknown field",
    "required", and a validator's own message without pydantic's "Value error, ". A name longer
    than 64 characters is cut short (it came from the input)."""
    message = problem["msg"]
    if plain:
        message = _PLAIN_WORDING.get(problem["type"], message.removeprefix("Value error, "))
    return f"{'.'.join(_name(part) for part in problem['loc']) or whole}: {message}"


def describe_validation_error(error: ValidationError, whole: str = "value") -> str:
    """A pydantic error as one line naming each field (camelCase, as sent); ``whole`` names the
    value itself when the error is not about one field."""
    return "; ".join(describe_problem(problem, whole) for problem in error.errors())


def validation_problems(error: ValidationError, whole: str = "input") -> list[str]:
    """A pydantic error as plainly worded lines, one a field (see ``describe_problem``)."""
    return [describe_problem(problem, whole, plain=True) for problem in error.errors()]


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header given in seconds or as an HTTP date.

    Args:
        value: The header value, or ``None`` when absent.
        now: The current time, for tests; defaults to the system clock.

    Returns:
        Seconds to wait (never negative), or ``None`` when absent or unparseable.
    """
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _parse_json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content) if response.content else None
    except (ValueError, RecursionError):  # a UnicodeDecodeError is a ValueError
        return None


def _extract_message(body: Any, response: httpx.Response) -> str:
    if isinstance(body, dict):
        message = body.get("message")
        # NestJS-style servers send a list of validation messages.
        if isinstance(message, list) and message:
            return "; ".join(str(item) for item in message)
        if isinstance(message, str) and message:
            return message
    text = response.text.strip()
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[:_MAX_MESSAGE_CHARS] + "…"
    return text or response.reason_phrase or "no details"
