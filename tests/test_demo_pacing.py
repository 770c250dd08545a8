"""The demo's calls left running stay quiet: below 100 history events in an hour each.

Each demo call is started on a virtual clock exactly as the demo starts it (its scenario's
policy), played as far as the demo's agent plays the calls it leaves open, then left alone for
an hour; its recorded history is counted as production would record it.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from devstack.demo import OPEN_CALL_DEADLINE, SCENARIOS, Scenario
from starter.service import initial_search_attributes
from tests.temporal_fixture import CallWorker
from tests.test_call_workflow import history_length
from workflows.call import CallWorkflow
from workflows.messages import (
    ATTEMPT,
    RESCHEDULE,
    ActionAccepted,
    AttemptSignal,
    CallPhase,
    CallState,
    RescheduleSignal,
    workflow_id_for,
)
from workflows.policy import AttemptOutcome, CallPolicy, demo_policy

pytestmark = pytest.mark.timeout(120)

EVENTS_AN_HOUR = 100
HOUR = timedelta(hours=1)
# What one lapsed slot costs with the due phase: the window's timer fires (1) and wakes a workflow
# task (3) that enters `scheduled` (1 upsert) and starts the next slot's timer (1); that timer
# fires (1) and wakes a task (3) that enters `due` (1 upsert) and starts the window's timer (1).
EVENTS_PER_MISSED_SLOT = 12
# The rest of a call's life: start, policy, create, the first slot, the expiry, the close.
EVENTS_BESIDES_MISSED_SLOTS = 30

BY_LABEL = {scenario.label: scenario for scenario in SCENARIOS}
# The demo calls that stay open (the others close within three minutes: the unit test above
# bounds their slots).
LEFT_OPEN = [s.label for s in SCENARIOS if s.expect in (CallPhase.SCHEDULED, CallPhase.DUE)]


def policy_of(scenario: Scenario) -> CallPolicy:
    overrides = scenario.call_input().policy
    assert overrides is not None
    return demo_policy().model_copy(update=overrides.given())


def test_an_open_demo_call_misses_at_most_two_slots_an_hour() -> None:
    # Windows are always open, so a call nobody reports on is due for its attempt window, then
    # waits the missed-slot delay for its next slot, round after round, until its deadline.
    for scenario in SCENARIOS:
        policy = policy_of(scenario)
        assert not policy.blackout_dates and all(policy.windows.values())
        lifetime = min(policy.deadline, HOUR)
        round_trip = policy.attempt_window + policy.missed_slot_delay
        missed = lifetime // round_trip + 1  # the last round may be cut short by the deadline
        events = missed * EVENTS_PER_MISSED_SLOT + EVENTS_BESIDES_MISSED_SLOTS
        assert events < EVENTS_AN_HOUR, (scenario.label, policy.attempt_window, round_trip)
        if policy.deadline >= OPEN_CALL_DEADLINE:
            assert round_trip >= timedelta(minutes=30), scenario.label


async def _start(worker: CallWorker, scenario: Scenario) -> WorkflowHandle[Any, CallState]:
    """The scenario's call as the demo starts it, under a fresh uuid, at the test's instant."""
    call = scenario.call_input().model_copy(
        update={"uuid": uuid.uuid4(), "requested_at": worker.start_at}
    )
    return await worker.start_workflow(
        CallWorkflow.run,
        call,
        id=workflow_id_for(call.uuid or ""),
        search_attributes=initial_search_attributes(call),
    )


async def _until_due(worker: CallWorker, handle: WorkflowHandle[Any, CallState]) -> None:
    for _ in range(40):
        if (await worker.state(handle)).phase == CallPhase.DUE:
            return
        await worker.advance(handle, timedelta(seconds=1))
        await asyncio.sleep(0.05)
    pytest.fail(f"{handle.id} never became due")


async def _play(worker: CallWorker, label: str, handle: WorkflowHandle[Any, CallState]) -> None:
    """What the demo's agent does on the calls it leaves open, on the call's own clock."""
    if label == "callback":
        await _until_due(worker, handle)
        at = await worker.now(handle) + timedelta(minutes=20)
        callback = RescheduleSignal(at=at, notes="driving")
        await handle.execute_update(RESCHEDULE, callback, result_type=ActionAccepted)
    elif label == "voicemail":
        await _until_due(worker, handle)
        voicemail = AttemptSignal(outcome=AttemptOutcome.VOICEMAIL)
        await handle.execute_update(ATTEMPT, voicemail, result_type=ActionAccepted)


@pytest.mark.parametrize(
    ("label", "played"),
    [(label, False) for label in LEFT_OPEN] + [("callback", True), ("voicemail", True)],
)
async def test_a_demo_call_left_running_stays_below_100_history_events_an_hour(
    call_worker: CallWorker, label: str, played: bool
) -> None:
    handle = await _start(call_worker, BY_LABEL[label])
    if played:
        await _play(call_worker, label, handle)
    await call_worker.advance(handle, HOUR)
    state = await call_worker.state(handle)
    events = await history_length(handle)
    assert events < EVENTS_AN_HOUR, (label, state.phase, state.missed_slots, events)
