"""The processes of one chaos run: dev server, sandbox and workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from pathlib import Path

import httpx
from temporalio.service import RPCError

from devstack.process import Child, free_port, temporal_cli, write_private
from starter.connect import connect, missing_search_attributes, search_attribute_flags
from tests.chaos.config import HOST, REPO_ROOT, STARTUP_TIMEOUT_SECONDS, ChaosConfig


class Stack:
    """Dev server, sandbox and workers of one chaos run."""

    def __init__(self, config: ChaosConfig, work: Path) -> None:
        self.config = config
        self.work = work
        self.temporal_port = free_port()
        self.sandbox_port = free_port()
        self.address = f"{HOST}:{self.temporal_port}"
        self.sandbox_url = f"http://{HOST}:{self.sandbox_port}"
        # The sandbox's /_sandbox/ routes (faults, request log) answer this token only.
        self.admin_token = secrets.token_urlsafe(32)
        admin_token_file = work / "sandbox-admin-token"
        write_private(admin_token_file, self.admin_token + "\n")
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
                "--log-level", "warning", "--admin-token-file", str(admin_token_file),
            ],
        )  # fmt: skip
        self.workers: list[Child] = []
        self.kills = 0
        self.worker_exits = 0
        self.restarts = 0
        self._victim = 0

    @property
    def admin_headers(self) -> dict[str, str]:
        """The headers that open the sandbox's ``/_sandbox/`` routes."""
        return {"Authorization": f"Bearer {self.admin_token}"}

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
            # Several workers on one machine: none serves metrics (they would share a port).
            "WORKER_METRICS_ADDRESS": "",
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
                    if (await http.get(f"{self.sandbox_url}/healthz")).status_code == 200:
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
