"""Message types of the call workflow: its input, signal/update payloads and its `state` snapshot.

These are the public contract shared by the workflow, the starter CLI and the HTTP gateway. On the
wire every field is camelCase (TapRaise's own names), so a plain
`temporal workflow start --input '{"personUuid": "…", "type": "verification"}'` decodes into
`CallInput`. New fields always get defaults, so that recorded histories keep decoding.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Literal, TypeAlias
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from temporalio.common import SearchAttributeKey

from tapraise.models import (
    Call,
    CallResult,
    CallStatus,
    CallType,
    CamelModel,
    ExternalMetadata,
)
from workflows.policy import AttemptOutcome, CallPolicy, PolicyOverrides, TimeZoneName

TASK_QUEUE: Final = "tapraise-calls"
WORKFLOW_TYPE: Final = "CallWorkflow"
DEFAULT_TIMEZONE: Final = "Europe/Amsterdam"

# Signal, update and query names (the same name serves a signal and its update).
ATTEMPT: Final = "attempt"
COMPLETE: Final = "complete"
RESCHEDULE: Final = "reschedule"
CANCEL: Final = "cancel"
# What TapRaise holds now, told by the follower (signal only): the call as TapRaise returns it.
SYNC: Final = "sync"
STATE: Final = "state"

# How long the free text of a call and of its messages may be. Every message is written into the
# call's workflow history (and one still pending travels into a continued run), so one unbounded
# field would let a single message grow a history towards Temporal's limits (2 MB a payload,
# 50 MB a history). Each limit is far above what a CRM or an agent writes, and never looser than
# TapRaise's own where its documentation gives one. A limit applies to what is sent from now on:
# a history that holds a longer value from before it would no longer decode on replay, so a limit
# is never lowered, and the recorded histories (the replay tests) all stay within them.
CALL_NOTES_MAX_LENGTH: Final = 10_000
"""The call's notes for the agent: a CRM may paste a donor's story (as it could before)."""
NOTE_MAX_LENGTH: Final = 2_000
"""An agent's note: a result's notes, a callback's notes, a cancellation's reason."""
RESULT_CODE_MAX_LENGTH: Final = 64
"""TapRaise's own limit of a result code (tapraise-api.md §4.1)."""
EXTERNAL_ID_MAX_LENGTH: Final = 255
"""An external system's names and ids (application, reference, agent, status code): a key of
another system's database, whose key columns are rarely wider."""
STATUS_DESCRIPTION_MAX_LENGTH: Final = 2_000
"""The external status's description: a sentence or two, as a note."""
JSON_MAX_LENGTH: Final = 10_000
"""An object given as JSON (`policy`, `externalMetadata.additionalProperties`), as compact JSON
text: a full policy override with a year of blackout dates is half of it."""


def workflow_id_for(call_uuid: UUID | str) -> str:
    """The one workflow id of a call: `call-<call uuid>`."""
    return f"call-{call_uuid}"


def call_uuid_from_workflow_id(workflow_id: str) -> UUID:
    """Inverse of `workflow_id_for`; raises ValueError for ids that are not ours."""
    if not workflow_id.startswith("call-"):
        raise ValueError(f"not a call workflow id: {workflow_id!r}")
    return UUID(workflow_id.removeprefix("call-"))


class CallPhase(StrEnum):
    """Where a call is in its lifecycle (the `CallPhase` search attribute)."""

    CREATING = "creating"
    SCHEDULED = "scheduled"
    DUE = "due"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_PHASES


_FINAL_PHASES = frozenset(
    {CallPhase.COMPLETED, CallPhase.CANCELLED, CallPhase.EXPIRED, CallPhase.FAILED}
)


class CallSearchAttributes:
    """The contract's search attributes, typed once for workflow, starter and worker checks."""

    CALL_STATUS = SearchAttributeKey.for_keyword("CallStatus")
    CALL_PHASE = SearchAttributeKey.for_keyword("CallPhase")
    CALL_TYPE = SearchAttributeKey.for_keyword("CallType")
    PERSON_UUID = SearchAttributeKey.for_keyword("PersonUuid")
    CALLING_ORGANIZATION_UUID = SearchAttributeKey.for_keyword("CallingOrganizationUuid")
    CALL_ATTEMPTS = SearchAttributeKey.for_int("CallAttempts")
    NEXT_ATTEMPT_AT = SearchAttributeKey.for_datetime("NextAttemptAt")

    ALL: Final = (
        CALL_STATUS,
        CALL_PHASE,
        CALL_TYPE,
        PERSON_UUID,
        CALLING_ORGANIZATION_UUID,
        CALL_ATTEMPTS,
        NEXT_ATTEMPT_AT,
    )


class _Message(CamelModel):
    """camelCase on the wire, snake_case in Python; unknown fields are refused; frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AttemptRecord(_Message):
    """One unsuccessful attempt as recorded in TapRaise."""

    attempt_at: datetime
    outcome: AttemptOutcome
    user_uuid: UUID | None = None


class CallEvent(_Message):
    """One line of the call's event log (shown by `status` and the `state` query)."""

    at: datetime
    kind: str
    detail: str = ""


class PendingMessage(_Message):
    """A message accepted but not yet carried out, carried into a continued run."""

    kind: str
    received_at: datetime
    message: dict[str, Any]


class CallRecord(_Message):
    """What a call knows of itself that both the `state` query (`CallState`) and a continued
    run (`CallResume`) carry: one list of fields, kept once."""

    call_uuid: UUID
    requested_at: datetime
    timezone: str = DEFAULT_TIMEZONE
    status: CallStatus | None = None
    attempts: list[AttemptRecord] = Field(default_factory=list)
    missed_slots: int = 0
    callback_at: datetime | None = None
    events: list[CallEvent] = Field(default_factory=list)

    def shown(self) -> dict[str, Any]:
        """The fields a `CallState` shows of this record."""
        return {name: getattr(self, name) for name in CallRecord.model_fields}


class CallProgress(CallRecord):
    """The call's state as the workflow holds it (changed in place): the record, and what only
    the scheduling needs. A new field is one line here, and travels into the next run."""

    model_config = ConfigDict(frozen=False)

    created: bool = False  # TapRaise holds the call
    missed_slot_at: datetime | None = None  # cleared by the next attempt

    @classmethod
    def of(cls, resume: CallResume) -> CallProgress:
        """The progress a continued run starts from (lists are copied)."""
        return CallProgress(**{name: getattr(resume, name) for name in CallProgress.model_fields})


class CallResume(CallProgress):
    """What a call carries into a new run when its history outgrew the policy's bound.

    A call may continue as new before it is created in TapRaise (`created` false: a long
    TapRaise outage), and with messages it accepted but could not carry out yet (`pending`).
    """

    policy: CallPolicy
    created: bool = True  # runs continued before `created` was carried were all created
    pending: list[PendingMessage] = Field(default_factory=list)


def _json_length(value: Any) -> int:
    """The length of `value` as compact JSON text (a model as it would be sent).

    Raises:
        ValueError: when `value` is nested too deeply to be written at all.
    """
    if isinstance(value, BaseModel):
        return len(value.model_dump_json())
    try:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _revalidated(value: Any, model: type[BaseModel], bounded: type[BaseModel]) -> Any:
    """TapRaise's own `model` (as Python callers build it) as data, to be checked as `bounded`."""
    if isinstance(value, model) and not isinstance(value, bounded):
        return value.model_dump(exclude_unset=True)
    return value


def _check_json_length(value: Any) -> None:
    """Refuse an object (or the JSON string holding one) longer than `JSON_MAX_LENGTH`.

    Measured before the value is parsed or validated, so that an oversized one costs no more
    than its measuring.
    """
    length = len(value) if isinstance(value, str) else _json_length(value)
    if length > JSON_MAX_LENGTH:
        raise ValueError(
            f"must be at most {JSON_MAX_LENGTH} characters as compact JSON, not {length}"
        )


class ResultInput(CallResult):
    """A call's result as the agent's tooling reports it: TapRaise's result object, bounded."""

    result_code: str = Field(min_length=1, max_length=RESULT_CODE_MAX_LENGTH)
    notes: str | None = Field(default=None, max_length=NOTE_MAX_LENGTH)


class ExternalMetadataInput(ExternalMetadata):
    """The external system of a call as the CRM gives it: TapRaise's object, bounded."""

    application_name: str | None = Field(default=None, max_length=EXTERNAL_ID_MAX_LENGTH)
    reference_id: str | None = Field(default=None, max_length=EXTERNAL_ID_MAX_LENGTH)
    agent_reference_id: str | None = Field(default=None, max_length=EXTERNAL_ID_MAX_LENGTH)
    status_code: str | None = Field(default=None, max_length=EXTERNAL_ID_MAX_LENGTH)
    status_description: str | None = Field(default=None, max_length=STATUS_DESCRIPTION_MAX_LENGTH)

    @field_validator("additional_properties", mode="before")
    @classmethod
    def _bounded_properties(cls, value: Any) -> Any:
        # Runs before the inherited validator that parses a JSON string.
        _check_json_length(value)
        return value


class CallInput(_Message):
    """The workflow's input: one call as the CRM asked for it (TapRaise's field names)."""

    person_uuid: UUID
    type: CallType
    uuid: UUID | None = None
    requested_at: AwareDatetime | None = None
    related_case_uuid: UUID | None = None
    calling_organization_uuid: UUID | None = None
    requested_by_user_uuid: UUID | None = None
    notes: str | None = Field(default=None, max_length=CALL_NOTES_MAX_LENGTH)
    external_metadata: ExternalMetadataInput | None = None
    timezone: TimeZoneName | None = None
    policy: PolicyOverrides | None = None
    # Set only by the workflow itself when it continues as new: a first run refuses it.
    resume: CallResume | None = None

    @field_validator("policy", mode="before")
    @classmethod
    def _bounded_policy(cls, value: Any) -> Any:
        # One bound for every list and string a policy override holds.
        _check_json_length(value)
        return value

    @field_validator("external_metadata", mode="before")
    @classmethod
    def _bounded_metadata(cls, value: Any) -> Any:
        return _revalidated(value, ExternalMetadata, ExternalMetadataInput)

    @model_validator(mode="after")
    def _external_calls_are_verifications(self) -> CallInput:
        # TapRaise makes every externally managed call a verification call (it refuses `type`).
        if self.external_metadata is not None and self.type != CallType.VERIFICATION:
            raise ValueError(
                "externalMetadata is only possible for verification calls: TapRaise records "
                "externally managed calls as verification"
            )
        return self


class AttemptSignal(_Message):
    """An unsuccessful attempt reported by the agent's tooling."""

    outcome: AttemptOutcome
    user_uuid: UUID | None = None
    attempt_at: AwareDatetime | None = None


class CompleteSignal(_Message):
    """The call reached the donor; carries TapRaise's result object."""

    result: ResultInput
    user_uuid: UUID | None = None

    @field_validator("result", mode="before")
    @classmethod
    def _bounded_result(cls, value: Any) -> Any:
        return _revalidated(value, CallResult, ResultInput)


class RescheduleSignal(_Message):
    """The donor asked to be called back at a given time."""

    at: AwareDatetime
    user_uuid: UUID | None = None
    notes: str | None = Field(default=None, max_length=NOTE_MAX_LENGTH)


class CancelSignal(_Message):
    """The call is no longer wanted."""

    cancelled_at: AwareDatetime | None = None
    reason: str | None = Field(default=None, max_length=NOTE_MAX_LENGTH)


class SyncSignal(Call):
    """The call as TapRaise returns it now (`sync`): changed in TapRaise, e.g. in its app.

    A call completed, cancelled or expired there closes in that phase without a final action;
    attempts added there count towards the maximum and move the next slot; a result entered
    there is kept. Its texts are bounded as the same fields are everywhere else.
    """

    notes: str | None = Field(default=None, max_length=CALL_NOTES_MAX_LENGTH)
    result: ResultInput | None = None
    external_metadata: ExternalMetadataInput | None = None

    @field_validator("result", mode="before")
    @classmethod
    def _bounded_result(cls, value: Any) -> Any:
        return _revalidated(value, CallResult, ResultInput)

    @field_validator("external_metadata", mode="before")
    @classmethod
    def _bounded_metadata(cls, value: Any) -> Any:
        return _revalidated(value, ExternalMetadata, ExternalMetadataInput)


Message: TypeAlias = AttemptSignal | CompleteSignal | RescheduleSignal | CancelSignal | SyncSignal
"""Any message the call takes (the same payload serves a signal and its update; `sync` is a
signal only)."""

MESSAGE_MODELS: Final[dict[str, type[Message]]] = {
    ATTEMPT: AttemptSignal,
    COMPLETE: CompleteSignal,
    RESCHEDULE: RescheduleSignal,
    CANCEL: CancelSignal,
    SYNC: SyncSignal,
}


class ActionAccepted(_Message):
    """What an update returns when the workflow accepted the action."""

    accepted: Literal[True] = True
    phase: CallPhase
    detail: str = ""


class CallState(CallRecord):
    """The whole snapshot returned by the `state` query: the record and what follows from it.

    Unknown fields are ignored, so that a reader keeps working when a newer worker adds one
    (fields are only ever added).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    workflow_id: str
    type: CallType
    person_uuid: UUID
    calling_organization_uuid: UUID | None = None
    phase: CallPhase
    deadline: datetime | None = None
    max_attempts: int | None = None
    next_slot_at: datetime | None = None
    due_until: datetime | None = None
    result: CallResult | None = None
    final_reason: str | None = None
    failure: str | None = None
    # Set while TapRaise does not answer (or refuses our credentials): what failed, retried.
    outage: str | None = None

    @property
    def attempts_made(self) -> int:
        return len(self.attempts)


def to_json(model: BaseModel) -> dict[str, Any]:
    """The camelCase JSON form of a message (what the CLI, the gateway and `temporal` send)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
