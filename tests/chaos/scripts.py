"""Each call's agent: its script, carried out through the messenger."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.chaos.config import ChaosConfig
from tests.chaos.ledger import Ledger, instant_key, now_ms
from tests.chaos.messenger import Messenger
from tests.chaos.plans import AGENT_USER, MAX_ATTEMPTS_PLAN, complete_signal
from workflows.messages import (
    ATTEMPT,
    CANCEL,
    COMPLETE,
    RESCHEDULE,
    AttemptSignal,
    CancelSignal,
    RescheduleSignal,
)


class Scripts:
    """Runs the script of a call's plan, as its agent would, and records it in the ledger."""

    def __init__(self, config: ChaosConfig, send: Messenger) -> None:
        self.config = config
        self.send = send

    async def _pause(self, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(0.3, 1.5))

    async def run(self, ledger: Ledger, rng: random.Random) -> None:
        twice = self.config.has("messages")
        plan = ledger.plan
        if plan == "completed_while_the_create_is_retried":
            # At once after the start: with TapRaise failing, the create is usually still retried.
            if await self.send.signal(ledger, COMPLETE, complete_signal(), twice):
                ledger.signal_final = "completed"
            return
        await self._pause(rng)
        if ledger.in_app:
            await self._requested_in_app(ledger, rng, twice)
            return
        if plan == "two_unanswered_then_completed":
            for _ in range(2):
                await self._attempt_update(ledger, twice)
                await self._pause(rng)
            await self.send.send_refused(ledger)
            await self._final_update(ledger, COMPLETE, complete_signal(), twice)
        elif plan == "attempted_then_cancelled":
            await self._attempt_signal(ledger, twice)
            await self._pause(rng)
            await self.send.send_refused(ledger)
            await self._final_update(ledger, CANCEL, CancelSignal(reason="chaos"), twice)
        elif plan == "attempted_until_the_maximum_then_expired":
            ledger.expire_reason = "max_attempts"
            await self._attempt_signal(ledger, twice)
            for _ in range(MAX_ATTEMPTS_PLAN - 1):
                await self._pause(rng)
                await self._attempt_update(ledger, twice=False)
        elif plan == "left_to_expire_at_its_deadline":
            ledger.expire_reason = "deadline"
            if ledger.index % 2:
                await self._attempt_update(ledger, twice)
            await self.send.send_refused(ledger)
        elif plan == "rescheduled_then_completed":
            await self._rescheduled_then_completed(ledger, rng, twice)
        elif plan == "completion_races_cancellation":
            ledger.race = True
            await asyncio.gather(
                self.send.update(ledger, COMPLETE, complete_signal()),
                self.send.update(ledger, CANCEL, CancelSignal(reason="race")),
            )

    async def _rescheduled_then_completed(
        self, ledger: Ledger, rng: random.Random, twice: bool
    ) -> None:
        at = datetime.now(UTC) + timedelta(seconds=3)
        await self.send.update(ledger, RESCHEDULE, RescheduleSignal(at=at, notes="after dinner"))
        await self._pause(rng)
        await self._attempt_update(ledger, twice)
        await self._pause(rng)
        await self.send.send_refused(ledger)
        if await self.send.signal(ledger, COMPLETE, complete_signal(), twice):
            ledger.signal_final = "completed"

    async def _requested_in_app(self, ledger: Ledger, rng: random.Random, twice: bool) -> None:
        """The agent of a call requested in the TapRaise app, once the follower adopted it: an
        attempt, then the final action its plan gives the agent (others are the app's)."""
        if ledger.plan == "requested_in_app_then_cancelled":
            await self._attempt_signal(ledger, twice)
            await self._pause(rng)
            await self._final_update(ledger, CANCEL, CancelSignal(reason="chaos"), twice)
            return
        await self._attempt_update(ledger, twice)
        if ledger.plan == "requested_in_app_then_completed":
            await self._pause(rng)
            await self._final_update(ledger, COMPLETE, complete_signal(), twice)

    async def _attempt_update(self, ledger: Ledger, twice: bool) -> None:
        message = AttemptSignal(outcome="no_answer", attempt_at=now_ms(), user_uuid=AGENT_USER)
        same_id = ledger.same_id if twice else None
        await self.send.update(ledger, ATTEMPT, message, same_id=same_id)
        if twice and same_id is None:
            # The dialer sends the same report again (another update id): a duplicate.
            self.send.tally.duplicate_deliveries += 1
            await self.send.update(ledger, ATTEMPT, message)

    async def _attempt_signal(self, ledger: Ledger, twice: bool) -> None:
        at = now_ms()
        message = AttemptSignal(outcome="busy", attempt_at=at, user_uuid=AGENT_USER)
        delivered = await self.send.signal(ledger, ATTEMPT, message, twice)
        if ledger.app_closes or not delivered:
            # The app may have closed the call first: then it is ignored, or never delivered.
            ledger.unknown_attempts.add(instant_key(at))
        else:
            # The call is open and below its maximum, so the workflow must accept it (once).
            ledger.accepted_attempts.add(instant_key(at))

    async def _final_update(self, ledger: Ledger, name: str, message: Any, twice: bool) -> None:
        same_id = ledger.same_id if twice else None
        await self.send.update(ledger, name, message, same_id=same_id)
        if twice and same_id is None:
            self.send.tally.duplicate_deliveries += 1
            again = await self.send.update(ledger, name, message)
            if again.outcome == "accepted":
                ledger.notes.append(f"a second {name} was accepted: {again.detail}")
