"""The agents of every call and the CRM batch that starts them."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from starter.service import CallService, StartResult, StartStatus
from tests.chaos.config import ChaosConfig
from tests.chaos.ledger import Ledger, now_ms
from tests.chaos.messenger import Messenger, Tally
from tests.chaos.plans import build_ledgers
from tests.chaos.retrying import TRANSIENT, retry
from tests.chaos.scripts import Scripts
from tests.chaos.tapraise_app import TapRaiseApp
from workflows.messages import TASK_QUEUE, WORKFLOW_TYPE


class Agents:
    """The agents of every call, the CRM batch, and the clocks of the run."""

    def __init__(
        self, config: ChaosConfig, client: Client, until: float, app: TapRaiseApp | None = None
    ) -> None:
        self.config = config
        self.app = app
        self.client = client
        self.service = CallService(client)
        self.until = until
        self.tally = Tally()
        self.send = Messenger(client, until, config.time_budget, self.tally)
        self.scripts = Scripts(config, self.send)
        self.second_batch_started: list[str] = []
        self.closed = 0
        self.started = 0
        self.room = asyncio.Event()
        # Called with each page of first starts; returns what to run alongside (a kill burst).
        self.on_page: Callable[[list[Ledger], int], Awaitable[None] | None] | None = None
        self.ledgers = build_ledgers(config)
        self._tasks: list[asyncio.Task[None]] = []
        self.scripts_done = 0
        self.scripts_finished = asyncio.Event()

    # -- the CRM batch -------------------------------------------------------------------------

    async def send_batch(self) -> None:
        """Start every call as the CRM's batch does, in pages that keep `max_active` in flight.

        Rows whose start failed (Temporal restarting) are sent again, as a CRM would. With the
        message faults the whole batch is then delivered a second time, once part of the calls
        closed: every second start must answer "already started" and create nothing.
        """
        page = max(1, min(50, self.config.max_active))
        pending = list(self.ledgers)
        pages = 0
        while pending:
            while self.started - self.closed >= self.config.max_active:
                self.room.clear()
                await self.room.wait()
            chunk, pending = pending[:page], pending[page:]
            # The calls of the page requested in the TapRaise app are requested there meanwhile.
            for ledger in chunk:
                if ledger.in_app:
                    self._tasks.append(asyncio.create_task(self._requested_in_app(ledger)))
            chunk = [ledger for ledger in chunk if not ledger.in_app]
            _stamp(chunk)
            alongside = self.on_page(chunk, pages) if self.on_page is not None and chunk else None
            watcher = asyncio.ensure_future(alongside) if alongside is not None else None
            try:
                failed = await self._start(chunk, first=True) if chunk else []
            finally:
                if watcher is not None:
                    await asyncio.gather(watcher, return_exceptions=True)
            pages += 1
            pending = failed + pending
            if failed:
                await asyncio.sleep(1.0)
        if self.config.has("messages"):
            await self._send_batch_again()

    async def _send_batch_again(self) -> None:
        """Deliver the whole batch a second time, once part of the calls closed."""
        while self.closed < self.config.calls * 0.3 and time.monotonic() < self.until:
            self.room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.room.wait(), 1.0)
        again = [ledger for ledger in self.ledgers if not ledger.in_app]
        while again and time.monotonic() < self.until:
            again = await self._start(again, first=False)
            if again:
                await asyncio.sleep(1.0)

    async def _start(self, ledgers: list[Ledger], first: bool) -> list[Ledger]:
        """Start calls with the starter's own logic (or bare); return those to send again."""
        bare = [ledger for ledger in ledgers if first and ledger.bare]
        crm = [ledger for ledger in ledgers if not (first and ledger.bare)]
        crm_results, bare_results = await asyncio.gather(
            self.service.start_many([ledger.call for ledger in crm], 20),
            asyncio.gather(*(self._start_bare(ledger) for ledger in bare)),
        )
        failed: list[Ledger] = []
        for ledger, result in [
            *zip(crm, crm_results, strict=True),
            *zip(bare, bare_results, strict=True),
        ]:
            if result.status is StartStatus.FAILED:
                failed.append(ledger)
                continue
            if first:
                self._launched(ledger, result)
            else:
                self.tally.duplicate_deliveries += 1
                if result.status is not StartStatus.ALREADY_STARTED:
                    self.second_batch_started.append(ledger.call_uuid)
        return failed

    async def _start_bare(self, ledger: Ledger) -> StartResult:
        """Start the call as a plain `temporal workflow start` does: the input alone.

        No `requestedAt` (the workflow takes its run's start time), no search attributes, no
        conflict policy: a start that went through before a restart broke its answer is
        refused "already started" when sent again, and counts as started.
        """
        call_uuid = ledger.call.uuid
        assert call_uuid is not None
        body = {
            "uuid": str(call_uuid),
            "personUuid": str(ledger.call.person_uuid),
            "type": ledger.call.type.value,
            "notes": ledger.call.notes,
            "policy": ledger.policy,
        }
        ledger.start_tries += 1
        try:
            await self.client.start_workflow(
                WORKFLOW_TYPE, body, id=ledger.workflow_id, task_queue=TASK_QUEUE
            )
        except WorkflowAlreadyStartedError:
            tried = ledger.start_tries > 1
            status = StartStatus.STARTED if tried else StartStatus.ALREADY_STARTED
            return StartResult(call_uuid, status, detail="already started")
        except RPCError as exc:
            status = StartStatus.FAILED if exc.status in TRANSIENT else StartStatus.REFUSED
            return StartResult(call_uuid, status, detail=str(exc))
        return StartResult(call_uuid, StartStatus.STARTED)

    def _launched(self, ledger: Ledger, result: StartResult) -> None:
        if result.status is not StartStatus.STARTED:
            ledger.notes.append(f"first start answered {result.status.value}: {result.detail}")
        ledger.started = True
        self.started += 1
        self._tasks.append(asyncio.create_task(self._agent(ledger)))

    async def _requested_in_app(self, ledger: Ledger) -> None:
        """Request the call in the TapRaise app, and launch its agent once it is adopted."""
        assert self.app is not None and ledger.call.uuid is not None
        try:
            adopted = await self.app.request(ledger) and await self._adopted(ledger)
        except Exception as exc:  # recorded, judged at the end; one call never stops the run
            ledger.notes.append(f"request in the app: {type(exc).__name__}: {exc}")
            adopted = False
        if adopted:
            self._launched(ledger, StartResult(ledger.call.uuid, StartStatus.STARTED))
        else:
            self._script_done()  # never adopted: the checks say so

    async def _adopted(self, ledger: Ledger) -> bool:
        """Wait until the call's workflow exists (the follower started it); False: never."""
        requested = time.monotonic()
        handle = self.client.get_workflow_handle(ledger.workflow_id)
        while time.monotonic() < self.until:
            try:
                await retry(handle.describe, self.until)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                await asyncio.sleep(0.2)
                continue
            ledger.adopted_after = time.monotonic() - requested
            return True
        return False

    async def wait(self) -> None:
        """Wait for every agent (each stops by the time budget)."""
        while True:
            tasks = list(self._tasks)
            await asyncio.gather(*tasks, return_exceptions=True)
            if len(tasks) == len(self._tasks):
                return

    # -- one agent -----------------------------------------------------------------------------

    async def _agent(self, ledger: Ledger) -> None:
        rng = random.Random(self.config.seed * 1_000_003 + ledger.index)
        # The app's users draw from a generator of their own: the agent's draws stay the same.
        app_rng = random.Random(self.config.seed * 104_729 + ledger.index)
        work: list[Awaitable[None]] = [self.scripts.run(ledger, rng)]
        if self.app is not None:
            work.append(self.app.act(ledger, app_rng))
        try:
            await asyncio.wait_for(
                asyncio.gather(*work), timeout=max(1.0, self.until - time.monotonic())
            )
        except TimeoutError:
            ledger.notes.append("the agent's script ran out of time")
        except Exception as exc:  # recorded, judged at the end; one agent never stops the run
            ledger.notes.append(f"agent error {type(exc).__name__}: {exc}")
        self._script_done()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._wait_closed(ledger), timeout=max(1.0, self.until - time.monotonic())
            )
        self.closed += 1
        self.room.set()

    def _script_done(self) -> None:
        self.scripts_done += 1
        if self.scripts_done == self.config.calls:
            self.scripts_finished.set()

    async def _wait_closed(self, ledger: Ledger) -> None:
        handle = self.send.handle(ledger)
        with contextlib.suppress(WorkflowFailureError):
            await retry(handle.result, self.until)


def _stamp(ledgers: list[Ledger]) -> None:
    """Give calls about to be started their `requestedAt`, a CRM row's creation time.

    Rows of an export are created apart, not all in one instant: 150 ms apart here. (TapRaise
    has no GET by uuid; finding a call pages through the calls requested after it, so a batch
    stamped with one instant makes every look-up read the whole batch.) Bare starts carry none:
    the workflow takes its run's start time.
    """
    now = now_ms()
    for position, ledger in enumerate(ledgers):
        if ledger.call.requested_at is None and not ledger.bare:
            at = now - timedelta(milliseconds=150 * (len(ledgers) - position))
            ledger.call = ledger.call.model_copy(update={"requested_at": at})
