"""The activity that resolves a call's policy on the worker.

Policies live in a file on the worker (`workflows/policies.toml`, or `CALL_POLICY_FILE`). Reading
it is I/O, so it happens here, once per call, and the resolved policy is recorded in the
workflow's history: editing the file later never changes a running call.
"""

from __future__ import annotations

import uuid

from pydantic import AwareDatetime, BaseModel, ConfigDict
from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows import errors
from workflows.policy import CallPolicy, PolicyBook, PolicyOverrides


class ResolvePolicyInput(BaseModel):
    model_config = ConfigDict(frozen=True)

    call_type: str
    organization_uuid: uuid.UUID | None = None
    overrides: PolicyOverrides | None = None
    requested_at: AwareDatetime


class PolicyActivities:
    """Holds the worker's policy book."""

    def __init__(self, book: PolicyBook) -> None:
        self._book = book

    @activity.defn(name="resolve_policy")
    async def resolve_policy(self, data: ResolvePolicyInput) -> CallPolicy:
        """Merge defaults, call type, organization and the call's own overrides.

        Pure computation over the loaded book: a retry gives the same answer.
        """
        try:
            return self._book.resolve(
                data.call_type,
                str(data.organization_uuid) if data.organization_uuid else None,
                data.overrides,
                requested_at=data.requested_at,
            )
        except ValueError as exc:
            raise ApplicationError(
                str(exc), type=errors.INVALID_POLICY, non_retryable=True
            ) from exc
