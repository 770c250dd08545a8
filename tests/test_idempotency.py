"""Every message from outside carries its identity, fixed where it is made.

`requestedAt` is stamped into the workflow input where a call is started, `attemptAt` into an
attempt where it is reported, and an idempotency key (`--request-id`, `Idempotency-Key`) is the
Temporal update id: the same request sent twice changes nothing and gets the first answer.
Asserted against what Temporal recorded (the start event's input, the update and signal events'
payloads) and against what TapRaise (the sandbox) received, with a real worker.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHandle
from typer.testing import CliRunner, Result

from encryption.codec import EncryptionCodec
from sandbox.seed import DEMO_PERSON_UUIDS
from starter.cli import app
from starter.service import CallService, stamp_action
from tapraise import to_millis
from tapraise.models import CallType
from tests.helpers import gateway_client
from tests.keys_fixture import RUN_KEYS
from tests.sandbox_fixture import SandboxServer
from tests.temporal_fixture import CallWorker
from workflows.messages import ATTEMPT, AttemptSignal, CallInput, CallPhase
from workflows.policy import AttemptOutcome

pytestmark = pytest.mark.timeout(120)

PERSON = DEMO_PERSON_UUIDS[5]
TOKEN = "idempotency-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
runner = CliRunner()


# ── helpers ──────────────────────────────────────────────────────────────────────────────────


async def cli(worker: CallWorker, *args: str) -> Result:
    """`python -m starter --task-queue <worker's> …` in-process, off the event loop."""
    env = {
        "TEMPORAL_ADDRESS": worker.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": worker.client.namespace,
    }
    argv = ["--task-queue", worker.task_queue, *args]
    return await asyncio.to_thread(lambda: runner.invoke(app, argv, env=env))


@pytest_asyncio.fixture
async def gateway(call_worker: CallWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(call_worker.client, call_worker.task_queue, TOKEN) as http:
        yield http


def handle_of(worker: CallWorker, call_uuid: str) -> WorkflowHandle[Any, Any]:
    return worker.client.get_workflow_handle(f"call-{call_uuid}")


async def events(worker: CallWorker, call_uuid: str, kind: EventType.ValueType) -> list[Any]:
    history = await handle_of(worker, call_uuid).fetch_history()
    return [event for event in history.events if event.event_type == kind]


def payload(payloads: Any) -> dict[str, Any]:
    """The one JSON argument of a start, update or signal, as it was sent (decrypted)."""
    [first] = payloads.payloads
    value: dict[str, Any] = json.loads(EncryptionCodec(RUN_KEYS).decrypt(first).data)
    return value


async def started_input(worker: CallWorker, call_uuid: str) -> dict[str, Any]:
    """The workflow input exactly as the start request carried it (the first history event)."""
    [event] = await events(worker, call_uuid, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    return payload(event.workflow_execution_started_event_attributes.input)


def update_input(event: HistoryEvent) -> dict[str, Any]:
    attributes = event.workflow_execution_update_accepted_event_attributes
    return payload(attributes.accepted_request.input.args)


async def signals_handled(worker: CallWorker, call_uuid: str, count: int) -> None:
    """Wait until `count` signals are in the history and a workflow task has completed after the
    last of them (it saw them all, and whatever it did about them is done)."""
    for _ in range(200):
        history = await handle_of(worker, call_uuid).fetch_history()
        kinds = [event.event_type for event in history.events]
        signalled = [
            i for i, k in enumerate(kinds) if k == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        ]
        if (
            len(signalled) >= count
            and EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in kinds[signalled[-1] :]
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the workflow did not handle {count} signals")


async def state(worker: CallWorker, call_uuid: str) -> dict[str, Any]:
    result = await cli(worker, "status", call_uuid, "--json")
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    return body


async def scheduled(worker: CallWorker, call_uuid: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(100):
        body = await state(worker, call_uuid)
        if body["phase"] in (CallPhase.SCHEDULED, CallPhase.DUE):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"call stayed in {body.get('phase')}")


async def start_call(worker: CallWorker) -> str:
    call_uuid = str(uuid.uuid4())
    result = await cli(
        worker, "start", "--uuid", call_uuid, "--person", PERSON, "--type", "verification"
    )
    assert result.exit_code == 0, result.output
    await scheduled(worker, call_uuid)
    return call_uuid


def parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_stamped(text: str, before: datetime, after: datetime) -> datetime:
    """A time stamped now, here: UTC, whole milliseconds, between `before` and `after`."""
    instant = parse_instant(text)
    assert instant.utcoffset() == timedelta(0), text
    assert instant.microsecond % 1000 == 0, text
    assert to_millis(before) <= instant <= after, (before, text, after)
    return instant


# ── requestedAt, stamped where the call is started ───────────────────────────────────────────


async def test_cli_start_stamps_requested_at_into_the_workflow_input(
    call_worker: CallWorker,
) -> None:
    call_uuid = str(uuid.uuid4())
    before = datetime.now(UTC)
    result = await cli(
        call_worker, "start", "--uuid", call_uuid, "--person", PERSON, "--type", "winback"
    )
    after = datetime.now(UTC)
    assert result.exit_code == 0, result.output

    sent = await started_input(call_worker, call_uuid)
    stamped = assert_stamped(sent["requestedAt"], before, after)
    # The workflow works from the stamped instant, not from its own clock.
    assert parse_instant((await scheduled(call_worker, call_uuid))["requestedAt"]) == stamped


async def test_a_given_requested_at_is_sent_as_given(call_worker: CallWorker) -> None:
    call_uuid = str(uuid.uuid4())
    given = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=250_000)
    result = await cli(
        call_worker, "start", "--uuid", call_uuid, "--person", PERSON, "--type", "winback",
        "--requested-at", given.isoformat(),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert parse_instant((await started_input(call_worker, call_uuid))["requestedAt"]) == given


async def test_batch_rows_without_requested_at_are_stamped(
    call_worker: CallWorker, tmp_path: Any
) -> None:
    uuids = [str(uuid.uuid4()) for _ in range(3)]
    path = tmp_path / "calls.csv"
    path.write_text(
        "uuid,personUuid,type,requestedAt\n"
        f"{uuids[0]},{PERSON},verification,\n"
        f"{uuids[1]},{PERSON},verification,2026-01-05T08:00:00.500Z\n"
        f"{uuids[2]},{PERSON},happy_call,\n"
    )
    before = datetime.now(UTC)
    result = await cli(call_worker, "start-batch", str(path), "--json")
    after = datetime.now(UTC)
    assert result.exit_code == 0, result.output

    inputs = [await started_input(call_worker, call_uuid) for call_uuid in uuids]
    assert_stamped(inputs[0]["requestedAt"], before, after)
    assert parse_instant(inputs[1]["requestedAt"]) == datetime(2026, 1, 5, 8, 0, 0, 500_000, UTC)
    assert_stamped(inputs[2]["requestedAt"], before, after)


async def test_gateway_start_and_batch_stamp_requested_at(
    gateway: httpx.AsyncClient, call_worker: CallWorker
) -> None:
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    before = datetime.now(UTC)
    started = await gateway.post(
        "/calls", json={"uuid": one, "personUuid": PERSON, "type": "verification"}
    )
    assert started.status_code == 202, started.text
    batch = await gateway.post(
        "/calls/batch", json=[{"uuid": two, "personUuid": PERSON, "type": "winback"}]
    )
    assert batch.status_code == 200, batch.text
    after = datetime.now(UTC)
    for call_uuid in (one, two):
        assert_stamped((await started_input(call_worker, call_uuid))["requestedAt"], before, after)


async def test_the_service_stamps_its_own_clock_truncated_to_milliseconds(
    call_worker: CallWorker,
) -> None:
    # The demo and the benchmarks start calls through the service, as the CLI does.
    moment = (datetime.now(UTC) - timedelta(seconds=5)).replace(microsecond=123_456)
    service = CallService(call_worker.client, call_worker.task_queue, _clock=lambda: moment)
    call = CallInput(uuid=uuid.uuid4(), person_uuid=uuid.UUID(PERSON), type=CallType.WINBACK)
    await service.start(call)
    sent = await started_input(call_worker, str(call.uuid))
    assert parse_instant(sent["requestedAt"]) == moment.replace(microsecond=123_000)
    description = await handle_of(call_worker, str(call.uuid)).describe()
    assert moment.strftime("requested %Y-%m-%d %H:%M UTC") in (
        await description.static_summary() or ""
    )


# ── attemptAt, stamped where the attempt is reported ─────────────────────────────────────────


async def test_cli_attempt_without_at_sends_a_stamped_attempt_at(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = await start_call(call_worker)
    before = datetime.now(UTC)
    result = await cli(call_worker, "attempt", call_uuid, "--outcome", "no_answer")
    after = datetime.now(UTC)
    assert result.exit_code == 0, result.output

    [accepted] = await events(
        call_worker, call_uuid, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    )
    stamped = assert_stamped(update_input(accepted)["attemptAt"], before, after)
    [recorded] = (await state(call_worker, call_uuid))["attempts"]
    assert parse_instant(recorded["attemptAt"]) == stamped
    stored_call = await asyncio.to_thread(lenient_sandbox.stored_call, call_uuid)
    assert stored_call is not None
    [stored] = stored_call["attempts"]
    assert parse_instant(stored["attemptAt"]) == stamped


async def test_a_re_delivered_attempt_signal_is_recorded_once(
    gateway: httpx.AsyncClient, call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = await start_call(call_worker)
    before = datetime.now(UTC)
    sent = await gateway.post(
        f"/calls/{call_uuid}/attempts", params={"signal": "true"}, json={"outcome": "busy"}
    )
    assert sent.status_code == 202, sent.text
    [signalled] = await events(
        call_worker, call_uuid, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    )
    message = payload(signalled.workflow_execution_signaled_event_attributes.input)
    assert_stamped(message["attemptAt"], before, datetime.now(UTC))

    # The same signal delivered again (a dialer's retry after a lost answer) is the same attempt.
    await handle_of(call_worker, call_uuid).signal(ATTEMPT, message)
    await signals_handled(call_worker, call_uuid, 2)
    assert len((await state(call_worker, call_uuid))["attempts"]) == 1
    assert (await asyncio.to_thread(lenient_sandbox.effects, call_uuid))["add-attempt"] == 1


def test_stamp_action_fills_only_a_missing_attempt_at() -> None:
    now = datetime(2026, 3, 1, 9, 30, 15, 987_654, UTC)
    stamped = stamp_action(AttemptSignal(outcome=AttemptOutcome.BUSY), now)
    assert isinstance(stamped, AttemptSignal)
    assert stamped.attempt_at == datetime(2026, 3, 1, 9, 30, 15, 987_000, UTC)
    given = AttemptSignal(outcome=AttemptOutcome.BUSY, attempt_at=now - timedelta(minutes=5))
    assert stamp_action(given, now) == given


# ── idempotency keys: the update id ──────────────────────────────────────────────────────────


async def test_cli_attempt_sent_twice_with_one_request_id_is_recorded_once(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = await start_call(call_worker)
    key = f"dialer-{uuid.uuid4()}"
    first = await cli(call_worker, "attempt", call_uuid, "--outcome", "no_answer",
                      "--request-id", key, "--json")  # fmt: skip
    assert first.exit_code == 0, first.output
    again = await cli(call_worker, "attempt", call_uuid, "--outcome", "no_answer",
                      "--request-id", key, "--json")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert "attempt 1 recorded (no_answer)" in json.loads(first.stdout)["detail"]
    assert len((await state(call_worker, call_uuid))["attempts"]) == 1
    assert (await asyncio.to_thread(lenient_sandbox.effects, call_uuid))["add-attempt"] == 1

    updates = await events(
        call_worker, call_uuid, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    )
    assert [e.workflow_execution_update_accepted_event_attributes.protocol_instance_id
            for e in updates] == [key]  # fmt: skip
    assert [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id
        for e in updates
    ] == [key]

    # Another key is another report.
    other = await cli(call_worker, "attempt", call_uuid, "--outcome", "busy",
                      "--request-id", f"{key}-2", "--json")  # fmt: skip
    assert other.exit_code == 0, other.output
    assert "attempt 2 recorded (busy)" in json.loads(other.stdout)["detail"]
    assert (await asyncio.to_thread(lenient_sandbox.effects, call_uuid))["add-attempt"] == 2


async def test_cli_attempts_without_request_id_are_each_new(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = await start_call(call_worker)
    for _ in range(2):
        result = await cli(call_worker, "attempt", call_uuid, "--outcome", "no_answer")
        assert result.exit_code == 0, result.output
    assert (await asyncio.to_thread(lenient_sandbox.effects, call_uuid))["add-attempt"] == 2


async def test_gateway_request_retried_with_its_idempotency_key_changes_nothing(
    gateway: httpx.AsyncClient, call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = await start_call(call_worker)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    path = f"/calls/{call_uuid}/attempts"
    # The retry races the original, as when a client times out and sends again at once.
    first, second = await asyncio.gather(
        gateway.post(path, json={"outcome": "voicemail"}, headers=key),
        gateway.post(path, json={"outcome": "voicemail"}, headers=key),
    )
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json() == second.json()
    assert first.json()["detail"] == "attempt 1 recorded (voicemail)"
    late = await gateway.post(path, json={"outcome": "voicemail"}, headers=key)
    assert late.status_code == 200 and late.json() == first.json()
    assert len((await state(call_worker, call_uuid))["attempts"]) == 1
    assert (await asyncio.to_thread(lenient_sandbox.effects, call_uuid))["add-attempt"] == 1

    callback = (datetime.now(UTC) + timedelta(days=1)).replace(hour=11, minute=0, second=0)
    reschedule = {"at": callback.isoformat()}
    once = {"Idempotency-Key": "callback-1"}
    moved = await gateway.post(f"/calls/{call_uuid}/reschedule", json=reschedule, headers=once)
    again = await gateway.post(f"/calls/{call_uuid}/reschedule", json=reschedule, headers=once)
    assert moved.status_code == again.status_code == 200, (moved.text, again.text)
    assert again.json() == moved.json()
    body = await state(call_worker, call_uuid)
    assert [event["kind"] for event in body["events"]].count("rescheduled") == 1


async def test_complete_retried_with_its_key_after_the_call_closed_gets_the_first_answer(
    gateway: httpx.AsyncClient, call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = await start_call(call_worker)
    key = {"Idempotency-Key": "crm-complete-42"}
    body = {"result": {"resultCode": "confirmed", "donorRetentionRating": 7}}
    first = await gateway.post(f"/calls/{call_uuid}/complete", json=body, headers=key)
    assert first.status_code == 200, first.text
    assert first.json()["phase"] == "completed"
    await handle_of(call_worker, call_uuid).result()  # the call is closed

    # Temporal keeps a closed run's update outcomes: the retry is answered, not refused.
    again = await gateway.post(f"/calls/{call_uuid}/complete", json=body, headers=key)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    # Without the key it is a new request, and the call says why not.
    other = await gateway.post(f"/calls/{call_uuid}/complete", json=body)
    assert other.status_code == 409
    assert other.json()["detail"] == "call is already completed"
    assert (await asyncio.to_thread(lenient_sandbox.effects, call_uuid))["complete"] == 1
