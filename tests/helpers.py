"""Helpers shared by the test modules: clocks, service accounts, pollers and a local server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from devstack.process import free_port
from gateway.app import create_app
from gateway.settings import GatewaySettings
from starter.service import initial_search_attributes
from tapraise import ServiceAccount, to_millis
from tests.sandbox_fixture import REPO_ROOT, SandboxServer
from workflows.call import CallWorkflow
from workflows.messages import CallInput, CallPhase, CallState, workflow_id_for
from workflows.policy import CallPolicy
from workflows.schedule import SlotDecision, next_slot


def now() -> datetime:
    """The current time at TapRaise's precision (milliseconds)."""
    return to_millis(datetime.now(UTC))


def account_of(credentials: dict[str, str]) -> ServiceAccount:
    """The service account of credentials as the sandbox hands them out."""
    return ServiceAccount(
        email=credentials["accountEmail"],
        private_key_id=credentials["privateKeyId"],
        private_key_pem=credentials["privateKey"],
    )


def demo_account(sandbox: SandboxServer, private_key_pem: str | None = None) -> ServiceAccount:
    """The sandbox's demo account; with `private_key_pem`, signing with another key."""
    pem = sandbox.private_key_pem if private_key_pem is None else private_key_pem
    return ServiceAccount(sandbox.account_email, sandbox.private_key_id, pem)


def fresh_private_key_pem() -> str:
    """A new RSA private key (PKCS#8 PEM) that no service account knows."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def effects(**applied: int) -> dict[str, int]:
    """TapRaise's effects on a call as the sandbox counts them: `applied` (`add_attempt` for
    add-attempt), none of the others."""
    counts = {"create": 0, "add-attempt": 0, "complete": 0, "cancel": 0, "expire": 0}
    counts.update({name.replace("_", "-"): count for name, count in applied.items()})
    return counts


def start_options(call: CallInput) -> dict[str, Any]:
    """The workflow id and search attributes a call is started with by the starter."""
    return {
        "id": workflow_id_for(call.uuid or ""),
        "search_attributes": initial_search_attributes(call),
    }


def first_slot(policy: CallPolicy, tz: str, at: datetime) -> SlotDecision:
    """The first slot of a call requested at `at`, decided at once."""
    return next_slot(
        policy,
        tz=tz,
        requested_at=at,
        now=at,
        attempts_made=0,
        last_outcome=None,
        last_attempt_at=None,
    )


async def wait_for_phase(
    handle: WorkflowHandle[Any, Any],
    *phases: CallPhase,
    seconds: float = 10.0,
    interval: float = 0.05,
    any_error: bool = False,
) -> CallState:
    """Poll the `state` query until the call is in one of `phases` (real seconds, bounded).

    A run that just continued as new has no task yet, and is asked again; with `any_error`, so
    is a call whose query fails for another reason (its worker killed, the server restarting).
    """
    deadline = time.monotonic() + seconds
    state: CallState | None = None
    while True:
        try:
            state = await handle.query(CallWorkflow.state)
        except Exception as exc:
            if not (any_error or (isinstance(exc, RPCError) and "not scheduled yet" in str(exc))):
                raise
        else:
            if state.phase in phases:
                return state
        if time.monotonic() > deadline:
            raise AssertionError(f"call stayed in {state.phase if state else '?'}, wanted {phases}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def gateway_client(
    client: Client, task_queue: str, token: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP gateway for calls on `task_queue`, served locally; a client that sends `token`."""

    async def provide() -> Client:
        return client

    settings = GatewaySettings(_env_file=None, task_queue=task_queue, tokens=[SecretStr(token)])
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        serve(create_app(provide, settings)) as base_url,
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http,
    ):
        yield http


def worker_env(
    temporal_env: WorkflowEnvironment, sandbox: SandboxServer, tmp_path: Path
) -> dict[str, str]:
    """The environment of a `python -m worker` process pointed at the test server and sandbox.

    It serves no metrics (a test that wants them names an address): two workers of one test
    would otherwise both ask for the default port.
    """
    key_file = tmp_path / "key.pem"
    key_file.write_text(sandbox.private_key_pem)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "TAPRAISE_"))},
        "PYTHONPATH": str(REPO_ROOT),
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": temporal_env.client.namespace,
        "TAPRAISE_BASE_URL": sandbox.base_url,
        "TAPRAISE_ACCOUNT_EMAIL": sandbox.account_email,
        "TAPRAISE_PRIVATE_KEY_ID": sandbox.private_key_id,
        "TAPRAISE_PRIVATE_KEY_FILE": str(key_file),
        "WORKER_METRICS_ADDRESS": "",
    }


@contextlib.contextmanager
def worker_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m worker` as a user runs it; SIGKILLed on the way out if still running."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker"], cwd=log.parent, env=env, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def worker_ready(process: subprocess.Popen[bytes], log: Path, starts: int) -> None:
    """Wait until the worker said it is ready `starts` times (its log is kept across restarts)."""
    deadline = time.monotonic() + 60
    while (text := await asyncio.to_thread(log.read_text, errors="replace")).count(
        "worker ready"
    ) < starts:
        assert process.poll() is None, text
        assert time.monotonic() < deadline, "worker not ready in time"
        await asyncio.sleep(0.1)
