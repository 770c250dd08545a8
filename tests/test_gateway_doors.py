"""Every door of the gateway against an unauthenticated or over-eager caller, over real HTTP.

Body sizes (refused before they are read, the process's memory unmoved), token scopes, the rate
and concurrency limits per token, the open mode for this machine only (bind address, `Host`,
cross-site posts), JSON bodies only, and the `query` filter kept to call workflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from annotated_types import MaxLen
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from devstack.process import free_port
from gateway.app import create_app
from gateway.limits import BATCH_BODY_LIMIT, BODY_LIMIT, MAX_BATCH, RateLimiter
from gateway.settings import GatewaySettings, GatewaySettingsError
from sandbox.seed import DEMO_PERSON_UUIDS
from tests.helpers import serve
from tests.sandbox_fixture import REPO_ROOT
from tests.temporal_fixture import CallWorker
from workflows.messages import CallInput, CallPhase, CallState, workflow_id_for

pytestmark = pytest.mark.timeout(60)

PERSON = DEMO_PERSON_UUIDS[4]
ADMIN = "admin-token-0123456789abcdef"
STARTER = "crm-token-0123456789abcdef"
AGENT = "agent-token-0123456789abcdef"
JSON = {"Content-Type": "application/json"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def gateway_settings(task_queue: str = "doors", **values: Any) -> GatewaySettings:
    values.setdefault("tokens", [SecretStr(ADMIN)])
    return GatewaySettings(_env_file=None, task_queue=task_queue, **values)


def provider(client: Client) -> Callable[[], Awaitable[Client]]:
    async def provide() -> Client:
        return client

    return provide


@contextlib.asynccontextmanager
async def gateway(
    client: Client | Callable[[], Awaitable[Client]], settings: GatewaySettings
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway served on a loopback port, and a client for it (no token of its own)."""
    provide = provider(client) if isinstance(client, Client) else client
    async with (
        serve(create_app(provide, settings)) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as http,
    ):
        yield http


def call_body(**fields: Any) -> dict[str, Any]:
    return {"uuid": str(uuid.uuid4()), "personUuid": PERSON, "type": "verification", **fields}


# ── body sizes ───────────────────────────────────────────────────────────────────────────────


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def gateway_process(env: dict[str, str], cwd: Path) -> Any:
    """`python -m starter serve` as an operator runs it; yields the process and its URL."""
    port = free_port()
    log = (cwd / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "starter", "serve", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def process_env(temporal_env: WorkflowEnvironment, **values: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "GATEWAY_"))}
    return {
        **keep,
        "PYTHONPATH": str(REPO_ROOT),
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": temporal_env.client.namespace,
        "GATEWAY_METRICS_ADDRESS": "",  # the metrics listener is tested on its own
        **values,
    }


async def until_up(http: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, "the gateway stopped"
        try:
            await http.get("/healthz")
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the gateway did not come up"
            await asyncio.sleep(0.1)


async def chunks(size: int, chunk: int = 16 * 1024) -> AsyncIterator[bytes]:
    """A body of `size` bytes sent chunked (no Content-Length)."""
    for start in range(0, size, chunk):
        yield b" " * min(chunk, size - start)


async def test_a_large_unauthenticated_body_is_refused_unread_and_costs_no_memory(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = process_env(temporal_env, GATEWAY_TOKENS=ADMIN)
    row = json.dumps({"personUuid": PERSON, "type": "verification", "notes": "x" * 40}).encode()
    big = b"[" + b",".join([row] * 57_000) + b"]"
    assert 7_000_000 < len(big) < 8_000_000
    with gateway_process(env, tmp_path) as (process, base_url):
        async with httpx.AsyncClient(base_url=base_url, timeout=30, headers=JSON) as http:
            await until_up(http, process)
            routes = (("/calls", BODY_LIMIT), ("/calls/batch", BATCH_BODY_LIMIT))
            # Warm up every path the refusals take, so that only the bodies could add memory.
            for path, limit in routes:
                assert (await http.post(path, content=b"[]")).status_code == 401
                assert (await http.post(path, content=b" " * (limit + 1))).status_code == 413
            before = rss_kib(process.pid)
            for path, limit in routes:
                response = await http.post(path, content=big)
                assert response.status_code == 413, response.text
                assert response.json() == {
                    "detail": f"the body is larger than this route takes ({limit} bytes)",
                    "kind": "too_large",
                }
                streamed = await http.post(path, content=chunks(limit + 1))
                assert streamed.status_code == 413, streamed.text
                assert streamed.json()["kind"] == "too_large"
            grown = rss_kib(process.pid) - before
            assert grown < 4 * 1024, f"the gateway grew by {grown} KiB"
            # A streamed body within the limit is read whole (and then refused for its token).
            within = await http.post("/calls", content=chunks(BODY_LIMIT))
            assert within.status_code == 401, within.text


async def test_bodies_are_refused_past_the_routes_limit_and_fit_what_the_models_accept(
    temporal_env: WorkflowEnvironment,
) -> None:
    # The longest notes a call may carry, in the widest UTF-8 (4 bytes a character), with every
    # other field: refused by the model for its person (so nothing starts), never for its size.
    (notes_limit,) = [m.max_length for m in CallInput.model_fields["notes"].metadata
                      if isinstance(m, MaxLen)]  # fmt: skip
    call = call_body(
        personUuid="not-a-uuid",
        notes="\N{GRINNING FACE}" * notes_limit,
        relatedCaseUuid=str(uuid.uuid4()),
        callingOrganizationUuid=str(uuid.uuid4()),
        requestedByUserUuid=str(uuid.uuid4()),
        requestedAt="2026-11-27T10:00:00+01:00",
        timezone="Europe/Amsterdam",
        policy={"maxAttempts": 3, "blackoutDates": ["2026-12-24", "2026-12-31"]},
    )
    body = json.dumps(call, ensure_ascii=False).encode()
    assert len(body) > 4 * notes_limit
    # A full batch of CRM rows with notes and columns of the CRM's own, none valid.
    row = {"personUuid": "not-a-uuid", "type": "verification", "notes": "n" * 2_000,
           "crmId": "crm-000000", "region": "north", "campaign": "winter-2026"}  # fmt: skip
    batch = json.dumps([row] * MAX_BATCH).encode()
    assert len(batch) > 2_000 * MAX_BATCH
    async with gateway(temporal_env.client, gateway_settings()) as http:
        headers = {**JSON, **bearer(ADMIN)}
        single = await http.post("/calls", content=body, headers=headers)
        assert single.status_code == 422, single.text
        assert "personUuid: " in single.json()["message"]
        many = await http.post("/calls/batch", content=batch, headers=headers)
        assert many.status_code == 200, many.text
        assert many.json()["summary"]["invalid"] == MAX_BATCH

        # One byte more than a route takes is refused, declared or streamed.
        for path, limit in (("/calls", BODY_LIMIT), (f"/calls/{uuid.uuid4()}/cancel", BODY_LIMIT),
                            ("/calls/batch", BATCH_BODY_LIMIT)):  # fmt: skip
            streamed = await http.post(path, content=chunks(limit + 1), headers=headers)
            assert streamed.status_code == 413, (path, streamed.text)
            declared = await http.post(path, content=b" " * (limit + 1), headers=headers)
            assert declared.status_code == 413, (path, declared.text)
            assert declared.json()["kind"] == "too_large"


# ── token scopes ─────────────────────────────────────────────────────────────────────────────


async def test_an_agents_token_can_act_but_neither_start_nor_list_calls(
    temporal_env: WorkflowEnvironment,
) -> None:
    tokens = [SecretStr(f"{STARTER}:start+read"), SecretStr(f"{AGENT}:act")]
    async with gateway(temporal_env.client, gateway_settings(tokens=tokens)) as http:
        unknown = uuid.uuid4()
        agent = {**JSON, **bearer(AGENT)}
        for method, path, body, scope in (
            ("POST", "/calls", call_body(), "start"),
            ("POST", "/calls/batch", [call_body()], "start"),
            ("GET", "/calls", None, "read"),
            ("GET", f"/calls/{unknown}", None, "read"),
        ):
            response = await http.request(method, path, json=body, headers=agent)
            assert response.status_code == 403, (path, response.text)
            assert response.json() == {
                "detail": f"this token lacks the '{scope}' scope, which this route needs",
                "kind": "forbidden",
            }
        # Its own door opens: the call is looked for (and is not there).
        acted = await http.post(f"/calls/{unknown}/cancel", json={}, headers=agent)
        assert acted.status_code == 404, acted.text

        crm = {**JSON, **bearer(STARTER)}
        assert (await http.get("/calls", params={"limit": 1}, headers=crm)).status_code == 200
        refused = await http.post(f"/calls/{unknown}/attempts", json={"outcome": "busy"},
                                  headers=crm)  # fmt: skip
        assert refused.status_code == 403
        assert "'act' scope" in refused.json()["detail"]
        for response in (acted, refused):
            assert AGENT not in response.text and STARTER not in response.text


async def test_tokens_and_scopes_come_from_a_file_with_comments(
    temporal_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway-tokens"
    path.write_text(
        f"# the CRM\n{STARTER}:start+read\n\n  # the agents' desktops\n  {AGENT}:act  \n{ADMIN}\n"
    )
    monkeypatch.setenv("GATEWAY_TOKENS_FILE", str(path))
    monkeypatch.delenv("GATEWAY_TOKENS", raising=False)
    settings = GatewaySettings(_env_file=None, task_queue="doors")
    assert [(g.number, sorted(g.scopes)) for g in settings.grants()] == [
        (1, ["read", "start"]), (2, ["act"]), (3, ["act", "read", "start"]),
    ]  # fmt: skip
    async with gateway(temporal_env.client, settings) as http:
        for token, status in ((STARTER, 200), (AGENT, 403), (ADMIN, 200), ("unlisted", 401)):
            response = await http.get("/calls", params={"limit": 1}, headers=bearer(token))
            assert response.status_code == status, (token, response.text)


@pytest.mark.parametrize(
    ("tokens", "file_text", "message"),
    [
        pytest.param("good-token,secret-one:admin", None, "GATEWAY_TOKENS: entry 2: unknown",
                     id="unknown_scope"),
        pytest.param("secret-one:act+", None, "GATEWAY_TOKENS: entry 1: unknown or empty scope",
                     id="empty_scope"),
        pytest.param("secret-one:", None, "GATEWAY_TOKENS: entry 1: unknown or empty scope",
                     id="colon_without_scope"),
        pytest.param("secret one", None, "GATEWAY_TOKENS: entry 1: a token may hold only",
                     id="space_in_token"),
        pytest.param("secret-one:act:read", None, "GATEWAY_TOKENS: entry 1: unknown",
                     id="two_colons"),
        pytest.param("secret-one:act,secret-one:read", None,
                     "GATEWAY_TOKENS: entry 2 repeats the token of entry 1", id="repeated"),
        pytest.param("secret-one", "other-token\n", "set GATEWAY_TOKENS or GATEWAY_TOKENS_FILE",
                     id="both"),
        pytest.param(None, "# nothing yet\n\n", "holds no token", id="empty_file"),
        pytest.param(None, "# ok\nsecret-ok\nsecret-one:act+write\n",
                     "GATEWAY_TOKENS_FILE line 3: entry 2: unknown", id="bad_file_line"),
    ],
)  # fmt: skip
def test_malformed_tokens_are_refused_at_start_naming_the_setting_never_the_token(
    tmp_path: Path, tokens: str | None, file_text: str | None, message: str
) -> None:
    values: dict[str, Any] = {"tokens": []}
    if tokens is not None:
        values["tokens"] = [SecretStr(t) for t in tokens.split(",")]
    if file_text is not None:
        (tmp_path / "tokens").write_text(file_text)
        values["tokens_file"] = tmp_path / "tokens"
    with pytest.raises(GatewaySettingsError) as refused:
        create_app(settings=gateway_settings(**values))
    assert message in str(refused.value)
    assert "secret" not in str(refused.value)


def test_a_missing_tokens_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(GatewaySettingsError, match=r"GATEWAY_TOKENS_FILE=.* cannot be read"):
        create_app(settings=gateway_settings(tokens=[], tokens_file=tmp_path / "missing"))


# ── rate and concurrency ─────────────────────────────────────────────────────────────────────


async def test_a_token_over_its_rate_waits_as_retry_after_says_others_go_on(
    temporal_env: WorkflowEnvironment,
) -> None:
    settings = gateway_settings(
        tokens=[SecretStr(ADMIN), SecretStr(STARTER)], rate_limit=1, rate_burst=2
    )
    async with gateway(temporal_env.client, settings) as http:
        path = f"/calls/{uuid.uuid4()}"
        statuses = [(await http.get(path, headers=bearer(ADMIN))).status_code for _ in range(2)]
        assert statuses == [404, 404]
        limited = await http.get(path, headers=bearer(ADMIN))
        assert limited.status_code == 429, limited.text
        assert limited.json()["kind"] == "rate_limited"
        retry_after = limited.headers["retry-after"]
        assert retry_after.isdigit() and int(retry_after) >= 1
        # The limit is the token's own.
        assert (await http.get(path, headers=bearer(STARTER))).status_code == 404
        await asyncio.sleep(int(retry_after))
        assert (await http.get(path, headers=bearer(ADMIN))).status_code == 404


async def test_a_token_with_too_many_requests_in_flight_is_told_to_retry(
    temporal_env: WorkflowEnvironment,
) -> None:
    released = asyncio.Event()
    first = True

    async def slow_temporal() -> Client:
        # Unreachable at start (the gateway comes up anyway), then slow until released: the
        # requests that need Temporal stay in flight.
        nonlocal first
        if first:
            first = False
            raise RuntimeError("not yet")
        await released.wait()
        return temporal_env.client

    settings = gateway_settings(tokens=[SecretStr(ADMIN), SecretStr(STARTER)], max_concurrent=1)
    async with gateway(slow_temporal, settings) as http:
        path = f"/calls/{uuid.uuid4()}"
        held = asyncio.create_task(http.get(path, headers=bearer(ADMIN)))
        other = asyncio.create_task(http.get(path, headers=bearer(STARTER)))
        await asyncio.sleep(0.3)
        busy = await http.get(path, headers=bearer(ADMIN))
        assert busy.status_code == 429, busy.text
        assert busy.json()["kind"] == "busy"
        assert busy.headers["retry-after"] == "1"
        released.set()
        assert (await held).status_code == 404
        assert (await other).status_code == 404
        assert (await http.get(path, headers=bearer(ADMIN))).status_code == 404


# ── the open mode: this machine only ─────────────────────────────────────────────────────────


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "gateway.example"])
def test_no_auth_is_refused_on_an_address_other_machines_reach(host: str) -> None:
    settings = gateway_settings(tokens=[], allow_no_auth=True, host=host)
    with pytest.raises(GatewaySettingsError, match="GATEWAY_ALLOW_NO_AUTH=true works on a loop"):
        create_app(settings=settings)


def test_serve_refuses_no_auth_on_all_interfaces(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = process_env(temporal_env, GATEWAY_ALLOW_NO_AUTH="true")
    result = subprocess.run(
        [sys.executable, "-m", "starter", "serve", "--host", "0.0.0.0", "--port", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "GATEWAY_ALLOW_NO_AUTH" in result.stderr


async def test_no_auth_answers_requests_addressed_to_loopback_names_only(
    temporal_env: WorkflowEnvironment,
) -> None:
    settings = gateway_settings(tokens=[], allow_no_auth=True)
    async with gateway(temporal_env.client, settings) as http:
        port = http.base_url.port
        for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}",
                     "LOCALHOST"):  # fmt: skip
            response = await http.get("/calls", params={"limit": 1}, headers={"Host": host})
            assert response.status_code == 200, (host, response.text)
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example",
                     "localhost.evil.example", f"user@localhost:{port}"):  # fmt: skip
            for path in ("/calls", "/healthz", "/docs"):
                response = await http.get(path, headers={"Host": host})
                assert response.status_code == 403, (host, path, response.text)
                assert response.json()["kind"] == "forbidden"


async def test_cross_site_posts_cannot_reach_a_call_without_tokens(
    call_worker: CallWorker,
) -> None:
    settings = gateway_settings(call_worker.task_queue, tokens=[], allow_no_auth=True)
    async with gateway(call_worker.client, settings) as http:
        call = call_body()
        assert (await http.post("/calls", json=call)).status_code == 202
        cancel = f"/calls/{call['uuid']}/cancel"
        evil = {"Origin": "http://evil.example"}
        for headers, body in (
            # What an HTML form on another site sends (with and without a field).
            ({**evil, "Content-Type": "application/x-www-form-urlencoded"}, b"reason=gone"),
            ({**evil, "Content-Type": "application/x-www-form-urlencoded"}, b""),
            ({**evil, "Content-Type": "text/plain"}, b'{"reason": "gone"}'),
            ({**evil, "Content-Type": "multipart/form-data; boundary=x"}, b"--x--"),
            # What fetch() from another site may send without asking first.
            (evil, b""),
            # An old browser that sends no Origin still sends the form's type.
            ({"Content-Type": "application/x-www-form-urlencoded"}, b""),
            # Another port of this machine is another origin.
            ({"Origin": "http://127.0.0.1:1", **JSON}, b"{}"),
            ({"Origin": "null", **JSON}, b"{}"),
        ):
            response = await http.post(cancel, content=body, headers=headers)
            assert response.status_code in (403, 415), (headers, response.text)
        handle = call_worker.client.get_workflow_handle(workflow_id_for(call["uuid"]))
        state: CallState = await handle.query("state", result_type=CallState)
        assert not state.phase.is_final

        # The gateway's own page (its /docs) may.
        own = {"Origin": f"http://127.0.0.1:{http.base_url.port}"}
        accepted = await http.post(cancel, json={"reason": "asked"}, headers=own)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["phase"] == CallPhase.CANCELLED


async def test_bodies_must_be_json_with_tokens_too(temporal_env: WorkflowEnvironment) -> None:
    async with gateway(temporal_env.client, gateway_settings()) as http:
        for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
            headers = bearer(ADMIN) | ({"Content-Type": content_type} if content_type else {})
            for path in ("/calls", "/calls/batch", f"/calls/{uuid.uuid4()}/cancel"):
                response = await http.post(path, content=b"{}", headers=headers)
                assert response.status_code == 415, (content_type, path, response.text)
                assert response.json()["kind"] == "unsupported_media_type"
        # JSON with its charset is JSON; a cancel without a body needs no type.
        charset = {**bearer(ADMIN), "Content-Type": "application/json; charset=utf-8"}
        unknown = uuid.uuid4()
        answer = await http.post(f"/calls/{unknown}/cancel", content=b"{}", headers=charset)
        assert answer.status_code == 404, answer.text
        bare = await http.post(f"/calls/{unknown}/cancel", headers=bearer(ADMIN))
        assert bare.status_code == 404, bare.text


# ── the query filter ─────────────────────────────────────────────────────────────────────────


async def test_the_query_filter_lists_call_workflows_only(call_worker: CallWorker) -> None:
    # Another kind of workflow in the same namespace (no worker runs it).
    other = await call_worker.client.start_workflow(
        "PayrollWorkflow", id=f"payroll-{uuid.uuid4()}", task_queue=f"payroll-{uuid.uuid4()}"
    )
    try:
        settings = gateway_settings(call_worker.task_queue)
        async with gateway(call_worker.client, settings) as http:
            auth = bearer(ADMIN)
            call = call_body(type="winback")
            assert (await http.post("/calls", json=call, headers=auth)).status_code == 202
            for injection in (
                "') OR (WorkflowType != 'CallWorkflow'",
                "CallType = 'x') OR (WorkflowType != 'CallWorkflow'",
                "WorkflowType = 'PayrollWorkflow'",
                "CallType = 'x' OR WorkflowType != ''",
                f"WorkflowId = '{other.id}'; --",
            ):
                response = await http.get("/calls", params={"query": injection}, headers=auth)
                assert response.status_code == 422, (injection, response.text)
                assert response.json()["message"].startswith("query: "), response.text

            # A query that would match both still lists only calls, and a good one works.
            queue = call_worker.task_queue
            prefix = PERSON[:8]
            query = (f"WorkflowId = '{other.id}' OR (TaskQueue = \"{queue}\" AND "
                     "CallType IN ('winback', 'it\\'s') AND NOT (CallAttempts > 3) "
                     f"AND PersonUuid STARTS_WITH '{prefix}' AND CloseTime IS NULL)")  # fmt: skip
            listed: dict[str, Any] = {}
            for _ in range(100):
                response = await http.get("/calls", params={"query": query}, headers=auth)
                assert response.status_code == 200, response.text
                listed = response.json()
                if listed["calls"]:
                    break
                await asyncio.sleep(0.1)
            assert [c["workflowId"] for c in listed["calls"]] == [workflow_id_for(call["uuid"])]
            assert listed["query"] == (
                f"WorkflowType = 'CallWorkflow' AND (WorkflowId = '{other.id}' OR "
                f"(TaskQueue = '{queue}' AND CallType IN ('winback', 'it\\'s') AND "
                f"NOT (CallAttempts > 3) AND PersonUuid STARTS_WITH '{prefix}' AND "
                "CloseTime IS NULL))"
            )
    finally:
        await other.terminate("test over")


def test_a_caller_idle_long_enough_is_forgotten() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=10, burst=5, clock=lambda: now[0])
    for caller in range(2_000):
        assert limiter.acquire(("client", caller)) == 0
    assert [limiter.acquire("busy") for _ in range(6)] == [0, 0, 0, 0, 0, 1]
    now[0] += 0.1  # one request back for the busy caller; the others not yet full again
    assert limiter.acquire("busy") == 0
    now[0] += 1.0  # every bucket full again: the next new caller sweeps them away
    assert limiter.acquire("newcomer") == 0
    assert len(limiter._buckets) <= 2
