"""Cost per call, counted from real histories: history events and Temporal Cloud actions.

Paths, each one real call on the dev server with the real worker and the sandbox:

- typical (the default policy): created, its first slot comes (a dialer finds it by
  `NextAttemptAt` having passed), an unanswered attempt, the next slot comes, another unanswered
  attempt, the next slot comes, completed; the reports are updates. Slots are seconds apart (a
  compressed policy) so that each wait is a real durable timer that fires;
- typical, policy `duePhase = true`: the same, each slot shown as `due` while it is open: one
  timer and one upsert more per slot;
- typical, no waits: the same messages sent back to back (the throughput benchmark's path);
- cancelled while waiting for its first slot;
- expired by attempts: `maxAttempts` 2, two unanswered attempts;
- expired by deadline: a deadline of a few seconds, the due slot lapses, the call expires;
- waiting: a call whose first slot is days away, watched for `--wait` seconds with no message.
  Waiting must add no event and no action at all: one durable timer, no polling.

Counting rules (Temporal Cloud's published action definitions, as we read them; one history
event counts at most once):

- workflow started: 1 (`WorkflowExecutionStarted`); search attributes given at start are free;
- signal: 1 per `WorkflowExecutionSignaled`;
- update: 1 per `WorkflowExecutionUpdateAccepted` (rejected updates count too but leave no
  event; these paths send none);
- activity: 1 per attempt of a regular activity (`ActivityTaskStarted`); a local activity
  counts as Temporal Cloud bills it: all `core_local_activity` markers of one workflow task are
  one action (the count with every local activity counted once is shown beside it);
- timer: 1 per `TimerStarted` (a wait with a timeout starts one);
- search attributes: 1 per `UpsertWorkflowSearchAttributes`, however many attributes it sets;
- free: workflow tasks, timer fired/cancelled, workflow completion, other markers (version
  markers; side effects are recorded by the Go and Java SDKs only), memo/summary updates;
- not in a history but billed: each query (e.g. `starter status`) is 1 action. The driver here
  sends none.

The baseline is a naive design that polls TapRaise every 15 minutes for the same 3 days: each
poll a timer and an activity, 3 * 24 * 4 * 2 = 576 actions (computed, not run).

    python -m bench.cost --wait 10
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History
from temporalio.client import WorkflowHandle
from temporalio.common import TypedSearchAttributes

from bench import lifecycle
from bench.report import Result, at_most, main, parser_for
from bench.stack import Stack
from starter.service import CallService
from workflows.messages import CANCEL, CallPhase, CallSearchAttributes, CancelSignal
from workflows.policy import PolicyOverrides

GOAL_ACTIONS = 15
GOAL_EVENTS = 60
DEFAULT_WAIT_SECONDS = 10.0
NAIVE_POLLS = 3 * 24 * 4  # every 15 minutes for 3 days
NAIVE_ACTIONS = NAIVE_POLLS * 2  # a timer and an activity each
LOCAL_ACTIVITY_MARKER = "core_local_activity"

# Slots a second apart that stay due for an hour: each wait is a timer that really fires.
_SPACED: dict[str, Any] = {
    "firstAttemptDelay": 1,
    "retryDelays": {"no_answer": 1, "busy": 1, "voicemail": 1},
    "attemptWindow": 3600,
    "deadline": "P3D",
}
# The default policy leaves the call `scheduled` through its slots (no `due` phase).
SPACED = lifecycle.policy(**_SPACED)
# The same, with each slot shown as `due` while it is open.
SPACED_DUE = lifecycle.policy(**_SPACED, duePhase=True)
BY_ATTEMPTS = lifecycle.policy(
    firstAttemptDelay=0,
    retryDelays={"no_answer": 0, "busy": 0, "voicemail": 0},
    attemptWindow=3600,
    maxAttempts=2,
)
BY_DEADLINE = lifecycle.policy(firstAttemptDelay=0, attemptWindow=3600, deadline=3)

# The paths of `measure`, in its order, as the summary names them.
PATH_KEYS = (
    "typical",
    "typical_due_phase",
    "typical_no_waits",
    "cancelled",
    "expired_by_attempts",
    "expired_by_deadline",
)

E = EventType
# Event types that are one action each, by the action's kind.
ONE_ACTION: dict[int, str] = {
    E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "start",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signal",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "update",
    E.EVENT_TYPE_ACTIVITY_TASK_STARTED: "activity",
    E.EVENT_TYPE_TIMER_STARTED: "timer",
}


@dataclass
class Cost:
    """What one call's history holds."""

    path: str
    events: int
    bytes: int
    actions: Counter[str]
    la_tasks: int
    phase: str

    @property
    def total(self) -> int:
        return sum(self.actions.values())

    @property
    def total_la_per_task(self) -> int:
        """Actions if all local activities of one workflow task count once (Cloud's rule)."""
        return self.total - self.actions["local activity"] + self.la_tasks

    @property
    def within_goal(self) -> bool:
        return self.total_la_per_task <= GOAL_ACTIONS and self.events <= GOAL_EVENTS


def paths_json(costs: list[Cost]) -> dict[str, dict[str, Any]]:
    """What each path's history holds, by path, for `--json`."""
    return {
        c.path: {
            "events": c.events,
            "bytes": c.bytes,
            "actions": c.total,
            "actionsLaPerTask": c.total_la_per_task,
            "byKind": dict(c.actions),
            "phase": c.phase,
        }
        for c in costs
    }


# Set by the SDK's `workflow.patched` (versioning), not by the workflow's own logic.
CHANGE_VERSION = "TemporalChangeVersion"


def search_attribute_upserts(events: list[Any]) -> list[frozenset[str]]:
    """The keys each search-attribute upsert of a history sets, in order (versioning's own
    `TemporalChangeVersion` left out: an upsert of it alone is not listed)."""
    upserts: list[frozenset[str]] = []
    for event in events:
        if event.event_type == E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
            keys = frozenset(fields.indexed_fields) - {CHANGE_VERSION}
            if keys:
                upserts.append(keys)
    return upserts


def count_actions(events: list[Any]) -> tuple[Counter[str], int]:
    """Billable actions per kind in a history, and the number of tasks with local activities."""
    actions: Counter[str] = Counter()
    la_tasks: set[int] = set()
    for event in events:
        kind = event.event_type
        if kind in ONE_ACTION:
            actions[ONE_ACTION[kind]] += 1
        elif kind == E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            actions["search attributes"] += len(search_attribute_upserts([event]))
        elif kind == E.EVENT_TYPE_MARKER_RECORDED:
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == LOCAL_ACTIVITY_MARKER:
                actions["local activity"] += 1
                la_tasks.add(marker.workflow_task_completed_event_id)
    return actions, len(la_tasks)


async def cost_of(path: str, handle: WorkflowHandle[Any, Any]) -> Cost:
    """Count a call's history as it is now."""
    history = await handle.fetch_history()
    events = list(history.events)
    actions, la_tasks = count_actions(events)
    description = await handle.describe()
    phase = description.typed_search_attributes.get(CallSearchAttributes.CALL_PHASE) or "?"
    return Cost(path, len(events), History(events=events).ByteSize(), actions, la_tasks, phase)


async def _wait_for(
    handle: WorkflowHandle[Any, Any], ready: Callable[[TypedSearchAttributes], bool], what: str
) -> None:
    """Poll the call's search attributes (describe is free; a query would be an action)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ready((await handle.describe()).typed_search_attributes):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{handle.id} never reached {what}")


async def wait_for_phase(handle: WorkflowHandle[Any, Any], phase: CallPhase) -> None:
    """Wait until the call's `CallPhase` is `phase`."""
    await _wait_for(
        handle,
        lambda found: found.get(CallSearchAttributes.CALL_PHASE) == phase.value,
        f"phase {phase.value}",
    )


async def _started(service: CallService, call_policy: PolicyOverrides) -> WorkflowHandle[Any, Any]:
    call = lifecycle.make_call(0, call_policy)
    await lifecycle.start_call(service, call)
    return lifecycle.handle_of(service.client, call)


async def _typical(
    service: CallService,
    call_policy: PolicyOverrides,
    slot: Callable[[WorkflowHandle[Any, Any], int], Awaitable[None]],
    path: str,
) -> Cost:
    """Two unanswered attempts, then the completion, each sent once `slot(handle, made)` returns."""
    handle = await _started(service, call_policy)
    for made in range(2):
        await slot(handle, made)
        await lifecycle.attempt(handle)
    await slot(handle, 2)
    await lifecycle.complete(handle)
    await handle.result()
    return await cost_of(path, handle)


async def typical(service: CallService) -> Cost:
    """The default policy: each report sent once the slot's time has come (`NextAttemptAt`)."""
    return await _typical(service, SPACED, wait_for_slot, "typical (default policy)")


async def wait_for_slot(handle: WorkflowHandle[Any, Any], attempts: int) -> None:
    """Wait as a dialer does without the `due` phase: until `NextAttemptAt` has passed."""

    def due(found: TypedSearchAttributes) -> bool:
        next_at = found.get(CallSearchAttributes.NEXT_ATTEMPT_AT)
        made = found.get(CallSearchAttributes.CALL_ATTEMPTS)
        return made == attempts and next_at is not None and next_at <= datetime.now(UTC)

    await _wait_for(handle, due, f"its slot after {attempts} attempts")


async def typical_with_due(service: CallService) -> Cost:
    async def due(handle: WorkflowHandle[Any, Any], made: int) -> None:
        await wait_for_phase(handle, CallPhase.DUE)

    return await _typical(service, SPACED_DUE, due, "typical, policy duePhase = true")


async def typical_no_waits(service: CallService) -> Cost:
    call = lifecycle.make_call(1, lifecycle.NO_WAIT)
    await lifecycle.typical_path(service, call)
    return await cost_of("typical, no waits", lifecycle.handle_of(service.client, call))


async def cancelled(service: CallService) -> Cost:
    handle = await _started(service, lifecycle.WAITING)
    await wait_for_phase(handle, CallPhase.SCHEDULED)
    await handle.execute_update(CANCEL, CancelSignal(reason="no longer wanted"))
    await handle.result()
    return await cost_of("cancelled while waiting", handle)


async def expired_by_attempts(service: CallService) -> Cost:
    handle = await _started(service, BY_ATTEMPTS)
    await lifecycle.attempt(handle)
    await lifecycle.attempt(handle)
    await handle.result()
    return await cost_of("expired by attempts (2)", handle)


async def expired_by_deadline(service: CallService) -> Cost:
    handle = await _started(service, BY_DEADLINE)
    await handle.result()
    return await cost_of("expired by deadline (3 s)", handle)


async def waiting(service: CallService, seconds: float) -> tuple[Cost, Cost]:
    """A call waiting for its first slot, counted before and after `seconds` of silence."""
    handle = await _started(service, lifecycle.WAITING)
    await wait_for_phase(handle, CallPhase.SCHEDULED)
    before = await cost_of("waiting: first slot days away", handle)
    await asyncio.sleep(seconds)
    after = await cost_of(f"waiting: {seconds:g} s later", handle)
    await handle.signal(CANCEL, CancelSignal(reason="benchmark done"))
    return before, after


async def measure(stack: Stack, wait_seconds: float) -> dict[str, Any]:
    """Run every path at once on a started stack (worker running)."""
    service = CallService(stack.client)
    paths: list[Callable[[CallService], Awaitable[Cost]]] = [
        typical,
        typical_with_due,
        typical_no_waits,
        cancelled,
        expired_by_attempts,
        expired_by_deadline,
    ]
    waits = asyncio.create_task(waiting(service, wait_seconds))
    costs = list(await asyncio.gather(*(path(service) for path in paths)))
    before, after = await waits
    return {"costs": costs, "waitBefore": before, "waitAfter": after, "waitSeconds": wait_seconds}


def result_of(figures: dict[str, Any]) -> Result:
    """The printed result of a `measure` run."""
    costs: list[Cost] = figures["costs"]
    before: Cost = figures["waitBefore"]
    after: Cost = figures["waitAfter"]
    typical_cost = costs[0]
    idle_events = after.events - before.events
    idle_actions = after.total - before.total
    result = Result(
        name="cost", title="history events and billable actions per call, from real histories"
    )
    result.figure("typical_vs_naive_polling", typical_cost.total_la_per_task / NAIVE_ACTIONS, "x")
    result.figure(
        "typical_actions", typical_cost.total_la_per_task, "actions", at_most(GOAL_ACTIONS), 0
    )
    result.figure("typical_events", typical_cost.events, "events", at_most(GOAL_EVENTS), 0)
    result.figure("waiting_added_actions", idle_actions, "actions", at_most(0), 0)
    result.figure("waiting_added_events", idle_events, "events", at_most(0), 0)
    for key, cost in zip(PATH_KEYS[1:], costs[1:], strict=True):
        result.figure(f"{key}_actions", cost.total_la_per_task, "actions", digits=0)
    result.figure("waiting_actions", before.total_la_per_task, "actions", digits=0)
    for cost in [*costs, before, after]:
        parts = ", ".join(f"{kind} {n}" for kind, n in sorted(cost.actions.items()))
        result.add(
            cost.path,
            f"{cost.total_la_per_task} actions",
            f"{cost.events} events, {cost.bytes / 1024:.1f} KiB",
            f"{parts}; each local activity counted: {cost.total}; phase {cost.phase}",
        )
    result.add(
        f"waiting {figures['waitSeconds']:g} s, no message",
        f"+{idle_actions} actions",
        f"+{idle_events} events",
        "one durable timer; nothing happens until it fires or a message arrives",
    )
    result.add(
        "naive: poll every 15 min for 3 days",
        f"{NAIVE_ACTIONS} actions",
        f"{NAIVE_POLLS} polls",
        "a timer and an activity per poll (computed)",
    )
    with_due = costs[1]
    result.notes.append(
        f"Goal judged on the default policy. With duePhase = true (each slot shown as `due`): "
        f"{with_due.total_la_per_task} actions, {with_due.events} events: "
        f"{'within' if with_due.within_goal else 'outside'} the goal."
    )
    result.notes.append(
        "Actions as Temporal Cloud bills them: all local activities of one workflow task count "
        "as one action; the note also gives the count with every local activity counted."
    )
    result.figures = {
        "paths": paths_json([*costs, before, after]),
        "waitSeconds": figures["waitSeconds"],
        "waitingAddedEvents": idle_events,
        "waitingAddedActions": idle_actions,
        "naiveActions": NAIVE_ACTIONS,
    }
    return result


async def run(wait_seconds: float = DEFAULT_WAIT_SECONDS) -> Result:
    """Start a stack (server, sandbox, worker), measure, stop it."""
    async with Stack(worker=True) as stack:
        return result_of(await measure(stack, wait_seconds))


def _parser() -> argparse.ArgumentParser:
    parser = parser_for("bench.cost", __doc__)
    parser.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_SECONDS,
        help="Seconds to watch a waiting call for new events.",
    )
    return parser


if __name__ == "__main__":
    main(_parser(), lambda a: run(a.wait))
