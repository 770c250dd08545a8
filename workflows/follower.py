"""The TapRaise follower: one workflow that keeps the call workflows in step with TapRaise.

Every `interval` a round asks TapRaise for the calls changed since the watermark (one request when
nothing changed), adopts those requested in TapRaise that no workflow drives, and tells the
running call workflows what TapRaise now holds. It waits with one durable timer between rounds
(none while paused) and continues as new before its history grows: following for an hour costs
about two Temporal actions a round (the timer and the round's activity).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.following import (
    BUSIEST_SHARE,
    BUSY_ROUND,
    FOLLOWER_WORKFLOW_TYPE,
    MAX_ERRORS,
    MAX_RECENT,
    MAX_UNMARKED,
    MIN_INTERVAL,
    OVERLAP,
    PAUSE,
    RESUME,
    RUN_NOW,
    STATUS,
    FollowerInput,
    FollowerState,
    FollowerStatus,
    FollowOutcome,
    FollowRequest,
)

with workflow.unsafe.imports_passed_through():
    from activities.follow import FollowerActivities

ROUNDS_PER_RUN: Final = 500
"""Rounds before the follower continues as new (about four hours at the default interval)."""
ROUND_TIMEOUT: Final = timedelta(minutes=5)
# A round heartbeats after each page and each call it hands over; a worker killed mid-round is
# noticed within this, and the round runs again at once on another worker.
ROUND_HEARTBEAT: Final = timedelta(seconds=20)
# A round that fails twice (TapRaise or Temporal down) is tried again at the next interval, not
# in a tight loop of its own.
ROUND_RETRY: Final = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=2)


@workflow.defn(name=FOLLOWER_WORKFLOW_TYPE)
class FollowerWorkflow:
    """Follows TapRaise until terminated.

    Updates:
        pause       stop running rounds (the watermark waits: nothing is lost)
        resume      run rounds again, starting with one now
        run_now     run a round now instead of at the end of the interval
    Query:
        status      `FollowerStatus`: watermark, last round, counts, errors, settings
    """

    @workflow.init
    def __init__(self, input: FollowerInput) -> None:
        self._input = input
        self._interval = max(input.interval, MIN_INTERVAL)
        self._state = input.state or FollowerState(
            watermark=input.since, paused=False, last_round_at=None
        )
        self._task_queue = input.task_queue or workflow.info().task_queue
        self._wake = False
        self._next_round_at: datetime | None = None
        self._rounds_this_run = 0
        self._rounds_done = 0  # rounds finished in this run (a `run_now` waits for its own)
        self._in_round = False
        self._draining = False  # continuing as new: waiting updates answer now

    @workflow.run
    async def run(self, input: FollowerInput) -> None:
        while True:
            if not self._state.paused:
                await self._round()
            if (
                self._rounds_this_run >= ROUNDS_PER_RUN
                or workflow.info().is_continue_as_new_suggested()
            ):
                self._draining = True
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._input.model_copy(update={"state": self._state}))
            await self._wait()

    async def _round(self) -> None:
        """One round: list what changed, deliver it, and move the watermark past it."""
        state = self._state
        after = state.watermark - OVERLAP if state.watermark is not None else None
        request = FollowRequest(
            updated_after=after,
            scope=self._input.scope,
            recent=state.recent,
            unmarked=state.unmarked,
            task_queue=self._task_queue,
        )
        self._rounds_this_run += 1
        state.rounds += 1
        state.last_round_at = workflow.now()
        self._in_round = True
        try:
            await self._carry_out(request)
        finally:
            self._in_round = False
            self._rounds_done += 1

    async def _carry_out(self, request: FollowRequest) -> None:
        state = self._state
        try:
            outcome: FollowOutcome = await workflow.execute_activity_method(
                FollowerActivities.follow_once,
                request,
                start_to_close_timeout=ROUND_TIMEOUT,
                heartbeat_timeout=ROUND_HEARTBEAT,
                retry_policy=ROUND_RETRY,
            )
        except ActivityError as err:
            cause = err.cause
            why = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
            state.failed_rounds += 1
            self._note_error(f"round failed (tried again next interval): {why}")
            self._publish()
            return
        if outcome.newest is not None and (
            state.watermark is None or outcome.newest > state.watermark
        ):
            state.watermark = outcome.newest
        state.recent = outcome.recent[-MAX_RECENT:]
        state.last_listed = outcome.listed
        state.unmarked = outcome.unmarked[-MAX_UNMARKED:]
        state.adopted += outcome.adopted
        state.delivered += outcome.delivered
        state.ignored += outcome.ignored
        state.requests += outcome.requests
        for error in outcome.errors:
            self._note_error(error)
        self._publish()

    async def _wait(self) -> None:
        """Until the next round is due, a `run_now`, or (paused) a `resume`."""
        self._wake = False
        if self._state.paused:
            self._next_round_at = None
            self._publish()
            await workflow.wait_condition(lambda: self._wake or not self._state.paused)
            return
        # Rounds start an interval apart, however long each took: a change waits at most an
        # interval for the round that finds it. A round that outlasted the interval is followed
        # at once, a busy one sooner (`BUSY_ROUND`).
        started = self._state.last_round_at
        now = workflow.now()
        wait = self._interval * self._share(self._state.last_listed)
        due = started + wait if started is not None else now + wait
        self._next_round_at = max(due, now)
        self._publish()
        if due > now:
            try:
                await workflow.wait_condition(
                    lambda: self._wake or self._state.paused,
                    timeout=due - now,
                    timeout_summary="next round",
                )
            except TimeoutError:
                pass
        if self._state.paused:  # paused meanwhile: wait for the resume
            await self._wait()

    @staticmethod
    def _share(listed: int) -> float:
        """The share of the interval to wait after a round that found `listed` changes."""
        if listed <= BUSY_ROUND:
            return 1.0
        return max(BUSY_ROUND / listed, BUSIEST_SHARE)

    def _note_error(self, error: str) -> None:
        self._state.last_error = error
        self._state.errors = [*self._state.errors, error][-MAX_ERRORS:]
        workflow.logger.warning("following TapRaise: %s", error)

    def _publish(self) -> None:
        """The Web UI's current details: where following stands."""
        state = self._state
        watermark = state.watermark.isoformat() if state.watermark else "not yet"
        last = state.last_round_at.isoformat(timespec="seconds") if state.last_round_at else "none"
        lines = [
            f"Following TapRaise every {self._interval.total_seconds():g} s"
            + (" — **paused**" if state.paused else ""),
            f"Watermark (changes after it are asked for): {watermark}",
            f"Last round: {last} · rounds {state.rounds} · failed {state.failed_rounds}",
            f"Calls adopted {state.adopted} · changes delivered {state.delivered} · "
            f"ignored {state.ignored} · TapRaise requests {state.requests}",
        ]
        if state.unmarked:
            lines.append(f"Marks to retry: {len(state.unmarked)}")
        if state.last_error:
            lines.append(f"Last error: {state.last_error}")
        workflow.set_current_details("  \n".join(lines))

    # ── messages ─────────────────────────────────────────────────────────────────────────────

    @workflow.update(name=PAUSE)
    async def pause(self) -> FollowerStatus:
        """Stop running rounds until `resume`; what changes meanwhile is found then."""
        self._state.paused = True
        self._publish()
        return self.status()

    @workflow.update(name=RESUME)
    async def resume(self) -> FollowerStatus:
        """Run rounds again, the first one now."""
        self._state.paused = False
        self._wake = True
        return self.status()

    @workflow.update(name=RUN_NOW)
    async def run_now(self) -> FollowerStatus:
        """Run a round now and answer once it is done (with what it found)."""
        # A round already under way may have listed before this was asked: wait for the next.
        target = self._rounds_done + (2 if self._in_round else 1)
        self._wake = True
        await workflow.wait_condition(lambda: self._rounds_done >= target or self._draining)
        return self.status()

    @run_now.validator
    def _run_now_allowed(self) -> None:
        if self._state.paused:
            raise ApplicationError("the follower is paused: resume it first", type="Paused")

    @workflow.query(name=STATUS)
    def status(self) -> FollowerStatus:
        """Where following stands, and the settings it follows with."""
        return FollowerStatus(
            **dict(self._state),
            interval=self._interval,
            scope=self._input.scope,
            next_round_at=self._next_round_at,
        )
