"""The sandbox's HTTP surface: TapRaise's call endpoints plus ``/_sandbox/`` for tests.

Every ``/api/v1/`` request goes through :meth:`Sandbox.serve`, which injects faults, checks the
token (refusing every one during a credential outage), runs the endpoint in one transaction and
appends the request to the log. The ``/_sandbox/`` routes need no token and never see faults;
``/`` and ``/_sandbox/`` answer an index of them (HTML for a browser, else JSON).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid as uuid_module
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import UUID4, AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from starlette.exceptions import HTTPException as StarletteHTTPException

from sandbox import calls, seed, store
from sandbox.auth import (
    authenticate,
    authorize,
    credentials,
    generate_key_pair,
    load_or_create_credentials,
    withdrawn,
)
from sandbox.calls import Settings
from sandbox.faults import Fault, FaultConfig, FaultInjector
from sandbox.index import add_index_routes
from sandbox.store import Account, Store
from sandbox.validation import (
    AddAttemptIn,
    ApiError,
    CancelIn,
    CompleteIn,
    CreateCallIn,
    ExpireIn,
    MarkProcessedIn,
    iso,
    parse_body,
)

logger = logging.getLogger("sandbox")

DB_FILE = "sandbox.sqlite3"
CREDENTIALS_FILE = "service-account.json"
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
ACTION_BODIES: dict[str, type[AddAttemptIn | CompleteIn | CancelIn | ExpireIn]] = {
    "add-attempt": AddAttemptIn,
    "complete": CompleteIn,
    "cancel": CancelIn,
    "expire": ExpireIn,
}
FAULT_MESSAGES = {
    "500": "Internal server error",
    "503": "Service unavailable",
    "429": "Too many requests",
}

# An endpoint's work: (connection, account, raw body, now) -> (status, JSON body, call uuid).
Operation = Callable[[sqlite3.Connection, Account, bytes, datetime], tuple[int, Any, str | None]]
# What a request is answered: (status, JSON body or None, extra headers).
_Answer = tuple[int, Any, dict[str, str]]
# The request log's ``fault`` for a request refused during a credential outage.
CREDENTIAL_OUTAGE = "credential_outage"


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    if body is None:
        return Response(status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


def _uuid4_or_none(text: str) -> str | None:
    try:
        value = uuid_module.UUID(text)
    except ValueError:
        return None
    return str(value) if value.version == 4 else None


@dataclass
class Sandbox:
    """Everything a running sandbox holds."""

    store: Store
    settings: Settings
    faults: FaultInjector
    data_dir: Path
    # Requests held by a late_apply fault: referenced here so that they run to the end even
    # when the client that sent them has gone.
    held: set[asyncio.Task[_Answer]] = field(default_factory=set)

    async def serve(
        self, request: Request, endpoint: str, operation: Operation, call_uuid: str | None
    ) -> Response:
        """Answer one TapRaise API request (faults, auth, the operation, the log)."""
        received = datetime.now(UTC)
        raw = await request.body()
        fault = self.faults.decide(endpoint)
        if fault is not None and fault.latency > 0:
            await asyncio.sleep(fault.latency)
        if fault is not None and fault.kind == "late_apply":
            held = asyncio.ensure_future(
                self._apply_later(request, endpoint, operation, call_uuid, raw, fault, received)
            )
            self.held.add(held)
            held.add_done_callback(self.held.discard)
            # Shielded: a client that gives up must not stop the change from being applied.
            answer = await asyncio.shield(held)
        else:
            answer = self._answer(request, endpoint, operation, call_uuid, raw, fault, received)
        if fault is not None and fault.kind == "late":
            # The change is applied and logged; only the answer is held back.
            await asyncio.sleep(fault.late_delay)
        return _json(*answer)

    async def _apply_later(
        self,
        request: Request,
        endpoint: str,
        operation: Operation,
        call_uuid: str | None,
        raw: bytes,
        fault: Fault,
        received: datetime,
    ) -> _Answer:
        # Nothing is looked at before the delay: a look-up meanwhile sees the state before.
        await asyncio.sleep(fault.late_apply_delay)
        return self._answer(request, endpoint, operation, call_uuid, raw, fault, received)

    def _answer(
        self,
        request: Request,
        endpoint: str,
        operation: Operation,
        call_uuid: str | None,
        raw: bytes,
        fault: Fault | None,
        received: datetime,
    ) -> _Answer:
        """Run the request (unless a fault refuses it) and log it."""
        account_email: str | None = None
        headers: dict[str, str] = {}
        label = None if fault is None else fault.label
        if fault is not None and fault.kind in FAULT_MESSAGES:
            # Refused before anything is looked at: the change is not applied.
            status = int(fault.kind)
            body = ApiError(status, FAULT_MESSAGES[fault.kind]).body()
            if fault.kind == "429":
                headers["Retry-After"] = str(fault.retry_after)
        elif self.settings.credentials_withdrawn(datetime.now(UTC)):
            label = CREDENTIAL_OUTAGE
            refusal = withdrawn()
            status, body, headers = refusal.status, refusal.body(), refusal.headers
        else:
            try:
                with self.store.transaction() as conn:
                    account = authenticate(conn, request.headers.get("authorization"))
                    account_email = account.email
                    authorize(account, endpoint)
                    status, body, call_uuid = operation(conn, account, raw, datetime.now(UTC))
            except ApiError as exc:
                status, body, headers = exc.status, exc.body(), exc.headers
            except Exception:
                logger.exception("unexpected error on %s %s", request.method, request.url.path)
                status, body = 500, ApiError(500, "Internal server error").body()
        if call_uuid is None and endpoint == "create":
            call_uuid = _body_uuid(raw)
        with self.store.transaction() as conn:
            store.log_request(
                conn,
                {
                    "receivedAt": iso(received),
                    "method": request.method,
                    "path": request.url.path,
                    "query": request.url.query,
                    "endpoint": endpoint,
                    "callUuid": call_uuid,
                    "status": status,
                    "requestBody": raw.decode("utf-8", "replace") if raw else None,
                    "fault": label,
                    "accountEmail": account_email,
                },
            )
        return status, body, headers


def _body_uuid(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    value = data.get("uuid") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def open_sandbox(data_dir: Path, clock_skew_seconds: float = 300) -> Sandbox:
    """Open (or create and seed) the store in ``data_dir`` and register the demo account key."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Store(data_dir / DB_FILE)
    pair = load_or_create_credentials(data_dir / CREDENTIALS_FILE, seed.DEMO_ACCOUNT_EMAIL)
    with db.transaction() as conn:
        store.seed(conn, seed.ORGANIZATIONS, seed.PERSONS)
        store.put_account(
            conn,
            Account(
                email=seed.DEMO_ACCOUNT_EMAIL,
                key_id=pair.key_id,
                public_key_pem=pair.public_key_pem,
                organization_uuids=frozenset(seed.DEMO_ACCOUNT_ORGANIZATIONS),
                actions=frozenset(seed.ALL_ACTIONS),
            ),
        )
    return Sandbox(db, Settings(clock_skew_seconds=clock_skew_seconds), FaultInjector(), data_dir)


# --- the TapRaise operations ------------------------------------------------------------------


def _create(sandbox: Sandbox) -> Operation:
    def run(
        conn: sqlite3.Connection, account: Account, raw: bytes, now: datetime
    ) -> tuple[int, Any, str | None]:
        body = parse_body(CreateCallIn, raw)
        doc = calls.create(conn, account, body, sandbox.settings, now)
        return 201, doc, doc["uuid"]

    return run


def _action(sandbox: Sandbox, action: str, call_uuid: str) -> Operation:
    def run(
        conn: sqlite3.Connection, account: Account, raw: bytes, now: datetime
    ) -> tuple[int, Any, str | None]:
        body = parse_body(ACTION_BODIES[action], raw, empty_ok=True)
        checked = _uuid4_or_none(call_uuid)
        if checked is None:
            raise ApiError.invalid([("uuid", "Must be a version-4 UUID")])
        doc = calls.act(conn, account, action, checked, body, sandbox.settings, now)
        return 200, doc, checked

    return run


def _page_size(query: dict[str, str], name: str, problems: list[tuple[str, str]]) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    # ASCII digits only: str.isdigit also accepts other scripts' digits and superscripts.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        problems.append((name, f"Must be an integer from 1 to {MAX_PAGE_SIZE}"))
        return None
    return int(raw)


def _list(query: dict[str, str]) -> Operation:
    def run(
        conn: sqlite3.Connection, account: Account, raw: bytes, now: datetime
    ) -> tuple[int, Any, str | None]:
        problems: list[tuple[str, str]] = []
        first, last = _page_size(query, "first", problems), _page_size(query, "last", problems)
        if "first" in query and "last" in query:
            problems.append(("last", "first and last cannot be combined"))
        if "after" in query and "before" in query:
            problems.append(("before", "after and before cannot be combined"))
        keys: dict[str, tuple[str, int] | None] = {}
        for name in ("after", "before"):
            cursor = query.get(name)
            keys[name] = None if cursor is None else store.decode_cursor(cursor)
            if cursor is not None and keys[name] is None:
                problems.append((name, "Invalid cursor"))
        if problems:
            raise ApiError.invalid(problems)
        flt = calls.call_filter(account, query)
        # "before" alone pages backward, like "last": the page just before the cursor.
        backward = last is not None or (first is None and keys["before"] is not None)
        items, has_previous, has_next = store.page_calls(
            conn,
            flt,
            count=last or first or DEFAULT_PAGE_SIZE,
            backward=backward,
            after=keys["after"],
            before=keys["before"],
        )
        edges = [{"node": doc, "cursor": cursor} for cursor, doc in items]
        page_info = {
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
            "hasPreviousPage": has_previous,
            "hasNextPage": has_next,
        }
        return 200, {"edges": edges, "pageInfo": page_info}, None

    return run


def _mark_processed(
    conn: sqlite3.Connection, account: Account, raw: bytes, now: datetime
) -> tuple[int, Any, str | None]:
    body = parse_body(MarkProcessedIn, raw)
    failed = calls.mark_processed(conn, account, body, now)
    if failed:
        # Returned, not raised: the other entries stay marked and only the failures are listed.
        message = f"{len(failed)} of {len(body.entries)} entries were not marked"
        return 400, ApiError(400, message, failed).body(), None
    return 204, None, None


# --- sandbox-only bodies ------------------------------------------------------------------------


class _Admin(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, validate_by_name=True)


class OrganizationIn(_Admin):
    """Body of ``POST /_sandbox/organizations``."""

    uuid: UUID4 | None = None
    name: str
    max_call_attempts: Annotated[int, Field(ge=0)]


class PersonIn(_Admin):
    """Body of ``POST /_sandbox/persons``."""

    uuid: UUID4 | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone_number: str | None = None
    owning_organization_uuid: UUID4


class ServiceAccountIn(_Admin):
    """Body of ``POST /_sandbox/service-accounts``."""

    email: Annotated[str, Field(min_length=1)]
    organization_uuids: list[UUID4]
    actions: list[
        Literal["create", "add-attempt", "complete", "cancel", "expire", "list", "mark-processed"]
    ]


class OrganizationUpdateIn(_Admin):
    """Body of ``PUT /_sandbox/organizations/{uuid}``; absent fields keep their value."""

    name: str | None = None
    max_call_attempts: Annotated[int, Field(ge=0)] | None = None


class SettingsIn(_Admin):
    """Body of ``PUT /_sandbox/settings``; absent fields keep their value.

    A credential outage (every API request answered 401) starts with ``credentialOutage: true``
    (until switched off, or until ``credentialOutageUntil``) or ``credentialOutageSeconds``
    (for that long from now), and ends with ``credentialOutage: false``. ``GET`` answers
    ``credentialOutage`` and ``credentialOutageUntil``, so its body can be sent back as it is.
    """

    clock_skew_seconds: Annotated[float, Field(ge=0)] | None = None
    result_codes: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = None
    credential_outage: bool | None = None
    credential_outage_until: AwareDatetime | None = None
    credential_outage_seconds: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _one_outage(self) -> SettingsIn:
        given = self.model_fields_set
        if self.credential_outage_seconds is not None and self.credential_outage_until is not None:
            raise ValueError("credentialOutageSeconds and credentialOutageUntil exclude each other")
        if self.credential_outage is False and (
            self.credential_outage_seconds is not None or self.credential_outage_until is not None
        ):
            raise ValueError("credentialOutage false ends the outage: it takes no end time")
        if "credential_outage_until" in given and "credential_outage" not in given:
            raise ValueError("credentialOutageUntil goes with credentialOutage")
        return self


def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if loc and loc[0] in ("body", "query", "path"):
            loc = loc[1:]
        kind = error["type"]
        message = "Unknown field" if kind == "extra_forbidden" else str(error["msg"])
        problems.append((".".join(loc) or "body", message))
    return _json(400, ApiError.invalid(problems).body())


def _http_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return _json(exc.status_code, ApiError(exc.status_code, str(exc.detail)).body(), exc.headers)


def create_app(data_dir: Path, clock_skew_seconds: float = 300) -> FastAPI:
    """Build the sandbox application on the store in ``data_dir``."""
    sandbox = open_sandbox(data_dir, clock_skew_seconds)
    app = FastAPI(title="TapRaise sandbox", version="1", docs_url="/_sandbox/docs",
                  openapi_url="/_sandbox/openapi.json", redoc_url=None)  # fmt: skip
    app.state.sandbox = sandbox
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)

    @app.get("/api/v1/calls")
    async def list_calls(request: Request) -> Response:
        query = dict(request.query_params)
        return await sandbox.serve(request, "list", _list(query), None)

    @app.post("/api/v1/calls")
    async def create_call(request: Request) -> Response:
        return await sandbox.serve(request, "create", _create(sandbox), None)

    @app.put("/api/v1/calls/{call_uuid}/actions/{action}")
    async def call_action(request: Request, call_uuid: str, action: str) -> Response:
        if action not in ACTION_BODIES:
            return _json(404, ApiError(404, "Not Found").body())
        return await sandbox.serve(request, action, _action(sandbox, action, call_uuid), call_uuid)

    @app.post("/api/v1/entity-access/actions/mark-processed")
    async def mark_processed(request: Request) -> Response:
        return await sandbox.serve(request, "mark-processed", _mark_processed, None)

    _admin_routes(app, sandbox)
    add_index_routes(app)
    return app


def _admin_routes(app: FastAPI, sandbox: Sandbox) -> None:
    """Register the ``/_sandbox/`` routes: inspection, test data, settings, faults."""
    db = sandbox.store

    @app.get("/_sandbox/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/_sandbox/requests")
    def requests(
        call_uuid: Annotated[str | None, Query(alias="callUuid")] = None,
        endpoint: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> dict[str, Any]:
        with db.transaction() as conn:
            return {"requests": store.requests(conn, call_uuid, endpoint, limit)}

    @app.get("/_sandbox/calls/{call_uuid}")
    def stored_call(call_uuid: str) -> Response:
        with db.transaction() as conn:
            call = store.get_call(conn, call_uuid)
        if call is None:
            return _json(404, ApiError(404, "Call is not found").body())
        return _json(200, call.doc)

    @app.get("/_sandbox/calls/{call_uuid}/effects")
    def call_effects(call_uuid: str) -> dict[str, int]:
        with db.transaction() as conn:
            return store.effects(conn, call_uuid)

    @app.get("/_sandbox/stats")
    def stats() -> dict[str, Any]:
        with db.transaction() as conn:
            return store.stats(conn)

    @app.get("/_sandbox/marks")
    def marks() -> dict[str, Any]:
        with db.transaction() as conn:
            return {"marks": store.marks(conn)}

    @app.post("/_sandbox/organizations", status_code=201)
    def add_organization(body: OrganizationIn) -> Response:
        org_uuid = str(body.uuid or uuid_module.uuid4())
        with db.transaction() as conn:
            if not store.add_organization(conn, org_uuid, body.name, body.max_call_attempts):
                return _json(409, ApiError(409, "Organization already exists").body())
            row = store.get_organization(conn, org_uuid)
        assert row is not None
        return _json(201, store.organization_dict(row))

    @app.post("/_sandbox/persons", status_code=201)
    def add_person(body: PersonIn) -> Response:
        person_uuid = str(body.uuid or uuid_module.uuid4())
        org_uuid = str(body.owning_organization_uuid)
        with db.transaction() as conn:
            if store.get_organization(conn, org_uuid) is None:
                error = ApiError.invalid(
                    [("owningOrganizationUuid", "Organization does not exist")]
                )
                return _json(400, error.body())
            if not store.add_person(
                conn, person_uuid, body.first_name, body.last_name, body.phone_number, org_uuid
            ):
                return _json(409, ApiError(409, "Person already exists").body())
            row = store.get_person(conn, person_uuid)
        assert row is not None
        return _json(201, store.person_dict(row))

    @app.post("/_sandbox/service-accounts", status_code=201)
    def add_service_account(body: ServiceAccountIn) -> Response:
        organizations = frozenset(str(org) for org in body.organization_uuids)
        pair = generate_key_pair()
        with db.transaction() as conn:
            unknown = [org for org in organizations if store.get_organization(conn, org) is None]
            if unknown:
                error = ApiError.invalid(
                    [("organizationUuids", f"Unknown organizations: {unknown}")]
                )
                return _json(400, error.body())
            store.put_account(
                conn,
                Account(body.email, pair.key_id, pair.public_key_pem, organizations,
                        frozenset(body.actions)),
            )  # fmt: skip
        return _json(201, credentials(body.email, pair))

    @app.get("/_sandbox/organizations/{org_uuid}")
    def get_organization(org_uuid: str) -> Response:
        with db.transaction() as conn:
            row = store.get_organization(conn, org_uuid)
        if row is None:
            return _json(404, ApiError(404, "Organization is not found").body())
        return _json(200, store.organization_dict(row))

    @app.put("/_sandbox/organizations/{org_uuid}")
    def update_organization(org_uuid: str, body: OrganizationUpdateIn) -> Response:
        # Lowering maxCallAttempts below the caller's own limit shows how a refused attempt
        # is handled; calls that already have more attempts keep them.
        with db.transaction() as conn:
            if not store.update_organization(conn, org_uuid, body.name, body.max_call_attempts):
                return _json(404, ApiError(404, "Organization is not found").body())
            row = store.get_organization(conn, org_uuid)
        assert row is not None
        return _json(200, store.organization_dict(row))

    @app.get("/_sandbox/settings")
    def get_settings() -> dict[str, Any]:
        return sandbox.settings.as_json(datetime.now(UTC))

    @app.put("/_sandbox/settings")
    def put_settings(body: SettingsIn) -> dict[str, Any]:
        settings, given, now = sandbox.settings, body.model_fields_set, datetime.now(UTC)
        if "clock_skew_seconds" in given and body.clock_skew_seconds is not None:
            settings.clock_skew_seconds = body.clock_skew_seconds
        if "result_codes" in given:
            settings.result_codes = body.result_codes
        if body.credential_outage is False:
            settings.end_credential_outage()
        elif body.credential_outage_seconds is not None:
            settings.start_credential_outage(
                now + timedelta(seconds=body.credential_outage_seconds)
            )
        elif body.credential_outage:
            settings.start_credential_outage(body.credential_outage_until)
        return settings.as_json(now)

    @app.get("/_sandbox/faults")
    def get_faults() -> dict[str, Any]:
        return sandbox.faults.snapshot()

    @app.put("/_sandbox/faults")
    def put_faults(body: FaultConfig) -> dict[str, Any]:
        sandbox.faults.configure(body)
        return sandbox.faults.snapshot()

    @app.delete("/_sandbox/faults")
    def delete_faults() -> dict[str, Any]:
        sandbox.faults.clear()
        return sandbox.faults.snapshot()
