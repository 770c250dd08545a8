"""Agent latency: from an agent's tool sending `attempt` or `complete` to the accepted answer,
while the system carries a steady background load of call lifecycles, against no load.

Two paths, as the agent's tooling uses them:

- gateway: `POST /calls/{uuid}/attempts` and `POST /calls/{uuid}/complete` to a real
  `python -m starter serve` process with a bearer token, over one kept-alive httpx connection;
- CLI service: `starter.service.CallService.act` in this process, on a Temporal client of its
  own, as `python -m starter attempt|complete` runs it (the payload parsed with `parse_action`;
  the process start and the connection, paid once per command, are not counted).

One agent per path, both at once, each on a call of its own: the call is started as the starter
starts it (the no-wait policy: every slot due at once) and waited for until it is due, untimed;
then the agent reports two unanswered attempts and the completion, one after the other, timing
each from sending to the accepted answer (three samples per call). Under load each agent takes
up to `--calls` calls, but starts none after `--seconds` (a machine that cannot carry the load
answers slowly, and the run stays bounded; the number of samples is printed).

The background load: `--rate` call lifecycles a second (start, attempt, complete), started on a
fixed schedule by a task of their own, each lifecycle a task, at most `--max-in-flight` at once:
a lifecycle due while that many run waits for one to finish, so the rate achieved is measured
(completed lifecycles per second while the agents run) and printed. It runs in this process, on
the stack's Temporal client, after a warm-up of `--warmup` seconds.

The baseline: the same agents with no background load, half of them before the loaded run and
half after it. Goal: p99 <= 300 ms under load, on both paths.

    python -m bench.agent_latency --calls 60 --seconds 60 --rate 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from bench import lifecycle
from bench.report import Result, at_least, at_most, main, parser_for, per_second, percentile
from bench.stack import CpuMeter, Stack
from starter.connect import connect
from starter.service import CallService, parse_action, parse_call_uuid
from workflows.messages import ATTEMPT, COMPLETE, CallInput, CallPhase, CallSearchAttributes

GOAL_P99_MS: Final = 300.0
DEFAULT_RATE: Final = 10.0
DEFAULT_CALLS: Final = 60
DEFAULT_SECONDS: Final = 60.0
DEFAULT_MAX_IN_FLIGHT: Final = 100
DEFAULT_WARMUP_SECONDS: Final = 5.0
READY_TIMEOUT_SECONDS: Final = 60.0
# What the agent's tool sends, as JSON: the gateway's body and the CLI's options alike.
BODIES: Final[dict[str, dict[str, Any]]] = {
    ATTEMPT: {"outcome": "no_answer"},
    COMPLETE: {"result": {"resultCode": "confirmed"}},
}
GATEWAY_ROUTES: Final = {ATTEMPT: "attempts", COMPLETE: "complete"}
PATHS: Final = ("gateway", "cli_service")
LABELS: Final = {"gateway": "gateway", "cli_service": "CLI service"}
# An agent's reports on one call: the typical path.
REPORTS: Final = (ATTEMPT, ATTEMPT, COMPLETE)

Act = Callable[[uuid.UUID, str], Awaitable[None]]


@dataclass
class Samples:
    """One path's latencies in seconds, by action."""

    by_action: dict[str, list[float]] = field(default_factory=lambda: {ATTEMPT: [], COMPLETE: []})

    @property
    def all(self) -> list[float]:
        return [s for values in self.by_action.values() for s in values]

    def percentile_ms(self, p: float, action: str | None = None) -> float:
        values = self.all if action is None else self.by_action[action]
        return percentile(values, p) * 1000

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"count": len(self.all)}
        for p in (0.5, 0.95, 0.99):
            body[f"p{round(p * 100)}Ms"] = self.percentile_ms(p)
        for action, values in self.by_action.items():
            body[action] = {
                "count": len(values),
                "p50Ms": self.percentile_ms(0.5, action),
                "p99Ms": self.percentile_ms(0.99, action),
            }
        return body


def gateway_agent(http: httpx.AsyncClient) -> Act:
    """Reports through the gateway: one request each, answered 200 once accepted."""

    async def act(call_uuid: uuid.UUID, name: str) -> None:
        response = await http.post(f"/calls/{call_uuid}/{GATEWAY_ROUTES[name]}", json=BODIES[name])
        if response.status_code != 200:
            raise RuntimeError(
                f"gateway {name} on {call_uuid}: {response.status_code} {response.text}"
            )

    return act


def service_agent(service: CallService) -> Act:
    """Reports as the CLI does: parse the call uuid and the payload, then `CallService.act`."""

    async def act(call_uuid: uuid.UUID, name: str) -> None:
        target = parse_call_uuid(str(call_uuid))
        await service.act(target, name, parse_action(name, BODIES[name]))

    return act


async def wait_until_due(service: CallService, call: CallInput) -> None:
    """Poll the call's `CallPhase` (describe: no query, no worker) until it is due."""
    handle = lifecycle.handle_of(service.client, call)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        attributes = (await handle.describe()).typed_search_attributes
        if attributes.get(CallSearchAttributes.CALL_PHASE) == CallPhase.DUE.value:
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"call {call.uuid} not due within {READY_TIMEOUT_SECONDS:g} s")


async def run_agent(
    service: CallService, act: Act, calls: int, samples: Samples, until: float | None = None
) -> None:
    """One agent: `calls` calls (none started after `until`, a `time.monotonic()` instant),
    each started and made due untimed, then its reports timed."""
    for i in range(calls):
        if until is not None and time.monotonic() >= until:
            return
        call = lifecycle.make_call(i, lifecycle.NO_WAIT)
        assert call.uuid is not None
        await lifecycle.start_call(service, call)
        await wait_until_due(service, call)
        for name in REPORTS:
            began = time.perf_counter()
            await act(call.uuid, name)
            samples.by_action[name].append(time.perf_counter() - began)


async def run_agents(
    service: CallService,
    agents: dict[str, Act],
    calls: int,
    samples: dict[str, Samples],
    until: float | None = None,
) -> None:
    """Every path's agent at once, `calls` calls each (none started after `until`)."""
    async with asyncio.TaskGroup() as group:
        for path, act in agents.items():
            group.create_task(run_agent(service, act, calls, samples[path], until))


class BackgroundLoad:
    """Call lifecycles (start, attempt, complete) started at a steady rate until stopped.

    Args:
        service: Starts the calls (as the starter does); the reports are updates on its client.
        rate: Lifecycles started a second.
        max_in_flight: At most this many at once; a lifecycle due meanwhile waits.
    """

    def __init__(self, service: CallService, rate: float, max_in_flight: int) -> None:
        self.service = service
        self.interval = 1 / rate
        self.slots = asyncio.Semaphore(max_in_flight)
        self.max_in_flight = max_in_flight
        self.started: list[float] = []
        self.finished: list[float] = []
        self.latencies: list[float] = []
        self.delayed = 0
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="background-load")

    async def stop(self) -> None:
        """Start no more lifecycles; return when every one started has finished."""
        self._stop.set()
        if self._runner is not None:
            await self._runner

    def rate_between(self, begin: float, end: float) -> tuple[float, float]:
        """Lifecycles started and finished a second between two `time.monotonic()` instants."""
        seconds = end - begin
        started = sum(1 for t in self.started if begin <= t <= end)
        finished = sum(1 for t in self.finished if begin <= t <= end)
        return per_second(started, seconds), per_second(finished, seconds)

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            due = time.monotonic()
            i = 0
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(0.0, due - time.monotonic()))
                if self._stop.is_set():
                    break
                if self.slots.locked():
                    self.delayed += 1
                await self.slots.acquire()
                group.create_task(self._lifecycle(i))
                i += 1
                # A steady schedule; a lifecycle started late moves the next ones (no burst).
                due = max(due + self.interval, time.monotonic())

    async def _lifecycle(self, i: int) -> None:
        began = time.monotonic()
        self.started.append(began)
        try:
            call = lifecycle.make_call(i, lifecycle.NO_WAIT)
            await lifecycle.start_call(self.service, call)
            handle = lifecycle.handle_of(self.service.client, call)
            await lifecycle.attempt(handle)
            await lifecycle.complete(handle)
        finally:
            self.slots.release()
        finished = time.monotonic()
        self.finished.append(finished)
        self.latencies.append(finished - began)


async def measure(
    stack: Stack,
    calls: int = DEFAULT_CALLS,
    rate: float = DEFAULT_RATE,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    warmup_seconds: float = DEFAULT_WARMUP_SECONDS,
    seconds: float = DEFAULT_SECONDS,
) -> dict[str, Any]:
    """No load (first half), load, no load (second half), on a started stack (worker, gateway)."""
    service = CallService(stack.client)
    assert stack.keys is not None
    # The CLI's own connection, as each `python -m starter` command makes one.
    cli_client = await connect(
        stack.config.temporal_address, stack.config.namespace, stack.keys.ring
    )
    async with httpx.AsyncClient(
        base_url=stack.config.gateway_url, headers=stack.gateway_headers, timeout=60
    ) as http:
        agents: dict[str, Act] = {
            "gateway": gateway_agent(http),
            "cli_service": service_agent(CallService(cli_client)),
        }
        # Warm both paths (connections, the gateway's first Temporal client, imports).
        await run_agents(service, agents, 1, {path: Samples() for path in PATHS})

        quiet = {path: Samples() for path in PATHS}
        loaded = {path: Samples() for path in PATHS}
        await run_agents(service, agents, calls // 2, quiet)

        load = BackgroundLoad(service, rate, max_in_flight)
        cpu = CpuMeter(stack)
        load.start()
        await asyncio.sleep(warmup_seconds)
        cpu.start()
        began = time.monotonic()
        await run_agents(service, agents, calls, loaded, until=began + seconds)
        ended = time.monotonic()
        cpu.stop()
        await load.stop()

        await run_agents(service, agents, calls - calls // 2, quiet)
    started_rate, finished_rate = load.rate_between(began, ended)
    return {
        "calls": calls,
        "seconds": seconds,
        "rate": rate,
        "maxInFlight": max_in_flight,
        "warmupSeconds": warmup_seconds,
        "loaded": loaded,
        "quiet": quiet,
        "loadSeconds": ended - began,
        "backgroundStartedRate": started_rate,
        "backgroundRate": finished_rate,
        "backgroundLifecycles": len(load.finished),
        "backgroundDelayed": load.delayed,
        "backgroundLatencyP50": percentile(load.latencies, 0.5),
        "backgroundLatencyP99": percentile(load.latencies, 0.99),
        "cpu": cpu.used,
    }


def result_of(figures: dict[str, Any]) -> Result:
    """The printed result of a `measure` run."""
    loaded: dict[str, Samples] = figures["loaded"]
    quiet: dict[str, Samples] = figures["quiet"]
    rate = figures["rate"]
    result = Result(
        "agent_latency",
        f"attempt/complete sent to accepted answer under {rate:g} call lifecycles/s vs no load",
    )

    def ratio(path: str) -> float | None:
        baseline = quiet[path].percentile_ms(0.99)
        return loaded[path].percentile_ms(0.99) / baseline if baseline else None

    def three(samples: Samples) -> str:
        return " / ".join(f"{samples.percentile_ms(p):.0f}" for p in (0.5, 0.95, 0.99)) + " ms"

    for path in PATHS:
        result.figure(f"{path}_p99_vs_no_load", ratio(path), "x")
    for path in PATHS:
        result.figure(
            f"{path}_p99", loaded[path].percentile_ms(0.99), "ms", at_most(GOAL_P99_MS), 0
        )
    result.figure("background_rate", figures["backgroundRate"], "lifecycles/s", at_least(rate), 1)
    for path in PATHS:
        for p in (0.5, 0.95):
            value = loaded[path].percentile_ms(p)
            result.figure(f"{path}_p{round(p * 100)}", value, "ms", digits=0)
        result.figure(f"{path}_p99_no_load", quiet[path].percentile_ms(0.99), "ms", digits=0)

    def two(values: list[float]) -> str:
        return f"{percentile(values, 0.5) * 1000:.0f} / {percentile(values, 0.99) * 1000:.0f} ms"

    for path in PATHS:
        for action in (ATTEMPT, COMPLETE):
            samples = loaded[path].by_action[action]
            baseline = quiet[path].by_action[action]
            result.add(
                f"{LABELS[path]}: {action} p50/p99",
                two(samples),
                two(baseline),
                f"{len(samples)} under load, {len(baseline)} without",
            )
        result.add(
            f"{LABELS[path]}: p50/p95/p99",
            three(loaded[path]),
            three(quiet[path]),
            "attempt and complete together; baseline: no load",
        )
    seconds = figures["loadSeconds"]
    result.add(
        "background lifecycles/s",
        f"{figures['backgroundRate']:.1f}",
        f"{rate:g} asked",
        f"finished while the agents ran ({seconds:.0f} s); started "
        f"{figures['backgroundStartedRate']:.1f}/s; at most {figures['maxInFlight']} at once"
        f" (reached {figures['backgroundDelayed']} times)",
    )
    result.add(
        "background lifecycle p50/p99",
        f"{figures['backgroundLatencyP50'] * 1000:.0f} / "
        f"{figures['backgroundLatencyP99'] * 1000:.0f} ms",
        "",
        "start, attempt, complete",
    )
    cpu: dict[str, float] = figures["cpu"]
    busy = sum(cpu.values()) / seconds if seconds else 0.0
    result.figure("busy_cores_under_load", busy, "cores", digits=2)
    result.notes.append(
        "CPU seconds a second under load (cores busy): "
        + " · ".join(f"{k} {v / seconds:.2f}" for k, v in cpu.items() if v > 0.05 and seconds)
        + " (the agents and the background load run in the driver)"
    )
    result.figures = {
        "calls": figures["calls"],
        "seconds": figures["seconds"],
        "rate": rate,
        "maxInFlight": figures["maxInFlight"],
        "warmupSeconds": figures["warmupSeconds"],
        "loaded": {path: loaded[path].to_json() for path in PATHS},
        "noLoad": {path: quiet[path].to_json() for path in PATHS},
        "loadSeconds": seconds,
        "backgroundRate": figures["backgroundRate"],
        "backgroundStartedRate": figures["backgroundStartedRate"],
        "backgroundLifecycles": figures["backgroundLifecycles"],
        "backgroundDelayed": figures["backgroundDelayed"],
        "backgroundLatencyP50": figures["backgroundLatencyP50"],
        "backgroundLatencyP99": figures["backgroundLatencyP99"],
        "cpuSeconds": cpu,
    }
    return result


async def run(
    calls: int = DEFAULT_CALLS,
    rate: float = DEFAULT_RATE,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    warmup_seconds: float = DEFAULT_WARMUP_SECONDS,
    seconds: float = DEFAULT_SECONDS,
) -> Result:
    """Start a stack (server, sandbox, worker, gateway), measure, stop it."""
    async with Stack(worker=True, gateway=True) as stack:
        figures = await measure(stack, calls, rate, max_in_flight, warmup_seconds, seconds)
        return result_of(figures)


def _parser() -> argparse.ArgumentParser:
    parser = parser_for("bench.agent_latency", __doc__)
    parser.add_argument(
        "--calls",
        type=int,
        default=DEFAULT_CALLS,
        help="Calls per path under load (3 reports each); as many again without load.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help="Under load, no agent starts a call after this many seconds.",
    )
    parser.add_argument(
        "--rate", type=float, default=DEFAULT_RATE, help="Background lifecycles started a second."
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help="Background lifecycles running at once, at most.",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=DEFAULT_WARMUP_SECONDS,
        help="Seconds of background load before the agents start.",
    )
    return parser


if __name__ == "__main__":
    main(_parser(), lambda a: run(a.calls, a.rate, a.max_in_flight, a.warmup, a.seconds))
