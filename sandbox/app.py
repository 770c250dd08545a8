"""The sandbox's HTTP surface: TapRaise's call endpoints, a health check, and ``/_sandbox/``.

Every ``/api/v1/`` request goes through :meth:`Sandbox.serve`, which injects faults, checks the
token (refusing every one during a credential outage), runs the endpoint in one transaction and
appends the request to the log. ``/healthz`` answers ``{"status": "ok"}`` to anyone and says
nothing more. The ``/_sandbox/`` routes (inspection, test data, the TapRaise app, settings,
faults, docs) exist only when the app is built with an admin token, and answer only requests that
carry it (``sandbox.guard``); they never see faults. Among them, ``/_sandbox/app/`` changes calls
as a user of the TapRaise app does (``sandbox.in_app``), logged as ``app:<action>``. ``/``
answers an index of what is served (HTML for a browser, else JSON), and so does ``/_sandbox/``
when it exists.

The store is its owner's alone: the data directory is made mode 0700 and every file in it 0600,
whatever the umask (the request log holds donor notes, ``service-account.json`` a private key).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sandbox import admin, operations, seed, store
from sandbox.auth import authenticate, authorize, load_or_create_credentials, withdrawn
from sandbox.faults import Fault, FaultInjector
from sandbox.guard import AdminGuard
from sandbox.index import add_index_routes
from sandbox.operations import ACTION_BODIES, AppOperation, Operation, Settings
from sandbox.responses import error_response, http_handler, json_response, validation_handler
from sandbox.store import Account, Store
from sandbox.validation import ApiError, iso

logger = logging.getLogger("sandbox")

DB_FILE = "sandbox.sqlite3"
CREDENTIALS_FILE = "service-account.json"
FAULT_MESSAGES = {
    "500": "Internal server error",
    "503": "Service unavailable",
    "429": "Too many requests",
}

# What a request is answered: (status, JSON body or None, extra headers).
_Answer = tuple[int, Any, dict[str, str]]
# The request log's ``fault`` for a request refused during a credential outage.
CREDENTIAL_OUTAGE = "credential_outage"


@dataclass(frozen=True)
class _Job:
    """One request as received: what it asks for, as the request log names it."""

    request: Request
    endpoint: str
    call_uuid: str | None
    raw: bytes
    received: datetime


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
        job = _Job(request, endpoint, call_uuid, await request.body(), received)
        fault = self.faults.decide(endpoint)
        if fault is not None and fault.latency > 0:
            await asyncio.sleep(fault.latency)
        if fault is not None and fault.kind == "late_apply":
            held = asyncio.ensure_future(self._apply_later(job, operation, fault))
            self.held.add(held)
            held.add_done_callback(self.held.discard)
            # Shielded: a client that gives up must not stop the change from being applied.
            answer = await asyncio.shield(held)
        else:
            answer = self._answer(job, operation, fault)
        if fault is not None and fault.kind == "late":
            # The change is applied and logged; only the answer is held back.
            await asyncio.sleep(fault.late_delay)
        return json_response(*answer)

    async def _apply_later(self, job: _Job, operation: Operation, fault: Fault) -> _Answer:
        # Nothing is looked at before the delay: a look-up meanwhile sees the state before.
        await asyncio.sleep(fault.late_apply_delay)
        return self._answer(job, operation, fault)

    def _answer(self, job: _Job, operation: Operation, fault: Fault | None) -> _Answer:
        """Run the request (unless a fault refuses it) and log it."""
        request, endpoint, call_uuid, raw = job.request, job.endpoint, job.call_uuid, job.raw
        account_email: str | None = None
        headers: dict[str, str] = {}
        label = None if fault is None else fault.label
        try:
            if fault is not None and fault.kind in FAULT_MESSAGES:
                # Refused before anything is looked at: the change is not applied.
                retry = {"Retry-After": str(fault.retry_after)} if fault.kind == "429" else None
                raise ApiError(int(fault.kind), FAULT_MESSAGES[fault.kind], headers=retry)
            if self.settings.credentials_withdrawn(datetime.now(UTC)):
                label = CREDENTIAL_OUTAGE
                raise withdrawn()
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
        self._log(job, call_uuid, status, label, account_email)
        return status, body, headers

    async def perform_in_app(
        self, request: Request, action: str, operation: AppOperation, call_uuid: str | None
    ) -> Response:
        """Make a change as a user of the TapRaise app, and log it as the app's.

        No fault, no service account, no credential outage: the app is not a client of the API.
        The log names the endpoint ``app:<action>`` and no account email.
        """
        endpoint = f"{store.APP_ENDPOINT_PREFIX}{action}"
        job = _Job(request, endpoint, call_uuid, await request.body(), datetime.now(UTC))
        headers: dict[str, str] = {}
        try:
            with self.store.transaction() as conn:
                status, body, call_uuid = operation(conn, job.raw, datetime.now(UTC))
        except ApiError as exc:
            status, body, headers = exc.status, exc.body(), exc.headers
        except Exception:
            logger.exception("unexpected error on %s %s", request.method, request.url.path)
            status, body = 500, ApiError(500, "Internal server error").body()
        if call_uuid is None:
            call_uuid = _body_uuid(job.raw)
        self._log(job, call_uuid, status, None, None)
        return json_response(status, body, headers)

    def _log(
        self,
        job: _Job,
        call_uuid: str | None,
        status: int,
        fault: str | None,
        account_email: str | None,
    ) -> None:
        """Append a received request and how it was answered to the request log."""
        request, raw = job.request, job.raw
        with self.store.transaction() as conn:
            store.log_request(
                conn,
                {
                    "receivedAt": iso(job.received),
                    "method": request.method,
                    "path": request.url.path,
                    "query": request.url.query,
                    "endpoint": job.endpoint,
                    "callUuid": call_uuid,
                    "status": status,
                    "requestBody": raw.decode("utf-8", "replace") if raw else None,
                    "fault": fault,
                    "accountEmail": account_email,
                },
            )


def _body_uuid(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    value = data.get("uuid") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def make_private_dir(data_dir: Path) -> None:
    """Create ``data_dir`` if needed and leave it (and every file in it) to its owner only.

    A directory or files made by an earlier version, or under a loose umask, are tightened too.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(0o700)  # mkdir's mode is cut by the umask, and an existing dir keeps its own
    for entry in data_dir.iterdir():
        if entry.is_file() and not entry.is_symlink():
            entry.chmod(0o600)


def open_sandbox(data_dir: Path, clock_skew_seconds: float = 300) -> Sandbox:
    """Open (or create and seed) the store in ``data_dir`` and register the demo account key."""
    make_private_dir(data_dir)
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


def create_app(
    data_dir: Path, clock_skew_seconds: float = 300, *, admin_token: str | None = None
) -> FastAPI:
    """Build the sandbox application on the store in ``data_dir``.

    Args:
        data_dir: Where the store and the demo account's ``service-account.json`` live.
        clock_skew_seconds: How far in the future the API accepts the times it is sent.
        admin_token: Serve the ``/_sandbox/`` routes to requests bearing this token; None (the
            default) serves only the TapRaise API and ``/healthz``.
    """
    sandbox = open_sandbox(data_dir, clock_skew_seconds)
    # The docs and the schema are /_sandbox/ routes too (admin.docs_routes), behind the token.
    app = FastAPI(
        title="TapRaise sandbox", version="1", docs_url=None, openapi_url=None, redoc_url=None
    )
    app.state.sandbox = sandbox
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_handler)

    @app.get("/api/v1/calls")
    async def list_calls(request: Request) -> Response:
        operation = partial(operations.list_calls, dict(request.query_params))
        return await sandbox.serve(request, "list", operation, None)

    @app.post("/api/v1/calls")
    async def create_call(request: Request) -> Response:
        operation = partial(operations.create, sandbox.settings)
        return await sandbox.serve(request, "create", operation, None)

    @app.put("/api/v1/calls/{call_uuid}/actions/{action}")
    async def call_action(request: Request, call_uuid: str, action: str) -> Response:
        if action not in ACTION_BODIES:
            return error_response(ApiError(404, "Not Found"))
        operation = partial(operations.act, sandbox.settings, action, call_uuid)
        return await sandbox.serve(request, action, operation, call_uuid)

    @app.post("/api/v1/entity-access/actions/mark-processed")
    async def mark_processed(request: Request) -> Response:
        return await sandbox.serve(request, "mark-processed", operations.mark_processed, None)

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    if admin_token is not None:
        for router in admin.ROUTERS:
            app.include_router(router)
        app.add_middleware(AdminGuard, token=admin_token)
    add_index_routes(app, admin=admin_token is not None)
    return app
