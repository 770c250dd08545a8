"""`CallWorkflow`: one donor phone call, from its creation in TapRaise to a final state.

The lifecycle, as the `run` method reads:

    creating ──► scheduled ──(slot reached)──► due ──(attempt)──► scheduled …
                                                └──(no report in the window)──► scheduled
    any phase: complete ──► completed · cancel ──► cancelled · attempts/deadline ──► expired

Decisions about *when* come from `workflows.schedule` (pure functions); this module only
sequences create → wait → record → finish, and every TapRaise action is an activity.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NoReturn
from uuid import UUID

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities import errors
    from activities.calls import (
        AddAttemptInput,
        CancelCallInput,
        CompleteCallInput,
        CreateCallOutcome,
        ExpireCallInput,
    )
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
    )
    from workflows import schedule
    from workflows.inbox import Action, Progress
    from workflows.messages import (
        ACTION_REJECTED,
        ATTEMPT,
        CANCEL,
        COMPLETE,
        DEFAULT_TIMEZONE,
        INVALID_INPUT,
        RESCHEDULE,
        STATE,
        WORKFLOW_TYPE,
        ActionAccepted,
        AttemptRecord,
        AttemptSignal,
        CallEvent,
        CallInput,
        CallPhase,
        CallResume,
        CallState,
        CancelSignal,
        CompleteSignal,
        RescheduleSignal,
        SearchAttributes,
        call_uuid_from_workflow_id,
    )
    from workflows.policy import AttemptOutcome, CallPolicy
    from workflows.policy_activity import ResolvePolicyInput

# TapRaise actions are short HTTP calls, run as *local* activities: the result is recorded as one
# marker in the workflow task that asked for it, instead of three activity events and a second
# workflow task, which keeps a whole call under 60 history events. They are retried with backoff
# for up to three days of outage (past a minute, between durable timers); the activities classify
# what is final (400/403/404) so those are never retried.
_TAPRAISE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=sorted(errors.NON_RETRYABLE),
)
_TAPRAISE_TIMEOUTS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "schedule_to_close_timeout": timedelta(days=3),
    "retry_policy": _TAPRAISE_RETRY,
}
# Time a reported message may lie in the future of the workflow's clock (agents' machines drift).
_CLOCK_TOLERANCE = timedelta(minutes=5)
# Patch: final actions adopt attempts TapRaise holds that the call never recorded.
_ADOPT_UNRECORDED_ATTEMPTS = "adopt-unrecorded-attempts"
# How much of the event log a continued run carries over.
_CARRIED_EVENTS = 100

_STATUS_PHASE = {
    CallStatus.COMPLETED: CallPhase.COMPLETED,
    CallStatus.CANCELLED: CallPhase.CANCELLED,
    CallStatus.EXPIRED: CallPhase.EXPIRED,
}


def _ms(t: datetime) -> datetime:
    """TapRaise keeps milliseconds: truncate so that what we send is what we compare later."""
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


@workflow.defn(name=WORKFLOW_TYPE)
class CallWorkflow:
    """One call to one donor.

    Signals and updates (same names, same camelCase payloads; an update answers at once with
    accept or a reason for rejection, a signal is fire-and-forget and a refused one is logged):
        attempt     {"outcome", "userUuid"?, "attemptAt"?}   an unsuccessful attempt
        complete    {"result": {"resultCode", …}, "userUuid"?}
        reschedule  {"at", "userUuid"?, "notes"?}             the donor asked for a callback
        cancel      {"cancelledAt"?, "reason"?}
    Query:
        state       the whole `CallState` snapshot
    """

    @workflow.init
    def __init__(self, input: CallInput | dict[str, Any]) -> None:
        # The input is validated here rather than by the data converter: a start with bad input
        # (e.g. from the plain `temporal` CLI) must fail the workflow with a message naming the
        # field, not leave a workflow task retrying forever.
        self._input_error: str | None = None
        if not isinstance(input, CallInput):
            try:
                input = CallInput.model_validate(input)
            except ValidationError as exc:
                self._input_error = _describe(exc)
                input = CallInput.model_construct(
                    person_uuid=UUID(int=0), type=CallType.VERIFICATION
                )
        self._input = input
        self._call_uuid = input.uuid or _uuid_from_id()
        self._requested_at = _ms(input.requested_at or workflow.now())
        self._timezone = input.timezone or DEFAULT_TIMEZONE
        self._phase = CallPhase.CREATING
        self._status: CallStatus | None = None
        self._policy: CallPolicy | None = None
        self._progress = Progress()
        self._slot: schedule.Slot | None = None
        self._result: CallResult | None = None
        self._final_reason: str | None = None
        self._failure: str | None = None
        self._events: list[CallEvent] = []
        self._inbox: list[Action] = []
        self._closing: str | None = None  # the final action accepted, while it is carried out
        # What the search attributes hold now (a start from our own tools sets them already).
        self._published: dict[str, Any] = {
            pair.key.name: pair.value for pair in workflow.info().typed_search_attributes
        }
        if input.resume is not None:
            self._restore(input.resume)

    # ── the lifecycle ────────────────────────────────────────────────────────────────────────

    @workflow.run
    async def run(self, input: CallInput | dict[str, Any]) -> CallState:
        if self._input_error is not None:
            self._fail(f"invalid input: {self._input_error}", INVALID_INPUT)
        self._check_identity()
        if self._input.resume is None:  # a continued run has both already
            await self._resolve_policy()
            await self._create()
        while not self._phase.is_final:
            if self._inbox:
                await self._carry_out(self._inbox[0])
                self._inbox.pop(0).done = True
                continue
            if self._history_outgrown():
                await self._continue_as_new()
                continue
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
                self._progress.callback_at = None  # the callback slot is here; it is used up
            else:  # one timer for the slot and its window together
                self._enter(CallPhase.SCHEDULED)
            if not await self._wait_until(decision.due_until, "attempt window"):
                self._missed_slot()
        for action in self._inbox:  # accepted while the call closed: refuse, never hang
            action.refusal, action.done = f"call is already {self._phase.value}", True
        self._publish()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._snapshot()

    async def _resolve_policy(self) -> None:
        """Defaults + call type + organization + the call's overrides, recorded in history."""
        self._publish()
        self._policy = await workflow.execute_local_activity(
            "resolve_policy",
            ResolvePolicyInput(
                call_type=self._input.type.value,
                organization_uuid=self._input.calling_organization_uuid,
                overrides=self._input.policy,
                requested_at=self._requested_at,
            ),
            result_type=CallPolicy,
            start_to_close_timeout=timedelta(seconds=10),
        )
        self._timezone = schedule.effective_timezone(self._policy, self._input.timezone)

    async def _create(self) -> None:
        """Create the call in TapRaise; on 409 adopt the state TapRaise already holds."""
        request = self._create_request()
        outcome: CreateCallOutcome = await self._tapraise(
            "create", "create_call", request, CreateCallOutcome
        )
        call = outcome.call
        if outcome.created:
            self._log("created", "call created in TapRaise")
        else:
            self._log("adopted", f"call already in TapRaise as {call.status.value}")
            self._progress.attempts = self._records_of(call.attempts)
        self._status = call.status
        if call.status in _STATUS_PHASE:
            self._result = call.result
            self._final_reason = "already final in TapRaise"
            self._enter(_STATUS_PHASE[call.status])

    def _next_slot(self) -> schedule.SlotDecision:
        """The current slot; recomputed only when an attempt, a callback or a miss changed it."""
        if self._slot is not None:
            return self._slot
        assert self._policy is not None
        last = self._progress.attempts[-1] if self._progress.attempts else None
        decision = schedule.next_slot(
            self._policy,
            tz=self._timezone,
            requested_at=self._requested_at,
            now=workflow.now(),
            attempts_made=len(self._progress.attempts),
            last_outcome=last.outcome if last else None,
            last_attempt_at=last.attempt_at if last else None,
            callback_at=self._progress.callback_at,
            missed_slot_at=self._progress.missed_slot_at,
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

    async def _continue_as_new(self) -> None:
        """Carry the call's state into a fresh run once no message is being handled."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._inbox:
            return  # a message arrived meanwhile: carry it out first
        assert self._policy is not None
        resume = CallResume(
            call_uuid=self._call_uuid,
            requested_at=self._requested_at,
            policy=self._policy,
            timezone=self._timezone,
            status=self._status,
            attempts=self._progress.attempts,
            missed_slots=self._progress.missed_slots,
            missed_slot_at=self._progress.missed_slot_at,
            callback_at=self._progress.callback_at,
            events=[*self._events[-_CARRIED_EVENTS:], self._event("continued", "new run")],
        )
        self._publish()
        workflow.continue_as_new(self._input.model_copy(update={"resume": resume}))

    def _restore(self, resume: CallResume) -> None:
        self._call_uuid = resume.call_uuid
        self._requested_at = resume.requested_at
        self._policy = resume.policy
        self._timezone = resume.timezone
        self._status = resume.status
        self._progress = Progress(
            attempts=list(resume.attempts),
            missed_slot_at=resume.missed_slot_at,
            missed_slots=resume.missed_slots,
            callback_at=resume.callback_at,
        )
        self._events = list(resume.events)
        self._phase = CallPhase.SCHEDULED

    def _missed_slot(self) -> None:
        self._progress.missed_slots += 1
        self._progress.missed_slot_at = workflow.now()
        self._progress.callback_at = None  # a callback slot that lapsed is used up too
        self._slot = None
        self._log("missed", "no report within the attempt window")
        self._enter(CallPhase.SCHEDULED)

    # ── carrying out accepted messages ───────────────────────────────────────────────────────

    async def _carry_out(self, action: Action) -> None:
        if self._phase.is_final:
            action.refusal = f"call is already {self._phase.value}"
            return
        msg = action.message
        if isinstance(msg, AttemptSignal):
            await self._record_attempt(action, msg)
        elif isinstance(msg, RescheduleSignal):
            self._reschedule(action, msg)
        elif isinstance(msg, CompleteSignal):
            await self._complete(action, msg)
        else:
            await self._cancel(action, msg)

    async def _record_attempt(self, action: Action, msg: AttemptSignal) -> None:
        attempt_at = _ms(msg.attempt_at or action.received_at)
        for recorded in self._progress.attempts:
            if recorded.attempt_at == attempt_at and recorded.user_uuid == msg.user_uuid:
                action.detail = "duplicate: this attempt is already recorded"
                return
        call: Call = await self._tapraise(
            "record an attempt",
            "add_attempt",
            AddAttemptInput(
                call_uuid=self._call_uuid,
                requested_at=self._requested_at,
                attempt_at=attempt_at,
                user_uuid=msg.user_uuid,
            ),
            Call,
        )
        self._status = call.status
        self._progress.attempts.append(
            AttemptRecord(attempt_at=attempt_at, outcome=msg.outcome, user_uuid=msg.user_uuid)
        )
        self._progress.callback_at = None
        self._progress.missed_slot_at = None
        self._slot = None
        action.detail = f"attempt {len(self._progress.attempts)} recorded ({msg.outcome.value})"
        self._log("attempt", action.detail)
        self._enter(CallPhase.SCHEDULED)

    def _reschedule(self, action: Action, msg: RescheduleSignal) -> None:
        assert self._policy is not None
        try:
            at = schedule.validate_callback(
                self._policy, self._timezone, self._requested_at, msg.at, workflow.now()
            )
        except ValueError as exc:
            action.refusal = f"callback refused: {exc}"
            self._log("ignored", action.refusal)
            return
        self._progress.callback_at = at
        self._slot = None
        action.detail = f"callback at {schedule.format_local(at, self._timezone)}"
        self._log("rescheduled", action.detail)
        self._enter(CallPhase.SCHEDULED)

    async def _complete(self, action: Action, msg: CompleteSignal) -> None:
        result = msg.result
        if result.completed_at is None:
            result = result.model_copy(update={"completed_at": _ms(action.received_at)})
        request = CompleteCallRequest(user_uuid=msg.user_uuid, result=result)
        call = await self._finish_in_tapraise(
            "complete",
            "complete_call",
            CompleteCallInput(
                call_uuid=self._call_uuid, requested_at=self._requested_at, request=request
            ),
        )
        if call is not None:
            self._result = call.result or result
            self._final_reason = f"completed: {result.result_code}"
            self._enter(CallPhase.COMPLETED)
        if call is None:  # TapRaise already held another final state: adopted, not done
            action.refusal = f"call is already {self._phase.value}"
        action.detail = f"call {self._phase.value}"

    async def _cancel(self, action: Action, msg: CancelSignal) -> None:
        request = CancelCallRequest(cancelled_at=_ms(msg.cancelled_at or action.received_at))
        call = await self._finish_in_tapraise(
            "cancel",
            "cancel_call",
            CancelCallInput(
                call_uuid=self._call_uuid, requested_at=self._requested_at, request=request
            ),
        )
        if call is not None:
            self._final_reason = f"cancelled: {msg.reason}" if msg.reason else "cancelled"
            self._enter(CallPhase.CANCELLED)
        if call is None:  # TapRaise already held another final state: adopted, not done
            action.refusal = f"call is already {self._phase.value}"
        action.detail = f"call {self._phase.value}"

    async def _expire(self, decision: schedule.Expire) -> None:
        self._closing = "expired"  # a completion or cancellation arriving now is refused
        request = ExpireCallRequest(expired_at=_ms(workflow.now()))
        call = await self._finish_in_tapraise(
            "expire",
            "expire_call",
            ExpireCallInput(
                call_uuid=self._call_uuid, requested_at=self._requested_at, request=request
            ),
        )
        if call is not None:
            self._final_reason = f"expired: {decision.reason}"
            self._enter(CallPhase.EXPIRED)

    async def _finish_in_tapraise(self, verb: str, activity: str, data: Any) -> Call | None:
        """Run a final action. If TapRaise already holds another final state, adopt it."""
        try:
            call: Call = await self._tapraise(verb, activity, data, Call, adopt=True)
        except _OtherFinalState as other:
            self._status = other.status
            self._final_reason = f"already {other.status.value} in TapRaise"
            self._log("adopted", self._final_reason)
            self._enter(_STATUS_PHASE[other.status])
            return None
        self._status = call.status
        self._log(verb, f"TapRaise accepted: {verb}")
        self._adopt_unrecorded_attempts(call)
        return call

    def _adopt_unrecorded_attempts(self, call: Call) -> None:
        """Count what TapRaise counts: adopt attempts it holds that this call never recorded.

        One can exist when a worker died after TapRaise applied an attempt and the message that
        asked for it was lost with the worker (an update is kept only once accepted), so the
        final state would otherwise show one attempt less than TapRaise.
        """
        known = {(a.attempt_at, a.user_uuid) for a in self._progress.attempts}
        unrecorded = [
            record
            for record in self._records_of(call.attempts)
            if (record.attempt_at, record.user_uuid) not in known
        ]
        if unrecorded and workflow.patched(_ADOPT_UNRECORDED_ATTEMPTS):
            self._progress.attempts.extend(unrecorded)
            self._log(
                "adopted", f"{len(unrecorded)} attempt(s) TapRaise holds and this call missed"
            )

    def _records_of(self, attempts: list[Attempt]) -> list[AttemptRecord]:
        """TapRaise's attempts as this call records them (TapRaise keeps no outcome)."""
        return [
            AttemptRecord(
                attempt_at=a.attempt_at or a.created_at or self._requested_at,
                user_uuid=a.user_uuid,
                outcome=AttemptOutcome.NO_ANSWER,
            )
            for a in attempts
        ]

    async def _tapraise(
        self, verb: str, activity: str, data: Any, result_type: type[Any], adopt: bool = False
    ) -> Any:
        """Run one TapRaise activity; a final refusal ends the workflow in phase `failed`."""
        try:
            return await workflow.execute_local_activity(
                activity, data, result_type=result_type, **_TAPRAISE_TIMEOUTS
            )
        except (ActivityError, ApplicationError) as err:
            # A local activity's final failure arrives as the activity's own ApplicationError.
            cause = err.cause if isinstance(err, ActivityError) else err
            if (
                adopt
                and isinstance(cause, ApplicationError)
                and cause.type == errors.CALL_IN_OTHER_FINAL_STATE
                and cause.details
            ):
                raise _OtherFinalState(CallStatus(str(cause.details[0]))) from err
            reason = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
            kind = cause.type if isinstance(cause, ApplicationError) else None
            self._fail(f"could not {verb} the call: {reason}", kind)

    def _fail(self, failure: str, kind: str | None) -> NoReturn:
        """End in phase `failed`, visible in the UI, with an error that says what went wrong."""
        self._failure = failure
        self._log("failed", failure)
        self._enter(CallPhase.FAILED)
        self._publish()
        raise ApplicationError(f"Call {self._call_uuid}: {failure}", type=kind, non_retryable=True)

    # ── messages ─────────────────────────────────────────────────────────────────────────────

    def _refusal(self, kind: str, msg: Any) -> str | None:
        """Why a message cannot be accepted now, or None. Never changes state."""
        if self._phase.is_final:
            return f"call is already {self._phase.value}"
        if self._closing is not None:
            return f"call is already being {self._closing}"
        now = workflow.now()
        if isinstance(msg, AttemptSignal):
            if msg.attempt_at is not None:
                if msg.attempt_at > now + _CLOCK_TOLERANCE:
                    return "attemptAt is in the future"
                if msg.attempt_at < self._requested_at:
                    return "attemptAt is before the call was requested"
            pending = sum(1 for a in self._inbox if a.kind == ATTEMPT)
            if self._policy and len(self._progress.attempts) + pending >= self._policy.max_attempts:
                return f"the maximum of {self._policy.max_attempts} attempts is reached"
        elif isinstance(msg, CompleteSignal):
            done_at = msg.result.completed_at
            if done_at is not None and done_at > now + _CLOCK_TOLERANCE:
                return "result.completedAt is in the future"
        elif isinstance(msg, RescheduleSignal) and self._policy is not None:
            try:
                schedule.validate_callback(
                    self._policy, self._timezone, self._requested_at, msg.at, now
                )
            except ValueError as exc:
                return f"callback refused: {exc}"
        elif isinstance(msg, CancelSignal):
            if msg.cancelled_at is not None and msg.cancelled_at > now + _CLOCK_TOLERANCE:
                return "cancelledAt is in the future"
        return None

    def _accept(self, kind: str, msg: Any) -> Action | None:
        reason = self._refusal(kind, msg)
        if reason is not None:
            workflow.logger.warning("%s ignored: %s", kind, reason)
            self._log("ignored", f"{kind}: {reason}")
            return None
        if kind in (COMPLETE, CANCEL):
            self._closing = "completed" if kind == COMPLETE else "cancelled"
        action = Action(kind=kind, message=msg, received_at=workflow.now())
        self._inbox.append(action)
        return action

    def _validate(self, kind: str, msg: Any) -> None:
        reason = self._refusal(kind, msg)
        if reason is not None:
            raise ApplicationError(reason, type=ACTION_REJECTED)

    async def _answer(self, kind: str, msg: Any) -> ActionAccepted:
        action = self._accept(kind, msg)
        if action is None:  # the state changed between validator and handler
            raise ApplicationError(self._refusal(kind, msg) or "refused", type=ACTION_REJECTED)
        await workflow.wait_condition(lambda: action.done)
        if action.refusal is not None:  # e.g. the call expired while this waited its turn
            raise ApplicationError(action.refusal, type=ACTION_REJECTED)
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

    def _check_identity(self) -> None:
        wid = workflow.info().workflow_id
        if wid.startswith("call-") and wid != f"call-{self._call_uuid}":
            self._fail(
                f"workflow id {wid} does not match the call uuid {self._call_uuid}: "
                f"start it as call-{self._call_uuid}",
                INVALID_INPUT,
            )

    def _create_request(self) -> CreateCallRequest:
        i = self._input
        external = i.external_metadata is not None
        return CreateCallRequest(
            uuid=self._call_uuid,
            requested_at=self._requested_at,
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
        self._events.append(self._event(kind, detail))

    def _publish(self) -> None:
        """Upsert the search attributes that changed, and refresh the UI's current details."""
        sa = SearchAttributes
        slot = self._slot if self._phase in (CallPhase.SCHEDULED, CallPhase.DUE) else None
        wanted: dict[str, tuple[Any, Any]] = {
            sa.CALL_PHASE.name: (sa.CALL_PHASE, self._phase.value),
            sa.CALL_STATUS.name: (sa.CALL_STATUS, self._status.value if self._status else None),
            sa.CALL_TYPE.name: (sa.CALL_TYPE, self._input.type.value),
            sa.PERSON_UUID.name: (sa.PERSON_UUID, str(self._input.person_uuid)),
            sa.CALLING_ORGANIZATION_UUID.name: (
                sa.CALLING_ORGANIZATION_UUID,
                str(self._input.calling_organization_uuid)
                if self._input.calling_organization_uuid
                else None,
            ),
            sa.CALL_ATTEMPTS.name: (sa.CALL_ATTEMPTS, len(self._progress.attempts)),
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
        lines = [
            f"**{self._input.type.value}** call to person `{self._input.person_uuid}`",
            f"Phase: **{self._phase.value}** · attempts {len(self._progress.attempts)}{limit}",
        ]
        if slot is not None:
            lines.append(f"Next slot: {schedule.format_local(slot.at, self._timezone)}")
        if self._final_reason:
            lines.append(f"Outcome: {self._final_reason}")
        if self._failure:
            lines.append(f"Failure: {self._failure}")
        return "  \n".join(lines)

    def _snapshot(self) -> CallState:
        slot = self._slot if self._phase in (CallPhase.SCHEDULED, CallPhase.DUE) else None
        deadline = (
            schedule.call_deadline(self._policy, self._requested_at) if self._policy else None
        )
        return CallState(
            call_uuid=self._call_uuid,
            workflow_id=workflow.info().workflow_id,
            type=self._input.type,
            person_uuid=self._input.person_uuid,
            calling_organization_uuid=self._input.calling_organization_uuid,
            timezone=self._timezone,
            phase=self._phase,
            status=self._status,
            requested_at=self._requested_at,
            deadline=deadline,
            attempts=list(self._progress.attempts),
            max_attempts=self._policy.max_attempts if self._policy else None,
            missed_slots=self._progress.missed_slots,
            next_slot_at=slot.at if slot else None,
            due_until=slot.due_until if slot else None,
            callback_at=self._progress.callback_at,
            result=self._result,
            final_reason=self._final_reason,
            failure=self._failure,
            events=list(self._events),
        )


_UNSET = object()


class _OtherFinalState(Exception):
    """TapRaise holds the call in a different final state than the one asked for."""

    def __init__(self, status: CallStatus) -> None:
        super().__init__(status.value)
        self.status = status


def _describe(exc: ValidationError) -> str:
    """A pydantic error as one line that names each field (camelCase, as sent)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors()
    )


def _uuid_from_id() -> Any:
    """A call uuid for a start without one: taken from a `call-<uuid>` id, else made here."""
    try:
        return call_uuid_from_workflow_id(workflow.info().workflow_id)
    except ValueError:
        return workflow.uuid4()
