"""End to end: the embedded stack as `make demo` runs it, then stopped with Ctrl-C.

One run of `python -m devstack --demo` on free ports and a fresh data directory serves
the module: it must become healthy, drive the demo calls into every phase, and stop every
process it started on SIGINT. A second run on the same directory must resume and leave the
demo calls of the first alone.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import pytest
from temporalio.client import Client

from devstack.demo import SCENARIOS, hand_call_uuid
from devstack.process import Child, free_port, port_is_free
from encryption.codec import EncryptionCodec
from encryption.keys import KeyRing
from sandbox.seed import DEMO_PERSON_UUIDS
from starter.connect import connect
from tests import readme_examples
from tests.sandbox_fixture import REPO_ROOT
from workflows.messages import CallPhase

pytestmark = pytest.mark.timeout(180)

# Startup takes 2-5 s; the slowest demo call expires by its 20 s deadline.
READY_TIMEOUT = 60.0
DEMO_TIMEOUT = 90.0
STOP_TIMEOUT = 40.0

_PID_LINE = re.compile(r"^\s+(?P<name>\w+)\s+pid (?P<pid>\d+)\s+log ")
_EXPORT = re.compile(r"^\s*export (?P<name>\w+)=(?P<value>\S+)$")


class StackProcess:
    """`python -m devstack` as a child of the test, its output in a log beside the data dir."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.temporal_port, self.ui_port = free_port(), free_port()
        self.sandbox_port, self.gateway_port = free_port(), free_port()
        self.codec_port = free_port()
        self.metrics_port, self.gateway_metrics_port = free_port(), free_port()
        self.extra = list(extra)
        self.child: Child | None = None
        self.started_at = 0.0

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def ports(self) -> list[int]:
        return [
            self.temporal_port, self.ui_port, self.sandbox_port, self.gateway_port,
            self.codec_port, self.metrics_port, self.gateway_metrics_port,
        ]  # fmt: skip

    def keys(self) -> KeyRing:
        """The payload encryption key the stack made for itself in its data directory."""
        return KeyRing.from_file(self.data_dir / "encryption-keys")

    def start(self, env: dict[str, str] | None = None) -> None:
        command = [
            sys.executable, "-m", "devstack",
            "--data-dir", str(self.data_dir),
            "--temporal-port", str(self.temporal_port),
            "--ui-port", str(self.ui_port),
            "--sandbox-port", str(self.sandbox_port),
            "--gateway-port", str(self.gateway_port),
            "--codec-port", str(self.codec_port),
            "--metrics-port", str(self.metrics_port),
            "--gateway-metrics-port", str(self.gateway_metrics_port),
            *self.extra,
        ]  # fmt: skip
        full_env = {
            k: v
            for k, v in os.environ.items()
            # The stack's own settings, as on a fresh machine: its own key and token included.
            if not k.startswith(("TAPRAISE_", "GATEWAY_", "ENCRYPTION_"))
        }
        full_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
        )
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        self.started_at = time.monotonic()
        # The data directory's parent is the working directory: no developer's .env applies.
        home = self.data_dir.parent
        self.child = Child("stack", command, home / "stack.log", full_env, home)
        self.child.start()

    @property
    def lines(self) -> list[str]:
        """The complete lines printed so far."""
        text = self.child.output() if self.child else ""
        return text[: text.rfind("\n") + 1].splitlines()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> float:
        """Wait until a line contains `text`; return the seconds since start."""
        assert self.child is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self.child.exited
            if any(text in line for line in self.lines):
                return time.monotonic() - self.started_at
            if exited:
                pytest.fail(
                    f"stack exited with {self.child.returncode} before {text!r}:\n{self.output}"
                )
            time.sleep(0.1)
        pytest.fail(f"no {text!r} after {timeout} s:\n{self.output}")

    def wait_exit(self, timeout: float) -> int:
        assert self.child is not None
        code = self.child.wait(timeout)
        if code is None:
            pytest.fail(f"stack still running after {timeout} s:\n{self.output}")
        return code

    def exports(self) -> dict[str, str]:
        """The `export NAME=value` lines the stack printed (the last of each name wins)."""
        return {m["name"]: m["value"] for line in self.lines if (m := _EXPORT.match(line))}

    def child_pids(self) -> dict[str, int]:
        """The processes the stack reported starting, by name."""
        return {m["name"]: int(m["pid"]) for line in self.lines if (m := _PID_LINE.match(line))}

    def interrupt(self) -> int:
        """Ctrl-C, as in a terminal; returns the exit code."""
        assert self.child is not None
        self.child.send_signal(signal.SIGINT)
        return self.wait_exit(STOP_TIMEOUT)

    def cleanup(self) -> None:
        """After a failed test: stop the stack, and any child it left, by pid."""
        if self.child is not None:
            self.child.stop(STOP_TIMEOUT, signal.SIGINT)
        for pid in self.child_pids().values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def table_text(output: str) -> str:
    """The demo's final table, from its header to the line before the summary."""
    lines = output.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("call "))
    last = next(i for i, line in enumerate(lines) if line.startswith("Demo finished:"))
    return "\n".join(lines[first:last])


def table_phases(output: str) -> dict[str, tuple[str, bool]]:
    """Demo label → (phase, from an earlier run) from the final table."""
    rows: dict[str, tuple[str, bool]] = {}
    for line in output.splitlines():
        cells = line.split()
        if len(cells) >= 4 and cells[0] in {s.label for s in SCENARIOS}:
            earlier = cells[1] == "*"
            rest = cells[2:] if earlier else cells[1:]
            if rest[0].startswith("call-"):
                rows[cells[0]] = (rest[2], earlier)
    return rows


@dataclass
class FirstRun:
    """What the module's stack run showed."""

    stack: StackProcess
    ready_seconds: float
    demo_seconds: float
    health: dict[str, int]
    auth: dict[str, int]
    sandbox_admin: dict[str, int]
    counts: dict[str, int]
    metrics: dict[str, str]
    scan: ClearTextScan
    pids: dict[str, int]
    exit_code: int
    output: str
    readme: readme_examples.Outcome


async def _count_by_phase(stack: StackProcess) -> dict[str, int]:
    client = await connect(stack.temporal_address, "default", stack.keys())
    return {
        phase.value: (await client.count_workflows(f'CallPhase = "{phase.value}"')).count
        for phase in CallPhase
    }


# What the demo's CRM and agents write about donors: notes, result codes, result notes, reasons.
DONOR_TEXT: Final = (
    *(f"Demo call: {scenario.story}." for scenario in SCENARIOS),
    "happy with the newsletter",
    "donor is driving; call back later",
    "the donor already called the office",
    "confirmed",
    "thanked",
    "reactivated",
)


@dataclass
class ClearTextScan:
    """Where donor text was found without the key, and how much the key reveals (a control)."""

    found: list[str]
    decrypted: set[str]
    calls: int


async def _scan_for_clear_text(stack: StackProcess) -> ClearTextScan:
    """Every call's raw history, search attributes, summary and details, and every log."""
    keys = stack.keys()
    raw = await Client.connect(stack.temporal_address, namespace="default")  # without the codec
    keyed = await connect(stack.temporal_address, "default", keys)
    codec = EncryptionCodec(keys)
    found: list[str] = []
    decrypted: set[str] = set()
    calls = 0
    async for execution in raw.list_workflows("WorkflowType = 'CallWorkflow'"):
        calls += 1
        history = await raw.get_workflow_handle(
            execution.id, run_id=execution.run_id
        ).fetch_history()
        stored = b"".join(event.SerializeToString() for event in history.events)
        for event in history.events:
            codec.decrypt_all(event)
        opened = b"".join(event.SerializeToString() for event in history.events)
        handle = keyed.get_workflow_handle(execution.id, run_id=execution.run_id)
        described = await handle.describe()
        details = await handle.query("__temporal_workflow_metadata")
        shown = " ".join(
            [
                str(described.raw_description.workflow_execution_info.search_attributes),
                await described.static_summary() or "",
                await described.static_details() or "",
                str(details),
            ]
        )
        for text in DONOR_TEXT:
            if text.encode() in stored:
                found.append(f"{execution.id} history: {text!r}")
            if text in shown:
                found.append(f"{execution.id} attributes, summary or details: {text!r}")
            if text.encode() in opened:
                decrypted.add(text)
    for log in sorted((stack.data_dir / "logs").glob("*.log")):
        content = log.read_text(errors="replace")
        found += [f"{log.name}: {text!r}" for text in DONOR_TEXT if text in content]
    return ClearTextScan(found, decrypted, calls)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRun]:
    # Laid out as a clone is: the data directory `.data`, the virtualenv `.venv` beside it.
    home = tmp_path_factory.mktemp("stack")
    stack = StackProcess(home / ".data", "--demo")
    (home / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    stack.start()
    try:
        ready = stack.wait_for("Ready in", READY_TIMEOUT)
        demo = stack.wait_for("Demo finished:", DEMO_TIMEOUT)
        sandbox = f"http://127.0.0.1:{stack.sandbox_port}"
        health = {
            "sandbox": httpx.get(f"{sandbox}/healthz").status_code,
            "gateway": httpx.get(f"http://127.0.0.1:{stack.gateway_port}/healthz").status_code,
            "web ui": httpx.get(f"http://127.0.0.1:{stack.ui_port}/").status_code,
        }
        exports = stack.exports()
        call = f"http://127.0.0.1:{stack.gateway_port}/calls/{exports.get('CALL')}"
        bearer = {"Authorization": f"Bearer {exports.get('TOKEN')}"}
        auth = {
            "no token": httpx.get(call).status_code,
            "another token": httpx.get(call, headers={"Authorization": "Bearer x"}).status_code,
            "TOKEN": httpx.get(call, headers=bearer, timeout=10).status_code,
        }
        admin_token = (stack.data_dir / "sandbox-admin-token").read_text().strip()
        sandbox_admin = {
            "no token": httpx.get(f"{sandbox}/_sandbox/stats").status_code,
            "gateway TOKEN": httpx.get(f"{sandbox}/_sandbox/stats", headers=bearer).status_code,
            "admin token": httpx.get(
                f"{sandbox}/_sandbox/stats", headers={"Authorization": f"Bearer {admin_token}"}
            ).status_code,
        }
        counts = asyncio.run(_count_by_phase(stack))
        metrics = {
            "worker": httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text,
            "gateway": httpx.get(f"http://127.0.0.1:{stack.gateway_metrics_port}/metrics").text,
        }
        scan = asyncio.run(_scan_for_clear_text(stack))
        # The README's examples, in a second terminal, while the demo runs.
        readme = readme_examples.run(home, readme_examples.fresh_shell_env(home))
        pids = stack.child_pids()
        code = stack.interrupt()
        yield FirstRun(
            stack, ready, demo, health, auth, sandbox_admin, counts, metrics, scan, pids, code,
            stack.output, readme,
        )  # fmt: skip
    finally:
        stack.cleanup()


def test_every_readme_example_works_as_written_in_a_fresh_shell(first_run: FirstRun) -> None:
    outcome = first_run.readme
    where = f"README.md line {outcome.failed.line}" if outcome.failed else "README.md"
    assert outcome.code == 0, f"{where} failed:\n{outcome.output}"
    runnable = [e for e in readme_examples.examples() if e.not_run is None]
    assert outcome.ran == len(runnable) >= 7
    # The request retried under one key recorded one attempt; the retry got the first answer.
    assert outcome.output.count("attempt 1 recorded (busy)") >= 2, outcome.output
    assert "attempt 2 recorded (busy)" not in outcome.output


def test_stack_becomes_healthy_and_prints_the_guide(first_run: FirstRun) -> None:
    assert first_run.ready_seconds < 30, first_run.output
    assert first_run.health == {"sandbox": 200, "gateway": 200, "web ui": 200}
    assert set(first_run.pids) == {"temporal", "codec", "sandbox", "worker", "gateway"}
    out = first_run.output
    assert f"http://localhost:{first_run.stack.ui_port}/namespaces/default/workflows" in out
    assert f"http://127.0.0.1:{first_run.stack.gateway_port}/docs" in out
    for command in ("python -m starter list", 'python -m starter status "$CALL"',
                    'python -m starter complete "$CALL" --result-code confirmed'):  # fmt: skip
        assert command in out
    assert "Ctrl-C stops everything" in out


def test_the_gateway_asks_for_the_token_the_stack_prints(first_run: FirstRun) -> None:
    assert first_run.auth == {"no token": 401, "another token": 401, "TOKEN": 200}
    exports = first_run.stack.exports()
    assert set(exports) == {
        "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_CODEC_ENDPOINT",
        "ENCRYPTION_KEYS_FILE", "GATEWAY", "TOKEN", "PERSON", "CALL",
    }  # fmt: skip
    assert exports["TEMPORAL_CODEC_ENDPOINT"] == f"http://127.0.0.1:{first_run.stack.codec_port}"
    assert exports["GATEWAY"] == f"http://127.0.0.1:{first_run.stack.gateway_port}"
    assert exports["PERSON"] == DEMO_PERSON_UUIDS[0]
    assert exports["CALL"] == str(hand_call_uuid())  # the "due-now" call, open for an hour
    data = first_run.stack.data_dir
    token_file = data / "gateway-token"
    assert token_file.read_text().strip() == exports["TOKEN"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    env_file = data / "demo.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    written = {m["name"]: m["value"] for m in map(_EXPORT.match, env_file.read_text().splitlines())
               if m}  # fmt: skip
    assert written == exports
    assert f"source {env_file.relative_to(data.parent)}" in first_run.output  # as cwd-relative
    # The token goes to the terminal only: no process writes it to its log.
    for log in (data / "logs").glob("*.log"):
        assert exports["TOKEN"] not in log.read_text(errors="replace"), log


def test_no_donor_text_is_stored_or_shown_in_clear(first_run: FirstRun) -> None:
    scan = first_run.scan
    assert scan.calls >= len(SCENARIOS)
    assert scan.found == []
    # The same histories, decrypted with the stack's key, hold what the demo wrote.
    assert {"happy with the newsletter", "confirmed"} <= scan.decrypted, scan.decrypted
    key_file = first_run.stack.data_dir / "encryption-keys"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_the_sandbox_admin_routes_ask_for_the_token_the_stack_keeps(first_run: FirstRun) -> None:
    assert first_run.sandbox_admin == {"no token": 401, "gateway TOKEN": 401, "admin token": 200}
    data = first_run.stack.data_dir
    token_file = data / "sandbox-admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    # Read from the file by whoever needs it: never printed, never on a command line or in a log.
    assert token not in first_run.output
    assert "$(cat .data/sandbox-admin-token)" in first_run.output
    for log in (data / "logs").glob("*.log"):
        assert token not in log.read_text(errors="replace"), log
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, log
    assert stat.S_IMODE((data / "sandbox").stat().st_mode) == 0o700


def test_the_demo_table_shows_one_zone_and_whole_reasons(first_run: FirstRun) -> None:
    table = table_text(first_run.output)
    assert "UTC" not in table and "…" not in table, table
    assert "outcome (times in Europe/Amsterdam)" in table.splitlines()[0]
    times = re.findall(r"\d\d:\d\d:\d\d (\S+)", table)
    assert times and set(times) <= {"CET", "CEST"}, table
    # The sandbox's whole reason for refusing the foreign person's call.
    assert "Service account may not create calls for this person" in " ".join(table.split())


def test_the_demo_shows_a_call_requested_and_completed_in_the_tapraise_app(
    first_run: FirstRun,
) -> None:
    out = first_run.output
    assert "Following TapRaise: switched on (every 5 s" in out, out
    assert re.search(r"requests call \S+ in the app \.\.\.\n\s+\.\.\. picked up after \d", out), out
    assert re.search(r"its workflow completed after \d+\.\d s", out), out


def test_demo_drives_calls_into_every_phase_within_the_time_budget(first_run: FirstRun) -> None:
    phases = table_phases(first_run.output)
    assert phases == {s.label: (s.expect.value, False) for s in SCENARIOS}, first_run.output
    seen = {phase for phase, _ in phases.values()}
    assert {"completed", "cancelled", "expired", "failed", "scheduled", "due"} <= seen
    assert "NOT as expected" not in first_run.output
    assert first_run.demo_seconds < 90, first_run.output


def test_phases_reach_the_search_attributes_the_web_ui_filters_on(first_run: FirstRun) -> None:
    # Each call's *final* phase is in visibility; the open ones may move between scheduled/due.
    expected = {p.value: sum(s.expect == p for s in SCENARIOS) for p in CallPhase if p.is_final}
    expected["completed"] += 1  # the call requested, then completed, in the TapRaise app
    assert {p: first_run.counts[p] for p in expected} == expected
    open_calls = sum(first_run.counts[p] for p in ("scheduled", "due"))
    assert open_calls == sum(not s.expect.is_final for s in SCENARIOS)


def test_the_worker_and_the_gateway_serve_their_metrics_where_the_guide_says(
    first_run: FirstRun,
) -> None:
    stack = first_run.stack
    assert f"http://127.0.0.1:{stack.metrics_port}/metrics" in first_run.output
    assert f"http://127.0.0.1:{stack.gateway_metrics_port}/metrics" in first_run.output
    worker = first_run.metrics["worker"]
    assert re.search(r'^tapraise_calls_started_total\{.*call_type="verification"', worker, re.M)
    for phase in ("completed", "cancelled", "expired", "failed"):
        assert re.search(rf'^tapraise_calls_closed_total\{{.*phase="{phase}"', worker, re.M), phase
    assert re.search(r'^tapraise_calls_closed_total\{.*reason="create_refused"', worker, re.M)
    assert re.search(r'^tapraise_calls_tapraise_requests_total\{.*endpoint="create"', worker, re.M)
    assert "temporal_worker_task_slots_available{" in worker
    gateway = first_run.metrics["gateway"]
    assert 'route="/calls/{call_uuid}"' in gateway, gateway
    assert first_run.stack.exports()["CALL"] not in worker + gateway


def test_sigint_stops_every_process_the_stack_started(first_run: FirstRun) -> None:
    assert first_run.exit_code == 0, first_run.output
    assert "Stopped: " in first_run.output
    deadline = time.monotonic() + 2
    while any(alive(pid) for pid in first_run.pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {name: pid for name, pid in first_run.pids.items() if alive(pid)}
    assert not left, f"still running after Ctrl-C: {left}"
    assert all(port_is_free(port) for port in first_run.stack.ports)


def test_second_run_resumes_and_leaves_the_first_runs_demo_calls_alone(first_run: FirstRun) -> None:
    again = StackProcess(first_run.stack.data_dir, "--demo", "--exit-after-demo")
    again.temporal_port, again.ui_port = first_run.stack.temporal_port, first_run.stack.ui_port
    again.sandbox_port = first_run.stack.sandbox_port
    again.start()
    try:
        code = again.wait_exit(60)
    finally:
        again.cleanup()
    assert code == 0, again.output
    phases = table_phases(again.output)
    first = table_phases(first_run.output)
    assert set(phases) == set(first)
    # A call whose workflow failed (its create was refused) may be started again, and is; every
    # other call is left exactly as it was, none started a second time.
    failed = {label for label, (phase, _) in first.items() if phase == CallPhase.FAILED.value}
    assert failed, first_run.output
    assert all(earlier != (label in failed) for label, (_, earlier) in phases.items()), again.output
    for label, (phase, _) in first.items():
        if CallPhase(phase).is_final:
            assert phases[label][0] == phase
    assert f"{len(SCENARIOS) - len(failed)} from an earlier run" in again.output
    assert again.output.count("started call-") == len(failed)
    # The same token as the first run's, and still the same call to drive by hand.
    assert again.exports()["TOKEN"] == first_run.stack.exports()["TOKEN"]
    assert again.exports()["CALL"] == first_run.stack.exports()["CALL"]


def test_a_port_in_use_is_named_before_anything_starts(tmp_path: Path) -> None:
    stack = StackProcess(tmp_path / "data", "--no-gateway")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        stack.temporal_port = taken.getsockname()[1]
        stack.start()
        code = stack.wait_exit(30)
    assert code == 1
    assert f"port {stack.temporal_port} for Temporal is in use" in stack.output
    assert not stack.child_pids()


def test_a_process_that_dies_at_start_is_named_with_its_last_lines(tmp_path: Path) -> None:
    stack = StackProcess(tmp_path / "data", "--no-gateway")
    stack.start(env={"CALL_POLICY_FILE": str(tmp_path / "no-such-policies.toml")})
    try:
        code = stack.wait_exit(60)
    finally:
        stack.cleanup()
    assert code == 1
    assert "worker: exited with code" in stack.output, stack.output
    assert "no-such-policies.toml" in stack.output  # from the tail of the worker's log
    assert "Stopped: temporal" in stack.output


def test_free_ports_are_distinct_and_outside_the_kernels_ephemeral_range() -> None:
    # A port from the ephemeral range can be taken by another process's port-0 listener or
    # connection between the pick and the bind.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 <= port < low for port in ports)
    assert all(port_is_free(port) for port in ports)
