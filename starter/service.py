"""What the CLI and the gateway do with calls: start, act, look up and list.

Both entry points parse their input into plain dictionaries and hand them here; this module
validates them with the contract's message models, talks to Temporal and returns typed results.
Errors are `CallsError` subclasses whose `kind` maps onto an exit code or an HTTP status, so that
the CLI and the gateway never decide anything on their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from starter.visibility import QueryError, call_query_clause
from tapraise import CamelModel, validation_problems
from tapraise.models import CallStatus, CallType, to_millis
from workflows.errors import ACTION_REJECTED
from workflows.messages import (
    MESSAGE_MODELS,
    STATE,
    TASK_QUEUE,
    WORKFLOW_TYPE,
    ActionAccepted,
    AttemptSignal,
    CallInput,
    CallPhase,
    CallSearchAttributes,
    CallState,
    Message,
    workflow_id_for,
)

# A fixed namespace for call uuids derived from an external id: the same id always gives the
# same call, so re-sending a CRM export starts nothing twice.
CALL_UUID_NAMESPACE: Final = uuid.UUID("4f6b2a53-7d0e-4c51-9a8e-3b2f1c0d9e7a")

# How long a query may wait for a worker: a closed call's query replays its history on a worker,
# and without one the server would hold the request until its own deadline.
QUERY_TIMEOUT: Final = timedelta(seconds=10)
# An accepted update answers once TapRaise has recorded the action; when TapRaise is slow the
# workflow keeps retrying on its own, and the caller is told so rather than kept waiting.
UPDATE_RESULT_TIMEOUT_SECONDS: Final = 30.0
DEFAULT_CONCURRENCY: Final = 20
DEFAULT_LIST_LIMIT: Final = 50
# An idempotency key becomes a Temporal update id: long enough for any key a tool makes (a
# uuid, a hash, "<tool>:<ticket>:<n>"), short enough to be an id rather than a payload.
REQUEST_ID_MAX_LENGTH: Final = 200
# Where each entry point takes the idempotency key, named as its users know it.
REQUEST_ID_OPTION: Final = "--request-id"
IDEMPOTENCY_KEY_HEADER: Final = "Idempotency-Key"


# ── errors ───────────────────────────────────────────────────────────────────────────────────


class CallsError(Exception):
    """Base of everything this module reports; `kind` names the class of failure."""

    kind: str = "failed"


class InvalidInput(CallsError):
    """The input does not satisfy the contract; nothing was sent to Temporal.

    Attributes:
        problems: One line per problem, each naming the camelCase field.
    """

    kind = "invalid"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class CallNotFound(CallsError):
    """No workflow exists for this call."""

    kind = "not_found"

    def __init__(self, call_uuid: uuid.UUID) -> None:
        super().__init__(f"no call {call_uuid}")
        self.call_uuid = call_uuid


class ActionRejected(CallsError):
    """The workflow refused the action; the message is its reason."""

    kind = "rejected"


class TemporalUnavailable(CallsError):
    """Temporal or a worker did not answer."""

    kind = "unavailable"


# ── input validation ─────────────────────────────────────────────────────────────────────────


def parse_call(data: Mapping[str, Any]) -> CallInput:
    """Validate a call as the CRM sends it (camelCase JSON object).

    Args:
        data: The call's fields by their wire names.

    Returns:
        The validated `CallInput`.

    Raises:
        InvalidInput: with one line per problem, each naming its field.
    """
    try:
        call = CallInput.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidInput(validation_problems(exc)) from None
    check_call(call)
    return call


def check_call(call: CallInput) -> None:
    """The rules the message model cannot express on its own.

    Raises:
        InvalidInput: when the call uuid is not version 4 (TapRaise refuses others, and the
            workflow would only find out when creating the call).
    """
    if call.uuid is not None and call.uuid.version != 4:
        raise InvalidInput(
            [f"uuid: TapRaise accepts only version-4 UUIDs, {call.uuid} is version "
             f"{call.uuid.version}"]
        )  # fmt: skip


def parse_action(name: str, data: Mapping[str, Any]) -> Message:
    """Validate an action payload (camelCase JSON object) for the signal/update `name`.

    Raises:
        InvalidInput: with one line per problem, each naming its field.
        ValueError: when `name` is not one of the contract's actions.
    """
    model = MESSAGE_MODELS.get(name)
    if model is None:
        raise ValueError(f"unknown action {name!r}; expected one of {', '.join(MESSAGE_MODELS)}")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidInput(validation_problems(exc)) from None


def parse_call_uuid(value: str) -> uuid.UUID:
    """A call uuid given on a command line or in a URL (a `call-<uuid>` workflow id is fine too).

    Raises:
        InvalidInput: when `value` is not a UUID.
    """
    try:
        return uuid.UUID(value.strip().removeprefix("call-"))
    except ValueError:
        raise InvalidInput([f"call uuid: {value!r} is not a UUID"]) from None


def derive_call_uuid(external_id: str) -> uuid.UUID:
    """The call uuid for an external id (a CRM id, an external reference), always the same one.

    TapRaise accepts only version-4 UUIDs, so a name-based uuid5 will not do: the uuid is the
    first 16 bytes of sha256(namespace bytes + id), stamped as version 4.

    Args:
        external_id: The id as it appears in the source; surrounding whitespace is ignored.
    """
    digest = hashlib.sha256(CALL_UUID_NAMESPACE.bytes + external_id.strip().encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def request_id_problem(value: str) -> str | None:
    """What is wrong with an idempotency key, or None when it will do.

    A key is printable ASCII (what the HTTP `Idempotency-Key` header may carry: a structured
    field string), 1 to `REQUEST_ID_MAX_LENGTH` characters, surrounding spaces not counted.
    """
    key = value.strip()
    if not key:
        return "must not be empty"
    if len(key) > REQUEST_ID_MAX_LENGTH:
        return f"must be at most {REQUEST_ID_MAX_LENGTH} characters, not {len(key)}"
    if not all(" " <= ch <= "~" for ch in key):
        return "must be printable ASCII (letters, digits, punctuation, spaces)"
    return None


def parse_request_id(value: str | None, source: str = REQUEST_ID_OPTION) -> str | None:
    """An idempotency key as given (`--request-id`, `Idempotency-Key`), checked and trimmed.

    Surrounding spaces are dropped, as HTTP drops them around a header's value, so that the
    CLI and the gateway make the same update id of the same key.

    Args:
        value: The key, or None when none was given.
        source: The option or header it came from, to name in the refusal.

    Raises:
        InvalidInput: naming `source` and what is wrong with the key.
    """
    if value is None:
        return None
    problem = request_id_problem(value)
    if problem is not None:
        raise InvalidInput([f"{source}: {problem}"])
    return value.strip()


def stamp_call(call: CallInput, now: datetime) -> CallInput:
    """The call with its `requestedAt` fixed to `now` (UTC, ms) when the CRM sent none.

    Stamped into the workflow input before the start request, so that every retry of the
    workflow's first task (and every create retried against TapRaise) sees the same instant.
    """
    if call.requested_at is not None:
        return call
    return call.model_copy(update={"requested_at": to_millis(now)})


def stamp_action(message: Message, now: datetime) -> Message:
    """The action with an attempt's `attemptAt` fixed to `now` (UTC, ms) when the tool sent none.

    `attemptAt` (with `userUuid`) is an attempt's identity: stamped where the report is made,
    a re-delivered message carries the same one and the workflow knows it for a duplicate.
    Other actions are returned as they are (the workflow stamps their times).
    """
    if isinstance(message, AttemptSignal) and message.attempt_at is None:
        return message.model_copy(update={"attempt_at": to_millis(now)})
    return message


# ── results ──────────────────────────────────────────────────────────────────────────────────


class StartStatus(StrEnum):
    """What became of one start request."""

    STARTED = "started"
    ALREADY_STARTED = "already started"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class StartResult:
    """One call's start: its workflow, what happened and (when known) its phase."""

    call_uuid: uuid.UUID | None
    status: StartStatus
    phase: CallPhase | None = None
    detail: str = ""

    @property
    def workflow_id(self) -> str | None:
        return workflow_id_for(self.call_uuid) if self.call_uuid else None

    def to_json(self) -> dict[str, Any]:
        """camelCase JSON, as the CLI's `--json` and the gateway print it."""
        body: dict[str, Any] = {
            "workflowId": self.workflow_id,
            "callUuid": str(self.call_uuid) if self.call_uuid else None,
            "status": self.status.value,
        }
        if self.phase is not None:
            body["phase"] = self.phase.value
        if self.detail:
            body["detail"] = self.detail
        return body


@dataclass(frozen=True)
class SignalSent:
    """A fire-and-forget action was delivered to the workflow (not necessarily accepted)."""

    call_uuid: uuid.UUID
    action: str

    def to_json(self) -> dict[str, Any]:
        return {
            "workflowId": workflow_id_for(self.call_uuid),
            "callUuid": str(self.call_uuid),
            "signal": self.action,
            "sent": True,
        }


class CallSummary(CamelModel):
    """One call as visibility lists it (search attributes, no query to the worker).

    camelCase in JSON (times in UTC, ISO 8601 with `Z`), as the CLI's `--json` and the gateway
    print it.
    """

    model_config = ConfigDict(frozen=True)

    workflow_id: str
    execution_status: str
    phase: str | None
    call_status: str | None
    type: str | None
    person_uuid: str | None
    organization_uuid: str | None = Field(alias="callingOrganizationUuid")
    attempts: int | None
    next_attempt_at: datetime | None
    started_at: datetime
    closed_at: datetime | None

    @classmethod
    def from_execution(cls, execution: WorkflowExecution) -> CallSummary:
        sa = execution.typed_search_attributes
        status = execution.status
        return cls(
            workflow_id=execution.id,
            execution_status=status.name.lower() if status is not None else "unknown",
            phase=sa.get(CallSearchAttributes.CALL_PHASE),
            call_status=sa.get(CallSearchAttributes.CALL_STATUS),
            type=sa.get(CallSearchAttributes.CALL_TYPE),
            person_uuid=sa.get(CallSearchAttributes.PERSON_UUID),
            organization_uuid=sa.get(CallSearchAttributes.CALLING_ORGANIZATION_UUID),
            attempts=sa.get(CallSearchAttributes.CALL_ATTEMPTS),
            next_attempt_at=sa.get(CallSearchAttributes.NEXT_ATTEMPT_AT),
            started_at=execution.start_time,
            closed_at=execution.close_time,
        )

    @field_serializer("next_attempt_at", "started_at", "closed_at", when_used="json")
    def _iso(self, t: datetime | None) -> str | None:
        return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ── listing ──────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class ListFilters:
    """Friendly filters over the contract's search attributes; every value is validated.

    Attributes:
        status: `CallStatus` (TapRaise's status).
        phase: `CallPhase`.
        type: `CallType`.
        person: `PersonUuid`.
        org: `CallingOrganizationUuid`.
        due_before: `NextAttemptAt` strictly before this instant.
        query: a visibility query for what the filters do not cover, in the grammar of
            `starter.visibility` (the contract's search attributes and a few of Temporal's);
            it is ANDed in as one parenthesised clause, written back from its parse.
    """

    status: CallStatus | None = None
    phase: CallPhase | None = None
    type: CallType | None = None
    person: uuid.UUID | None = None
    org: uuid.UUID | None = None
    due_before: datetime | None = None
    query: str | None = None

    @classmethod
    def parse(cls, **raw: str | None) -> ListFilters:
        """Filters from strings (CLI options, URL query parameters).

        Raises:
            InvalidInput: naming each filter whose value is not allowed.
        """
        problems: list[str] = []
        values: dict[str, Any] = {}
        parsers: dict[str, Callable[[str], Any]] = {
            "status": CallStatus,
            "phase": CallPhase,
            "type": CallType,
            "person": uuid.UUID,
            "org": uuid.UUID,
            "due_before": _aware_datetime,
            "query": call_query_clause,
        }
        for name, text in raw.items():
            if name not in parsers:
                raise ValueError(f"unknown filter {name!r}")
            if text is None or text == "":
                continue
            try:
                values[name] = parsers[name](text.strip())
            except ValueError as exc:
                problems.append(f"{name.replace('_', '-')}: {_filter_problem(name, text, exc)}")
        if problems:
            raise InvalidInput(problems)
        return cls(**values)

    def to_query(self) -> str:
        """The visibility query, always scoped to the call workflow type."""
        sa = CallSearchAttributes
        clauses = [f"WorkflowType = {_quote(WORKFLOW_TYPE)}"]
        for key, value in (
            (sa.CALL_STATUS, self.status),
            (sa.CALL_PHASE, self.phase),
            (sa.CALL_TYPE, self.type),
            (sa.PERSON_UUID, self.person),
            (sa.CALLING_ORGANIZATION_UUID, self.org),
        ):
            if value is not None:
                clauses.append(f"{key.name} = {_quote(str(value))}")
        if self.due_before is not None:
            instant = self.due_before.astimezone(UTC).isoformat().replace("+00:00", "Z")
            clauses.append(f"{sa.NEXT_ATTEMPT_AT.name} < {_quote(instant)}")
        if self.query:
            # Parsed again here, not trusted: filters may be built without `parse`.
            try:
                clause = call_query_clause(self.query)
            except QueryError as exc:
                raise InvalidInput([f"query: {exc}"]) from None
            clauses.append(f"({clause})")
        return " AND ".join(clauses)


def _aware_datetime(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive")
    return value


def _filter_problem(name: str, text: str, exc: ValueError) -> str:
    if isinstance(exc, QueryError):
        return str(exc)
    choices = {"status": CallStatus, "phase": CallPhase, "type": CallType}
    if name in choices:
        return f"{text!r} is not one of {', '.join(m.value for m in choices[name])}"
    if name in ("person", "org"):
        return f"{text!r} is not a UUID"
    if name == "due_before" and str(exc) == "naive":
        return f"{text!r} has no time zone (write e.g. 2026-11-27T10:00:00+01:00 or …Z)"
    return f"{text!r} is not an ISO 8601 date-time"


def _quote(value: str) -> str:
    # Values reaching here are enum members, UUIDs or timestamps; refusing quotes outright keeps
    # a future caller from smuggling a clause in through a filter value.
    if any(ch in value for ch in "'\"\\"):
        raise InvalidInput([f"filter value {value!r} may not contain quotes or backslashes"])
    return f"'{value}'"


# ── the service ──────────────────────────────────────────────────────────────────────────────


def call_summary_line(call: CallInput, requested_at: datetime) -> str:
    """The Web UI's one-line static summary of a call."""
    when = requested_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{call.type.value} call to person {call.person_uuid}, requested {when}"


def call_details_markdown(call: CallInput) -> str:
    """The Web UI's static details of a call (markdown): one line per fact the call has.

    Identifiers only: the CRM's notes stay in the (encrypted) input, so that no free text about a
    donor is shown to whoever can open the Web UI without the codec server.
    """
    meta = call.external_metadata
    reference = None
    if meta and meta.reference_id:
        reference = f"{meta.application_name or 'external'} `{meta.reference_id}`"
    facts: list[tuple[str, object]] = [
        ("Type", call.type.value),
        ("Person", _code(call.person_uuid)),
        ("Organization", _code(call.calling_organization_uuid)),
        ("Related case", _code(call.related_case_uuid)),
        ("Requested by", _code(call.requested_by_user_uuid)),
        ("External reference", reference),
        ("Time zone", call.timezone),
        ("Notes", "yes (in the input)" if call.notes else None),
    ]
    return "  \n".join(f"**{label}:** {value}" for label, value in facts if value)


def _code(value: object) -> str | None:
    return f"`{value}`" if value else None


def start_options(call: CallInput, task_queue: str, now: datetime) -> dict[str, Any]:
    """What a start request carries besides the input: id, its policies, attributes, summary.

    A running call is reused (USE_EXISTING). A closed one is started again only when its run
    failed (ALLOW_DUPLICATE_FAILED_ONLY): TapRaise refused the create, or an operator
    terminated it; the new run's create adopts whatever TapRaise holds for the call uuid, so a
    second run never makes a second call. A completed, cancelled or expired call stays closed.
    The search attributes and the Web UI's summary and details are set at start, so that a call
    is listed and described before its first workflow task.
    """
    assert call.uuid is not None
    return {
        "id": workflow_id_for(call.uuid),
        "task_queue": task_queue,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        "search_attributes": initial_search_attributes(call),
        "static_summary": call_summary_line(call, call.requested_at or now),
        "static_details": call_details_markdown(call),
    }


def initial_search_attributes(call: CallInput) -> TypedSearchAttributes:
    """The search attributes a call has from its first moment (free in the start request)."""
    sa = CallSearchAttributes
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(sa.CALL_PHASE, CallPhase.CREATING.value),
        SearchAttributePair(sa.CALL_TYPE, call.type.value),
        SearchAttributePair(sa.PERSON_UUID, str(call.person_uuid)),
        SearchAttributePair(sa.CALL_ATTEMPTS, 0),
    ]
    if call.calling_organization_uuid is not None:
        pairs.append(
            SearchAttributePair(sa.CALLING_ORGANIZATION_UUID, str(call.calling_organization_uuid))
        )
    return TypedSearchAttributes(pairs)


def was_started(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether a start with USE_EXISTING (or a signal-with-start) made a new run rather than
    using the running one.

    The server says so in the response's `started`; temporalio 1.35 keeps that
    response on the handle without a public accessor (the handle's `first_execution_run_id` is
    the same either way, so it cannot tell). Without the response, assume a new run.
    """
    response = getattr(handle, "_start_workflow_response", None)
    if response is None:
        return True
    return bool(getattr(response, "started", True))


@dataclass
class CallService:
    """Calls over one Temporal client.

    Attributes:
        client: A client from `starter.connect.connect()` (pydantic data converter).
        task_queue: Where new calls are started.
    """

    client: Client
    task_queue: str = TASK_QUEUE
    update_timeout_seconds: float = UPDATE_RESULT_TIMEOUT_SECONDS
    _clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC), repr=False)

    def _handle(self, call_uuid: uuid.UUID) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(workflow_id_for(call_uuid))

    async def start(self, call: CallInput) -> StartResult:
        """Start the call's workflow, or report the one that already exists.

        A call without a uuid gets a random one, and one without `requestedAt` is stamped with
        now (`stamp_call`). A running call is reused, and a completed, cancelled or expired one
        is not started again: the answer is "already started" with the call's phase. A call
        whose run failed starts a new run (see `start_options`).

        Raises:
            InvalidInput: when the call breaks a rule `check_call` enforces.
            TemporalUnavailable: when Temporal does not answer.
        """
        check_call(call)
        now = self._clock()
        if call.uuid is None:
            call = call.model_copy(update={"uuid": uuid.uuid4()})
        call = stamp_call(call, now)
        assert call.uuid is not None
        try:
            handle = await self.client.start_workflow(
                WORKFLOW_TYPE,
                call,
                **start_options(call, self.task_queue, now),
                result_type=CallState,
            )
        except WorkflowAlreadyStartedError:
            phase = await self.phase(call.uuid)
            return StartResult(call.uuid, StartStatus.ALREADY_STARTED, phase, "call is closed")
        except RPCError as exc:
            raise _rpc_problem(exc) from exc
        if was_started(handle):
            return StartResult(call.uuid, StartStatus.STARTED, CallPhase.CREATING)
        phase = await self.phase(call.uuid)
        return StartResult(call.uuid, StartStatus.ALREADY_STARTED, phase)

    async def start_many(
        self,
        calls: Iterable[CallInput],
        concurrency: int = DEFAULT_CONCURRENCY,
        on_result: Callable[[CallInput, StartResult], None] | None = None,
    ) -> list[StartResult]:
        """Start many calls, at most `concurrency` at a time; one failure stops nothing.

        Args:
            calls: Validated calls, each with a uuid (so that a re-run starts nothing twice).
            concurrency: Upper bound of start requests in flight.
            on_result: Called after each call (e.g. to advance a progress bar).

        Returns:
            One result per call, in the order given.
        """
        todo = list(calls)
        results: list[StartResult | None] = [None] * len(todo)
        pending = iter(range(len(todo)))

        async def lane() -> None:  # a few lanes pull calls in turn: no task per call
            for i in pending:
                call = todo[i]
                try:
                    result = await self.start(call)
                except InvalidInput as exc:
                    result = StartResult(call.uuid, StartStatus.REFUSED, detail=str(exc))
                except CallsError as exc:
                    result = StartResult(call.uuid, StartStatus.FAILED, detail=str(exc))
                results[i] = result
                if on_result is not None:
                    on_result(call, result)

        await asyncio.gather(*(lane() for _ in range(max(1, min(concurrency, len(todo))))))
        return [result for result in results if result is not None]

    async def phase(self, call_uuid: uuid.UUID) -> CallPhase | None:
        """The call's current phase: from the `state` query, else its `CallPhase` attribute.

        The query needs a worker (a closed call is replayed); the search attribute is what the
        workflow last published, good enough when no worker answers in time.
        """
        try:
            return (await self.state(call_uuid)).phase
        except CallNotFound:
            raise
        except CallsError:
            pass
        try:
            description = await self._handle(call_uuid).describe()
        except RPCError:
            return None
        value = description.typed_search_attributes.get(CallSearchAttributes.CALL_PHASE)
        try:
            return CallPhase(value) if value is not None else None
        except ValueError:
            return None

    async def state(self, call_uuid: uuid.UUID) -> CallState:
        """The `state` query of the call (also for closed calls: a worker replays them).

        Raises:
            CallNotFound: no workflow for this call.
            TemporalUnavailable: Temporal or a worker did not answer in time.
        """
        try:
            result: CallState = await self._handle(call_uuid).query(
                STATE, result_type=CallState, rpc_timeout=QUERY_TIMEOUT
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise CallNotFound(call_uuid) from None
            if exc.status == RPCStatusCode.DEADLINE_EXCEEDED:
                raise TemporalUnavailable(
                    f"no worker answered the state query of {workflow_id_for(call_uuid)} within "
                    f"{QUERY_TIMEOUT.seconds} s: is a worker running on the call's task queue?"
                ) from None
            raise _rpc_problem(exc) from exc
        except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as exc:
            raise CallsError(
                f"the state query of {workflow_id_for(call_uuid)} failed: {exc}"
            ) from None
        return result

    async def act(
        self,
        call_uuid: uuid.UUID,
        name: str,
        message: Message,
        request_id: str | None = None,
    ) -> ActionAccepted:
        """Send an action as an update: the workflow accepts it or says why not.

        An attempt without `attemptAt` is stamped with now (`stamp_action`).

        Args:
            call_uuid: The call.
            name: The update (`attempt`, `complete`, `reschedule`, `cancel`).
            message: Its payload.
            request_id: The caller's idempotency key, checked with `parse_request_id`; it is
                the update id, so the same key sent again within the call's run is answered
                with the first one's outcome and changes nothing. None makes a fresh one: such
                a request is new every time it is sent. A key names one request: reused for a
                different action it still answers with the first one's outcome.

        Returns:
            The workflow's acceptance. When TapRaise is slow to confirm, the answer comes after
            `update_timeout_seconds` with the detail that the workflow is still carrying it out.

        Raises:
            CallNotFound: no workflow for this call.
            ActionRejected: the workflow refused it (the message is the workflow's reason), or
                the call is closed.
        """
        handle = self._handle(call_uuid)
        message = stamp_action(message, self._clock())
        try:
            update = await handle.start_update(
                name,
                message,
                id=request_id or str(uuid.uuid4()),
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                result_type=ActionAccepted,
            )
            accepted: ActionAccepted = await asyncio.wait_for(
                update.result(), timeout=self.update_timeout_seconds
            )
            return accepted
        except TimeoutError:
            phase = await self.phase(call_uuid) or CallPhase.CREATING
            return ActionAccepted(
                phase=phase,
                detail=f"{name} accepted; the workflow is still recording it in TapRaise",
            )
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type == ACTION_REJECTED:
                raise ActionRejected(cause.message) from None
            reason = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
            raise CallsError(f"{name} failed: {reason}") from None
        except RPCError as exc:
            raise await self._closed_or_missing(call_uuid, exc) from None

    async def signal(self, call_uuid: uuid.UUID, name: str, message: Message) -> SignalSent:
        """Send an action as a fire-and-forget signal (a refused one is only logged).

        A signal has no id to deduplicate by; an attempt without `attemptAt` is stamped with now
        (`stamp_action`), so that a re-delivery of this signal is known to the workflow as the
        same attempt.

        Raises:
            CallNotFound: no workflow for this call.
            ActionRejected: the call is closed.
        """
        message = stamp_action(message, self._clock())
        try:
            await self._handle(call_uuid).signal(name, message)
        except RPCError as exc:
            raise await self._closed_or_missing(call_uuid, exc) from None
        return SignalSent(call_uuid, name)

    async def _closed_or_missing(self, call_uuid: uuid.UUID, exc: RPCError) -> CallsError:
        """Tell "no such call" from "the call is closed".

        The server says NOT_FOUND for both, and an update that raced the call's closing is
        "aborted by closing workflow": either way the call's own record tells which it is.
        """
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return _rpc_problem(exc)
        try:
            description = await self._handle(call_uuid).describe()
        except RPCError as missing:
            if missing.status == RPCStatusCode.NOT_FOUND:
                return CallNotFound(call_uuid)
            return _rpc_problem(missing)
        if description.status in (None, WorkflowExecutionStatus.RUNNING):
            return _rpc_problem(exc)
        phase = description.typed_search_attributes.get(CallSearchAttributes.CALL_PHASE)
        state = phase or description.status.name.lower()
        return ActionRejected(f"call is already {state}")

    async def list(
        self, filters: ListFilters, limit: int = DEFAULT_LIST_LIMIT
    ) -> tuple[str, list[CallSummary]]:
        """Calls matching `filters`, newest first, at most `limit`.

        Returns:
            The visibility query used, and the calls.

        Raises:
            InvalidInput: when the server refuses the query (e.g. a bad raw `query`).
        """
        query = filters.to_query()
        calls: list[CallSummary] = []
        try:
            async for execution in self.client.list_workflows(query, limit=limit):
                calls.append(CallSummary.from_execution(execution))
        except RPCError as exc:
            if exc.status == RPCStatusCode.INVALID_ARGUMENT:
                raise InvalidInput([f"query: {exc.message}"]) from None
            raise _rpc_problem(exc) from exc
        return query, calls


def _rpc_problem(exc: RPCError) -> CallsError:
    if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
        return TemporalUnavailable(f"Temporal did not answer: {exc.message}")
    return CallsError(f"Temporal refused the request: {exc.message}")


def model_json(model: BaseModel) -> dict[str, Any]:
    """camelCase JSON of a message model, nulls included (a stable shape for scripts)."""
    return model.model_dump(mode="json", by_alias=True)
