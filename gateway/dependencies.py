"""What the routes depend on: the gateway's context, each route's door (its token scope and
largest body), the calls service, and the action options (`signal`, `Idempotency-Key`).

No `from __future__ import annotations` here or in the routes: FastAPI reads the signatures at
runtime.
"""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBearer

from gateway.gate import Door
from gateway.limits import BODY_LIMIT
from gateway.settings import GatewaySettings
from gateway.temporal import TemporalConnection
from gateway.tokens import Grant, Scope
from starter.service import (
    IDEMPOTENCY_KEY_HEADER,
    REQUEST_ID_MAX_LENGTH,
    CallService,
    request_id_problem,
)


@dataclass(frozen=True)
class GatewayContext:
    """What one application holds for its requests (kept in `app.state.gateway`).

    Attributes:
        settings: The gateway's settings.
        temporal: The Temporal connection.
        grants: The accepted bearer tokens; empty when the gateway runs without auth.
    """

    settings: GatewaySettings
    temporal: TemporalConnection
    grants: tuple[Grant, ...]


def gateway_context(request: Request) -> GatewayContext:
    context = request.app.state.gateway
    assert isinstance(context, GatewayContext)
    return context


Context = Annotated[GatewayContext, Depends(gateway_context)]


# Checked by the gate; declared here so that the OpenAPI pages ask for a token.
bearer = HTTPBearer(auto_error=False, description="A token from GATEWAY_TOKENS (or its file).")


def door(scope: Scope | None, body_limit: int = BODY_LIMIT) -> Any:
    """A route's door: the token scope it needs (None: no token, for the health check) and the
    largest body it takes. The gate enforces both before the body is read."""
    return Depends(Door(scope, body_limit, public=scope is None))


async def call_service(context: Context) -> CallService:
    return CallService(await context.temporal.client(), context.settings.task_queue)


Service = Annotated[CallService, Depends(call_service)]

Signal = Annotated[
    bool,
    Query(description="Send a fire-and-forget signal instead of an update (202, no answer)."),
]


def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_KEY_HEADER,
            description="The request's idempotency key, used as the update's id: the same "
            "request sent again with the same key changes nothing and is answered as the "
            f"first one was. Printable ASCII, at most {REQUEST_ID_MAX_LENGTH} characters; "
            "not with `signal=true` (a signal has no id to deduplicate by).",
        ),
    ] = None,
    signal: Signal = False,
) -> str | None:
    """The action's idempotency key, checked and trimmed (422 naming the header when bad)."""
    if key is None:
        return None
    problem = request_id_problem(key)
    if problem is None and signal:
        # Quietly dropping the key would promise a deduplication that signals cannot keep.
        problem = "a signal has no id to deduplicate by; send the action as an update"
    if problem is not None:
        location = ("header", IDEMPOTENCY_KEY_HEADER)
        error = {"type": "value_error", "loc": location, "msg": problem, "input": key}
        raise RequestValidationError([error])
    return key.strip()


RequestId = Annotated[str | None, Depends(idempotency_key)]
