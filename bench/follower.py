"""Following TapRaise: how long a change made in TapRaise takes to reach its call, and what
following costs while nothing changes.

- **lag**: for `--minutes` the TapRaise app (the sandbox's) makes `--rate` changes a minute, half
  of them calls requested there (the follower adopts each: a workflow of its own), half
  completions there of calls adopted before (their workflows close in `completed`). A change's
  lag runs from the moment the app answered it to the moment its workflow took it (its own
  `adopted` or `synced` event). The baseline is the poll interval: the goal is the interval plus
  5 s at the 99th percentile.
- **idle**: the follower runs `--idle-rounds` rounds while nothing changes. Its history gives the
  Temporal actions of a round (a timer and an activity; continue-as-new every 500 rounds adds
  one), scaled to an hour at the default interval (goal: 250 an hour); the sandbox's log gives
  the TapRaise requests of a round (goal: 1).

    python -m bench.follower --minutes 1 --rate 1000 --interval 30
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
from temporalio.api.enums.v1 import EventType

from bench.report import Result, at_most, main, parser_for
from bench.stack import Stack
from sandbox.seed import DEMO_ORGANIZATION_UUID, DEMO_PERSON_UUIDS
from starter.follow import FollowerService
from workflows.following import DEFAULT_INTERVAL, FollowerStatus, FollowScope
from workflows.messages import STATE, TASK_QUEUE, CallPhase, CallState, workflow_id_for

APP_USER: Final = "8d2c0f6e-0b7a-4f19-9d1e-3e5a7c2b4f60"
LAG_MARGIN_SECONDS: Final = 5.0
GOAL_ACTIONS_PER_HOUR: Final = 250
GOAL_REQUESTS_PER_IDLE_ROUND: Final = 1
IDLE_INTERVAL: Final = timedelta(seconds=1)
# Timer and activity events that Temporal Cloud bills, one action each.
_BILLED: Final = frozenset(
    {EventType.EVENT_TYPE_TIMER_STARTED, EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED}
)


def percentile(values: list[float], share: float) -> float:
    """The `share` percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def _drive(
    stack: Stack, minutes: float, rate: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Make the app's changes at a steady rate; when each was answered, by call."""
    requested: dict[str, float] = {}
    completed: dict[str, float] = {}
    persons = DEMO_PERSON_UUIDS[:10]
    headers = stack.sandbox_admin_headers()
    async with httpx.AsyncClient(
        base_url=f"{stack.config.sandbox_url}/_sandbox/app", headers=headers, timeout=30
    ) as app:
        total = int(minutes * rate)
        began = time.monotonic()
        pending: list[str] = []
        for index in range(total):
            await asyncio.sleep(max(0.0, began + index * 60 / rate - time.monotonic()))
            # Each call is requested, then completed once the follower has had time to adopt it.
            old = pending[0] if pending else None
            if index % 2 and old is not None and time.monotonic() - requested[old] > 40:
                pending.pop(0)
                result = {"resultCode": "confirmed"}
                answer = await app.put(
                    f"/calls/{old}/complete", json={"userUuid": APP_USER, "result": result}
                )
                answer.raise_for_status()
                completed[old] = time.time()
                continue
            body = {
                "personUuid": persons[index % len(persons)],
                "type": "happy_call",
                "requestedByUserUuid": APP_USER,
                "callingOrganizationUuid": DEMO_ORGANIZATION_UUID,
            }
            answer = await app.post("/calls", json=body)
            answer.raise_for_status()
            call_uuid = str(answer.json()["uuid"])
            requested[call_uuid] = time.time()
            pending.append(call_uuid)
    return requested, completed


async def _lags(
    stack: Stack, requested: dict[str, float], completed: dict[str, float], wait: float
) -> tuple[list[float], list[float], int]:
    """Each change's lag, from the calls' own records; and how many never arrived."""
    client = stack.client
    deadline = time.monotonic() + wait
    adopted_lags: list[float] = []
    closed_lags: list[float] = []
    missing = 0
    for call_uuid, changed_at in requested.items():
        handle = client.get_workflow_handle(workflow_id_for(call_uuid))
        state: CallState | None = None
        while state is None or (call_uuid in completed and state.phase is not CallPhase.COMPLETED):
            try:
                state = await handle.query(STATE, result_type=CallState)
            except Exception:
                state = None
            if state is not None and (
                call_uuid not in completed or state.phase is CallPhase.COMPLETED
            ):
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        if state is None:
            missing += 1
            continue
        events = {event.kind: event.at.timestamp() for event in state.events}
        if "adopted" in events:
            adopted_lags.append(events["adopted"] - changed_at)
        else:
            missing += 1
        if call_uuid in completed:
            if "synced" in events:
                closed_lags.append(events["synced"] - completed[call_uuid])
            else:
                missing += 1
    return adopted_lags, closed_lags, missing


async def _idle(stack: Stack, rounds: int) -> tuple[float, float]:
    """Billed actions and TapRaise requests per round of a follower that finds nothing."""
    service = FollowerService(stack.client, TASK_QUEUE, workflow_id=f"idle-{uuid.uuid4()}")
    await service.start(IDLE_INTERVAL, FollowScope(), since=datetime.now(UTC))
    handle = stack.client.get_workflow_handle(service.workflow_id)
    # The first round finds nothing older than `since`; then count `rounds` more.
    first = await _rounds_reach(service, 2)
    before_events = await _billed(handle)
    requests_before = await stack.sandbox_requests()
    last = await _rounds_reach(service, first.rounds + rounds)
    billed = await _billed(handle) - before_events
    requests = await stack.sandbox_requests() - requests_before
    await handle.terminate("measured")
    done = last.rounds - first.rounds
    return billed / done, requests / done


async def _rounds_reach(service: FollowerService, count: int) -> FollowerStatus:
    while True:
        status = await service.status()
        if status.rounds >= count:
            return status
        await asyncio.sleep(0.2)


async def _billed(handle: Any) -> int:
    history = await handle.fetch_history()
    return sum(event.event_type in _BILLED for event in history.events)


async def run(
    minutes: float = 1.0,
    rate: float = 1000.0,
    interval: float = DEFAULT_INTERVAL.total_seconds(),
    idle_rounds: int = 10,
) -> Result:
    """Start a stack (server, sandbox, worker), follow TapRaise, measure, stop it."""
    async with Stack(worker=True) as stack:
        idle_actions, idle_requests = await _idle(stack, idle_rounds)
        service = FollowerService(stack.client, TASK_QUEUE, workflow_id=f"lag-{uuid.uuid4()}")
        scope = FollowScope(organization_uuids=[uuid.UUID(DEMO_ORGANIZATION_UUID)])
        await service.start(timedelta(seconds=interval), scope, since=datetime.now(UTC))
        requested, completed = await _drive(stack, minutes, rate)
        adopted, closed, missing = await _lags(stack, requested, completed, wait=interval * 2 + 60)
        status = await service.status()
        await stack.client.get_workflow_handle(service.workflow_id).terminate("measured")
    return result_of(
        minutes, rate, interval, adopted, closed, missing, idle_actions, idle_requests, status
    )


def result_of(
    minutes: float,
    rate: float,
    interval: float,
    adopted: list[float],
    closed: list[float],
    missing: int,
    idle_actions: float,
    idle_requests: float,
    status: Any,
) -> Result:
    lags = adopted + closed
    p99 = percentile(lags, 0.99) if lags else None
    result = Result(
        name="follower",
        title=f"following TapRaise: {rate:g} app changes a minute for {minutes:g} min, "
        f"every {interval:g} s",
    )
    goal = interval + LAG_MARGIN_SECONDS
    result.figure("lag_p99", p99, "s", at_most(goal), digits=1)
    for share in (0.5, 0.95):
        value = percentile(lags, share) if lags else None
        result.figure(f"lag_p{round(share * 100)}", value, "s", digits=1)
    result.figure("changes_lost", float(missing), "changes", at_most(0), digits=0)
    hourly = idle_actions * 3600 / interval
    result.figure("idle_actions_per_hour", hourly, "actions", at_most(GOAL_ACTIONS_PER_HOUR), 0)
    result.figure(
        "idle_requests_per_round", idle_requests, "requests", at_most(GOAL_REQUESTS_PER_IDLE_ROUND)
    )
    kinds = Counter({"adopted": len(adopted), "closed": len(closed)})
    result.add("changes measured", f"{sum(kinds.values())}", "", f"{dict(kinds)}")
    for label, values in (("adoption lag", adopted), ("completion lag", closed)):
        if values:
            result.add(
                label,
                f"p50 {percentile(values, 0.5):.1f} s · p99 {percentile(values, 0.99):.1f} s",
                f"interval {interval:g} s",
                f"goal p99 <= {goal:g} s",
            )
    result.add("lag p99 / interval", f"{(p99 or 0) / interval:.2f}x", "1.00x")
    result.add("idle: actions a round", f"{idle_actions:.2f}", "", f"{hourly:.0f} an hour")
    result.add("idle: TapRaise requests a round", f"{idle_requests:.2f}")
    result.add("follower rounds", f"{status.rounds}", "", f"failed {status.failed_rounds}")
    result.figures.update(
        {
            "lags": {"adopted": adopted, "closed": closed},
            "missing": missing,
            "idleActionsPerRound": idle_actions,
            "idleRequestsPerRound": idle_requests,
        }
    )
    return result


def _parser() -> argparse.ArgumentParser:
    parser = parser_for("bench.follower", __doc__)
    parser.add_argument("--minutes", type=float, default=1.0, help="Minutes of app changes.")
    parser.add_argument("--rate", type=float, default=1000.0, help="App changes a minute.")
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL.total_seconds(), help="Poll interval."
    )
    parser.add_argument("--idle-rounds", type=int, default=10, help="Rounds with no change.")
    return parser


if __name__ == "__main__":
    main(_parser(), lambda a: run(a.minutes, a.rate, a.interval, a.idle_rounds))
