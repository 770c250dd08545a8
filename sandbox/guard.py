"""Who may reach the ``/_sandbox/`` routes: the holder of the admin token, and only when one is set.

The admin routes read the request log (donor notes included), mint service-account keys and
switch faults and credentials: a development stand-in's tools, never a default. The sandbox
serves them only when started with an admin token (a file, so that the token never shows in a
process list), and then only to requests that carry it as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Final

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox.responses import error_response
from sandbox.validation import ApiError

ADMIN_PREFIX: Final = "/_sandbox"
ADMIN_TOKEN_ENV: Final = "SANDBOX_ADMIN_TOKEN_FILE"
MIN_ADMIN_TOKEN_CHARS: Final = 16
"""Shorter tokens are refused at start: a guessable token guards nothing."""


class AdminTokenError(ValueError):
    """The admin token file cannot be used; the message says why (never the token)."""


def read_admin_token(path: Path) -> str:
    """The admin token held in ``path`` (surrounding whitespace removed).

    Raises:
        AdminTokenError: When the file cannot be read, is empty or holds too short a token.
    """
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise AdminTokenError(f"the admin token file {path} cannot be read: {reason}") from None
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise AdminTokenError(
            f"the admin token file {path} must hold a token of at least "
            f"{MIN_ADMIN_TOKEN_CHARS} characters"
        )
    return token


def is_admin_path(path: str) -> bool:
    """Whether ``path`` is one of the ``/_sandbox/`` routes (the bare ``/_sandbox`` included)."""
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})


class AdminGuard:
    """ASGI middleware: ``/_sandbox/`` requests without the admin bearer token get a 401.

    The check comes before routing and body parsing, so that a caller without the token learns
    nothing from validation errors either. Other paths pass straight through.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_admin_path(scope["path"]):
            refusal = self._refusal(Headers(scope=scope).get("authorization"))
            if refusal is not None:
                await error_response(refusal)(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _refusal(self, authorization: str | None) -> ApiError | None:
        """Why a request is refused, or None when it carries the admin token."""
        if not authorization:
            return _unauthorized("The /_sandbox/ routes need the sandbox's admin bearer token")
        scheme, _, presented = authorization.partition(" ")
        # Compared in constant time: how long a refusal takes says nothing about the token.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), self._token
        ):
            return _unauthorized("The admin token is not valid")
        return None
