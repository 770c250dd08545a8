"""No TapRaise credential ever leaks.

Calls run on a worker whose TapRaise client records every `Authorization` header it sends: one
call completes, one fails with 403 (a person out of the account's scope), one fails with 401 (a
service account whose key TapRaise does not know). Then neither a private key (PEM or its base64
body) nor any signed token may appear in a workflow history, a search attribute, a log record
(everything at DEBUG), an error message, or an answer of the gateway; the gateway refuses
requests without its own token. The recorded histories in `tests/histories/` are scanned too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

import worker as worker_module
from bench.lifecycle import update
from gateway.app import create_app
from gateway.settings import GatewaySettings
from sandbox.auth import generate_key_pair
from sandbox.seed import DEMO_PERSON_UUIDS, FOREIGN_PERSON_UUID
from tapraise import ServiceAccount, TapRaiseClient
from tapraise.auth import TokenSigner
from tapraise.models import CallResult
from tests.chaos import chaos_policy
from tests.helpers import demo_account, start_options
from tests.sandbox_fixture import SandboxServer
from worker import build_worker
from workflows.call import CallWorkflow
from workflows.messages import (
    ATTEMPT,
    COMPLETE,
    AttemptSignal,
    CallInput,
    CallPhase,
    CompleteSignal,
)
from workflows.policy import AttemptOutcome

pytestmark = pytest.mark.timeout(120)

HISTORIES = Path(__file__).parent / "histories"
GATEWAY_TOKEN = "gateway-secret-token-for-this-test"
# Any JWT (header.claims.signature, each base64url; `eyJ` is `{"`), any PEM block, any bearer.
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+")
PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
BEARER = re.compile(r"Bearer\s+[A-Za-z0-9._-]{20,}")


class RecordingTransport(httpx.AsyncBaseTransport):
    """Sends requests on, keeping every `Authorization` header (the tokens to look for later)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.authorizations: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "authorization" in request.headers:
            self.authorizations.append(request.headers["authorization"])
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def pem_fragments(pem: str) -> list[str]:
    """The PEM, its base64 body as one string, and each full body line."""
    lines = [line.strip() for line in pem.strip().splitlines() if "-----" not in line]
    return [pem.strip(), "".join(lines), *(line for line in lines if len(line) >= 40)]


def token_fragments(token: str) -> list[str]:
    """A signed token, its signature, and its header.claims prefix."""
    token = token.removeprefix("Bearer ").strip()
    header, claims, signature = token.split(".")
    return [token, signature, f"{header}.{claims}"]


class Secrets:
    """Everything that must never appear anywhere, and a scanner for it."""

    def __init__(self) -> None:
        self.fragments: set[str] = set()

    def add_pem(self, pem: str) -> None:
        self.fragments.update(pem_fragments(pem))

    def add_token(self, token: str) -> None:
        self.fragments.update(token_fragments(token))

    def leaks(self, text: str, where: str) -> list[str]:
        """What of the secrets (or anything shaped like one) `text` contains."""
        found = [f"{where}: secret fragment {f[:12]}…" for f in self.fragments if f in text]
        for pattern in (JWT, PEM, BEARER):
            found += [
                f"{where}: {pattern.pattern} matched {m[:16]}…" for m in pattern.findall(text)
            ]
        return found


@pytest_asyncio.fixture
async def recorded_worker(
    temporal_env: WorkflowEnvironment, lenient_sandbox: SandboxServer
) -> AsyncIterator[tuple[str, RecordingTransport, ServiceAccount]]:
    """A call worker on its own task queue whose TapRaise client records the tokens it sends."""
    account = demo_account(lenient_sandbox)
    transport = RecordingTransport()
    queue = f"secrets-{uuid.uuid4()}"
    async with TapRaiseClient(lenient_sandbox.base_url, account, transport=transport) as client:
        async with build_worker(temporal_env.client, client, task_queue=queue):
            yield queue, transport, account


@pytest_asyncio.fixture
async def unknown_key_worker(
    temporal_env: WorkflowEnvironment, lenient_sandbox: SandboxServer
) -> AsyncIterator[tuple[str, RecordingTransport, ServiceAccount]]:
    """A worker whose service account key TapRaise does not know (every request is a 401)."""
    pair = generate_key_pair()
    account = ServiceAccount(lenient_sandbox.account_email, pair.key_id, pair.private_key_pem)
    transport = RecordingTransport()
    queue = f"secrets-401-{uuid.uuid4()}"
    async with TapRaiseClient(lenient_sandbox.base_url, account, transport=transport) as client:
        async with build_worker(temporal_env.client, client, task_queue=queue):
            yield queue, transport, account


async def start(client: Client, queue: str, person: str) -> WorkflowHandle[Any, Any]:
    call = CallInput(
        uuid=uuid.uuid4(),
        person_uuid=uuid.UUID(person),
        type="verification",
        policy=chaos_policy(600, 5),
    )
    return await client.start_workflow(
        CallWorkflow.run, call, task_queue=queue, **start_options(call)
    )


async def test_no_key_or_token_appears_in_histories_attributes_logs_or_errors(
    temporal_env: WorkflowEnvironment,
    recorded_worker: tuple[str, RecordingTransport, ServiceAccount],
    unknown_key_worker: tuple[str, RecordingTransport, ServiceAccount],
    caplog: pytest.LogCaptureFixture,
    short_rounds: None,
) -> None:
    # Quick rounds of tries: the refused key is sat out (a 401 is never final) within seconds.
    caplog.set_level(logging.DEBUG)
    for name in ("temporalio", "httpx", "httpcore", "tapraise", "activities", "workflows"):
        caplog.set_level(logging.DEBUG, logger=name)
    client = temporal_env.client
    queue, transport, account = recorded_worker
    bad_queue, bad_transport, bad_account = unknown_key_worker

    completed = await start(client, queue, DEMO_PERSON_UUIDS[9])
    await update(completed, ATTEMPT, AttemptSignal(outcome=AttemptOutcome.NO_ANSWER))
    await update(completed, COMPLETE, CompleteSignal(result=CallResult(result_code="confirmed")))
    forbidden = await start(client, queue, FOREIGN_PERSON_UUID)
    unauthorized = await start(client, bad_queue, DEMO_PERSON_UUIDS[10])

    assert (await completed.result()).phase == CallPhase.COMPLETED
    errors = await _refusal_texts(forbidden, unauthorized)
    secrets = _secrets_of(account, bad_account, transport, bad_transport)
    leaks: list[str] = []
    for handle in (completed, forbidden, unauthorized):
        leaks += await _leaks_in_workflow(handle, secrets)
    logged = "\n".join(
        [caplog.text] + [f"{r.getMessage()} {r.args!r} {r.__dict__}" for r in caplog.records]
    )
    leaks += secrets.leaks(logged, "captured logs")
    leaks += secrets.leaks("\n".join(errors), "error messages")
    await unauthorized.terminate("test over")
    assert leaks == []


async def _refusal_texts(
    forbidden: WorkflowHandle[Any, Any], unauthorized: WorkflowHandle[Any, Any]
) -> list[str]:
    """What the refused calls say: the failure of the one TapRaise forbids, and the outage of
    the one whose key it does not know."""
    errors: list[str] = []
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(forbidden.result(), 60)
    cause = failed.value.cause
    assert getattr(cause, "type", None) == "TapRaiseForbidden", cause
    errors += [str(failed.value), repr(cause), str(cause), str(cause.__cause__)]
    state = await forbidden.query(CallWorkflow.state)
    assert state.phase == CallPhase.FAILED and state.failure
    errors += [state.failure, state.model_dump_json()]
    # A refused key is never final: the call waits, showing the outage, until the key works.
    for _ in range(300):
        state = await unauthorized.query(CallWorkflow.state)
        if state.outage:
            break
        await asyncio.sleep(0.1)
    assert state.phase == CallPhase.CREATING and state.outage and "401" in state.outage
    errors += [state.outage, state.model_dump_json()]
    return errors


def _secrets_of(
    account: ServiceAccount,
    bad_account: ServiceAccount,
    transport: RecordingTransport,
    bad_transport: RecordingTransport,
) -> Secrets:
    """The keys of both accounts and every token they sent or could send."""
    secrets = Secrets()
    secrets.add_pem(account.private_key_pem)
    secrets.add_pem(bad_account.private_key_pem)
    assert transport.authorizations and bad_transport.authorizations
    for header in transport.authorizations + bad_transport.authorizations:
        secrets.add_token(header)
    secrets.add_token(TokenSigner(account).token())
    secrets.add_token(TokenSigner(bad_account).token())
    return secrets


async def _leaks_in_workflow(handle: WorkflowHandle[Any, Any], secrets: Secrets) -> list[str]:
    """Secrets in a workflow's history, description or search attributes."""
    history = await handle.fetch_history()
    leaks = secrets.leaks(history.to_json(), f"history of {handle.id}")
    described = await handle.describe()
    leaks += secrets.leaks(str(described.raw_description), f"description of {handle.id}")
    leaks += secrets.leaks(repr(described.typed_search_attributes), f"attributes {handle.id}")
    return leaks


async def test_worker_start_up_logs_name_no_credential(
    temporal_env: WorkflowEnvironment,
    lenient_sandbox: SandboxServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    env = {
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": temporal_env.client.namespace,
        "TAPRAISE_BASE_URL": lenient_sandbox.base_url,
        "TAPRAISE_ACCOUNT_EMAIL": lenient_sandbox.account_email,
        "TAPRAISE_PRIVATE_KEY_ID": lenient_sandbox.private_key_id,
        "TAPRAISE_PRIVATE_KEY": lenient_sandbox.private_key_pem,
    }
    for key in [k for k in os.environ if k.startswith(("TEMPORAL_", "TAPRAISE_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    stop = asyncio.Event()
    running = asyncio.create_task(worker_module.run(stop))
    try:
        for _ in range(300):
            if "worker ready" in caplog.text or running.done():
                break
            await asyncio.sleep(0.05)
        assert "worker ready" in caplog.text
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    secrets = Secrets()
    secrets.add_pem(lenient_sandbox.private_key_pem)
    assert secrets.leaks(caplog.text, "worker logs") == []


async def test_gateway_refuses_requests_without_its_token_and_never_echoes_one(
    temporal_env: WorkflowEnvironment,
) -> None:
    async def provide() -> Client:
        return temporal_env.client

    settings = GatewaySettings(
        _env_file=None, task_queue=f"secrets-{uuid.uuid4()}", tokens=[SecretStr(GATEWAY_TOKEN)]
    )
    app = create_app(provide, settings)
    transport = httpx.ASGITransport(app=app)
    body = {"personUuid": DEMO_PERSON_UUIDS[11], "type": "verification"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        wrong = "not-the-token-" + "x" * 30
        for headers in (
            {},
            {"Authorization": f"Bearer {wrong}"},
            {"Authorization": f"Basic {wrong}"},
            {"Authorization": f"Bearer {GATEWAY_TOKEN}x"},
            {"Authorization": GATEWAY_TOKEN},
        ):
            for method, path in (
                ("POST", "/calls"),
                ("GET", "/calls"),
                ("GET", f"/calls/{uuid.uuid4()}"),
                ("POST", f"/calls/{uuid.uuid4()}/cancel"),
            ):
                response = await http.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (headers, path, response.text)
                assert response.headers.get("www-authenticate") == "Bearer"
                assert wrong not in response.text and GATEWAY_TOKEN not in response.text
        auth = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
        listed = await http.get("/calls", headers=auth)
        assert listed.status_code == 200
        unknown = await http.get(f"/calls/{uuid.uuid4()}", headers=auth)
        assert unknown.status_code == 404
        for response in (listed, unknown):
            assert GATEWAY_TOKEN not in response.text
            assert all(GATEWAY_TOKEN not in value for value in response.headers.values())
    assert GATEWAY_TOKEN not in repr(settings) and GATEWAY_TOKEN not in str(settings)


def test_recorded_histories_hold_no_key_or_token() -> None:
    files = sorted(HISTORIES.glob("*.json"))
    assert files, "no recorded histories to scan"
    secrets = Secrets()
    leaks = [leak for f in files for leak in secrets.leaks(f.read_text(), f.name)]
    assert leaks == []


def test_the_scanner_finds_a_key_and_a_token_when_they_are_there() -> None:
    pair = generate_key_pair()
    account = ServiceAccount("someone@example.org", pair.key_id, pair.private_key_pem)
    token = TokenSigner(account).token()
    secrets = Secrets()
    secrets.add_pem(pair.private_key_pem)
    secrets.add_token(token)
    body_line = pem_fragments(pair.private_key_pem)[2]
    for text in (f"sent Bearer {token}", f"key {body_line} in a log", token.split(".")[2]):
        assert secrets.leaks(text, "sample"), text
    assert secrets.leaks("nothing to see: call abc completed", "sample") == []
