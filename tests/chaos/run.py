"""One chaos run: the processes, the faults let loose and stopped, the agents, the checks."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client

from starter.connect import connect
from starter.follow import FollowerService
from tests.chaos.agents import Agents
from tests.chaos.checks import Checker, Findings
from tests.chaos.config import ChaosConfig
from tests.chaos.faults import Faults
from tests.chaos.ledger import Ledger
from tests.chaos.processes import Stack
from tests.chaos.report import ChaosReport, FollowReport
from tests.chaos.retrying import retry
from tests.chaos.tapraise_app import TapRaiseApp
from workflows.following import FOLLOWER_WORKFLOW_ID, STATUS, FollowerStatus, FollowScope
from workflows.messages import TASK_QUEUE


@contextlib.contextmanager
def _work_dir(config: ChaosConfig) -> Iterator[Path]:
    if config.work_dir is not None:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        yield config.work_dir
        return
    with tempfile.TemporaryDirectory(prefix="tapraise-chaos-") as tmp:
        yield Path(tmp)


def say(config: ChaosConfig, text: str) -> None:
    if config.progress:
        print(text, file=sys.stderr, flush=True)


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Start the processes, run every call through the chosen faults, and check every effect."""
    with _work_dir(config) as work:
        stack = Stack(config, work)
        try:
            say(config, f"starting dev server, sandbox and {config.workers} workers in {work}")
            await stack.start()
            return await _run(config, stack)
        finally:
            await stack.close()


async def _run(config: ChaosConfig, stack: Stack) -> ChaosReport:
    began = time.monotonic()
    async with httpx.AsyncClient(
        base_url=f"{stack.sandbox_url}/_sandbox", headers=stack.admin_headers, timeout=30
    ) as admin:
        faults = Faults(config, admin, began)
        await faults.start()
        client = await connect(stack.address, "default")
        until = began + config.time_budget
        app = None
        if config.has("follow"):
            await _follow(config, client)
            app = TapRaiseApp(admin, until)
        agents = Agents(config, client, until, app)
        run = _Chaos(config, stack, admin, faults, agents, began)
        await run.drive()
        # The harness's own view must survive a restart too: reconnect if the old client broke.
        client = await connect(stack.address, "default")
        say(config, f"{run.at()} checking {config.calls} calls")
        checker = Checker(client, stack.sandbox_url, stack.admin_headers)
        found = await checker.check(agents.ledgers, agents.second_batch_started)
        stats = (await admin.get("/stats")).json()
        follow = None
        if config.has("follow"):
            follow = await _follow_report(config, client, admin, agents.ledgers, found)
    return run.report(found, stats, follow)


async def _follow(config: ChaosConfig, client: Client) -> None:
    """Switch the follower on, as `python -m starter sync start` does, on the workers' task
    queue: every call in scope, following from the run's start."""
    service = FollowerService(client, TASK_QUEUE)
    interval = timedelta(seconds=config.follow_interval)
    await service.start(interval, FollowScope(), since=datetime.now(UTC) - timedelta(seconds=1))


async def _follow_report(
    config: ChaosConfig,
    client: Client,
    admin: httpx.AsyncClient,
    ledgers: list[Ledger],
    found: Findings,
) -> FollowReport:
    """What following did: the follower's status, its requests in TapRaise's log, the checks'
    figures of the calls requested and changed in the app."""
    report = FollowReport(
        interval=config.follow_interval,
        requested_in_app=sum(1 for ledger in ledgers if ledger.in_app),
        adopted=found.adopted,
        adopted_twice=len(found.adopted_twice),
        marked=found.marked,
        lags=[ledger.adopted_after for ledger in ledgers if ledger.adopted_after is not None],
        changed_in_app=sum(1 for ledger in ledgers if ledger.app_plan and not ledger.in_app),
        app_changes=dict(found.app_changes),
        closed_in_app=dict(found.closed_in_app),
        after_app_final=dict(found.after_app_final),
        app_attempts=found.app_attempts,
    )
    handle = client.get_workflow_handle(FOLLOWER_WORKFLOW_ID)
    try:
        status = await retry(
            lambda: handle.query(STATUS, result_type=FollowerStatus), time.monotonic() + 30
        )
    except Exception as exc:  # a figure missing is said, never fatal
        report.status_error = str(exc) or type(exc).__name__
    else:
        report.rounds, report.failed_rounds = status.rounds, status.failed_rounds
        report.follower_adopted, report.delivered = status.adopted, status.delivered
        report.ignored, report.last_error = status.ignored, status.last_error
    for endpoint in ("list", "mark-processed"):
        params: dict[str, str | int] = {"endpoint": endpoint, "limit": 100_000}
        log = (await admin.get("/requests", params=params)).json()["requests"]
        # The list endpoint serves the calls' look-ups too: the follower's ask `updatedAfter`.
        mine = [r for r in log if endpoint != "list" or "updatedAfter" in r["query"]]
        faulted = sum(1 for r in mine if r["fault"] not in (None, "latency") or r["status"] >= 400)
        if endpoint == "list":
            report.list_requests, report.list_faulted = len(mine), faulted
        else:
            report.mark_requests, report.mark_faulted = len(mine), faulted
    return report


@dataclass
class _Chaos:
    """The faults let loose on a run's processes and sandbox while its agents work, and stopped
    (healed) once their scripts are done or the time left asks for it."""

    config: ChaosConfig
    stack: Stack
    admin: httpx.AsyncClient
    faults: Faults
    agents: Agents
    began: float
    done: asyncio.Event = field(default_factory=asyncio.Event)
    healed: asyncio.Event = field(default_factory=asyncio.Event)
    healed_at: float | None = None
    create_kills: int = 0

    def at(self) -> str:
        return f"[{time.monotonic() - self.began:5.0f} s]"

    async def drive(self) -> None:
        """Start the calls and let the faults loose; return once every agent is done."""
        config = self.config
        chaos = [
            asyncio.create_task(self._supervise()),
            asyncio.create_task(self._progress()),
            asyncio.create_task(self._heal()),
        ]
        if config.has("kills"):
            chaos.append(asyncio.create_task(self._kills()))
            self.agents.on_page = self._on_page
        if config.has("restart"):
            chaos.append(asyncio.create_task(self._restart()))
        if config.has("tapraise") and config.credential_outage_seconds > 0:
            chaos.append(asyncio.create_task(self._withdraw()))
        try:
            await self.agents.send_batch()
            await self.agents.wait()
        finally:
            self.agents.scripts_finished.set()  # also when some call never started
            self.done.set()
            await asyncio.gather(*chaos, return_exceptions=True)

    async def _unless_healed(self, seconds: float) -> bool:
        """Wait `seconds`; False when the faults stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.healed.wait(), seconds)
            return False
        return True

    async def _heal(self) -> None:
        config = self.config
        latest = max(0.0, min(config.chaos_for, config.time_budget - config.heal_window))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.agents.scripts_finished.wait(), latest)
        self.healed.set()
        self.healed_at = time.monotonic() - self.began
        await self.faults.heal()
        say(config, f"{self.at()} faults stopped; every call must now close")

    async def _kills(self) -> None:
        while not self.healed.is_set():
            if not await self._unless_healed(self.config.kill_every):
                return
            self.stack.kill_next_worker()

    def _on_page(self, chunk: list[Ledger], page: int) -> Awaitable[None] | None:
        # Every other page of the first starts is a burst, until the kills are used up.
        if page % 2 or self.create_kills >= self.config.create_kills or self.healed.is_set():
            return None
        return self._kill_after_creates(chunk)

    async def _kill_after_creates(self, chunk: list[Ledger]) -> None:
        """Kill a worker as soon as half the burst's creates landed in TapRaise.

        Their answers are held back (applied at once, answered after the client gave up), so
        the workers that sent them are still inside those calls' first workflow task: the
        killed one's tasks time out and another worker runs them again from the start, after
        TapRaise applied the create.
        """
        if not await self.faults.hold_create_answers(len(chunk)):
            return
        uuids = {ledger.call_uuid for ledger in chunk}
        enough = max(1, len(uuids) // 2)
        deadline = time.monotonic() + 20
        params: dict[str, str | int] = {"endpoint": "create", "limit": 2 * len(chunk) + 20}
        while time.monotonic() < deadline and not self.healed.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                log = (await self.admin.get("/requests", params=params)).json()["requests"]
                landed = {
                    r["callUuid"] for r in log if r["status"] == 201 and r["callUuid"] in uuids
                }
                if len(landed) >= enough:
                    self._kill_for_burst(chunk, len(landed))
                    return
            await asyncio.sleep(0.05)

    def _kill_for_burst(self, chunk: list[Ledger], landed: int) -> None:
        self.stack.kill_next_worker()
        self.create_kills += 1
        for ledger in chunk:
            ledger.burst = True
        say(self.config, f"{self.at()} worker killed after {landed} creates landed")

    async def _withdraw(self) -> None:
        if not await self._unless_healed(self.config.credential_outage_at):
            return
        if await self.faults.withdraw_credentials():
            say(
                self.config,
                f"{self.at()} TapRaise withdrew the credentials for "
                f"{self.config.credential_outage_seconds:.0f} s",
            )

    async def _supervise(self) -> None:
        while not self.done.is_set():
            self.stack.revive_exited_workers()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 1.0)

    async def _restart(self) -> None:
        if not await self._unless_healed(self.config.restart_at):
            return
        down = await self.stack.restart_server()
        say(self.config, f"{self.at()} dev server restarted ({down:.1f} s)")

    async def _progress(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 5.0)
            say(
                self.config,
                f"{self.at()} started {self.agents.started}/{self.config.calls} · "
                f"closed {self.agents.closed} · kills {self.stack.kills} · "
                f"restarts {self.stack.restarts}" + self._adopted(),
            )

    def _adopted(self) -> str:
        in_app = [ledger for ledger in self.agents.ledgers if ledger.in_app]
        if not in_app:
            return ""
        adopted = sum(1 for ledger in in_app if ledger.adopted_after is not None)
        return f" · adopted {adopted}/{len(in_app)} requested in the app"

    def report(
        self, found: Findings, stats: dict[str, Any], follow: FollowReport | None
    ) -> ChaosReport:
        """The run's figures and what the checks found."""
        agents, stack = self.agents, self.stack
        return ChaosReport(
            calls=self.config.calls,
            faults_injected=dict(stats.get("faults", {})),
            tapraise_requests=int(stats["requests"]["total"]),
            kills=stack.kills,
            worker_exits=stack.worker_exits,
            restarts=stack.restarts,
            duplicate_deliveries=agents.tally.duplicate_deliveries,
            races=sum(1 for ledger in agents.ledgers if ledger.race),
            bare_starts=sum(1 for ledger in agents.ledgers if ledger.bare and ledger.started),
            create_kills=self.create_kills,
            first_tasks_redone=found.first_tasks_redone,
            credential_outage=self.faults.outage,
            same_id_retries=agents.tally.same_id_retries,
            same_id_concurrent=agents.tally.same_id_concurrent,
            refused_sent=dict(found.refused_sent),
            refused_by=dict(found.refused_by),
            lost=len(found.lost),
            duplicated=len(found.duplicated),
            mismatched=len(found.mismatched),
            stuck=len(found.stuck),
            failed=len(found.failed),
            problems=found.problems,
            stuck_details=found.stuck_details,
            resolved_from_history=found.resolved,
            elapsed=time.monotonic() - self.began,
            final_phases=dict(found.phases),
            healed_at=self.healed_at,
            follow=follow,
        )
