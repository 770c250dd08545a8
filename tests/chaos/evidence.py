"""What the sandbox's log and a workflow's history say about one call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from encryption.codec import EncryptionCodec
from encryption.keys import require_keys
from tests.chaos.config import CREDENTIAL_OUTAGE
from tests.chaos.ledger import instant_key
from tests.chaos.retrying import retry
from workflows.messages import CallState


async def update_outcomes(handle: WorkflowHandle[Any, Any]) -> dict[str, dict[str, Any] | None]:
    """Every completed update of a workflow, by id: its ActionAccepted JSON, or None (failed)."""
    outcomes: dict[str, dict[str, Any] | None] = {}
    codec = EncryptionCodec(require_keys())
    history = await handle.fetch_history()
    for event in history.events:
        if event.HasField("workflow_execution_update_completed_event_attributes"):
            attrs = event.workflow_execution_update_completed_event_attributes
            value: dict[str, Any] | None = None
            if attrs.outcome.HasField("success") and attrs.outcome.success.payloads:
                value = json.loads(codec.decrypt(attrs.outcome.success.payloads[0]).data)
            outcomes[attrs.meta.update_id] = value
    return outcomes


# What TapRaise answers a request it refuses for good.
REFUSED: Final = frozenset({400, 403, 404})
_TASK_ENDED_UNFINISHED: Final = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
        EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    }
)


async def first_task_redone(handle: WorkflowHandle[Any, Any], log: list[dict[str, Any]]) -> bool:
    """Whether the call's first workflow task ended unfinished after TapRaise applied the create.

    Then the next worker ran the first task again from the start and found the call in TapRaise
    (a 409): the case a kill right after a create is there to produce.
    """
    created = [r for r in log if r["endpoint"] == "create" and r["status"] == 201]
    if not created:
        return False
    applied_at = datetime.fromisoformat(created[0]["receivedAt"].replace("Z", "+00:00"))
    history = await retry(handle.fetch_history, time.monotonic() + 30)
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            return False
        if event.event_type in _TASK_ENDED_UNFINISHED and (
            event.event_time.ToDatetime(tzinfo=UTC) > applied_at
        ):
            return True
    return False


def carries(body: Any, name: str, value: str) -> bool:
    """Whether a logged request body holds `name` with `value` (an instant by `instant_key`)."""
    if isinstance(body, dict):
        for key, item in body.items():
            if key == name and isinstance(item, str):
                if item == value:
                    return True
                with contextlib.suppress(ValueError):
                    if instant_key(item) == value:
                        return True
            elif carries(item, name, value):
                return True
    elif isinstance(body, list):
        return any(carries(item, name, value) for item in body)
    return False


def same_answer(first: tuple[str, str], second: tuple[str, str]) -> bool:
    """Two answers to one request id agree.

    Equal; or both refusals, the second saying the call has closed since: a refusal by the
    workflow's validator is not recorded, so a send after it is judged afresh.
    """
    if first == second:
        return True
    return first[0] == second[0] == "rejected" and second[1].startswith("call is already")


async def stuck_waits(handle: WorkflowHandle[Any, Any], description: Any) -> list[str]:
    """What a call still open at the end waits on."""
    waits: list[str] = []
    raw = description.raw_description
    for activity in raw.pending_activities:
        waits.append(
            f"activity {activity.activity_type.name} attempt {activity.attempt} "
            f"({activity.last_failure.message or 'no failure'})"
        )
    if raw.HasField("pending_workflow_task"):
        waits.append(f"workflow task attempt {raw.pending_workflow_task.attempt}")
    with contextlib.suppress(Exception):
        state: CallState = await asyncio.wait_for(handle.query("state", result_type=CallState), 10)
        waits.append(
            f"phase {state.phase.value}, attempts {len(state.attempts)}, next slot "
            f"{state.next_slot_at}, due until {state.due_until}, deadline {state.deadline}"
        )
    with contextlib.suppress(Exception):
        history = await handle.fetch_history()
        timers = sum(1 for e in history.events if e.HasField("timer_started_event_attributes"))
        last = [
            EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in history.events[-3:]
        ]
        waits.append(f"{timers} timers started, last events {', '.join(last)}")
        failures = [
            e.workflow_task_failed_event_attributes.failure.message
            for e in history.events
            if e.HasField("workflow_task_failed_event_attributes")
        ]
        if failures:
            waits.append(f"last workflow task failure: {failures[-1]}")
    return waits


# How the sandbox's log names a change made in the TapRaise app: `app:<action>`.
APP_PREFIX: Final = "app:"
# The API requests that change a call, which TapRaise refuses once the call is final.
_CHANGES: Final = frozenset({"add-attempt", "complete", "cancel", "expire"})
_APP_FINALS: Final = frozenset({"complete", "cancel", "expire"})
# The faults that refuse a request before TapRaise looks at the call.
_UNSEEN: Final = frozenset({"500", "503", "429", CREDENTIAL_OUTAGE})


@dataclass
class AppView:
    """What the sandbox's log holds of a call's changes in the TapRaise app.

    Attributes:
        final: The app's change that made the call final (answered 200), or None.
        attempts: The attempts the app added (answered 200), by `attemptAt` (`instant_key`).
        changes: (action, status) of every change made in the app, the request included.
    """

    final: dict[str, Any] | None = None
    attempts: set[str] = field(default_factory=set)
    changes: list[tuple[str, int]] = field(default_factory=list)

    @property
    def final_action(self) -> str | None:
        return None if self.final is None else self.final["endpoint"].removeprefix(APP_PREFIX)


def app_view(log: list[dict[str, Any]]) -> AppView:
    """What the app did to a call, from the call's request log."""
    view = AppView()
    for entry in log:
        endpoint: str = entry["endpoint"]
        if not endpoint.startswith(APP_PREFIX):
            continue
        action, status = endpoint.removeprefix(APP_PREFIX), int(entry["status"])
        view.changes.append((action, status))
        if not 200 <= status < 300:
            continue
        if action in _APP_FINALS:
            view.final = entry
        elif action == "add-attempt" and isinstance(entry["requestBody"], dict):
            view.attempts.add(instant_key(entry["requestBody"]["attemptAt"]))
    return view


def looked_at_after(log: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The API's changes of a call that TapRaise looked at after `entry` (an app change).

    The log is written once a request is answered (applied or refused), so its order is the
    order in which TapRaise decided; a request refused by a fault was never looked at.
    """
    return [
        r
        for r in log
        if r["endpoint"] in _CHANGES and r["id"] > entry["id"] and r["fault"] not in _UNSEEN
    ]
