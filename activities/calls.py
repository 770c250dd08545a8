"""One activity per TapRaise call action, each idempotent.

The activities are methods of `TapRaiseActivities`, which holds the TapRaise client (and so the
credentials: they never enter a workflow input or history). The HTTP client never retries;
Temporal does, according to the classification in `to_application_error`. Every docstring
states what makes a retry safe.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import NoReturn

from pydantic import AwareDatetime, BaseModel, ConfigDict
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import errors
from tapraise import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    Call,
    CallStatus,
    CancelCallRequest,
    CompleteCallRequest,
    ConflictError,
    CreateCallRequest,
    ExpireCallRequest,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    TapRaiseClient,
    TapRaiseError,
)
from tapraise.models import AddAttemptRequest


class _Input(BaseModel):
    model_config = ConfigDict(frozen=True)


class CallRef(_Input):
    """Enough to find a call again: TapRaise has no GET by uuid, only a list by `requestedAfter`."""

    call_uuid: uuid.UUID
    requested_at: AwareDatetime


class CreateCallOutcome(_Input):
    """The call as TapRaise holds it, and whether this request created it (False: a 409)."""

    call: Call
    created: bool


class AddAttemptInput(CallRef):
    attempt_at: AwareDatetime
    user_uuid: uuid.UUID | None = None


class CompleteCallInput(CallRef):
    request: CompleteCallRequest


class CancelCallInput(CallRef):
    request: CancelCallRequest


class ExpireCallInput(CallRef):
    request: ExpireCallRequest


def _same_instant(a: datetime, b: datetime) -> bool:
    # TapRaise keeps milliseconds; compare at that precision.
    return abs(a - b) < timedelta(milliseconds=1)


def to_application_error(exc: TapRaiseError, action: str) -> ApplicationError:
    """Classify a TapRaise failure for Temporal: a stable type, retryable or not, and a delay.

    400/403/404 are final. 401 is retried a few times (a clock-skewed token heals; bad
    credentials do not). 429 honours `Retry-After`. 5xx, timeouts and connection errors retry
    with the activity's backoff.
    """
    message = f"TapRaise {action}: {exc}"
    if isinstance(exc, BadRequestError):
        return ApplicationError(message, type=errors.TAPRAISE_BAD_REQUEST, non_retryable=True)
    if isinstance(exc, PermissionDeniedError):
        return ApplicationError(message, type=errors.TAPRAISE_FORBIDDEN, non_retryable=True)
    if isinstance(exc, NotFoundError):
        return ApplicationError(message, type=errors.TAPRAISE_NOT_FOUND, non_retryable=True)
    if isinstance(exc, AuthenticationError):
        final = activity.in_activity() and activity.info().attempt >= errors.UNAUTHORIZED_ATTEMPTS
        return ApplicationError(message, type=errors.TAPRAISE_UNAUTHORIZED, non_retryable=final)
    if isinstance(exc, RateLimitError):
        delay = timedelta(seconds=exc.retry_after) if exc.retry_after else None
        return ApplicationError(message, type=errors.TAPRAISE_RATE_LIMITED, next_retry_delay=delay)
    if isinstance(exc, APIStatusError):
        kind = errors.TAPRAISE_UNAVAILABLE if exc.status_code >= 500 else errors.TAPRAISE_STATUS
        delay = timedelta(seconds=exc.retry_after) if exc.retry_after else None
        return ApplicationError(message, type=kind, next_retry_delay=delay)
    if isinstance(exc, APITimeoutError):
        return ApplicationError(message, type=errors.TAPRAISE_TIMEOUT)
    if isinstance(exc, APIConnectionError):
        return ApplicationError(message, type=errors.TAPRAISE_CONNECTION)
    return ApplicationError(message, type=errors.TAPRAISE_STATUS)


def _raise(exc: TapRaiseError, action: str) -> NoReturn:
    raise to_application_error(exc, action) from exc


class TapRaiseActivities:
    """The TapRaise actions of a call, bound to one client (and its credentials)."""

    def __init__(self, client: TapRaiseClient) -> None:
        self._client = client

    async def _find(self, ref: CallRef) -> Call | None:
        try:
            return await self._client.find_call(ref.call_uuid, ref.requested_at)
        except TapRaiseError as exc:
            _raise(exc, f"find call {ref.call_uuid}")

    async def _require(self, ref: CallRef, action: str) -> Call:
        call = await self._find(ref)
        if call is None:
            raise ApplicationError(
                f"TapRaise {action}: call {ref.call_uuid} is not in the call list of this "
                "service account",
                type=errors.TAPRAISE_NOT_FOUND,
                non_retryable=True,
            )
        return call

    @activity.defn(name="find_call")
    async def find_call(self, ref: CallRef) -> Call | None:
        """Look a call up (`GET /api/v1/calls`, paged). Read-only, so any retry is safe."""
        return await self._find(ref)

    @activity.defn(name="create_call")
    async def create_call(self, request: CreateCallRequest) -> CreateCallOutcome:
        """Create the call (`POST /api/v1/calls`).

        Retry safety: the uuid is fixed by the workflow before the first try, so a retry after a
        lost answer gets 409 "Call already exists" instead of a second call; the existing call is
        then looked up and returned, so the workflow adopts whatever state TapRaise holds.
        """
        if request.uuid is None:
            raise ApplicationError(
                "create_call needs the call's uuid (it makes the create idempotent)",
                type=errors.TAPRAISE_BAD_REQUEST,
                non_retryable=True,
            )
        try:
            return CreateCallOutcome(call=await self._client.create_call(request), created=True)
        except ConflictError:
            pass
        except TapRaiseError as exc:
            _raise(exc, f"create call {request.uuid}")
        existing = await self._find(
            CallRef(call_uuid=request.uuid, requested_at=request.requested_at)
        )
        if existing is None:
            raise ApplicationError(
                f"TapRaise create call {request.uuid}: it already exists, but this service "
                "account cannot see it in its call list",
                type=errors.CALL_EXISTS_BUT_NOT_VISIBLE,
                non_retryable=True,
            )
        return CreateCallOutcome(call=existing, created=False)

    @activity.defn(name="add_attempt")
    async def add_attempt(self, data: AddAttemptInput) -> Call:
        """Record an unsuccessful attempt (`PUT /api/v1/calls/{uuid}/actions/add-attempt`).

        Retry safety: `attemptAt` is fixed by the workflow. Before sending, the call is looked up
        and nothing is sent when an attempt with the same `attemptAt` (and user) is already
        recorded: a lost answer never records a second attempt. Run as a local activity, this
        look-up happens on every try, because a local activity whose worker died starts again
        at attempt 1 on another worker.
        """
        action = f"add attempt to call {data.call_uuid}"
        if activity.info().attempt > 1 or activity.info().is_local:
            call = await self._require(data, action)
            for recorded in call.attempts:
                same_user = data.user_uuid is None or recorded.user_uuid == data.user_uuid
                at = recorded.attempt_at
                if same_user and at is not None and _same_instant(at, data.attempt_at):
                    activity.logger.info("attempt already recorded by an earlier try; not resent")
                    return call
        request = AddAttemptRequest(user_uuid=data.user_uuid, attempt_at=data.attempt_at)
        try:
            return await self._client.add_attempt(data.call_uuid, request)
        except TapRaiseError as exc:
            _raise(exc, action)

    async def _finish(
        self,
        ref: CallRef,
        action: str,
        target: CallStatus,
        send: Callable[[], Awaitable[Call]],
    ) -> Call:
        """Shared body of complete/cancel/expire: 409 = already in that state = done."""
        try:
            return await send()
        except ConflictError:
            return await self._require(ref, action)
        except BadRequestError as exc:
            call = await self._find(ref)
            if call is not None and call.status not in (CallStatus.REQUESTED, target):
                raise ApplicationError(
                    f"TapRaise {action}: the call is already {call.status.value}",
                    call.status.value,
                    type=errors.CALL_IN_OTHER_FINAL_STATE,
                    non_retryable=True,
                ) from exc
            if call is not None and call.status == target:
                return call
            _raise(exc, action)
        except TapRaiseError as exc:
            _raise(exc, action)

    @activity.defn(name="complete_call")
    async def complete_call(self, data: CompleteCallInput) -> Call:
        """Complete the call with its result (`PUT …/actions/complete`).

        Retry safety: a retry after a lost answer gets 409 (already completed), which is success.
        A call already cancelled or expired fails with `CallInOtherFinalState`, never retried.
        """
        return await self._finish(
            data,
            f"complete call {data.call_uuid}",
            CallStatus.COMPLETED,
            lambda: self._client.complete_call(data.call_uuid, data.request),
        )

    @activity.defn(name="cancel_call")
    async def cancel_call(self, data: CancelCallInput) -> Call:
        """Cancel the call (`PUT …/actions/cancel`).

        Retry safety: 409 "Call already cancelled" is success; completed/expired is final.
        """
        return await self._finish(
            data,
            f"cancel call {data.call_uuid}",
            CallStatus.CANCELLED,
            lambda: self._client.cancel_call(data.call_uuid, data.request),
        )

    @activity.defn(name="expire_call")
    async def expire_call(self, data: ExpireCallInput) -> Call:
        """Expire the call when attempts or time ran out (`PUT …/actions/expire`).

        Retry safety: 409 (already expired) is success; completed/cancelled is final.
        """
        return await self._finish(
            data,
            f"expire call {data.call_uuid}",
            CallStatus.EXPIRED,
            lambda: self._client.expire_call(data.call_uuid, data.request),
        )

    def all(self) -> list[object]:
        """Every activity of this class, for `Worker(activities=…)`."""
        return [
            self.find_call,
            self.create_call,
            self.add_attempt,
            self.complete_call,
            self.cancel_call,
            self.expire_call,
        ]
