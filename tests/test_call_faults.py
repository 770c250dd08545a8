"""The call workflow where TapRaise refuses, fails or is slow: a call is never stranded as `failed`
while TapRaise keeps it requested, and nothing is recorded twice.

Real worker, real activities, the sandbox on loopback; the virtual clock moves only when a test
says so. Every assertion holds whatever the instant the call starts at: a call may start inside or
outside a calling window (`LIVE` waits for either phase).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from bench.lifecycle import update
from sandbox.seed import DEMO_PERSON_UUIDS
from tapraise import (
    AddAttemptRequest,
    CallResult,
    CallType,
    CreateCallRequest,
    TapRaiseClient,
    to_millis,
)
from tests.helpers import wait_for_phase, worker_env, worker_process, worker_ready
from tests.sandbox_fixture import SandboxServer
from tests.temporal_fixture import CallWorker, record_history
from workflows import errors
from workflows.call import CallWorkflow
from workflows.messages import (
    ATTEMPT,
    COMPLETE,
    TASK_QUEUE,
    AttemptSignal,
    CallInput,
    CallPhase,
    CallState,
    CancelSignal,
    CompleteSignal,
    workflow_id_for,
)
from workflows.policy import AttemptOutcome

pytestmark = pytest.mark.timeout(120)

PERSON = uuid.UUID(DEMO_PERSON_UUIDS[0])
LIVE = (CallPhase.SCHEDULED, CallPhase.DUE)


async def rejection(handle: WorkflowHandle[Any, Any], update: Any, message: Any) -> str:
    """The reason an update was refused with (fails the test when it was accepted)."""
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(update, message)
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == errors.ACTION_REJECTED
    return cause.message


async def started(worker: CallWorker, **fields: Any) -> tuple[WorkflowHandle[Any, Any], CallState]:
    fields.setdefault("person_uuid", PERSON)
    fields.setdefault("type", "verification")
    handle = await worker.start(**fields)
    return handle, await wait_for_phase(handle, *LIVE)


# --- later actions TapRaise would refuse are refused before anything is sent ----------------------


@pytest.mark.parametrize("kind", ["complete", "cancel"])
async def test_a_final_action_dated_before_the_request_is_refused_and_the_call_lives_on(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, kind: str
) -> None:
    handle, state = await started(call_worker)
    before = state.requested_at - timedelta(hours=1)
    if kind == "complete":
        update: Any = CallWorkflow.complete_update
        message: Any = CompleteSignal(
            result=CallResult(result_code="confirmed", completed_at=before)
        )
        signal: Any = CallWorkflow.complete_signal
    else:
        update, message = CallWorkflow.cancel_update, CancelSignal(cancelled_at=before)
        signal = CallWorkflow.cancel_signal
    assert "before the call was requested" in await rejection(handle, update, message)
    await handle.signal(signal, message)  # a signal is logged and ignored
    state = await wait_for_phase(handle, *LIVE)
    assert [e.kind for e in state.events].count("ignored") == 1
    assert lenient_sandbox.effects(str(state.call_uuid))[kind] == 0
    # The call lives on: a well-dated action closes it.
    await handle.execute_update(update, message.model_copy(update=_dated_now(message)))
    final: CallState = await handle.result()
    assert final.phase == (CallPhase.COMPLETED if kind == "complete" else CallPhase.CANCELLED)


def _dated_now(message: Any) -> dict[str, Any]:
    if isinstance(message, CompleteSignal):
        return {"result": message.result.model_copy(update={"completed_at": None})}
    return {"cancelled_at": None}


async def test_a_result_code_the_policy_does_not_list_is_refused_before_sending(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    handle, state = await started(call_worker, policy={"resultCodes": ["confirmed", "declined"]})
    reason = await rejection(
        handle,
        CallWorkflow.complete_update,
        CompleteSignal(result=CallResult(result_code="maybe")),
    )
    assert "'maybe' is not one of confirmed, declined" in reason
    assert lenient_sandbox.effects(str(state.call_uuid))["complete"] == 0
    await update(handle, COMPLETE, CompleteSignal(result=CallResult(result_code="declined")))
    assert (await handle.result()).phase == CallPhase.COMPLETED


# --- what TapRaise still refuses refuses that message only ----------------------------------------


@pytest.fixture
def confirmed_only(lenient_sandbox: SandboxServer) -> Iterator[SandboxServer]:
    """TapRaise configured to accept the result code `confirmed` only."""
    lenient_sandbox.set_settings(resultCodes=["confirmed"])
    try:
        yield lenient_sandbox
    finally:
        lenient_sandbox.set_settings(resultCodes=None)


async def test_a_completion_tapraise_refuses_is_refused_and_the_call_lives_on(
    call_worker: CallWorker, confirmed_only: SandboxServer
) -> None:
    handle, state = await started(call_worker)
    reason = await rejection(
        handle,
        CallWorkflow.complete_update,
        CompleteSignal(result=CallResult(result_code="declined")),
    )
    assert reason.startswith("TapRaise refused to complete the call:")
    after = await wait_for_phase(handle, *LIVE)
    assert after.status is not None and after.status.value == "requested"
    # Refused once for good: not retried, and the call can still be completed.
    assert confirmed_only.effects(str(state.call_uuid))["complete"] == 0
    await update(handle, COMPLETE, CompleteSignal(result=CallResult(result_code="confirmed")))
    final: CallState = await handle.result()
    assert final.phase == CallPhase.COMPLETED and final.failure is None
    await record_history(handle, "refused_completion")


async def test_tapraise_maximum_below_the_policy_expires_the_call_at_tapraise_count(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    # The demo organization allows 5 attempts in TapRaise; this policy believes 7.
    start = call_worker.start_at - timedelta(hours=2)
    handle, state = await started(call_worker, requested_at=start, policy={"maxAttempts": 7})
    for minute in range(5):
        report = AttemptSignal(
            outcome=AttemptOutcome.BUSY, attempt_at=start + timedelta(minutes=10 + minute)
        )
        await update(handle, ATTEMPT, report)
    sixth = AttemptSignal(outcome=AttemptOutcome.BUSY, attempt_at=start + timedelta(minutes=30))
    reason = await rejection(handle, CallWorkflow.attempt_update, sixth)
    assert reason.startswith("TapRaise refused the attempt:")
    final: CallState = await handle.result()
    assert final.phase == CallPhase.EXPIRED and final.failure is None
    assert len(final.attempts) == 5 and final.max_attempts == 5
    stored = lenient_sandbox.stored_call(str(state.call_uuid))
    assert stored is not None and stored["status"] == "expired" and stored["attemptsCount"] == 5
    await record_history(handle, "tapraise_maximum")


# --- requestedAt: fixed once, and a 409 is adopted wherever the call was requested --------------


async def test_a_start_without_requested_at_takes_the_run_start_time(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    # A bare start: requested at the real start, so a call pinned far ahead may expire at once.
    handle = await call_worker.start(person_uuid=PERSON, type="verification", requested_at=None)
    state = await wait_for_phase(handle, *LIVE, CallPhase.EXPIRED)
    history = await handle.fetch_history()
    started_at = history.events[0].event_time.ToDatetime().replace(tzinfo=UTC)
    assert state.requested_at == to_millis(started_at)
    stored = lenient_sandbox.stored_call(str(state.call_uuid))
    assert stored is not None
    assert datetime.fromisoformat(stored["requestedAt"]) == state.requested_at


async def test_a_call_started_again_days_later_without_requested_at_adopts_it(
    call_worker: CallWorker, tapraise_client: TapRaiseClient, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = uuid.uuid4()
    days_ago = to_millis(datetime.now(UTC) - timedelta(days=3))
    await tapraise_client.create_call(
        CreateCallRequest(
            uuid=call_uuid, requested_at=days_ago, person_uuid=PERSON, type="verification"
        )
    )
    _, state = await started(call_worker, uuid=call_uuid)  # a bare trigger, days later
    assert state.failure is None
    assert "adopted" in [e.kind for e in state.events]
    assert lenient_sandbox.effects(str(call_uuid))["create"] == 1


async def test_a_first_task_retried_after_the_create_adopts_the_call_it_created(
    temporal_env: WorkflowEnvironment,
    lenient_sandbox: SandboxServer,
    clean_faults: None,
    tmp_path: Path,
) -> None:
    """The worker dies after TapRaise applied the create; the next one retries the first task.

    Its clock reads later than the first try's. A `requestedAt` taken from that clock would not
    find the call its first try created, and the call would fail while TapRaise holds it.
    """
    env = worker_env(temporal_env, lenient_sandbox, tmp_path)
    log = tmp_path / "worker.log"
    call = CallInput(uuid=uuid.uuid4(), person_uuid=PERSON, type=CallType.VERIFICATION)
    call_uuid = str(call.uuid)
    with worker_process(env, log) as first:
        await worker_ready(first, log, 1)
        # TapRaise applies the create at once but holds its answer back.
        lenient_sandbox.set_faults(
            [{"endpoint": "create", "next": ["late"], "lateDelaySeconds": 20}]
        )
        handle = await temporal_env.client.start_workflow(
            CallWorkflow.run,
            call,
            id=workflow_id_for(call_uuid),
            task_queue=TASK_QUEUE,
            task_timeout=timedelta(seconds=2),
        )
        deadline = time.monotonic() + 20
        while lenient_sandbox.effects(call_uuid)["create"] == 0:
            assert time.monotonic() < deadline, "the create never reached TapRaise"
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
    lenient_sandbox.clear_faults()
    await asyncio.sleep(3)  # the first task times out; the next try reads a later clock
    try:
        with worker_process(env, log) as second:
            await worker_ready(second, log, 2)
            for _ in range(300):
                state: CallState = await handle.query(CallWorkflow.state)
                if state.phase != CallPhase.CREATING:
                    break
                await asyncio.sleep(0.1)
            assert state.phase in LIVE, state.failure
            assert lenient_sandbox.effects(call_uuid)["create"] == 1
            stored = lenient_sandbox.stored_call(call_uuid)
            assert stored is not None
            assert datetime.fromisoformat(stored["requestedAt"]) == state.requested_at
            await record_history(handle, "retried_first_task")
    finally:
        with contextlib.suppress(Exception):
            await handle.terminate("test done")


# --- outages: retried for as long as it takes, visible, and the history stays bounded ------------


async def test_a_long_tapraise_outage_is_sat_out_across_runs_and_records_the_attempt_once(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, short_rounds: None
) -> None:
    # A tiny history bound: the first round of failed tries outgrows it, and the call continues
    # as new in the middle of the outage, carrying the attempt it could not record yet.
    handle, state = await started(call_worker, policy={"historyLimit": 20})
    call_uuid = str(state.call_uuid)
    first_run = (await handle.describe()).run_id
    lenient_sandbox.set_faults([{"endpoint": "add-attempt", "error500": 1.0}])
    try:
        answer = await update(handle, ATTEMPT, AttemptSignal(outcome=AttemptOutcome.NO_ANSWER))
        assert "queued" in answer.detail
        latest = call_worker.client.get_workflow_handle(handle.id)
        for _ in range(60):  # rounds of tries, a durable wait between them
            if (await latest.describe()).run_id != first_run:
                break
            if (await call_worker.state(latest)).outage is not None:
                await call_worker.advance(latest, timedelta(minutes=2))
            await asyncio.sleep(0.2)
        assert (await latest.describe()).run_id != first_run, "never continued as new"
        failed = lenient_sandbox.effects(call_uuid)["add-attempt"]
    finally:
        lenient_sandbox.clear_faults()
    assert failed == 0
    for _ in range(200):
        state = await call_worker.state(latest)
        if state.attempts:
            break
        await asyncio.sleep(0.2)
    assert len(state.attempts) == 1 and state.outage is None and state.failure is None
    assert "outage" in [e.kind for e in state.events]
    assert lenient_sandbox.effects(call_uuid)["add-attempt"] == 1
    first = call_worker.client.get_workflow_handle(handle.id, run_id=first_run)
    await record_history(first, "outage_continued_as_new")
    await latest.terminate("test over")


async def test_a_duplicate_delivery_waiting_in_an_outage_does_not_count_against_the_maximum(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, short_rounds: None
) -> None:
    handle, state = await started(call_worker, policy={"maxAttempts": 2})
    call_uuid = str(state.call_uuid)
    first = AttemptSignal(
        outcome=AttemptOutcome.BUSY, attempt_at=state.requested_at + timedelta(minutes=1)
    )
    lenient_sandbox.set_faults([{"endpoint": "add-attempt", "error500": 1.0}])
    try:
        await handle.signal(CallWorkflow.attempt_signal, first)
        await handle.signal(CallWorkflow.attempt_signal, first)  # the dialer delivered it twice
        second = AttemptSignal(
            outcome=AttemptOutcome.NO_ANSWER, attempt_at=state.requested_at + timedelta(minutes=2)
        )
        answer = await update(handle, ATTEMPT, second)
        assert "queued" in answer.detail
    finally:
        lenient_sandbox.clear_faults()
    for _ in range(100):
        state = await call_worker.state(handle)
        if len(state.attempts) == 2 or state.phase.is_final:
            break
        if state.outage is not None:
            await call_worker.advance(handle, timedelta(minutes=2))
        await asyncio.sleep(0.2)
    assert len(state.attempts) == 2
    assert lenient_sandbox.effects(call_uuid)["add-attempt"] == 2
    assert (await handle.result()).phase == CallPhase.EXPIRED  # two of two: the call is done


# --- an update is answered in a task of its own, never in one that resolves a local activity -----


def _answers_in_local_activity_tasks(history: Any) -> list[int]:
    """Update completions recorded in a workflow task that also recorded a local activity result.

    Such a task may be flushed with the result before the update's answer (a workflow task
    heartbeat); if the next task is then lost, a replay answers inside the flushed task and the
    server refuses every later task of the call. An answer after an activity has no such window.
    """
    found: list[int] = []
    local_result = False
    for event in history.events:
        kind = EventType.Name(event.event_type)
        if kind == "EVENT_TYPE_WORKFLOW_TASK_COMPLETED":
            local_result = False
        elif kind == "EVENT_TYPE_MARKER_RECORDED":
            local_result |= event.marker_recorded_event_attributes.marker_name == LOCAL_MARKER
        elif kind == "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED" and local_result:
            found.append(event.event_id)
    return found


LOCAL_MARKER = "core_local_activity"


async def test_updates_are_answered_after_an_activity_never_with_a_local_activity_result(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, short_rounds: None
) -> None:
    handle, state = await started(call_worker)
    attempt = AttemptSignal(outcome=AttemptOutcome.BUSY, attempt_at=state.requested_at)
    recorded = await update(handle, ATTEMPT, attempt)
    assert recorded.detail is None or "duplicate" not in recorded.detail
    lenient_sandbox.set_faults([{"endpoint": "add-attempt", "error500": 1.0}])
    try:
        later = attempt.model_copy(update={"attempt_at": state.requested_at + timedelta(minutes=1)})
        queued = await update(handle, ATTEMPT, later)
        assert "queued" in (queued.detail or "")
    finally:
        lenient_sandbox.clear_faults()
    await call_worker.advance(handle, timedelta(minutes=2))  # the outage's wait ends
    for _ in range(100):
        if len((await call_worker.state(handle)).attempts) == 2:
            break
        await asyncio.sleep(0.1)
    await update(handle, COMPLETE, CompleteSignal(result=CallResult(result_code="confirmed")))
    final: CallState = await handle.result()
    assert final.phase == CallPhase.COMPLETED and len(final.attempts) == 2
    history = await handle.fetch_history()
    answered = [
        e
        for e in history.events
        if EventType.Name(e.event_type) == "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED"
    ]
    assert len(answered) == 3
    assert _answers_in_local_activity_tasks(history) == []
    # Each answer is given in a task that an activity's completion started: the update's own
    # TapRaise request (the first attempt, the completion), or the empty activity (the attempt
    # answered "queued" while TapRaise failed).
    assert _tasks_started_by(history, answered) == ["activity"] * 3
    # No local activity sent an update's request: the add-attempts and the completion ran as
    # activities, the empty one once.
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if EventType.Name(e.event_type) == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"
    ]
    assert sorted(scheduled) == sorted(
        ["add_attempt", "add_attempt", "answer_turn", "add_attempt", "complete_call"]
    ), scheduled
    # The patches are asked for in the run's first task, not where an update is answered: a
    # task that resolves a local activity may replay as part of an earlier one, and a patch
    # marker recorded there would not be found on replay.
    completed = [
        e.event_id
        for e in history.events
        if EventType.Name(e.event_type) == "EVENT_TYPE_WORKFLOW_TASK_COMPLETED"
    ]
    patches = [
        e.event_id
        for e in history.events
        if EventType.Name(e.event_type) == "EVENT_TYPE_MARKER_RECORDED"
        and e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]
    assert len(patches) == 3 and all(completed[0] < p < completed[1] for p in patches)
    await record_history(handle, "answered_after_own_activity")


def _tasks_started_by(history: Any, answers: list[Any]) -> list[str]:
    """For each update answer, what started the workflow task that gave it."""
    by_id = {e.event_id: e for e in history.events}
    started_by: list[str] = []
    for answer in answers:
        before = [
            e
            for e in history.events
            if e.event_id < answer.event_id
            and EventType.Name(e.event_type) == "EVENT_TYPE_WORKFLOW_TASK_SCHEDULED"
        ][-1]
        trigger = EventType.Name(by_id[before.event_id - 1].event_type)
        started_by.append(
            "activity" if trigger == "EVENT_TYPE_ACTIVITY_TASK_COMPLETED" else trigger
        )
    return started_by


async def test_an_attempt_tapraise_holds_but_the_call_never_recorded_is_adopted_at_the_end(
    call_worker: CallWorker, tapraise_client: TapRaiseClient
) -> None:
    """A worker died after TapRaise applied an attempt, and the message that asked for it was
    lost with it: the final action finds the attempt in TapRaise, and the call counts it."""
    handle, state = await started(call_worker)
    lost_at = state.requested_at + timedelta(seconds=1)
    await tapraise_client.add_attempt(state.call_uuid, AddAttemptRequest(attempt_at=lost_at))
    await update(handle, COMPLETE, CompleteSignal(result=CallResult(result_code="confirmed")))
    final: CallState = await handle.result()
    assert final.phase == CallPhase.COMPLETED
    assert [a.attempt_at for a in final.attempts] == [lost_at]
    assert "adopted" in [e.kind for e in final.events]
    # Decided by the patch asked for in the run's first task: none is asked for at the end,
    # where the task resolving the completion may replay as part of an earlier one.
    patches = [
        e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data
        for e in (await handle.fetch_history()).events
        if EventType.Name(e.event_type) == "EVENT_TYPE_MARKER_RECORDED"
        and e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]
    assert sorted(patches) == sorted(
        [
            b'{"id":"answer-in-own-task","deprecated":false}',
            b'{"id":"adopt-listed","deprecated":false}',
            b'{"id":"update-actions-as-activities","deprecated":false}',
        ]
    )
    await record_history(handle, "adopted_unrecorded_attempt")
