"""`/calls/{call_uuid}/…`: the agent's actions on a call, as updates (or signals)."""

import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.dependencies import RequestId, Service, Signal, door
from gateway.models import Accepted, Sent
from gateway.tokens import Scope
from workflows.messages import (
    ATTEMPT,
    CANCEL,
    COMPLETE,
    RESCHEDULE,
    AttemptSignal,
    CancelSignal,
    CompleteSignal,
    RescheduleSignal,
)

router = APIRouter(tags=["actions"])

# Every action answers the same way: the workflow's acceptance, or the signal sent.
_ANSWERS: dict[str, Any] = {
    "response_model": Accepted,
    "responses": {202: {"model": Sent, "description": "Sent as a signal (`signal=true`)."}},
}


def _action(path: str, name: str, body_model: Any, description: str, default: Any = ...) -> None:
    """Add `POST /calls/{call_uuid}/<path>`: the action `name` with its `body_model` body.

    FastAPI reads the body's schema from the annotation, and `...` as the default makes the body
    required; the route's `name` gives its summary and operation id.
    """

    async def act(
        call_uuid: uuid.UUID,
        service: Service,
        request_id: RequestId,
        body: body_model = default,
        signal: Signal = False,
    ) -> Accepted | JSONResponse:
        message = CancelSignal() if body is None else body
        if signal:
            sent = Sent.of(await service.signal(call_uuid, name, message))
            return JSONResponse(status_code=202, content=sent.model_dump(mode="json"))
        return Accepted.of(call_uuid, await service.act(call_uuid, name, message, request_id))

    router.add_api_route(
        f"/calls/{{call_uuid}}/{path}",
        act,
        methods=["POST"],
        name=name,
        dependencies=[door(Scope.ACT)],
        description=f"{description} 200 accepted, 409 refused, 404 unknown call.",
        **_ANSWERS,
    )


_action("attempts", ATTEMPT, AttemptSignal, "Report an unsuccessful attempt.")
_action("complete", COMPLETE, CompleteSignal, "Complete the call with its result.")
_action("reschedule", RESCHEDULE, RescheduleSignal, "Ask for a callback at the donor's time.")
_action("cancel", CANCEL, CancelSignal | None, "Cancel the call (the body is optional).", None)
