"""The HTTP gateway over real HTTP: uvicorn on a loopback port, a real worker, the sandbox.

The gateway runs in the test's event loop (next to the worker) with the test's Temporal client
injected; requests go through httpx like a CRM's webhook or an agent desktop would send them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from gateway.app import create_app
from gateway.settings import GatewaySettings, GatewaySettingsError
from sandbox.seed import DEMO_PERSON_UUIDS
from starter.service import derive_call_uuid
from tests.helpers import serve
from tests.sandbox_fixture import SandboxServer
from tests.temporal_fixture import CallWorker
from workflows.messages import CallSearchAttributes

pytestmark = pytest.mark.timeout(120)

TOKEN = "gateway-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PERSON = DEMO_PERSON_UUIDS[3]


def settings(worker: CallWorker, **values: Any) -> GatewaySettings:
    values.setdefault("tokens", [SecretStr(TOKEN), SecretStr("second-token")])
    return GatewaySettings(_env_file=None, task_queue=worker.task_queue, **values)


@pytest_asyncio.fixture
async def gateway(call_worker: CallWorker) -> AsyncIterator[httpx.AsyncClient]:
    async def provide() -> Client:
        return call_worker.client

    async with serve(create_app(provide, settings(call_worker))) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            yield http


async def exists(worker: CallWorker, call_uuid: str) -> bool:
    try:
        await worker.client.get_workflow_handle(f"call-{call_uuid}").describe()
    except RPCError as exc:
        assert exc.status == RPCStatusCode.NOT_FOUND
        return False
    return True


async def start(http: httpx.AsyncClient, **fields: Any) -> str:
    call_uuid = str(uuid.uuid4())
    body = {"uuid": call_uuid, "personUuid": PERSON, "type": "verification", **fields}
    response = await http.post("/calls", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    return call_uuid


async def wait_phase(http: httpx.AsyncClient, call_uuid: str, *phases: str) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for _ in range(100):
        response = await http.get(f"/calls/{call_uuid}", headers=AUTH)
        assert response.status_code == 200, response.text
        state = response.json()
        if state["phase"] in phases:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"call stayed in {state.get('phase')}, wanted {phases}")


# ── health, auth, settings ───────────────────────────────────────────────────────────────────


async def test_healthz_needs_no_token_and_reports_temporal(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "temporal": "reachable"}
    docs = await gateway.get("/docs")
    assert docs.status_code == 200
    schema = (await gateway.get("/openapi.json")).json()
    assert "/calls/{call_uuid}/complete" in schema["paths"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": "Bearer"}],
)  # fmt: skip
async def test_requests_without_a_valid_token_are_refused_and_start_nothing(
    gateway: httpx.AsyncClient, call_worker: CallWorker, headers: dict[str, str]
) -> None:
    call_uuid = str(uuid.uuid4())
    body = {"uuid": call_uuid, "personUuid": PERSON, "type": "verification"}
    response = await gateway.post("/calls", json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in response.text
    for method, path in (("GET", "/calls"), ("GET", f"/calls/{call_uuid}"),
                         ("POST", f"/calls/{call_uuid}/cancel")):  # fmt: skip
        assert (await gateway.request(method, path, headers=headers)).status_code == 401
    assert not await exists(call_worker, call_uuid)


async def test_every_configured_token_is_accepted(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/calls", headers={"Authorization": "Bearer second-token"})
    assert response.status_code == 200


async def test_gateway_refuses_to_start_without_tokens(call_worker: CallWorker) -> None:
    with pytest.raises(GatewaySettingsError, match="GATEWAY_TOKENS"):
        create_app(settings=settings(call_worker, tokens=[]))


async def test_tokens_come_from_the_environment_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_TOKENS", "token-1, token-2,,token-3")
    monkeypatch.setenv("CALLS_TASK_QUEUE", "elsewhere")
    loaded = GatewaySettings(_env_file=None)
    assert [t.get_secret_value() for t in loaded.tokens] == ["token-1", "token-2", "token-3"]
    assert loaded.task_queue == "elsewhere"
    assert "token-1" not in repr(loaded)


async def test_allow_no_auth_runs_open_for_local_development(call_worker: CallWorker) -> None:
    async def provide() -> Client:
        return call_worker.client

    app = create_app(provide, settings(call_worker, tokens=[], allow_no_auth=True))
    async with serve(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as http:
            assert (await http.get("/calls", params={"limit": 1})).status_code == 200


async def test_healthz_reports_unreachable_temporal(call_worker: CallWorker) -> None:
    async def provide() -> Client:
        raise RuntimeError("cannot reach Temporal at 127.0.0.1:1")

    async with serve(create_app(provide, settings(call_worker))) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as http:
            health = await http.get("/healthz")
            assert health.status_code == 503
            # Anyone may ask: the answer names no address and repeats no error.
            assert health.json() == {"status": "degraded", "temporal": "unreachable"}
            assert "127.0.0.1:1" not in health.text
            refused = await http.get(f"/calls/{uuid.uuid4()}", headers=AUTH)
            assert refused.status_code == 503


# ── starting calls ───────────────────────────────────────────────────────────────────────────


async def test_post_calls_starts_then_reports_already_started(
    gateway: httpx.AsyncClient, call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = str(uuid.uuid4())
    body = {"uuid": call_uuid, "personUuid": PERSON, "type": "winback", "notes": "lapsed"}
    first = await gateway.post("/calls", json=body, headers=AUTH)
    assert first.status_code == 202
    assert first.json() == {"workflowId": f"call-{call_uuid}", "callUuid": call_uuid,
                            "status": "started", "phase": "creating"}  # fmt: skip
    await wait_phase(gateway, call_uuid, "scheduled", "due")

    second = await gateway.post("/calls", json=body, headers=AUTH)
    assert second.status_code == 200
    assert second.json()["status"] == "already started"
    assert second.json()["phase"] in ("scheduled", "due")
    description = await call_worker.client.get_workflow_handle(f"call-{call_uuid}").describe()
    assert description.typed_search_attributes.get(CallSearchAttributes.CALL_TYPE) == "winback"
    effects = await asyncio.to_thread(lenient_sandbox.effects, call_uuid)
    assert effects["create"] == 1


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"personUuid": "not-a-uuid"}, "personUuid", "valid UUID"),
        ({"type": "robocall"}, "type", "Input should be"),
        ({"type": None}, "type", "Input should be"),
        ({"requestedAt": "2026-11-27T10:00:00"}, "requestedAt", "timezone"),
        ({"priority": "high"}, "priority", "unknown field"),
        ({"uuid": "6fa459ea-ee8a-11ea-b439-0242ac130003"}, "uuid", "version-4"),
    ],
)
async def test_post_calls_refuses_bad_bodies_naming_the_field(
    gateway: httpx.AsyncClient,
    call_worker: CallWorker,
    change: dict[str, Any],
    field: str,
    message: str,
) -> None:
    call_uuid = str(uuid.uuid4())
    body = {"uuid": call_uuid, "personUuid": PERSON, "type": "verification", **change}
    response = await gateway.post("/calls", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert f"{field}: " in payload["message"] and message in payload["message"]
    assert any(field in error["loc"] for error in payload["detail"])
    assert not await exists(call_worker, body["uuid"])


async def test_post_calls_batch_answers_each_item(
    gateway: httpx.AsyncClient, call_worker: CallWorker
) -> None:
    ok, dup = str(uuid.uuid4()), str(uuid.uuid4())
    items = [
        {"uuid": ok, "personUuid": PERSON, "type": "verification"},
        {"uuid": dup, "personUuid": PERSON, "type": "happy_call"},
        {"personUuid": "nope", "type": "verification"},
        {"uuid": dup, "personUuid": PERSON, "type": "happy_call"},
    ]
    response = await gateway.post("/calls/batch", json=items, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["summary"] == {"started": 2, "already started": 0, "duplicate": 1,
                               "invalid": 1, "failed": 0}  # fmt: skip
    results = body["results"]
    assert [r["status"] for r in results] == ["started", "started", "invalid", "duplicate"]
    assert results[2]["problems"][0].startswith("personUuid: Input should be a valid UUID")
    assert results[3]["detail"] == "same call as item 1"

    again = await gateway.post("/calls/batch", json=items[:2], headers=AUTH)
    assert [r["status"] for r in again.json()["results"]] == ["already started"] * 2

    not_a_list = await gateway.post("/calls/batch", json={"uuid": ok}, headers=AUTH)
    assert not_a_list.status_code == 422


async def test_post_calls_batch_ignores_own_keys_and_refuses_misspelt_call_fields(
    gateway: httpx.AsyncClient, call_worker: CallWorker
) -> None:
    tag = uuid.uuid4().hex[:8]
    items = [
        {"crmId": f"{tag}-1", "personUuid": PERSON, "type": "winback", "region": "north"},
        {"crmId": f"{tag}-2", "personUUID": PERSON, "type": "winback"},
        {"crmId": f"{tag}-3", "person_uuid": PERSON, "type": "winback", "region": "south"},
    ]
    response = await gateway.post("/calls/batch", params={"idFrom": "crmId"}, json=items,
                                  headers=AUTH)  # fmt: skip
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["index"], r["crmId"], r["status"]) for r in results] == [
        (0, f"{tag}-1", "started"), (1, f"{tag}-2", "invalid"), (2, f"{tag}-3", "invalid"),
    ]  # fmt: skip
    assert results[0]["callUuid"] == str(derive_call_uuid(f"{tag}-1"))
    assert results[1]["problems"] == ["personUUID: misspelt call field, did you mean personUuid?"]
    assert results[2]["problems"] == ["person_uuid: misspelt call field, did you mean personUuid?"]
    assert response.json()["summary"]["invalid"] == 2
    assert not await exists(call_worker, str(derive_call_uuid(f"{tag}-2")))

    # One call at a time stays strict: a key of the CRM's own is refused.
    single = await gateway.post("/calls", json={**items[0], "uuid": str(uuid.uuid4())},
                                headers=AUTH)  # fmt: skip
    assert single.status_code == 422
    assert "crmId: unknown field" in single.json()["message"]


# ── actions ──────────────────────────────────────────────────────────────────────────────────


async def test_actions_are_answered_by_the_workflow(
    gateway: httpx.AsyncClient, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = await start(gateway)
    await wait_phase(gateway, call_uuid, "scheduled", "due")

    attempt = await gateway.post(f"/calls/{call_uuid}/attempts", json={"outcome": "busy"},
                                 headers=AUTH)  # fmt: skip
    assert attempt.status_code == 200, attempt.text
    assert attempt.json() == {"workflowId": f"call-{call_uuid}", "accepted": True,
                              "phase": "scheduled",
                              "detail": "attempt 1 recorded (busy)"}  # fmt: skip

    callback = (datetime.now(UTC) + timedelta(days=1)).replace(hour=10, minute=0, second=0)
    rescheduled = await gateway.post(f"/calls/{call_uuid}/reschedule",
                                     json={"at": callback.isoformat(), "notes": "evening"},
                                     headers=AUTH)  # fmt: skip
    assert rescheduled.status_code == 200, rescheduled.text
    assert rescheduled.json()["detail"].startswith("callback at")

    missing = await gateway.post(f"/calls/{call_uuid}/complete", json={"result": {}},
                                 headers=AUTH)  # fmt: skip
    assert missing.status_code == 422
    assert "result.resultCode: Field required" in missing.json()["message"]
    rating = await gateway.post(
        f"/calls/{call_uuid}/complete",
        json={"result": {"resultCode": "confirmed", "donorRetentionRating": 11}},
        headers=AUTH,
    )
    assert rating.status_code == 422
    assert "result.donorRetentionRating: " in rating.json()["message"]
    naive = await gateway.post(f"/calls/{call_uuid}/attempts",
                               json={"outcome": "busy", "attemptAt": "2026-11-27T10:00:00"},
                               headers=AUTH)  # fmt: skip
    assert naive.status_code == 422
    assert "attemptAt: " in naive.json()["message"]

    done = await gateway.post(
        f"/calls/{call_uuid}/complete",
        json={"userUuid": str(uuid.uuid4()), "result": {"resultCode": "confirmed",
                                                       "donorRetentionRating": 9}},
        headers=AUTH,
    )  # fmt: skip
    assert done.status_code == 200, done.text
    assert done.json()["phase"] == "completed"

    effects = await asyncio.to_thread(lenient_sandbox.effects, call_uuid)
    assert effects["add-attempt"] == 1 and effects["complete"] == 1

    for path, body in (("complete", {"result": {"resultCode": "confirmed"}}),
                       ("cancel", {}), ("attempts", {"outcome": "no_answer"})):  # fmt: skip
        refused = await gateway.post(f"/calls/{call_uuid}/{path}", json=body, headers=AUTH)
        assert refused.status_code == 409, (path, refused.text)
        assert refused.json()["detail"] == "call is already completed"
    assert await asyncio.to_thread(lenient_sandbox.effects, call_uuid) == effects

    state = (await gateway.get(f"/calls/{call_uuid}", headers=AUTH)).json()
    assert state["phase"] == "completed" and state["status"] == "completed"
    assert state["result"]["donorRetentionRating"] == 9


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"", "Idempotency-Key: must not be empty"),
        (b"k" * 201, "Idempotency-Key: must be at most 200 characters, not 201"),
        ("clé".encode(), "Idempotency-Key: must be printable ASCII"),
    ],
)
async def test_bad_idempotency_keys_are_422_and_change_nothing(
    gateway: httpx.AsyncClient, lenient_sandbox: SandboxServer, key: bytes, message: str
) -> None:
    call_uuid = await start(gateway)
    await wait_phase(gateway, call_uuid, "scheduled", "due")
    headers = [(b"Authorization", f"Bearer {TOKEN}".encode()), (b"Idempotency-Key", key)]
    for path, body in (("attempts", {"outcome": "busy"}),
                       ("complete", {"result": {"resultCode": "confirmed"}}),
                       ("reschedule", {"at": "2030-01-07T10:00:00+01:00"}),
                       ("cancel", {})):  # fmt: skip
        response = await gateway.post(f"/calls/{call_uuid}/{path}", json=body, headers=headers)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["message"].startswith(message)
        assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    state = await wait_phase(gateway, call_uuid, "scheduled", "due")
    assert state["attempts"] == [] and state["callbackAt"] is None
    effects = await asyncio.to_thread(lenient_sandbox.effects, call_uuid)
    assert effects["add-attempt"] == effects["complete"] == effects["cancel"] == 0


async def test_idempotency_key_is_refused_with_a_signal(gateway: httpx.AsyncClient) -> None:
    call_uuid = await start(gateway)
    response = await gateway.post(
        f"/calls/{call_uuid}/cancel",
        params={"signal": "true"},
        headers={**AUTH, "Idempotency-Key": "cancel-1"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(
        "Idempotency-Key: a signal has no id to deduplicate by"
    )
    assert (await wait_phase(gateway, call_uuid, "scheduled", "due"))["phase"] != "cancelled"


async def test_idempotency_key_is_in_the_openapi_of_every_action(
    gateway: httpx.AsyncClient,
) -> None:
    paths = (await gateway.get("/openapi.json")).json()["paths"]
    for action in ("attempts", "complete", "reschedule", "cancel"):
        parameters = paths[f"/calls/{{call_uuid}}/{action}"]["post"]["parameters"]
        assert {"name": "Idempotency-Key", "in": "header"}.items() <= next(
            p for p in parameters if p["name"] == "Idempotency-Key"
        ).items()


async def test_workflow_refusal_is_409_with_the_reason(gateway: httpx.AsyncClient) -> None:
    call_uuid = await start(gateway)
    await wait_phase(gateway, call_uuid, "scheduled", "due")
    future = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    response = await gateway.post(f"/calls/{call_uuid}/attempts",
                                  json={"outcome": "busy", "attemptAt": future},
                                  headers=AUTH)  # fmt: skip
    assert response.status_code == 409
    assert response.json()["detail"] == "attemptAt is in the future"


async def test_cancel_without_body_and_as_signal(gateway: httpx.AsyncClient) -> None:
    first = await start(gateway)
    cancelled = await gateway.post(f"/calls/{first}/cancel", headers=AUTH)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["phase"] == "cancelled"

    second = await start(gateway)
    sent = await gateway.post(f"/calls/{second}/cancel", params={"signal": "true"},
                              json={"reason": "duplicate request"}, headers=AUTH)  # fmt: skip
    assert sent.status_code == 202
    assert sent.json()["sent"] is True
    state = await wait_phase(gateway, second, "cancelled")
    assert state["finalReason"] == "cancelled: duplicate request"


async def test_unknown_calls_are_404(gateway: httpx.AsyncClient, call_worker: CallWorker) -> None:
    unknown = str(uuid.uuid4())
    assert (await gateway.get(f"/calls/{unknown}", headers=AUTH)).status_code == 404
    response = await gateway.post(f"/calls/{unknown}/complete",
                                  json={"result": {"resultCode": "confirmed"}},
                                  headers=AUTH)  # fmt: skip
    assert response.status_code == 404
    assert response.json()["detail"] == f"no call {unknown}"
    bad = await gateway.get("/calls/not-a-uuid", headers=AUTH)
    assert bad.status_code == 422
    assert not await exists(call_worker, unknown)


# ── listing ──────────────────────────────────────────────────────────────────────────────────


async def test_get_calls_lists_with_filters(
    gateway: httpx.AsyncClient, call_worker: CallWorker
) -> None:
    person = DEMO_PERSON_UUIDS[9]
    call_uuid = await start(gateway, personUuid=person, type="happy_call")
    params = {"person": person, "type": "happy_call",
              "query": f"TaskQueue = '{call_worker.task_queue}'"}  # fmt: skip
    calls: list[dict[str, Any]] = []
    for _ in range(100):
        response = await gateway.get("/calls", params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        calls = response.json()["calls"]
        if calls:
            break
        await asyncio.sleep(0.1)
    assert [c["workflowId"] for c in calls] == [f"call-{call_uuid}"]
    assert calls[0]["personUuid"] == person

    for bad, field in (({"phase": "ringing"}, "phase"), ({"org": "x"}, "org"),
                       ({"dueBefore": "2026-11-27"}, "due-before")):  # fmt: skip
        response = await gateway.get("/calls", params=bad, headers=AUTH)
        assert response.status_code == 422, response.text
        assert response.json()["message"].startswith(f"{field}: ")
