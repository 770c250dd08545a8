"""Calls as the benchmarks make and drive them: policies, inputs, and the typical path.

A benchmark starts calls the way the starter CLI does (`CallService.start`: the search
attributes set at start, the Web UI summary) and drives them as the agent's tooling would, with
updates, so that each step is known to be done before the next is sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.client import Client, WorkflowHandle

from sandbox.seed import DEMO_PERSON_UUIDS
from starter.service import CallService, StartStatus
from tapraise.models import CallResult, CallType
from workflows.messages import (
    ATTEMPT,
    COMPLETE,
    ActionAccepted,
    AttemptSignal,
    CallInput,
    CallPhase,
    CallState,
    CompleteSignal,
    workflow_id_for,
)
from workflows.policy import AttemptOutcome, PolicyOverrides

ALWAYS_OPEN: dict[str, Any] = {
    day: [{"start": "00:00", "end": "24:00"}]
    for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
}


def policy(**fields: Any) -> PolicyOverrides:
    """A call policy override: windows always open, no holidays, plus `fields` (camelCase)."""
    return PolicyOverrides.model_validate(
        {"windows": ALWAYS_OPEN, "holidayCountries": [], "blackoutDates": [], **fields}
    )


# Every slot is due at once and stays due for an hour: the typical path without any waiting,
# driven entirely by the messages the benchmark sends.
NO_WAIT = policy(
    firstAttemptDelay=0,
    retryDelays={"no_answer": 0, "busy": 0, "voicemail": 0},
    attemptWindow=3600,
    missedSlotDelay=0,
    deadline="P3D",
    # Every slot shows as `due` at once: the drivers wait for that phase before they report.
    duePhase=True,
)

# The first slot three days away: a call that only waits.
WAITING = policy(firstAttemptDelay="P3D", deadline="P7D")

# The TapRaise effects of a call on the typical path: created, two attempts, completed.
TYPICAL_EFFECTS = {"create": 1, "add-attempt": 2, "complete": 1, "cancel": 0, "expire": 0}


def make_call(i: int, call_policy: PolicyOverrides | None = None) -> CallInput:
    """A verification call to one of the sandbox's demo persons, with a fresh uuid."""
    return CallInput(
        uuid=uuid.uuid4(),
        person_uuid=uuid.UUID(DEMO_PERSON_UUIDS[i % len(DEMO_PERSON_UUIDS)]),
        type=CallType.VERIFICATION,
        policy=call_policy,
    )


def workflow_id_of(call: CallInput) -> str:
    """The call's workflow id."""
    assert call.uuid is not None
    return workflow_id_for(call.uuid)


def handle_of(client: Client, call: CallInput) -> WorkflowHandle[Any, CallState]:
    """The call's workflow handle."""
    return client.get_workflow_handle(workflow_id_of(call), result_type=CallState)


async def start_call(service: CallService, call: CallInput) -> None:
    """Start a call as the starter does; fail unless it was newly started."""
    result = await service.start(call)
    if result.status is not StartStatus.STARTED:
        raise RuntimeError(f"call {call.uuid} not started: {result.status} {result.detail}")


# The messages of an attempt nobody answered and of a call that reached the donor.
UNANSWERED = AttemptSignal(outcome=AttemptOutcome.NO_ANSWER)
COMPLETION = CompleteSignal(result=CallResult(result_code="confirmed"))


async def update(
    handle: WorkflowHandle[Any, Any], name: str, message: Any, **options: Any
) -> ActionAccepted:
    """Send the update `name` and return the call's answer.

    By name, as the CLI and the gateway send it: the SDK types an update given as a method of
    the workflow class as returning a coroutine when the handler is async and named.
    """
    answer: ActionAccepted = await handle.execute_update(
        name, message, result_type=ActionAccepted, **options
    )
    return answer


async def attempt(handle: WorkflowHandle[Any, Any]) -> ActionAccepted:
    """Report an unanswered attempt (update: returns once TapRaise has recorded it)."""
    return await update(handle, ATTEMPT, UNANSWERED)


async def complete(handle: WorkflowHandle[Any, Any]) -> ActionAccepted:
    """Complete the call (update: returns once TapRaise has completed it)."""
    return await update(handle, COMPLETE, COMPLETION)


async def typical_path(
    service: CallService,
    call: CallInput,
    before_reports: Callable[[WorkflowHandle[Any, Any]], Awaitable[None]] | None = None,
) -> CallState:
    """Create, two unanswered attempts, completion; returns the call's final state.

    `before_reports` is awaited between the start and the first attempt (e.g. until it is due).
    """
    await start_call(service, call)
    handle = handle_of(service.client, call)
    if before_reports is not None:
        await before_reports(handle)
    await attempt(handle)
    await attempt(handle)
    await complete(handle)
    state = await handle.result()
    if state.phase is not CallPhase.COMPLETED or state.attempts_made != 2:
        raise RuntimeError(
            f"call {call.uuid} ended {state.phase} with {state.attempts_made} attempts"
        )
    return state
