"""The gateway's metrics and log lines, as `python -m starter serve` gives them to an operator:
requests counted by route template, method and status on a listener of their own (loopback by
default, never the public port), and JSON log lines that name routes, never paths.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from devstack.process import free_port
from gateway.app import create_app
from gateway.routes import actions, calls
from gateway.settings import GatewaySettings
from gateway.telemetry import METHODS, OTHER_METHOD, UNMATCHED, route_template
from sandbox.seed import DEMO_PERSON_UUIDS
from telemetry.settings import ListenAddress, TelemetrySettings
from tests.sandbox_fixture import REPO_ROOT

pytestmark = pytest.mark.timeout(60)

PERSON = DEMO_PERSON_UUIDS[6]
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


@dataclass
class Served:
    """What one run of the gateway answered, served as metrics and wrote to its log."""

    answers: dict[tuple[str, str], int]
    metrics: str
    public_metrics: int
    log_lines: list[str]
    call: str


def requests_total(page: str) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == "tapraise_calls_gateway_requests_total"
    }


def durations(page: str) -> dict[tuple[str, str], float]:
    return {
        (s.labels["route"], s.labels["method"]): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == "tapraise_calls_gateway_request_duration_seconds_count"
    }


@pytest_asyncio.fixture(scope="module")
async def served(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Served]:
    work = tmp_path_factory.mktemp("gateway-metrics")
    port, metrics_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "GATEWAY_"))},
        "PYTHONPATH": str(REPO_ROOT),
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": temporal_env.client.namespace,
        "GATEWAY_ALLOW_NO_AUTH": "true",
        "GATEWAY_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "LOG_FORMAT": "json",
    }
    log = work / "gateway.log"
    process = start_gateway(port, env, log)
    try:
        yield await _drive(port, metrics_port, process, log)
    finally:
        process.terminate()
        process.wait(10)


def start_gateway(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m starter serve` as an operator runs it, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "starter", "serve", "--port", str(port)],
            cwd=log.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _drive(
    port: int, metrics_port: int, process: subprocess.Popen[bytes], log: Path
) -> Served:
    call = str(uuid.uuid4())
    asked = [
        ("GET", "/healthz", "/healthz"),
        ("GET", f"/calls/{call}", "/calls/{call_uuid}"),
        ("GET", f"/calls?person={PERSON}", "/calls"),
        ("POST", f"/calls/{call}/complete", "/calls/{call_uuid}/complete"),
        ("GET", f"/no/such/{call}", UNMATCHED),
        ("PROPFIND", "/calls", "/calls"),
    ]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, await asyncio.to_thread(log.read_text)
            try:
                await http.get("/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the gateway did not come up"
                await asyncio.sleep(0.1)
        answers: dict[tuple[str, str], int] = {}
        for method, path, route in asked:
            body = {"result": {"resultCode": "confirmed"}} if method == "POST" else None
            response = await http.request(method, path, json=body)
            answers[(method if method in METHODS else OTHER_METHOD, route)] = response.status_code
        public_metrics = (await http.get("/metrics")).status_code
    async with httpx.AsyncClient(timeout=5) as http:
        page = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    process.terminate()
    process.wait(10)
    lines = (await asyncio.to_thread(log.read_text)).splitlines()
    return Served(answers, page, public_metrics, lines, call)


def test_each_request_is_counted_by_route_template_method_and_status(served: Served) -> None:
    counted = requests_total(served.metrics)
    for (method, route), status in served.answers.items():
        if route not in ("/healthz", UNMATCHED):  # asked more than once
            assert counted[(route, method, str(status))] == 1, (route, method, counted)
    assert counted[("/healthz", "GET", "200")] >= 1
    assert served.answers[("GET", "/calls/{call_uuid}")] == 404
    assert served.answers[("GET", "/calls")] == 200
    # A method HTTP does not define for the route is counted under the route, as OTHER.
    assert served.answers[(OTHER_METHOD, "/calls")] == 405
    timed = durations(served.metrics)
    assert timed[("/calls/{call_uuid}/complete", "POST")] == 1
    assert timed[("/calls", "GET")] == 1


def test_the_metrics_name_no_path_and_no_uuid(served: Served) -> None:
    for family in text_string_to_metric_families(served.metrics):
        for sample in family.samples:
            for key, value in sample.labels.items():
                assert not UUID_TEXT.search(value), f"{sample.name}{{{key}={value!r}}}"
    assert served.call not in served.metrics and PERSON not in served.metrics


def test_the_metrics_are_not_served_on_the_public_port(served: Served) -> None:
    assert served.public_metrics == 404
    assert requests_total(served.metrics)[(UNMATCHED, "GET", "404")] == 2


def test_the_log_is_json_lines_with_route_templates_and_no_person(served: Served) -> None:
    records = [json.loads(line) for line in served.log_lines]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    access = [r["message"] for r in records if r["logger"] == "gateway.access"]
    assert any(m.startswith("GET /calls 200 ") for m in access), access
    assert any(m.startswith("GET /calls/{call_uuid} 404 ") for m in access), access
    assert any(r["logger"].startswith("uvicorn") for r in records)  # the server's own, as JSON
    text = "\n".join(served.log_lines)
    assert PERSON not in text and served.call not in text


def test_the_listener_is_on_loopback_by_default_and_off_when_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("GATEWAY_METRICS_ADDRESS", "WORKER_METRICS_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    defaults = TelemetrySettings(_env_file=None)
    assert defaults.gateway_metrics_address == ListenAddress("127.0.0.1", 9465)
    assert defaults.worker_metrics_address == ListenAddress("127.0.0.1", 9464)
    monkeypatch.setenv("GATEWAY_METRICS_ADDRESS", "")
    monkeypatch.setenv("WORKER_METRICS_ADDRESS", "[::1]:9999")
    monkeypatch.setenv("LOG_FORMAT", "")
    given = TelemetrySettings(_env_file=None)
    assert given.gateway_metrics_address is None
    assert given.worker_metrics_address == ListenAddress("::1", 9999)
    assert given.worker_metrics_address.url == "http://[::1]:9999/metrics"
    assert given.log_format == "text"
    monkeypatch.setenv("WORKER_METRICS_ADDRESS", "9464")
    with pytest.raises(ValueError, match=r"WORKER_METRICS_ADDRESS[\s\S]*is not host:port"):
        TelemetrySettings(_env_file=None)


def test_a_route_is_named_by_its_template_even_for_a_wrong_method() -> None:
    async def no_temporal() -> Client:
        raise AssertionError("not needed to name a route")

    create_app(no_temporal, GatewaySettings(_env_file=None, allow_no_auth=True))
    routes = [*calls.router.routes, *actions.router.routes]
    scope = {"type": "http", "path": "/calls/x/cancel", "method": "DELETE", "root_path": ""}
    assert route_template(routes, scope) == "/calls/{call_uuid}/cancel"
    scope["path"] = "/calls/x/y/z"
    assert route_template(routes, scope) == UNMATCHED
