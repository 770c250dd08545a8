"""The ``/_sandbox/app/`` routes: the sandbox acting as the TapRaise app, where users request
and change calls themselves.

TapRaise's users change calls in its app, not through the API: a follower of TapRaise sees such
changes only by listing ``updatedAfter``. These routes make the same changes, so that tests can
play the user. Behind the admin token like every ``/_sandbox/`` route; bodies are read as
strictly as the API's (camelCase names only, no coercion) and the API's rules and status codes
apply. Each request is logged as ``app:<action>`` with no account email, and none is counted
among the API's effects.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Protocol, cast

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from sandbox import operations
from sandbox.operations import APP_ACTION_BODIES, AppOperation, Settings
from sandbox.validation import AppCallIn


class AppActor(Protocol):
    """What these routes need of the running sandbox (``sandbox.app.Sandbox``)."""

    settings: Settings

    async def perform_in_app(
        self, request: Request, action: str, operation: AppOperation, call_uuid: str | None
    ) -> Response:
        """Make a change as a user of the app, and log it."""
        ...


def _actor(request: Request) -> AppActor:
    return cast(AppActor, request.app.state.sandbox)


ActorDep = Annotated[AppActor, Depends(_actor)]


def _body_doc(model: type[BaseModel], required: bool) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its body itself, for the docs."""
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        # The docs resolve references from the document's root: nested models go in place.
        if isinstance(node, dict):
            if "$ref" in node:
                name = node["$ref"].rsplit("/", 1)[-1]
                return inline(
                    {**definitions[name], **{k: v for k, v in node.items() if k != "$ref"}}
                )
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    content = {"application/json": {"schema": inline(schema)}}
    return {"requestBody": {"required": required, "content": content}}


router = APIRouter()


@router.post(
    "/_sandbox/app/calls", status_code=201, openapi_extra=_body_doc(AppCallIn, required=True)
)
async def request_call(request: Request, sandbox: ActorDep) -> Response:
    """Request a call as a user of the TapRaise app: status ``requested``, managed in TapRaise
    (no external metadata), ``requestedAt`` now unless given; the person must exist."""
    return await sandbox.perform_in_app(request, "create", operations.request_in_app, None)


async def _act(request: Request, sandbox: AppActor, action: str, call_uuid: str) -> Response:
    operation = partial(operations.act_in_app, sandbox.settings, action, call_uuid)
    return await sandbox.perform_in_app(request, action, operation, call_uuid)


def _action_doc(action: str) -> dict[str, Any]:
    return _body_doc(APP_ACTION_BODIES[action], required=action == "complete")


@router.put("/_sandbox/app/calls/{call_uuid}/add-attempt", openapi_extra=_action_doc("add-attempt"))
async def add_attempt(request: Request, call_uuid: str, sandbox: ActorDep) -> Response:
    """Record an attempt made by a user of the app (the API's body and rules)."""
    return await _act(request, sandbox, "add-attempt", call_uuid)


@router.put("/_sandbox/app/calls/{call_uuid}/complete", openapi_extra=_action_doc("complete"))
async def complete(request: Request, call_uuid: str, sandbox: ActorDep) -> Response:
    """Complete a call in the app (the API's body and rules)."""
    return await _act(request, sandbox, "complete", call_uuid)


@router.put("/_sandbox/app/calls/{call_uuid}/cancel", openapi_extra=_action_doc("cancel"))
async def cancel(request: Request, call_uuid: str, sandbox: ActorDep) -> Response:
    """Cancel a call in the app (the API's body and rules, and the user's ``userUuid``)."""
    return await _act(request, sandbox, "cancel", call_uuid)


@router.put("/_sandbox/app/calls/{call_uuid}/expire", openapi_extra=_action_doc("expire"))
async def expire(request: Request, call_uuid: str, sandbox: ActorDep) -> Response:
    """Expire a call in the app (the API's body and rules, and the user's ``userUuid``)."""
    return await _act(request, sandbox, "expire", call_uuid)
