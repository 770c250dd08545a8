"""The worker's metrics and log lines, as an operator sees them: `python -m worker` serving
`/metrics` while it drives calls to completion, writing JSON lines.

A server of its own (not the session's): the calls per phase that visibility counts are then
exactly this module's.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from bench.lifecycle import update
from devstack.process import free_port
from encryption.codec import encrypted_data_converter
from sandbox.seed import DEMO_PERSON_UUIDS
from tapraise import to_millis
from tapraise.models import CallResult
from tests.helpers import start_options, wait_for_phase, worker_env, worker_process, worker_ready
from tests.keys_fixture import RUN_KEYS
from tests.sandbox_fixture import SandboxServer
from tests.temporal_fixture import temporal_cli
from workflows.call import CallWorkflow
from workflows.messages import (
    ATTEMPT,
    COMPLETE,
    TASK_QUEUE,
    AttemptSignal,
    CallInput,
    CallPhase,
    CallSearchAttributes,
    CompleteSignal,
)
from workflows.policy import AttemptOutcome

pytestmark = pytest.mark.timeout(90)

PERSONS = [uuid.UUID(person) for person in DEMO_PERSON_UUIDS[:3]]
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus page, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in samples.items() if n == name and wanted <= have)


@dataclass
class Run:
    """What the module's worker did, seen from outside."""

    before: Samples
    after: Samples
    page: str
    phase_counts: dict[str, float]
    log_lines: list[str]
    call_uuids: list[str]


@pytest_asyncio.fixture(scope="module")
async def own_server() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=list(CallSearchAttributes.ALL),
        data_converter=encrypted_data_converter(RUN_KEYS),
    ) as env:
        yield env


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(url)
    response.raise_for_status()
    return response.text


async def drive_calls(client: Client) -> list[str]:
    """Three calls: each gets an unanswered attempt, then is completed; one attempt dated in
    the future is refused, once as an update and once as a signal. TapRaise answers the first
    create 503 (the activity's second try creates it)."""
    calls = [
        CallInput(uuid=uuid.uuid4(), person_uuid=person, type="verification") for person in PERSONS
    ]
    handles = [
        await client.start_workflow(
            CallWorkflow.run, call, task_queue=TASK_QUEUE, **start_options(call)
        )
        for call in calls
    ]
    for handle in handles:
        await wait_for_phase(handle, CallPhase.SCHEDULED, CallPhase.DUE, seconds=30)
    future = AttemptSignal(
        outcome=AttemptOutcome.NO_ANSWER,
        attempt_at=to_millis(datetime.now(UTC) + timedelta(hours=1)),
    )
    with pytest.raises(WorkflowUpdateFailedError):
        await update(handles[0], ATTEMPT, future)
    await handles[0].signal(ATTEMPT, future)
    for handle in handles:
        await update(handle, ATTEMPT, AttemptSignal(outcome=AttemptOutcome.NO_ANSWER))
        await update(handle, COMPLETE, CompleteSignal(result=CallResult(result_code="confirmed")))
        await handle.result()
    return [str(call.uuid) for call in calls]


def expected_phase_counts(completed: int) -> dict[str, float]:
    """Every call of the module completed, none in any other phase."""
    return {phase.value: (completed if phase is CallPhase.COMPLETED else 0) for phase in CallPhase}


@pytest_asyncio.fixture(scope="module")
async def run(
    own_server: WorkflowEnvironment,
    lenient_sandbox: SandboxServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    work = tmp_path_factory.mktemp("metrics")
    port = free_port()
    env = {
        **worker_env(own_server, lenient_sandbox, work),
        "WORKER_METRICS_ADDRESS": f"127.0.0.1:{port}",
        "WORKER_PHASE_COUNT_SECONDS": "0.2",
        "LOG_FORMAT": "json",
    }
    url = f"http://127.0.0.1:{port}/metrics"
    log = work / "worker.log"
    with worker_process(env, log) as process:
        await worker_ready(process, log, 1)
        before = parse(await scrape(url))
        lenient_sandbox.set_faults([{"endpoint": "create", "next": ["503"]}])
        try:
            call_uuids = await drive_calls(own_server.client)
        finally:
            lenient_sandbox.clear_faults()
        # The phase gauge follows visibility, which lags the calls by a moment; and each phase
        # is its own count, read at its own instant, so one scrape may still hold a call in two.
        settled = expected_phase_counts(len(call_uuids))
        deadline = time.monotonic() + 20
        while True:
            page = await scrape(url)
            after = parse(page)
            counts = {
                phase.value: total(after, "tapraise_calls_in_phase", phase=phase.value)
                for phase in CallPhase
            }
            if counts == settled or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    return Run(before, after, page, counts, log.read_text().splitlines(), call_uuids)


def moved(run: Run, name: str, **labels: str) -> float:
    return total(run.after, name, **labels) - total(run.before, name, **labels)


def test_the_call_counters_move_by_what_the_calls_did(run: Run) -> None:
    calls = len(run.call_uuids)
    verification = {"call_type": "verification"}
    assert moved(run, "tapraise_calls_started_total", **verification) == calls
    assert (
        moved(
            run,
            "tapraise_calls_closed_total",
            phase="completed",
            reason="completed",
            **verification,
        )
        == calls
    )
    assert moved(run, "tapraise_calls_closed_total") == calls
    assert (
        moved(run, "tapraise_calls_attempts_recorded_total", outcome="no_answer", **verification)
        == calls
    )
    refused = {"message": "attempt", "reason": "time_in_future"}
    assert moved(run, "tapraise_calls_messages_refused_total", **refused) == 2
    assert moved(run, "tapraise_calls_messages_refused_total") == 2


def test_the_tapraise_requests_are_counted_by_endpoint_and_status_and_timed(run: Run) -> None:
    calls = len(run.call_uuids)
    requests = "tapraise_calls_tapraise_requests_total"
    assert moved(run, requests, endpoint="create", status="201") == calls
    assert moved(run, requests, endpoint="add-attempt", status="200") == calls
    assert moved(run, requests, endpoint="complete", status="200") == calls
    # add-attempt looks the call up first (its idempotency check).
    assert moved(run, requests, endpoint="list", status="200") >= calls
    assert moved(run, requests, status="error") == 0
    duration = "tapraise_calls_tapraise_request_duration_seconds"
    # Every request is timed, the one answered 503 too.
    assert moved(run, f"{duration}_count", endpoint="create") == calls + 1
    assert 0 < moved(run, f"{duration}_sum", endpoint="create") < 10 * calls
    assert moved(run, f"{duration}_bucket", endpoint="create", le="+Inf") == calls + 1


def test_a_tapraise_failure_is_counted_with_its_status_and_the_retry_by_its_endpoint(
    run: Run,
) -> None:
    requests = "tapraise_calls_tapraise_requests_total"
    assert moved(run, requests, endpoint="create", status="503") == 1
    assert moved(run, "tapraise_calls_tapraise_retries_total", endpoint="create") == 1
    assert moved(run, "tapraise_calls_tapraise_retries_total") == 1


def test_the_calls_per_phase_follow_visibility(run: Run) -> None:
    assert run.phase_counts == expected_phase_counts(len(run.call_uuids))


def test_the_sdk_metrics_are_served_beside_the_calls(run: Run) -> None:
    slots = [
        labels
        for (name, labels), _value in run.after.items()
        if name == "temporal_worker_task_slots_available"
    ]
    assert slots, run.page[:2000]
    # Served as `temporal_workflow_completed` (the SDK's counters carry no `_total`); the parser
    # names every counter's sample with one.
    assert moved(run, "temporal_workflow_completed_total") == len(run.call_uuids)
    # Durations in seconds, as Prometheus has them: a schedule-to-start latency under a minute.
    latency = "temporal_workflow_task_schedule_to_start_latency"
    assert 0 < total(run.after, f"{latency}_sum") / total(run.after, f"{latency}_count") < 60


def test_no_label_holds_a_uuid(run: Run) -> None:
    for (name, labels), _value in run.after.items():
        for key, value in labels:
            assert not UUID_TEXT.search(value), f"{name}{{{key}={value!r}}}"
    for call in run.call_uuids:
        assert call not in run.page
    for person in PERSONS:
        assert str(person) not in run.page


def test_every_log_line_is_a_json_object_naming_its_workflow_and_no_person(run: Run) -> None:
    assert run.log_lines
    records = [json.loads(line) for line in run.log_lines]
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    assert any(r["message"].startswith("worker ready") for r in records)
    [refused] = [r for r in records if "attempt ignored" in r["message"]]
    first = run.call_uuids[0]
    assert refused["workflow_id"] == f"call-{first}"
    assert refused["call_uuid"] == first
    assert refused["run_id"]
    assert refused["level"] == "WARNING"
    # The workflow's details are fields of the line, not appended to its message.
    assert "workflow_type" not in refused["message"]
    text = "\n".join(run.log_lines)
    for person in PERSONS:
        assert str(person) not in text
