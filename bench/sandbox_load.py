"""Sandbox capacity: TapRaise requests per second under 50 clients, against the lifecycle load.

The load: `--clients` (default 50) concurrent clients, each a real `TapRaiseClient` (httpx, its
own connection pool and signed token), first creating `--n` calls in all, then adding one
attempt to each. The rates of both are measured on the sandbox process of this run.

The baseline is the request load that call lifecycles put on TapRaise: in the same run, the
real worker drives `--lifecycles` calls along the typical path (as `bench.throughput` does) and
the sandbox's request count over that time gives requests per second. `python -m bench` passes
the rate measured by `bench.throughput` instead. Goal: the sandbox serves at least 5 times
that load, so that it is never what limits a benchmark or a demo.

    python -m bench.sandbox_load --n 4000 --clients 50
"""

from __future__ import annotations

import argparse
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

from bench import throughput
from bench.report import Result, at_least, main, parser_for, per_second, timed
from bench.stack import CpuMeter, Stack
from sandbox.seed import DEMO_PERSON_UUIDS
from tapraise import TapRaiseClient
from tapraise.models import AddAttemptRequest, CallType, CreateCallRequest

GOAL = 5.0
DEFAULT_N = 4000
DEFAULT_CLIENTS = 50
DEFAULT_LIFECYCLES = 200


async def _load(clients: list[TapRaiseClient], description: str, count: int, send: Any) -> float:
    """Send `count` requests, each lane using its own client; returns requests per second."""
    lanes = len(clients)

    async def one(i: int) -> None:
        await send(clients[i % lanes], i)

    return per_second(count, await timed(description, count, lanes, one))


async def measure_load(stack: Stack, n: int, clients: int) -> dict[str, Any]:
    """Create `n` calls, then add one attempt to each, from `clients` concurrent clients."""
    requested_at = datetime.now(UTC).replace(microsecond=0)
    uuids = [uuid.uuid4() for _ in range(n)]
    persons = [uuid.UUID(p) for p in DEMO_PERSON_UUIDS]
    cpu = CpuMeter(stack)
    async with AsyncExitStack() as exits:
        pool = [await exits.enter_async_context(stack.tapraise_client()) for _ in range(clients)]

        async def create(client: TapRaiseClient, i: int) -> None:
            await client.create_call(
                CreateCallRequest(
                    uuid=uuids[i],
                    requested_at=requested_at,
                    person_uuid=persons[i % len(persons)],
                    type=CallType.VERIFICATION,
                )
            )

        async def add_attempt(client: TapRaiseClient, i: int) -> None:
            await client.add_attempt(uuids[i], AddAttemptRequest())

        # Warm every client (connection, token) before timing.
        warm = min(n, clients)
        await _load(pool, "warming up", warm, create)
        cpu.start()
        create_rate = await _load(pool, "create", n - warm, lambda c, i: create(c, i + warm))
        attempt_rate = await _load(pool, "add-attempt", n, add_attempt)
        cpu.stop()
    stats = await stack.sandbox("stats")
    return {
        "n": n,
        "clients": clients,
        "createPerSecond": create_rate,
        "attemptPerSecond": attempt_rate,
        "sandboxCreated": stats["effects"]["create"],
        "sandboxAttempts": stats["effects"]["add-attempt"],
        "cpu": cpu.used,
    }


async def measure(
    stack: Stack,
    n: int,
    clients: int,
    lifecycles: int,
    lifecycle_rate: float | None = None,
    lifecycle_requests: float | None = None,
) -> dict[str, Any]:
    """The lifecycle load (measured here unless given), then the sandbox load."""
    source = "from bench.throughput"
    if lifecycle_rate is None:
        # TapRaise requests per second (and per lifecycle) while calls run their typical path.
        assert stack.worker is not None, "measuring the lifecycle load needs the worker"
        load = await throughput.measure_calls_only(
            stack, lifecycles, throughput.DEFAULT_CONCURRENCY
        )
        lifecycle_rate, lifecycle_requests = load["requestRate"], load["requestsPerLifecycle"]
        source = "measured here"
    figures = await measure_load(stack, n, clients)
    return {
        **figures,
        "lifecycleRequestsPerSecond": lifecycle_rate,
        "requestsPerLifecycle": lifecycle_requests,
        "lifecycleSource": source,
    }


def result_of(figures: dict[str, Any]) -> Result:
    """The printed result of a `measure` run."""
    baseline = figures["lifecycleRequestsPerSecond"]
    slowest = min(figures["createPerSecond"], figures["attemptPerSecond"])
    result = Result(
        "sandbox_load",
        f"sandbox requests/s under {figures['clients']} concurrent TapRaise clients "
        "vs the load of call lifecycles",
    )
    ratio = slowest / baseline if baseline else None
    result.figure("slower_endpoint_vs_lifecycle_load", ratio, "x", at_least(GOAL))
    result.figure("create_per_second", figures["createPerSecond"], "requests/s", digits=0)
    result.figure("add_attempt_per_second", figures["attemptPerSecond"], "requests/s", digits=0)
    result.figure("lifecycle_load", baseline, "requests/s", digits=1)
    n = figures["n"]
    for label, key in (("create", "createPerSecond"), ("add-attempt", "attemptPerSecond")):
        result.add(f"{label} requests/s", f"{figures[key]:.0f}", f"{baseline:.1f}", f"{n:,} sent")
    per = figures.get("requestsPerLifecycle")
    result.add(
        "lifecycle load (requests/s)",
        f"{baseline:.1f}",
        "",
        f"{figures['lifecycleSource']}"
        + (f"; {per:.2f} requests per lifecycle" if per is not None else ""),
    )
    result.add(
        "applied",
        f"{figures['sandboxCreated']:,} created",
        f"{figures['sandboxAttempts']:,} attempts",
        "as counted by the sandbox",
    )
    cpu = figures["cpu"]
    result.notes.append(
        "CPU seconds during the load: "
        + " · ".join(f"{k} {v:.1f}" for k, v in cpu.items() if v > 0.05)
        + " (the clients run in this process and share the 2 cores with the sandbox)"
    )
    result.figures = figures
    return result


async def run(
    n: int = DEFAULT_N,
    clients: int = DEFAULT_CLIENTS,
    lifecycles: int = DEFAULT_LIFECYCLES,
    lifecycle_rate: float | None = None,
    lifecycle_requests: float | None = None,
) -> Result:
    """Start a stack (with the worker unless the lifecycle rate is given), measure, stop it."""
    async with Stack(worker=lifecycle_rate is None) as stack:
        return result_of(
            await measure(stack, n, clients, lifecycles, lifecycle_rate, lifecycle_requests)
        )


def _parser() -> argparse.ArgumentParser:
    parser = parser_for("bench.sandbox_load", __doc__)
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="Calls created (and attempts).")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    parser.add_argument(
        "--lifecycles",
        type=int,
        default=DEFAULT_LIFECYCLES,
        help="Typical-path calls run to measure the lifecycle request rate.",
    )
    parser.add_argument(
        "--lifecycle-rate", type=float, help="Use this lifecycle request rate (requests/s)."
    )
    return parser


if __name__ == "__main__":
    main(_parser(), lambda a: run(a.n, a.clients, a.lifecycles, a.lifecycle_rate))
