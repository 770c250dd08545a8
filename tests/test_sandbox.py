"""The sandbox behaves like TapRaise: every endpoint, status code, fault kind and the log.

Everything goes over real HTTP to the sandbox process; tokens are signed here with PyJWT.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox import auth, index
from sandbox.seed import (
    DEMO_ORGANIZATION_UUID,
    DEMO_PERSON_UUIDS,
    FOREIGN_PERSON_UUID,
    SECOND_ORG_PERSON_UUIDS,
)
from tests.helpers import fresh_private_key_pem
from tests.sandbox_fixture import FINAL_TRANSITIONS, SandboxServer

pytestmark = pytest.mark.timeout(60)

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
CALL_FIELDS = {
    "uuid", "status", "type", "requestedAt", "externalMetadata", "attempts", "attemptsCount",
    "result", "lastUpdatedAt", "cancelledAt", "completedAt", "expiredAt", "notes", "personUuid",
    "relatedCaseUuid", "callingOrganizationUuid",
}  # fmt: skip
PERSON = DEMO_PERSON_UUIDS[0]
USER = "f5e2ba11-1786-4ba9-bd5a-0d99317f4706"


def sign(
    sandbox: SandboxServer,
    *,
    email: str | None = None,
    iss: str | None = None,
    kid: str | None = None,
    key_pem: str | None = None,
    iat: float | None = None,
    lifetime: float = 300,
) -> str:
    """Sign a token the way a TapRaise client does (demo account unless told otherwise)."""
    email = email or sandbox.account_email
    issued = int(time.time() if iat is None else iat)
    claims = {"email": email, "iss": iss or email, "iat": issued, "exp": int(issued + lifetime)}
    return jwt.encode(
        claims,
        key_pem or sandbox.private_key_pem,
        algorithm="RS256",
        headers={"kid": kid or sandbox.private_key_id},
    )


def client_for(sandbox: SandboxServer, token: str, timeout: float = 10) -> httpx.Client:
    """An HTTP client that sends ``token`` as Bearer."""
    return httpx.Client(
        base_url=f"{sandbox.base_url}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def api(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    """A client authenticated as the demo service account."""
    with client_for(sandbox, sign(sandbox, lifetime=3600)) as client:
        yield client


def iso(moment: datetime) -> str:
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def ago(**delta: float) -> str:
    return iso(datetime.now(UTC) - timedelta(**delta))


def new_call(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    """Create a TapRaise-managed call (overridable fields) and return it."""
    body = {"uuid": str(uuid.uuid4()), "requestedAt": ago(hours=1), "personUuid": PERSON,
            "type": "verification", **fields}  # fmt: skip
    response = api.post("/calls", json=body)
    assert response.status_code == 201, response.text
    call: dict[str, Any] = response.json()
    return call


def put(api: httpx.Client, call_uuid: str, action: str, body: Any = None) -> httpx.Response:
    return api.put(f"/calls/{call_uuid}/actions/{action}", json=body if body is not None else {})


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["statusCode"] == status and body["message"]
    if field is not None:
        assert field in [error["field"] for error in body["errors"]], body


# --- the index ----------------------------------------------------------------------------------

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize("path", ["", "/", "/_sandbox/", "/_sandbox"])
def test_the_root_and_sandbox_links_answer_an_index_of_the_pages(
    sandbox: SandboxServer, path: str
) -> None:
    headers = sandbox.admin_headers if path.startswith("/_sandbox") else {}
    as_json = httpx.get(f"{sandbox.base_url}{path}", headers=headers, follow_redirects=False)
    assert as_json.status_code == 200, as_json.text
    assert as_json.headers["content-type"].startswith("application/json")
    pages = {(page["method"], page["path"]) for page in as_json.json()["pages"]}
    wanted = {"/_sandbox/docs", "/healthz", "/_sandbox/requests", "/_sandbox/stats"}
    assert {("GET", wanted_path) for wanted_path in wanted} <= pages

    browser = {**headers, "Accept": BROWSER_ACCEPT}
    as_html = httpx.get(f"{sandbox.base_url}{path}", headers=browser)
    assert as_html.status_code == 200
    assert as_html.headers["content-type"].startswith("text/html")
    # A browser follows a link without the admin token: only the open pages are linked.
    assert 'href="/healthz"' in as_html.text
    for admin_path in wanted - {"/healthz"}:
        assert f"<code>{admin_path}</code>" in as_html.text


def test_the_index_lists_every_sandbox_route_and_each_plain_page_answers(
    sandbox: SandboxServer,
) -> None:
    listed = sandbox.admin.get("/").json()["pages"]
    schema = sandbox.admin.get("/openapi.json").json()
    routes = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if path.startswith("/_sandbox/")
        for method in operations
    }
    assert routes <= {(page["method"], page["path"]) for page in listed}
    for page in listed:
        if page["method"] == "GET" and "{" not in page["path"]:
            url = f"{sandbox.base_url}{page['path']}"
            status = httpx.get(url, headers=sandbox.admin_headers).status_code
            # The API itself asks for a service account's token.
            assert status == (401 if page["path"].startswith("/api/") else 200), page


def test_the_index_follows_the_accept_header() -> None:
    assert index.wants_html(BROWSER_ACCEPT)
    assert index.wants_html("text/html")
    assert not index.wants_html("*/*")
    assert not index.wants_html("application/json")
    assert not index.wants_html("text/html;q=0, application/json")
    assert not index.wants_html(None)


# --- create ---------------------------------------------------------------------------------


def test_health(sandbox: SandboxServer) -> None:
    assert httpx.get(f"{sandbox.base_url}/healthz").json() == {"status": "ok"}


def test_create_managed_call_returns_the_full_call_object(api: httpx.Client) -> None:
    call = new_call(
        api, type="happy_call", notes="first", requestedAt="2025-05-17T14:36:18.1749+02:00"
    )
    assert set(call) == CALL_FIELDS
    assert call["status"] == "requested" and call["type"] == "happy_call"
    assert call["requestedAt"] == "2025-05-17T12:36:18.174Z"
    assert TIMESTAMP.match(call["lastUpdatedAt"])
    assert call["attempts"] == [] and call["attemptsCount"] == 0
    assert call["externalMetadata"] is None and call["result"] is None
    assert call["cancelledAt"] is call["completedAt"] is call["expiredAt"] is None


def test_create_without_uuid_gets_a_server_uuid(api: httpx.Client) -> None:
    response = api.post(
        "/calls", json={"requestedAt": ago(minutes=1), "personUuid": PERSON, "type": "winback"}
    )
    assert response.status_code == 201
    assert uuid.UUID(response.json()["uuid"]).version == 4


def test_second_create_with_same_uuid_is_409_and_not_saved(
    api: httpx.Client, sandbox: SandboxServer
) -> None:
    call = new_call(api, notes="original")
    duplicate = {"uuid": call["uuid"], "requestedAt": ago(minutes=1), "personUuid": PERSON,
                 "type": "winback", "notes": "dup"}  # fmt: skip
    again = api.post("/calls", json=duplicate)
    assert_error(again, 409)
    assert again.json()["message"] == "Call already exists"
    stored = sandbox.stored_call(call["uuid"])
    assert stored is not None and stored["notes"] == "original" and stored["type"] == "verification"
    assert sandbox.effects(call["uuid"])["create"] == 1


def test_external_call_with_the_published_example_body(api: httpx.Client) -> None:
    body = {
        "uuid": str(uuid.uuid4()),
        "status": "completed",
        "requestedAt": "2025-05-17T12:36:18.174Z",
        "externalMetadata": {
            "applicationName": "basicall",
            "referenceId": "ref_1234567890",
            "agentReferenceId": "agent_1234567890",
            "statusCode": "completed",
            "statusDescription": "The call was completed successfully",
            "additionalProperties": '{"foo": "bar"}',
        },
        "attempts": [{"createdAt": "2025-05-17T12:36:18.174Z", "userUuid": USER}],
        "result": {"resultCode": "confirmed", "completedAt": "2023-05-01T00:00:00.000Z",
                   "notes": "text", "duration": 120.23, "donorRetentionRating": 7},
        "requestedByUserUuid": USER,
        "cancelledAt": "2023-05-01T00:00:00.000Z",
        "completedAt": "2023-05-01T00:00:00.000Z",
        "notes": "text",
        "personUuid": PERSON,
        "relatedCaseUuid": USER,
        "callingOrganizationUuid": DEMO_ORGANIZATION_UUID,
    }  # fmt: skip
    response = api.post("/calls", json=body)
    assert response.status_code == 201, response.text
    call = response.json()
    assert call["type"] == "verification" and call["status"] == "completed"
    assert call["externalMetadata"]["additionalProperties"] == {"foo": "bar"}
    assert call["attempts"] == [
        {"userUuid": USER,
         "attemptAt": "2025-05-17T12:36:18.174Z", "createdAt": "2025-05-17T12:36:18.174Z"}
    ]  # fmt: skip
    assert call["attemptsCount"] == 1 and call["result"]["duration"] == 120.23


def test_external_call_with_object_properties_and_no_status_is_requested(api: httpx.Client) -> None:
    meta = {"applicationName": "dialer", "referenceId": "r1", "additionalProperties": {"a": [1]}}
    response = api.post("/calls", json={"requestedAt": ago(minutes=5), "personUuid": PERSON,
                                        "externalMetadata": meta})  # fmt: skip
    assert response.status_code == 201, response.text
    call = response.json()
    assert call["status"] == "requested" and call["type"] == "verification"
    assert call["externalMetadata"]["additionalProperties"] == {"a": [1]}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"externalMetadata": {"applicationName": "x"}, "type": "winback"}, "type"),
        ({"externalMetadata": {"applicationName": "x"}, "status": "completed"}, "result"),
        ({"status": "requested"}, "status"),
        ({"result": {"resultCode": "confirmed"}}, "result"),
        ({"attempts": []}, "attempts"),
        ({"completedAt": "2025-01-01T00:00:00Z"}, "completedAt"),
        ({"cancelledAt": "2025-01-01T00:00:00Z"}, "cancelledAt"),
        ({"type": None}, "type"),
    ],
)
def test_mode_rules_on_create(api: httpx.Client, fields: dict[str, Any], field: str) -> None:
    body = {"requestedAt": ago(minutes=1), "personUuid": PERSON, "type": "verification", **fields}
    if "externalMetadata" in fields and "type" not in fields:
        body.pop("type")
    assert_error(api.post("/calls", json=body), 400, field)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"requestedAt": "2025-05-17T12:36:18"}, "requestedAt"),
        ({"requestedAt": 1715949378}, "requestedAt"),
        ({"personUuid": "not-a-uuid"}, "personUuid"),
        ({"personUuid": "f5e2ba11-1786-1ba9-bd5a-0d99317f4706"}, "personUuid"),
        ({"type": "sales"}, "type"),
        ({"notes": 5}, "notes"),
        ({"colour": "red"}, "colour"),
        (
            {"externalMetadata": {"additionalProperties": "[1, 2]"}},
            "externalMetadata.additionalProperties",
        ),
        ({"externalMetadata": {"unknown": 1}}, "externalMetadata.unknown"),
        ({"personUuid": None}, "personUuid"),
    ],
)
def test_create_validation_names_the_field(
    api: httpx.Client, change: dict[str, Any], field: str
) -> None:
    body = {"requestedAt": ago(minutes=1), "personUuid": PERSON, "type": "verification", **change}
    assert_error(api.post("/calls", json=body), 400, field)


def test_malformed_json_and_non_object_bodies_are_400(api: httpx.Client) -> None:
    headers = {"Content-Type": "application/json"}
    assert_error(api.post("/calls", content=b"{nope", headers=headers), 400, "body")
    assert_error(api.post("/calls", content=b"[]", headers=headers), 400, "body")
    assert_error(api.post("/calls", content=b""), 400, "body")


def test_unknown_person_is_400_and_foreign_person_is_403(api: httpx.Client) -> None:
    body = {"requestedAt": ago(minutes=1), "type": "verification"}
    assert_error(
        api.post("/calls", json={**body, "personUuid": str(uuid.uuid4())}), 400, "personUuid"
    )
    assert_error(api.post("/calls", json={**body, "personUuid": FOREIGN_PERSON_UUID}), 403)


# --- authentication and authorization ---------------------------------------------------------


_other_key_pem = functools.cache(fresh_private_key_pem)


@pytest.mark.parametrize(
    "case",
    ["missing", "not-bearer", "garbage", "unknown-kid", "bad-signature", "expired", "too-long",
     "iss-differs", "foreign-email", "hs256"],
)  # fmt: skip
def test_bad_tokens_are_401(sandbox: SandboxServer, case: str) -> None:
    headers: dict[str, str] = {}
    now = time.time()
    tokens = {
        "garbage": "abc.def.ghi",
        "unknown-kid": sign(sandbox, kid="no-such-key"),
        "bad-signature": sign(sandbox, key_pem=_other_key_pem()),
        "expired": sign(sandbox, iat=now - 1000, lifetime=300),
        "too-long": sign(sandbox, lifetime=3601),
        "iss-differs": sign(sandbox, iss="someone@else.example"),
        "foreign-email": sign(sandbox, email="someone@else.example"),
        "hs256": jwt.encode({"email": sandbox.account_email, "iss": sandbox.account_email,
                             "iat": int(now), "exp": int(now) + 60}, "secret" * 6,
                            algorithm="HS256", headers={"kid": sandbox.private_key_id}),
    }  # fmt: skip
    if case == "not-bearer":
        headers["Authorization"] = "Basic dXNlcjpwYXNz"
    elif case in tokens:
        headers["Authorization"] = f"Bearer {tokens[case]}"
    response = httpx.get(f"{sandbox.base_url}/api/v1/calls", headers=headers)
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_token_issued_a_few_seconds_ahead_of_the_sandbox_clock_is_accepted(
    sandbox: SandboxServer,
) -> None:
    with client_for(sandbox, sign(sandbox, iat=time.time() + 5)) as client:
        assert client.get("/calls").status_code == 200


@pytest.mark.parametrize("ahead", [20, 600])
def test_a_token_issued_further_in_the_future_is_401_naming_the_clock(
    sandbox: SandboxServer, ahead: float
) -> None:
    with client_for(sandbox, sign(sandbox, iat=time.time() + ahead)) as client:
        response = client.get("/calls")
    assert_error(response, 401)
    message = response.json()["message"]
    assert "issued in the future" in message and "clock" in message, message
    assert f"at most {auth.ISSUED_AT_LEEWAY_SECONDS} s" in message


def test_one_hour_token_is_accepted(sandbox: SandboxServer) -> None:
    with client_for(sandbox, sign(sandbox, lifetime=3600)) as client:
        assert client.get("/calls").status_code == 200


def test_actions_and_organizations_limit_a_service_account(
    api: httpx.Client, sandbox: SandboxServer
) -> None:
    creds = sandbox.add_service_account(
        f"lister-{uuid.uuid4().hex[:8]}@example.org", [DEMO_ORGANIZATION_UUID], ["list", "complete"]
    )
    token = sign(sandbox, email=creds["accountEmail"], kid=creds["privateKeyId"],
                 key_pem=creds["privateKey"])  # fmt: skip
    second_org_call = new_call(api, personUuid=SECOND_ORG_PERSON_UUIDS[0])
    with client_for(sandbox, token) as limited:
        assert limited.get("/calls", params={"first": 100}).status_code == 200
        body = {"requestedAt": ago(minutes=1), "personUuid": PERSON, "type": "verification"}
        assert_error(limited.post("/calls", json=body), 403)
        assert_error(put(limited, second_org_call["uuid"], "cancel"), 403)
        result = {"result": {"resultCode": "confirmed"}}
        assert_error(put(limited, second_org_call["uuid"], "complete", result), 403)
        assert put(limited, new_call(api)["uuid"], "complete", result).status_code == 200
        assert_error(limited.post("/entity-access/actions/mark-processed", json={}), 403)


def test_calling_organization_outside_scope_is_403(
    api: httpx.Client, sandbox: SandboxServer
) -> None:
    other = sandbox.add_organization("Call Centre", 2)
    body = {"requestedAt": ago(minutes=1), "personUuid": PERSON, "type": "verification",
            "callingOrganizationUuid": other["uuid"]}  # fmt: skip
    assert_error(api.post("/calls", json=body), 403)


# --- actions --------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["add-attempt", "complete", "cancel", "expire"])
def test_unknown_call_is_404(api: httpx.Client, action: str) -> None:
    body = {"result": {"resultCode": "confirmed"}} if action == "complete" else {}
    response = put(api, str(uuid.uuid4()), action, body)
    assert_error(response, 404)
    assert response.json()["message"] == "Call is not found"


def test_malformed_call_uuid_in_path_is_400(api: httpx.Client) -> None:
    assert_error(put(api, "nope", "cancel"), 400, "uuid")


def test_add_attempt_and_complete(api: httpx.Client, sandbox: SandboxServer) -> None:
    call = new_call(api)
    user = str(uuid.uuid4())
    attempt_at = ago(minutes=30)
    response = put(api, call["uuid"], "add-attempt", {"userUuid": user, "attemptAt": attempt_at})
    assert response.status_code == 200, response.text
    attempted = response.json()
    assert attempted["attemptsCount"] == 1
    assert attempted["attempts"][0]["userUuid"] == user
    assert attempted["attempts"][0]["attemptAt"] == attempt_at
    assert attempted["lastUpdatedAt"] >= call["lastUpdatedAt"]
    defaulted = put(api, call["uuid"], "add-attempt").json()  # attemptAt defaults to now
    assert defaulted["attemptsCount"] == 2 and TIMESTAMP.match(
        defaulted["attempts"][1]["attemptAt"]
    )
    result = {"resultCode": "confirmed", "notes": "ok", "duration": 61.5, "donorRetentionRating": 9}
    completed = put(api, call["uuid"], "complete", {"userUuid": user, "result": result}).json()
    assert completed["status"] == "completed"
    assert completed["result"]["resultCode"] == "confirmed"
    assert completed["result"]["duration"] == 61.5
    assert completed["completedAt"] == completed["result"]["completedAt"]
    assert sandbox.effects(call["uuid"]) == {"create": 1, "add-attempt": 2, "complete": 1,
                                            "cancel": 0, "expire": 0}  # fmt: skip


@pytest.mark.parametrize(
    ("result", "field"),
    [
        ({"resultCode": ""}, "result.resultCode"),
        ({"resultCode": "x" * 65}, "result.resultCode"),
        ({"resultCode": "ok", "donorRetentionRating": 0}, "result.donorRetentionRating"),
        ({"resultCode": "ok", "donorRetentionRating": 11}, "result.donorRetentionRating"),
        ({"resultCode": "ok", "donorRetentionRating": "7"}, "result.donorRetentionRating"),
        ({"resultCode": "ok", "duration": -1}, "result.duration"),
        ({"resultCode": "ok", "completedAt": "2025-01-01T10:00:00"}, "result.completedAt"),
        ({"notes": "no code"}, "result.resultCode"),
    ],
)
def test_complete_validation(api: httpx.Client, result: dict[str, Any], field: str) -> None:
    call = new_call(api)
    assert_error(put(api, call["uuid"], "complete", {"result": result}), 400, field)
    assert_error(put(api, call["uuid"], "complete", {}), 400, "result")


def test_result_code_of_64_characters_is_accepted(api: httpx.Client) -> None:
    call = new_call(api)
    response = put(api, call["uuid"], "complete", {"result": {"resultCode": "x" * 64}})
    assert response.status_code == 200


@pytest.mark.parametrize(("first", "second", "status"), FINAL_TRANSITIONS)
def test_transitions_out_of_final_states(
    api: httpx.Client, sandbox: SandboxServer, first: str, second: str, status: int
) -> None:
    call = new_call(api)
    bodies = {"complete": {"result": {"resultCode": "confirmed"}}}
    done = put(api, call["uuid"], first, bodies.get(first))
    assert done.status_code == 200, done.text
    assert_error(put(api, call["uuid"], second, bodies.get(second)), status)
    assert sandbox.stored_call(call["uuid"]) == done.json()


def test_cancel_409_message(api: httpx.Client) -> None:
    call = new_call(api)
    cancelled = put(api, call["uuid"], "cancel", {"cancelledAt": ago(minutes=2)})
    assert cancelled.json()["status"] == "cancelled"
    assert put(api, call["uuid"], "cancel").json()["message"] == "Call already cancelled"


def test_expire_defaults_to_now(api: httpx.Client) -> None:
    call = new_call(api)
    before = iso(datetime.now(UTC) - timedelta(seconds=1))
    expired = put(api, call["uuid"], "expire").json()
    assert expired["status"] == "expired" and expired["expiredAt"] >= before


@pytest.mark.parametrize(("person", "maximum"), [(SECOND_ORG_PERSON_UUIDS[1], 3), (PERSON, 5)])
def test_attempts_are_limited_by_the_owning_organization(
    api: httpx.Client, person: str, maximum: int
) -> None:
    call = new_call(api, personUuid=person)
    for _ in range(maximum):
        assert put(api, call["uuid"], "add-attempt").status_code == 200
    assert_error(put(api, call["uuid"], "add-attempt"), 400)
    assert put(api, call["uuid"], "expire").json()["attemptsCount"] == maximum


def test_external_calls_are_not_limited_by_domain_rules(api: httpx.Client) -> None:
    body = {"requestedAt": ago(minutes=5), "personUuid": SECOND_ORG_PERSON_UUIDS[2],
            "externalMetadata": {"applicationName": "dialer"}}  # fmt: skip
    response = api.post("/calls", json=body)
    call = response.json()
    for _ in range(4):
        assert put(api, call["uuid"], "add-attempt", {"attemptAt": ago(days=3)}).status_code == 200


def test_time_rules_and_clock_skew_setting(api: httpx.Client, sandbox: SandboxServer) -> None:
    previous = sandbox.settings()
    sandbox.set_settings(clockSkewSeconds=300)
    call = new_call(api, requestedAt=ago(hours=1))
    assert_error(
        put(api, call["uuid"], "add-attempt", {"attemptAt": ago(hours=2)}), 400, "attemptAt"
    )
    soon = iso(datetime.now(UTC) + timedelta(minutes=4))
    later = iso(datetime.now(UTC) + timedelta(days=2))
    assert put(api, call["uuid"], "add-attempt", {"attemptAt": soon}).status_code == 200
    assert_error(put(api, call["uuid"], "cancel", {"cancelledAt": later}), 400, "cancelledAt")
    try:
        sandbox.set_settings(clockSkewSeconds=7 * 86400)
        assert put(api, call["uuid"], "cancel", {"cancelledAt": later}).status_code == 200
    finally:
        sandbox.set_settings(**previous)


def test_result_code_allow_list(api: httpx.Client, sandbox: SandboxServer) -> None:
    call = new_call(api)
    previous = sandbox.settings()
    try:
        assert sandbox.set_settings(resultCodes=["confirmed", "declined"])["resultCodes"]
        bad = put(api, call["uuid"], "complete", {"result": {"resultCode": "maybe"}})
        assert_error(bad, 400, "result.resultCode")
        good = put(api, call["uuid"], "complete", {"result": {"resultCode": "declined"}})
        assert good.status_code == 200
    finally:
        sandbox.set_settings(**previous)


def test_unknown_field_on_action_is_400(api: httpx.Client) -> None:
    call = new_call(api)
    assert_error(put(api, call["uuid"], "cancel", {"reason": "x"}), 400, "reason")


# --- list, pagination, filters ----------------------------------------------------------------


@pytest.fixture(scope="module")
def crowd(sandbox: SandboxServer) -> Iterator[tuple[httpx.Client, list[str], str]]:
    """260 calls in an organization of their own, seen by an account of their own.

    Returns the account's client, the call uuids newest first, and the base time.
    """
    org = sandbox.add_organization("Crowd", 5)
    person = sandbox.add_person(org["uuid"], first_name="Cro", last_name="Wd")["uuid"]
    creds = sandbox.add_service_account("crowd@example.org", [org["uuid"]],
                                        ["create", "list", "cancel", "complete"])  # fmt: skip
    client = client_for(sandbox, sign(sandbox, email="crowd@example.org",
                                      kid=creds["privateKeyId"], key_pem=creds["privateKey"],
                                      lifetime=3600))  # fmt: skip
    base = datetime.now(UTC) - timedelta(days=10)
    created: list[tuple[str, int, str]] = []
    for i in range(260):
        # Groups of three share a requestedAt, so ties must be broken consistently.
        requested = iso(base + timedelta(minutes=i // 3))
        meta = (
            {"externalMetadata": {"applicationName": "crm", "referenceId": f"ref-{i}"}}
            if i % 10 == 0
            else {}
        )
        body = {"requestedAt": requested, "personUuid": person, **meta}
        if not meta:
            body["type"] = "happy_call"
        response = client.post("/calls", json=body)
        assert response.status_code == 201, response.text
        created.append((requested, i, response.json()["uuid"]))
    newest_first = [u for _, _, u in sorted(created, reverse=True)]
    try:
        yield client, newest_first, iso(base)
    finally:
        client.close()


def test_forward_pagination_visits_every_call_once(
    crowd: tuple[httpx.Client, list[str], str],
) -> None:
    client, expected, _ = crowd
    seen: list[str] = []
    params: dict[str, Any] = {"first": 100}
    pages = 0
    while True:
        page = client.get("/calls", params=params).json()
        pages += 1
        seen += [edge["node"]["uuid"] for edge in page["edges"]]
        info = page["pageInfo"]
        assert info["hasPreviousPage"] == (pages > 1)
        assert info["startCursor"] == page["edges"][0]["cursor"]
        assert info["endCursor"] == page["edges"][-1]["cursor"]
        if not info["hasNextPage"]:
            break
        params = {"first": 100, "after": info["endCursor"]}
    assert pages == 3 and seen == expected


def test_backward_pagination_visits_every_call_once(
    crowd: tuple[httpx.Client, list[str], str],
) -> None:
    client, expected, _ = crowd
    seen: list[str] = []
    params: dict[str, Any] = {"last": 100}
    pages = 0
    while True:
        page = client.get("/calls", params=params).json()
        pages += 1
        seen = [edge["node"]["uuid"] for edge in page["edges"]] + seen
        info = page["pageInfo"]
        assert info["hasNextPage"] == (pages > 1)
        if not info["hasPreviousPage"]:
            break
        params = {"last": 100, "before": info["startCursor"]}
    assert pages == 3 and seen == expected


def test_cursors_are_opaque_and_pages_chain_both_ways(
    crowd: tuple[httpx.Client, list[str], str],
) -> None:
    client, expected, _ = crowd
    first = client.get("/calls").json()
    assert [e["node"]["uuid"] for e in first["edges"]] == expected[:10]  # default page size
    assert all(e["cursor"] != e["node"]["uuid"] for e in first["edges"])
    second = client.get(
        "/calls", params={"first": 5, "after": first["pageInfo"]["endCursor"]}
    ).json()
    assert [e["node"]["uuid"] for e in second["edges"]] == expected[10:15]
    back = client.get("/calls", params={"before": second["pageInfo"]["startCursor"]}).json()
    assert [e["node"]["uuid"] for e in back["edges"]] == expected[:10]
    assert back["pageInfo"] == {**first["pageInfo"], "hasPreviousPage": False, "hasNextPage": True}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"first": 101}, "first"),
        ({"last": 101}, "last"),
        ({"first": 0}, "first"),
        ({"first": "ten"}, "first"),
        ({"first": 5, "last": 5}, "last"),
        ({"after": "QQ", "before": "QQ"}, "before"),
        ({"after": "not-a-cursor"}, "after"),
        ({"after": str(uuid.uuid4())}, "after"),
        ({"requestedAfter": "yesterday"}, "requestedAfter"),
        ({"updatedAfter": "2025-01-01T00:00:00"}, "updatedAfter"),
        ({"externalApplicationName": "crm"}, "externalReferenceId"),
    ],
)
def test_bad_list_parameters_are_400(
    crowd: tuple[httpx.Client, list[str], str], params: dict[str, Any], field: str
) -> None:
    assert_error(crowd[0].get("/calls", params=params), 400, field)


def test_page_size_100_is_allowed(crowd: tuple[httpx.Client, list[str], str]) -> None:
    assert len(crowd[0].get("/calls", params={"last": 100}).json()["edges"]) == 100


def test_list_filters(crowd: tuple[httpx.Client, list[str], str]) -> None:
    client, expected, base = crowd

    def uuids(**params: Any) -> list[str]:
        return [
            e["node"]["uuid"]
            for e in client.get("/calls", params={"first": 100, **params}).json()["edges"]
        ]

    # requestedAfter is strict: the newest 30 calls are the 10 groups after minute 76.
    after = iso(datetime.fromisoformat(base) + timedelta(minutes=76))
    assert uuids(requestedAfter=after) == expected[:29]
    found = uuids(externalApplicationName="crm", externalReferenceId="ref-20")
    assert len(found) == 1
    none = client.get("/calls", params={"first": 100, "externalApplicationName": "null",
                                        "externalReferenceId": "null"}).json()  # fmt: skip
    assert all(e["node"]["externalMetadata"] is None for e in none["edges"])
    assert len(none["edges"]) == 100 and none["pageInfo"]["hasNextPage"]
    mark = iso(datetime.now(UTC) - timedelta(milliseconds=1))
    time.sleep(0.01)
    assert put(client, found[0], "cancel").status_code == 200
    assert uuids(updatedAfter=mark) == found


def test_list_is_scoped_to_the_accounts_organizations(
    api: httpx.Client, crowd: tuple[httpx.Client, list[str], str]
) -> None:
    client, expected, _ = crowd
    demo_call = new_call(api)
    requested_after = iso(datetime.fromisoformat(demo_call["requestedAt"]) - timedelta(seconds=1))
    assert demo_call["uuid"] not in [
        e["node"]["uuid"]
        for e in client.get("/calls", params={"requestedAfter": requested_after}).json()["edges"]
    ]
    assert demo_call["uuid"] in [
        e["node"]["uuid"]
        # The oldest of the set (other tests request calls later, some of them in the future).
        for e in api.get("/calls", params={"requestedAfter": requested_after, "last": 100}).json()[
            "edges"
        ]
    ]
    assert not set(expected) & {
        e["node"]["uuid"] for e in api.get("/calls", params={"first": 100}).json()["edges"]
    }


# --- mark processed -------------------------------------------------------------------------


def test_mark_processed(api: httpx.Client, sandbox: SandboxServer) -> None:
    call = new_call(api)
    entry = {"entityName": "call", "entityUuid": call["uuid"], "processedAt": ago(seconds=1),
             "consumerIdentifier": "12345", "externalSourceName": "crm"}  # fmt: skip
    response = api.post("/entity-access/actions/mark-processed", json={"entries": [entry]})
    assert response.status_code == 204 and response.content == b""
    missing = {**entry, "entityUuid": str(uuid.uuid4())}
    pledge = {**entry, "entityName": "pledge", "entityUuid": str(uuid.uuid4())}
    partial = api.post("/entity-access/actions/mark-processed", json={"entries": [missing, pledge]})
    assert partial.status_code == 400
    assert [(e["entityName"], e["entityUuid"]) for e in partial.json()["errors"]] == [
        ("call", missing["entityUuid"])
    ]
    bad = api.post(
        "/entity-access/actions/mark-processed",
        json={"entries": [{**entry, "entityName": "shift"}]},
    )
    assert_error(bad, 400, "entries.0.entityName")
    marks = sandbox.admin.get("/marks").json()["marks"]
    assert {m["entityUuid"] for m in marks} >= {call["uuid"], pledge["entityUuid"]}


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "503", "429"])
def test_error_faults_answer_without_applying(
    api: httpx.Client, sandbox: SandboxServer, clean_faults: None, kind: str
) -> None:
    call = new_call(api)
    sandbox.set_faults([{"endpoint": "cancel", "next": [kind], "retryAfterSeconds": 7}])
    response = put(api, call["uuid"], "cancel")
    assert_error(response, int(kind))
    if kind == "429":
        assert response.headers["Retry-After"] == "7"
    assert sandbox.effects(call["uuid"])["cancel"] == 0
    assert sandbox.stored_call(call["uuid"])["status"] == "requested"  # type: ignore[index]
    assert put(api, call["uuid"], "cancel").status_code == 200  # the queue is used up
    log = sandbox.requests(call_uuid=call["uuid"], endpoint="cancel")
    assert [(r["status"], r["fault"]) for r in log] == [(int(kind), kind), (200, None)]


def test_error_fault_on_create_does_not_create(
    api: httpx.Client, sandbox: SandboxServer, clean_faults: None
) -> None:
    sandbox.set_faults([{"endpoint": "create", "next": ["503"]}])
    call_uuid = str(uuid.uuid4())
    body = {
        "uuid": call_uuid,
        "requestedAt": ago(minutes=1),
        "personUuid": PERSON,
        "type": "verification",
    }
    assert api.post("/calls", json=body).status_code == 503
    assert sandbox.stored_call(call_uuid) is None
    assert api.post("/calls", json=body).status_code == 201
    assert sandbox.effects(call_uuid)["create"] == 1


def test_late_fault_applies_the_change_but_answers_after_the_client_gave_up(
    api: httpx.Client, sandbox: SandboxServer, clean_faults: None
) -> None:
    call = new_call(api)
    sandbox.set_faults([{"endpoint": "complete", "next": ["late"], "lateDelaySeconds": 1.5}])
    body = {"result": {"resultCode": "confirmed"}}
    impatient = httpx.Client(base_url=str(api.base_url), headers=api.headers, timeout=0.5)
    with impatient, pytest.raises(httpx.ReadTimeout):
        put(impatient, call["uuid"], "complete", body)
    assert sandbox.effects(call["uuid"])["complete"] == 1
    assert sandbox.stored_call(call["uuid"])["status"] == "completed"  # type: ignore[index]
    (logged,) = sandbox.requests(call_uuid=call["uuid"], endpoint="complete")
    assert logged["status"] == 200 and logged["fault"] == "late"
    # The client's retry finds the change already made.
    assert_error(put(api, call["uuid"], "complete", body), 409)
    assert sandbox.effects(call["uuid"])["complete"] == 1


def test_latency_fault_delays_before_handling(
    api: httpx.Client, sandbox: SandboxServer, clean_faults: None
) -> None:
    sandbox.set_faults([{"endpoint": "list", "latencyShare": 1.0, "latencySeconds": 0.4}])
    started = time.monotonic()
    assert api.get("/calls", params={"first": 1}).status_code == 200
    assert time.monotonic() - started >= 0.4
    assert sandbox.requests(endpoint="list")[-1]["fault"] == "latency"


def test_fault_shares_with_seed_and_wildcard(
    api: httpx.Client, sandbox: SandboxServer, clean_faults: None
) -> None:
    sandbox.set_faults([{"endpoint": "*", "error500": 1.0}], seed=1)
    assert api.get("/calls").status_code == 500
    assert api.post("/calls", json={}).status_code == 500
    assert httpx.get(f"{sandbox.base_url}/healthz").status_code == 200  # never faulted
    assert sandbox.admin.get("/stats").status_code == 200
    counters = sandbox.faults()["injected"]
    assert counters["list"]["500"] >= 1 and counters["create"]["500"] >= 1
    sandbox.set_faults([{"endpoint": "list", "error503": 0.5}], seed=42)
    first = [api.get("/calls").status_code for _ in range(20)]
    sandbox.set_faults([{"endpoint": "list", "error503": 0.5}], seed=42)
    assert [api.get("/calls").status_code for _ in range(20)] == first
    assert set(first) == {200, 503}
    assert sandbox.stats()["faults"]["503"] >= first.count(503)


def test_fault_config_is_validated(sandbox: SandboxServer) -> None:
    rules = [{"endpoint": "list", "error500": 0.7, "error503": 0.7}]
    response = sandbox.admin.put("/faults", json={"rules": rules})
    assert response.status_code == 400 and response.json()["statusCode"] == 400
    response = sandbox.admin.put("/faults", json={"rules": [{"endpoint": "nope"}]})
    assert_error(response, 400, "rules.0.endpoint")


# --- request log, stats, persistence ------------------------------------------------------------


def test_request_log_records_every_api_request(api: httpx.Client, sandbox: SandboxServer) -> None:
    call = new_call(api, notes="logged")
    put(api, call["uuid"], "add-attempt", {"attemptAt": ago(minutes=1)})
    put(api, call["uuid"], "cancel")
    put(api, call["uuid"], "cancel")
    log = sandbox.requests(call_uuid=call["uuid"])
    assert [(r["method"], r["endpoint"], r["status"]) for r in log] == [
        ("POST", "create", 201), ("PUT", "add-attempt", 200), ("PUT", "cancel", 200),
        ("PUT", "cancel", 409),
    ]  # fmt: skip
    assert log[0]["requestBody"]["notes"] == "logged"
    assert log[1]["path"] == f"/api/v1/calls/{call['uuid']}/actions/add-attempt"
    assert all(TIMESTAMP.match(r["receivedAt"]) and r["fault"] is None for r in log)
    assert "Bearer" not in str(log) and "authorization" not in str(log).lower()
    assert len(sandbox.requests(limit=2)) == 2
    stats = sandbox.stats()
    assert stats["requests"]["byEndpoint"]["cancel"]["409"] >= 1
    assert stats["calls"]["total"] == sum(stats["calls"]["byStatus"].values())


def test_unauthenticated_requests_are_logged_too(sandbox: SandboxServer) -> None:
    httpx.get(f"{sandbox.base_url}/api/v1/calls", params={"first": 3})
    last = sandbox.requests(endpoint="list")[-1]
    assert last["status"] == 401 and last["query"] == "first=3"


def test_admin_routes_validate_with_the_400_shape(sandbox: SandboxServer) -> None:
    response = sandbox.admin.post("/persons", json={"firstName": "X"})
    assert_error(response, 400, "owningOrganizationUuid")
    assert sandbox.admin.get(f"/calls/{uuid.uuid4()}").status_code == 404


def test_everything_survives_a_restart(
    api: httpx.Client, sandbox: SandboxServer, clean_faults: None
) -> None:
    call = new_call(api)
    put(api, call["uuid"], "add-attempt")
    sandbox.set_faults([{"endpoint": "expire", "next": ["503", "429"]}])
    key_id, settings = sandbox.private_key_id, sandbox.settings()
    before = sandbox.stored_call(call["uuid"])
    sandbox.restart()
    assert sandbox.private_key_id == key_id
    assert sandbox.settings() == settings
    assert sandbox.faults()["queued"] == {"expire": ["503", "429"]}
    assert sandbox.stored_call(call["uuid"]) == before
    assert sandbox.effects(call["uuid"])["add-attempt"] == 1
    with client_for(sandbox, sign(sandbox)) as client:
        assert (
            put(client, call["uuid"], "complete", {"result": {"resultCode": "ok"}}).status_code
            == 200
        )
        again = {"uuid": call["uuid"], "requestedAt": ago(minutes=1), "personUuid": PERSON,
                 "type": "winback"}  # fmt: skip
        assert_error(client.post("/calls", json=again), 409)


def test_a_token_accepted_once_is_refused_after_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    issued = int(time.time())
    claims = {"iss": "a@b.org", "email": "a@b.org", "iat": issued, "exp": issued + 60}
    token = jwt.encode(claims, private, algorithm="RS256")
    assert auth._verified_claims(token, pem)["email"] == "a@b.org"
    assert auth._verified_claims(token, pem)["exp"] == issued + 60  # from the cache
    later = issued + 60 + auth.TOKEN_LEEWAY_SECONDS + 1
    # The sandbox reads the clock through the time module, the same one imported here.
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(jwt.ExpiredSignatureError):
        auth._verified_claims(token, pem)
    assert (token, pem) not in auth._verified  # dropped: the next use is decoded anew
