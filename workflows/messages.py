"""Message types of the call workflow: its input, signal/update payloads and its `state` snapshot.

These are the public contract shared by the workflow, the starter CLI and the HTTP gateway. On the
wire every field is camelCase (TapRaise's own names), so a plain
`temporal workflow start --input '{"personUuid": "…", "type": "verification"}'` decodes into
`CallInput`. New fields always get defaults, so that recorded histories keep decoding.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Literal, TypeAlias
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)
from temporalio.common import SearchAttributeKey

from tapraise.models import CallResult, CallStatus, CallType, CamelModel, ExternalMetadata
from workflows.policy import AttemptOutcome, CallPolicy, PolicyOverrides, TimeZoneName

TASK_QUEUE: Final = "tapraise-calls"
WORKFLOW_TYPE: Final = "CallWorkflow"
DEFAULT_TIMEZONE: Final = "Europe/Amsterdam"

# Signal, update and query names (the same name serves a signal and its update).
ATTEMPT: Final = "attempt"
COMPLETE: Final = "complete"
RESCHEDULE: Final = "reschedule"
CANCEL: Final = "cancel"
STATE: Final = "state"


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


class CallInput(_Message):
    """The workflow's input: one call as the CRM asked for it (TapRaise's field names)."""

    person_uuid: UUID
    type: CallType
    uuid: UUID | None = None
    requested_at: AwareDatetime | None = None
    related_case_uuid: UUID | None = None
    calling_organization_uuid: UUID | None = None
    requested_by_user_uuid: UUID | None = None
    notes: str | None = Field(default=None, max_length=10_000)
    external_metadata: ExternalMetadata | None = None
    timezone: TimeZoneName | None = None
    policy: PolicyOverrides | None = None
    # Set only by the workflow itself when it continues as new: a first run refuses it.
    resume: CallResume | None = None

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

    result: CallResult
    user_uuid: UUID | None = None


class RescheduleSignal(_Message):
    """The donor asked to be called back at a given time."""

    at: AwareDatetime
    user_uuid: UUID | None = None
    notes: str | None = None


class CancelSignal(_Message):
    """The call is no longer wanted."""

    cancelled_at: AwareDatetime | None = None
    reason: str | None = Field(default=None, max_length=2_000)


Message: TypeAlias = AttemptSignal | CompleteSignal | RescheduleSignal | CancelSignal
"""Any message an agent's tooling sends (the same payload serves its signal and its update)."""

MESSAGE_MODELS: Final[dict[str, type[Message]]] = {
    ATTEMPT: AttemptSignal,
    COMPLETE: CompleteSignal,
    RESCHEDULE: RescheduleSignal,
    CANCEL: CancelSignal,
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
