"""`/calls/{call_uuid}/…`: the agent's actions on a call, as updates (or signals)."""

import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.dependencies import RequestId, Service, Signal
from gateway.models import Accepted, Sent
from starter.service import CallService
from workflows.messages import (
    ATTEMPT,
    CANCEL,
    COMPLETE,
    RESCHEDULE,
    AttemptSignal,
    CancelSignal,
    CompleteSignal,
    Message,
    RescheduleSignal,
)

router = APIRouter(tags=["actions"])

# Every action answers the same way: the workflow's acceptance, or the signal sent.
_ANSWERS: dict[str, Any] = {
    "response_model": Accepted,
    "responses": {202: {"model": Sent, "description": "Sent as a signal (`signal=true`)."}},
}


async def _act(
    service: CallService,
    call_uuid: uuid.UUID,
    name: str,
    message: Message,
    signal: bool,
    request_id: str | None,
) -> Accepted | JSONResponse:
    if signal:
        sent = Sent.of(await service.signal(call_uuid, name, message))
        return JSONResponse(status_code=202, content=sent.model_dump(mode="json"))
    return Accepted.of(call_uuid, await service.act(call_uuid, name, message, request_id))


@router.post("/calls/{call_uuid}/attempts", **_ANSWERS)
async def attempt(
    call_uuid: uuid.UUID,
    body: AttemptSignal,
    service: Service,
    request_id: RequestId,
    signal: Signal = False,
) -> Accepted | JSONResponse:
    """Report an unsuccessful attempt. 200 accepted, 409 refused, 404 unknown call."""
    return await _act(service, call_uuid, ATTEMPT, body, signal, request_id)


@router.post("/calls/{call_uuid}/complete", **_ANSWERS)
async def complete(
    call_uuid: uuid.UUID,
    body: CompleteSignal,
    service: Service,
    request_id: RequestId,
    signal: Signal = False,
) -> Accepted | JSONResponse:
    """Complete the call with its result. 200 accepted, 409 refused, 404 unknown call."""
    return await _act(service, call_uuid, COMPLETE, body, signal, request_id)


@router.post("/calls/{call_uuid}/reschedule", **_ANSWERS)
async def reschedule(
    call_uuid: uuid.UUID,
    body: RescheduleSignal,
    service: Service,
    request_id: RequestId,
    signal: Signal = False,
) -> Accepted | JSONResponse:
    """Ask for a callback at the donor's time. 200 accepted, 409 refused, 404 unknown."""
    return await _act(service, call_uuid, RESCHEDULE, body, signal, request_id)


@router.post("/calls/{call_uuid}/cancel", **_ANSWERS)
async def cancel(
    call_uuid: uuid.UUID,
    service: Service,
    request_id: RequestId,
    body: CancelSignal | None = None,
    signal: Signal = False,
) -> Accepted | JSONResponse:
    """Cancel the call (the body is optional). 200 accepted, 409 refused, 404 unknown."""
    return await _act(service, call_uuid, CANCEL, body or CancelSignal(), signal, request_id)
