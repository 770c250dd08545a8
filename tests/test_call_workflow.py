"""The call workflow, driven as agents would drive it: real worker, real activities, the sandbox.

Each test runs one call on the dev server with its own virtual clock; `advance` lets days pass in
a second. Assertions look at the workflow's `state`, its history, and the sandbox's record of
what TapRaise received.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from tapraise import CallResult, CallStatus, CompleteCallRequest, CreateCallRequest, TapRaiseClient
from tapraise.sandbox.seed import DEMO_PERSON_UUIDS, FOREIGN_PERSON_UUID
from tests.sandbox_fixture import SandboxServer
from tests.temporal_fixture import CallWorker
from workflows.call import CallWorkflow
from workflows.messages import (
    AttemptSignal,
    CallPhase,
    CallState,
    CancelSignal,
    CompleteSignal,
    RescheduleSignal,
)
from workflows.policy import AttemptOutcome

pytestmark = pytest.mark.timeout(90)

PERSON = uuid.UUID(DEMO_PERSON_UUIDS[0])
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


async def wait_for(
    worker: CallWorker, handle: WorkflowHandle[Any, Any], *phases: CallPhase
) -> CallState:
    """Poll the `state` query until the call is in one of `phases` (real seconds, bounded)."""
    state: CallState | None = None
    for _ in range(200):
        state = await worker.state(handle)
        if state.phase in phases:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"call stayed in {state.phase if state else '?'}, wanted {phases}")


def in_weekday_window(t: datetime) -> bool:
    """Inside the shipped default windows: Mon-Fri 09-21, Sat 10-16 (Amsterdam)."""
    local = t.astimezone(AMSTERDAM)
    minutes = local.hour * 60 + local.minute
    if local.weekday() < 5:
        return 9 * 60 <= minutes < 21 * 60
    if local.weekday() == 5:
        return 10 * 60 <= minutes < 16 * 60
    return False


# Events the test server adds when a test moves a workflow's virtual clock; never in production.
_CLOCK_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_OPTIONS_UPDATED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIME_SKIPPING_TRANSITIONED,
}


async def history_length(handle: WorkflowHandle[Any, Any]) -> int:
    """History events as production would record them (without the virtual clock's own)."""
    events = (await handle.fetch_history()).events
    return sum(1 for e in events if e.event_type not in _CLOCK_EVENTS)


async def test_typical_call_attempted_on_two_days_then_completed_on_day_three(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    handle = await call_worker.start(person_uuid=PERSON, type="verification")
    call_uuid = str((await call_worker.state(handle)).call_uuid)

    first = await wait_for(call_worker, handle, CallPhase.SCHEDULED)
    assert first.status == CallStatus.REQUESTED
    assert first.next_slot_at is not None and in_weekday_window(first.next_slot_at)

    await call_worker.advance_to(handle, first.next_slot_at)
    await wait_for(call_worker, handle, CallPhase.DUE)
    accepted = await handle.execute_update(
        CallWorkflow.attempt_update, AttemptSignal(outcome=AttemptOutcome.VOICEMAIL)
    )
    assert accepted.detail.startswith("attempt 1 recorded")

    second = await wait_for(call_worker, handle, CallPhase.SCHEDULED)
    assert second.next_slot_at is not None and in_weekday_window(second.next_slot_at)
    assert second.next_slot_at.astimezone(AMSTERDAM).date() > (
        first.next_slot_at.astimezone(AMSTERDAM).date()
    )
    await call_worker.advance_to(handle, second.next_slot_at)
    await wait_for(call_worker, handle, CallPhase.DUE)
    await handle.signal(
        CallWorkflow.attempt_signal, AttemptSignal(outcome=AttemptOutcome.NO_ANSWER)
    )
    third = await wait_for(call_worker, handle, CallPhase.SCHEDULED)
    assert len(third.attempts) == 2

    assert third.next_slot_at is not None
    await call_worker.advance_to(handle, third.next_slot_at)
    await wait_for(call_worker, handle, CallPhase.DUE)
    await handle.signal(
        CallWorkflow.complete_signal,
        CompleteSignal(result=CallResult(result_code="confirmed", donor_retention_rating=8)),
    )
    final: CallState = await handle.result()

    assert final.phase == CallPhase.COMPLETED and final.status == CallStatus.COMPLETED
    assert final.result is not None and final.result.result_code == "confirmed"
    assert [a.outcome for a in final.attempts] == [
        AttemptOutcome.VOICEMAIL,
        AttemptOutcome.NO_ANSWER,
    ]
    effects = lenient_sandbox.effects(call_uuid)
    assert effects["create"] == 1 and effects["add-attempt"] == 2 and effects["complete"] == 1
    assert effects["cancel"] == 0 and effects["expire"] == 0
    stored = lenient_sandbox.stored_call(call_uuid)
    assert stored is not None and stored["status"] == "completed" and stored["attemptsCount"] == 2
    assert await history_length(handle) < 60


async def test_cancel_while_waiting_cancels_in_tapraise(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    handle = await call_worker.start(person_uuid=PERSON, type="happy_call")
    await wait_for(call_worker, handle, CallPhase.SCHEDULED)
    accepted = await handle.execute_update(
        CallWorkflow.cancel_update, CancelSignal(reason="donor asked not to be called")
    )
    assert accepted.phase == CallPhase.CANCELLED
    final = await handle.result()
    assert final.phase == CallPhase.CANCELLED and final.status == CallStatus.CANCELLED
    assert lenient_sandbox.effects(str(final.call_uuid))["cancel"] == 1


async def test_call_expires_when_attempts_run_out(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    handle = await call_worker.start(person_uuid=PERSON, type="winback", policy={"maxAttempts": 2})
    for _ in range(2):
        state = await wait_for(call_worker, handle, CallPhase.SCHEDULED)
        assert state.next_slot_at is not None
        await call_worker.advance_to(handle, state.next_slot_at)
        await wait_for(call_worker, handle, CallPhase.DUE)
        await handle.execute_update(
            CallWorkflow.attempt_update, AttemptSignal(outcome=AttemptOutcome.BUSY)
        )
    final = await handle.result()
    assert final.phase == CallPhase.EXPIRED and final.status == CallStatus.EXPIRED
    assert final.final_reason == "expired: max_attempts"
    effects = lenient_sandbox.effects(str(final.call_uuid))
    assert effects["add-attempt"] == 2 and effects["expire"] == 1


async def test_call_expires_at_its_deadline_after_missed_slots(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    handle = await call_worker.start(person_uuid=PERSON, type="verification")
    await wait_for(call_worker, handle, CallPhase.SCHEDULED)
    await call_worker.advance(handle, timedelta(days=8))
    final = await handle.result()
    assert final.phase == CallPhase.EXPIRED and final.final_reason == "expired: deadline"
    assert final.missed_slots >= 3  # each due slot lapsed without a report: never an attempt
    assert final.attempts == []
    effects = lenient_sandbox.effects(str(final.call_uuid))
    assert effects["add-attempt"] == 0 and effects["expire"] == 1


async def test_reschedule_moves_the_next_slot_to_the_donors_requested_time(
    call_worker: CallWorker,
) -> None:
    handle = await call_worker.start(person_uuid=PERSON, type="verification")
    state = await wait_for(call_worker, handle, CallPhase.SCHEDULED)
    now = await call_worker.now(handle)
    local = (now + timedelta(days=3)).astimezone(AMSTERDAM)
    while local.weekday() >= 5:  # a weekday, so 19:30 is inside a window
        local += timedelta(days=1)
    wanted = local.replace(hour=19, minute=30, second=0, microsecond=0)
    accepted = await handle.execute_update(
        CallWorkflow.reschedule_update, RescheduleSignal(at=wanted, notes="after dinner")
    )
    assert "callback at" in accepted.detail
    state = await wait_for(call_worker, handle, CallPhase.SCHEDULED)
    assert state.next_slot_at == wanted.astimezone(UTC)
    await call_worker.advance_to(handle, wanted)
    due = await wait_for(call_worker, handle, CallPhase.DUE)
    assert due.next_slot_at == wanted.astimezone(UTC)

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(
            CallWorkflow.reschedule_update, RescheduleSignal(at=wanted + timedelta(days=30))
        )
    assert "deadline" in str(refused.value.cause)
    await handle.terminate("test done")


async def test_duplicate_trigger_adopts_a_call_already_completed_in_tapraise(
    call_worker: CallWorker, tapraise_client: TapRaiseClient, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = uuid.uuid4()
    requested_at = datetime.now(UTC).replace(microsecond=0)
    await tapraise_client.create_call(
        CreateCallRequest(
            uuid=call_uuid, requested_at=requested_at, person_uuid=PERSON, type="verification"
        )
    )
    await tapraise_client.complete_call(
        call_uuid, CompleteCallRequest(result=CallResult(result_code="confirmed"))
    )
    handle = await call_worker.start(
        uuid=call_uuid, person_uuid=PERSON, type="verification", requested_at=requested_at
    )
    final = await handle.result()
    assert final.phase == CallPhase.COMPLETED and final.status == CallStatus.COMPLETED
    assert final.result is not None and final.result.result_code == "confirmed"
    assert lenient_sandbox.effects(str(call_uuid)) == {
        "create": 1,
        "add-attempt": 0,
        "complete": 1,
        "cancel": 0,
        "expire": 0,
    }


async def test_tapraise_refusal_fails_the_call_visibly(call_worker: CallWorker) -> None:
    handle = await call_worker.start(person_uuid=uuid.UUID(FOREIGN_PERSON_UUID), type="winback")
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "TapRaiseForbidden"
    assert "could not create the call" in cause.message and "403" in cause.message
    state = await call_worker.state(handle)
    assert state.phase == CallPhase.FAILED
    described = await handle.describe()
    assert described.typed_search_attributes  # CallPhase=failed is filterable in the UI
    phase = [p.value for p in described.typed_search_attributes if p.key.name == "CallPhase"]
    assert phase == ["failed"]


async def test_duplicate_late_and_malformed_messages_change_nothing(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    handle = await call_worker.start(person_uuid=PERSON, type="verification")
    state = await wait_for(call_worker, handle, CallPhase.SCHEDULED)
    call_uuid = str(state.call_uuid)
    at = await call_worker.now(handle)
    attempt = AttemptSignal(outcome=AttemptOutcome.NO_ANSWER, attempt_at=at)
    await handle.execute_update(CallWorkflow.attempt_update, attempt)
    again = await handle.execute_update(CallWorkflow.attempt_update, attempt)
    assert again.detail.startswith("duplicate")
    await handle.signal(CallWorkflow.attempt_signal, attempt)

    # A payload that does not decode: the update is refused, the signal is dropped with a log.
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update("complete", {"result": {"notes": "no resultCode"}})
    await handle.signal("complete", {"result": {"resultCode": ""}})
    with pytest.raises(WorkflowUpdateFailedError) as unknown:
        await handle.execute_update("attempt", {"outcome": "hung_up"})
    assert unknown.value.cause is not None

    await handle.execute_update(
        CallWorkflow.complete_update, CompleteSignal(result=CallResult(result_code="confirmed"))
    )
    final = await handle.result()
    # Once the call is closed, Temporal itself refuses any further message.
    with pytest.raises(RPCError, match="already completed"):
        await handle.execute_update(CallWorkflow.cancel_update, CancelSignal())
    with pytest.raises(RPCError, match="already completed"):
        await handle.signal(CallWorkflow.cancel_signal, CancelSignal())
    assert final.phase == CallPhase.COMPLETED and len(final.attempts) == 1
    assert lenient_sandbox.effects(call_uuid) == {
        "create": 1,
        "add-attempt": 1,
        "complete": 1,
        "cancel": 0,
        "expire": 0,
    }


async def test_bare_start_with_camel_case_json_runs_with_the_default_policy(
    call_worker: CallWorker,
) -> None:
    call_uuid = uuid.uuid4()
    handle = await call_worker.client.start_workflow(
        "CallWorkflow",
        {"uuid": str(call_uuid), "personUuid": str(PERSON), "type": "verification"},
        id=f"call-{call_uuid}",
        task_queue=call_worker.task_queue,
    )
    state = await wait_for(call_worker, handle, CallPhase.SCHEDULED)
    assert state.max_attempts == 5 and state.timezone == "Europe/Amsterdam"
    await handle.signal("complete", {"result": {"resultCode": "confirmed"}})
    result = await handle.result()
    assert result["phase"] == "completed"
