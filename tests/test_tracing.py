"""Traces: a call started and completed through the gateway, seen by a collector on loopback.

One trace runs from the gateway's request through the Temporal start, the workflow and its local
activity to TapRaise's HTTP request; the completion's request is a trace of its own, linked from
the workflow's update span. The collector is a small HTTP server that decodes what the exporter
posts to `/v1/traces` (OTLP/HTTP, protobuf).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import pytest_asyncio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from gateway.app import create_app
from gateway.settings import GatewaySettings
from sandbox.seed import DEMO_PERSON_UUIDS
from starter.connect import connect
from tapraise import TapRaiseClient
from telemetry.tracing import Tracing, tracing_wanted
from tests.helpers import demo_account, serve, wait_for_phase
from tests.keys_fixture import RUN_KEYS
from tests.sandbox_fixture import SandboxServer
from worker import build_worker
from workflows.messages import CallPhase, workflow_id_for

pytestmark = pytest.mark.timeout(60)

PERSON = DEMO_PERSON_UUIDS[7]
TOKEN = "tracing-token-0123456789abcdef"


class Collector:
    """An OTLP/HTTP trace collector on a free loopback port, keeping every span it receives."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.services: set[str] = set()
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.receive(self.path, self.headers["Content-Type"], body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._lock = threading.Lock()

    def receive(self, path: str, content_type: str, body: bytes) -> None:
        assert content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        with self._lock:
            self.paths.append(path)
            for resource_spans in request.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.services.add(attribute.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Traced:
    """What the collector received of one call's start and completion."""

    spans: list[Span]
    services: set[str]
    paths: list[str]
    call: str

    def named(self, name: str) -> Span:
        found = [span for span in self.spans if span.name == name]
        assert len(found) == 1, (name, sorted(span.name for span in self.spans))
        return found[0]

    def parent(self, span: Span) -> Span | None:
        if not span.parent_span_id:
            return None
        [parent] = [s for s in self.spans if s.span_id == span.parent_span_id]
        assert parent.trace_id == span.trace_id
        return parent

    def ancestry(self, span: Span) -> list[str]:
        """The names from `span` up to its trace's root."""
        names = [span.name]
        while (up := self.parent(span)) is not None:
            names.append(up.name)
            span = up
        return names


_OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED")


@pytest_asyncio.fixture(scope="module")
async def traced(
    temporal_env: WorkflowEnvironment, lenient_sandbox: SandboxServer
) -> AsyncIterator[Traced]:
    """One call started and completed through a traced gateway, worker and TapRaise client."""
    with Collector() as collector:
        with pytest.MonkeyPatch.context() as env:
            for name in _OTEL_VARIABLES:
                env.delenv(name, raising=False)
            env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
            tracing = Tracing.from_env("tapraise-calls-test")
        assert tracing.enabled
        try:
            yield await _traced_call(tracing, collector, temporal_env, lenient_sandbox)
        finally:
            tracing.shutdown()


async def _traced_call(
    tracing: Tracing,
    collector: Collector,
    temporal_env: WorkflowEnvironment,
    lenient_sandbox: SandboxServer,
) -> Traced:
    client = await connect(
        temporal_env.client.service_client.config.target_host,
        temporal_env.client.namespace,
        RUN_KEYS,
        tracing=tracing,
    )
    task_queue = f"traced-{uuid.uuid4()}"
    call = str(uuid.uuid4())
    async with (
        TapRaiseClient(
            lenient_sandbox.base_url,
            demo_account(lenient_sandbox),
            observers=tracing.tapraise_observers(),
        ) as tapraise,
        build_worker(client, tapraise, task_queue=task_queue),
    ):
        await _drive(client, task_queue, call, tracing)
    tracing.flush()
    return Traced(list(collector.spans), set(collector.services), list(collector.paths), call)


async def _drive(client: Client, task_queue: str, call: str, tracing: Tracing) -> None:
    """Start the call through the gateway, then complete it there once it is scheduled."""

    async def provide() -> Client:
        return client

    settings = GatewaySettings(_env_file=None, task_queue=task_queue, tokens=[SecretStr(TOKEN)])
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        serve(create_app(provide, settings, tracing=tracing)) as base_url,
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http,
    ):
        body = {"uuid": call, "personUuid": PERSON, "type": "verification"}
        assert (await http.post("/calls", json=body)).status_code == 202
        handle = client.get_workflow_handle(workflow_id_for(call))
        await wait_for_phase(handle, CallPhase.SCHEDULED, CallPhase.DUE, seconds=30)
        completion = {"result": {"resultCode": "confirmed"}}
        answer = await http.post(f"/calls/{call}/complete", json=completion)
        assert answer.status_code == 200, answer.text
        await handle.result()


def test_one_trace_runs_from_the_gateway_through_the_workflow_to_tapraise(traced: Traced) -> None:
    create = traced.named("POST /api/v1/calls")
    assert traced.ancestry(create) == [
        "POST /api/v1/calls",
        "RunActivity:create_call",
        "StartActivity:create_call",
        "StartWorkflow:CallWorkflow",
        "POST /calls",
    ]
    gateway = traced.named("POST /calls")
    assert gateway.kind == Span.SPAN_KIND_SERVER and create.kind == Span.SPAN_KIND_CLIENT
    workflow = traced.named("RunWorkflow:CallWorkflow")
    assert traced.ancestry(workflow)[1:] == ["StartWorkflow:CallWorkflow", "POST /calls"]
    # The completion reaches TapRaise from the workflow's own trace, as the call's work does.
    complete = traced.named("PUT /api/v1/calls/{call_uuid}/actions/complete")
    assert traced.ancestry(complete)[1] == "RunActivity:complete_call"
    assert complete.trace_id == gateway.trace_id
    assert {"tapraise-calls-test"} == traced.services
    assert set(traced.paths) == {"/v1/traces"}


def test_the_completion_request_is_its_own_trace_linked_from_the_workflow(traced: Traced) -> None:
    request = traced.named("POST /calls/{call_uuid}/complete")
    update = traced.named("StartWorkflowUpdate:complete")
    assert traced.parent(update) == request
    handled = traced.named("HandleUpdate:complete")
    assert [link.span_id for link in handled.links] == [update.span_id]


def test_spans_name_templates_and_carry_no_person_or_call_uuid(traced: Traced) -> None:
    for span in traced.spans:
        assert traced.call not in span.name and PERSON not in span.name
        for attribute in span.attributes:
            text = str(attribute.value)
            assert PERSON not in text, (span.name, attribute.key)
    gateway = traced.named("POST /calls")
    attributes = {a.key: a.value for a in gateway.attributes}
    assert attributes["http.route"].string_value == "/calls"
    assert attributes["http.response.status_code"].int_value == 202


def test_tracing_is_off_without_a_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not tracing_wanted({})
    assert not tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": ""})
    endpoint = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}
    assert tracing_wanted(endpoint)
    assert not tracing_wanted({**endpoint, "OTEL_SDK_DISABLED": "true"})
    off = Tracing.from_env("tapraise-calls-test", environ={})
    assert not off.enabled
    assert off.interceptors() == [] and off.tapraise_observers() == []
