"""Health probes: HTTP endpoints, and workers polling a task queue (the compose healthcheck too)."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable

import httpx
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from starter.connect import connect
from workflows.messages import TASK_QUEUE


async def http_ok(url: str) -> bool:
    """Whether `url` answers a GET with a success status now."""
    async with httpx.AsyncClient(timeout=2) as http:
        try:
            return (await http.get(url)).is_success
        except httpx.TransportError:
            return False


async def worker_polling(
    client: Client, matches: Callable[[str], bool], task_queue: str = TASK_QUEUE
) -> bool:
    """Whether a worker whose identity `matches` polls the task queue for workflow tasks."""
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return any(matches(poller.identity) for poller in response.pollers)


def probe_worker() -> int:
    """Health probe of a worker container: 0 when a worker on this host polls the task queue.

    The compose file runs it as the worker's healthcheck; it reads the connection from the
    same environment as the worker (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`).
    """
    host = socket.gethostname()

    async def probe() -> bool:
        client = await connect()
        return await worker_polling(client, lambda identity: identity.endswith(f"@{host}"))

    try:
        return 0 if asyncio.run(asyncio.wait_for(probe(), 10)) else 1
    except (RuntimeError, TimeoutError) as exc:
        print(f"worker probe: {exc}", file=sys.stderr)
        return 1
