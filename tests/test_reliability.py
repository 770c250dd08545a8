"""Reliability: calls driven through TapRaise faults, worker kills, a server restart and duplicate
or refused messages, with every effect accounted for.

The first test runs the fault harness (`tests.chaos`) in-process on a hundred calls with every
fault kind at once (bare starts, a kill right after a burst of creates, late-applied PUTs, a
credential outage, refused final actions, updates sent twice under one request id among them),
with the TapRaise follower switched on and calls requested and changed in the TapRaise app;
the harness starts its own dev server, sandbox and worker processes and checks each call against
the sandbox's request log and state and the workflow's final state and history.
The focused tests pin down single faults deterministically with the sandbox's forced faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from bench.lifecycle import update
from sandbox.seed import DEMO_PERSON_UUIDS
from tapraise import to_millis
from tapraise.models import CallResult
from tests.chaos import ChaosConfig, chaos_policy, run_chaos
from tests.helpers import effects, wait_for_phase, worker_env, worker_process, worker_ready
from tests.sandbox_fixture import SandboxServer
from tests.temporal_fixture import CallWorker
from workflows.call import CallWorkflow
from workflows.messages import (
    ATTEMPT,
    COMPLETE,
    TASK_QUEUE,
    AttemptSignal,
    CallInput,
    CallPhase,
    CallState,
    CompleteSignal,
    workflow_id_for,
)
from workflows.policy import AttemptOutcome

pytestmark = pytest.mark.timeout(240)

PERSON = uuid.UUID(DEMO_PERSON_UUIDS[5])
LIVE = (CallPhase.SCHEDULED, CallPhase.DUE)


async def test_hundred_calls_through_every_fault_at_once_lose_and_duplicate_nothing(
    tmp_path: Path,
) -> None:
    config = ChaosConfig(
        calls=100,
        workers=3,
        faults="all",
        kill_every=5,
        restart_at=15,
        # The faults stop after 25 s; the budget leaves more than a minute after that: a call
        # whose round of tries TapRaise failed waits one minute before the next round.
        time_budget=110,
        heal_window=65,
        chaos_for=25,
        max_active=100,
        # Every TapRaise fault kind, at a third of the large run's shares: a hundred calls have
        # to close within a minute while a worker dies every five seconds, and a round of five
        # tries that all fail (its call then waits a minute) stays rare.
        error_share=0.10,
        rate_limit_share=0.03,
        late_share=0.02,
        late_apply_share=0.02,
        latency_share=0.02,
        # A short credential outage while the first calls are created: every request answered
        # 401 for a few seconds, within one round of tries. (The large run's 30 s outage
        # outlasts a round, and each call it caught waits a minute: too long for this suite.)
        credential_outage_at=3,
        credential_outage_seconds=5,
        # The follower runs on the workers, every second: six calls are requested in the
        # TapRaise app (it must adopt them) and about a tenth of the CRM's calls are changed
        # there while their agents work.
        follow_interval=1,
        app_requested_share=0.06,
        app_changed_share=0.12,
        seed=7,
        progress=False,
        work_dir=tmp_path / "chaos",
    )
    began = time.monotonic()
    report = await run_chaos(config)
    took = time.monotonic() - began
    assert report.ok, "\n".join(report.lines())
    counts = (report.lost, report.duplicated, report.mismatched, report.stuck, report.failed)
    assert counts == (0, 0, 0, 0, 0)
    # Every fault kind really happened.
    for kind in ("500", "503", "429", "late", "late_apply", "credential_outage"):
        assert report.faults_injected.get(kind, 0) > 0, report.faults_injected
    assert report.credential_outage is not None
    assert report.kills >= 4 and report.restarts == 1
    assert report.create_kills >= 1 and report.first_tasks_redone > 0
    assert report.bare_starts > 0
    assert report.duplicate_deliveries > 100 and report.races > 0
    assert report.same_id_retries > 0 and report.same_id_concurrent > 0
    assert report.refused_sent.get("update", 0) > 0 and report.refused_sent.get("signal", 0) > 0
    assert report.refused_by.get("TapRaise", 0) > 0 and report.refused_by.get("workflow", 0) > 0
    assert set(report.final_phases) == {"completed", "cancelled", "expired"}
    assert sum(report.final_phases.values()) == 100
    # Following TapRaise: every call requested in the app adopted once, calls closed there.
    follow = report.follow
    assert follow is not None
    assert follow.requested_in_app == follow.adopted == 6 and follow.adopted_twice == 0
    assert follow.changed_in_app > 0 and sum(follow.closed_in_app.values()) > 0
    assert follow.app_attempts > 0 and follow.applied_after_app_final == 0
    assert took < 120, f"the chaos run took {took:.0f} s"


async def test_completion_refused_by_tapraise_for_a_while_is_recorded_exactly_once(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, clean_faults: None
) -> None:
    handle = await call_worker.start(
        person_uuid=PERSON, type="verification", policy=chaos_policy(600, 5)
    )
    state = await wait_for_phase(handle, *LIVE, seconds=30, interval=0.1, any_error=True)
    call_uuid = str(state.call_uuid)
    # TapRaise is down for completions (503), then applies one but answers after the client gave
    # up, then is down once more, then recovers.
    lenient_sandbox.set_faults(
        [{"endpoint": "complete", "next": ["503", "late", "503"], "lateDelaySeconds": 3}]
    )
    accepted = await update(
        handle, COMPLETE, CompleteSignal(result=CallResult(result_code="confirmed"))
    )
    assert accepted.phase == CallPhase.COMPLETED
    final = await handle.result()
    assert final.phase == CallPhase.COMPLETED and final.result is not None
    statuses = [r["status"] for r in lenient_sandbox.requests(call_uuid, "complete")]
    assert statuses == [503, 200, 503, 409]
    assert lenient_sandbox.effects(call_uuid) == effects(create=1, complete=1)
    stored = lenient_sandbox.stored_call(call_uuid)
    assert stored is not None and stored["status"] == "completed"


async def test_attempt_applied_just_before_a_worker_crash_is_not_recorded_again(
    temporal_env: WorkflowEnvironment,
    lenient_sandbox: SandboxServer,
    clean_faults: None,
    tmp_path: Path,
) -> None:
    """A local activity whose worker dies is run again from its first attempt by the next worker.

    TapRaise applied the attempt, the worker died before the workflow task completed, and the
    next worker runs `add_attempt` again: it must see the attempt is already there.
    """
    env = {**worker_env(temporal_env, lenient_sandbox, tmp_path), "TAPRAISE_TIMEOUT_SECONDS": "30"}
    log = tmp_path / "worker.log"
    call = CallInput(
        uuid=uuid.uuid4(), person_uuid=PERSON, type="verification", policy=chaos_policy(600, 5)
    )
    call_uuid = str(call.uuid)
    with worker_process(env, log) as first:
        await worker_ready(first, log, 1)
        handle = await temporal_env.client.start_workflow(
            CallWorkflow.run, call, id=workflow_id_for(call_uuid), task_queue=TASK_QUEUE
        )
        await wait_for_phase(handle, *LIVE, seconds=30, interval=0.1, any_error=True)
        # TapRaise applies the attempt at once but holds its answer back for 20 s.
        lenient_sandbox.set_faults(
            [{"endpoint": "add-attempt", "next": ["late"], "lateDelaySeconds": 20}]
        )
        now = datetime.now(UTC)
        attempt = AttemptSignal(
            outcome=AttemptOutcome.NO_ANSWER,
            attempt_at=to_millis(now),
        )
        answer = asyncio.create_task(update(handle, ATTEMPT, attempt))
        deadline = time.monotonic() + 20
        while lenient_sandbox.effects(call_uuid)["add-attempt"] == 0:
            assert time.monotonic() < deadline, "the attempt never reached TapRaise"
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
    lenient_sandbox.clear_faults()
    try:
        with worker_process(env, log) as second:
            await worker_ready(second, log, 2)
            accepted = await asyncio.wait_for(answer, 60)
            assert accepted.detail.startswith("attempt 1 recorded"), accepted
            stored = lenient_sandbox.stored_call(call_uuid)
            assert stored is not None and stored["attemptsCount"] == 1, json.dumps(stored)
            assert lenient_sandbox.effects(call_uuid)["add-attempt"] == 1
            state: CallState = await handle.query(CallWorkflow.state)
            assert len(state.attempts) == 1
    finally:
        answer.cancel()
        with contextlib.suppress(Exception):
            await handle.terminate("test done")


async def test_attempt_reported_while_the_call_expires_is_refused_and_the_call_closes(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, clean_faults: None, quick_tries: None
) -> None:
    """A report arriving while the final action is still retried must not keep the call open.

    TapRaise refuses the expiry four times (0.1 + 0.2 + 0.4 + 0.8 s of backoff): meanwhile an
    attempt is reported. It is refused with the reason (the call is being expired), nothing reaches
    TapRaise, and the workflow closes as expired.
    """
    lenient_sandbox.set_faults([{"endpoint": "expire", "next": ["503", "503", "503", "503"]}])
    handle = await call_worker.start(
        person_uuid=PERSON, type="verification", policy=chaos_policy(2, 5)
    )
    call_uuid = str(handle.id).removeprefix("call-")
    deadline = time.monotonic() + 30
    while not lenient_sandbox.requests(call_uuid, "expire"):
        assert time.monotonic() < deadline, "the call never tried to expire"
        await asyncio.sleep(0.1)
    now = datetime.now(UTC)
    attempt = AttemptSignal(
        outcome=AttemptOutcome.BUSY,
        attempt_at=to_millis(now),
    )
    answer = asyncio.create_task(update(handle, ATTEMPT, attempt))
    try:
        final = await asyncio.wait_for(handle.result(), 40)
        assert final.phase == CallPhase.EXPIRED and final.attempts == []
        # Refused by the workflow (it was accepted while the expiry was retried), or aborted by
        # the server (it arrived as the call closed): never carried out.
        with pytest.raises((WorkflowUpdateFailedError, RPCError)) as refused:
            await asyncio.wait_for(answer, 10)
        if isinstance(refused.value, WorkflowUpdateFailedError):
            assert "expired" in str(refused.value.cause)
        else:
            assert "aborted by closing workflow" in str(refused.value)
    except TimeoutError:
        state: CallState = await handle.query(CallWorkflow.state)
        pytest.fail(f"the call stays open in phase {state.phase.value} after expiring")
    finally:
        answer.cancel()
        with contextlib.suppress(Exception):
            await handle.terminate("test done")
    assert lenient_sandbox.effects(call_uuid)["add-attempt"] == 0


async def test_worker_starts_while_tapraise_answers_503(
    temporal_env: WorkflowEnvironment,
    lenient_sandbox: SandboxServer,
    clean_faults: None,
    tmp_path: Path,
) -> None:
    env = worker_env(temporal_env, lenient_sandbox, tmp_path)
    lenient_sandbox.set_faults([{"endpoint": "list", "next": ["503"]}])
    log = tmp_path / "worker.log"
    with worker_process(env, log) as process:
        await worker_ready(process, log, 1)
        assert process.poll() is None
