"""`python -m bench.chaos` (what `make chaos` runs): calls driven through injected faults, with
every effect accounted for.

The harness starts its own processes on free loopback ports in a temporary directory: the
Temporal dev server on a SQLite file, the TapRaise sandbox, and K workers (`python -m worker`,
configured through their environment like a user's). Then it lets the faults loose, each kind
alone or all together (`--faults`):

- **tapraise**: on every endpoint, 30 % of requests answer 500/503, 10 % 429 with `Retry-After`,
  5 % are applied but answered after the workers' client gave up, and some answer slowly;
- **kills**: every `--kill-every` seconds one worker is SIGKILLed and started again, in turn;
- **restart**: once, at `--restart-at`, the dev server is stopped (SIGTERM) and started again on
  the same SQLite file, and every client has to reconnect;
- **messages**: signals and updates delivered twice, the CRM batch started twice, a completion
  racing a cancellation, a completion arriving while the create is still being retried.

Each call has an agent with a deterministic script chosen from the call's index (two unanswered
attempts then complete; cancel; attempts until the maximum; left to expire at its deadline; …).
The agents keep a ledger of what they reported and what the workflow accepted. Once every
agent's script is done (at the latest after `--chaos-for` seconds, or `--heal-window` seconds
before the end of the budget) the faults stop, as outages do, and every call must then close
within the budget. At the end the
harness checks, from the sandbox's request log and state and from each workflow's final `state`:
exactly one successful create per call, exactly as many attempts in TapRaise as were accepted,
exactly one final action matching the agents' or the policy's, the workflow closed in the phase
TapRaise holds, and every workflow closed within the time budget. It prints the figures and exits
non-zero when anything was lost, duplicated, mismatched or stuck.

    python -m bench.chaos                          # 1,000 calls, every fault kind at once
    python -m bench.chaos --calls 100 --kill-every 5 --restart-at 15 --time-budget 70 \
        --heal-window 25
    python -m bench.chaos --faults kills           # one kind alone
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode

from bench.calls import ALWAYS_OPEN
from bench.stack import Child, free_port, temporal_cli
from starter.calls import CallService, StartResult, StartStatus
from tapraise.sandbox.seed import DEMO_PERSON_UUIDS
from workflows.connect import connect, missing_search_attributes, search_attribute_flags
from workflows.messages import (
    ACTION_REJECTED,
    ATTEMPT,
    CANCEL,
    COMPLETE,
    RESCHEDULE,
    ActionAccepted,
    AttemptSignal,
    CallInput,
    CallState,
    CancelSignal,
    CompleteSignal,
    RescheduleSignal,
    workflow_id_for,
)

T = TypeVar("T")

HOST: Final = "127.0.0.1"
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
FAULT_KINDS: Final = ("all", "tapraise", "kills", "restart", "messages")
STARTUP_TIMEOUT_SECONDS: Final = 60.0
STOP_TIMEOUT_SECONDS: Final = 15.0
# The Temporal errors a client sees while the server restarts or a worker is gone: retried.
_TRANSIENT: Final = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.UNKNOWN,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.FAILED_PRECONDITION,
    }
)
_EFFECTS: Final = ("create", "add-attempt", "complete", "cancel", "expire")
_FINAL_ACTION: Final = {"completed": "complete", "cancelled": "cancel", "expired": "expire"}


# ── configuration and report ─────────────────────────────────────────────────────────────────


@dataclass
class ChaosConfig:
    """One chaos run.

    Attributes:
        calls: How many calls the CRM asks for.
        workers: Worker processes on the task queue.
        faults: `all`, or one kind alone: `tapraise`, `kills`, `restart`, `messages`.
        kill_every: Seconds between two worker kills (each kill takes the next worker in turn).
        restart_at: Seconds into the run at which the dev server is stopped and started again.
        seed: Seeds the agents' scripts and the sandbox's fault draws.
        time_budget: Seconds from the first start by which every workflow must be closed.
        heal_window: The faults stop once every agent's script is done, and at the latest this
            many seconds before the end of the budget, so that every call can finish: a local
            activity's retries back off up to five minutes.
        chaos_for: The faults stop after this many seconds at the latest (an outage ends).
        max_active: Calls in flight at once (the CRM batch is sent in pages to keep to it).
        error_share: Share of TapRaise requests answered 500 or 503 (half each).
        rate_limit_share: Share answered 429 with `Retry-After`.
        late_share: Share applied but answered after the client gave up.
        latency_share: Share answered after `latency_seconds`.
        latency_seconds: The slow answers' delay (below the client's timeout).
        late_delay_seconds: How late a late answer comes (above the client's timeout).
        client_timeout_seconds: The workers' TapRaise timeout (`TAPRAISE_TIMEOUT_SECONDS`).
        deadline_seconds: The deadline of the calls whose script lets them expire.
        progress: Print a progress line every few seconds (to stderr).
        work_dir: Where the processes keep their files (default: a fresh temporary directory).
    """

    calls: int = 1000
    workers: int = 3
    faults: str = "all"
    kill_every: float = 20.0
    restart_at: float = 45.0
    seed: int = 1
    time_budget: float = 1200.0
    heal_window: float = 330.0
    chaos_for: float = 600.0
    max_active: int = 150
    error_share: float = 0.30
    rate_limit_share: float = 0.10
    late_share: float = 0.05
    latency_share: float = 0.05
    latency_seconds: float = 1.0
    late_delay_seconds: float = 3.0
    client_timeout_seconds: float = 2.0
    deadline_seconds: float = 15.0
    progress: bool = True
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.faults not in FAULT_KINDS:
            raise ValueError(f"faults must be one of {', '.join(FAULT_KINDS)}, not {self.faults!r}")
        if self.late_delay_seconds <= self.client_timeout_seconds:
            raise ValueError("late_delay_seconds must exceed client_timeout_seconds")

    def has(self, kind: str) -> bool:
        """Whether this run injects faults of `kind`."""
        return self.faults in ("all", kind)


@dataclass
class ChaosReport:
    """What a chaos run found. Every count but `calls`, the faults, kills and restarts must be 0.

    Attributes:
        calls: Calls the CRM asked for.
        faults_injected: TapRaise faults per kind (`500`, `503`, `429`, `late`, `latency`).
        tapraise_requests: Requests TapRaise received.
        kills: Workers SIGKILLed.
        worker_exits: Workers that exited on their own (and were started again).
        restarts: Dev server restarts.
        duplicate_deliveries: Messages and starts the agents delivered a second time.
        races: Completion-versus-cancellation races run.
        lost / duplicated / mismatched / stuck: Calls with each kind of problem.
        problems: One line per problem found.
        stuck_details: For every call still open at the end, what it waits on.
        resolved_from_history: Updates whose answer the agent never got (the server restarted
            under it), judged from the workflow's history instead.
        elapsed: Seconds from the first start to the last check.
        final_phases: How many calls ended in each phase.
    """

    calls: int
    faults_injected: dict[str, int] = field(default_factory=dict)
    tapraise_requests: int = 0
    kills: int = 0
    worker_exits: int = 0
    restarts: int = 0
    duplicate_deliveries: int = 0
    races: int = 0
    lost: int = 0
    duplicated: int = 0
    mismatched: int = 0
    stuck: int = 0
    problems: list[str] = field(default_factory=list)
    stuck_details: list[str] = field(default_factory=list)
    resolved_from_history: int = 0
    elapsed: float = 0.0
    healed_at: float | None = None
    final_phases: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated, mismatched or stuck."""
        return not (self.lost or self.duplicated or self.mismatched or self.stuck)

    def lines(self) -> list[str]:
        """The report as printed."""
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults_injected.items())) or "none"
        phases = ", ".join(f"{k} {v}" for k, v in sorted(self.final_phases.items())) or "none"
        lines = [
            f"calls                 {self.calls} in {self.elapsed:.0f} s ({phases})",
            f"TapRaise faults       {sum(self.faults_injected.values())} of "
            f"{self.tapraise_requests} requests ({faults})",
            f"worker kills          {self.kills} (+ {self.worker_exits} exits on their own)",
            f"server restarts       {self.restarts}",
            f"faults stopped at     {self.healed_at:.0f} s"
            if self.healed_at is not None
            else "faults stopped at     the end",
            f"duplicate deliveries  {self.duplicate_deliveries} (signals, updates, batch starts)",
            f"races                 {self.races} completion-vs-cancellation",
            f"answers from history  {self.resolved_from_history}",
            f"lost                  {self.lost}",
            f"duplicated            {self.duplicated}",
            f"mismatched            {self.mismatched}",
            f"stuck                 {self.stuck}",
        ]
        if self.problems:
            lines.append("problems:")
            lines += [f"  {p}" for p in self.problems[:40]]
            if len(self.problems) > 40:
                lines.append(f"  … and {len(self.problems) - 40} more")
        if self.stuck_details:
            lines.append("still open:")
            lines += [f"  {d}" for d in self.stuck_details[:20]]
        lines.append("OK: nothing lost, duplicated, mismatched or stuck" if self.ok else "FAILED")
        return lines


# ── processes ────────────────────────────────────────────────────────────────────────────────


class _Stack:
    """Dev server, sandbox and workers of one chaos run."""

    def __init__(self, config: ChaosConfig, work: Path) -> None:
        self.config = config
        self.work = work
        self.temporal_port = free_port()
        self.sandbox_port = free_port()
        self.address = f"{HOST}:{self.temporal_port}"
        self.sandbox_url = f"http://{HOST}:{self.sandbox_port}"
        base_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "TAPRAISE_"))
        }
        base_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
        )
        self.base_env = base_env
        self.server = self._child(
            "temporal",
            [
                str(temporal_cli()),
                "server", "start-dev", "--headless", "--ip", HOST,
                "--port", str(self.temporal_port),
                "--db-filename", str(work / "temporal.sqlite"),
                "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
                "--log-level", "error",
                *search_attribute_flags(),
            ],
        )  # fmt: skip
        self.sandbox = self._child(
            "sandbox",
            [
                sys.executable, "-m", "tapraise.sandbox", "--host", HOST,
                "--port", str(self.sandbox_port), "--data-dir", str(work / "sandbox"),
                "--log-level", "warning",
            ],
        )  # fmt: skip
        self.workers: list[Child] = []
        self.kills = 0
        self.worker_exits = 0
        self.restarts = 0

    def _child(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        env = self.base_env if env is None else env
        return Child(name, argv, self.work / f"{name}.log", env, self.work)

    async def start(self) -> None:
        """Start the sandbox and the server, then the workers; return once all are ready."""
        self.sandbox.start()
        self.server.start()
        await self._sandbox_ready()
        await self.server_ready()
        credentials = json.loads((self.work / "sandbox" / "service-account.json").read_text())
        key_file = self.work / "private-key.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(credentials["privateKey"])
        worker_env = {
            **self.base_env,
            "TEMPORAL_ADDRESS": self.address,
            "TEMPORAL_NAMESPACE": "default",
            "TAPRAISE_BASE_URL": self.sandbox_url,
            "TAPRAISE_ACCOUNT_EMAIL": credentials["accountEmail"],
            "TAPRAISE_PRIVATE_KEY_ID": credentials["privateKeyId"],
            "TAPRAISE_PRIVATE_KEY_FILE": str(key_file),
            "TAPRAISE_TIMEOUT_SECONDS": str(self.config.client_timeout_seconds),
            "LOG_LEVEL": "INFO",
        }
        self.workers = [
            self._child(f"worker-{i}", [sys.executable, "-m", "worker"], worker_env)
            for i in range(self.config.workers)
        ]
        for worker in self.workers:
            worker.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not all("worker ready" in w.log_tail(200) for w in self.workers):
            for worker in self.workers:
                if not worker.alive:
                    raise RuntimeError(f"{worker.name} exited at start:\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError("workers not ready in time")
            await asyncio.sleep(0.2)

    async def _sandbox_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                if not self.sandbox.alive:
                    raise RuntimeError(f"sandbox exited:\n{self.sandbox.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{self.sandbox_url}/_sandbox/health")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"sandbox not ready in time:\n{self.sandbox.log_tail()}")

    async def server_ready(self) -> None:
        """Wait until the dev server answers and has the contract's search attributes."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not self.server.alive:
                raise RuntimeError(f"dev server exited:\n{self.server.log_tail()}")
            try:
                client = await connect(self.address, "default")
                if not await missing_search_attributes(client):
                    return
            except (RuntimeError, RPCError):
                pass
            await asyncio.sleep(0.3)
        raise RuntimeError(f"dev server not ready in time:\n{self.server.log_tail()}")

    def kill_worker(self, index: int) -> None:
        """SIGKILL one worker and start it again at once."""
        worker = self.workers[index]
        worker.kill()
        self.kills += 1
        worker.start()

    def revive_exited_workers(self) -> None:
        """Start again any worker that exited on its own (as a process supervisor would)."""
        for worker in self.workers:
            if not worker.alive:
                self.worker_exits += 1
                worker.start()

    async def restart_server(self) -> float:
        """Stop the dev server (SIGTERM), start it on the same file; return seconds it was down."""
        began = time.monotonic()
        await asyncio.to_thread(self.server.stop)
        self.server.start()
        await self.server_ready()
        self.restarts += 1
        return time.monotonic() - began

    async def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        await asyncio.to_thread(self.sandbox.stop)
        await asyncio.to_thread(self.server.stop)


# ── agents ───────────────────────────────────────────────────────────────────────────────────


class _Rejected(Exception):
    """The workflow refused an update; the message is its reason."""


class _Unknown(Exception):
    """The answer to an update never arrived; the history will tell."""


@dataclass
class _Update:
    """One update an agent sent, and what became of it."""

    id: str
    name: str
    attempt_at: str | None = None  # for attempts: the attemptAt reported
    outcome: str = "pending"  # accepted | rejected | unknown
    detail: str = ""


@dataclass
class Ledger:
    """One call: its agent's script and what the agent reported and the workflow accepted.

    Attempts are kept by their `attemptAt` (milliseconds, UTC), so that one sent twice counts
    once. An update whose answer never arrived (the server restarted under it, or the workflow
    closed first) is *unknown* until the workflow's history says whether it was accepted.

    Attributes:
        accepted_attempts: Attempts the workflow accepted (an update answered "attempt N
            recorded" or "duplicate: already recorded", or a signal the workflow had to accept).
        unknown_attempts: Attempts sent whose fate the agent does not know.
        signal_final: The final phase asked for by signal (`completed`), if any.
        expire_reason: When the script leaves the call to the policy: `max_attempts` or
            `deadline`.
        updates: Updates sent, in order.
    """

    index: int
    call: CallInput
    plan: str
    accepted_attempts: set[str] = field(default_factory=set)
    unknown_attempts: set[str] = field(default_factory=set)
    signal_final: str | None = None
    expire_reason: str | None = None
    started: bool = False
    updates: list[_Update] = field(default_factory=list)
    race: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def call_uuid(self) -> str:
        return str(self.call.uuid)

    @property
    def workflow_id(self) -> str:
        return workflow_id_for(self.call.uuid or "")

    def finals(self, outcome: str) -> set[str]:
        """The final phases asked for by updates with this outcome (and by signal, if any).

        For `rejected`, only refusals saying the call is already in (or already being taken to)
        the phase asked for: a worker that died after carrying out the action but before
        recording it leaves the call closed in TapRaise, and the next worker answers the same
        update "already cancelled"; a delivery retried while the first is carried out is
        answered "already being cancelled".
        """
        phases = {
            _PHASE_OF[u.name]
            for u in self.updates
            if u.name in _PHASE_OF
            and u.outcome == outcome
            and (
                outcome != "rejected"
                or u.detail
                in (
                    f"call is already {_PHASE_OF[u.name]}",
                    f"call is already being {_PHASE_OF[u.name]}",
                )
            )
        }
        if outcome == "accepted" and self.signal_final:
            phases.add(self.signal_final)
        return phases

    def judge(self, update: _Update, answer: dict[str, Any] | None) -> None:
        """Record the workflow's answer (None: refused) to an update."""
        if answer is None:
            update.outcome = "rejected"
            return
        update.outcome, update.detail = "accepted", str(answer.get("detail", ""))
        if update.attempt_at is not None:
            self.unknown_attempts.discard(update.attempt_at)
            if update.detail.startswith(("attempt ", "duplicate")):
                self.accepted_attempts.add(update.attempt_at)


_PHASE_OF: Final = {COMPLETE: "completed", CANCEL: "cancelled"}
_ADOPTED: Final = "already final in TapRaise"


async def _retry(action: Callable[[], Awaitable[T]], until: float) -> T:
    """Run one Temporal request, retrying while the server or the workflow task is unavailable.

    A restart makes the server unreachable for a while; a workflow task that failed with a
    killed worker makes the server refuse updates (FAILED_PRECONDITION) until a worker picks it
    up again. Updates are retried under their own id, so a retry never delivers a second one.
    """
    delay = 0.2
    while True:
        try:
            return await action()
        except RPCError as exc:
            if exc.status not in _TRANSIENT or time.monotonic() > until:
                raise
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            if time.monotonic() > until:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def chaos_policy(deadline_seconds: float, max_attempts: int) -> dict[str, Any]:
    """Policy overrides that make a call progress in seconds: windows always open, no holidays."""
    return {
        "windows": ALWAYS_OPEN,
        "blackoutDates": [],
        "holidayCountries": [],
        "firstAttemptDelay": 1,
        "retryDelays": {"no_answer": 2, "busy": 1, "voicemail": 3},
        "maxAttempts": max_attempts,
        "deadline": deadline_seconds,
        "attemptWindow": 8,
        "missedSlotDelay": 2,
        "timezone": "Europe/Amsterdam",
    }


PLANS: Final = (
    "two_unanswered_then_completed",
    "attempted_then_cancelled",
    "attempted_until_the_maximum_then_expired",
    "left_to_expire_at_its_deadline",
    "rescheduled_then_completed",
    "completion_races_cancellation",
    "completed_while_the_create_is_retried",
)
_MESSAGE_PLANS: Final = frozenset(
    {"completion_races_cancellation", "completed_while_the_create_is_retried"}
)
_MAX_ATTEMPTS_PLAN: Final = 3


class _Agents:
    """The agents of every call, the CRM batch, and the clocks of the run."""

    def __init__(self, config: ChaosConfig, client: Client, until: float) -> None:
        self.config = config
        self.client = client
        self.service = CallService(client)
        self.until = until
        self.duplicate_deliveries = 0
        self.second_batch_started: list[str] = []
        self.closed = 0
        self.started = 0
        self.room = asyncio.Event()
        plans = [p for p in PLANS if config.has("messages") or p not in _MESSAGE_PLANS]
        long_deadline = config.time_budget + 120
        self.ledgers: list[Ledger] = []
        for index in range(config.calls):
            plan = plans[index % len(plans)]
            deadline = (
                config.deadline_seconds
                if plan == "left_to_expire_at_its_deadline"
                else long_deadline
            )
            max_attempts = _MAX_ATTEMPTS_PLAN if "maximum" in plan else 5
            call = CallInput(
                uuid=uuid.uuid4(),
                person_uuid=uuid.UUID(DEMO_PERSON_UUIDS[index % len(DEMO_PERSON_UUIDS)]),
                type="verification" if index % 3 else "happy_call",
                notes=f"chaos call {index}",
                policy=chaos_policy(deadline, max_attempts),
            )
            self.ledgers.append(Ledger(index=index, call=call, plan=plan))
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
        while pending:
            while self.started - self.closed >= self.config.max_active:
                self.room.clear()
                await self.room.wait()
            chunk, pending = pending[:page], pending[page:]
            _stamp(chunk)
            retry = await self._start(chunk, first=True)
            pending = retry + pending
            if retry:
                await asyncio.sleep(1.0)
        if not self.config.has("messages"):
            return
        while self.closed < self.config.calls * 0.3 and time.monotonic() < self.until:
            self.room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.room.wait(), 1.0)
        again = list(self.ledgers)
        while again and time.monotonic() < self.until:
            again = await self._start(again, first=False)
            if again:
                await asyncio.sleep(1.0)

    async def _start(self, ledgers: list[Ledger], first: bool) -> list[Ledger]:
        """Start calls with the starter's own logic; return those to send again."""
        results = await self.service.start_many([ledger.call for ledger in ledgers], 20)
        retry: list[Ledger] = []
        for ledger, result in zip(ledgers, results, strict=True):
            if result.status is StartStatus.FAILED:
                retry.append(ledger)
                continue
            if first:
                self._launched(ledger, result)
            else:
                self.duplicate_deliveries += 1
                if result.status is not StartStatus.ALREADY_STARTED:
                    self.second_batch_started.append(ledger.call_uuid)
        return retry

    def _launched(self, ledger: Ledger, result: StartResult) -> None:
        if result.status is not StartStatus.STARTED:
            ledger.notes.append(f"first start answered {result.status.value}: {result.detail}")
        ledger.started = True
        self.started += 1
        self._tasks.append(asyncio.create_task(self._agent(ledger)))

    async def wait(self) -> None:
        """Wait for every agent (each stops by the time budget)."""
        while True:
            tasks = list(self._tasks)
            await asyncio.gather(*tasks, return_exceptions=True)
            if len(tasks) == len(self._tasks):
                return

    # -- one agent -----------------------------------------------------------------------------

    def _handle(self, ledger: Ledger) -> WorkflowHandle[Any, CallState]:
        return self.client.get_workflow_handle(ledger.workflow_id, result_type=CallState)

    async def _agent(self, ledger: Ledger) -> None:
        rng = random.Random(self.config.seed * 1_000_003 + ledger.index)
        try:
            await asyncio.wait_for(
                self._script(ledger, rng), timeout=max(1.0, self.until - time.monotonic())
            )
        except TimeoutError:
            ledger.notes.append("the agent's script ran out of time")
        except Exception as exc:  # recorded, judged at the end; one agent never stops the run
            ledger.notes.append(f"agent error {type(exc).__name__}: {exc}")
        self.scripts_done += 1
        if self.scripts_done == self.config.calls:
            self.scripts_finished.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._wait_closed(ledger), timeout=max(1.0, self.until - time.monotonic())
            )
        self.closed += 1
        self.room.set()

    async def _wait_closed(self, ledger: Ledger) -> None:
        handle = self._handle(ledger)
        with contextlib.suppress(WorkflowFailureError):
            await _retry(handle.result, self.until)

    async def _pause(self, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(0.3, 1.5))

    async def _script(self, ledger: Ledger, rng: random.Random) -> None:
        twice = self.config.has("messages")
        plan = ledger.plan
        if plan == "completed_while_the_create_is_retried":
            # At once after the start: with TapRaise failing, the create is usually still retried.
            await self._signal(ledger, COMPLETE, _complete(), twice)
            ledger.signal_final = "completed"
            return
        await self._pause(rng)
        if plan == "two_unanswered_then_completed":
            for _ in range(2):
                await self._attempt_update(ledger, twice)
                await self._pause(rng)
            await self._final_update(ledger, COMPLETE, _complete(), twice)
        elif plan == "attempted_then_cancelled":
            await self._attempt_signal(ledger, twice)
            await self._pause(rng)
            await self._final_update(ledger, CANCEL, CancelSignal(reason="chaos"), twice)
        elif plan == "attempted_until_the_maximum_then_expired":
            ledger.expire_reason = "max_attempts"
            await self._attempt_signal(ledger, twice)
            for _ in range(_MAX_ATTEMPTS_PLAN - 1):
                await self._pause(rng)
                await self._attempt_update(ledger, twice=False)
        elif plan == "left_to_expire_at_its_deadline":
            ledger.expire_reason = "deadline"
            if ledger.index % 2:
                await self._attempt_update(ledger, twice)
        elif plan == "rescheduled_then_completed":
            at = datetime.now(UTC) + timedelta(seconds=3)
            await self._update(ledger, RESCHEDULE, RescheduleSignal(at=at, notes="after dinner"))
            await self._pause(rng)
            await self._attempt_update(ledger, twice)
            await self._pause(rng)
            await self._signal(ledger, COMPLETE, _complete(), twice)
            ledger.signal_final = "completed"
        elif plan == "completion_races_cancellation":
            ledger.race = True
            await asyncio.gather(
                self._update(ledger, COMPLETE, _complete()),
                self._update(ledger, CANCEL, CancelSignal(reason="race")),
            )

    async def _attempt_update(self, ledger: Ledger, twice: bool) -> None:
        message = AttemptSignal(outcome="no_answer", attempt_at=_now_ms(), user_uuid=_AGENT_USER)
        await self._update(ledger, ATTEMPT, message)
        if twice:
            # The dialer sends the same report again (another update id): a duplicate.
            self.duplicate_deliveries += 1
            await self._update(ledger, ATTEMPT, message)

    async def _attempt_signal(self, ledger: Ledger, twice: bool) -> None:
        at = _now_ms()
        message = AttemptSignal(outcome="busy", attempt_at=at, user_uuid=_AGENT_USER)
        await self._signal(ledger, ATTEMPT, message, twice)
        # The call is open and below its maximum, so the workflow must accept it (once).
        ledger.accepted_attempts.add(_key(at))

    async def _final_update(self, ledger: Ledger, name: str, message: Any, twice: bool) -> None:
        await self._update(ledger, name, message)
        if twice:
            self.duplicate_deliveries += 1
            again = await self._update(ledger, name, message)
            if again.outcome == "accepted":
                ledger.notes.append(f"a second {name} was accepted: {again.detail}")

    async def _signal(self, ledger: Ledger, name: str, message: Any, twice: bool) -> None:
        handle = self._handle(ledger)
        await _retry(lambda: handle.signal(name, message), self.until)
        if twice:
            self.duplicate_deliveries += 1
            try:
                await _retry(lambda: handle.signal(name, message), self.until)
            except RPCError as exc:
                # The first delivery may have closed the call already: Temporal refuses the
                # second one, which is all a duplicate deserves.
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise

    async def _update(self, ledger: Ledger, name: str, message: Any) -> _Update:
        """Send one update (one id, retried under that id across a restart) and record it."""
        update = _Update(id=f"{name}-{uuid.uuid4()}", name=name)
        if isinstance(message, AttemptSignal) and message.attempt_at is not None:
            update.attempt_at = _key(message.attempt_at)
            ledger.unknown_attempts.add(update.attempt_at)
        ledger.updates.append(update)
        handle = self._handle(ledger)
        try:
            answer: ActionAccepted = await _retry(
                lambda: handle.execute_update(
                    name, message, id=update.id, result_type=ActionAccepted
                ),
                self.until,
            )
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type == ACTION_REJECTED:
                ledger.judge(update, None)
                update.detail = cause.message
            else:
                update.outcome, update.detail = "unknown", f"update failed: {cause or exc}"
            return update
        except RPCError as exc:
            # E.g. the workflow closed before the agent got the answer it waited for.
            update.outcome, update.detail = "unknown", str(exc)
            return update
        ledger.judge(update, answer.model_dump(mode="json"))
        return update


_AGENT_USER: Final = uuid.UUID("6f1d3a0e-2b4c-4d5e-8f90-a1b2c3d4e5f6")


def _complete() -> CompleteSignal:
    return CompleteSignal.model_validate(
        {"result": {"resultCode": "confirmed", "duration": 42.5, "donorRetentionRating": 8}}
    )


def _stamp(ledgers: list[Ledger]) -> None:
    """Give calls about to be started their `requestedAt`, a CRM row's creation time.

    Rows of an export are created apart, not all in one instant: 150 ms apart here. (TapRaise
    has no GET by uuid; finding a call pages through the calls requested after it, so a batch
    stamped with one instant makes every look-up read the whole batch.)
    """
    now = _now_ms()
    for position, ledger in enumerate(ledgers):
        if ledger.call.requested_at is None:
            at = now - timedelta(milliseconds=150 * (len(ledgers) - position))
            ledger.call = ledger.call.model_copy(update={"requested_at": at})


def _now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _key(moment: datetime | str) -> str:
    """An instant as TapRaise keeps it: UTC, milliseconds."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# ── checking ─────────────────────────────────────────────────────────────────────────────────


async def _update_outcomes(handle: WorkflowHandle[Any, Any]) -> dict[str, dict[str, Any] | None]:
    """Every completed update of a workflow, by id: its ActionAccepted JSON, or None (failed)."""
    outcomes: dict[str, dict[str, Any] | None] = {}
    history = await handle.fetch_history()
    for event in history.events:
        if event.HasField("workflow_execution_update_completed_event_attributes"):
            attrs = event.workflow_execution_update_completed_event_attributes
            value: dict[str, Any] | None = None
            if attrs.outcome.HasField("success") and attrs.outcome.success.payloads:
                value = json.loads(attrs.outcome.success.payloads[0].data)
            outcomes[attrs.meta.update_id] = value
    return outcomes


@dataclass
class _Findings:
    lost: set[str] = field(default_factory=set)
    duplicated: set[str] = field(default_factory=set)
    mismatched: set[str] = field(default_factory=set)
    stuck: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    stuck_details: list[str] = field(default_factory=list)
    resolved: int = 0
    phases: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, ledger: Ledger, message: str) -> None:
        getattr(self, kind).add(ledger.call_uuid)
        self.problems.append(f"{kind}: call {ledger.call_uuid} ({ledger.plan}): {message}")


class _Checker:
    """Compares every ledger with what TapRaise and Temporal hold."""

    def __init__(self, client: Client, sandbox_url: str) -> None:
        self.client = client
        self.admin = httpx.AsyncClient(base_url=f"{sandbox_url}/_sandbox", timeout=30)
        self.found = _Findings()

    async def check(self, ledgers: list[Ledger], second_batch_started: list[str]) -> _Findings:
        """Check every call; return what was found."""
        creates = (
            await self.admin.get("/requests", params={"endpoint": "create", "limit": 100_000})
        ).json()
        successful: Counter[str] = Counter(
            r["callUuid"] for r in creates["requests"] if r["status"] == 201
        )
        runs = await self._runs_per_workflow()
        started_twice = set(second_batch_started)
        limit = asyncio.Semaphore(16)

        async def one(ledger: Ledger) -> None:
            async with limit:
                try:
                    await self._check_call(ledger, successful, runs, started_twice)
                except Exception as exc:  # a check that cannot run is itself a finding
                    self.found.add("mismatched", ledger, f"could not check: {exc!r}")

        await asyncio.gather(*(one(ledger) for ledger in ledgers))
        await self.admin.aclose()
        return self.found

    async def _runs_per_workflow(self) -> Counter[str]:
        runs: Counter[str] = Counter()

        async def listing() -> None:
            runs.clear()
            async for execution in self.client.list_workflows("WorkflowType = 'CallWorkflow'"):
                runs[execution.id] += 1

        await _retry(listing, time.monotonic() + 60)
        return runs

    async def _check_call(
        self,
        ledger: Ledger,
        successful: Counter[str],
        runs: Counter[str],
        started_twice: set[str],
    ) -> None:
        found = self.found
        cid = ledger.call_uuid
        for note in ledger.notes:
            found.add("mismatched", ledger, note)
        if not ledger.started:
            found.add("lost", ledger, "never started (every start failed)")
            return
        if runs[ledger.workflow_id] == 0:
            found.add("lost", ledger, "no workflow exists")
            return
        if runs[ledger.workflow_id] > 1:
            found.add("duplicated", ledger, f"{runs[ledger.workflow_id]} workflow runs")
        if cid in started_twice:
            found.add("mismatched", ledger, "the batch's second start answered 'started'")

        stored_response = await self.admin.get(f"/calls/{cid}")
        stored = stored_response.json() if stored_response.status_code == 200 else None
        effects: dict[str, int] = (await self.admin.get(f"/calls/{cid}/effects")).json()
        if stored is None:
            found.add("lost", ledger, "TapRaise has no such call")
        if successful[cid] > 1 or effects.get("create", 0) > 1:
            found.add(
                "duplicated", ledger, f"{successful[cid]} successful creates, effects {effects}"
            )
        elif stored is not None and successful[cid] != 1:
            found.add("mismatched", ledger, f"{successful[cid]} successful creates in the log")

        handle = self.client.get_workflow_handle(ledger.workflow_id, result_type=CallState)
        description = await _retry(handle.describe, time.monotonic() + 30)
        if description.status == WorkflowExecutionStatus.RUNNING:
            await self._stuck(ledger, handle, description)
            return
        try:
            state: CallState = await _retry(handle.result, time.monotonic() + 30)
        except WorkflowFailureError as exc:
            found.phases["failed"] += 1
            found.add("mismatched", ledger, f"workflow failed: {exc.cause or exc}")
            return
        found.phases[state.phase.value] += 1
        await self._resolve_unknown_updates(ledger, handle)
        self._check_final(ledger, state, effects)
        self._check_attempts(ledger, state, effects, stored)
        if stored is not None and (
            stored["status"] != state.phase.value
            or (state.status is not None and state.status.value != stored["status"])
        ):
            found.add(
                "mismatched",
                ledger,
                f"workflow closed {state.phase.value}, TapRaise holds {stored['status']}",
            )

    def _check_final(self, ledger: Ledger, state: CallState, effects: dict[str, int]) -> None:
        """Exactly one final action, the one the agents asked for or the policy dictates."""
        found = self.found
        finals = {a: effects.get(a, 0) for a in ("complete", "cancel", "expire")}
        if sum(finals.values()) > 1:
            found.add("duplicated", ledger, f"final actions applied {finals}")
        elif sum(finals.values()) == 0:
            found.add("lost", ledger, f"no final action reached TapRaise (phase {state.phase})")
        accepted = ledger.finals("accepted")
        unknown = ledger.finals("unknown") | ledger.finals("rejected")
        if len(accepted) > 1:
            found.add("mismatched", ledger, f"two final actions accepted: {sorted(accepted)}")
            return
        if accepted:
            expected = accepted
        elif unknown:
            # An answer lost with a killed worker or a restart: TapRaise may hold either.
            expected = unknown | ({"expired"} if ledger.expire_reason else set())
        elif ledger.expire_reason:
            expected = {"expired"}
        else:
            found.add("mismatched", ledger, f"no final action was accepted; phase {state.phase}")
            return
        phase = state.phase.value
        if phase not in expected:
            found.add(
                "mismatched",
                ledger,
                f"closed {phase} ({state.final_reason}), expected {' or '.join(sorted(expected))}",
            )
        elif finals.get(_FINAL_ACTION[phase], 0) != 1:
            found.add("mismatched", ledger, f"closed {phase}, TapRaise final actions {finals}")
        reason = state.final_reason or ""
        if (
            phase == "expired"
            and ledger.expire_reason
            and not accepted
            # A call expired by a worker that died before recording it is adopted from TapRaise.
            and reason != _ADOPTED
            and ledger.expire_reason not in reason
        ):
            found.add(
                "mismatched",
                ledger,
                f"expired for {state.final_reason!r}, expected {ledger.expire_reason}",
            )

    def _check_attempts(
        self,
        ledger: Ledger,
        state: CallState,
        effects: dict[str, int],
        stored: dict[str, Any] | None,
    ) -> None:
        """Exactly the attempts accepted, each once, in TapRaise and in the workflow."""
        found = self.found
        in_tapraise = [_key(a["attemptAt"]) for a in (stored or {}).get("attempts", [])]
        recorded = set(in_tapraise)
        if len(in_tapraise) != len(recorded) or effects.get("add-attempt", 0) != len(in_tapraise):
            found.add(
                "duplicated",
                ledger,
                f"TapRaise recorded {effects.get('add-attempt', 0)} attempts for "
                f"{len(recorded)} distinct reports",
            )
        missing = ledger.accepted_attempts - recorded
        if missing:
            found.add("lost", ledger, f"accepted attempts not in TapRaise: {sorted(missing)}")
        unexplained = recorded - ledger.accepted_attempts - ledger.unknown_attempts
        if unexplained:
            found.add("duplicated", ledger, f"attempts nobody reported: {sorted(unexplained)}")
        in_workflow = sorted(_key(a.attempt_at) for a in state.attempts)
        if in_workflow != sorted(in_tapraise):
            found.add(
                "mismatched",
                ledger,
                f"workflow holds attempts {in_workflow}, TapRaise {sorted(in_tapraise)}",
            )

    async def _resolve_unknown_updates(
        self, ledger: Ledger, handle: WorkflowHandle[Any, Any]
    ) -> None:
        unknown = [u for u in ledger.updates if u.outcome == "unknown"]
        if not unknown:
            return
        outcomes = await _retry(lambda: _update_outcomes(handle), time.monotonic() + 30)
        for update in unknown:
            if update.id in outcomes:
                self.found.resolved += 1
                ledger.judge(update, outcomes[update.id])

    async def _stuck(
        self, ledger: Ledger, handle: WorkflowHandle[Any, Any], description: Any
    ) -> None:
        """Record a call still open at the end, and what it waits on."""
        waits: list[str] = []
        raw = description.raw_description
        for activity in raw.pending_activities:
            waits.append(
                f"activity {activity.activity_type.name} attempt {activity.attempt} "
                f"({activity.last_failure.message or 'no failure'})"
            )
        if raw.HasField("pending_workflow_task"):
            waits.append(f"workflow task attempt {raw.pending_workflow_task.attempt}")
        with contextlib.suppress(Exception):
            state: CallState = await asyncio.wait_for(
                handle.query("state", result_type=CallState), 10
            )
            waits.append(
                f"phase {state.phase.value}, attempts {len(state.attempts)}, next slot "
                f"{state.next_slot_at}, due until {state.due_until}, deadline {state.deadline}"
            )
        with contextlib.suppress(Exception):
            history = await handle.fetch_history()
            timers = sum(1 for e in history.events if e.HasField("timer_started_event_attributes"))
            last = [
                EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")
                for e in history.events[-3:]
            ]
            waits.append(f"{timers} timers started, last events {', '.join(last)}")
            failures = [
                e.workflow_task_failed_event_attributes.failure.message
                for e in history.events
                if e.HasField("workflow_task_failed_event_attributes")
            ]
            if failures:
                waits.append(f"last workflow task failure: {failures[-1]}")
        self.found.add("stuck", ledger, "still running at the end of the time budget")
        self.found.stuck_details.append(
            f"call {ledger.call_uuid} ({ledger.plan}): " + "; ".join(waits)
        )


# ── the run ──────────────────────────────────────────────────────────────────────────────────


def _fault_rules(config: ChaosConfig) -> dict[str, Any]:
    return {
        "seed": config.seed,
        "rules": [
            {
                "endpoint": "*",
                "error500": config.error_share / 2,
                "error503": config.error_share / 2,
                "error429": config.rate_limit_share,
                "retryAfterSeconds": 1,
                "late": config.late_share,
                "lateDelaySeconds": config.late_delay_seconds,
                "latencyShare": config.latency_share,
                "latencySeconds": config.latency_seconds,
            }
        ],
    }


@contextlib.contextmanager
def _work_dir(config: ChaosConfig) -> Iterator[Path]:
    if config.work_dir is not None:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        yield config.work_dir
        return
    with tempfile.TemporaryDirectory(prefix="tapraise-chaos-") as tmp:
        yield Path(tmp)


def _say(config: ChaosConfig, text: str) -> None:
    if config.progress:
        print(text, file=sys.stderr, flush=True)


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Start the processes, run every call through the chosen faults, and check every effect."""
    with _work_dir(config) as work:
        stack = _Stack(config, work)
        try:
            _say(config, f"starting dev server, sandbox and {config.workers} workers in {work}")
            await stack.start()
            return await _run(config, stack)
        finally:
            await stack.close()


async def _run(config: ChaosConfig, stack: _Stack) -> ChaosReport:
    began = time.monotonic()
    until = began + config.time_budget
    async with httpx.AsyncClient(base_url=f"{stack.sandbox_url}/_sandbox", timeout=30) as admin:
        if config.has("tapraise"):
            (await admin.put("/faults", json=_fault_rules(config))).raise_for_status()
        client = await connect(stack.address, "default")
        agents = _Agents(config, client, until)
        done = asyncio.Event()
        healed = asyncio.Event()
        healed_at: list[float] = []

        async def heal() -> None:
            latest = max(0.0, min(config.chaos_for, config.time_budget - config.heal_window))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(agents.scripts_finished.wait(), latest)
            healed.set()
            healed_at.append(time.monotonic() - began)
            if config.has("tapraise"):
                (await admin.delete("/faults")).raise_for_status()
            _say(config, f"[{healed_at[0]:5.0f} s] faults stopped; every call must now close")

        async def kills() -> None:
            victim = 0
            while not healed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(healed.wait(), config.kill_every)
                    return
                stack.kill_worker(victim % len(stack.workers))
                victim += 1

        async def supervise() -> None:
            while not done.is_set():
                stack.revive_exited_workers()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 1.0)

        async def restart() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(healed.wait(), config.restart_at)
                return
            down = await stack.restart_server()
            _say(config, f"[{time.monotonic() - began:5.0f} s] dev server restarted ({down:.1f} s)")

        async def progress() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 5.0)
                _say(
                    config,
                    f"[{time.monotonic() - began:5.0f} s] started {agents.started}/"
                    f"{config.calls} · closed {agents.closed} · kills {stack.kills} · "
                    f"restarts {stack.restarts}",
                )

        chaos = [
            asyncio.create_task(supervise()),
            asyncio.create_task(progress()),
            asyncio.create_task(heal()),
        ]
        if config.has("kills"):
            chaos.append(asyncio.create_task(kills()))
        if config.has("restart"):
            chaos.append(asyncio.create_task(restart()))
        try:
            await agents.send_batch()
            await agents.wait()
        finally:
            agents.scripts_finished.set()  # also when some call never started
            done.set()
            await asyncio.gather(*chaos, return_exceptions=True)
        # The harness's own view must survive a restart too: reconnect if the old client broke.
        client = await connect(stack.address, "default")
        _say(config, f"[{time.monotonic() - began:5.0f} s] checking {config.calls} calls")
        checker = _Checker(client, stack.sandbox_url)
        found = await checker.check(agents.ledgers, agents.second_batch_started)
        stats = (await admin.get("/stats")).json()
    return ChaosReport(
        calls=config.calls,
        faults_injected=dict(stats.get("faults", {})),
        tapraise_requests=int(stats["requests"]["total"]),
        kills=stack.kills,
        worker_exits=stack.worker_exits,
        restarts=stack.restarts,
        duplicate_deliveries=agents.duplicate_deliveries,
        races=sum(1 for ledger in agents.ledgers if ledger.race),
        lost=len(found.lost),
        duplicated=len(found.duplicated),
        mismatched=len(found.mismatched),
        stuck=len(found.stuck),
        problems=found.problems,
        stuck_details=found.stuck_details,
        resolved_from_history=found.resolved,
        elapsed=time.monotonic() - began,
        final_phases=dict(found.phases),
        healed_at=healed_at[0] if healed_at else None,
    )


def _parser() -> argparse.ArgumentParser:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="Drive calls through TapRaise faults, worker kills, a server restart and "
        "duplicate messages; check that nothing is lost, duplicated, mismatched or stuck.",
    )
    parser.add_argument("--calls", type=int, default=defaults.calls)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--faults", choices=FAULT_KINDS, default=defaults.faults)
    parser.add_argument("--kill-every", type=float, default=defaults.kill_every, metavar="S")
    parser.add_argument("--restart-at", type=float, default=defaults.restart_at, metavar="S")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--time-budget", type=float, default=defaults.time_budget, metavar="S")
    parser.add_argument("--heal-window", type=float, default=defaults.heal_window, metavar="S")
    parser.add_argument("--chaos-for", type=float, default=defaults.chaos_for, metavar="S")
    parser.add_argument("--max-active", type=int, default=defaults.max_active)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--quiet", action="store_true", help="No progress lines.")
    return parser


def _quiet_sdk_logs() -> None:
    """Keep the SDK's own retry warnings (expected during a restart) off the terminal."""
    quiet = TelemetryFilter(core_level="ERROR", other_level="ERROR")
    runtime = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=quiet)))
    Runtime.set_default(runtime, error_if_already_set=False)


def main(argv: list[str] | None = None) -> None:
    """Run from the command line; exit 1 when anything was lost, duplicated, mismatched or stuck."""
    args = _parser().parse_args(argv)
    _quiet_sdk_logs()
    config = ChaosConfig(
        calls=args.calls,
        workers=args.workers,
        faults=args.faults,
        kill_every=args.kill_every,
        restart_at=args.restart_at,
        seed=args.seed,
        time_budget=args.time_budget,
        heal_window=args.heal_window,
        chaos_for=args.chaos_for,
        max_active=args.max_active,
        work_dir=args.work_dir,
        progress=not args.quiet,
    )
    try:
        report = asyncio.run(run_chaos(config))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    print("\n".join(report.lines()))
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
