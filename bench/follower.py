"""Following TapRaise: how long a change made in TapRaise takes to reach its call, and what
following costs while nothing changes.

- **lag**: for `--minutes` the TapRaise app (the sandbox's) makes `--rate` changes a minute: calls
  requested there (the follower adopts each: a workflow of its own), then an attempt added
  there to each, then each completed there (its workflow closes in `completed`), a call's
  changes 40 s apart. A change's lag runs from the moment the app answered it to the moment its
  workflow took it (its own `adopted` or `synced` event). The baseline is the poll interval:
  the goal is the interval plus 5 s at the 99th percentile, in the steady state: the changes
  made after the load's first interval. Those made within it are shown apart (the onset): the
  follower's last round found nothing, so the whole first burst waits for one round and is
  handed over at once; from then on busy rounds follow each other sooner.
- **idle**: the follower runs `--idle-rounds` rounds while nothing changes. Its history gives the
  Temporal actions of a round (a timer and an activity; continue-as-new every 500 rounds adds
  one), scaled to an hour at the default interval (goal: 250 an hour); the sandbox's log gives
  the TapRaise requests of a round (goal: 1).

    python -m bench.follower --minutes 2 --rate 1000 --interval 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError

from bench.report import Result, at_most, main, parser_for
from bench.stack import Stack
from sandbox.seed import DEMO_ORGANIZATION_UUID, DEMO_PERSON_UUIDS
from starter.follow import FollowerService
from workflows.following import DEFAULT_INTERVAL, FollowerStatus, FollowScope
from workflows.messages import STATE, TASK_QUEUE, CallState, workflow_id_for

APP_USER: Final = "8d2c0f6e-0b7a-4f19-9d1e-3e5a7c2b4f60"
LAG_MARGIN_SECONDS: Final = 5.0
# A call's next change in the app comes this long after its last one: after the follower has
# had a round to take it.
STEP_SECONDS: Final = 40.0
GOAL_ACTIONS_PER_HOUR: Final = 250
KINDS: Final = ("requested", "attempt", "completed")
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


async def _drive(stack: Stack, minutes: float, rate: float) -> dict[str, dict[str, float]]:
    """Make the app's changes at a steady rate; when each was answered, by call and kind
    (`requested`, `attempt`, `completed`)."""
    changes: dict[str, dict[str, float]] = {}
    persons = DEMO_PERSON_UUIDS[:10]
    headers = stack.sandbox_admin_headers()
    async with httpx.AsyncClient(
        base_url=f"{stack.config.sandbox_url}/_sandbox/app", headers=headers, timeout=30
    ) as app:
        began = time.monotonic()
        waiting: list[str] = []  # calls with a change still to come, the longest waiting first
        for index in range(int(minutes * rate)):
            await asyncio.sleep(max(0.0, began + index * 60 / rate - time.monotonic()))
            ready = waiting[0] if waiting else None
            if ready is not None and time.time() - max(changes[ready].values()) > STEP_SECONDS:
                waiting.pop(0)
                body: dict[str, Any]
                if "attempt" not in changes[ready]:
                    at = datetime.now(UTC).isoformat()
                    body = {"userUuid": APP_USER, "attemptAt": at}
                    answer = await app.put(f"/calls/{ready}/add-attempt", json=body)
                    kind = "attempt"
                    waiting.append(ready)
                else:
                    body = {"userUuid": APP_USER, "result": {"resultCode": "confirmed"}}
                    answer = await app.put(f"/calls/{ready}/complete", json=body)
                    kind = "completed"
                answer.raise_for_status()
                changes[ready][kind] = time.time()
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
            changes[call_uuid] = {"requested": time.time()}
            waiting.append(call_uuid)
    return changes


@dataclass
class Lags:
    """Each change's lag by kind, in the steady state and in the load's first interval."""

    steady: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    onset: list[float] = field(default_factory=list)
    missing: int = 0


async def _lags(
    stack: Stack, changes: dict[str, dict[str, float]], wait: float, steady_from: float
) -> Lags:
    """Each change's lag, from the calls' own records (their events); how many never arrived.

    A change made before `steady_from` (the load's first interval) is an onset one: the
    follower had found nothing to hurry it yet, and a whole burst waits for one round.
    """
    deadline = time.monotonic() + wait
    lags = Lags()
    for call_uuid, made in changes.items():
        handle = stack.client.get_workflow_handle(workflow_id_for(call_uuid))
        taken: dict[str, float] = {}
        while True:
            with contextlib.suppress(RPCError, WorkflowQueryFailedError):
                taken = _taken(await handle.query(STATE, result_type=CallState))
            if set(made) <= set(taken) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        for kind, at in made.items():
            if kind not in taken:
                lags.missing += 1
            elif at < steady_from:
                lags.onset.append(taken[kind] - at)
            else:
                lags.steady[kind].append(taken[kind] - at)
    return lags


def _taken(state: CallState) -> dict[str, float]:
    """When the call took each kind of change made in the app, from its events."""
    taken: dict[str, float] = {}
    for event in state.events:
        if event.kind == "adopted" and event.detail.startswith("call already in TapRaise"):
            taken.setdefault("requested", event.at.timestamp())
        elif event.kind == "adopted" and "attempt" in event.detail:
            taken.setdefault("attempt", event.at.timestamp())
        elif event.kind == "synced":
            taken.setdefault("completed", event.at.timestamp())
    return taken


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
    minutes: float = 2.0,
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
        began = time.time()
        changes = await _drive(stack, minutes, rate)
        lags = await _lags(stack, changes, wait=interval * 2 + 60, steady_from=began + interval)
        status = await service.status()
        await stack.client.get_workflow_handle(service.workflow_id).terminate("measured")
    return result_of(minutes, rate, interval, lags, idle_actions, idle_requests, status)


def result_of(
    minutes: float,
    rate: float,
    interval: float,
    measured: Lags,
    idle_actions: float,
    idle_requests: float,
    status: Any,
) -> Result:
    lags_by_kind = measured.steady
    missing = measured.missing
    lags = [lag for values in lags_by_kind.values() for lag in values]
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
    onset = measured.onset
    result.figure("lag_p99_onset", percentile(onset, 0.99) if onset else None, "s", digits=1)
    result.figure("changes_lost", float(missing), "changes", at_most(0), digits=0)
    hourly = idle_actions * 3600 / interval
    result.figure("idle_actions_per_hour", hourly, "actions", at_most(GOAL_ACTIONS_PER_HOUR), 0)
    result.figure(
        "idle_requests_per_round", idle_requests, "requests", at_most(GOAL_REQUESTS_PER_IDLE_ROUND)
    )
    kinds = {kind: len(values) for kind, values in lags_by_kind.items()}
    result.add("changes measured", f"{sum(kinds.values())}", "", f"{kinds}")
    for kind, values in lags_by_kind.items():
        if values:
            result.add(
                f"lag: {kind} in the app",
                f"p50 {percentile(values, 0.5):.1f} s · p99 {percentile(values, 0.99):.1f} s",
                f"interval {interval:g} s",
                f"goal p99 <= {goal:g} s",
            )
    if onset:
        result.add(
            "lag: the load's first interval",
            f"p50 {percentile(onset, 0.5):.1f} s · p99 {percentile(onset, 0.99):.1f} s",
            f"interval {interval:g} s",
            f"{len(onset)} changes: a burst after an idle round waits for one round",
        )
    result.add("lag p99 / interval", f"{(p99 or 0) / interval:.2f}x", "1.00x", "steady state")
    result.add("idle: actions a round", f"{idle_actions:.2f}", "", f"{hourly:.0f} an hour")
    result.add("idle: TapRaise requests a round", f"{idle_requests:.2f}")
    result.add("follower rounds", f"{status.rounds}", "", f"failed {status.failed_rounds}")
    result.figures.update(
        {
            "lags": lags_by_kind,
            "onsetLags": onset,
            "missing": missing,
            "idleActionsPerRound": idle_actions,
            "idleRequestsPerRound": idle_requests,
        }
    )
    return result


def _parser() -> argparse.ArgumentParser:
    parser = parser_for("bench.follower", __doc__)
    parser.add_argument("--minutes", type=float, default=2.0, help="Minutes of app changes.")
    parser.add_argument("--rate", type=float, default=1000.0, help="App changes a minute.")
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL.total_seconds(), help="Poll interval."
    )
    parser.add_argument("--idle-rounds", type=int, default=10, help="Rounds with no change.")
    return parser


if __name__ == "__main__":
    main(_parser(), lambda a: run(a.minutes, a.rate, a.interval, a.idle_rounds))
