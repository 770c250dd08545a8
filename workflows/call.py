"""`CallWorkflow`: one donor phone call, from its creation in TapRaise to a final state.

The lifecycle, as the `run` method reads:

    creating ──► scheduled ──(slot reached)──► due ──(attempt)──► scheduled …
                                                └──(no report in the window)──► scheduled
    any phase: complete ──► completed · cancel ──► cancelled · attempts/deadline ──► expired

Decisions about *when* come from `workflows.schedule` (pure functions); this module only
sequences create → wait → record → finish, and every TapRaise action is an activity.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple, NoReturn, TypeVar
from uuid import UUID

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from pydantic import TypeAdapter, ValidationError

    from activities.actions import (
        AddAttemptInput,
        CancelCallInput,
        CompleteCallInput,
        ExpireCallInput,
        TapRaiseActivities,
        same_attempt,
    )
    from activities.policy import PolicyActivities, ResolvePolicyInput
    from activities.turn import answer_turn
    from tapraise.errors import describe_validation_error
    from tapraise.models import (
        Attempt,
        Call,
        CallResult,
        CallStatus,
        CallType,
        CancelCallRequest,
        CompleteCallRequest,
        CreateCallRequest,
        ExpireCallRequest,
        to_millis,
    )
    from workflows import errors, retries, schedule
    from workflows.inbox import Action
    from workflows.messages import (
        ATTEMPT,
        CANCEL,
        COMPLETE,
        DEFAULT_TIMEZONE,
        MESSAGE_MODELS,
        RESCHEDULE,
        STATE,
        SYNC,
        WORKFLOW_TYPE,
        ActionAccepted,
        AttemptRecord,
        AttemptSignal,
        CallEvent,
        CallInput,
        CallPhase,
        CallProgress,
        CallResume,
        CallSearchAttributes,
        CallState,
        CancelSignal,
        CompleteSignal,
        PendingMessage,
        RescheduleSignal,
        SyncSignal,
        call_uuid_from_workflow_id,
        to_json,
    )
    from workflows.metrics import (
        UNKNOWN_TYPE,
        CloseReason,
        RefusalReason,
        attempt_recorded,
        call_closed,
        call_started,
        message_refused,
    )
    from workflows.policy import AttemptOutcome, CallPolicy

_Arg = TypeVar("_Arg")
_Result = TypeVar("_Result")

# TapRaise actions are short HTTP calls, run as *local* activities: the result is recorded as one
# marker in the workflow task that asked for it, instead of three activity events and a second
# workflow task, which keeps a whole call under 60 history events. How they are retried, and how
# an outage is sat out, is in `workflows.retries`.
# Time a reported message may lie in the future of the workflow's clock (agents' machines drift).
_CLOCK_TOLERANCE = timedelta(minutes=5)
# Patch: final actions adopt attempts TapRaise holds that the call never recorded.
_ADOPT_UNRECORDED_ATTEMPTS = "adopt-unrecorded-attempts"
# Patch: a start without `requestedAt` takes the run's start time, which a retried first workflow
# task cannot change (its own clock reading could, and the create's look-up would then miss).
_STABLE_REQUESTED_AT = "stable-requested-at"
# Patch: an update is answered in a workflow task of its own, the one an empty activity's
# completion starts, never in the task that resolves a local activity (see `activities.turn`).
# Decided once, in a run's first task: a task that resolves a local activity may be replayed as
# part of an earlier task than the one it ran in live, and a patch asked for there would not be
# found on replay (a non-determinism error). A run with this patch also adopts unrecorded
# attempts without asking for `_ADOPT_UNRECORDED_ATTEMPTS` where it adopts (older runs do).
_ANSWER_IN_OWN_TASK = "answer-in-own-task"
# Patch: a call started together with a `sync` (the follower's signal-with-start) adopts the call
# TapRaise listed instead of creating it again (which TapRaise would answer 409, and a look-up
# after). Decided in a run's first task, as the one above.
_ADOPT_LISTED = "adopt-listed"
# Patch: an update's own action sends its TapRaise requests as regular activities, and the
# update is answered in the workflow task the last one's completion starts, without the empty
# activity (see `activities.turn`): one activity where there were a local activity and the empty
# one. Signals' actions, the create and the expiry stay local activities. Decided in a run's
# first task, as the ones above.
_UPDATE_ACTIONS_AS_ACTIVITIES = "update-actions-as-activities"
# How much of the event log a continued run carries over.
_CARRIED_EVENTS = 100

_STATUS_PHASE = {
    CallStatus.COMPLETED: CallPhase.COMPLETED,
    CallStatus.CANCELLED: CallPhase.CANCELLED,
    CallStatus.EXPIRED: CallPhase.EXPIRED,
}
_EXPIRY_CLOSE = {
    schedule.ExpiryReason.MAX_ATTEMPTS: CloseReason.ATTEMPTS_EXHAUSTED,
    schedule.ExpiryReason.DEADLINE: CloseReason.DEADLINE_PASSED,
    schedule.ExpiryReason.FINAL_OUTCOME: CloseReason.FINAL_OUTCOME,
}


@workflow.defn(name=WORKFLOW_TYPE)
class CallWorkflow:
    """One call to one donor.

    Signals and updates (same names, same camelCase payloads; an update answers at once with
    accept or a reason for rejection, a signal is fire-and-forget and a refused one is logged):
        attempt     {"outcome", "userUuid"?, "attemptAt"?}   an unsuccessful attempt
        complete    {"result": {"resultCode", …}, "userUuid"?}
        reschedule  {"at", "userUuid"?, "notes"?}             the donor asked for a callback
        cancel      {"cancelledAt"?, "reason"?}
    Signal only:
        sync        the call as TapRaise holds it now (from the follower): a call made final in
                    TapRaise closes in that phase, attempts added there are counted
    Query:
        state       the whole `CallState` snapshot
    """

    @workflow.init
    def __init__(self, input: CallInput | dict[str, Any]) -> None:
        # The input is validated here rather than by the data converter: a start with bad input
        # (e.g. from the plain `temporal` CLI) must fail the workflow with a message naming the
        # field, not leave a workflow task retrying forever.
        self._input_error: str | None = None
        # What the start says of the call's type and person; None where it could not be read.
        # A bad input publishes only what it did say, never a placeholder a filter would match.
        self._said: tuple[CallType | None, UUID | None] = (None, None)
        if not isinstance(input, CallInput):
            try:
                input = CallInput.model_validate(input)
            except ValidationError as exc:
                self._input_error = describe_validation_error(exc, whole="input")
                self._said = (
                    _field(input, "type", CallType),
                    _field(input, "personUuid", UUID),
                )
                input = CallInput.model_construct(
                    person_uuid=self._said[1] or UUID(int=0),
                    type=self._said[0] or CallType.VERIFICATION,
                )
        if self._input_error is None:
            self._said = (input.type, input.person_uuid)
        if input.resume is not None and workflow.info().continued_run_id is None:
            # A caller's `resume` would skip the policy and the create: only a continued run
            # of this very call carries one.
            self._input_error = "resume: set only by the call itself when it continues as new"
            input = input.model_copy(update={"resume": None})
        self._input = input
        call_uuid = input.uuid or _uuid_from_id()
        self._record = CallProgress(
            call_uuid=call_uuid,
            requested_at=to_millis(input.requested_at or _start_instant()),
            timezone=input.timezone or DEFAULT_TIMEZONE,
        )
        self._phase = CallPhase.CREATING
        self._policy: CallPolicy | None = None
        self._slot: schedule.Slot | None = None
        self._result: CallResult | None = None
        self._final_reason: str | None = None
        self._close_reason: CloseReason | None = None  # the metrics' word for the final phase
        self._failure: str | None = None
        self._inbox: list[Action] = []
        self._closing: str | None = None  # the final action accepted, while it is carried out
        self._outage: str | None = None  # what TapRaise failed to do, while it is retried
        self._draining = False  # continuing as new: messages are queued for the next run
        self._patched_at_start = workflow.patched(_ANSWER_IN_OWN_TASK)
        self._adopts_listed = input.resume is None and workflow.patched(_ADOPT_LISTED)
        self._updates_by_activity = self._patched_at_start and workflow.patched(
            _UPDATE_ACTIONS_AS_ACTIVITIES
        )
        # The action the main loop carries out now (None while it creates, waits or expires).
        self._carrying: Action | None = None
        # The first task's place in the history: a `sync` delivered in it came with the start.
        self._first_task = workflow.info().get_current_history_length()
        # The call as TapRaise listed it, when a `sync` came with the start (see `_create`).
        self._listed: Call | None = None
        # What the search attributes hold now (a start from our own tools sets them already).
        self._published: dict[str, Any] = {
            pair.key.name: pair.value for pair in workflow.info().typed_search_attributes
        }
        if input.resume is not None:
            self._restore(input.resume)

    # ── the lifecycle ────────────────────────────────────────────────────────────────────────

    @workflow.run
    async def run(self, input: CallInput | dict[str, Any]) -> CallState:
        if workflow.info().continued_run_id is None:
            call_started(self._call_type)
        if self._input_error is not None:
            self._fail(
                f"invalid input: {self._input_error}",
                errors.INVALID_INPUT,
                CloseReason.INVALID_INPUT,
            )
        self._check_identity()
        if self._input.resume is None:  # a continued run has its policy already
            await self._resolve_policy()
        try:
            if not self._record.created:
                await self._create()
            await self._live()
        except _Outgrown:  # a long TapRaise outage outgrew the history: carry on in a new run
            await self._continue_as_new()
        for action in self._inbox:  # accepted while the call closed: refuse, never hang
            self._refuse(action, RefusalReason.FINAL_PHASE, f"call is already {self._phase.value}")
            action.done = True
        self._publish()
        call_closed(self._call_type, self._phase.value, self._close_reason or CloseReason.COMPLETED)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._snapshot()

    async def _live(self) -> None:
        """Carry out messages and wait for slots until the call is final."""
        while not self._phase.is_final:
            if self._inbox:
                self._carrying = self._inbox[0]
                try:
                    await self._carry_out(self._carrying)
                finally:
                    self._carrying = None
                self._inbox.pop(0).done = True
                continue
            if self._history_outgrown():
                await self._continue_as_new()
            decision = self._next_slot()
            if not isinstance(decision, schedule.Slot):
                await self._expire(decision)
                break
            assert self._policy is not None
            if self._policy.due_phase:
                if workflow.now() < decision.at:
                    self._enter(CallPhase.SCHEDULED)
                    if await self._wait_until(decision.at, "next attempt slot"):
                        continue
                self._enter(CallPhase.DUE)
                self._record.callback_at = None  # the callback slot is here; it is used up
            else:  # one timer for the slot and its window together
                self._enter(CallPhase.SCHEDULED)
            if not await self._wait_until(decision.due_until, "attempt window"):
                self._missed_slot()

    async def _resolve_policy(self) -> None:
        """Defaults + call type + organization + the call's overrides, recorded in history."""
        self._publish()
        try:
            self._policy = await workflow.execute_local_activity_method(
                PolicyActivities.resolve_policy,
                ResolvePolicyInput(
                    call_type=self._input.type.value,
                    organization_uuid=self._input.calling_organization_uuid,
                    overrides=self._input.policy,
                    requested_at=self._record.requested_at,
                ),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=retries.POLICY_RETRY,
            )
        except FailureError as err:
            cause = _cause(err)
            kind = cause.type if isinstance(cause, ApplicationError) else errors.INVALID_POLICY
            self._fail(
                f"could not resolve the call's policy: {_reason(cause)}",
                kind,
                CloseReason.INVALID_POLICY,
            )
        self._record.timezone = schedule.effective_timezone(self._policy, self._input.timezone)

    async def _create(self) -> None:
        """Create the call in TapRaise; on 409 adopt the state TapRaise already holds.

        A call the follower started (its `sync` came with the start) is in TapRaise already:
        it adopts what TapRaise listed, and sends nothing.
        """
        listed = self._listed
        if listed is not None:
            self._record.created = True
            self._log("adopted", f"call already in TapRaise as {listed.status.value} (as listed)")
            self._record.attempts = self._records_of(listed.attempts)
            self._take_status(listed)
            return
        try:
            outcome = await self._tapraise(
                "create the call", TapRaiseActivities.create_call, self._create_request()
            )
        except _Refused as refused:
            self._fail(
                f"could not create the call: {refused.reason}",
                refused.kind,
                CloseReason.CREATE_REFUSED,
            )
        self._record.created = True
        call = outcome.call
        if outcome.created:
            self._log("created", "call created in TapRaise")
        else:
            self._log("adopted", f"call already in TapRaise as {call.status.value}")
            self._record.attempts = self._records_of(call.attempts)
        self._take_status(call)

    def _take_status(self, call: Call) -> None:
        """The call's status as TapRaise answered it; a final one closes the call in it."""
        self._record.status = call.status
        if call.status in _STATUS_PHASE:
            self._result = call.result
            self._final_reason = "already final in TapRaise"
            self._close_reason = CloseReason.FINAL_IN_TAPRAISE
            self._enter(_STATUS_PHASE[call.status])

    def _next_slot(self) -> schedule.SlotDecision:
        """The current slot; recomputed only when an attempt, a callback or a miss changed it."""
        if self._slot is not None:
            return self._slot
        assert self._policy is not None
        last = self._record.attempts[-1] if self._record.attempts else None
        decision = schedule.next_slot(
            self._policy,
            tz=self._record.timezone,
            requested_at=self._record.requested_at,
            now=workflow.now(),
            attempts_made=len(self._record.attempts),
            last_outcome=last.outcome if last else None,
            last_attempt_at=last.attempt_at if last else None,
            callback_at=self._record.callback_at,
            missed_slot_at=self._record.missed_slot_at,
        )
        if isinstance(decision, schedule.Slot):
            self._slot = decision
        return decision

    async def _wait_until(self, until: datetime, summary: str) -> bool:
        """One durable timer raced against messages. True when a message arrived first."""
        if self._inbox:
            return True
        self._publish()
        delay = until - workflow.now()
        if delay <= timedelta(0):
            return False
        try:
            await workflow.wait_condition(
                lambda: bool(self._inbox), timeout=delay, timeout_summary=summary
            )
        except TimeoutError:
            return False
        return True

    def _history_outgrown(self) -> bool:
        info = workflow.info()
        assert self._policy is not None
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._policy.history_limit
        )

    async def _continue_as_new(self) -> NoReturn:
        """Carry the call's state, and the messages not yet carried out, into a fresh run.

        Updates waiting for their message are answered "queued" first (an update cannot wait
        across runs); the message itself travels to the next run and is carried out there.
        """
        self._draining = True
        self._queue_waiting()
        await workflow.wait_condition(workflow.all_handlers_finished)
        assert self._policy is not None
        resume = CallResume(
            **dict(self._record),
            policy=self._policy,
            pending=[
                PendingMessage(
                    kind=action.kind,
                    received_at=action.received_at,
                    message=to_json(action.message),
                )
                for action in self._inbox
            ],
        )
        resume.events = [*resume.events[-_CARRIED_EVENTS:], self._event("continued", "new run")]
        self._publish()
        workflow.continue_as_new(self._input.model_copy(update={"resume": resume}))

    def _queue_waiting(self) -> None:
        """Answer the updates waiting for their message: it is queued, to be carried out later."""
        for action in self._inbox:
            action.queued = True

    def _restore(self, resume: CallResume) -> None:
        self._record = CallProgress.of(resume)
        self._policy = resume.policy
        self._phase = CallPhase.SCHEDULED if resume.created else CallPhase.CREATING
        for pending in resume.pending:
            message = MESSAGE_MODELS[pending.kind].model_validate(pending.message)
            self._inbox.append(Action(pending.kind, message, pending.received_at))
            if pending.kind in (COMPLETE, CANCEL):
                self._closing = "completed" if pending.kind == COMPLETE else "cancelled"

    def _missed_slot(self) -> None:
        self._record.missed_slots += 1
        self._record.missed_slot_at = workflow.now()
        self._record.callback_at = None  # a callback slot that lapsed is used up too
        self._slot = None
        self._log("missed", "no report within the attempt window")
        self._enter(CallPhase.SCHEDULED)

    # ── carrying out accepted messages ───────────────────────────────────────────────────────

    async def _carry_out(self, action: Action) -> None:
        if self._phase.is_final:
            self._refuse(action, RefusalReason.FINAL_PHASE, f"call is already {self._phase.value}")
            return
        msg = action.message
        if isinstance(msg, AttemptSignal):
            await self._record_attempt(action, msg)
        elif isinstance(msg, RescheduleSignal):
            self._reschedule(action, msg)
        elif isinstance(msg, CompleteSignal):
            await self._complete(action, msg)
        elif isinstance(msg, SyncSignal):
            self._sync(action, msg)
        else:
            await self._cancel(action, msg)

    def _sync(self, action: Action, call: SyncSignal) -> None:
        """Take what TapRaise holds: attempts added there, and a final state set there.

        Nothing is sent to TapRaise: it holds this already. Attempts are merged by identity,
        so an attempt this call recorded itself, or a change told twice, counts once.
        """
        if self._merge_attempts(call):
            self._slot = None  # the next slot follows the newest attempt, and the count
            self._record.missed_slot_at = None
            self._enter(CallPhase.SCHEDULED)
        if call.status in _STATUS_PHASE:
            self._record.status = call.status
            if call.result is not None:
                self._result = call.result
            self._final_reason = f"{call.status.value} in TapRaise"
            self._close_reason = CloseReason.FINAL_IN_TAPRAISE
            self._log("synced", f"{call.status.value} in TapRaise: closed without a final action")
            self._enter(_STATUS_PHASE[call.status])
        action.detail = f"synced with TapRaise ({call.status.value})"

    async def _record_attempt(self, action: Action, msg: AttemptSignal) -> None:
        attempt_at = to_millis(msg.attempt_at or action.received_at)
        for recorded in self._record.attempts:
            if same_attempt(recorded.attempt_at, recorded.user_uuid, attempt_at, msg.user_uuid):
                action.detail = "duplicate: this attempt is already recorded"
                message_refused(ATTEMPT, RefusalReason.DUPLICATE)
                return
        assert self._policy is not None
        if len(self._record.attempts) >= self._policy.max_attempts:
            # Accepted before the policy was known (the call was being created), or queued.
            self._refuse(
                action,
                RefusalReason.MAX_ATTEMPTS,
                f"the maximum of {self._policy.max_attempts} attempts is reached",
            )
            self._log("ignored", f"attempt: {action.refusal}")
            return
        try:
            call = await self._tapraise(
                "record an attempt",
                TapRaiseActivities.add_attempt,
                AddAttemptInput(
                    call_uuid=self._record.call_uuid,
                    requested_at=self._record.requested_at,
                    attempt_at=attempt_at,
                    user_uuid=msg.user_uuid,
                ),
            )
        except _Refused as refused:
            self._attempt_refused(action, refused, attempt_at)
            return
        self._record.status = call.status
        self._record.attempts.append(
            AttemptRecord(attempt_at=attempt_at, outcome=msg.outcome, user_uuid=msg.user_uuid)
        )
        attempt_recorded(self._call_type, msg.outcome.value)
        self._record.callback_at = None
        self._record.missed_slot_at = None
        self._slot = None
        action.detail = f"attempt {len(self._record.attempts)} recorded ({msg.outcome.value})"
        self._log("attempt", action.detail)
        self._enter(CallPhase.SCHEDULED)

    def _attempt_refused(self, action: Action, refused: _Refused, attempt_at: datetime) -> None:
        """TapRaise refused an attempt for good: refuse it, and keep the call alive if it can be.

        A call TapRaise holds as final is adopted in that state. A 400 on a call still requested,
        for an attempt dated as TapRaise allows, means TapRaise's own maximum of attempts is
        reached (the person's organization sets it, possibly lower than the policy): no attempt
        can follow, so the call's maximum becomes TapRaise's and the call expires.
        """
        if self._adopt_other_final(refused):
            self._refuse(action, RefusalReason.FINAL_PHASE, f"call is already {self._phase.value}")
            return
        refusal = f"TapRaise refused the attempt: {refused.reason}"
        self._refuse(action, RefusalReason.TAPRAISE_REFUSED, refusal)
        self._log("refused", refusal)
        workflow.logger.warning("attempt refused by TapRaise (%s)", refused.kind)
        held = refused.details[0] if refused.details else None
        assert self._policy is not None
        if (
            refused.kind == errors.TAPRAISE_BAD_REQUEST
            and isinstance(held, int)
            and 0 < held < self._policy.max_attempts
            and attempt_at <= workflow.now()
        ):
            self._policy = self._policy.model_copy(update={"max_attempts": held})
            self._slot = None
            self._log("limited", f"TapRaise allows {held} attempts for this call")

    def _reschedule(self, action: Action, msg: RescheduleSignal) -> None:
        assert self._policy is not None
        try:
            at = schedule.validate_callback(
                self._policy,
                self._record.timezone,
                self._record.requested_at,
                msg.at,
                workflow.now(),
            )
        except ValueError as exc:
            self._refuse(action, RefusalReason.INVALID_CALLBACK, f"callback refused: {exc}")
            self._log("ignored", f"callback refused: {exc}")
            return
        self._record.callback_at = at
        self._slot = None
        action.detail = f"callback at {schedule.format_local(at, self._record.timezone)}"
        self._log("rescheduled", action.detail)
        self._enter(CallPhase.SCHEDULED)

    async def _complete(self, action: Action, msg: CompleteSignal) -> None:
        result = msg.result
        if result.completed_at is None:
            result = result.model_copy(update={"completed_at": to_millis(action.received_at)})
        request = CompleteCallRequest(user_uuid=msg.user_uuid, result=result)
        call = await self._finish_in_tapraise(
            action,
            "complete",
            TapRaiseActivities.complete_call,
            CompleteCallInput(
                call_uuid=self._record.call_uuid,
                requested_at=self._record.requested_at,
                request=request,
            ),
        )
        if call is not None:
            self._result = call.result or result
            self._final_reason = f"completed: {result.result_code}"
            self._close_reason = CloseReason.COMPLETED
            self._enter(CallPhase.COMPLETED)
            action.detail = f"call {self._phase.value}"

    async def _cancel(self, action: Action, msg: CancelSignal) -> None:
        request = CancelCallRequest(cancelled_at=to_millis(msg.cancelled_at or action.received_at))
        call = await self._finish_in_tapraise(
            action,
            "cancel",
            TapRaiseActivities.cancel_call,
            CancelCallInput(
                call_uuid=self._record.call_uuid,
                requested_at=self._record.requested_at,
                request=request,
            ),
        )
        if call is not None:
            self._final_reason = f"cancelled: {msg.reason}" if msg.reason else "cancelled"
            self._close_reason = CloseReason.CANCELLED
            self._enter(CallPhase.CANCELLED)
            action.detail = f"call {self._phase.value}"

    async def _expire(self, decision: schedule.Expire) -> None:
        self._closing = "expired"  # a completion or cancellation arriving now is refused
        request = ExpireCallRequest(expired_at=to_millis(workflow.now()))
        try:
            await self._finish(
                "expire",
                TapRaiseActivities.expire_call,
                ExpireCallInput(
                    call_uuid=self._record.call_uuid,
                    requested_at=self._record.requested_at,
                    request=request,
                ),
            )
        except _Refused as refused:
            if self._adopt_other_final(refused):
                return
            # Nothing more can be attempted, and TapRaise will not expire it: close here, and
            # say so where operators look (phase expired, CallStatus still requested).
            workflow.logger.warning("TapRaise refused to expire the call (%s)", refused.kind)
            self._final_reason = f"expired: {decision.reason}; TapRaise refused: {refused.reason}"
            self._log("refused", f"TapRaise refused the expiry: {refused.reason}")
            self._close_reason = _EXPIRY_CLOSE[decision.reason]
            self._enter(CallPhase.EXPIRED)
            return
        self._final_reason = f"expired: {decision.reason}"
        self._close_reason = _EXPIRY_CLOSE[decision.reason]
        self._enter(CallPhase.EXPIRED)

    async def _finish_in_tapraise(
        self,
        action: Action,
        verb: str,
        activity: Callable[[TapRaiseActivities, _Arg], Awaitable[Call]],
        data: _Arg,
    ) -> Call | None:
        """Complete or cancel. A refusal refuses this message only; the call lives on."""
        try:
            return await self._finish(verb, activity, data)
        except _Refused as refused:
            self._closing = None
            if self._adopt_other_final(refused):
                self._refuse(
                    action, RefusalReason.FINAL_PHASE, f"call is already {self._phase.value}"
                )
                return None
            self._refuse(
                action,
                RefusalReason.TAPRAISE_REFUSED,
                f"TapRaise refused to {verb} the call: {refused.reason}",
            )
            self._log("refused", f"TapRaise refused to {verb} the call: {refused.reason}")
            workflow.logger.warning("%s refused by TapRaise (%s)", verb, refused.kind)
            return None

    async def _finish(
        self,
        verb: str,
        activity: Callable[[TapRaiseActivities, _Arg], Awaitable[Call]],
        data: _Arg,
    ) -> Call:
        """Run a final action and take what TapRaise answers."""
        call = await self._tapraise(verb, activity, data)
        self._record.status = call.status
        self._log(verb, f"TapRaise accepted: {verb}")
        self._adopt_unrecorded_attempts(call)
        return call

    def _adopt_other_final(self, refused: _Refused) -> bool:
        """When TapRaise already holds the call in a final state, close the call in it."""
        if refused.kind != errors.CALL_IN_OTHER_FINAL_STATE or not refused.details:
            return False
        status = CallStatus(str(refused.details[0]))
        self._record.status = status
        if len(refused.details) > 1 and isinstance(refused.details[1], dict):
            # What TapRaise holds (older runs were told the status only): its attempts, made
            # there, count; a result entered there is the call's.
            held = Call.model_validate(refused.details[1])
            self._merge_attempts(held)
            if held.result is not None:
                self._result = held.result
        self._final_reason = f"already {status.value} in TapRaise"
        self._close_reason = CloseReason.FINAL_IN_TAPRAISE
        self._log("adopted", self._final_reason)
        self._enter(_STATUS_PHASE[status])
        return True

    def _adopt_unrecorded_attempts(self, call: Call) -> None:
        """Count what TapRaise counts: adopt attempts it holds that this call never recorded.

        One can exist when a worker died after TapRaise applied an attempt and the message that
        asked for it was lost with the worker (an update is kept only once accepted), so the
        final state would otherwise show one attempt less than TapRaise.
        """
        if self._unrecorded(call) and (
            self._patched_at_start or workflow.patched(_ADOPT_UNRECORDED_ATTEMPTS)
        ):
            self._merge_attempts(call)

    def _unrecorded(self, call: Call) -> list[AttemptRecord]:
        """The attempts TapRaise holds that this call has not recorded (matched by identity)."""
        return [
            record
            for record in self._records_of(call.attempts)
            if not any(
                same_attempt(a.attempt_at, a.user_uuid, record.attempt_at, record.user_uuid)
                for a in self._record.attempts
            )
        ]

    def _merge_attempts(self, call: Call) -> int:
        """Record the attempts TapRaise holds that this call missed; how many there were."""
        unrecorded = self._unrecorded(call)
        if unrecorded:
            self._record.attempts.extend(unrecorded)
            self._log(
                "adopted", f"{len(unrecorded)} attempt(s) TapRaise holds and this call missed"
            )
        return len(unrecorded)

    def _records_of(self, attempts: list[Attempt]) -> list[AttemptRecord]:
        """TapRaise's attempts as this call records them (TapRaise keeps no outcome)."""
        return [
            AttemptRecord(
                attempt_at=a.attempt_at or a.created_at or self._record.requested_at,
                user_uuid=a.user_uuid,
                outcome=AttemptOutcome.NO_ANSWER,
            )
            for a in attempts
        ]

    async def _tapraise(
        self,
        verb: str,
        activity: Callable[[TapRaiseActivities, _Arg], Awaitable[_Result]],
        data: _Arg,
    ) -> _Result:
        """Run one TapRaise action until TapRaise answers it.

        Transient failures (5xx, 429, timeouts, 401, a 403 on a later action) are retried for as
        long as it takes: the activity's own round of tries, then more rounds between durable
        timers. An update's own action runs as a regular activity, anything else as a local
        one. A final refusal raises `_Refused`; the caller decides what it means for the call.
        """
        wait = retries.OUTAGE_FIRST_WAIT
        # An update's own action: a regular activity (decided by the action alone, the same live
        # and on replay), so that its answer never falls in a task that resolves a local one.
        action = self._carrying
        regular = self._updates_by_activity and action is not None and action.by_update
        if action is not None:
            # Whatever this ends in (an answer, a refusal), an activity resolved last.
            action.last_by_activity = regular
        while True:
            try:
                if regular:
                    result = await workflow.execute_activity_method(
                        activity,
                        data,
                        start_to_close_timeout=retries.TAPRAISE_TRY,
                        retry_policy=retries.TAPRAISE_RETRY,
                        summary=verb,
                    )
                else:
                    result = await workflow.execute_local_activity_method(
                        activity,
                        data,
                        start_to_close_timeout=retries.TAPRAISE_TRY,
                        retry_policy=retries.TAPRAISE_RETRY,
                    )
            except FailureError as err:
                # A local activity's final failure arrives as the activity's own ApplicationError.
                cause = _cause(err)
                if isinstance(cause, ApplicationError) and (
                    cause.non_retryable or cause.type in errors.NON_RETRYABLE
                ):
                    raise _Refused(cause) from err
                await self._sit_out_outage(verb, _reason(cause), wait)
                wait = min(wait * 2, retries.OUTAGE_LONGEST_WAIT)
                continue
            if self._outage is not None:
                self._outage = None
                self._log("recovered", "TapRaise answers again")
                workflow.logger.info("TapRaise answers again")
            return result

    async def _sit_out_outage(self, verb: str, reason: str, wait: timedelta) -> None:
        """Show the outage, queue waiting messages, and wait before the next round of tries."""
        if self._outage is None:
            workflow.logger.warning(
                "could not %s; retrying until TapRaise answers: %s", verb, reason
            )
            self._log("outage", f"could not {verb}: {reason}")
        self._outage = f"could not {verb}: {reason} (retrying)"
        self._queue_waiting()
        if self._history_outgrown():
            raise _Outgrown()
        self._publish()
        await workflow.sleep(wait, summary="TapRaise outage: next try")

    def _fail(self, failure: str, kind: str | None, reason: CloseReason) -> NoReturn:
        """End in phase `failed`, visible in the UI, with an error that says what went wrong."""
        self._failure = failure
        self._log("failed", failure)
        self._enter(CallPhase.FAILED)
        self._publish()
        call_closed(self._call_type, self._phase.value, reason)
        raise ApplicationError(
            f"Call {self._record.call_uuid}: {failure}", type=kind, non_retryable=True
        )

    # ── messages ─────────────────────────────────────────────────────────────────────────────

    def _refusal(self, kind: str, msg: Any) -> _Refusal | None:
        """Why a message cannot be accepted now, or None. Never changes state.

        Everything TapRaise is known to refuse is refused here, before anything is sent: a time
        in the future or before the call was requested, a result code the policy does not list,
        an attempt beyond the maximum. What TapRaise still refuses later refuses that message
        only (see `_attempt_refused`, `_finish_in_tapraise`).
        """
        if self._phase.is_final:
            return _Refusal(RefusalReason.FINAL_PHASE, f"call is already {self._phase.value}")
        if self._closing is not None:
            return _Refusal(RefusalReason.CLOSING, f"call is already being {self._closing}")
        now = workflow.now()
        if isinstance(msg, AttemptSignal):
            problem = self._time_problem("attemptAt", msg.attempt_at, now)
            if problem:
                return problem
            counted = self._attempts_counted()
            mine = (to_millis(msg.attempt_at or now), msg.user_uuid)
            duplicate = any(same_attempt(*mine, *known) for known in counted)
            if self._policy and not duplicate and len(counted) >= self._policy.max_attempts:
                return _Refusal(
                    RefusalReason.MAX_ATTEMPTS,
                    f"the maximum of {self._policy.max_attempts} attempts is reached",
                )
        elif isinstance(msg, CompleteSignal):
            problem = self._time_problem("result.completedAt", msg.result.completed_at, now)
            if problem:
                return problem
            codes = self._policy.result_codes if self._policy else None
            if codes is not None and msg.result.result_code not in codes:
                return _Refusal(
                    RefusalReason.INVALID_RESULT_CODE,
                    f"result.resultCode {msg.result.result_code!r} is not one of "
                    f"{', '.join(codes)}",
                )
        elif isinstance(msg, RescheduleSignal) and self._policy is not None:
            try:
                schedule.validate_callback(
                    self._policy, self._record.timezone, self._record.requested_at, msg.at, now
                )
            except ValueError as exc:
                return _Refusal(RefusalReason.INVALID_CALLBACK, f"callback refused: {exc}")
        elif isinstance(msg, CancelSignal):
            return self._time_problem("cancelledAt", msg.cancelled_at, now)
        return None

    def _attempts_counted(self) -> list[tuple[datetime, UUID | None]]:
        """The distinct attempts recorded or waiting to be: a duplicate delivery counts once."""
        counted = [(a.attempt_at, a.user_uuid) for a in self._record.attempts]
        for action in self._inbox:
            msg = action.message
            if isinstance(msg, AttemptSignal):
                key = (to_millis(msg.attempt_at or action.received_at), msg.user_uuid)
                if not any(same_attempt(*key, *known) for known in counted):
                    counted.append(key)
        return counted

    def _time_problem(self, field: str, at: datetime | None, now: datetime) -> _Refusal | None:
        """A reported time TapRaise would refuse (a missing one is now, when it is received)."""
        if at is not None and at > now + _CLOCK_TOLERANCE:
            return _Refusal(RefusalReason.TIME_IN_FUTURE, f"{field} is in the future")
        if to_millis(at or now) < self._record.requested_at:
            return _Refusal(
                RefusalReason.BEFORE_REQUESTED,
                f"{field} is before the call was requested "
                f"({self._record.requested_at.isoformat().replace('+00:00', 'Z')})",
            )
        return None

    def _refuse(self, action: Action, reason: RefusalReason, text: str) -> None:
        """An accepted message that could not be carried out after all: say why, and count it."""
        action.refusal = text
        message_refused(action.kind, reason)

    def _accept(self, kind: str, msg: Any, *, by_update: bool = False) -> Action | None:
        refusal = self._refusal(kind, msg)
        if refusal is not None:
            message_refused(kind, refusal.reason)
            workflow.logger.warning("%s ignored: %s", kind, refusal.text)
            self._log("ignored", f"{kind}: {refusal.text}")
            return None
        if kind in (COMPLETE, CANCEL):
            self._closing = "completed" if kind == COMPLETE else "cancelled"
        action = Action(kind=kind, message=msg, received_at=workflow.now(), by_update=by_update)
        # While TapRaise is down, or the call moves to a new run, nobody waits for it.
        action.queued = self._draining or self._outage is not None
        self._inbox.append(action)
        return action

    def _validate(self, kind: str, msg: Any) -> None:
        refusal = self._refusal(kind, msg)
        if refusal is not None:
            message_refused(kind, refusal.reason)
            raise ApplicationError(refusal.text, type=errors.ACTION_REJECTED)

    async def _answer(self, kind: str, msg: Any) -> ActionAccepted:
        action = self._accept(kind, msg, by_update=True)
        if action is None:  # the state changed between validator and handler
            refusal = self._refusal(kind, msg)
            raise ApplicationError(
                refusal.text if refusal else "refused", type=errors.ACTION_REJECTED
            )
        await workflow.wait_condition(lambda: action.done or action.queued)
        if self._patched_at_start and not (action.done and action.last_by_activity):
            # Done without a TapRaise request of its own (a duplicate, a refusal), or queued:
            # this task may be resolving a local activity (the main loop's, for another
            # message); the answer waits for a task of its own.
            await workflow.execute_activity(
                answer_turn,
                start_to_close_timeout=retries.ANSWER_TURN_TIMEOUT,
                retry_policy=retries.ANSWER_TURN_RETRY,
                summary=f"answer the {kind} update",
            )
        if action.refusal is not None:  # e.g. the call expired while this waited its turn
            raise ApplicationError(action.refusal, type=errors.ACTION_REJECTED)
        if not action.done:
            return ActionAccepted(
                phase=self._phase,
                detail=f"{kind} queued: TapRaise is not answering; it is sent when it does",
            )
        return ActionAccepted(phase=self._phase, detail=action.detail)

    @workflow.signal(name=ATTEMPT)
    def attempt_signal(self, msg: AttemptSignal) -> None:
        self._accept(ATTEMPT, msg)

    @workflow.signal(name=COMPLETE)
    def complete_signal(self, msg: CompleteSignal) -> None:
        self._accept(COMPLETE, msg)

    @workflow.signal(name=RESCHEDULE)
    def reschedule_signal(self, msg: RescheduleSignal) -> None:
        self._accept(RESCHEDULE, msg)

    @workflow.signal(name=CANCEL)
    def cancel_signal(self, msg: CancelSignal) -> None:
        self._accept(CANCEL, msg)

    @workflow.signal(name=SYNC)
    def sync_signal(self, msg: SyncSignal) -> None:
        if msg.uuid != self._record.call_uuid:
            workflow.logger.warning("sync ignored: it is about another call")
            return
        if self._phase.is_final:
            return  # told late what this call knows already
        if (
            self._adopts_listed
            and not self._record.created
            and workflow.info().get_current_history_length() == self._first_task
            and msg.person_uuid == self._input.person_uuid
        ):
            # It came with the start (the follower's signal-with-start): the call is in
            # TapRaise, as listed here. Its first task is the same live and on replay.
            self._listed = msg
        self._accept(SYNC, msg)

    @workflow.update(name=ATTEMPT)
    async def attempt_update(self, msg: AttemptSignal) -> ActionAccepted:
        return await self._answer(ATTEMPT, msg)

    @attempt_update.validator
    def _validate_attempt(self, msg: AttemptSignal) -> None:
        self._validate(ATTEMPT, msg)

    @workflow.update(name=COMPLETE)
    async def complete_update(self, msg: CompleteSignal) -> ActionAccepted:
        return await self._answer(COMPLETE, msg)

    @complete_update.validator
    def _validate_complete(self, msg: CompleteSignal) -> None:
        self._validate(COMPLETE, msg)

    @workflow.update(name=RESCHEDULE)
    async def reschedule_update(self, msg: RescheduleSignal) -> ActionAccepted:
        return await self._answer(RESCHEDULE, msg)

    @reschedule_update.validator
    def _validate_reschedule(self, msg: RescheduleSignal) -> None:
        self._validate(RESCHEDULE, msg)

    @workflow.update(name=CANCEL)
    async def cancel_update(self, msg: CancelSignal) -> ActionAccepted:
        return await self._answer(CANCEL, msg)

    @cancel_update.validator
    def _validate_cancel(self, msg: CancelSignal) -> None:
        self._validate(CANCEL, msg)

    @workflow.query(name=STATE)
    def state(self) -> CallState:
        return self._snapshot()

    # ── bookkeeping: phase, search attributes, details, snapshot ─────────────────────────────

    @property
    def _call_type(self) -> str:
        """The `call_type` label: the type the start said, if it said a valid one."""
        said_type = self._said[0]
        return said_type.value if said_type else UNKNOWN_TYPE

    def _check_identity(self) -> None:
        wid = workflow.info().workflow_id
        if wid.startswith("call-") and wid != f"call-{self._record.call_uuid}":
            self._fail(
                f"workflow id {wid} does not match the call uuid {self._record.call_uuid}: "
                f"start it as call-{self._record.call_uuid}",
                errors.INVALID_INPUT,
                CloseReason.INVALID_INPUT,
            )

    def _create_request(self) -> CreateCallRequest:
        i = self._input
        external = i.external_metadata is not None
        return CreateCallRequest(
            uuid=self._record.call_uuid,
            requested_at=self._record.requested_at,
            person_uuid=i.person_uuid,
            type=None if external else i.type,
            external_metadata=i.external_metadata,
            related_case_uuid=i.related_case_uuid,
            calling_organization_uuid=i.calling_organization_uuid,
            requested_by_user_uuid=i.requested_by_user_uuid,
            notes=i.notes,
        )

    def _enter(self, phase: CallPhase) -> None:
        """Change phase; the search attributes follow in one upsert before the next wait."""
        self._phase = phase
        if phase.is_final:
            self._slot = None

    def _event(self, kind: str, detail: str) -> CallEvent:
        return CallEvent(at=workflow.now(), kind=kind, detail=detail)

    def _log(self, kind: str, detail: str) -> None:
        self._record.events.append(self._event(kind, detail))

    def _publish(self) -> None:
        """Upsert the search attributes that changed, and refresh the UI's current details."""
        sa = CallSearchAttributes
        slot = self._slot if self._phase in (CallPhase.SCHEDULED, CallPhase.DUE) else None
        said_type, said_person = self._said
        wanted: dict[str, tuple[Any, Any]] = {
            sa.CALL_PHASE.name: (sa.CALL_PHASE, self._phase.value),
            sa.CALL_STATUS.name: (
                sa.CALL_STATUS,
                self._record.status.value if self._record.status else None,
            ),
            sa.CALL_TYPE.name: (sa.CALL_TYPE, said_type.value if said_type else None),
            sa.PERSON_UUID.name: (sa.PERSON_UUID, str(said_person) if said_person else None),
            sa.CALLING_ORGANIZATION_UUID.name: (
                sa.CALLING_ORGANIZATION_UUID,
                str(self._input.calling_organization_uuid)
                if self._input.calling_organization_uuid
                else None,
            ),
            sa.CALL_ATTEMPTS.name: (sa.CALL_ATTEMPTS, len(self._record.attempts)),
            sa.NEXT_ATTEMPT_AT.name: (sa.NEXT_ATTEMPT_AT, slot.at if slot else None),
        }
        updates: list[SearchAttributeUpdate[Any]] = []
        for name, (key, value) in wanted.items():
            if self._published.get(name, _UNSET) == value:
                continue
            if value is None and name not in self._published:
                continue
            self._published[name] = value
            updates.append(key.value_unset() if value is None else key.value_set(value))
        if updates:
            workflow.upsert_search_attributes(updates)
        workflow.set_current_details(self._details(slot))

    def _details(self, slot: schedule.Slot | None) -> str:
        limit = f"/{self._policy.max_attempts}" if self._policy else ""
        said_type, said_person = self._said
        lines = [
            f"**{said_type.value if said_type else 'unknown type of'}** call to person "
            f"`{said_person or 'unknown'}`",
            f"Phase: **{self._phase.value}** · attempts {len(self._record.attempts)}{limit}",
        ]
        if slot is not None:
            lines.append(f"Next slot: {schedule.format_local(slot.at, self._record.timezone)}")
        if self._final_reason:
            lines.append(f"Outcome: {self._shown_outcome()}")
        if self._failure:
            lines.append(f"Failure: {self._failure}")
        if self._outage:
            lines.append(f"TapRaise: {self._outage}")
        return "  \n".join(lines)

    def _shown_outcome(self) -> str:
        """The outcome for the Web UI's details: without the result code or a cancel reason,
        which come from agents (the `state` query, encrypted, has them)."""
        if self._phase in (CallPhase.COMPLETED, CallPhase.CANCELLED) and self._final_reason:
            if self._final_reason.startswith(f"{self._phase.value}:"):
                return self._phase.value
        return self._final_reason or ""

    def _snapshot(self) -> CallState:
        slot = self._slot if self._phase in (CallPhase.SCHEDULED, CallPhase.DUE) else None
        deadline = (
            schedule.call_deadline(self._policy, self._record.requested_at)
            if self._policy
            else None
        )
        return CallState(
            **self._record.shown(),
            workflow_id=workflow.info().workflow_id,
            type=self._input.type,
            person_uuid=self._input.person_uuid,
            calling_organization_uuid=self._input.calling_organization_uuid,
            phase=self._phase,
            deadline=deadline,
            max_attempts=self._policy.max_attempts if self._policy else None,
            next_slot_at=slot.at if slot else None,
            due_until=slot.due_until if slot else None,
            result=self._result,
            final_reason=self._final_reason,
            failure=self._failure,
            outage=self._outage,
        )


_UNSET = object()


class _Refusal(NamedTuple):
    """Why a message is refused: the metrics' word for it, and the sentence its sender reads."""

    reason: RefusalReason
    text: str


class _Refused(Exception):
    """TapRaise refused an action for good (the activity's final `ApplicationError`)."""

    def __init__(self, cause: ApplicationError) -> None:
        super().__init__(cause.message)
        self.reason = cause.message
        self.kind = cause.type
        self.details = cause.details


class _Outgrown(Exception):
    """The history outgrew its bound while TapRaise was down: continue as new, then retry."""


def _cause(err: BaseException) -> BaseException:
    """The failure inside an activity error.

    A local activity's failure may arrive unwrapped, and a timeout as a bare `TimeoutError` on
    replay where the live run saw it inside an `ActivityError`: both must take the same path.
    """
    if isinstance(err, ActivityError) and err.cause is not None:
        return err.cause
    return err


def _reason(cause: BaseException) -> str:
    return (
        cause.message if isinstance(cause, ApplicationError) else str(cause) or type(cause).__name__
    )


def _start_instant() -> datetime:
    """When a call started without `requestedAt` was requested: the run's start, a fixed value."""
    if workflow.patched(_STABLE_REQUESTED_AT):
        return workflow.info().workflow_start_time
    return workflow.now()


def _field(raw: Any, alias: str, kind: type[_Result]) -> _Result | None:
    """One field of a start input that failed validation as a whole, if that field is valid."""
    if not isinstance(raw, dict) or alias not in raw:
        return None
    try:
        return TypeAdapter(kind).validate_python(raw[alias])
    except ValidationError:
        return None


def _uuid_from_id() -> Any:
    """A call uuid for a start without one: taken from a `call-<uuid>` id, else made here."""
    try:
        return call_uuid_from_workflow_id(workflow.info().workflow_id)
    except ValueError:
        return workflow.uuid4()
