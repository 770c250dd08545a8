"""One activity per TapRaise call action, each idempotent.

The activities are methods of `TapRaiseActivities`, which holds the TapRaise client (and so the
credentials: they never enter a workflow input or history). The HTTP client never retries;
Temporal does, according to the classification in `to_application_error`. Every docstring
states what makes a retry safe.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, NoReturn

from pydantic import AwareDatetime, BaseModel, ConfigDict
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.metrics import TapRaiseMetrics
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
    Endpoint,
    ExpireCallRequest,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    TapRaiseClient,
    TapRaiseError,
)
from tapraise.models import AddAttemptRequest
from workflows import errors


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


# How long a timed-out attempt is remembered when its call is never retried on this worker.
_UNSETTLED_KEPT = 3600.0
# How far apart two records of one attempt may lie: TapRaise keeps milliseconds, and may round
# where we truncate.
_SAME_INSTANT = timedelta(milliseconds=1)


def same_attempt(
    at: datetime, user: uuid.UUID | None, other_at: datetime, other_user: uuid.UUID | None
) -> bool:
    """Whether two records name one attempt: the one rule used everywhere attempts are matched.

    The same instant to TapRaise's millisecond (rounded or truncated), and the same user where
    both name one: TapRaise may fill in a user that the report left out.
    """
    if abs(at - other_at) > _SAME_INSTANT:
        return False
    return user is None or other_user is None or user == other_user


def to_application_error(
    exc: TapRaiseError, action: str, *, forbidden_is_final: bool = True
) -> ApplicationError:
    """Classify a TapRaise failure for Temporal: a stable type, retryable or not, and a delay.

    400 and 404 are final. 403 is final for a create (the account may not create this call);
    on a later action it is retried like a 401, because a call TapRaise accepted from us cannot
    become forbidden for good: permissions are being changed. 401 is never final: credentials
    rotate, clocks jump, and a call must outlive that. 429 honours `Retry-After`. 5xx, timeouts
    and connection errors retry with the activity's backoff.
    """
    message = f"TapRaise {action}: {exc}"
    if isinstance(exc, BadRequestError):
        return ApplicationError(message, type=errors.TAPRAISE_BAD_REQUEST, non_retryable=True)
    if isinstance(exc, PermissionDeniedError):
        return ApplicationError(
            message, type=errors.TAPRAISE_FORBIDDEN, non_retryable=forbidden_is_final
        )
    if isinstance(exc, NotFoundError):
        return ApplicationError(message, type=errors.TAPRAISE_NOT_FOUND, non_retryable=True)
    if isinstance(exc, AuthenticationError):
        return ApplicationError(message, type=errors.TAPRAISE_UNAUTHORIZED)
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


def _other_final_state(action: str, call: Call) -> ApplicationError:
    """The call is already final in TapRaise in another state: the workflow adopts it, with
    the attempts and the result TapRaise holds (details: the status, then the call)."""
    return ApplicationError(
        f"TapRaise {action}: the call is already {call.status.value}",
        call.status.value,
        call.model_dump(mode="json", by_alias=True),
        type=errors.CALL_IN_OTHER_FINAL_STATE,
        non_retryable=True,
    )


def _raise(exc: TapRaiseError, action: str, *, forbidden_is_final: bool = False) -> NoReturn:
    raise to_application_error(exc, action, forbidden_is_final=forbidden_is_final) from exc


class TapRaiseActivities:
    """The TapRaise actions of a call, bound to one client (and its credentials).

    Args:
        client: The TapRaise client.
        metrics: Where each retried try is counted (see `activities.metrics`).
    """

    def __init__(self, client: TapRaiseClient, metrics: TapRaiseMetrics | None = None) -> None:
        self._client = client
        self._metrics = metrics or TapRaiseMetrics()
        # Attempts whose request timed out, with the moment it can no longer be in flight.
        self._unsettled: dict[tuple[uuid.UUID, datetime], float] = {}

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

    def _count_retry(self, endpoint: Endpoint) -> None:
        if activity.info().attempt > 1:
            self._metrics.retried(endpoint)

    @activity.defn(name="find_call")
    async def find_call(self, ref: CallRef) -> Call | None:
        """Look a call up (`GET /api/v1/calls`, paged). Read-only, so any retry is safe."""
        self._count_retry(Endpoint.LIST)
        return await self._find(ref)

    @activity.defn(name="create_call")
    async def create_call(self, request: CreateCallRequest) -> CreateCallOutcome:
        """Create the call (`POST /api/v1/calls`).

        Retry safety: the uuid is fixed by the workflow before the first try, so a retry after a
        lost answer gets 409 "Call already exists" instead of a second call; the existing call is
        then looked up and returned, so the workflow adopts whatever state TapRaise holds.
        """
        self._count_retry(Endpoint.CREATE)
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
            _raise(exc, f"create call {request.uuid}", forbidden_is_final=True)
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
        and nothing is sent when it already holds this attempt (`same_attempt`): a lost answer
        never records a second attempt. Run as a local activity, this look-up happens on every
        try, because a local activity whose worker died starts again at attempt 1 elsewhere.

        The look-then-write window: a request that timed out on our side may still be applied
        by TapRaise after the retry looked. So a retry after a timeout first waits as long again
        as the lost request lasted (the client's read timeout) before it looks; what is left is a
        request that TapRaise applies later than that, or one sent by a worker that died.

        A call that TapRaise holds in a final status fails with `CallInOtherFinalState`; a 400
        on a call still requested (TapRaise's own maximum of attempts) fails as a final bad
        request whose details carry how many attempts TapRaise holds.
        """
        self._count_retry(Endpoint.ADD_ATTEMPT)
        action = f"add attempt to call {data.call_uuid}"
        key = (data.call_uuid, data.attempt_at)
        await self._settle(key)
        call = await self._require(data, action)
        for recorded in call.attempts:
            at = recorded.attempt_at
            if at is not None and same_attempt(
                at, recorded.user_uuid, data.attempt_at, data.user_uuid
            ):
                activity.logger.info("attempt already recorded by an earlier try; not resent")
                return call
        if call.status != CallStatus.REQUESTED:
            raise _other_final_state(action, call)
        request = AddAttemptRequest(user_uuid=data.user_uuid, attempt_at=data.attempt_at)
        sent = time.monotonic()
        try:
            return await self._client.add_attempt(data.call_uuid, request)
        except (APITimeoutError, APIConnectionError) as exc:
            # TapRaise may still apply it: the next try waits as long again before it looks.
            self._unsettled[key] = 2 * time.monotonic() - sent
            _raise(exc, action)
        except BadRequestError as exc:
            raise ApplicationError(
                f"TapRaise {action}: {exc}",
                call.attempts_count,
                type=errors.TAPRAISE_BAD_REQUEST,
                non_retryable=True,
            ) from exc
        except TapRaiseError as exc:
            _raise(exc, action)

    async def _settle(self, key: tuple[uuid.UUID, datetime]) -> None:
        """Wait until a request of this attempt that timed out can no longer be in flight."""
        now = time.monotonic()
        for stale in [k for k, t in self._unsettled.items() if t < now - _UNSETTLED_KEPT]:
            del self._unsettled[stale]
        until = self._unsettled.get(key)
        if until is not None and until > now:
            await asyncio.sleep(until - now)  # cut short by a timeout: the next try waits on
        self._unsettled.pop(key, None)

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
                raise _other_final_state(action, call) from exc
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
        self._count_retry(Endpoint.COMPLETE)
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
        self._count_retry(Endpoint.CANCEL)
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
        self._count_retry(Endpoint.EXPIRE)
        return await self._finish(
            data,
            f"expire call {data.call_uuid}",
            CallStatus.EXPIRED,
            lambda: self._client.expire_call(data.call_uuid, data.request),
        )

    def all(self) -> list[Callable[..., Any]]:
        """Every activity of this class, for `Worker(activities=…)`."""
        return [
            self.find_call,
            self.create_call,
            self.add_attempt,
            self.complete_call,
            self.cancel_call,
            self.expire_call,
        ]
