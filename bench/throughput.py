"""Lifecycle throughput: calls on their typical path per second, against two floors.

A lifecycle is the typical path of one call: start, two unanswered attempts, completion, with
the real worker (`python -m worker`) and the TapRaise sandbox. The policy keeps every slot due
at once, so nothing waits on a timer: the benchmark drives each call with updates (attempt,
attempt, complete) and then waits for its result. At most `--concurrency` lifecycles run at once.

Two baselines, each on the floor worker's process on the same server:

- the fair floor (`bench.fair_floor.FairFloorWorkflow`): the same lifecycle written as plainly
  as possible, with the same TapRaise requests over the same client to the same sandbox and the
  same search-attribute upserts. The ratio against it is what the project adds on top of the
  work any implementation must do. Shown beside it: the TapRaise requests per lifecycle of both
  (counted by the sandbox) and their search-attribute upserts (counted from the histories of the
  checked calls);
- the bare floor (`bench.floor.FloorWorkflow`): the same messages, timers and number of local
  activities, with no TapRaise, no policy and no search attributes.

The kinds run in mirrored halves (floor, fair floor, calls, calls, fair floor, floor) so that a
slow drift of the machine or the growing database weighs on all alike.

Checked on the way: every call completes with two attempts, and the sandbox applied exactly one
create, two attempts and one completion to each call and to each fair-floor call (all of them,
or `--check` of each).

    python -m bench.throughput --n 500 --concurrency 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from temporalio.client import WorkflowHandle

from bench import lifecycle
from bench.cost import search_attribute_upserts
from bench.fair_floor import FAIR_FLOOR_WORKFLOW_TYPE
from bench.floor import ATTEMPT as FLOOR_ATTEMPT
from bench.floor import COMPLETE, FLOOR_WORKFLOW_TYPE
from bench.report import Result, at_least, main, parser_for, per_second, percentile, timed
from bench.stack import FLOOR_TASK_QUEUE, CpuMeter, Stack
from starter.service import (
    CallService,
    call_summary_line,
    initial_search_attributes,
    stamp_call,
    start_options,
)
from workflows.messages import ATTEMPT, CallInput, to_json

GOAL = 0.8
GOAL_FAIR = 0.85
DEFAULT_N = 500
DEFAULT_CONCURRENCY = 50
WARMUP = 10

Kind = Literal["floor", "fair", "calls"]
LABELS: dict[Kind, str] = {"floor": "floor", "fair": "fair floor", "calls": "calls"}


@dataclass
class Phase:
    """Lifecycles of one kind: how many, how long in total, each one's latency, and the TapRaise
    requests the sandbox received meanwhile."""

    count: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    requests: int = 0

    @property
    def rate(self) -> float:
        return per_second(self.count, self.seconds)

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)

    @property
    def requests_per_lifecycle(self) -> float:
        return self.requests / self.count if self.count else 0.0


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


def fair_floor_id(call: CallInput) -> str:
    return f"fair-floor-{call.uuid}"


async def fair_floor_lifecycle(
    stack: Stack,
    call: CallInput,
    before_reports: Callable[[WorkflowHandle[Any, Any]], Awaitable[None]] | None = None,
) -> None:
    """The fair floor's lifecycle: the starter's very start request (`requestedAt` stamped as
    the starter stamps it), two attempt updates, complete, result (`before_reports` awaited
    between the start and the first update)."""
    now = datetime.now(UTC)
    call = stamp_call(call, now)
    options = {**start_options(call, FLOOR_TASK_QUEUE, now), "id": fair_floor_id(call)}
    handle = await stack.client.start_workflow(
        FAIR_FLOOR_WORKFLOW_TYPE, call, **options, result_type=dict
    )
    if before_reports is not None:
        await before_reports(handle)
    for _ in range(2):
        await handle.execute_update(ATTEMPT, lifecycle.UNANSWERED)
    await handle.execute_update(COMPLETE, lifecycle.COMPLETION)
    result: dict[str, Any] = await handle.result()
    if result != {"messages": 3, "attempts": 2}:
        raise RuntimeError(f"fair floor workflow {call.uuid} ended with {result}")


async def _phase(
    stack: Stack,
    kind: Kind,
    count: int,
    concurrency: int,
    phase: Phase,
    started: list[CallInput],
    cpu: CpuMeter,
) -> None:
    """Run `count` lifecycles of `kind` and add them to `phase`."""
    service = CallService(stack.client)
    made = [lifecycle.make_call(i, lifecycle.NO_WAIT) for i in range(count)]

    async def one(i: int) -> None:
        began = time.perf_counter()
        if kind == "floor":
            await floor_lifecycle(stack, made[i])
        elif kind == "fair":
            await fair_floor_lifecycle(stack, made[i])
        else:
            await lifecycle.typical_path(service, made[i])
        phase.latencies.append(time.perf_counter() - began)

    requests_before = await stack.sandbox_requests()
    cpu.start()
    phase.seconds += await timed(f"{LABELS[kind]} lifecycles", count, concurrency, one)
    cpu.stop()
    phase.requests += await stack.sandbox_requests() - requests_before
    phase.count += count
    started.extend(made)


async def upserts_of(stack: Stack, workflow_id: str) -> list[list[str]]:
    """The keys of each search-attribute upsert in a workflow's history, sorted, in order."""
    history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
    return [sorted(keys) for keys in search_attribute_upserts(list(history.events))]


async def upsert_sequences(stack: Stack, workflow_ids: list[str]) -> Counter[str]:
    """How many histories upsert each sequence of keys, e.g. `CallAttempts+NextAttemptAt | …`."""
    sequences: Counter[str] = Counter()
    for workflow_id in workflow_ids:
        upserts = await upserts_of(stack, workflow_id)
        sequences[" | ".join("+".join(keys) for keys in upserts)] += 1
    return sequences


def mean_upserts(sequences: Counter[str]) -> float:
    """Upserts per history, on average."""
    total = sum(sequences.values())
    counted = sum(n * len(sequence.split(" | ")) for sequence, n in sequences.items() if sequence)
    return counted / total if total else 0.0


async def measure(
    stack: Stack, n: int, concurrency: int, check: int | None = None
) -> dict[str, Any]:
    """The floors and the calls side by side on a started stack (worker and floor worker
    running, the sandbox named to both)."""
    order: list[Kind] = ["floor", "fair", "calls"]
    for kind in order:
        await _phase(stack, kind, min(WARMUP, n), concurrency, Phase(), [], CpuMeter(stack))

    phases: dict[Kind, Phase] = {kind: Phase() for kind in order}
    made: dict[Kind, list[CallInput]] = {kind: [] for kind in order}
    cpu: dict[Kind, CpuMeter] = {kind: CpuMeter(stack) for kind in order}
    for half, kinds in ((n // 2, order), (n - n // 2, order[::-1])):
        for kind in kinds:
            await _phase(stack, kind, half, concurrency, phases[kind], made[kind], cpu[kind])

    checked: dict[Kind, int] = {}
    upserts: dict[Kind, Counter[str]] = {}
    for kind, workflow_id in (("calls", lifecycle.workflow_id_of), ("fair", fair_floor_id)):
        sample = made[kind] if check is None else made[kind][:check]
        checked[kind] = await stack.check_effects(sample, lifecycle.TYPICAL_EFFECTS)
        upserts[kind] = await upsert_sequences(stack, [workflow_id(call) for call in sample])
    real, fair = phases["calls"], phases["fair"]
    return {
        "n": n,
        "concurrency": concurrency,
        "floor": phases["floor"],
        "fair": fair,
        "calls": real,
        **_request_load(real.requests, real),
        "fairRequestsPerLifecycle": fair.requests_per_lifecycle,
        "floorRequestsPerLifecycle": phases["floor"].requests_per_lifecycle,
        "callUpserts": upserts["calls"],
        "fairUpserts": upserts["fair"],
        "effectsChecked": checked["calls"],
        "fairEffectsChecked": checked["fair"],
        "cpuFloor": cpu["floor"].used,
        "cpuFair": cpu["fair"].used,
        "cpuCalls": cpu["calls"].used,
    }


async def measure_calls_only(stack: Stack, n: int, concurrency: int) -> dict[str, Any]:
    """Only the real calls (no floor): their rate and the TapRaise request load they make."""
    await _phase(stack, "calls", min(WARMUP, n), concurrency, Phase(), [], CpuMeter(stack))
    real = Phase()
    await _phase(stack, "calls", n, concurrency, real, [], CpuMeter(stack))
    return {"calls": real, **_request_load(real.requests, real)}


def _request_load(requests: int, real: Phase) -> dict[str, Any]:
    """The TapRaise requests the calls made: in all, per lifecycle and per second."""
    return {
        "requests": requests,
        "requestsPerLifecycle": requests / real.count if real.count else 0.0,
        "requestRate": per_second(requests, real.seconds),
    }


def cpu_ms_per_lifecycle(used: dict[str, float], count: int) -> float:
    """CPU milliseconds per lifecycle, all processes of the stack (and the driver) together."""
    return sum(used.values()) / count * 1000 if count else 0.0


def result_of(figures: dict[str, Any]) -> Result:
    """The printed result of a `measure` run."""
    floor: Phase = figures["floor"]
    fair: Phase = figures["fair"]
    real: Phase = figures["calls"]
    n = figures["n"]

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.0f} ms"

    def cpu_per(used: dict[str, float], count: int) -> str:
        return " · ".join(f"{k} {v / count * 1000:.1f}" for k, v in used.items() if v > 0.05)

    def both(fair_text: str, floor_text: str) -> str:
        return f"{fair_text} · {floor_text}"

    call_upserts: Counter[str] = figures["callUpserts"]
    fair_upserts: Counter[str] = figures["fairUpserts"]

    def keys(sequences: Counter[str]) -> set[str]:
        return {key for sequence in sequences for key in sequence.replace(" | ", "+").split("+")}

    upserts_note = (
        "the same keys; sequences in JSON"
        if keys(call_upserts) == keys(fair_upserts)
        else f"keys differ: calls {sorted(keys(call_upserts))}, "
        f"fair floor {sorted(keys(fair_upserts))}"
    )
    concurrency = figures["concurrency"]
    rows = [
        ("lifecycles/s", f"{real.rate:.1f}", both(f"{fair.rate:.1f}", f"{floor.rate:.1f}"),
         f"baselines: fair floor · bare floor; {n} of each, {concurrency} at once"),
        ("lifecycle latency p50", ms(real.percentile(0.5)),
         both(ms(fair.percentile(0.5)), ms(floor.percentile(0.5))), "start to result"),
        ("lifecycle latency p95", ms(real.percentile(0.95)),
         both(ms(fair.percentile(0.95)), ms(floor.percentile(0.95))), ""),
        ("TapRaise requests/lifecycle", f"{real.requests_per_lifecycle:.2f}",
         both(f"{fair.requests_per_lifecycle:.2f}", f"{floor.requests_per_lifecycle:.0f}"),
         "create, 2 look-ups + 2 attempts, complete"),
        ("search-attribute upserts/lifecycle", f"{mean_upserts(call_upserts):.2f}",
         both(f"{mean_upserts(fair_upserts):.2f}", "0"), upserts_note),
        ("TapRaise requests/s", f"{figures['requestRate']:.1f}",
         f"{per_second(fair.requests, fair.seconds):.1f}",
         "the load bench.sandbox_load compares with"),
        ("effects checked", f"{figures['effectsChecked']}", f"{figures['fairEffectsChecked']}",
         "each exactly: create 1, attempts 2, complete 1"),
        ("CPU ms/lifecycle", f"{cpu_ms_per_lifecycle(figures['cpuCalls'], real.count):.0f}",
         both(f"{cpu_ms_per_lifecycle(figures['cpuFair'], fair.count):.0f}",
              f"{cpu_ms_per_lifecycle(figures['cpuFloor'], floor.count):.0f}"),
         "every process of the stack and the driver"),
    ]  # fmt: skip
    notes = [
        "CPU ms per lifecycle, calls: " + cpu_per(figures["cpuCalls"], max(1, real.count)),
        "CPU ms per lifecycle, fair floor: " + cpu_per(figures["cpuFair"], max(1, fair.count)),
        "CPU ms per lifecycle, bare floor: " + cpu_per(figures["cpuFloor"], max(1, floor.count)),
    ]
    result = Result(
        "throughput",
        "typical call lifecycles per second (real worker + sandbox) vs the fair and bare floors",
    )
    result.rows, result.notes = rows, notes
    result.figure(
        "vs_fair_floor", real.rate / fair.rate if fair.rate else None, "x", at_least(GOAL_FAIR)
    )
    result.figure(
        "vs_bare_floor", real.rate / floor.rate if floor.rate else None, "x", at_least(GOAL)
    )
    for kind, phase in (("calls", real), ("fair_floor", fair), ("bare_floor", floor)):
        result.figure(f"{kind}_per_second", phase.rate, "lifecycles/s", digits=1)
    result.figure("calls_latency_p50", real.percentile(0.5) * 1000, "ms", digits=0)
    result.figure("calls_latency_p95", real.percentile(0.95) * 1000, "ms", digits=0)
    for kind, phase, used in (
        ("calls", real, figures["cpuCalls"]),
        ("fair_floor", fair, figures["cpuFair"]),
        ("bare_floor", floor, figures["cpuFloor"]),
    ):
        result.figure(
            f"{kind}_cpu", cpu_ms_per_lifecycle(used, phase.count), "ms/lifecycle", digits=1
        )
    result.figure("calls_tapraise_requests", real.requests_per_lifecycle, "requests/lifecycle")
    result.figure("fair_floor_tapraise_requests", fair.requests_per_lifecycle, "requests/lifecycle")
    result.figure("calls_upserts", mean_upserts(call_upserts), "upserts/lifecycle")
    result.figure("fair_floor_upserts", mean_upserts(fair_upserts), "upserts/lifecycle")
    result.figures = {
        "n": n,
        "concurrency": figures["concurrency"],
        "callsPerSecond": real.rate,
        "fairFloorPerSecond": fair.rate,
        "floorPerSecond": floor.rate,
        "callsLatencyP50": real.percentile(0.5),
        "callsLatencyP95": real.percentile(0.95),
        "fairFloorLatencyP50": fair.percentile(0.5),
        "fairFloorLatencyP95": fair.percentile(0.95),
        "floorLatencyP50": floor.percentile(0.5),
        "floorLatencyP95": floor.percentile(0.95),
        "medianCallLatency": statistics.median(real.latencies) if real.latencies else None,
        "requestsPerLifecycle": figures["requestsPerLifecycle"],
        "fairRequestsPerLifecycle": figures["fairRequestsPerLifecycle"],
        "requestsPerSecond": figures["requestRate"],
        "callUpsertSequences": dict(call_upserts),
        "fairUpsertSequences": dict(fair_upserts),
        "effectsChecked": figures["effectsChecked"],
        "fairEffectsChecked": figures["fairEffectsChecked"],
        "cpuSecondsCalls": figures["cpuCalls"],
        "cpuSecondsFairFloor": figures["cpuFair"],
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
        "--check",
        type=int,
        default=100,
        help="Calls (and fair-floor calls) whose TapRaise effects are checked.",
    )
    return parser


if __name__ == "__main__":
    main(_parser(), lambda a: run(a.n, a.concurrency, a.check, not a.no_bytecode_cache))
