"""The worker: settings → Temporal client → TapRaise client → activities → Worker.

Run it with `python worker.py` (or the `tapraise-calls-worker` script). It stops cleanly on
SIGINT/SIGTERM, finishing the activities in flight. It serves its metrics at
`WORKER_METRICS_ADDRESS` (see `telemetry`), and traces when a collector is named.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import AsyncIterator, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.actions import TapRaiseActivities
from activities.follow import FollowerActivities
from activities.metrics import DURATION_BUCKETS, REQUEST_DURATION, TapRaiseMetrics
from activities.policy import PolicyActivities
from activities.turn import answer_turn
from starter.connect import connect, load_env_file, missing_search_attributes
from starter.follow import TemporalDispatcher, consumer_identifier
from tapraise import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    PermissionDeniedError,
    TapRaiseClient,
    TapRaiseSettings,
    describe_validation_error,
)
from telemetry.logs import configure_logging
from telemetry.phases import PhaseGauge
from telemetry.runtime import temporal_runtime
from telemetry.settings import TelemetrySettings
from telemetry.tracing import Tracing
from workflows.call import CallWorkflow
from workflows.follower import FollowerWorkflow
from workflows.messages import TASK_QUEUE
from workflows.policy import PolicyBook
from workflows.retries import TAPRAISE_TRY

log = logging.getLogger("tapraise_calls.worker")


def sandbox_runner() -> SandboxedWorkflowRunner:
    """The workflow sandbox, with `zoneinfo.ZoneInfo` usable for calling windows in local time.

    Our message and rule modules are deterministic and pass through (imported once, not per
    workflow run), which keeps each activation fast.
    """
    restrictions = SandboxRestrictions.default.with_passthrough_modules(
        "tapraise",
        "activities",
        "workflows.errors",
        "workflows.messages",
        "workflows.inbox",
        "workflows.following",
        "workflows.metrics",
        "workflows.retries",
        "workflows.policy",
        "workflows.schedule",
        "activities.policy",
        "pydantic",
        "zoneinfo",
        "tzdata",
    )
    restrictions = dataclasses.replace(
        restrictions,
        invalid_module_members=restrictions.invalid_module_members.with_child_unrestricted(
            "zoneinfo", "ZoneInfo"
        ),
    )
    return SandboxedWorkflowRunner(restrictions=restrictions)


class MalformedSignalLine(logging.Filter):
    """The SDK's report of a signal it could not decode, as one warning line.

    A malformed signal is dropped and changes nothing: that is worth a warning naming the signal
    and the field, not an error with a traceback that reads like a crash.
    """

    PREFIX = "Failed deserializing signal input"

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.ERROR and message.startswith(self.PREFIX):
            reason = _innermost(record.exc_info[1]) if record.exc_info else ""
            record.msg = f"{message}: {reason}" if reason else message
            record.args = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def _innermost(exc: BaseException | None) -> str:
    """The deepest cause of `exc`, on one line."""
    while exc is not None and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    if exc is None:
        return ""
    if isinstance(exc, ValidationError):  # each field and what is wrong with it
        return describe_validation_error(exc, whole="input")
    return " ".join(str(exc).split()) or type(exc).__name__


_SDK_WORKFLOW_LOGGER = "temporalio.worker._workflow_instance"


def quiet_malformed_signals() -> None:
    """Install `MalformedSignalLine` on the SDK's workflow logger (once)."""
    logger = logging.getLogger(_SDK_WORKFLOW_LOGGER)
    if not any(isinstance(f, MalformedSignalLine) for f in logger.filters):
        logger.addFilter(MalformedSignalLine())


def build_worker(
    client: Client,
    tapraise: TapRaiseClient,
    *,
    policy_book: PolicyBook | None = None,
    task_queue: str = TASK_QUEUE,
    metrics: TapRaiseMetrics | None = None,
    **options: Any,
) -> Worker:
    """The worker for the call workflow and its activities (used by tests and benchmarks too).

    `metrics` counts the TapRaise activities' retried tries (the client's own observers count
    its requests).
    """
    quiet_malformed_signals()
    calls = TapRaiseActivities(tapraise, metrics)
    policies = PolicyActivities(policy_book or PolicyBook.load())
    follower = FollowerActivities(tapraise, TemporalDispatcher(client), consumer_identifier)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[CallWorkflow, FollowerWorkflow],
        activities=[*calls.all(), policies.resolve_policy, answer_turn, follower.follow_once],
        workflow_runner=sandbox_runner(),
        **options,
    )


# On SIGTERM the activities in flight may finish their TapRaise request (one try lasts at most
# TAPRAISE_TRY); a container's stop grace period must be longer.
GRACEFUL_SHUTDOWN: Final = TAPRAISE_TRY + timedelta(seconds=5)

# Each cached workflow keeps its sandboxed copy of the workflow modules (about 0.3 MB). Calls
# wait for hours between messages, so a smaller cache costs only a short replay when one wakes.
DEFAULT_CACHED_WORKFLOWS = 400


class WorkerSettings(BaseSettings):
    """Everything the worker reads from its environment (and `.env`), in one place.

    Attributes:
        policy_file: `CALL_POLICY_FILE`, the call policies (TOML); unset means the packaged
            `workflows/policies.toml`.
        max_cached_workflows: `WORKER_MAX_CACHED_WORKFLOWS`, workflows kept in memory.
        tapraise: where TapRaise is and how to authenticate (`TAPRAISE_*`).
        telemetry: metrics listener, phase count and log lines (`WORKER_METRICS_ADDRESS`,
            `WORKER_PHASE_COUNT_SECONDS`, `LOG_FORMAT`, `LOG_LEVEL`).

    The Temporal connection is read by `connect()` from Temporal's own variables.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    policy_file: Path | None = Field(default=None, validation_alias="CALL_POLICY_FILE")
    max_cached_workflows: int = Field(
        default=DEFAULT_CACHED_WORKFLOWS, ge=1, validation_alias="WORKER_MAX_CACHED_WORKFLOWS"
    )
    tapraise: TapRaiseSettings = Field(default_factory=TapRaiseSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)


def load_settings() -> WorkerSettings:
    """The worker's settings, or a `ValueError` naming each variable that is wrong or missing.

    There is no default TapRaise: without `TAPRAISE_BASE_URL` the worker does not start, so that
    a deployment that forgot it never sends its calls to a stand-in (`make run` names its sandbox
    to the worker it starts).
    """
    try:
        settings = WorkerSettings()
    except ValidationError as exc:
        raise ValueError(
            f"invalid settings: {describe_validation_error(exc, whole='settings')}"
        ) from None
    settings.tapraise.base_url()  # raises a ConfigurationError (a ValueError) saying what to set
    return settings


async def check_tapraise(tapraise: TapRaiseClient) -> None:
    """One cheap read at start-up: what TapRaise thinks of this worker, reported, never fatal.

    Refused credentials are logged at error level with what to check; a TapRaise that does not
    answer (unreachable, 5xx, 429, a timeout) at warning level. Either way the worker serves:
    the calls' actions wait until TapRaise accepts them again (a key being rotated, an outage),
    and each call shows the wait in its details. A worker that exited instead would restart in a
    loop and hide where the calls stand.
    """
    try:
        await tapraise.list_calls_page(first=1)
    except AuthenticationError as exc:
        log.error(
            "TapRaise at %s refuses the service account: %s. Calls hold their actions until it "
            "accepts it. Check TAPRAISE_ACCOUNT_EMAIL, TAPRAISE_PRIVATE_KEY_ID and the private "
            "key (or wait for a key rotation to finish).",
            tapraise.base_url,
            exc,
        )
    except PermissionDeniedError:
        log.warning("the service account may not list calls: duplicate starts cannot be adopted")
    except (APIConnectionError, APIStatusError) as exc:
        log.warning(
            "TapRaise at %s does not answer now (%s); calls will retry until it does. If this "
            "persists, start the sandbox (`make run`) or check TAPRAISE_BASE_URL.",
            tapraise.base_url,
            exc,
        )


async def run(stop: asyncio.Event | None = None, settings: WorkerSettings | None = None) -> None:
    """Connect, check the namespace, and run until `stop` is set (or a signal arrives)."""
    settings = settings or load_settings()
    book = PolicyBook.load(settings.policy_file)
    observability = settings.telemetry
    runtime = temporal_runtime(
        observability.worker_metrics_address,
        observability.log_format,
        histogram_buckets={REQUEST_DURATION: DURATION_BUCKETS},
    )
    tracing = Tracing.from_env("tapraise-calls-worker")
    try:
        await _serve(settings, book, runtime, tracing, stop)
    finally:
        tracing.shutdown()  # the spans still buffered go out before the process ends


async def _serve(
    settings: WorkerSettings,
    book: PolicyBook,
    runtime: Runtime,
    tracing: Tracing,
    stop: asyncio.Event | None,
) -> None:
    """Run the worker on `runtime`'s client until `stop` is set (or a signal arrives)."""
    client = await connect(runtime=runtime, tracing=tracing)
    missing = await missing_search_attributes(client)
    if missing:
        raise SystemExit(
            "The namespace lacks the search attributes the call workflow needs: "
            + ", ".join(missing)
            + ". Register them, e.g. `temporal operator search-attribute create --name CallPhase"
            " --type Keyword` for each, or start the embedded stack with `make run`."
        )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    metrics = TapRaiseMetrics(runtime.metric_meter)
    observers = [metrics, *tracing.tapraise_observers()]
    async with settings.tapraise.make_client(observers) as tapraise:
        await check_tapraise(tapraise)
        worker = build_worker(
            client,
            tapraise,
            policy_book=book,
            metrics=metrics,
            max_cached_workflows=settings.max_cached_workflows,
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        )
        log.info(
            "worker ready: task queue %s on %s (namespace %s), TapRaise at %s",
            TASK_QUEUE,
            client.service_client.config.target_host,
            client.namespace,
            settings.tapraise.base_url(),
        )
        address = settings.telemetry.worker_metrics_address
        if address is not None:
            log.info("metrics at %s", address.url)
        async with worker, _phase_counts(client, runtime, settings.telemetry):
            await stop.wait()
            log.info("stopping: finishing the activities in flight")


@contextlib.asynccontextmanager
async def _phase_counts(
    client: Client, runtime: Runtime, telemetry: TelemetrySettings
) -> AsyncIterator[None]:
    """Count the calls per phase while the worker runs (when it serves metrics)."""
    if telemetry.worker_metrics_address is None or not telemetry.phase_count_seconds:
        yield
        return
    gauge = PhaseGauge(client, runtime.metric_meter, telemetry.phase_count_seconds)
    task = asyncio.create_task(gauge.run(), name="phase-counts")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop where it is installed (less CPU per activation and request)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main() -> None:
    load_env_file()
    try:
        settings = load_settings()
        configure_logging(settings.telemetry.log_level, settings.telemetry.log_format)
        run_event_loop(run(settings=settings))
    except (RuntimeError, ValueError) as exc:  # unreachable or misconfigured: say what to do
        print(f"worker: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
