"""`/calls`: start one call or a batch, look one up, list them."""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from pydantic import BaseModel, Field

from gateway.dependencies import Service, door
from gateway.limits import BATCH_BODY_LIMIT, MAX_BATCH
from gateway.models import BatchStarted, CallList, Started
from gateway.tokens import Scope
from starter.batch import start_rows, validate_records
from starter.service import DEFAULT_CONCURRENCY, DEFAULT_LIST_LIMIT, ListFilters, StartStatus
from workflows.messages import CallInput, CallState

router = APIRouter(tags=["calls"])


@router.post(
    "/calls",
    status_code=202,
    dependencies=[door(Scope.START)],
    response_model=Started,
    response_model_exclude_unset=True,
    responses={
        200: {"model": Started, "description": "The call exists already ('already started')."}
    },
)
async def start_call(call: CallInput, response: Response, service: Service) -> Started:
    """Start one call (body: the workflow input, camelCase). 202 started, 200 already."""
    result = await service.start(call)
    if result.status is not StartStatus.STARTED:
        response.status_code = 200
    return Started.of(result)


@router.post(
    "/calls/batch",
    dependencies=[door(Scope.START, body_limit=BATCH_BODY_LIMIT)],
    response_model=BatchStarted,
    response_model_exclude_unset=True,
)
async def start_batch(
    items: Annotated[list[dict[str, Any]], Body(max_length=MAX_BATCH)],
    service: Service,
    id_from: Annotated[
        str | None,
        Query(
            alias="idFrom",
            description="A key (or dotted path such as externalMetadata.referenceId) to "
            "derive call uuids from; each result carries its value under that name.",
        ),
    ] = None,
) -> BatchStarted:
    """Start many calls (at most 1,000 in 4,096,000 bytes); each is validated and answered alone.

    Keys other than the call's fields are the CRM's own and are not sent; one that
    misspells a call field (`personUUID`) makes its item invalid. Statuses: started,
    already started, duplicate, invalid (nothing sent for it), failed.
    """
    batch = validate_records(list(enumerate(items)), id_from)
    return BatchStarted.of(await start_rows(service, batch, DEFAULT_CONCURRENCY))


@router.get("/calls/{call_uuid}", dependencies=[door(Scope.READ)], response_model=CallState)
async def call_state(call_uuid: uuid.UUID, service: Service) -> CallState:
    """The call's state (the workflow's `state` query), also after it finished."""
    return await service.state(call_uuid)


class ListQuery(BaseModel):
    """`GET /calls`'s query parameters: `ListFilters`' filters, and how many calls at most."""

    status: str | None = None
    phase: str | None = None
    type: str | None = None
    person: str | None = None
    org: str | None = None
    due_before: str | None = Field(default=None, alias="dueBefore")
    query: str | None = None
    limit: int = Field(default=DEFAULT_LIST_LIMIT, ge=1, le=1_000)


@router.get("/calls", dependencies=[door(Scope.READ)], response_model=CallList)
async def list_calls(service: Service, params: Annotated[ListQuery, Query()]) -> CallList:
    """Calls by search attributes (eventually consistent: lags a second or so)."""
    filters = ListFilters.parse(**params.model_dump(exclude={"limit"}))
    used, calls = await service.list(filters, params.limit)
    return CallList(query=used, calls=calls)
