"""Temporal requests retried across a server restart or a killed worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

T = TypeVar("T")
# The Temporal errors a client sees while the server restarts or a worker is gone: retried.
TRANSIENT: Final = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.UNKNOWN,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.FAILED_PRECONDITION,
    }
)


async def retry(action: Callable[[], Awaitable[T]], until: float) -> T:
    """Run one Temporal request, retrying while the server or the workflow task is unavailable.

    A restart makes the server unreachable for a while; a workflow task that failed with a
    killed worker makes the server refuse updates (FAILED_PRECONDITION) until a worker picks it
    up again. Updates are retried under their own id, so a retry never delivers a second one.
    """
    delay = 0.2
    while True:
        try:
            return await action()
        except RPCError as exc:
            if exc.status not in TRANSIENT or time.monotonic() > until:
                raise
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            if time.monotonic() > until:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
