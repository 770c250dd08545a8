"""The gateway's answers, camelCase on the wire as the contract's messages are.

The request bodies are the contract's own message models (`workflows.messages`), and so is a
call's state (`CallState`); these are the answers the gateway adds around them.
"""

import uuid
from typing import Any, Literal, Self

from pydantic import (
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from starter.batch import INVALID, BatchResults, RowResult
from starter.service import CallSummary, SignalSent, StartResult, StartStatus
from tapraise import CamelModel
from workflows.messages import ActionAccepted, CallPhase, workflow_id_for


class _Answer(CamelModel):
    """A gateway answer: camelCase JSON."""


class Health(_Answer):
    """Whether the gateway runs and Temporal answers."""

    status: Literal["ok", "degraded"]
    temporal: Literal["reachable", "not serving", "unreachable"] = Field(
        description="Whether Temporal answers; why not is in the gateway's log."
    )


class Problem(_Answer):
    """A refusal: no valid token (401), not the token's scope (403), the call does not exist
    (404), refused the action (409), a body too large (413) or not JSON (415), too many
    requests (429), or Temporal did not answer (503) or failed (502)."""

    detail: str
    kind: str


class Started(_Answer):
    """One call's start (`phase` and `detail` only when known)."""

    workflow_id: str | None
    call_uuid: uuid.UUID | None
    status: StartStatus
    phase: CallPhase | None = None
    detail: str | None = None

    @classmethod
    def of(cls, result: StartResult) -> Self:
        return cls.model_validate(result.to_json())


Outcome = Literal["started", "already started", "duplicate", "invalid", "failed"]


class BatchItem(_Answer):
    """One item of a batch, by its `index` in the request, followed by its `idFrom` value under
    that key's name when `idFrom` was given; then what became of it."""

    index: int
    workflow_id: str | None = None
    call_uuid: uuid.UUID | None = None
    status: Outcome
    phase: CallPhase | None = None
    detail: str | None = None
    problems: list[str] | None = Field(default=None, description="Why the item is invalid.")
    _id_column: tuple[str, str | None] | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, result: RowResult, id_from: str | None) -> Self:
        fields = _item_fields(result)
        item = cls.model_validate({"index": result.row.line, **fields})
        if id_from and id_from not in fields and id_from != "index":
            item._id_column = (id_from, result.row.external_id)
        return item

    @model_serializer(mode="wrap")
    def _id_after_index(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self._id_column is None or not isinstance(data, dict):
            return data
        name, value = self._id_column
        return {"index": data.pop("index"), name: value, **data}


def _item_fields(result: RowResult) -> dict[str, Any]:
    if result.start is not None:
        return {**result.start.to_json(), "status": result.outcome}
    if result.outcome == INVALID:
        return {"status": INVALID, "problems": list(result.row.problems)}
    return {
        "workflowId": result.workflow_id,
        "callUuid": str(result.call_uuid),
        "status": result.outcome,
        "detail": result.detail("item"),
    }


class BatchSummary(_Answer):
    """How many items had each outcome."""

    started: int
    already_started: int = Field(alias="already started")
    duplicate: int
    invalid: int
    failed: int


class BatchStarted(_Answer):
    """Every item of a batch, in request order, and how many had each outcome."""

    summary: BatchSummary
    results: list[BatchItem]

    @classmethod
    def of(cls, results: BatchResults) -> Self:
        id_from = results.batch.id_from
        items = [BatchItem.of(result, id_from) for result in results.rows]
        return cls(summary=BatchSummary.model_validate(results.summary), results=items)


class Accepted(_Answer):
    """The workflow accepted the action (an update's answer)."""

    workflow_id: str
    accepted: Literal[True] = True
    phase: CallPhase
    detail: str = ""

    @classmethod
    def of(cls, call_uuid: uuid.UUID, answer: ActionAccepted) -> Self:
        return cls(workflow_id=workflow_id_for(call_uuid), phase=answer.phase, detail=answer.detail)


class Sent(_Answer):
    """The action went to the workflow as a signal: delivered, not necessarily accepted."""

    workflow_id: str
    call_uuid: uuid.UUID
    signal: str
    sent: Literal[True] = True

    @classmethod
    def of(cls, sent: SignalSent) -> Self:
        return cls.model_validate(sent.to_json())


class CallList(_Answer):
    """The visibility query used and the calls it found, newest first."""

    query: str
    calls: list[CallSummary]
