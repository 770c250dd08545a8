"""The call workflow, driven as agents would drive it: real worker, real activities, the sandbox.

Each test runs one call on the dev server with its own virtual clock; `advance` lets days pass in
a second. Assertions look at the workflow's `state`, its history, and the sandbox's record of
what TapRaise received.

Calls start at a pinned instant (see `tests.temporal_fixture`): by default 03:00 on a working day,
or the kind `CALL_TESTS_START` names. Every test passes for every kind: what depends on the start
instant (a call is `due` at once when it starts inside a calling window) is derived from it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from bench.lifecycle import update
from sandbox.seed import DEMO_PERSON_UUIDS, FOREIGN_PERSON_UUID
from tapraise import (
    AddAttemptRequest,
    CallResult,
    CallStatus,
    CompleteCallRequest,
    CreateCallRequest,
    TapRaiseClient,
)
from tests.helpers import effects, wait_for_phase
from tests.sandbox_fixture import SandboxServer
from tests.temporal_fixture import (
    DEFAULT_START,
    CallWorker,
    record_history,
    start_instant,
    temporal_cli,
)
from workflows.call import CallWorkflow
from workflows.messages import (
    ATTEMPT,
    CANCEL,
    COMPLETE,
    RESCHEDULE,
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
# The `due` phase is off by default; these tests follow a slot through it.
DUE_PHASE: dict[str, Any] = {"duePhase": True}
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
DUTCH_HOLIDAYS = holidays.country_holidays("NL")


def in_weekday_window(t: datetime) -> bool:
    """Inside the shipped default windows: Mon-Fri 09-21, Sat 10-16 (Amsterdam)."""
    local = t.astimezone(AMSTERDAM)
    minutes = local.hour * 60 + local.minute
    if local.weekday() < 5:
        return 9 * 60 <= minutes < 21 * 60
    if local.weekday() == 5:
        return 10 * 60 <= minutes < 16 * 60
    return False


def callable_at(t: datetime) -> bool:
    """Inside a window of the shipped default policy: a weekday window, not a Dutch holiday."""
    return in_weekday_window(t) and t.astimezone(AMSTERDAM).date() not in DUTCH_HOLIDAYS


def first_phase(start: datetime, due_phase: bool = False) -> CallPhase:
    """Where a call on the default windows settles once created, started at `start`.

    With no first-attempt delay its first slot is its start when a window is open then, else the
    next window's opening. The default policy waits for either as `scheduled`; with the `due`
    phase on, a slot that is open at once shows as `due`.
    """
    return CallPhase.DUE if due_phase and callable_at(start) else CallPhase.SCHEDULED


def next_opening(t: datetime) -> datetime:
    """The next opening of a default calling window at or after `t` (UTC)."""
    day = t.astimezone(AMSTERDAM).date()
    for _ in range(30):
        if day.weekday() < 6 and day not in DUTCH_HOLIDAYS:
            opens = datetime.combine(day, time(9 if day.weekday() < 5 else 10), tzinfo=AMSTERDAM)
            if opens >= t:
                return opens.astimezone(UTC)
        day += timedelta(days=1)
    raise AssertionError(f"no calling window within 30 days after {t}")


async def settled(
    worker: CallWorker, handle: WorkflowHandle[Any, Any], due_phase: bool = False
) -> CallState:
    """The call once it has its first slot, in the phase its start instant calls for."""
    return await wait_for_phase(handle, first_phase(worker.start_at, due_phase))


# Events the test server adds when a test moves a workflow's virtual clock; never in production.
_CLOCK_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_OPTIONS_UPDATED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIME_SKIPPING_TRANSITIONED,
}


async def history_length(handle: WorkflowHandle[Any, Any]) -> int:
    """History events as production would record them.

    Left out: the virtual clock's own events, and the empty workflow task each of them wakes
    (the first workflow task, after the clock skipped the start delay, is the call's own).
    """
    count, skip = 0, 0
    previous = None
    first_task = True
    for event in (await handle.fetch_history()).events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            if previous in _CLOCK_EVENTS and not first_task:
                skip = 3  # scheduled, started, completed
            first_task = False
        previous = kind
        if kind in _CLOCK_EVENTS:
            continue
        if skip:
            skip -= 1
            continue
        count += 1
    return count


async def created_in_tapraise(client: TapRaiseClient) -> tuple[uuid.UUID, datetime]:
    """A verification call created straight in TapRaise, as another tool would: uuid, time.

    Requested at the real now: the sandbox dates the actions a test takes on it directly (as
    cancelling the call) by its own clock, and refuses one dated before the request.
    """
    call_uuid = uuid.uuid4()
    requested_at = datetime.now(UTC).replace(microsecond=0)
    await client.create_call(
        CreateCallRequest(
            uuid=call_uuid, requested_at=requested_at, person_uuid=PERSON, type="verification"
        )
    )
    return call_uuid, requested_at


async def test_a_call_starts_at_the_instant_its_test_pins(call_worker: CallWorker) -> None:
    handle = await call_worker.start(person_uuid=PERSON, type="verification")
    state = await settled(call_worker, handle)
    events = (await handle.fetch_history()).events
    first_task = next(
        e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
    )
    began = first_task.event_time.ToDatetime().replace(tzinfo=UTC)  # the first `workflow.now()`
    assert call_worker.start_at <= began < call_worker.start_at + timedelta(seconds=1)
    assert state.requested_at == call_worker.start_at
    assert state.next_slot_at is not None
    if callable_at(call_worker.start_at):  # inside a window: the first slot is its start
        assert began <= state.next_slot_at < began + timedelta(seconds=1)
    else:
        assert state.next_slot_at == next_opening(call_worker.start_at)
    await handle.terminate("test done")


async def test_typical_call_attempted_on_two_days_then_completed_on_day_three(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    handle = await call_worker.start(person_uuid=PERSON, type="verification", policy=DUE_PHASE)
    call_uuid = str((await call_worker.state(handle)).call_uuid)

    first = await settled(call_worker, handle, due_phase=True)
    assert first.status == CallStatus.REQUESTED
    assert first.next_slot_at is not None and in_weekday_window(first.next_slot_at)

    await call_worker.advance_to(handle, first.next_slot_at)
    await wait_for_phase(handle, CallPhase.DUE)
    accepted = await update(handle, ATTEMPT, AttemptSignal(outcome=AttemptOutcome.VOICEMAIL))
    assert accepted.detail.startswith("attempt 1 recorded")

    second = await wait_for_phase(handle, CallPhase.SCHEDULED)
    assert second.next_slot_at is not None and in_weekday_window(second.next_slot_at)
    assert second.next_slot_at.astimezone(AMSTERDAM).date() > (
        first.next_slot_at.astimezone(AMSTERDAM).date()
    )
    await call_worker.advance_to(handle, second.next_slot_at)
    await wait_for_phase(handle, CallPhase.DUE)
    await handle.signal(
        CallWorkflow.attempt_signal, AttemptSignal(outcome=AttemptOutcome.NO_ANSWER)
    )
    third = await wait_for_phase(handle, CallPhase.SCHEDULED)
    assert len(third.attempts) == 2

    assert third.next_slot_at is not None
    await call_worker.advance_to(handle, third.next_slot_at)
    await wait_for_phase(handle, CallPhase.DUE)
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
    # A short history whatever the timing: where a message lands relative to a workflow task
    # moves the count by a few events (62 seen with two test processes on two cores).
    assert await history_length(handle) < 70
    await record_history(handle, "typical_path")


async def test_cancel_while_waiting_cancels_in_tapraise(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    handle = await call_worker.start(person_uuid=PERSON, type="happy_call")
    await settled(call_worker, handle)
    accepted = await update(handle, CANCEL, CancelSignal(reason="donor asked not to be called"))
    assert accepted.phase == CallPhase.CANCELLED
    final = await handle.result()
    assert final.phase == CallPhase.CANCELLED and final.status == CallStatus.CANCELLED
    assert lenient_sandbox.effects(str(final.call_uuid))["cancel"] == 1
    await record_history(handle, "cancelled_while_waiting")


async def test_call_expires_when_attempts_run_out(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    handle = await call_worker.start(
        person_uuid=PERSON, type="winback", policy={**DUE_PHASE, "maxAttempts": 2}
    )
    state = await settled(call_worker, handle, due_phase=True)
    for attempt in range(2):
        if attempt:  # a busy line is tried again half an hour later: never at once
            state = await wait_for_phase(handle, CallPhase.SCHEDULED)
        assert state.next_slot_at is not None
        await call_worker.advance_to(handle, state.next_slot_at)
        await wait_for_phase(handle, CallPhase.DUE)
        await update(handle, ATTEMPT, AttemptSignal(outcome=AttemptOutcome.BUSY))
    final = await handle.result()
    assert final.phase == CallPhase.EXPIRED and final.status == CallStatus.EXPIRED
    assert final.final_reason == "expired: max_attempts"
    effects = lenient_sandbox.effects(str(final.call_uuid))
    assert effects["add-attempt"] == 2 and effects["expire"] == 1
    await record_history(handle, "expired_by_attempts")


async def test_call_expires_at_its_deadline_after_missed_slots(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    # A 12-hour attempt window: each day's slot stays due until its window closes, then lapses.
    handle = await call_worker.start(
        person_uuid=PERSON, type="verification", policy={"attemptWindow": "PT12H"}
    )
    await settled(call_worker, handle)
    await call_worker.advance(handle, timedelta(days=8))
    final = await handle.result()
    assert final.phase == CallPhase.EXPIRED and final.final_reason == "expired: deadline"
    assert final.missed_slots >= 3  # each due slot lapsed without a report: never an attempt
    assert final.attempts == []
    effects = lenient_sandbox.effects(str(final.call_uuid))
    assert effects["add-attempt"] == 0 and effects["expire"] == 1
    await record_history(handle, "expired_by_deadline")


async def test_reschedule_moves_the_next_slot_to_the_donors_requested_time(
    call_worker: CallWorker,
) -> None:
    handle = await call_worker.start(person_uuid=PERSON, type="verification", policy=DUE_PHASE)
    state = await settled(call_worker, handle, due_phase=True)
    now = await call_worker.now(handle)
    local = (now + timedelta(days=3)).astimezone(AMSTERDAM)
    while not callable_at(local.replace(hour=19, minute=30)):  # a working day's 19:30
        local += timedelta(days=1)
    wanted = local.replace(hour=19, minute=30, second=0, microsecond=0)
    accepted = await update(handle, RESCHEDULE, RescheduleSignal(at=wanted, notes="after dinner"))
    assert "callback at" in accepted.detail
    state = await wait_for_phase(handle, CallPhase.SCHEDULED)
    assert state.next_slot_at == wanted.astimezone(UTC)
    await call_worker.advance_to(handle, wanted)
    due = await wait_for_phase(handle, CallPhase.DUE)
    assert due.next_slot_at == wanted.astimezone(UTC)

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await update(handle, RESCHEDULE, RescheduleSignal(at=wanted + timedelta(days=30)))
    assert "deadline" in str(refused.value.cause)
    await record_history(handle, "rescheduled")
    await handle.terminate("test done")


async def test_duplicate_trigger_adopts_a_call_already_completed_in_tapraise(
    call_worker: CallWorker, tapraise_client: TapRaiseClient, lenient_sandbox: SandboxServer
) -> None:
    call_uuid, requested_at = await created_in_tapraise(tapraise_client)
    await tapraise_client.complete_call(
        call_uuid, CompleteCallRequest(result=CallResult(result_code="confirmed"))
    )
    handle = await call_worker.start(
        uuid=call_uuid, person_uuid=PERSON, type="verification", requested_at=requested_at
    )
    final = await handle.result()
    assert final.phase == CallPhase.COMPLETED and final.status == CallStatus.COMPLETED
    assert final.result is not None and final.result.result_code == "confirmed"
    assert lenient_sandbox.effects(str(call_uuid)) == effects(create=1, complete=1)
    await record_history(handle, "adopted_completed")


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
    await record_history(handle, "failed_forbidden")


async def test_duplicate_late_and_malformed_messages_change_nothing(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="temporalio.worker._workflow_instance")
    handle = await call_worker.start(person_uuid=PERSON, type="verification")
    state = await settled(call_worker, handle)
    call_uuid = str(state.call_uuid)
    at = await call_worker.now(handle)
    attempt = AttemptSignal(outcome=AttemptOutcome.NO_ANSWER, attempt_at=at)
    await update(handle, ATTEMPT, attempt)
    again = await update(handle, ATTEMPT, attempt)
    assert again.detail.startswith("duplicate")
    await handle.signal(CallWorkflow.attempt_signal, attempt)

    # A payload that does not decode: the update is refused, the signal is dropped with a log.
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update("complete", {"result": {"notes": "no resultCode"}})
    await handle.signal("complete", {"result": {"resultCode": ""}})
    with pytest.raises(WorkflowUpdateFailedError) as unknown:
        await handle.execute_update("attempt", {"outcome": "hung_up"})
    assert unknown.value.cause is not None

    await update(handle, COMPLETE, CompleteSignal(result=CallResult(result_code="confirmed")))
    final = await handle.result()
    # Once the call is closed, Temporal itself refuses any further message.
    with pytest.raises(RPCError, match="already completed"):
        await update(handle, CANCEL, CancelSignal())
    with pytest.raises(RPCError, match="already completed"):
        await handle.signal(CallWorkflow.cancel_signal, CancelSignal())
    await record_history(handle, "duplicates_and_malformed")
    assert final.phase == CallPhase.COMPLETED and len(final.attempts) == 1
    # The malformed signal: one warning line naming the field, no traceback.
    [dropped] = [
        r for r in caplog.records if r.getMessage().startswith("Failed deserializing signal")
    ]
    assert dropped.levelno == logging.WARNING and dropped.exc_info is None
    assert "result.resultCode" in dropped.getMessage(), dropped.getMessage()
    assert lenient_sandbox.effects(call_uuid) == effects(create=1, add_attempt=1, complete=1)


async def test_bare_start_with_camel_case_json_runs_with_the_default_policy(
    call_worker: CallWorker,
) -> None:
    call_uuid = uuid.uuid4()
    # Without requestedAt the call counts its deadline from the start request, which a delayed
    # start leaves at the real now: so this start is at the default kind of instant, days ahead at
    # most, whatever the run's kind (an instant months ahead would be past the deadline).
    at = start_instant(DEFAULT_START)
    handle = await call_worker.start_workflow(
        "CallWorkflow",
        {"uuid": str(call_uuid), "personUuid": str(PERSON), "type": "verification"},
        id=f"call-{call_uuid}",
        start_at=at,
    )
    state = await wait_for_phase(handle, first_phase(at))
    assert state.max_attempts == 5 and state.timezone == "Europe/Amsterdam"
    await handle.signal("complete", {"result": {"resultCode": "confirmed"}})
    result = await handle.result()
    assert result["phase"] == "completed"
    await record_history(handle, "bare_start")


async def test_invalid_bare_start_fails_at_once_naming_the_field(call_worker: CallWorker) -> None:
    call_uuid = uuid.uuid4()
    handle = await call_worker.client.start_workflow(
        "CallWorkflow",
        {"uuid": str(call_uuid), "personUuid": "not-a-uuid", "type": "verification"},
        id=f"call-{call_uuid}",
        task_queue=call_worker.task_queue,
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidCallInput"
    assert "personUuid" in cause.message


async def test_completion_racing_a_cancellation_records_exactly_one_final_action(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    handle = await call_worker.start(person_uuid=PERSON, type="verification")
    state = await settled(call_worker, handle)
    results = await asyncio.gather(
        update(
            handle,
            COMPLETE,
            CompleteSignal(result=CallResult(result_code="confirmed")),
        ),
        update(handle, CANCEL, CancelSignal(reason="race")),
        return_exceptions=True,
    )
    accepted = [r for r in results if not isinstance(r, BaseException)]
    assert len(accepted) == 1
    # The loser is refused by the workflow while the winner is carried out, or by Temporal
    # once the call has closed (or while it closes).
    (refused,) = [r for r in results if isinstance(r, BaseException)]
    if isinstance(refused, WorkflowUpdateFailedError):
        assert "already being" in str(refused.cause) or "already" in str(refused.cause)
    else:
        assert isinstance(refused, RPCError)
        assert "already completed" in str(refused) or "aborted by closing workflow" in str(refused)
    final = await handle.result()
    effects = lenient_sandbox.effects(str(state.call_uuid))
    assert effects["complete"] + effects["cancel"] == 1
    assert final.phase in (CallPhase.COMPLETED, CallPhase.CANCELLED)
    stored = lenient_sandbox.stored_call(str(state.call_uuid))
    assert stored is not None and stored["status"] == final.phase.value


async def test_completion_sent_while_the_create_is_still_retried_is_carried_out_after_it(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, clean_faults: None
) -> None:
    lenient_sandbox.set_faults([{"endpoint": "create", "next": ["503", "500", "429"]}])
    handle = await call_worker.start(person_uuid=PERSON, type="happy_call")
    await handle.signal(
        CallWorkflow.complete_signal, CompleteSignal(result=CallResult(result_code="confirmed"))
    )
    final = await handle.result()
    assert final.phase == CallPhase.COMPLETED
    creates = lenient_sandbox.requests(call_uuid=str(final.call_uuid), endpoint="create")
    assert [r["status"] for r in creates] == [503, 500, 429, 201]
    assert lenient_sandbox.effects(str(final.call_uuid)) == effects(create=1, complete=1)


async def test_late_answer_to_an_attempt_never_records_it_twice(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, clean_faults: None
) -> None:
    handle = await call_worker.start(person_uuid=PERSON, type="verification")
    state = await settled(call_worker, handle)
    # The change is applied, but the answer comes after the client gave up (read timeout 2 s).
    lenient_sandbox.set_faults(
        [{"endpoint": "add-attempt", "next": ["late"], "lateDelaySeconds": 3}]
    )
    accepted = await update(handle, ATTEMPT, AttemptSignal(outcome=AttemptOutcome.NO_ANSWER))
    assert accepted.detail.startswith("attempt 1 recorded")
    call_uuid = str(state.call_uuid)
    assert lenient_sandbox.effects(call_uuid)["add-attempt"] == 1
    stored = lenient_sandbox.stored_call(call_uuid)
    assert stored is not None and stored["attemptsCount"] == 1
    assert len(lenient_sandbox.requests(call_uuid=call_uuid, endpoint="add-attempt")) == 1
    await handle.terminate("test done")


async def test_attempt_beyond_the_maximum_is_refused_before_reaching_tapraise(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    handle = await call_worker.start(
        person_uuid=PERSON, type="verification", policy={"maxAttempts": 1}
    )
    state = await settled(call_worker, handle)
    first = update(handle, ATTEMPT, AttemptSignal(outcome=AttemptOutcome.NO_ANSWER))
    await first
    final = await handle.result()  # one attempt was the maximum: the call expired
    assert final.phase == CallPhase.EXPIRED and final.final_reason == "expired: max_attempts"
    assert lenient_sandbox.effects(str(state.call_uuid))["add-attempt"] == 1


def _next_dst_change(after: datetime) -> datetime:
    """The first day (local midnight, Amsterdam) whose UTC offset differs from the day before."""
    day = after.astimezone(AMSTERDAM).replace(hour=12, minute=0, second=0, microsecond=0)
    for _ in range(400):
        following = (day + timedelta(days=1)).replace(hour=12)
        following = following.astimezone(UTC).astimezone(AMSTERDAM).replace(hour=12)
        if following.utcoffset() != day.utcoffset():
            return following.replace(hour=0)
        day = following
    raise AssertionError("no DST change within 400 days")


async def test_slots_stay_inside_local_windows_across_a_dst_change(
    call_worker: CallWorker,
) -> None:
    start = call_worker.start_at  # the call's requestedAt: its delays count from here
    # A day ahead at least, so that the evening before the change is still to come.
    change = _next_dst_change(start + timedelta(days=1))
    # First slot: the evening before the change, 20:30 local; the retry lands after it.
    evening = (change - timedelta(days=1)).replace(hour=20, minute=30).astimezone(UTC)
    delay = int((evening - start).total_seconds())
    handle = await call_worker.start(
        person_uuid=PERSON,
        type="verification",
        policy={
            **DUE_PHASE,
            "firstAttemptDelay": delay,
            "deadline": delay + 14 * 86400,
            "retryDelays": {"no_answer": 10 * 3600},
            "windows": {"sun": ["09:00-21:00"], "sat": ["09:00-21:00"]},
            "holidayCountries": [],  # DST changes fall on Easter weekends some years
        },
    )
    first = await wait_for_phase(handle, CallPhase.SCHEDULED)
    assert first.next_slot_at is not None
    first_local = first.next_slot_at.astimezone(AMSTERDAM)
    assert (first_local.hour, first_local.minute) == (20, 30)
    await call_worker.advance_to(handle, first.next_slot_at)
    await wait_for_phase(handle, CallPhase.DUE)
    at = await call_worker.now(handle)
    await update(handle, ATTEMPT, AttemptSignal(outcome=AttemptOutcome.NO_ANSWER, attempt_at=at))
    second = await wait_for_phase(handle, CallPhase.SCHEDULED)
    assert second.next_slot_at is not None
    local = second.next_slot_at.astimezone(AMSTERDAM)
    # 10 hours after 20:30 is before 09:00 on the day of the change (either way the clocks
    # move): the slot is the 09:00 opening in local time, in the new UTC offset.
    assert local.date() == change.date() and (local.hour, local.minute) == (9, 0)
    assert local.utcoffset() != first_local.utcoffset()
    await handle.terminate("test done")


async def test_a_history_past_its_bound_continues_as_new_without_losing_or_repeating_anything(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    always_open = {
        day: ["00:00-24:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    }
    handle = await call_worker.start(
        person_uuid=PERSON,
        type="verification",
        policy={
            "windows": always_open,
            "holidayCountries": [],
            "attemptWindow": 30,
            "missedSlotDelay": 30,
            "historyLimit": 20,
            "retryDelays": {"busy": 60},
        },
    )
    state = await wait_for_phase(handle, CallPhase.SCHEDULED, CallPhase.DUE)
    call_uuid = str(state.call_uuid)
    await update(handle, ATTEMPT, AttemptSignal(outcome=AttemptOutcome.BUSY))
    # Slot after slot lapses unreported, run after run. A minute at a time, for as long as it
    # takes: a run that continues as new during a fast-forward begins after a second's backoff
    # in real time, and the rest of that fast-forward passes it by (more often under load).
    for _ in range(30):
        await call_worker.advance(handle, timedelta(minutes=1))
        state = await wait_for_phase(handle, CallPhase.SCHEDULED, CallPhase.DUE)
        if state.missed_slots >= 5:
            break
    assert state.missed_slots >= 5 and len(state.attempts) == 1
    assert any(e.kind == "continued" for e in state.events)
    await update(handle, COMPLETE, CompleteSignal(result=CallResult(result_code="confirmed")))
    final = await handle.result()
    assert final.phase == CallPhase.COMPLETED and len(final.attempts) == 1
    first = call_worker.client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
    first_run = [e.event_type for e in (await first.fetch_history()).events]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW in first_run
    await record_history(first, "continued_as_new")
    assert lenient_sandbox.effects(call_uuid) == effects(create=1, add_attempt=1, complete=1)


async def _temporal(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        temporal_cli(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, output.decode()
    return output.decode()


async def test_the_plain_temporal_cli_drives_a_call_end_to_end(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = uuid.uuid4()
    address = call_worker.client.service_client.config.target_host
    # Started without requestedAt, as the bare start above: at the default kind of instant.
    at = start_instant(DEFAULT_START)
    delay = (at - datetime.now(UTC)).total_seconds()
    await _temporal(
        "workflow", "start", "--address", address,
        "--type", "CallWorkflow", "--task-queue", call_worker.task_queue,
        "--workflow-id", f"call-{call_uuid}",
        "--input", f'{{"uuid": "{call_uuid}", "personUuid": "{PERSON}", "type": "verification"}}',
        "--start-delay", f"{delay:.3f}s",
    )  # fmt: skip
    handle = call_worker.client.get_workflow_handle(f"call-{call_uuid}")
    await call_worker.skip_start_delay(handle, at)
    await wait_for_phase(handle, first_phase(at))
    await _temporal(
        "workflow", "signal", "--address", address, "--workflow-id", f"call-{call_uuid}",
        "--name", "complete", "--input", '{"result": {"resultCode": "confirmed"}}',
    )  # fmt: skip
    final = CallState.model_validate(await handle.result())
    assert final.phase == CallPhase.COMPLETED and final.status == CallStatus.COMPLETED
    assert lenient_sandbox.effects(str(call_uuid))["complete"] == 1


async def test_a_message_queued_while_adopting_a_finished_call_is_refused_not_left_hanging(
    call_worker: CallWorker,
    tapraise_client: TapRaiseClient,
    lenient_sandbox: SandboxServer,
    clean_faults: None,
) -> None:
    call_uuid, requested_at = await created_in_tapraise(tapraise_client)
    await tapraise_client.cancel_call(call_uuid)
    # The create is slow, so the attempt below waits in the queue while the call is adopted.
    lenient_sandbox.set_faults([{"endpoint": "create", "next": ["latency"], "latencySeconds": 1.0}])
    handle = await call_worker.start(
        uuid=call_uuid, person_uuid=PERSON, type="verification", requested_at=requested_at
    )
    # Refused by the workflow, or, when the call closes in the same instant, by Temporal.
    with pytest.raises((WorkflowUpdateFailedError, RPCError)) as refused:
        await update(handle, ATTEMPT, AttemptSignal(outcome=AttemptOutcome.NO_ANSWER))
    reason = refused.value.cause if isinstance(refused.value, WorkflowUpdateFailedError) else None
    assert "already cancelled" in str(reason or refused.value) or "closing" in str(refused.value)
    final = await handle.result()
    assert final.phase == CallPhase.CANCELLED and final.attempts == []
    assert lenient_sandbox.effects(str(call_uuid))["add-attempt"] == 0


async def test_without_the_due_phase_each_slot_is_one_timer_and_the_call_stays_scheduled(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    handle = await call_worker.start(
        person_uuid=PERSON, type="verification", policy={"duePhase": False}
    )
    first = await wait_for_phase(handle, CallPhase.SCHEDULED)
    assert first.next_slot_at is not None and first.due_until is not None

    # The first slot's window passes with no report: missed, and the next slot is scheduled.
    await call_worker.advance_to(handle, first.due_until)
    for _ in range(200):
        second = await call_worker.state(handle)
        if second.missed_slots == 1:
            break
        await asyncio.sleep(0.05)
    assert second.missed_slots == 1 and second.phase == CallPhase.SCHEDULED
    assert second.next_slot_at is not None and second.next_slot_at > first.due_until

    # Reported inside the next slot while the call shows `scheduled`; then completed.
    await call_worker.advance_to(handle, second.next_slot_at)
    accepted = await update(handle, ATTEMPT, AttemptSignal(outcome=AttemptOutcome.NO_ANSWER))
    assert accepted.phase == CallPhase.SCHEDULED
    await update(handle, COMPLETE, CompleteSignal(result=CallResult(result_code="confirmed")))
    final = await handle.result()
    assert final.phase == CallPhase.COMPLETED and len(final.attempts) == 1

    events = (await handle.fetch_history()).events
    timers = [e for e in events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
    assert len(timers) == 3  # missed slot, attempted slot, completed slot: one timer each
    phases = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields[
            "CallPhase"
        ].data
        for e in events
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
        and "CallPhase"
        in e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
    ]
    assert b'"due"' not in phases and b'"completed"' in phases
    effects = lenient_sandbox.effects(str(final.call_uuid))
    assert effects["add-attempt"] == 1 and effects["complete"] == 1
    await record_history(handle, "without_due_phase")


async def test_an_attempt_tapraise_holds_but_the_call_missed_is_counted_when_it_closes(
    call_worker: CallWorker, tapraise_client: TapRaiseClient, lenient_sandbox: SandboxServer
) -> None:
    # As when a worker dies after TapRaise applied an attempt whose update was lost with it.
    handle = await call_worker.start(person_uuid=PERSON, type="verification")
    state = await settled(call_worker, handle)
    lost_at = state.requested_at + timedelta(seconds=5)
    await tapraise_client.add_attempt(state.call_uuid, AddAttemptRequest(attempt_at=lost_at))
    await update(handle, ATTEMPT, AttemptSignal(outcome=AttemptOutcome.BUSY))
    await update(handle, COMPLETE, CompleteSignal(result=CallResult(result_code="confirmed")))
    final = await handle.result()
    stored = lenient_sandbox.stored_call(str(final.call_uuid))
    assert stored is not None and len(final.attempts) == 2 == stored["attemptsCount"]
    assert lost_at in {a.attempt_at for a in final.attempts}
    assert [e.kind for e in final.events].count("adopted") == 1
    assert lenient_sandbox.effects(str(final.call_uuid))["add-attempt"] == 2
