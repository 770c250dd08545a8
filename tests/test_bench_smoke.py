"""The benchmarks run, with a handful of calls each, and what they check holds.

No timing is asserted here: these runs prove the scripts work end to end (their own processes,
the real worker, the sandbox) and that the invariants the benchmarks rely on hold, e.g. that
every call of the throughput run completed with exactly the expected TapRaise effects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bench import batch, cost, sandbox_load, scale, throughput
from bench.report import Result
from bench.stack import Stack

pytestmark = pytest.mark.timeout(180)


@pytest_asyncio.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    """One server, sandbox, worker and floor worker for the benchmarks that can share them."""
    async with Stack(worker=True, floor_worker=True) as started:
        yield started


def rendered(result: Result) -> Result:
    """The result, after proving it renders as a table and as JSON."""
    assert result.table().row_count == len(result.rows)
    assert result.to_json()["name"] == result.name
    return result


async def test_throughput_completes_every_call_with_exactly_its_tapraise_effects(
    stack: Stack,
) -> None:
    figures = await throughput.measure(stack, n=4, concurrency=2, check=None)
    assert figures["calls"].count == 4
    assert figures["floor"].count == 4
    assert figures["effectsChecked"] == 4  # each: create 1, add-attempt 2, complete 1
    # create, complete, and each attempt looked up before it is sent
    assert figures["requestsPerLifecycle"] == 6
    result = rendered(throughput.result_of(figures))
    assert result.ratio is not None and result.ratio > 0


async def test_cost_counts_every_path_and_waiting_adds_nothing(stack: Stack) -> None:
    figures = await cost.measure(stack, wait_seconds=2)
    phases = {c.path: c.phase for c in figures["costs"]}
    assert list(phases.values()) == [
        *("completed", "completed", "completed", "cancelled", "expired", "expired")
    ]
    typical, without_due, no_waits = figures["costs"][:3]
    for path in (typical, without_due, no_waits):
        assert path.actions["start"] == 1
        assert path.actions["update"] == 3
        assert path.actions["local activity"] == 5  # policy, create, 2 attempts, complete
    # Without the `due` phase each of the three slots costs one timer and one upsert less.
    assert typical.actions["timer"] - without_due.actions["timer"] == 3
    assert typical.actions["search attributes"] - without_due.actions["search attributes"] == 3
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
