"""The benchmarks run, with a handful of calls each, and what they check holds.

No timing is asserted here: these runs prove the scripts work end to end (their own processes,
the real worker, the sandbox) and that the invariants the benchmarks rely on hold, e.g. that
every call of the throughput run completed with exactly the expected TapRaise effects. Each
result must also declare its figures for the summary block, in the format a script reads back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle

from bench import agent_latency, batch, cost, lifecycle, sandbox_load, scale, throughput
from bench.report import (
    Result,
    at_least,
    at_most,
    parse_summary_line,
    summary_lines,
)
from bench.stack import Stack
from starter.service import CallService
from workflows.messages import CallPhase

pytestmark = pytest.mark.timeout(180)


@pytest_asyncio.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    """One server, sandbox, worker, floor worker and gateway for the benchmarks that can share
    them."""
    async with Stack(worker=True, floor_worker=True, gateway=True) as started:
        yield started


def rendered(result: Result) -> Result:
    """The result, after proving it renders as a table, as JSON and as summary lines that read
    back as declared."""
    assert result.table().row_count == len(result.rows)
    assert result.to_json()["name"] == result.name
    assert result.summary, "a result declares its figures"
    lines = summary_lines([result])
    assert len(lines) == len(result.summary)
    for line, figure in zip(lines, result.summary, strict=True):
        parsed = parse_summary_line(line)
        assert parsed is not None, line
        assert parsed["name"] == figure.name and figure.name.startswith(f"{result.name}.")
        assert parsed["unit"] == figure.unit
        assert parsed["met"] == figure.met
    assert len({f.name for f in result.summary}) == len(result.summary), "names are unique"
    return result


def test_summary_line_states_value_unit_goal_and_verdict() -> None:
    result = Result("demo", "a benchmark")
    result.figure("ratio", 0.8449, "x", at_least(0.85))
    result.figure("p99", 212.4, "ms", at_most(300), digits=0)
    result.figure("rate", 9.3, "lifecycles/s", digits=1)
    result.figure("unmeasured", None, "x", at_least(1))
    assert summary_lines([result]) == [
        # judged as printed: 0.8449 reads 0.84, below the goal
        "demo.ratio: 0.84 x (goal >= 0.85 x) missed",
        "demo.p99: 212 ms (goal <= 300 ms) met",
        "demo.rate: 9.3 lifecycles/s (no goal)",
        "demo.unmeasured: n/a x (goal >= 1 x) missed",
    ]
    assert parse_summary_line("demo.p99: 212 ms (goal <= 300 ms) met") == {
        "name": "demo.p99",
        "value": 212.0,
        "unit": "ms",
        "goal": "<= 300 ms",
        "met": True,
    }
    assert parse_summary_line("demo.rate: 9.3 lifecycles/s (no goal)") == {
        "name": "demo.rate",
        "value": 9.3,
        "unit": "lifecycles/s",
        "goal": None,
        "met": None,
    }
    assert parse_summary_line("summary:") is None
    assert result.ratio == 0.8449  # the headline: the first figure declared
    assert result.met is False
    document = result.to_json()
    assert document["summary"][1] == {
        "name": "demo.p99",
        "value": 212.4,
        "unit": "ms",
        "goal": "<= 300 ms",
        "met": True,
    }


async def test_throughput_completes_every_call_with_exactly_its_tapraise_effects(
    stack: Stack,
) -> None:
    figures = await throughput.measure(stack, n=4, concurrency=2, check=None)
    assert figures["calls"].count == 4
    assert figures["fair"].count == 4
    assert figures["floor"].count == 4
    assert figures["effectsChecked"] == 4  # each: create 1, add-attempt 2, complete 1
    assert figures["fairEffectsChecked"] == 4
    # create, complete, and each attempt looked up before it is sent
    assert figures["requestsPerLifecycle"] == 6
    assert figures["floorRequestsPerLifecycle"] == 0
    result = rendered(throughput.result_of(figures))
    assert result.ratio is not None and result.ratio > 0


async def test_fair_floor_makes_the_same_tapraise_requests_and_upserts_as_a_call(
    stack: Stack,
) -> None:
    figures = await throughput.measure(stack, n=2, concurrency=2, check=None)
    assert figures["fairRequestsPerLifecycle"] == figures["requestsPerLifecycle"] == 6
    names = [f.name for f in throughput.result_of(figures).summary]
    assert names[:2] == ["throughput.vs_fair_floor", "throughput.vs_bare_floor"]

    # Each message sent once the call waits: every upsert of both histories stands alone.
    async def due(handle: WorkflowHandle[Any, Any]) -> None:
        await cost.wait_for_phase(handle, CallPhase.DUE)

    call, fair = (lifecycle.make_call(i, lifecycle.NO_WAIT) for i in range(2))
    await lifecycle.typical_path(CallService(stack.client), call, before_reports=due)
    await throughput.fair_floor_lifecycle(stack, fair, before_reports=due)
    # created (phase, status, next slot), each attempt (count, next slot), completed
    expected = [
        ["CallPhase", "CallStatus", "NextAttemptAt"],
        ["CallAttempts", "NextAttemptAt"],
        ["CallAttempts", "NextAttemptAt"],
        ["CallPhase", "CallStatus", "NextAttemptAt"],
    ]
    assert await throughput.upserts_of(stack, lifecycle.workflow_id_of(call)) == expected
    assert await throughput.upserts_of(stack, throughput.fair_floor_id(fair)) == expected


async def test_agent_latency_times_every_report_on_both_paths_under_load(stack: Stack) -> None:
    before = await stack.sandbox("stats")
    figures = await agent_latency.measure(stack, calls=2, rate=4, warmup_seconds=0.5)
    after = await stack.sandbox("stats")
    for path in ("gateway", "cli_service"):
        # two attempts and the completion per call: 2 calls under load, 1 + 1 without
        for samples in (figures["loaded"][path], figures["quiet"][path]):
            assert len(samples.by_action["attempt"]) == 4
            assert len(samples.by_action["complete"]) == 2
            assert all(seconds > 0 for seconds in samples.all)
    assert figures["backgroundLifecycles"] > 0
    assert figures["backgroundRate"] > 0
    # Every answer came once TapRaise had the action: each probe call (a warm-up, 2 under load
    # and 2 without, per path) and each background lifecycle ended completed there.
    completed = after["effects"]["complete"] - before["effects"]["complete"]
    assert completed == 2 * (1 + 2 + 2) + figures["backgroundLifecycles"]
    result = rendered(agent_latency.result_of(figures))
    p99 = {f.name: f for f in result.summary}["agent_latency.gateway_p99"]
    assert p99.unit == "ms" and p99.goal == at_most(300)


async def test_cost_counts_every_path_and_waiting_adds_nothing(stack: Stack) -> None:
    figures = await cost.measure(stack, wait_seconds=2)
    phases = {c.path: c.phase for c in figures["costs"]}
    assert list(phases.values()) == [
        *("completed", "completed", "completed", "cancelled", "expired", "expired")
    ]
    typical, with_due, no_waits = figures["costs"][:3]
    for path in (typical, with_due, no_waits):
        assert path.actions["start"] == 1
        assert path.actions["update"] == 3
        assert path.actions["local activity"] == 2  # policy, create
        # Each update's own request: the two add-attempts and the completion; no empty activity.
        assert path.actions["activity"] == 3
    # The `due` phase costs each of the three slots one timer and one upsert more.
    assert with_due.actions["timer"] - typical.actions["timer"] == 3
    assert with_due.actions["search attributes"] - typical.actions["search attributes"] == 3
    assert figures["waitAfter"].events == figures["waitBefore"].events
    assert figures["waitAfter"].total == figures["waitBefore"].total
    result = rendered(cost.result_of(figures))
    assert result.figures["waitingAddedActions"] == 0


async def test_sandbox_load_applies_every_request(stack: Stack) -> None:
    figures = await sandbox_load.measure(stack, n=40, clients=8, lifecycles=4)
    assert figures["requestsPerLifecycle"] == 6
    assert figures["sandboxCreated"] >= 40
    assert figures["sandboxAttempts"] >= 40
    assert figures["createPerSecond"] > 0 and figures["attemptPerSecond"] > 0
    rendered(sandbox_load.result_of(figures))


async def test_batch_starts_every_row_and_every_raw_call(stack: Stack) -> None:
    figures = await batch.measure(stack, n=20, concurrency=5)
    assert figures["batchCount"] == 20
    assert figures["rawCount"] == 20
    rendered(batch.result_of(figures))


async def test_scale_holds_calls_open_and_completes_each_exactly_once() -> None:
    async with Stack(worker=True) as own:
        figures = await scale.measure(own, n=10, concurrency=10)
    assert figures["sandboxCreated"] == 10
    assert figures["sandboxCompleted"] == 10
    assert figures["idleKb"] > 0
    assert figures["peakKb"] >= figures["idleKb"]
    assert figures["openEvents"] < figures["doneEvents"]
    rendered(scale.result_of(figures))
