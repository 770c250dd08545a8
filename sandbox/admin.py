"""The ``/_sandbox/`` routes for tests: inspection, test data, the TapRaise app
(``sandbox.in_app``), settings, faults and the API docs.

The app includes them only when it has an admin token, and ``sandbox.guard`` lets through only
requests that carry it; they never see faults. Each area is one router; the app includes them in
the order of ``ROUTERS``, which is also their order in the OpenAPI schema.
"""

from __future__ import annotations

import uuid as uuid_module
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from pydantic import UUID4, AwareDatetime, Field, model_validator

from sandbox import in_app, store
from sandbox.auth import credentials, generate_key_pair
from sandbox.faults import FaultConfig, FaultInjector
from sandbox.operations import Settings
from sandbox.responses import error_response, json_response
from sandbox.store import Account, Store
from sandbox.validation import Action, ApiError, CamelModel

# --- bodies -----------------------------------------------------------------------------------


class OrganizationIn(CamelModel):
    """Body of ``POST /_sandbox/organizations``."""

    uuid: UUID4 | None = None
    name: str
    max_call_attempts: Annotated[int, Field(ge=0)]


class PersonIn(CamelModel):
    """Body of ``POST /_sandbox/persons``."""

    uuid: UUID4 | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone_number: str | None = None
    owning_organization_uuid: UUID4


class ServiceAccountIn(CamelModel):
    """Body of ``POST /_sandbox/service-accounts``."""

    email: Annotated[str, Field(min_length=1)]
    organization_uuids: list[UUID4]
    actions: list[Action]


class OrganizationUpdateIn(CamelModel):
    """Body of ``PUT /_sandbox/organizations/{uuid}``; absent fields keep their value."""

    name: str | None = None
    max_call_attempts: Annotated[int, Field(ge=0)] | None = None


class SettingsIn(CamelModel):
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


# --- what the routes work on: the running sandbox's parts -------------------------------------


def _store(request: Request) -> Store:
    return cast(Store, request.app.state.sandbox.store)


def _settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.sandbox.settings)


def _faults(request: Request) -> FaultInjector:
    return cast(FaultInjector, request.app.state.sandbox.faults)


StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
FaultsDep = Annotated[FaultInjector, Depends(_faults)]


def _found(found: dict[str, Any] | None, missing: str) -> Response:
    """The answer showing what was looked up, or a 404 saying it is ``missing``."""
    if found is None:
        return error_response(ApiError(404, missing))
    return json_response(200, found)


# --- inspection -------------------------------------------------------------------------------

inspection = APIRouter()


@inspection.get("/_sandbox/requests")
def requests(
    db: StoreDep,
    call_uuid: Annotated[str | None, Query(alias="callUuid")] = None,
    endpoint: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> dict[str, Any]:
    with db.transaction() as conn:
        return {"requests": store.requests(conn, call_uuid, endpoint, limit)}


@inspection.get("/_sandbox/calls/{call_uuid}")
def stored_call(call_uuid: str, db: StoreDep) -> Response:
    with db.transaction() as conn:
        call = store.get_call(conn, call_uuid)
    return _found(None if call is None else call.doc, "Call is not found")


@inspection.get("/_sandbox/calls/{call_uuid}/effects")
def call_effects(call_uuid: str, db: StoreDep) -> dict[str, int]:
    with db.transaction() as conn:
        return store.effects(conn, call_uuid)


@inspection.get("/_sandbox/stats")
def stats(db: StoreDep) -> dict[str, Any]:
    with db.transaction() as conn:
        return store.stats(conn)


@inspection.get("/_sandbox/marks")
def marks(
    db: StoreDep,
    entity_name: Annotated[str | None, Query(alias="entityName")] = None,
    entity_uuid: Annotated[str | None, Query(alias="entityUuid")] = None,
) -> dict[str, Any]:
    # Each mark names the account that made it and its consumerIdentifier: which consumer
    # processed which call, and under which id of its own.
    with db.transaction() as conn:
        return {"marks": store.marks(conn, entity_name, entity_uuid)}


# --- test data --------------------------------------------------------------------------------

test_data = APIRouter()


@test_data.post("/_sandbox/organizations", status_code=201)
def add_organization(body: OrganizationIn, db: StoreDep) -> Response:
    org_uuid = str(body.uuid or uuid_module.uuid4())
    with db.transaction() as conn:
        if not store.add_organization(conn, org_uuid, body.name, body.max_call_attempts):
            return error_response(ApiError(409, "Organization already exists"))
        return json_response(201, store.get_organization(conn, org_uuid))


@test_data.post("/_sandbox/persons", status_code=201)
def add_person(body: PersonIn, db: StoreDep) -> Response:
    person_uuid = str(body.uuid or uuid_module.uuid4())
    org_uuid = str(body.owning_organization_uuid)
    with db.transaction() as conn:
        if store.get_organization(conn, org_uuid) is None:
            missing = ("owningOrganizationUuid", "Organization does not exist")
            return error_response(ApiError.invalid([missing]))
        if not store.add_person(
            conn, person_uuid, body.first_name, body.last_name, body.phone_number, org_uuid
        ):
            return error_response(ApiError(409, "Person already exists"))
        return json_response(201, store.get_person(conn, person_uuid))


@test_data.post("/_sandbox/service-accounts", status_code=201)
def add_service_account(body: ServiceAccountIn, db: StoreDep) -> Response:
    organizations = frozenset(str(org) for org in body.organization_uuids)
    pair = generate_key_pair()
    with db.transaction() as conn:
        unknown = [org for org in organizations if store.get_organization(conn, org) is None]
        if unknown:
            problem = ("organizationUuids", f"Unknown organizations: {unknown}")
            return error_response(ApiError.invalid([problem]))
        store.put_account(
            conn,
            Account(body.email, pair.key_id, pair.public_key_pem, organizations,
                    frozenset(body.actions)),
        )  # fmt: skip
    return json_response(201, credentials(body.email, pair))


@test_data.get("/_sandbox/organizations/{org_uuid}")
def get_organization(org_uuid: str, db: StoreDep) -> Response:
    with db.transaction() as conn:
        return _found(store.get_organization(conn, org_uuid), "Organization is not found")


@test_data.put("/_sandbox/organizations/{org_uuid}")
def update_organization(org_uuid: str, body: OrganizationUpdateIn, db: StoreDep) -> Response:
    # Lowering maxCallAttempts below the caller's own limit shows how a refused attempt is
    # handled; calls that already have more attempts keep them.
    with db.transaction() as conn:
        store.update_organization(conn, org_uuid, body.name, body.max_call_attempts)
        return _found(store.get_organization(conn, org_uuid), "Organization is not found")


# --- settings ---------------------------------------------------------------------------------

settings_routes = APIRouter()


@settings_routes.get("/_sandbox/settings")
def get_settings(settings: SettingsDep) -> dict[str, Any]:
    return settings.as_json(datetime.now(UTC))


@settings_routes.put("/_sandbox/settings")
def put_settings(body: SettingsIn, settings: SettingsDep) -> dict[str, Any]:
    given, now = body.model_fields_set, datetime.now(UTC)
    if "clock_skew_seconds" in given and body.clock_skew_seconds is not None:
        settings.clock_skew_seconds = body.clock_skew_seconds
    if "result_codes" in given:
        settings.result_codes = body.result_codes
    if body.credential_outage is False:
        settings.end_credential_outage()
    elif body.credential_outage_seconds is not None:
        settings.start_credential_outage(now + timedelta(seconds=body.credential_outage_seconds))
    elif body.credential_outage:
        settings.start_credential_outage(body.credential_outage_until)
    return settings.as_json(now)


# --- faults -----------------------------------------------------------------------------------

fault_routes = APIRouter()


@fault_routes.get("/_sandbox/faults")
def get_faults(faults: FaultsDep) -> dict[str, Any]:
    return faults.snapshot()


@fault_routes.put("/_sandbox/faults")
def put_faults(body: FaultConfig, faults: FaultsDep) -> dict[str, Any]:
    faults.configure(body)
    return faults.snapshot()


@fault_routes.delete("/_sandbox/faults")
def delete_faults(faults: FaultsDep) -> dict[str, Any]:
    faults.clear()
    return faults.snapshot()


# --- the API docs -----------------------------------------------------------------------------

docs_routes = APIRouter()


@docs_routes.get("/_sandbox/openapi.json", include_in_schema=False)
def openapi_schema(request: Request) -> dict[str, Any]:
    return cast(dict[str, Any], request.app.openapi())


@docs_routes.get("/_sandbox/docs", include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    title = f"{request.app.title} - docs"
    return get_swagger_ui_html(openapi_url="/_sandbox/openapi.json", title=title)


ROUTERS: tuple[APIRouter, ...] = (
    inspection, test_data, in_app.router, settings_routes, fault_routes, docs_routes
)  # fmt: skip
"""The ``/_sandbox/`` routers, in the order the app includes them."""
