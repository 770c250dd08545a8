"""Following TapRaise: calls requested in the TapRaise app are adopted, and calls changed there
close or move at once — with the real follower workflow, worker and sandbox.

The sandbox plays the TapRaise app (`/_sandbox/app/…`); each test runs a follower of its own
(its own workflow id) on the test's task queue, following from the test's start, in the scope
of the sandbox's demo organization.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError

from sandbox.seed import DEMO_ORGANIZATION_UUID, DEMO_PERSON_UUIDS
from starter.follow import FollowerNotRunning, FollowerService
from starter.service import ActionRejected
from tapraise import TapRaiseClient
from tests.helpers import effects, wait_for_phase
from tests.sandbox_fixture import SandboxServer
from tests.temporal_fixture import CallWorker, record_history
from workflows.following import PAUSE, RESUME, RUN_NOW, FollowerStatus, FollowScope
from workflows.messages import CallPhase, CallState, workflow_id_for

pytestmark = pytest.mark.timeout(90)

PERSON = DEMO_PERSON_UUIDS[3]
APP_USER = "0b4f5c43-6b1a-4f0e-9a43-5d0a3f7a2c11"
INTERVAL = timedelta(seconds=1)


@pytest.fixture
async def follower(call_worker: CallWorker) -> AsyncIterator[FollowerService]:
    """A follower of this test's own, started from now, adopting the demo organization's calls."""
    service = FollowerService(
        call_worker.client, call_worker.task_queue, workflow_id=f"follower-{uuid.uuid4()}"
    )
    scope = FollowScope(organization_uuids=[uuid.UUID(DEMO_ORGANIZATION_UUID)])
    await service.start(INTERVAL, scope, since=datetime.now(UTC) - timedelta(seconds=1))
    try:
        yield service
    finally:
        await service.client.get_workflow_handle(service.workflow_id).terminate("test done")


def request_in_app(sandbox: SandboxServer, **fields: Any) -> str:
    """A call requested by a TapRaise user in the app; its uuid."""
    body = {
        "personUuid": PERSON,
        "type": "verification",
        "requestedByUserUuid": APP_USER,
        "callingOrganizationUuid": DEMO_ORGANIZATION_UUID,
        **fields,
    }
    answer = sandbox.admin.post("/app/calls", json=body)
    assert answer.status_code == 201, answer.text
    call_uuid: str = answer.json()["uuid"]
    return call_uuid


def act_in_app(sandbox: SandboxServer, call_uuid: str, action: str, **body: Any) -> None:
    answer = sandbox.admin.put(f"/app/calls/{call_uuid}/{action}", json=body)
    assert answer.status_code == 200, answer.text


async def start_own_call(
    worker: CallWorker, call_type: str, **fields: Any
) -> tuple[str, WorkflowHandle[Any, CallState]]:
    """A call started by our own tools (as a bare start does), in the demo organization."""
    call_uuid = str(uuid.uuid4())
    call = {
        "uuid": call_uuid,
        "personUuid": PERSON,
        "type": call_type,
        "callingOrganizationUuid": DEMO_ORGANIZATION_UUID,
        **fields,
    }
    handle = await worker.client.start_workflow(
        "CallWorkflow",
        call,
        id=workflow_id_for(call_uuid),
        task_queue=worker.task_queue,
        result_type=CallState,
    )
    return call_uuid, handle


async def adopted(worker: CallWorker, call_uuid: str) -> WorkflowHandle[Any, Any]:
    """The call's workflow, once the follower has started it."""
    handle = worker.client.get_workflow_handle(workflow_id_for(call_uuid), result_type=CallState)
    async with asyncio.timeout(20):
        while True:
            try:
                await handle.describe()
                return handle
            except RPCError:
                await asyncio.sleep(0.2)


async def test_a_call_requested_in_the_app_is_adopted_once_and_marked_processed(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, follower: FollowerService
) -> None:
    call_uuid = request_in_app(lenient_sandbox)
    handle = await adopted(call_worker, call_uuid)
    state = await wait_for_phase(handle, CallPhase.SCHEDULED, CallPhase.DUE)
    assert str(state.call_uuid) == call_uuid
    # Adopted, not created again: TapRaise holds the one call the app made, and the workflow
    # took it as the follower listed it, without asking TapRaise again.
    assert lenient_sandbox.effects(call_uuid) == effects()
    assert any(event.kind == "adopted" for event in state.events), state.events
    assert lenient_sandbox.requests(call_uuid, endpoint="create") == []
    # More rounds change nothing: one workflow run, still the same call.
    await follower.act(RUN_NOW)
    await follower.act(RUN_NOW)
    runs = [w async for w in call_worker.client.list_workflows(f"WorkflowId = '{handle.id}'")]
    assert len(runs) == 1
    status = await follower.status()
    assert status.adopted == 1 and status.failed_rounds == 0, status
    marks = lenient_sandbox.admin.get("/marks").json()
    assert any(
        mark.get("entityUuid") == call_uuid and mark.get("consumerIdentifier") == handle.id
        for mark in _mark_list(marks)
    ), marks


def _mark_list(marks: Any) -> list[dict[str, Any]]:
    if isinstance(marks, dict):
        for value in marks.values():
            if isinstance(value, list):
                return value
    return marks if isinstance(marks, list) else []


async def test_a_call_completed_in_the_app_closes_at_once_without_a_final_action(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, follower: FollowerService
) -> None:
    call_uuid = request_in_app(lenient_sandbox)
    handle = await adopted(call_worker, call_uuid)
    await wait_for_phase(handle, CallPhase.SCHEDULED, CallPhase.DUE)
    act_in_app(
        lenient_sandbox,
        call_uuid,
        "complete",
        userUuid=APP_USER,
        result={"resultCode": "confirmed", "notes": "entered in the app"},
    )
    async with asyncio.timeout(20):
        final: CallState = await handle.result()
    assert final.phase is CallPhase.COMPLETED
    assert final.final_reason == "completed in TapRaise"
    assert final.result is not None and final.result.result_code == "confirmed"
    # Nothing was sent to TapRaise for it: the app's completion is the only one.
    assert lenient_sandbox.effects(call_uuid)["complete"] == 0
    await record_history(handle, "adopted_listed_completed_in_app")


async def test_attempts_added_in_the_app_count_towards_the_maximum(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, follower: FollowerService
) -> None:
    call_uuid, handle = await start_own_call(
        call_worker,
        "happy_call",
        requestedAt=datetime.now(UTC).isoformat(),
        policy={"maxAttempts": 2, "firstAttemptDelay": 3600},
    )
    state = await wait_for_phase(handle, CallPhase.SCHEDULED, CallPhase.DUE)
    for milliseconds in (1, 2):
        at = (state.requested_at + timedelta(milliseconds=milliseconds)).isoformat()
        act_in_app(lenient_sandbox, call_uuid, "add-attempt", userUuid=APP_USER, attemptAt=at)
    async with asyncio.timeout(20):
        final: CallState = await handle.result()
    assert final.phase is CallPhase.EXPIRED and len(final.attempts) == 2, final
    # The call expired it in TapRaise (it was still requested there); no attempt was sent.
    assert lenient_sandbox.effects(call_uuid) == effects(create=1, expire=1)


async def test_a_paused_follower_loses_no_change_and_resumes(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, follower: FollowerService
) -> None:
    paused: FollowerStatus = await follower.act(PAUSE)
    assert paused.paused
    with pytest.raises(ActionRejected, match="paused"):
        await follower.act(RUN_NOW)
    call_uuid = request_in_app(lenient_sandbox)
    await asyncio.sleep(2 * INTERVAL.total_seconds())
    with pytest.raises(RPCError):
        await call_worker.client.get_workflow_handle(workflow_id_for(call_uuid)).describe()
    resumed = await follower.act(RESUME)
    assert not resumed.paused
    await adopted(call_worker, call_uuid)
    await follower.act(RUN_NOW)
    await record_history(
        call_worker.client.get_workflow_handle(follower.workflow_id), "follower_paused_resumed"
    )


async def test_a_second_start_changes_nothing_and_an_unknown_follower_is_named(
    call_worker: CallWorker, follower: FollowerService
) -> None:
    started, status = await follower.start(
        timedelta(seconds=60), FollowScope(), since=datetime.now(UTC)
    )
    assert not started and status.interval == INTERVAL
    missing = FollowerService(call_worker.client, call_worker.task_queue, workflow_id="nobody")
    with pytest.raises(FollowerNotRunning, match="sync start"):
        await missing.status()


async def test_calls_outside_the_scope_or_managed_elsewhere_are_not_adopted(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, follower: FollowerService
) -> None:
    other_org = lenient_sandbox.admin.post(
        "/organizations", json={"name": "another charity", "maxCallAttempts": 5}
    )
    assert other_org.status_code in (200, 201), other_org.text
    org_uuid = other_org.json()["uuid"]
    elsewhere = request_in_app(lenient_sandbox, callingOrganizationUuid=org_uuid)
    inside = request_in_app(lenient_sandbox)
    await adopted(call_worker, inside)
    await follower.act(RUN_NOW)
    with pytest.raises(RPCError):
        await call_worker.client.get_workflow_handle(workflow_id_for(elsewhere)).describe()


async def test_an_external_call_of_ours_is_told_what_another_tool_changed(
    call_worker: CallWorker,
    lenient_sandbox: SandboxServer,
    tapraise_client: TapRaiseClient,
    follower: FollowerService,
) -> None:
    # Never adopted (another system manages such calls), but a workflow that runs one is told
    # what changed in TapRaise: here another of the charity's tools cancels it through the API.
    call_uuid, handle = await start_own_call(
        call_worker,
        "verification",
        externalMetadata={"applicationName": "crm", "referenceId": "ref-1"},
    )
    await wait_for_phase(handle, CallPhase.SCHEDULED, CallPhase.DUE)
    await tapraise_client.cancel_call(call_uuid)
    async with asyncio.timeout(20):
        final: CallState = await handle.result()
    assert final.phase is CallPhase.CANCELLED
    assert final.final_reason == "cancelled in TapRaise"
    # The other tool's cancel is the only one: the workflow sent none of its own.
    assert lenient_sandbox.effects(call_uuid)["cancel"] == 1


async def test_a_change_the_call_made_itself_is_not_told_back_to_it(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, follower: FollowerService
) -> None:
    _, handle = await start_own_call(call_worker, "winback")
    await wait_for_phase(handle, CallPhase.SCHEDULED, CallPhase.DUE)
    await asyncio.sleep(2)  # visibility shows the call's own state
    before = await follower.act(RUN_NOW)
    history = await handle.fetch_history()
    signals = [
        event.workflow_execution_signaled_event_attributes.signal_name
        for event in history.events
        if event.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert signals == [], signals
    assert before.ignored >= 1 and before.delivered == 0, before


async def test_a_call_found_final_in_tapraise_keeps_what_tapraise_holds(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, follower: FollowerService
) -> None:
    # Not told by the follower (paused): the call finds out when its own attempt is refused.
    await follower.act(PAUSE)
    call_uuid, handle = await start_own_call(call_worker, "verification")
    state = await wait_for_phase(handle, CallPhase.SCHEDULED, CallPhase.DUE)
    at = (state.requested_at + timedelta(milliseconds=5)).isoformat()
    act_in_app(lenient_sandbox, call_uuid, "add-attempt", userUuid=APP_USER, attemptAt=at)
    act_in_app(
        lenient_sandbox, call_uuid, "complete", userUuid=APP_USER, result={"resultCode": "declined"}
    )
    await handle.signal("attempt", {"outcome": "busy"})
    async with asyncio.timeout(20):
        final: CallState = await handle.result()
    assert final.phase is CallPhase.COMPLETED
    assert final.result is not None and final.result.result_code == "declined"
    assert len(final.attempts) == 1, final.attempts  # the app's, not the refused one
    assert lenient_sandbox.effects(call_uuid) == effects(create=1)
