"""The TapRaise app's users: they request calls there and change calls there (`follow`).

The sandbox plays the app (`/_sandbox/app/…`): its changes are never faulted and never counted
among the API's effects; the follower finds them only by listing what changed in TapRaise.
What each change was answered is kept in the call's ledger; the checks read the sandbox's
request log, which holds every one of them (`app:<action>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import datetime
from typing import Any

import httpx

from tests.chaos.config import APP_RESULT_CODE
from tests.chaos.ledger import AppChange, Ledger, instant_key, now_ms
from tests.chaos.plans import APP_USER


class TapRaiseApp:
    """Users of the TapRaise app, over the sandbox's admin routes."""

    def __init__(self, admin: httpx.AsyncClient, until: float) -> None:
        self.admin = admin
        self.until = until

    async def request(self, ledger: Ledger) -> bool:
        """Request the ledger's call in the app; False when the app refused it.

        The call's `requestedAt` is the app's: the ledger takes it from the answer.
        """
        call = ledger.call
        body: dict[str, Any] = {
            "uuid": str(call.uuid),
            "personUuid": str(call.person_uuid),
            "type": call.type.value,
            "requestedByUserUuid": str(APP_USER),
            "callingOrganizationUuid": str(call.calling_organization_uuid),
            "notes": call.notes,
        }
        answer = await self._send("POST", "/app/calls", body)
        if answer is not None and answer.status_code == 409:
            # A first request whose answer was lost: the call is there (its uuid is ours).
            answer = await self._send("GET", f"/calls/{ledger.call_uuid}", None)
        status = 0 if answer is None else answer.status_code
        ledger.app_changes.append(AppChange("request", status))
        if answer is None or status not in (200, 201):
            text = "no answer" if answer is None else f"{status} {answer.text}"
            ledger.notes.append(f"the app could not request the call: {text}")
            return False
        requested_at = datetime.fromisoformat(answer.json()["requestedAt"].replace("Z", "+00:00"))
        ledger.call = call.model_copy(update={"requested_at": requested_at})
        return True

    async def act(self, ledger: Ledger, rng: random.Random) -> None:
        """Make the ledger's app changes, each after a pause, once TapRaise holds the call.

        They run alongside the call's agent: a change may reach TapRaise before or after the
        agent's messages are carried out, and one the call's state no longer allows (it closed
        meanwhile) is refused by the app, as the app's user would see.
        """
        if not ledger.app_plan or not await self._held(ledger):
            return
        for action in ledger.app_plan:
            await asyncio.sleep(rng.uniform(0.3, 3.0))
            await self._change(ledger, action)

    async def _held(self, ledger: Ledger) -> bool:
        """Wait until TapRaise holds the call (the CRM's create may be retried for a while)."""
        while time.monotonic() < self.until:
            answer = await self._send("GET", f"/calls/{ledger.call_uuid}", None)
            if answer is not None and answer.status_code == 200:
                return True
            await asyncio.sleep(0.3)
        return False

    async def _change(self, ledger: Ledger, action: str) -> None:
        at = now_ms()
        body: dict[str, Any] = {"userUuid": str(APP_USER)}
        if action == "add-attempt":
            body["attemptAt"] = at.isoformat()
        elif action == "complete":
            body["result"] = {"resultCode": APP_RESULT_CODE, "notes": "entered in the app"}
        # Sent once: the app is not faulted, and an attempt sent again would be a second one.
        answer = await self._send("PUT", f"/app/calls/{ledger.call_uuid}/{action}", body, tries=1)
        status = 0 if answer is None else answer.status_code
        attempt_at = instant_key(at) if action == "add-attempt" else None
        ledger.app_changes.append(AppChange(action, status, attempt_at))

    async def _send(
        self, method: str, path: str, body: dict[str, Any] | None, tries: int = 5
    ) -> httpx.Response | None:
        """One admin request; a connection failure (the sandbox busy) is tried again."""
        for _ in range(tries):
            with contextlib.suppress(httpx.TransportError):
                return await self.admin.request(method, path, json=body)
            await asyncio.sleep(0.5)
        return None
