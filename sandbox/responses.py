"""How the sandbox answers: JSON bodies, and TapRaise's error shape also for the errors FastAPI
raises itself (a malformed ``/_sandbox/`` body, an unknown route)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sandbox.validation import ApiError, error_pairs

# FastAPI's messages are kept but for unknown fields, which pydantic words for Python users.
_ADMIN_MESSAGES: Mapping[str, str] = {"extra_forbidden": "Unknown field"}


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer, or an empty one when ``body`` is None."""
    if body is None:
        return Response(status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


def error_response(error: ApiError) -> Response:
    """The answer for an error, in TapRaise's error shape."""
    return json_response(error.status, error.body(), error.headers)


def validation_handler(request: Request, exc: Exception) -> Response:
    """Answer a body or query FastAPI refused with a 400 naming the fields."""
    assert isinstance(exc, RequestValidationError)
    problems = error_pairs(exc.errors(), _ADMIN_MESSAGES, sources=("body", "query", "path"))
    return error_response(ApiError.invalid(problems))


def http_handler(request: Request, exc: Exception) -> Response:
    """Answer FastAPI's own HTTP errors (404, 405) in TapRaise's error shape."""
    assert isinstance(exc, StarletteHTTPException)
    return error_response(ApiError(exc.status_code, str(exc.detail), headers=exc.headers))
