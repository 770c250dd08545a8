"""The fair floor: the typical call's lifecycle written as plainly as possible, with the work that
any implementation of it must do.

`FairFloorWorkflow` has the bare floor's shape (`bench.floor.FloorWorkflow`: two local
activities at the start, then per message one local activity between two durable waits) and
adds what no implementation of the typical path can leave out, done as `CallWorkflow` does it:

- the same TapRaise requests, over the same client (`tapraise.TapRaiseClient`, from the same
  `TAPRAISE_*` settings as the worker) to the same TapRaise: create; per attempt the look-up
  that makes a retried add-attempt safe, then the add-attempt; complete. Six requests, each in a
  local activity, each retry-safe in the plainest way (409 on create or complete means done; an
  attempt already in the call's list is not sent again);
- the same search-attribute upserts as `CallWorkflow` on that path, counted from its history
  (`bench.cost.search_attribute_upserts`): what changed is upserted before each wait and at the
  end, as a call does it. With each message sent once the call waits, that is four upserts:
  `CallPhase, CallStatus, NextAttemptAt` once the call is created, `CallAttempts, NextAttemptAt`
  after each attempt, `CallPhase, CallStatus, NextAttemptAt` on completion; a message that
  arrives before the wait merges two of them, in both workflows alike.

What it leaves out is the project's own: the policy (a no-op local activity stands in, as in
the bare floor), the scheduling rules, the state model and its query, the Web UI's details,
validators, versioning patches, and the empty activity each update's answer waits for. The
throughput benchmark checks its requests and upserts against the real calls' in the same run.

Updates:
    attempt   AttemptSignal    look the call up, add the attempt, upsert; then answered
    complete  CompleteSignal   complete the call, upsert; then answered, and the workflow returns
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from tapraise import ConflictError, TapRaiseClient
    from tapraise.models import (
        AddAttemptRequest,
        CallStatus,
        CompleteCallRequest,
        CreateCallRequest,
        to_millis,
    )
    from workflows.messages import (
        ATTEMPT,
        COMPLETE,
        AttemptSignal,
        CallInput,
        CallPhase,
        CallSearchAttributes,
        CompleteSignal,
    )

FAIR_FLOOR_WORKFLOW_TYPE = "FairFloorWorkflow"
# As long as the bare floor's wait (and the real call's attempt window in the throughput run).
WAIT = timedelta(hours=1)
TRY_TIMEOUT = timedelta(seconds=30)


class FairFloorActivities:
    """The fair floor's TapRaise requests, bound to one client (as the worker's activities are)."""

    def __init__(self, client: TapRaiseClient) -> None:
        self._client = client

    @activity.defn(name="fair_floor_policy")
    async def resolve_policy(self, call_type: str) -> str:
        """Return at once: stands in for the policy, as the bare floor's first activity does."""
        return call_type

    @activity.defn(name="fair_floor_create_call")
    async def create_call(self, request: CreateCallRequest) -> None:
        """`POST /api/v1/calls`; a 409 on a retry means the first try created it."""
        try:
            await self._client.create_call(request)
        except ConflictError:
            pass

    @activity.defn(name="fair_floor_add_attempt")
    async def add_attempt(
        self, call_uuid: uuid.UUID, requested_at: datetime, request: AddAttemptRequest
    ) -> None:
        """Look the call up; send `PUT …/add-attempt` unless it already holds this attempt."""
        call = await self._client.find_call(call_uuid, requested_at)
        if call is None:
            raise ApplicationError(f"call {call_uuid} not found", non_retryable=True)
        if any(recorded.attempt_at == request.attempt_at for recorded in call.attempts):
            return
        await self._client.add_attempt(call_uuid, request)

    @activity.defn(name="fair_floor_complete_call")
    async def complete_call(self, call_uuid: uuid.UUID, request: CompleteCallRequest) -> None:
        """`PUT …/complete`; a 409 on a retry means the first try completed it."""
        try:
            await self._client.complete_call(call_uuid, request)
        except ConflictError:
            pass

    def all(self) -> list[Any]:
        """Every activity of this class, for `Worker(activities=…)`."""
        return [self.resolve_policy, self.create_call, self.add_attempt, self.complete_call]


@workflow.defn(name=FAIR_FLOOR_WORKFLOW_TYPE)
class FairFloorWorkflow:
    """Create the call, then per message: its TapRaise request, its upsert, the answer."""

    def __init__(self) -> None:
        self._inbox: list[AttemptSignal | CompleteSignal] = []
        self._handled = 0
        self._attempts = 0
        self._finished = False
        # Search attributes changed since the last upsert, by name.
        self._changed: dict[str, SearchAttributeUpdate[Any]] = {}

    @workflow.run
    async def run(self, call: CallInput) -> dict[str, Any]:
        assert call.uuid is not None and call.requested_at is not None
        call_uuid, requested_at = call.uuid, to_millis(call.requested_at)
        sa = CallSearchAttributes
        await workflow.execute_local_activity_method(
            FairFloorActivities.resolve_policy, call.type.value, start_to_close_timeout=TRY_TIMEOUT
        )
        await workflow.execute_local_activity_method(
            FairFloorActivities.create_call,
            CreateCallRequest(
                uuid=call_uuid,
                requested_at=requested_at,
                person_uuid=call.person_uuid,
                type=call.type,
            ),
            start_to_close_timeout=TRY_TIMEOUT,
        )
        self._change(
            sa.CALL_PHASE.value_set(CallPhase.DUE.value),
            sa.CALL_STATUS.value_set(CallStatus.REQUESTED.value),
            sa.NEXT_ATTEMPT_AT.value_set(workflow.now()),
        )
        while not self._finished:
            if self._handled == len(self._inbox):
                self._publish()
                try:
                    await workflow.wait_condition(
                        lambda: len(self._inbox) > self._handled, timeout=WAIT
                    )
                except TimeoutError:
                    continue
            message = self._inbox[self._handled]
            if isinstance(message, AttemptSignal):
                await workflow.execute_local_activity_method(
                    FairFloorActivities.add_attempt,
                    args=[
                        call_uuid,
                        requested_at,
                        AddAttemptRequest(
                            user_uuid=message.user_uuid,
                            attempt_at=to_millis(message.attempt_at or workflow.now()),
                        ),
                    ],
                    start_to_close_timeout=TRY_TIMEOUT,
                )
                self._attempts += 1
                self._change(
                    sa.CALL_ATTEMPTS.value_set(self._attempts),
                    sa.NEXT_ATTEMPT_AT.value_set(workflow.now()),
                )
            else:
                await workflow.execute_local_activity_method(
                    FairFloorActivities.complete_call,
                    args=[
                        call_uuid,
                        CompleteCallRequest(user_uuid=message.user_uuid, result=message.result),
                    ],
                    start_to_close_timeout=TRY_TIMEOUT,
                )
                self._change(
                    sa.CALL_PHASE.value_set(CallPhase.COMPLETED.value),
                    sa.CALL_STATUS.value_set(CallStatus.COMPLETED.value),
                    sa.NEXT_ATTEMPT_AT.value_unset(),
                )
                self._finished = True
            self._handled += 1
        self._publish()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return {"messages": self._handled, "attempts": self._attempts}

    def _change(self, *updates: SearchAttributeUpdate[Any]) -> None:
        for update in updates:
            self._changed[update.key.name] = update

    def _publish(self) -> None:
        """Upsert what changed since the last upsert, in one command."""
        if self._changed:
            workflow.upsert_search_attributes(list(self._changed.values()))
            self._changed.clear()

    async def _answer(self, message: AttemptSignal | CompleteSignal) -> dict[str, Any]:
        self._inbox.append(message)
        number = len(self._inbox)
        await workflow.wait_condition(lambda: self._handled >= number)
        return {"accepted": True}

    @workflow.update(name=ATTEMPT)
    async def attempt(self, message: AttemptSignal) -> dict[str, Any]:
        return await self._answer(message)

    @workflow.update(name=COMPLETE)
    async def complete(self, message: CompleteSignal) -> dict[str, Any]:
        return await self._answer(message)
