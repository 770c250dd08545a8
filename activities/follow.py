"""The follower's round: what changed in TapRaise, handed to the call workflows.

`FollowerActivities.follow_once` pages `GET /api/v1/calls?updatedAfter=…` and gives each changed
call to a `CallDispatcher`, which knows Temporal (the worker wires `starter.follow`'s): a call
requested in TapRaise in the follower's scope and managed there (no `externalMetadata`) is
started (or, when its workflow runs, told what TapRaise holds) by one signal-with-start; any
other call's running workflow is told, an external call's too; a call whose workflow has ended,
or that no workflow runs and none is to adopt, is left alone.
Calls adopted are marked processed, with the workflow id as the consumer's identifier.

Idempotency: a round may be run again (a retry, a crashed worker, an overlap): starting an
existing call's workflow reuses it, and a call applies what TapRaise holds however often it is
told (`sync` merges by attempt identity). Only the counts can come out higher than the effects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final, Protocol
from uuid import UUID

from pydantic import AwareDatetime, Field
from temporalio import activity

from tapraise import TapRaiseClient
from tapraise.errors import BadRequestError, TapRaiseError
from tapraise.models import (
    Call,
    CallStatus,
    CallType,
    CamelModel,
    EntityName,
    MarkProcessedEntry,
    MarkProcessedErrors,
)

PAGE_SIZE: Final = 100
DISPATCH_LANES: Final = 16
CHANGES: Final = "tapraise_calls_follower_changes_total"
LAG: Final = "tapraise_calls_follower_lag_seconds"
OVERLAP: Final = timedelta(seconds=5)
"""How far before its watermark a round asks again: a change TapRaise records with a time a
little older than one already seen (another server's clock, a transaction committed late) is
still found. What the overlap finds again is recognised and not delivered twice."""
MAX_ERRORS: Final = 10
"""Errors a round reports (the follower keeps as many)."""


class _Message(CamelModel):
    """Base of the round's messages: camelCase on the wire."""


class FollowScope(_Message):
    """Which calls requested in TapRaise the follower adopts (empty: every one).

    Calls with `externalMetadata` are managed by another system and never adopted.
    """

    call_types: list[CallType] = Field(default_factory=list, max_length=10)
    organization_uuids: list[UUID] = Field(default_factory=list, max_length=1_000)

    def covers(self, call_type: CallType, organization_uuid: UUID | None) -> bool:
        """Whether a TapRaise-managed call of this type and organization is adopted."""
        if self.call_types and call_type not in self.call_types:
            return False
        return not self.organization_uuids or organization_uuid in self.organization_uuids


class Seen(_Message):
    """One change a round delivered: the call and the `lastUpdatedAt` it was delivered at."""

    call_uuid: UUID
    last_updated_at: AwareDatetime


class FollowRequest(_Message):
    """What one round of following asks the activity to do."""

    updated_after: AwareDatetime | None
    scope: FollowScope
    recent: list[Seen] = Field(default_factory=list)
    unmarked: list[UUID] = Field(default_factory=list)
    task_queue: str


class FollowOutcome(_Message):
    """What one round found and did (the activity's answer)."""

    newest: AwareDatetime | None = None
    recent: list[Seen] = Field(default_factory=list)
    listed: int = 0
    adopted: int = 0
    delivered: int = 0
    ignored: int = 0
    marked: int = 0
    unmarked: list[UUID] = Field(default_factory=list)
    requests: int = 0
    errors: list[str] = Field(default_factory=list)


class Delivery(StrEnum):
    """What became of one changed call."""

    STARTED = "started"  # no workflow ran it: one was started, adopting the call
    DELIVERED = "delivered"  # its running workflow was told what TapRaise holds
    NOT_RUNNING = "not_running"  # no workflow runs it, and none is to be started


class Known(_Message):
    """What a running call workflow shows of itself (its search attributes)."""

    status: CallStatus
    attempts: int


class CallDispatcher(Protocol):
    """Hands a changed call to its workflow (the worker wires one that knows Temporal)."""

    async def known(self, call_uuids: list[UUID]) -> dict[UUID, Known]:
        """What the running workflows of these calls show (none for a call with none)."""
        ...

    async def dispatch(self, call: Call, adopt: bool, task_queue: str) -> Delivery:
        """Tell the call's running workflow what TapRaise holds; with `adopt`, start one first
        when none runs (the start request our own tools send)."""
        ...


ConsumerId = Callable[[UUID], str]


class FollowerActivities:
    """The follower's activities: a TapRaise client, and the dispatcher to Temporal."""

    def __init__(
        self,
        tapraise: TapRaiseClient,
        dispatcher: CallDispatcher,
        consumer_id: ConsumerId,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._tapraise = tapraise
        self._dispatcher = dispatcher
        self._consumer_id = consumer_id
        self._clock = clock or (lambda: datetime.now(UTC))

    @activity.defn(name="follow_once")
    async def follow_once(self, request: FollowRequest) -> FollowOutcome:
        """One round: `GET /api/v1/calls?updatedAfter=…` until the last page, every change given
        to its workflow, adopted calls marked processed (`POST …/mark-processed`).

        A page's changes are handed over while the next page is read. A transient TapRaise or
        Temporal failure fails the round; the next one asks again from the same watermark, and
        what this one did already changes nothing the second time.
        """
        outcome = FollowOutcome(newest=request.updated_after)
        began = self._clock()
        started = time.monotonic()
        recent = {(seen.call_uuid, seen.last_updated_at) for seen in request.recent}
        meter = activity.metric_meter()
        changes = meter.create_counter(
            CHANGES, "Changes found in TapRaise, by what became of them."
        )
        lag = meter.create_histogram_float(
            LAG, "From a change in TapRaise to its workflow being told, or started.", "s"
        )
        marks = list(request.unmarked)
        lanes = asyncio.Semaphore(DISPATCH_LANES)

        async def hand_over(call: Call, shown: Known | None) -> None:
            adopt = self._adopts(call, request)
            if shown is not None and (shown.status, shown.attempts) == (
                call.status,
                len(call.attempts),
            ):
                # Its workflow shows this already: most changes are the workflow's own.
                outcome.ignored += 1
                changes.add(1, {"delivery": "known"})
                if adopt:
                    # Marked again: a round that adopted it may have failed before its mark.
                    marks.append(call.uuid)
                return
            async with lanes:
                delivery = await self._dispatcher.dispatch(call, adopt, request.task_queue)
            changes.add(1, {"delivery": delivery.value})
            if delivery is not Delivery.NOT_RUNNING and call.last_updated_at is not None:
                lag.record(max(0.0, (self._clock() - call.last_updated_at).total_seconds()))
            if delivery is not Delivery.NOT_RUNNING and adopt:
                marks.append(call.uuid)
            if delivery is Delivery.STARTED:
                outcome.adopted += 1
            elif delivery is Delivery.DELIVERED:
                outcome.delivered += 1
            else:
                outcome.ignored += 1
            activity.heartbeat()

        # Calls are independent of each other: a burst of changes is handed over a few at a
        # time, not one after the other, and a page's while the next is read. One failure fails
        # the round (run again from the same watermark), once the others have been handed over.
        calls: list[Call] = []
        handing: list[asyncio.Task[None]] = []
        try:
            async for page in self._changed(request, outcome):
                calls.extend(page)
                fresh = [
                    call
                    for call in page
                    # Found again in the overlap: delivered in an earlier round.
                    if call.last_updated_at is None
                    or (call.uuid, call.last_updated_at) not in recent
                ]
                known = await self._dispatcher.known([call.uuid for call in fresh])
                handing.extend(
                    asyncio.create_task(hand_over(call, known.get(call.uuid))) for call in fresh
                )
        finally:
            handed = await asyncio.gather(*handing, return_exceptions=True)
        listed_in = time.monotonic() - started
        failures = [failure for failure in handed if isinstance(failure, BaseException)]
        if failures:
            raise failures[0]
        # The list is ordered by `requestedAt`: a call changed again behind the cursor while
        # the pages were read is not on them, and its new time may be older than the newest
        # seen. The next round starts no later than this one began (less the overlap).
        if outcome.newest is not None and outcome.newest > began:
            outcome.newest = began
        newest = outcome.newest
        outcome.recent = [
            Seen(call_uuid=call.uuid, last_updated_at=call.last_updated_at)
            for call in calls
            if call.last_updated_at is not None
            and newest is not None
            and call.last_updated_at >= newest - OVERLAP
        ]
        await self._mark(marks, outcome)
        if calls:
            activity.logger.info(
                "round: %d changed, %d adopted, %d told, %d known or left, in %.1f s "
                "(listed and handed over in %.1f s)",
                outcome.listed,
                outcome.adopted,
                outcome.delivered,
                outcome.ignored,
                time.monotonic() - started,
                listed_in,
            )
        return outcome

    async def _changed(
        self, request: FollowRequest, outcome: FollowOutcome
    ) -> AsyncIterator[list[Call]]:
        """Every call changed after the request's time, a page at a time; the newest change
        among them is kept in `outcome`."""
        after: str | None = None
        while True:
            page = await self._tapraise.list_calls_page(
                updated_after=request.updated_after, first=PAGE_SIZE, after=after
            )
            outcome.requests += 1
            outcome.listed += len(page.calls)
            for call in page.calls:
                changed_at = call.last_updated_at
                if changed_at is not None and (
                    outcome.newest is None or changed_at > outcome.newest
                ):
                    outcome.newest = changed_at
            activity.heartbeat()
            yield page.calls
            if not page.page_info.has_next_page or page.page_info.end_cursor is None:
                break
            after = page.page_info.end_cursor

    @staticmethod
    def _adopts(call: Call, request: FollowRequest) -> bool:
        """Whether the call is one to run: requested, TapRaise's own, in the follower's scope.

        Such a call whose workflow runs is marked processed (again: a mark is idempotent).
        """
        return (
            # A call with `externalMetadata` is another system's: never adopted, but a workflow
            # that runs one (created by this system) is told what changed like any other.
            call.external_metadata is None
            and call.status is CallStatus.REQUESTED
            and request.scope.covers(call.type, call.calling_organization_uuid)
        )

    async def _mark(self, marks: list[UUID], outcome: FollowOutcome) -> None:
        """Mark adopted calls processed; entries TapRaise refuses are kept to retry."""
        if not marks:
            return
        now = self._clock()
        entries = [
            MarkProcessedEntry(
                entity_name=EntityName.CALL,
                entity_uuid=call_uuid,
                processed_at=now,
                consumer_identifier=self._consumer_id(call_uuid),
            )
            for call_uuid in dict.fromkeys(marks)
        ]
        try:
            outcome.requests += 1
            await self._tapraise.mark_processed(entries)
        except BadRequestError as err:
            failed = _failed_marks(err)
            outcome.unmarked = failed
            outcome.marked = len(entries) - len(failed)
            _note(outcome, f"TapRaise refused to mark {len(failed)} call(s) processed")
            return
        except TapRaiseError as err:
            # The calls run; the mark is retried next round.
            outcome.unmarked = [entry.entity_uuid for entry in entries]
            _note(outcome, f"could not mark calls processed: {err}")
            return
        outcome.marked = len(entries)


def _failed_marks(err: BadRequestError) -> list[UUID]:
    try:
        failures = MarkProcessedErrors.model_validate(err.body).errors
        return [UUID(failure.entity_uuid) for failure in failures]
    except ValueError:
        return []


def _note(outcome: FollowOutcome, error: str) -> None:
    outcome.errors = [*outcome.errors, error][-MAX_ERRORS:]
