"""Following TapRaise in the embedded stack: the follower switched on, and a demo of it.

The demo plays a TapRaise user in the sandbox's app: one call requested there is picked up by
the follower and gets a workflow of its own; the same call completed there closes its workflow
in `completed`, without a final action. Each lag is printed: from the change in TapRaise to the
workflow's phase.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
from temporalio.client import Client, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

from sandbox.seed import DEMO_ORGANIZATION_UUID, DEMO_PERSON_UUIDS
from starter.follow import FollowerService
from workflows.following import FollowScope
from workflows.messages import STATE, TASK_QUEUE, CallPhase, CallState, workflow_id_for

DEMO_INTERVAL: Final = timedelta(seconds=5)
"""How often the demo's stack asks TapRaise (`make run` asks every 30 s, the default)."""
APP_USER: Final = "5e0c1b9d-3f9e-4c52-8a63-2a1f4c7b9d10"
DEMO_TIMEOUT: Final = 60.0


async def start_following(client: Client, interval: timedelta) -> tuple[bool, str]:
    """Switch the follower on (a running one is left as it is); a line saying how it stands."""
    started, status = await FollowerService(client, TASK_QUEUE).start(
        interval, FollowScope(), since=datetime.now(UTC)
    )
    every = f"every {status.interval.total_seconds():g} s"
    state = "paused" if status.paused else every
    lead = "switched on" if started else "already on"
    return started, f"Following TapRaise: {lead} ({state}; `python -m starter sync status`)"


@dataclass(frozen=True)
class FollowDemo:
    """What the follow demo showed."""

    call_uuid: str
    adopted_after: float
    closed_after: float
    ok: bool

    def lines(self) -> list[str]:
        return [
            f"requested in the TapRaise app, picked up after {self.adopted_after:.1f} s: "
            f"{workflow_id_for(self.call_uuid)}",
            f"completed in the TapRaise app, its workflow completed after "
            f"{self.closed_after:.1f} s (no final action sent)",
        ]


async def run_follow_demo(
    client: Client, sandbox_url: str, admin_headers: dict[str, str], say: Callable[[str], None]
) -> FollowDemo:
    """Request a call in the app, wait for its workflow; complete it there, wait for the close."""
    async with httpx.AsyncClient(
        base_url=f"{sandbox_url}/_sandbox/app", headers=admin_headers, timeout=10
    ) as app:
        body: dict[str, Any] = {
            "personUuid": DEMO_PERSON_UUIDS[5],
            "type": "happy_call",
            "requestedByUserUuid": APP_USER,
            "callingOrganizationUuid": DEMO_ORGANIZATION_UUID,
            "notes": "Requested in the TapRaise app.",
        }
        answer = await app.post("/calls", json=body)
        answer.raise_for_status()
        call_uuid = str(answer.json()["uuid"])
        requested = time.monotonic()
        say(f"a TapRaise user requests call {call_uuid} in the app ...")
        handle = client.get_workflow_handle(workflow_id_for(call_uuid), result_type=CallState)
        phase = await _phase(handle, {CallPhase.SCHEDULED, CallPhase.DUE})
        adopted_after = time.monotonic() - requested
        say(f"... picked up after {adopted_after:.1f} s, {phase.value}; now completed in the app")
        result = {"resultCode": "confirmed", "notes": "Done by phone from the app."}
        answer = await app.put(
            f"/calls/{call_uuid}/complete", json={"userUuid": APP_USER, "result": result}
        )
        answer.raise_for_status()
        completed = time.monotonic()
        phase = await _phase(handle, {CallPhase.COMPLETED})
        closed_after = time.monotonic() - completed
        say(f"... its workflow completed after {closed_after:.1f} s")
    return FollowDemo(call_uuid, adopted_after, closed_after, ok=phase is CallPhase.COMPLETED)


async def _phase(handle: WorkflowHandle[Any, CallState], wanted: set[CallPhase]) -> CallPhase:
    """Wait until the call's workflow exists and says it is in one of `wanted`."""
    async with asyncio.timeout(DEMO_TIMEOUT):
        while True:
            try:
                state: CallState = await handle.query(STATE, result_type=CallState)
                if state.phase in wanted:
                    return state.phase
            except (RPCError, WorkflowQueryFailedError):
                pass  # not started yet, or not yet past its first task
            await asyncio.sleep(0.2)
