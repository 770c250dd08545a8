"""Open calls at scale: many calls waiting on their timers, the worker's memory, history size.

`--n` calls (default 10,000) are started as the starter starts them, each with a first slot
three days away, so that after its first workflow task (policy, TapRaise create, one timer) each
call just waits. Then every call is completed with a `complete` signal.

Measured:
- the worker's resident memory (`python -m worker`, a process of its own), sampled from
  `/proc/<pid>/status`: idle before the first call (the baseline), with every call open, and its
  peak (`VmHWM`) over the whole run. Goal: peak <= 300 MB;
- history size per call, from a sample of histories (events and bytes), while waiting and once
  completed, and the total for all calls;
- that the sandbox created and completed every call exactly once.

    python -m bench.scale --n 10000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from temporalio.api.history.v1 import History
from temporalio.client import Client

from bench import lifecycle
from bench.report import Result, at_most, main, parser_for, per_second, progress, timed
from bench.stack import Stack, read_kb, sampling
from starter.service import CallService
from workflows.messages import COMPLETE, CallInput

GOAL_MB = 300
DEFAULT_N = 10_000
DEFAULT_CONCURRENCY = 50
HISTORY_SAMPLE = 20
STALL_SECONDS = 120.0


async def wait_for_count(client: Client, query: str, target: int, description: str) -> float:
    """Poll a visibility count until it reaches `target`; fail if it stops moving.

    Returns the seconds it took.
    """
    began = time.perf_counter()
    with progress(description, target) as advance:
        seen, moved = 0, time.monotonic()
        while seen < target:
            count = (await client.count_workflows(query)).count
            if count > seen:
                advance(count - seen)
                seen, moved = count, time.monotonic()
            elif time.monotonic() - moved > STALL_SECONDS:
                raise RuntimeError(f"stuck at {seen}/{target} for {query!r}")
            if seen < target:
                await asyncio.sleep(0.5)
    return time.perf_counter() - began


async def history_sample(client: Client, made: list[CallInput]) -> tuple[float, float]:
    """Mean events and bytes per call over an evenly spread sample of histories."""
    step = max(1, len(made) // HISTORY_SAMPLE)
    events, sizes = [], []
    for call in made[::step][:HISTORY_SAMPLE]:
        history = await lifecycle.handle_of(client, call).fetch_history()
        events.append(len(history.events))
        sizes.append(History(events=list(history.events)).ByteSize())
    return statistics.mean(events), statistics.mean(sizes)


async def measure(stack: Stack, n: int, concurrency: int) -> dict[str, Any]:
    """Start, hold and complete `n` calls on a started stack (worker running)."""
    assert stack.worker is not None
    worker = stack.worker
    client = stack.client
    service = CallService(client)
    await asyncio.sleep(2)  # let the worker settle after its first polls
    idle_kb = read_kb(worker.pid, "VmRSS")
    made = [lifecycle.make_call(i, lifecycle.WAITING) for i in range(n)]
    already = (await client.count_workflows("ExecutionStatus = 'Completed'")).count

    with sampling(worker) as samples:
        start_seconds = await timed(
            "starting calls", n, concurrency, lambda i: lifecycle.start_call(service, made[i])
        )
        waiting = "CallPhase = 'scheduled'"
        settle_seconds = await wait_for_count(client, waiting, n, "calls created, waiting")
        open_kb = read_kb(worker.pid, "VmRSS")
        open_events, open_bytes = await history_sample(client, made)

        signal_seconds = await timed(
            "completing (signals)",
            n,
            concurrency,
            lambda i: lifecycle.handle_of(client, made[i]).signal(COMPLETE, lifecycle.COMPLETION),
        )
        completed = "ExecutionStatus = 'Completed'"
        finish_seconds = await wait_for_count(client, completed, n + already, "calls completed")
    peak_kb = read_kb(worker.pid, "VmHWM")
    done_events, done_bytes = await history_sample(client, made)
    stats = await stack.sandbox("stats")
    expected = {**lifecycle.TYPICAL_EFFECTS, "add-attempt": 0}
    await stack.check_effects(made[:: max(1, n // HISTORY_SAMPLE)], expected)
    return {
        "n": n,
        "idleKb": idle_kb,
        "openKb": open_kb,
        "peakKb": peak_kb,
        "sampledPeakKb": max(samples, default=0),
        "openEvents": open_events,
        "openBytes": open_bytes,
        "doneEvents": done_events,
        "doneBytes": done_bytes,
        "startSeconds": start_seconds,
        "settleSeconds": settle_seconds,
        "signalSeconds": signal_seconds,
        "finishSeconds": finish_seconds,
        "sandboxCreated": stats["effects"]["create"],
        "sandboxCompleted": stats["effects"]["complete"],
    }


def result_of(figures: dict[str, Any]) -> Result:
    """The printed result of a `measure` run."""
    n = figures["n"]
    mb = 1024
    idle, open_, peak = figures["idleKb"] / mb, figures["openKb"] / mb, figures["peakKb"] / mb
    ratio = peak / idle if idle else None
    result = Result(
        name="scale", title=f"{n:,} open calls waiting on timers: worker memory and history size"
    )
    result.figure("peak_vs_idle_rss", ratio, "x")
    result.figure("worker_peak_rss", peak, "MB", at_most(GOAL_MB), digits=0)
    result.figure("worker_idle_rss", idle, "MB", digits=0)
    result.figure("worker_open_rss", open_, "MB", digits=0)
    result.figure("open_calls", n, "calls", digits=0)
    result.figure("history_waiting_call", figures["openBytes"] / 1024, "KiB", digits=1)
    result.figure("history_completed_call", figures["doneBytes"] / 1024, "KiB", digits=1)
    result.figure("events_waiting_call", figures["openEvents"], "events", digits=0)
    result.figure("events_completed_call", figures["doneEvents"], "events", digits=0)
    start_seconds = figures["startSeconds"] + figures["settleSeconds"]
    finish_seconds = figures["signalSeconds"] + figures["finishSeconds"]
    result.figure("started_and_waiting_rate", per_second(n, start_seconds), "calls/s", digits=0)
    result.figure("completed_by_signal_rate", per_second(n, finish_seconds), "calls/s", digits=0)
    result.add("worker RSS, peak (VmHWM)", f"{peak:.0f} MB", f"{idle:.0f} MB idle", "whole run")
    result.add("worker RSS, all calls open", f"{open_:.0f} MB", f"{idle:.0f} MB idle", "")
    for state, key in (("waiting", "open"), ("completed", "done")):
        result.add(
            f"history per {state} call",
            f"{figures[f'{key}Bytes'] / 1024:.1f} KiB",
            f"{figures[f'{key}Events']:.0f} events",
            f"sample of {HISTORY_SAMPLE}",
        )
    result.add(
        "history, all calls completed",
        f"{figures['doneBytes'] * n / 1024 / 1024:.1f} MiB",
        f"{figures['doneEvents'] * n:,.0f} events",
        "estimated from the sample",
    )
    for label, seconds, note in (
        ("calls started and waiting", figures["startSeconds"] + figures["settleSeconds"],
         "start requests, then policy + TapRaise create + timer each"),
        ("calls completed by signal", figures["signalSeconds"] + figures["finishSeconds"],
         "signal, then TapRaise complete each"),
    ):  # fmt: skip
        result.add(label, f"{per_second(n, seconds):.0f}/s", f"{seconds:.0f} s", note)
    result.add(
        "TapRaise effects",
        f"{figures['sandboxCreated']:,} created",
        f"{figures['sandboxCompleted']:,} completed",
        "each call exactly once (sample checked per call)",
    )
    result.figures = {**figures, "idleMb": idle, "openMb": open_, "peakMb": peak}
    return result


async def run(
    n: int = DEFAULT_N, concurrency: int = DEFAULT_CONCURRENCY, bytecode_cache: bool = True
) -> Result:
    """Start a stack (server, sandbox, worker process), measure, stop it."""
    async with Stack(worker=True, bytecode_cache=bytecode_cache) as stack:
        return result_of(await measure(stack, n, concurrency))


def _parser() -> argparse.ArgumentParser:
    parser = parser_for("bench.scale", __doc__, bytecode_cache_option=True)
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="Calls to hold open.")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    return parser


if __name__ == "__main__":
    main(_parser(), lambda a: run(a.n, a.concurrency, not a.no_bytecode_cache))
