"""The HTTP gateway: webhooks for the CRM (start calls) and the agent's tooling (report actions).

Bodies are the contract's camelCase JSON. Actions go to the workflow as updates, so a caller
learns at once whether the call accepted them (200), refused them (409, with the workflow's
reason) or does not exist (404). An action's `Idempotency-Key` header becomes the update's id:
the same request sent again changes nothing and is answered as the first one was. Every route
but `/healthz` and the OpenAPI pages needs a bearer token from `GATEWAY_TOKENS`. The routes only
translate HTTP to `starter.calls` and back.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime,
# and the dependency aliases they use are local to `create_app`.
import asyncio
import hmac
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any, Final

from fastapi import (
    APIRouter,
    Body,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Query,
    Request,
    Response,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from starter.batch import INVALID, outcome_of, summarize, validate_records
from starter.calls import (
    DEFAULT_CONCURRENCY,
    DEFAULT_LIST_LIMIT,
    IDEMPOTENCY_KEY_HEADER,
    REQUEST_ID_MAX_LENGTH,
    Action,
    CallsError,
    CallService,
    InvalidInput,
    ListFilters,
    StartResult,
    StartStatus,
    TemporalUnavailable,
    model_json,
    request_id_problem,
)
from starter.settings import GatewaySettings
from workflows.connect import connect
from workflows.messages import (
    ATTEMPT,
    CANCEL,
    COMPLETE,
    RESCHEDULE,
    AttemptSignal,
    CallInput,
    CancelSignal,
    CompleteSignal,
    RescheduleSignal,
    workflow_id_for,
)

ClientProvider = Callable[[], Awaitable[Client]]

logger = logging.getLogger(__name__)

MAX_BATCH: Final = 1_000
HEALTH_TIMEOUT: Final = timedelta(seconds=3)

_STATUS_FOR_KIND: Final = {
    "invalid": 422,
    "not_found": 404,
    "rejected": 409,
    "unavailable": 503,
    "failed": 502,
}


def temporal_client_provider(
    address: str | None = None, namespace: str | None = None
) -> ClientProvider:
    """A provider that connects with `workflows.connect.connect()` (the one client factory)."""

    async def provide() -> Client:
        return await connect(address, namespace)

    return provide


class _Temporal:
    """The gateway's one Temporal client, connected on first need and then kept.

    The gateway starts even while Temporal is down (its health check says so); requests then
    retry the connection instead of the process having to be restarted.
    """

    def __init__(self, provider: ClientProvider) -> None:
        self._provider = provider
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> Client:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    try:
                        self._client = await self._provider()
                    except RuntimeError as exc:
                        raise TemporalUnavailable(str(exc)) from None
        return self._client


def _problem_detail(problems: list[str]) -> list[dict[str, Any]]:
    """FastAPI's validation shape for problems written as "field.path: message"."""
    detail = []
    for problem in problems:
        field, _, message = problem.partition(": ")
        detail.append(
            {"loc": ["body", *field.split(".")], "msg": message or problem, "type": "value_error"}
        )
    return detail


def create_app(
    client_provider: ClientProvider | None = None, settings: GatewaySettings | None = None
) -> FastAPI:
    """The gateway application.

    Args:
        client_provider: Makes the Temporal client (default: `connect()` from the environment);
            tests inject their own.
        settings: Tokens and task queue (default: from the environment and `.env`).

    Raises:
        ConfigurationError: when no tokens are configured and `GATEWAY_ALLOW_NO_AUTH` is not set.
    """
    settings = settings if settings is not None else GatewaySettings()
    settings.check()
    temporal = _Temporal(client_provider or temporal_client_provider())
    secrets = [token.get_secret_value().encode() for token in settings.tokens]
    if not secrets:
        logger.warning("GATEWAY_ALLOW_NO_AUTH is set: the gateway accepts unauthenticated requests")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await temporal.client()
        except CallsError as exc:
            logger.warning("Temporal is not reachable yet (requests will retry): %s", exc)
        yield

    app = FastAPI(
        title="tapraise-calls gateway",
        summary="Start TapRaise donor calls and report what happened on them.",
        lifespan=lifespan,
    )
    bearer = HTTPBearer(auto_error=False, description="A token from GATEWAY_TOKENS.")

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if not secrets:
            return
        given = credentials.credentials.encode() if credentials else b""
        matched = False
        for secret in secrets:
            # Compare against every token, in constant time each: no early exit to time.
            matched |= hmac.compare_digest(given, secret)
        if not matched:
            raise HTTPException(
                status_code=401,
                detail="missing or invalid bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def calls_service() -> CallService:
        return CallService(await temporal.client(), settings.task_queue)

    Service = Annotated[CallService, Depends(calls_service)]

    @app.exception_handler(CallsError)
    async def _calls_error(_request: Request, exc: CallsError) -> JSONResponse:
        status = _STATUS_FOR_KIND.get(exc.kind, 502)
        if isinstance(exc, InvalidInput):
            body: dict[str, Any] = {
                "detail": _problem_detail(exc.problems),
                "message": str(exc),
            }
        else:
            body = {"detail": str(exc), "kind": exc.kind}
        return JSONResponse(status_code=status, content=body)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape, plus one readable line per problem naming the field (its `msg`
        # alone says "Field required" without saying which).
        lines = []
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "header")]
            message = "unknown field" if error.get("type") == "extra_forbidden" else error["msg"]
            lines.append(f"{'.'.join(loc) or 'body'}: {message}")
        detail = [
            {key: value for key, value in error.items() if key in ("loc", "msg", "type")}
            for error in exc.errors()
        ]
        return JSONResponse(
            status_code=422, content={"detail": detail, "message": "; ".join(lines)}
        )

    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        """Whether the gateway runs and Temporal answers (no token needed)."""
        try:
            client = await temporal.client()
            healthy = await client.service_client.check_health(timeout=HEALTH_TIMEOUT)
        except Exception as exc:  # any failure here is what the health check reports
            return JSONResponse(
                status_code=503, content={"status": "degraded", "temporal": f"unreachable: {exc}"}
            )
        if not healthy:
            return JSONResponse(
                status_code=503, content={"status": "degraded", "temporal": "not serving"}
            )
        return JSONResponse(content={"status": "ok", "temporal": "reachable"})

    router = APIRouter(dependencies=[Depends(require_token)])

    @router.post(
        "/calls",
        status_code=202,
        tags=["calls"],
        responses={200: {"description": "The call exists already ('already started')."}},
    )
    async def start_call(call: CallInput, response: Response, service: Service) -> dict[str, Any]:
        """Start one call (body: the workflow input, camelCase). 202 started, 200 already."""
        result = await service.start(call)
        if result.status is not StartStatus.STARTED:
            response.status_code = 200
        return result.to_json()

    @router.post("/calls/batch", tags=["calls"])
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
    ) -> dict[str, Any]:
        """Start many calls; every item is validated and answered on its own (by `index`).

        Keys other than the call's fields are the CRM's own and are not sent; one that
        misspells a call field (`personUUID`) makes its item invalid. Statuses: started,
        already started, duplicate, invalid (nothing sent for it), failed.
        """
        batch = validate_records(list(enumerate(items)), id_from)
        good = batch.good
        started = await service.start_many(
            [row.call for row in good if row.call is not None], DEFAULT_CONCURRENCY
        )
        outcomes: dict[int, StartResult] = {
            row.line: result for row, result in zip(good, started, strict=True)
        }
        results: list[dict[str, Any]] = []
        for row in batch.rows:
            if row.line in outcomes:
                result = outcomes[row.line]
                entry = {**result.to_json(), "status": outcome_of(result)}
            elif row.problems:
                entry = {"status": INVALID, "problems": list(row.problems)}
            else:
                assert row.call is not None and row.call.uuid is not None
                entry = {
                    "workflowId": workflow_id_for(row.call.uuid),
                    "callUuid": str(row.call.uuid),
                    "status": StartStatus.DUPLICATE.value,
                    "detail": f"same call as item {row.duplicate_of}",
                }
            head: dict[str, Any] = {"index": row.line}
            if id_from and id_from not in entry and id_from != "index":
                head[id_from] = row.external_id
            results.append({**head, **entry})
        summary = summarize(entry["status"] for entry in results)
        return {"summary": summary, "results": results}

    signal_query = Query(
        description="Send a fire-and-forget signal instead of an update (202, no answer)."
    )

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
        signal: Annotated[bool, signal_query] = False,
    ) -> str | None:
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

    async def _act(
        service: CallService,
        call_uuid: uuid.UUID,
        name: str,
        message: Action,
        signal: bool,
        request_id: str | None,
    ) -> Any:
        if signal:
            return JSONResponse(
                status_code=202, content=(await service.signal(call_uuid, name, message)).to_json()
            )
        accepted = await service.act(call_uuid, name, message, request_id)
        return {"workflowId": workflow_id_for(call_uuid), **model_json(accepted)}

    @router.post("/calls/{call_uuid}/attempts", tags=["actions"])
    async def attempt(
        call_uuid: uuid.UUID,
        body: AttemptSignal,
        service: Service,
        request_id: RequestId,
        signal: Annotated[bool, signal_query] = False,
    ) -> Any:
        """Report an unsuccessful attempt. 200 accepted, 409 refused, 404 unknown call."""
        return await _act(service, call_uuid, ATTEMPT, body, signal, request_id)

    @router.post("/calls/{call_uuid}/complete", tags=["actions"])
    async def complete(
        call_uuid: uuid.UUID,
        body: CompleteSignal,
        service: Service,
        request_id: RequestId,
        signal: Annotated[bool, signal_query] = False,
    ) -> Any:
        """Complete the call with its result. 200 accepted, 409 refused, 404 unknown call."""
        return await _act(service, call_uuid, COMPLETE, body, signal, request_id)

    @router.post("/calls/{call_uuid}/reschedule", tags=["actions"])
    async def reschedule(
        call_uuid: uuid.UUID,
        body: RescheduleSignal,
        service: Service,
        request_id: RequestId,
        signal: Annotated[bool, signal_query] = False,
    ) -> Any:
        """Ask for a callback at the donor's time. 200 accepted, 409 refused, 404 unknown."""
        return await _act(service, call_uuid, RESCHEDULE, body, signal, request_id)

    @router.post("/calls/{call_uuid}/cancel", tags=["actions"])
    async def cancel(
        call_uuid: uuid.UUID,
        service: Service,
        request_id: RequestId,
        body: CancelSignal | None = None,
        signal: Annotated[bool, signal_query] = False,
    ) -> Any:
        """Cancel the call (the body is optional). 200 accepted, 409 refused, 404 unknown."""
        return await _act(service, call_uuid, CANCEL, body or CancelSignal(), signal, request_id)

    @router.get("/calls/{call_uuid}", tags=["calls"])
    async def call_state(call_uuid: uuid.UUID, service: Service) -> dict[str, Any]:
        """The call's state (the workflow's `state` query), also after it finished."""
        return model_json(await service.state(call_uuid))

    @router.get("/calls", tags=["calls"])
    async def list_calls(
        service: Service,
        status: str | None = None,
        phase: str | None = None,
        type: str | None = None,
        person: str | None = None,
        org: str | None = None,
        due_before: Annotated[str | None, Query(alias="dueBefore")] = None,
        query: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1_000)] = DEFAULT_LIST_LIMIT,
    ) -> dict[str, Any]:
        """Calls by search attributes (eventually consistent: lags a second or so)."""
        filters = ListFilters.parse(
            status=status,
            phase=phase,
            type=type,
            person=person,
            org=org,
            due_before=due_before,
            query=query,
        )
        used, calls = await service.list(filters, limit)
        return {"query": used, "calls": [call.to_json() for call in calls]}

    app.include_router(router)
    return app
