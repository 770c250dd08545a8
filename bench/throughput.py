"""Lifecycle throughput: calls on their typical path per second, against the floor.

A lifecycle is the typical path of one call: start, two unanswered attempts, completion, with
the real worker (`python -m worker`) and the TapRaise sandbox. The policy keeps every slot due
at once, so nothing waits on a timer: the benchmark drives each call with updates (attempt,
attempt, complete) and then waits for its result. At most `--concurrency` lifecycles run at once.

The baseline is `bench.floor.FloorWorkflow`: the same messages, timers and number of local
activities, with no TapRaise, no policy and no search attributes, on its own worker process on
the same server. Floor and calls run in alternating halves (floor, calls, calls, floor) so that
a slow drift of the machine or the growing database weighs on both alike.

Checked on the way: every call completes with two attempts, and the sandbox applied exactly one
create, two attempts and one completion to each call (all of them, or `--check` of them).

    python -m bench.throughput --n 500 --concurrency 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench import lifecycle
from bench.floor import ATTEMPT as FLOOR_ATTEMPT
from bench.floor import COMPLETE, FLOOR_WORKFLOW_TYPE
from bench.report import Result, at_least, main, parser_for, per_second, timed
from bench.stack import FLOOR_TASK_QUEUE, CpuMeter, Stack
from starter.service import CallService, call_summary_line, initial_search_attributes
from workflows.messages import CallInput, to_json

GOAL = 0.8
DEFAULT_N = 500
DEFAULT_CONCURRENCY = 50
WARMUP = 10


@dataclass
class Phase:
    """Lifecycles of one kind: how many, how long in total, each one's latency."""

    count: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return per_second(self.count, self.seconds)

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def floor_lifecycle(stack: Stack, call: CallInput) -> None:
    """The floor's lifecycle: the same start request, two attempt updates, complete, result."""
    assert call.uuid is not None
    handle = await stack.client.start_workflow(
        FLOOR_WORKFLOW_TYPE,
        to_json(call),
        id=f"floor-{call.uuid}",
        task_queue=FLOOR_TASK_QUEUE,
        search_attributes=initial_search_attributes(call),
        static_summary=call_summary_line(call, call.requested_at or datetime.now(UTC)),
        result_type=dict,
    )
    for _ in range(2):
        await handle.execute_update(FLOOR_ATTEMPT, to_json(lifecycle.UNANSWERED))
    await handle.execute_update(COMPLETE, to_json(lifecycle.COMPLETION))
    result: dict[str, Any] = await handle.result()
    if result.get("messages") != 3:
        raise RuntimeError(f"floor workflow {call.uuid} ended with {result}")


async def _phase(
    stack: Stack,
    kind: str,
    count: int,
    concurrency: int,
    phase: Phase,
    started: list[CallInput],
    cpu: CpuMeter,
) -> None:
    """Run `count` lifecycles of `kind` ("floor" or "calls") and add them to `phase`."""
    service = CallService(stack.client)
    made = [lifecycle.make_call(i, lifecycle.NO_WAIT) for i in range(count)]

    async def one(i: int) -> None:
        began = time.perf_counter()
        if kind == "floor":
            await floor_lifecycle(stack, made[i])
        else:
            await lifecycle.typical_path(service, made[i])
        phase.latencies.append(time.perf_counter() - began)

    cpu.start()
    phase.seconds += await timed(f"{kind} lifecycles", count, concurrency, one)
    cpu.stop()
    phase.count += count
    if kind == "calls":
        started.extend(made)


async def measure(
    stack: Stack, n: int, concurrency: int, check: int | None = None
) -> dict[str, Any]:
    """Floor and calls side by side on a started stack (worker and floor worker running)."""
    warm: list[CallInput] = []
    await _phase(stack, "floor", min(WARMUP, n), concurrency, Phase(), warm, CpuMeter(stack))
    await _phase(stack, "calls", min(WARMUP, n), concurrency, Phase(), warm, CpuMeter(stack))

    floor, real = Phase(), Phase()
    made: list[CallInput] = []
    floor_cpu, real_cpu = CpuMeter(stack), CpuMeter(stack)
    requests_before = await stack.sandbox_requests()
    first, second = n // 2, n - n // 2
    await _phase(stack, "floor", first, concurrency, floor, made, floor_cpu)
    await _phase(stack, "calls", first, concurrency, real, made, real_cpu)
    await _phase(stack, "calls", second, concurrency, real, made, real_cpu)
    await _phase(stack, "floor", second, concurrency, floor, made, floor_cpu)
    requests = await stack.sandbox_requests() - requests_before

    sample = made if check is None else made[:check]
    checked = await stack.check_effects(sample, lifecycle.TYPICAL_EFFECTS)
    stats = await stack.sandbox("stats")
    return {
        "n": n,
        "concurrency": concurrency,
        "floor": floor,
        "calls": real,
        **_request_load(requests, real),
        "effectsChecked": checked,
        "sandboxCompleted": stats["calls"]["byStatus"]["completed"],
        "cpuFloor": floor_cpu.used,
        "cpuCalls": real_cpu.used,
    }


async def measure_calls_only(stack: Stack, n: int, concurrency: int) -> dict[str, Any]:
    """Only the real calls (no floor): their rate and the TapRaise request load they make."""
    await _phase(stack, "calls", min(WARMUP, n), concurrency, Phase(), [], CpuMeter(stack))
    real = Phase()
    requests_before = await stack.sandbox_requests()
    await _phase(stack, "calls", n, concurrency, real, [], CpuMeter(stack))
    requests = await stack.sandbox_requests() - requests_before
    return {"calls": real, **_request_load(requests, real)}


def _request_load(requests: int, real: Phase) -> dict[str, Any]:
    """The TapRaise requests the calls made: in all, per lifecycle and per second."""
    return {
        "requests": requests,
        "requestsPerLifecycle": requests / real.count if real.count else 0.0,
        "requestRate": per_second(requests, real.seconds),
    }


def result_of(figures: dict[str, Any]) -> Result:
    """The printed result of a `measure` run."""
    floor: Phase = figures["floor"]
    real: Phase = figures["calls"]
    n = figures["n"]

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.0f} ms"

    def cpu_per(used: dict[str, float], count: int) -> str:
        return " · ".join(f"{k} {v / count * 1000:.1f}" for k, v in used.items() if v > 0.05)

    concurrency = figures["concurrency"]
    rows = [
        ("lifecycles/s", f"{real.rate:.1f}", f"{floor.rate:.1f}",
         f"{n} of each, {concurrency} at once"),
        ("lifecycle latency p50", ms(real.percentile(0.5)), ms(floor.percentile(0.5)),
         "start to result"),
        ("lifecycle latency p95", ms(real.percentile(0.95)), ms(floor.percentile(0.95)), ""),
        ("TapRaise requests/lifecycle", f"{figures['requestsPerLifecycle']:.2f}", "0",
         "create, 2 look-ups + 2 attempts, complete"),
        ("TapRaise requests/s", f"{figures['requestRate']:.1f}", "",
         "the load bench.sandbox_load compares with"),
        ("effects checked", f"{figures['effectsChecked']}", "",
         "each exactly: create 1, attempts 2, complete 1"),
    ]  # fmt: skip
    notes = [
        "CPU ms per lifecycle, calls: " + cpu_per(figures["cpuCalls"], max(1, real.count)),
        "CPU ms per lifecycle, floor: " + cpu_per(figures["cpuFloor"], max(1, floor.count)),
    ]
    result = at_least(
        "throughput",
        "typical call lifecycles per second (real worker + sandbox) vs the floor workflow",
        real.rate / floor.rate if floor.rate else None,
        "calls / floor",
        GOAL,
    )
    result.rows, result.notes = rows, notes
    result.figures = {
        "n": n,
        "concurrency": figures["concurrency"],
        "callsPerSecond": real.rate,
        "floorPerSecond": floor.rate,
        "callsLatencyP50": real.percentile(0.5),
        "callsLatencyP95": real.percentile(0.95),
        "floorLatencyP50": floor.percentile(0.5),
        "floorLatencyP95": floor.percentile(0.95),
        "medianCallLatency": statistics.median(real.latencies) if real.latencies else None,
        "requestsPerLifecycle": figures["requestsPerLifecycle"],
        "requestsPerSecond": figures["requestRate"],
        "effectsChecked": figures["effectsChecked"],
        "cpuSecondsCalls": figures["cpuCalls"],
        "cpuSecondsFloor": figures["cpuFloor"],
    }
    return result


async def run(
    n: int = DEFAULT_N,
    concurrency: int = DEFAULT_CONCURRENCY,
    check: int | None = 100,
    bytecode_cache: bool = True,
) -> Result:
    """Start a stack (server, sandbox, worker, floor worker), measure, stop it."""
    async with Stack(worker=True, bytecode_cache=bytecode_cache, floor_worker=True) as stack:
        return result_of(await measure(stack, n, concurrency, check))


def _parser() -> argparse.ArgumentParser:
    parser = parser_for("bench.throughput", __doc__, bytecode_cache_option=True)
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="Lifecycles of each kind.")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument(
        "--check", type=int, default=100, help="Calls whose TapRaise effects are checked."
    )
    return parser


if __name__ == "__main__":
    main(_parser(), lambda a: run(a.n, a.concurrency, a.check, not a.no_bytecode_cache))
