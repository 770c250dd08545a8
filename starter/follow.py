"""Following TapRaise from the Temporal side: the follower's dispatcher, and its operations.

`TemporalDispatcher` is what the follower's round hands each changed call to (the worker wires
it into `activities.follow.FollowerActivities`). `FollowerService` is what `python -m starter
sync …` does: start the follower (once), ask how it stands, pause, resume, run a round now.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.follow import Delivery, Known
from starter.service import (
    ActionRejected,
    CallsError,
    InvalidInput,
    TemporalUnavailable,
    start_options,
    was_started,
)
from tapraise.models import Call, CallStatus
from workflows.following import (
    FOLLOWER_WORKFLOW_ID,
    FOLLOWER_WORKFLOW_TYPE,
    MIN_INTERVAL,
    PAUSE,
    RESUME,
    RUN_NOW,
    STATUS,
    FollowerInput,
    FollowerStatus,
    FollowScope,
)
from workflows.messages import (
    SYNC,
    WORKFLOW_TYPE,
    CallInput,
    CallSearchAttributes,
    SyncSignal,
    call_uuid_from_workflow_id,
    workflow_id_for,
)

VISIBILITY_BATCH: Final = 100


def call_input_of(call: Call) -> CallInput:
    """The workflow input of a call requested in TapRaise (its own fields, as TapRaise holds
    them): the workflow's create then adopts the call instead of making another."""
    return CallInput(
        uuid=call.uuid,
        person_uuid=call.person_uuid,
        type=call.type,
        requested_at=call.requested_at,
        related_case_uuid=call.related_case_uuid,
        calling_organization_uuid=call.calling_organization_uuid,
        requested_by_user_uuid=call.requested_by_user_uuid,
        notes=call.notes,
    )


class TemporalDispatcher:
    """Hands changed calls to their workflows over one Temporal client."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def known(self, call_uuids: list[UUID]) -> dict[UUID, Known]:
        """What the running workflows of these calls show in their search attributes.

        Visibility trails a workflow by a second or so: a call that changed just now may show
        its state before, and is then told what it knows (which changes nothing).
        """
        shown: dict[UUID, Known] = {}
        for first in range(0, len(call_uuids), VISIBILITY_BATCH):
            batch = call_uuids[first : first + VISIBILITY_BATCH]
            ids = ", ".join(f"'{workflow_id_for(call_uuid)}'" for call_uuid in batch)
            query = f"WorkflowId IN ({ids}) AND ExecutionStatus = 'Running'"
            async for execution in self._client.list_workflows(query):
                attributes = execution.typed_search_attributes
                # No status yet: the call is being created, which is a change of its own.
                status = attributes.get(CallSearchAttributes.CALL_STATUS) or CallStatus.REQUESTED
                attempts = attributes.get(CallSearchAttributes.CALL_ATTEMPTS)
                if attempts is None:
                    continue
                shown[call_uuid_from_workflow_id(execution.id)] = Known(
                    status=CallStatus(status), attempts=attempts
                )
        return shown

    async def dispatch(self, call: Call, adopt: bool, task_queue: str) -> Delivery:
        """Tell the call's running workflow what TapRaise holds (`sync`); with `adopt`, start
        its workflow first when none runs, in one signal-with-start.

        Raises:
            RPCError: Temporal failed (the round fails and is run again).
        """
        message = SyncSignal.model_validate(call.model_dump())
        if adopt:
            call_input = call_input_of(call)
            options = start_options(call_input, task_queue, datetime.now(UTC))
            try:
                handle = await self._client.start_workflow(
                    WORKFLOW_TYPE,
                    call_input,
                    start_signal=SYNC,
                    start_signal_args=[message],
                    **options,
                )
            except WorkflowAlreadyStartedError:
                return Delivery.NOT_RUNNING  # its workflow has ended: the call is settled
            return Delivery.STARTED if was_started(handle) else Delivery.DELIVERED
        try:
            await self._client.get_workflow_handle(workflow_id_for(call.uuid)).signal(SYNC, message)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return Delivery.NOT_RUNNING
            raise
        return Delivery.DELIVERED


class FollowerNotRunning(CallsError):
    """Following was never switched on, or was stopped."""

    kind = "not_found"

    def __init__(self) -> None:
        super().__init__(
            "following TapRaise is not switched on: `python -m starter sync start` switches it on"
        )


def consumer_identifier(call_uuid: UUID) -> str:
    """How TapRaise's mark-processed names the consumer of a call: its workflow id."""
    return workflow_id_for(call_uuid)


class FollowerService:
    """The follower's operations over one Temporal client (`python -m starter sync …`)."""

    def __init__(
        self, client: Client, task_queue: str, workflow_id: str = FOLLOWER_WORKFLOW_ID
    ) -> None:
        self.client = client
        self.task_queue = task_queue
        self.workflow_id = workflow_id

    def _handle(self) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(self.workflow_id)

    async def start(
        self,
        interval: timedelta,
        scope: FollowScope,
        since: datetime | None = None,
    ) -> tuple[bool, FollowerStatus]:
        """Switch following on; a follower already running is left as it is.

        Returns:
            Whether this started it, and how it stands.

        Raises:
            InvalidInput: an interval under a second.
            TemporalUnavailable: Temporal did not answer.
        """
        if interval < MIN_INTERVAL:
            raise InvalidInput([f"interval: at least {MIN_INTERVAL.total_seconds():g} s"])
        follower = FollowerInput(
            interval=interval, since=since, scope=scope, task_queue=self.task_queue
        )
        try:
            handle = await self.client.start_workflow(
                FOLLOWER_WORKFLOW_TYPE,
                follower,
                id=self.workflow_id,
                task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary="follows TapRaise: adopts calls requested there, tells calls "
                "what changed there",
            )
        except RPCError as err:
            raise TemporalUnavailable(f"could not start the follower: {err.message}") from None
        return was_started(handle), await self.status()

    async def status(self) -> FollowerStatus:
        """How the follower stands (its `status` query).

        Raises:
            FollowerNotRunning: following was never switched on (or was terminated).
        """
        try:
            status: FollowerStatus = await self._handle().query(STATUS, result_type=FollowerStatus)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise FollowerNotRunning() from None
            raise TemporalUnavailable(f"the follower did not answer: {err.message}") from None
        return status

    async def act(self, name: str) -> FollowerStatus:
        """Pause, resume, or run a round now (`PAUSE`, `RESUME`, `RUN_NOW`).

        Raises:
            FollowerNotRunning: following is not switched on.
            ActionRejected: the follower refused (e.g. a round asked of a paused follower).
        """
        assert name in (PAUSE, RESUME, RUN_NOW)
        try:
            status: FollowerStatus = await self._handle().execute_update(
                name, result_type=FollowerStatus
            )
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise FollowerNotRunning() from None
            raise TemporalUnavailable(f"the follower did not answer: {err.message}") from None
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            reason = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
            raise ActionRejected(reason) from None
        return status
