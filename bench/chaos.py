"""`python -m bench.chaos` (what `make chaos` runs): calls driven through injected faults, with
every effect accounted for.

The harness starts its own processes on free loopback ports in a temporary directory: the
Temporal dev server on a SQLite file, the TapRaise sandbox, and K workers (`python -m worker`,
configured through their environment like a user's). Then it lets the faults loose, each kind
alone or all together (`--faults`):

- **tapraise**: on every endpoint, 30 % of requests answer 500/503, 10 % 429 with `Retry-After`,
  5 % are applied but answered after the workers' client gave up, and some answer slowly; on
  add-attempt, complete, cancel and expire 5 % more are held past the client's timeout and
  applied only then (after the client gave up, before a retry looks: the retry of a timed-out
  attempt waits as long again as the lost request lasted); and once, while calls are active,
  TapRaise withdraws the credentials for 30 s (every request answered 401);
- **kills**: every `--kill-every` seconds one worker is SIGKILLed and started again, in turn;
  and right after the creates of a burst of starts land in TapRaise (their answers held back),
  one worker is SIGKILLed, so that first workflow tasks are redone by another worker after
  TapRaise applied the create;
- **restart**: once, at `--restart-at`, the dev server is stopped (SIGTERM) and started again on
  the same SQLite file, and every client has to reconnect;
- **messages**: signals and updates delivered twice, some updates sent again under the same
  request id (one after the other, or both at once), the CRM batch started twice, a completion
  racing a cancellation, a completion arriving while the create is still being retried, and
  final actions that must be refused (a result code outside TapRaise's allow-list, a time before
  the call was requested) before the agent goes on with its script.

With `kills` or `messages`, a share of the calls is started the way a plain `temporal workflow
start` does: only the input (no `requestedAt`, no search attributes), id `call-<uuid>`.

Each call has an agent with a deterministic script chosen from the call's index (two unanswered
attempts then complete; cancel; attempts until the maximum; left to expire at its deadline; …).
The agents keep a ledger of what they reported and what the workflow accepted or refused. Once
every agent's script is done (at the latest after `--chaos-for` seconds, or `--heal-window`
seconds before the end of the budget) the faults stop, as outages do, and every call must then
close within the budget. At the end the harness checks, from the sandbox's request log and state
and from each workflow's final `state` and history: exactly one successful create per call and
the `requestedAt` TapRaise holds the one the workflow holds, exactly as many attempts in TapRaise
as were accepted, exactly one final action matching the agents' or the policy's, nothing applied
for a message that was refused, the same answer to both sends of one request id, the workflow
closed in the phase TapRaise holds, no call `failed` (only a refused create may fail one), and
every workflow closed within the time budget. It prints the figures and exits non-zero when
anything was lost, duplicated, mismatched, stuck or failed.

    python -m bench.chaos                          # 1,000 calls, every fault kind at once
    python -m bench.chaos --calls 100 --kill-every 5 --restart-at 15 --time-budget 110 \
        --heal-window 65 --credential-outage-at 3 --credential-outage-seconds 5
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
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode

from bench.calls import ALWAYS_OPEN
from bench.stack import Child, free_port, temporal_cli
from sandbox.seed import DEMO_PERSON_UUIDS
from starter.calls import (
    ActionRejected,
    CallNotFound,
    CallsError,
    CallService,
    StartResult,
    StartStatus,
    TemporalUnavailable,
)
from workflows.connect import connect, missing_search_attributes, search_attribute_flags
from workflows.errors import ACTION_REJECTED
from workflows.messages import (
    ATTEMPT,
    CANCEL,
    COMPLETE,
    RESCHEDULE,
    TASK_QUEUE,
    WORKFLOW_TYPE,
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
# The endpoints whose PUTs may be applied after the client gave up (`late_apply`).
_LATE_APPLY_ENDPOINTS: Final = ("add-attempt", "complete", "cancel", "expire")
# How the sandbox labels a request refused during a credential outage.
CREDENTIAL_OUTAGE: Final = "credential_outage"
# A result code outside TapRaise's allow-list for the run.
UNKNOWN_RESULT_CODE: Final = "unknown_code"
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
        late_apply_share: Share of add-attempt, complete, cancel and expire requests held past
            the client's timeout and applied only then.
        late_apply_delay_seconds: How long such a request is held: above the client's timeout
            (it has given up) and, with a slow start added, below twice it (the retry of a
            timed-out attempt waits that long before it looks).
        credential_outage_at: Seconds into the run at which TapRaise withdraws the credentials.
        credential_outage_seconds: How long every TapRaise request is then answered 401.
        client_timeout_seconds: The workers' TapRaise timeout (`TAPRAISE_TIMEOUT_SECONDS`).
        create_kills: How many bursts of starts are followed by a kill as soon as their creates
            land in TapRaise.
        bare_share: Share of calls started as a plain `temporal workflow start` does.
        refused_share: Share of the calls whose script ends the call (or lets it expire) where
            the agent first sends a final action that must be refused.
        result_codes: TapRaise's allow-list of result codes for the run (`messages`).
        same_id_share: Share of the updates delivered twice that are sent again under the same
            request id rather than a new one (a third of those both at once).
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
    late_apply_share: float = 0.05
    late_apply_delay_seconds: float = 2.5
    credential_outage_at: float = 60.0
    credential_outage_seconds: float = 30.0
    client_timeout_seconds: float = 2.0
    create_kills: int = 6
    bare_share: float = 0.15
    refused_share: float = 0.35
    result_codes: tuple[str, ...] = ("confirmed", "declined", "not_reached")
    same_id_share: float = 0.4
    deadline_seconds: float = 15.0
    progress: bool = True
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.faults not in FAULT_KINDS:
            raise ValueError(f"faults must be one of {', '.join(FAULT_KINDS)}, not {self.faults!r}")
        if self.late_delay_seconds <= self.client_timeout_seconds:
            raise ValueError("late_delay_seconds must exceed client_timeout_seconds")
        # Applied after the client gave up, and before the retry of a timed-out attempt looks
        # (it waits as long again as the lost request lasted), even when it was slow to start.
        if not (
            self.client_timeout_seconds
            < self.late_apply_delay_seconds
            < 2 * self.client_timeout_seconds - self.latency_seconds
        ):
            raise ValueError(
                "late_apply_delay_seconds must lie between client_timeout_seconds and twice it, "
                "less latency_seconds"
            )
        if "confirmed" not in self.result_codes:
            raise ValueError("result_codes must allow 'confirmed': the agents complete with it")

    def has(self, kind: str) -> bool:
        """Whether this run injects faults of `kind`."""
        return self.faults in ("all", kind)


@dataclass
class ChaosReport:
    """What a chaos run found: lost, duplicated, mismatched, stuck and failed must all be 0.

    Attributes:
        calls: Calls the CRM asked for.
        faults_injected: TapRaise faults per kind (`500`, `503`, `429`, `late`, `latency`).
        tapraise_requests: Requests TapRaise received.
        kills: Workers SIGKILLed.
        worker_exits: Workers that exited on their own (and were started again).
        restarts: Dev server restarts.
        duplicate_deliveries: Messages and starts the agents delivered a second time.
        races: Completion-versus-cancellation races run.
        bare_starts: Calls started without `requestedAt` and search attributes.
        create_kills: Kills right after a burst's creates landed in TapRaise.
        first_tasks_redone: Calls whose first workflow task ended unfinished after TapRaise had
            applied their create (the next one found the call and adopted it).
        credential_outage: When the credentials were withdrawn (seconds into the run) and for
            how long, or None.
        same_id_retries: Updates sent a second time under the same request id.
        same_id_concurrent: Of those, the ones whose two sends were in flight at once.
        refused_sent: Final actions sent that must be refused, by `update` and by `signal`.
        refused_by: Who refused them: `TapRaise`, `workflow`, `closed` (the call had closed).
        lost / duplicated / mismatched / stuck: Calls with each kind of problem.
        failed: Calls that ended in phase `failed` although TapRaise never refused their create.
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
    bare_starts: int = 0
    create_kills: int = 0
    first_tasks_redone: int = 0
    credential_outage: tuple[float, float] | None = None
    same_id_retries: int = 0
    same_id_concurrent: int = 0
    refused_sent: dict[str, int] = field(default_factory=dict)
    refused_by: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    mismatched: int = 0
    stuck: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    stuck_details: list[str] = field(default_factory=list)
    resolved_from_history: int = 0
    elapsed: float = 0.0
    healed_at: float | None = None
    final_phases: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated, mismatched, stuck or failed."""
        return not (self.lost or self.duplicated or self.mismatched or self.stuck or self.failed)

    def lines(self) -> list[str]:
        """The report as printed."""
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults_injected.items())) or "none"
        phases = ", ".join(f"{k} {v}" for k, v in sorted(self.final_phases.items())) or "none"
        if self.credential_outage is not None:
            at, seconds = self.credential_outage
            outage = (
                f"{seconds:.0f} s from {at:.0f} s "
                f"({self.faults_injected.get(CREDENTIAL_OUTAGE, 0)} requests answered 401)"
            )
        else:
            outage = "none"
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.refused_by.items())) or "none"
        lines = [
            f"calls                 {self.calls} in {self.elapsed:.0f} s ({phases})",
            f"bare starts           {self.bare_starts} (no requestedAt, no search attributes)",
            f"TapRaise faults       {sum(self.faults_injected.values())} of "
            f"{self.tapraise_requests} requests ({faults})",
            f"credential outage     {outage}",
            f"worker kills          {self.kills} (+ {self.worker_exits} exits on their own), "
            f"{self.create_kills} right after a burst's creates landed",
            f"first tasks redone    {self.first_tasks_redone} after TapRaise applied the create",
            f"server restarts       {self.restarts}",
            f"faults stopped at     {self.healed_at:.0f} s"
            if self.healed_at is not None
            else "faults stopped at     the end",
            f"duplicate deliveries  {self.duplicate_deliveries} (signals, updates, batch starts)",
            f"same request id       {self.same_id_retries} updates sent twice "
            f"({self.same_id_concurrent} both at once)",
            f"refused final actions {self.refused_sent.get('update', 0)} by update, "
            f"{self.refused_sent.get('signal', 0)} by signal; refused by {by}",
            f"races                 {self.races} completion-vs-cancellation",
            f"answers from history  {self.resolved_from_history}",
            f"lost {self.lost} · duplicated {self.duplicated} · mismatched {self.mismatched} · "
            f"stuck {self.stuck} · failed {self.failed}",
        ]
        if self.problems:
            lines.append("problems:")
            lines += [f"  {p}" for p in self.problems[:40]]
            if len(self.problems) > 40:
                lines.append(f"  … and {len(self.problems) - 40} more")
        if self.stuck_details:
            lines.append("still open:")
            lines += [f"  {d}" for d in self.stuck_details[:20]]
        lines.append(
            "OK: nothing lost, duplicated, mismatched, stuck or failed" if self.ok else "FAILED"
        )
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
                sys.executable, "-m", "sandbox", "--host", HOST,
                "--port", str(self.sandbox_port), "--data-dir", str(work / "sandbox"),
                "--log-level", "warning",
            ],
        )  # fmt: skip
        self.workers: list[Child] = []
        self.kills = 0
        self.worker_exits = 0
        self.restarts = 0
        self._victim = 0

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

    def kill_next_worker(self) -> None:
        """SIGKILL the next worker in turn (every kind of kill takes its turn from one list)."""
        self.kill_worker(self._victim % len(self.workers))
        self._victim += 1

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


@dataclass
class _Update:
    """One update an agent sent, and what became of it.

    Attributes:
        refused_on_purpose: The message must be refused (see `_Refusal`): never a final action.
        repeat: The answer (outcome, detail) to a second send under the same update id.
    """

    id: str
    name: str
    attempt_at: str | None = None  # for attempts: the attemptAt reported
    outcome: str = "pending"  # accepted | rejected | unknown
    detail: str = ""
    refused_on_purpose: bool = False
    repeat: tuple[str, str] | None = None


@dataclass
class _Refusal:
    """A final action sent knowing it must be refused, and what would betray it in TapRaise.

    Attributes:
        name: `complete` or `cancel`.
        via: `update` or `signal`.
        why: `result code` (outside TapRaise's allow-list) or `dated` (before `requestedAt`).
        field: What TapRaise would receive that no other message carries: `resultCode`,
            `completedAt` or `cancelledAt`.
        value: Its value (an instant as `_key` writes it).
        update: The update, when sent as one.
        refused_by: `TapRaise`, `workflow` or `closed` (the call had closed), once known.
    """

    name: str
    via: str
    why: str
    field: str
    value: str
    update: _Update | None = None
    refused_by: str | None = None


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
        bare: Started with the input alone, as a plain `temporal workflow start` does.
        policy: The call's policy overrides as JSON (what a bare start sends).
        burst: Started in a burst that a worker kill followed as soon as its creates landed.
        refuse: The final action (name, via, why) the agent sends first, knowing it must be
            refused; None for none.
        same_id: How updates delivered twice are sent again under their own id: `sequential`,
            `concurrent`, or None (a second id, as before).
        refusals: The refused-on-purpose messages sent.
        start_tries: First starts sent (a bare start sent again after a restart may find its
            first try went through).
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
    bare: bool = False
    policy: dict[str, Any] = field(default_factory=dict)
    burst: bool = False
    refuse: tuple[str, str, str] | None = None
    same_id: str | None = None
    refusals: list[_Refusal] = field(default_factory=list)
    start_tries: int = 0

    @property
    def call_uuid(self) -> str:
        return str(self.call.uuid)

    @property
    def workflow_id(self) -> str:
        return workflow_id_for(self.call.uuid or "")

    @property
    def label(self) -> str:
        """The plan and its variations, as problems name the call."""
        parts = [self.plan]
        if self.bare:
            parts.append("bare start")
        if self.burst:
            parts.append("kill burst")
        if self.refuse is not None:
            name, via, why = self.refuse
            parts.append(f"refused {name} by {via} ({why})")
        if self.same_id is not None:
            parts.append(f"same id {self.same_id}")
        return ", ".join(parts)

    def finals(self, outcome: str) -> set[str]:
        """The final phases asked for by updates with this outcome (and by signal, if any).

        For `rejected`, only refusals saying the call is already in (or already being taken to)
        the phase asked for: a worker that died after carrying out the action but before
        recording it leaves the call closed in TapRaise, and the next worker answers the same
        update "already cancelled"; a delivery retried while the first is carried out is
        answered "already being cancelled". An update answered "queued" (TapRaise was not
        answering) counts as `unknown`: it is carried out later, or refused then. Messages sent
        to be refused never count.
        """
        phases = {
            _PHASE_OF[u.name]
            for u in self.updates
            if u.name in _PHASE_OF
            and not u.refused_on_purpose
            and _outcome(u) == outcome
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

    def finals_sent(self) -> set[str]:
        """The final phases the agents asked for, whatever the answers (refused-on-purpose
        messages aside)."""
        phases = {
            _PHASE_OF[u.name]
            for u in self.updates
            if u.name in _PHASE_OF and not u.refused_on_purpose
        }
        return phases | ({self.signal_final} if self.signal_final else set())

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

    def record(self, update: _Update, answer: tuple[str, str]) -> None:
        """Record an answer as `_send_update` gives it: (outcome, detail)."""
        outcome, detail = answer
        if outcome == "accepted":
            self.judge(update, {"detail": detail})
        elif outcome == "rejected":
            self.judge(update, None)
            update.detail = detail
        else:
            update.outcome, update.detail = "unknown", detail


_PHASE_OF: Final = {COMPLETE: "completed", CANCEL: "cancelled"}
_ADOPTED: Final = "already final in TapRaise"


def _outcome(update: _Update) -> str:
    """An update's outcome as far as the final state goes: "queued" is not yet a decision."""
    if update.outcome == "accepted" and " queued: " in update.detail:
        return "unknown"
    return update.outcome


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


def chaos_policy(
    deadline_seconds: float, max_attempts: int, result_codes: list[str] | None = None
) -> dict[str, Any]:
    """Policy overrides that make a call progress in seconds: windows always open, no holidays.

    With `result_codes` the policy lists the codes TapRaise accepts, and the workflow refuses
    any other before sending it.
    """
    policy: dict[str, Any] = {
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
    if result_codes is not None:
        policy["resultCodes"] = list(result_codes)
    return policy


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
# The final action (name, via, why) an agent of each plan may send first, knowing it must be
# refused: two ways per plan, one picked per call. `result code` is outside TapRaise's
# allow-list (refused by TapRaise, or by the workflow when the call's policy lists the codes);
# `dated` lies before the call was requested (refused by the workflow before sending).
_REFUSALS: Final[dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]]] = {
    "two_unanswered_then_completed": (
        (COMPLETE, "update", "result code"),
        (COMPLETE, "update", "dated"),
    ),
    "attempted_then_cancelled": ((CANCEL, "update", "dated"), (CANCEL, "signal", "dated")),
    "rescheduled_then_completed": (
        (COMPLETE, "signal", "result code"),
        (COMPLETE, "signal", "dated"),
    ),
    "left_to_expire_at_its_deadline": (
        (COMPLETE, "update", "result code"),
        (CANCEL, "signal", "dated"),
    ),
}


class _Agents:
    """The agents of every call, the CRM batch, and the clocks of the run."""

    def __init__(self, config: ChaosConfig, client: Client, until: float) -> None:
        self.config = config
        self.client = client
        self.service = CallService(client)
        # The agents' tool waits for the workflow's own answer, however long TapRaise takes:
        # two sends of one request id must get the same answer, never a time-out of our own.
        self.tool = CallService(client, update_timeout_seconds=config.time_budget)
        self.until = until
        self.duplicate_deliveries = 0
        self.same_id_retries = 0
        self.same_id_concurrent = 0
        self.second_batch_started: list[str] = []
        self.closed = 0
        self.started = 0
        self.room = asyncio.Event()
        # Called with each page of first starts; returns what to run alongside (a kill burst).
        self.on_page: Callable[[list[Ledger], int], Awaitable[None] | None] | None = None
        plans = [p for p in PLANS if config.has("messages") or p not in _MESSAGE_PLANS]
        long_deadline = config.time_budget + 120
        starts_bare = config.has("messages") or config.has("kills")
        self.ledgers: list[Ledger] = []
        for index in range(config.calls):
            plan = plans[index % len(plans)]
            # Each call's variations come from a generator of its own: the same for every run
            # of a seed, whatever the other calls do.
            variant = random.Random(config.seed * 7_919 + index)
            bare = starts_bare and variant.random() < config.bare_share
            refuse: tuple[str, str, str] | None = None
            if (
                config.has("messages")
                and plan in _REFUSALS
                and variant.random() < config.refused_share
            ):
                refuse = _REFUSALS[plan][variant.random() < 0.5]
            same_id: str | None = None
            if config.has("messages") and variant.random() < config.same_id_share:
                same_id = "concurrent" if variant.random() < 1 / 3 else "sequential"
            lists_codes = (
                refuse is not None and refuse[2] == "result code" and variant.random() < 0.5
            )
            deadline = (
                config.deadline_seconds
                if plan == "left_to_expire_at_its_deadline"
                else long_deadline
            )
            max_attempts = _MAX_ATTEMPTS_PLAN if "maximum" in plan else 5
            policy = chaos_policy(
                deadline, max_attempts, list(config.result_codes) if lists_codes else None
            )
            call = CallInput(
                uuid=uuid.uuid4(),
                person_uuid=uuid.UUID(DEMO_PERSON_UUIDS[index % len(DEMO_PERSON_UUIDS)]),
                type="verification" if index % 3 else "happy_call",
                notes=f"chaos call {index}",
                policy=policy,
            )
            self.ledgers.append(
                Ledger(
                    index=index,
                    call=call,
                    plan=plan,
                    bare=bare,
                    policy=policy,
                    refuse=refuse,
                    same_id=same_id,
                )
            )
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
            _stamp(chunk)
            alongside = self.on_page(chunk, pages) if self.on_page is not None else None
            watcher = asyncio.ensure_future(alongside) if alongside is not None else None
            try:
                retry = await self._start(chunk, first=True)
            finally:
                if watcher is not None:
                    await asyncio.gather(watcher, return_exceptions=True)
            pages += 1
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
        """Start calls with the starter's own logic (or bare); return those to send again."""
        bare = [ledger for ledger in ledgers if first and ledger.bare]
        crm = [ledger for ledger in ledgers if not (first and ledger.bare)]
        crm_results, bare_results = await asyncio.gather(
            self.service.start_many([ledger.call for ledger in crm], 20),
            asyncio.gather(*(self._start_bare(ledger) for ledger in bare)),
        )
        retry: list[Ledger] = []
        for ledger, result in [
            *zip(crm, crm_results, strict=True),
            *zip(bare, bare_results, strict=True),
        ]:
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
            status = StartStatus.FAILED if exc.status in _TRANSIENT else StartStatus.REFUSED
            return StartResult(call_uuid, status, detail=str(exc))
        return StartResult(call_uuid, StartStatus.STARTED)

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
            await self._send_refused(ledger)
            await self._final_update(ledger, COMPLETE, _complete(), twice)
        elif plan == "attempted_then_cancelled":
            await self._attempt_signal(ledger, twice)
            await self._pause(rng)
            await self._send_refused(ledger)
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
            await self._send_refused(ledger)
        elif plan == "rescheduled_then_completed":
            at = datetime.now(UTC) + timedelta(seconds=3)
            await self._update(ledger, RESCHEDULE, RescheduleSignal(at=at, notes="after dinner"))
            await self._pause(rng)
            await self._attempt_update(ledger, twice)
            await self._pause(rng)
            await self._send_refused(ledger)
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
        same_id = ledger.same_id if twice else None
        await self._update(ledger, ATTEMPT, message, same_id=same_id)
        if twice and same_id is None:
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
        same_id = ledger.same_id if twice else None
        await self._update(ledger, name, message, same_id=same_id)
        if twice and same_id is None:
            self.duplicate_deliveries += 1
            again = await self._update(ledger, name, message)
            if again.outcome == "accepted":
                ledger.notes.append(f"a second {name} was accepted: {again.detail}")

    async def _send_refused(self, ledger: Ledger) -> None:
        """Send the final action this call's agent sends first knowing it must be refused.

        Then wait until it is refused (an update's answer; for a signal, or an update answered
        "queued" while TapRaise was down, the refusal in the call's events), so that the agent's
        next final action is not refused "already being completed" while this one is carried
        out. The script then goes on: a valid final action, or the call left to expire.
        """
        if ledger.refuse is None:
            return
        name, via, why = ledger.refuse
        message: CompleteSignal | CancelSignal
        if why == "result code":
            message = CompleteSignal.model_validate({"result": {"resultCode": UNKNOWN_RESULT_CODE}})
            refusal = _Refusal(name, via, why, "resultCode", UNKNOWN_RESULT_CODE)
        else:
            # An hour ago: before the call was requested, whether stamped or taken at its start.
            at = _now_ms() - timedelta(hours=1)
            if name == COMPLETE:
                message = CompleteSignal.model_validate(
                    {"result": {"resultCode": "confirmed", "completedAt": at.isoformat()}}
                )
                refusal = _Refusal(name, via, why, "completedAt", _key(at))
            else:
                message = CancelSignal(cancelled_at=at, reason="dated before the request")
                refusal = _Refusal(name, via, why, "cancelledAt", _key(at))
        ledger.refusals.append(refusal)
        if via == "update":
            update = await self._update(
                ledger, name, message, same_id=ledger.same_id, refused_on_purpose=True
            )
            refusal.update = update
            if update.outcome == "rejected":
                refusal.refused_by = _refused_by(update.detail)
                return
        else:
            try:
                await self._signal(ledger, name, message, twice=False)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                refusal.refused_by = "closed"
                return
        refusal.refused_by = await self._await_refusal(ledger, refusal)

    async def _await_refusal(self, ledger: Ledger, refusal: _Refusal) -> str | None:
        """Wait until the call's events show the refusal (or the call closed); who refused."""
        handle = self._handle(ledger)
        while time.monotonic() < self.until:
            with contextlib.suppress(Exception):
                state: CallState = await asyncio.wait_for(
                    handle.query("state", result_type=CallState), 10
                )
                seen = _refusal_in_events(state, refusal)
                if seen is not None:
                    return seen
            await asyncio.sleep(0.5)
        return None

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

    async def _update(
        self,
        ledger: Ledger,
        name: str,
        message: Any,
        *,
        same_id: str | None = None,
        refused_on_purpose: bool = False,
    ) -> _Update:
        """Send one update (one id, retried under that id across a restart) and record it.

        With `same_id` the agent's tool sends it again under the same id, as a tool that timed
        out or a person who pressed twice does: after the first answer (`sequential`) or while
        the first is in flight (`concurrent`). Half the agents send through the starter's
        `CallService.act(request_id=…)` (what the CLI and the gateway use) and the other half
        through the Temporal client, each with the other for the second send.
        """
        update = _Update(
            id=f"{name}-{uuid.uuid4()}", name=name, refused_on_purpose=refused_on_purpose
        )
        if isinstance(message, AttemptSignal) and message.attempt_at is not None:
            update.attempt_at = _key(message.attempt_at)
            ledger.unknown_attempts.add(update.attempt_at)
        ledger.updates.append(update)
        first_via, second_via = ("tool", "client") if ledger.index % 2 else ("client", "tool")
        if same_id == "concurrent":
            first, second = await asyncio.gather(
                self._send_update(ledger, update.id, name, message, first_via),
                self._send_update(ledger, update.id, name, message, second_via),
            )
        else:
            first = await self._send_update(ledger, update.id, name, message, first_via)
            second = None
            if same_id == "sequential":
                second = await self._send_update(ledger, update.id, name, message, second_via)
        ledger.record(update, first)
        if second is not None:
            update.repeat = second
            self.same_id_retries += 1
            self.same_id_concurrent += same_id == "concurrent"
        return update

    async def _send_update(
        self, ledger: Ledger, update_id: str, name: str, message: Any, via: str
    ) -> tuple[str, str]:
        """One send of an update under `update_id`: (accepted | rejected | unknown, detail)."""
        if via == "tool":
            return await self._act(ledger, update_id, name, message)
        handle = self._handle(ledger)
        try:
            answer: ActionAccepted = await _retry(
                lambda: handle.execute_update(
                    name, message, id=update_id, result_type=ActionAccepted
                ),
                self.until,
            )
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type == ACTION_REJECTED:
                return "rejected", cause.message
            return "unknown", f"update failed: {cause or exc}"
        except RPCError as exc:
            # E.g. the workflow closed before the agent got the answer it waited for.
            return "unknown", str(exc)
        return "accepted", answer.detail

    async def _act(
        self, ledger: Ledger, update_id: str, name: str, message: Any
    ) -> tuple[str, str]:
        """Send through the starter's service, retrying what a restart makes it report."""
        call_uuid = ledger.call.uuid
        assert call_uuid is not None
        delay = 0.2
        while True:
            try:
                answer = await self.tool.act(call_uuid, name, message, request_id=update_id)
                return "accepted", answer.detail
            except ActionRejected as exc:
                return "rejected", str(exc)
            except CallNotFound as exc:
                return "unknown", str(exc)
            except (TemporalUnavailable, RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
                if time.monotonic() > self.until:
                    return "unknown", str(exc)
            except CallsError as exc:
                # "Temporal refused the request": e.g. the workflow task failed with a killed
                # worker; anything else is an answer of its own.
                if not str(exc).startswith("Temporal refused") or time.monotonic() > self.until:
                    return "unknown", str(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _refused_by(reason: str) -> str:
    """Who refused a message, from the refusal's text."""
    if reason.startswith("TapRaise refused"):
        return "TapRaise"
    if reason.startswith("call is already"):
        return "closed"
    return "workflow"


def _refusal_in_events(state: CallState, refusal: _Refusal) -> str | None:
    """Who refused a refused-on-purpose message, from the call's events; None: not yet.

    Only this message can leave these events: the agent sends no other completion or
    cancellation until it is refused. A delivery of it repeated while it is carried out (a
    signal retried across a restart) is ignored "already being …": that is not its refusal.
    """
    for event in state.events:
        if event.kind == "refused" and event.detail.startswith(
            f"TapRaise refused to {refusal.name} "
        ):
            return "TapRaise"
        if event.kind == "ignored" and event.detail.startswith(f"{refusal.name}: "):
            reason = event.detail.removeprefix(f"{refusal.name}: ")
            if not reason.startswith("call is already being"):
                return _refused_by(reason)
    if state.phase.is_final:
        return "closed"
    return None


_AGENT_USER: Final = uuid.UUID("6f1d3a0e-2b4c-4d5e-8f90-a1b2c3d4e5f6")


def _complete() -> CompleteSignal:
    return CompleteSignal.model_validate(
        {"result": {"resultCode": "confirmed", "duration": 42.5, "donorRetentionRating": 8}}
    )


def _stamp(ledgers: list[Ledger]) -> None:
    """Give calls about to be started their `requestedAt`, a CRM row's creation time.

    Rows of an export are created apart, not all in one instant: 150 ms apart here. (TapRaise
    has no GET by uuid; finding a call pages through the calls requested after it, so a batch
    stamped with one instant makes every look-up read the whole batch.) Bare starts carry none:
    the workflow takes its run's start time.
    """
    now = _now_ms()
    for position, ledger in enumerate(ledgers):
        if ledger.call.requested_at is None and not ledger.bare:
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
    failed: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    stuck_details: list[str] = field(default_factory=list)
    resolved: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    first_tasks_redone: int = 0
    refused_by: Counter[str] = field(default_factory=Counter)
    refused_sent: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, ledger: Ledger, message: str) -> None:
        getattr(self, kind).add(ledger.call_uuid)
        self.problems.append(f"{kind}: call {ledger.call_uuid} ({ledger.label}): {message}")


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
        log: list[dict[str, Any]] = (
            await self.admin.get("/requests", params={"callUuid": cid, "limit": 100_000})
        ).json()["requests"]
        if stored is None:
            found.add("lost", ledger, "TapRaise has no such call")
        if successful[cid] > 1 or effects.get("create", 0) > 1:
            found.add(
                "duplicated", ledger, f"{successful[cid]} successful creates, effects {effects}"
            )
        elif stored is not None and successful[cid] != 1:
            found.add("mismatched", ledger, f"{successful[cid]} successful creates in the log")

        handle = self.client.get_workflow_handle(ledger.workflow_id, result_type=CallState)
        for refusal in ledger.refusals:
            found.refused_sent[refusal.via] += 1
        if await _first_task_redone(handle, log):
            found.first_tasks_redone += 1
        description = await _retry(handle.describe, time.monotonic() + 30)
        if description.status == WorkflowExecutionStatus.RUNNING:
            await self._stuck(ledger, handle, description)
            return
        try:
            state: CallState = await _retry(handle.result, time.monotonic() + 30)
        except WorkflowFailureError as exc:
            found.phases["failed"] += 1
            # Only a create TapRaise refused for good may fail a call; the harness sends none.
            refused = [r for r in log if r["endpoint"] == "create" and r["status"] in _REFUSED]
            if not refused or successful[cid]:
                found.add("failed", ledger, f"workflow failed: {exc.cause or exc}")
            return
        found.phases[state.phase.value] += 1
        await self._resolve_unknown_updates(ledger, handle)
        self._check_final(ledger, state, effects)
        self._check_attempts(ledger, state, effects, stored)
        self._check_requested_at(ledger, state, stored)
        self._check_refusals(ledger, state, stored, log)
        self._check_same_id(ledger)
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
        adopted = (_ADOPTED, f"already {state.phase.value} in TapRaise")
        if not accepted and state.final_reason in adopted:
            # A worker died after TapRaise applied a final action it carried out, before its
            # task was recorded: the message is lost with the task (an update is kept only once
            # accepted), and the next worker adopted the state TapRaise holds. Any final action
            # the agents sent may be the one applied, whatever the answers they got afterwards
            # (the other of two racing ones accepted, this one refused "already being …").
            unknown |= ledger.finals_sent()
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

    def _check_requested_at(
        self, ledger: Ledger, state: CallState, stored: dict[str, Any] | None
    ) -> None:
        """One `requestedAt` everywhere: the start's stamp, the workflow's, TapRaise's.

        A bare start has none: the workflow's is its run's start time, and a first workflow task
        redone after the create cannot have changed it (TapRaise holds the first one).
        """
        held = _key(state.requested_at)
        if ledger.call.requested_at is not None and _key(ledger.call.requested_at) != held:
            self.found.add(
                "mismatched",
                ledger,
                f"the workflow holds requestedAt {held}, the start sent "
                f"{_key(ledger.call.requested_at)}",
            )
        if stored is not None and _key(stored["requestedAt"]) != held:
            self.found.add(
                "mismatched",
                ledger,
                f"the workflow holds requestedAt {held}, TapRaise {_key(stored['requestedAt'])}",
            )

    def _check_refusals(
        self,
        ledger: Ledger,
        state: CallState,
        stored: dict[str, Any] | None,
        log: list[dict[str, Any]],
    ) -> None:
        """A message that must be refused is refused, and TapRaise applied nothing of it."""
        found = self.found
        for refusal in ledger.refusals:
            applied = [
                r
                for r in log
                if r["endpoint"] == refusal.name
                and 200 <= r["status"] < 300
                and _carries(r["requestBody"], refusal.field, refusal.value)
            ]
            if applied:
                found.add(
                    "mismatched",
                    ledger,
                    f"a {refusal.name} with {refusal.field} {refusal.value} was applied in "
                    f"TapRaise (request {applied[0]['id']}, answered {applied[0]['status']})",
                )
            update = refusal.update
            if (
                update is not None
                and update.outcome == "accepted"
                and "queued" not in update.detail
            ):
                found.add(
                    "mismatched",
                    ledger,
                    f"a {refusal.name} that must be refused ({refusal.why}) was answered "
                    f"{update.detail!r}",
                )
            if refusal.refused_by is None:
                refusal.refused_by = _refusal_in_events(state, refusal)
            found.refused_by[refusal.refused_by or "nobody seen"] += 1
        result = (stored or {}).get("result") or {}
        if result.get("resultCode") == UNKNOWN_RESULT_CODE:
            found.add("mismatched", ledger, "TapRaise holds a result code it refuses")

    def _check_same_id(self, ledger: Ledger) -> None:
        """Both sends of one request id got the same answer (and the effects are checked once)."""
        for update in ledger.updates:
            if update.repeat is None:
                continue
            first = (update.outcome, update.detail)
            if "unknown" in (first[0], update.repeat[0]):
                continue  # an answer lost with a restart says nothing either way
            if not _same_answer(first, update.repeat):
                self.found.add(
                    "mismatched",
                    ledger,
                    f"{update.name} {update.id} answered {first} and, sent again under the "
                    f"same id, {update.repeat}",
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
            f"call {ledger.call_uuid} ({ledger.label}): " + "; ".join(waits)
        )


# What TapRaise answers a request it refuses for good.
_REFUSED: Final = frozenset({400, 403, 404})
_TASK_ENDED_UNFINISHED: Final = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
        EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    }
)


async def _first_task_redone(handle: WorkflowHandle[Any, Any], log: list[dict[str, Any]]) -> bool:
    """Whether the call's first workflow task ended unfinished after TapRaise applied the create.

    Then the next worker ran the first task again from the start and found the call in TapRaise
    (a 409): the case a kill right after a create is there to produce.
    """
    created = [r for r in log if r["endpoint"] == "create" and r["status"] == 201]
    if not created:
        return False
    applied_at = datetime.fromisoformat(created[0]["receivedAt"].replace("Z", "+00:00"))
    history = await _retry(handle.fetch_history, time.monotonic() + 30)
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            return False
        if event.event_type in _TASK_ENDED_UNFINISHED and (
            event.event_time.ToDatetime(tzinfo=UTC) > applied_at
        ):
            return True
    return False


def _carries(body: Any, name: str, value: str) -> bool:
    """Whether a logged request body holds `name` with `value` (instants compared as `_key`)."""
    if isinstance(body, dict):
        for key, item in body.items():
            if key == name and isinstance(item, str):
                if item == value:
                    return True
                with contextlib.suppress(ValueError):
                    if _key(item) == value:
                        return True
            elif _carries(item, name, value):
                return True
    elif isinstance(body, list):
        return any(_carries(item, name, value) for item in body)
    return False


def _same_answer(first: tuple[str, str], second: tuple[str, str]) -> bool:
    """Two answers to one request id agree.

    Equal; or both refusals, the second saying the call has closed since: a refusal by the
    workflow's validator is not recorded, so a send after it is judged afresh.
    """
    if first == second:
        return True
    return first[0] == second[0] == "rejected" and second[1].startswith("call is already")


# ── the run ──────────────────────────────────────────────────────────────────────────────────


def _fault_rules(
    config: ChaosConfig, held_creates: int = 0, seed: int | None = None
) -> dict[str, Any]:
    """The sandbox's fault rules: every kind of the `tapraise` faults, plus `held_creates`
    creates applied at once and answered after the client gave up (a kill burst's window)."""
    shares: dict[str, Any] = {}
    if config.has("tapraise"):
        shares = {
            "error500": config.error_share / 2,
            "error503": config.error_share / 2,
            "error429": config.rate_limit_share,
            "retryAfterSeconds": 1,
            "late": config.late_share,
            "latencyShare": config.latency_share,
            "latencySeconds": config.latency_seconds,
        }
    late = {"lateDelaySeconds": config.late_delay_seconds}
    rules: list[dict[str, Any]] = []
    if shares:
        rules.append({"endpoint": "*", **shares, **late})
        rules += [
            {
                "endpoint": endpoint,
                **shares,
                **late,
                "lateApply": config.late_apply_share,
                "lateApplyDelaySeconds": config.late_apply_delay_seconds,
            }
            for endpoint in _LATE_APPLY_ENDPOINTS
        ]
    if held_creates:
        rules.append({"endpoint": "create", **shares, **late, "next": ["late"] * held_creates})
    return {"seed": config.seed if seed is None else seed, "rules": rules}


class _Faults:
    """What the run does to the sandbox: fault rules, settings, and their end when it heals.

    One lock orders the changes, so that nothing is switched on again once the faults stopped.
    """

    def __init__(self, config: ChaosConfig, admin: httpx.AsyncClient, began: float) -> None:
        self.config = config
        self.admin = admin
        self.began = began
        self.healed = False
        self._lock = asyncio.Lock()
        self._bursts = 0
        self._outage_began: float | None = None
        self.outage: tuple[float, float] | None = None

    async def start(self) -> None:
        """Switch the run's faults on; with `messages`, TapRaise's allow-list of result codes."""
        if self.config.has("tapraise"):
            await self._put("/faults", _fault_rules(self.config))
        if self.config.has("messages"):
            await self._put("/settings", {"resultCodes": list(self.config.result_codes)})

    async def hold_create_answers(self, creates: int) -> bool:
        """Answer the next `creates` creates late (applied at once); False once healed."""
        async with self._lock:
            if self.healed:
                return False
            self._bursts += 1
            rules = _fault_rules(self.config, creates, self.config.seed + self._bursts)
            await self._put("/faults", rules)
            return True

    async def withdraw_credentials(self) -> bool:
        """Start the credential outage (every API request answered 401); False once healed."""
        async with self._lock:
            if self.healed:
                return False
            seconds = self.config.credential_outage_seconds
            await self._put("/settings", {"credentialOutageSeconds": seconds})
            self._outage_began = time.monotonic()
            self.outage = (self._outage_began - self.began, seconds)
            return True

    async def heal(self) -> None:
        """Stop every fault, an outage still running included; the allow-list stays."""
        async with self._lock:
            self.healed = True
            (await self.admin.delete("/faults")).raise_for_status()
            if self._outage_began is not None and self.outage is not None:
                await self._put("/settings", {"credentialOutage": False})
                lasted = min(self.outage[1], time.monotonic() - self._outage_began)
                self.outage = (self.outage[0], lasted)

    async def _put(self, path: str, body: dict[str, Any]) -> None:
        (await self.admin.put(path, json=body)).raise_for_status()


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
        faults = _Faults(config, admin, began)
        await faults.start()
        client = await connect(stack.address, "default")
        agents = _Agents(config, client, until)
        done = asyncio.Event()
        healed = asyncio.Event()
        healed_at: list[float] = []
        create_kills = 0

        def at() -> str:
            return f"[{time.monotonic() - began:5.0f} s]"

        async def heal() -> None:
            latest = max(0.0, min(config.chaos_for, config.time_budget - config.heal_window))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(agents.scripts_finished.wait(), latest)
            healed.set()
            healed_at.append(time.monotonic() - began)
            await faults.heal()
            _say(config, f"{at()} faults stopped; every call must now close")

        async def kills() -> None:
            while not healed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(healed.wait(), config.kill_every)
                    return
                stack.kill_next_worker()

        async def kill_after_creates(chunk: list[Ledger]) -> None:
            """Kill a worker as soon as half the burst's creates landed in TapRaise.

            Their answers are held back (applied at once, answered after the client gave up),
            so the workers that sent them are still inside those calls' first workflow task:
            the killed one's tasks time out and another worker runs them again from the start,
            after TapRaise applied the create.
            """
            nonlocal create_kills
            if not await faults.hold_create_answers(len(chunk)):
                return
            uuids = {ledger.call_uuid for ledger in chunk}
            enough = max(1, len(uuids) // 2)
            deadline = time.monotonic() + 20
            params: dict[str, str | int] = {"endpoint": "create", "limit": 2 * len(chunk) + 20}
            while time.monotonic() < deadline and not healed.is_set():
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    log = (await admin.get("/requests", params=params)).json()["requests"]
                    landed = {
                        r["callUuid"] for r in log if r["status"] == 201 and r["callUuid"] in uuids
                    }
                    if len(landed) >= enough:
                        stack.kill_next_worker()
                        create_kills += 1
                        for ledger in chunk:
                            ledger.burst = True
                        _say(config, f"{at()} worker killed after {len(landed)} creates landed")
                        return
                await asyncio.sleep(0.05)

        def on_page(chunk: list[Ledger], page: int) -> Awaitable[None] | None:
            # Every other page of the first starts is a burst, until the kills are used up.
            if page % 2 or create_kills >= config.create_kills or healed.is_set():
                return None
            return kill_after_creates(chunk)

        async def withdraw() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(healed.wait(), config.credential_outage_at)
                return
            if await faults.withdraw_credentials():
                _say(
                    config,
                    f"{at()} TapRaise withdrew the credentials for "
                    f"{config.credential_outage_seconds:.0f} s",
                )

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
            _say(config, f"{at()} dev server restarted ({down:.1f} s)")

        async def progress() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 5.0)
                _say(
                    config,
                    f"{at()} started {agents.started}/{config.calls} · closed {agents.closed} · "
                    f"kills {stack.kills} · restarts {stack.restarts}",
                )

        chaos = [
            asyncio.create_task(supervise()),
            asyncio.create_task(progress()),
            asyncio.create_task(heal()),
        ]
        if config.has("kills"):
            chaos.append(asyncio.create_task(kills()))
            agents.on_page = on_page
        if config.has("restart"):
            chaos.append(asyncio.create_task(restart()))
        if config.has("tapraise") and config.credential_outage_seconds > 0:
            chaos.append(asyncio.create_task(withdraw()))
        try:
            await agents.send_batch()
            await agents.wait()
        finally:
            agents.scripts_finished.set()  # also when some call never started
            done.set()
            await asyncio.gather(*chaos, return_exceptions=True)
        # The harness's own view must survive a restart too: reconnect if the old client broke.
        client = await connect(stack.address, "default")
        _say(config, f"{at()} checking {config.calls} calls")
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
        bare_starts=sum(1 for ledger in agents.ledgers if ledger.bare and ledger.started),
        create_kills=create_kills,
        first_tasks_redone=found.first_tasks_redone,
        credential_outage=faults.outage,
        same_id_retries=agents.same_id_retries,
        same_id_concurrent=agents.same_id_concurrent,
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
        elapsed=time.monotonic() - began,
        final_phases=dict(found.phases),
        healed_at=healed_at[0] if healed_at else None,
    )


def _parser() -> argparse.ArgumentParser:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="Drive calls through TapRaise faults, worker kills, a server restart and "
        "duplicate or refused messages; check that nothing is lost, duplicated, mismatched, "
        "stuck or failed.",
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
    parser.add_argument(
        "--credential-outage-at", type=float, default=defaults.credential_outage_at, metavar="S"
    )
    parser.add_argument(
        "--credential-outage-seconds",
        type=float,
        default=defaults.credential_outage_seconds,
        metavar="S",
        help="0: no credential outage.",
    )
    parser.add_argument("--create-kills", type=int, default=defaults.create_kills)
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
        credential_outage_at=args.credential_outage_at,
        credential_outage_seconds=args.credential_outage_seconds,
        create_kills=args.create_kills,
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
