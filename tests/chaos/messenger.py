"""How an agent's messages reach a call: signals and updates, sent twice where asked."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from starter.service import (
    ActionRejected,
    CallNotFound,
    CallsError,
    CallService,
    TemporalUnavailable,
)
from tests.chaos.config import UNKNOWN_RESULT_CODE
from tests.chaos.ledger import (
    Ledger,
    Refusal,
    Update,
    instant_key,
    now_ms,
    refusal_in_events,
    who_refused,
)
from tests.chaos.retrying import retry
from workflows.errors import ACTION_REJECTED
from workflows.messages import (
    COMPLETE,
    ActionAccepted,
    AttemptSignal,
    CallState,
    CancelSignal,
    CompleteSignal,
)


@dataclass
class Tally:
    """What the agents delivered a second time."""

    duplicate_deliveries: int = 0
    same_id_retries: int = 0
    same_id_concurrent: int = 0


class Messenger:
    """Sends the agents' messages to their calls, through the Temporal client or the tool."""

    def __init__(self, client: Client, until: float, time_budget: float, tally: Tally) -> None:
        self.client = client
        # The agents' tool waits for the workflow's own answer, however long TapRaise takes:
        # two sends of one request id must get the same answer, never a time-out of our own.
        self.tool = CallService(client, update_timeout_seconds=time_budget)
        self.until = until
        self.tally = tally

    def handle(self, ledger: Ledger) -> WorkflowHandle[Any, CallState]:
        return self.client.get_workflow_handle(ledger.workflow_id, result_type=CallState)

    async def send_refused(self, ledger: Ledger) -> None:
        """Send the final action this call's agent sends first knowing it must be refused.

        Then wait until it is refused (an update's answer; for a signal, or an update answered
        "queued" while TapRaise was down, the refusal in the call's events), so that the agent's
        next final action is not refused "already being completed" while this one is carried
        out. The script then goes on: a valid final action, or the call left to expire.
        """
        if ledger.refuse is None:
            return
        name, via, why = ledger.refuse
        message: CompleteSignal | CancelSignal
        if why == "result code":
            message = CompleteSignal.model_validate({"result": {"resultCode": UNKNOWN_RESULT_CODE}})
            refusal = Refusal(name, via, why, "resultCode", UNKNOWN_RESULT_CODE)
        else:
            # An hour ago: before the call was requested, whether stamped or taken at its start.
            at = now_ms() - timedelta(hours=1)
            if name == COMPLETE:
                message = CompleteSignal.model_validate(
                    {"result": {"resultCode": "confirmed", "completedAt": at.isoformat()}}
                )
                refusal = Refusal(name, via, why, "completedAt", instant_key(at))
            else:
                message = CancelSignal(cancelled_at=at, reason="dated before the request")
                refusal = Refusal(name, via, why, "cancelledAt", instant_key(at))
        ledger.refusals.append(refusal)
        if via == "update":
            update = await self.update(
                ledger, name, message, same_id=ledger.same_id, refused_on_purpose=True
            )
            refusal.update = update
            if update.outcome == "rejected":
                refusal.refused_by = who_refused(update.detail)
                return
        else:
            try:
                delivered = await self.signal(ledger, name, message, twice=False)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                delivered = False
            if not delivered:
                refusal.refused_by = "closed"
                return
        refusal.refused_by = await self._await_refusal(ledger, refusal)

    async def _await_refusal(self, ledger: Ledger, refusal: Refusal) -> str | None:
        """Wait until the call's events show the refusal (or the call closed); who refused."""
        handle = self.handle(ledger)
        while time.monotonic() < self.until:
            with contextlib.suppress(Exception):
                state: CallState = await asyncio.wait_for(
                    handle.query("state", result_type=CallState), 10
                )
                seen = refusal_in_events(state, refusal)
                if seen is not None:
                    return seen
            await asyncio.sleep(0.5)
        return None

    async def signal(self, ledger: Ledger, name: str, message: Any, twice: bool) -> bool:
        """Signal the call (twice where asked); False when it had closed and took nothing.

        Only a call a user may close in the TapRaise app can have closed under its agent: for
        any other a closed call is an error.
        """
        handle = self.handle(ledger)
        try:
            await retry(lambda: handle.signal(name, message), self.until)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND or not ledger.app_closes:
                raise
            return False
        if twice:
            self.tally.duplicate_deliveries += 1
            try:
                await retry(lambda: handle.signal(name, message), self.until)
            except RPCError as exc:
                # The first delivery may have closed the call already: Temporal refuses the
                # second one, which is all a duplicate deserves.
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
        return True

    async def update(
        self,
        ledger: Ledger,
        name: str,
        message: Any,
        *,
        same_id: str | None = None,
        refused_on_purpose: bool = False,
    ) -> Update:
        """Send one update (one id, retried under that id across a restart) and record it.

        With `same_id` the agent's tool sends it again under the same id, as a tool that timed
        out or a person who pressed twice does: after the first answer (`sequential`) or while
        the first is in flight (`concurrent`). Half the agents send through the starter's
        `CallService.act(request_id=…)` (what the CLI and the gateway use) and the other half
        through the Temporal client, each with the other for the second send.
        """
        update = Update(
            id=f"{name}-{uuid.uuid4()}", name=name, refused_on_purpose=refused_on_purpose
        )
        if isinstance(message, AttemptSignal) and message.attempt_at is not None:
            update.attempt_at = instant_key(message.attempt_at)
            ledger.unknown_attempts.add(update.attempt_at)
        ledger.updates.append(update)
        first_via, second_via = ("tool", "client") if ledger.index % 2 else ("client", "tool")
        if same_id == "concurrent":
            first, second = await asyncio.gather(
                self._send_update(ledger, update.id, name, message, first_via),
                self._send_update(ledger, update.id, name, message, second_via),
            )
        else:
            first = await self._send_update(ledger, update.id, name, message, first_via)
            second = None
            if same_id == "sequential":
                second = await self._send_update(ledger, update.id, name, message, second_via)
        ledger.record(update, first)
        if second is not None:
            update.repeat = second
            self.tally.same_id_retries += 1
            self.tally.same_id_concurrent += same_id == "concurrent"
        return update

    async def _send_update(
        self, ledger: Ledger, update_id: str, name: str, message: Any, via: str
    ) -> tuple[str, str]:
        """One send of an update under `update_id`: (accepted | rejected | unknown, detail)."""
        if via == "tool":
            return await self._act(ledger, update_id, name, message)
        handle = self.handle(ledger)
        try:
            answer: ActionAccepted = await retry(
                lambda: handle.execute_update(
                    name, message, id=update_id, result_type=ActionAccepted
                ),
                self.until,
            )
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type == ACTION_REJECTED:
                return "rejected", cause.message
            return "unknown", f"update failed: {cause or exc}"
        except RPCError as exc:
            # E.g. the workflow closed before the agent got the answer it waited for.
            return "unknown", str(exc)
        return "accepted", answer.detail

    async def _act(
        self, ledger: Ledger, update_id: str, name: str, message: Any
    ) -> tuple[str, str]:
        """Send through the starter's service, retrying what a restart makes it report."""
        call_uuid = ledger.call.uuid
        assert call_uuid is not None
        delay = 0.2
        while True:
            try:
                answer = await self.tool.act(call_uuid, name, message, request_id=update_id)
                return "accepted", answer.detail
            except ActionRejected as exc:
                return "rejected", str(exc)
            except CallNotFound as exc:
                return "unknown", str(exc)
            except (TemporalUnavailable, RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
                if time.monotonic() > self.until:
                    return "unknown", str(exc)
            except CallsError as exc:
                # "Temporal refused the request": e.g. the workflow task failed with a killed
                # worker; anything else is an answer of its own.
                if not str(exc).startswith("Temporal refused") or time.monotonic() > self.until:
                    return "unknown", str(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
