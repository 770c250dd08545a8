"""Traces: the gateway's request → the Temporal update, signal or start → the workflow → its
(local) activity → the TapRaise HTTP request, one trace, exported over OTLP/HTTP.

On only when `OTEL_EXPORTER_OTLP_ENDPOINT` (the collector's root, `/v1/traces` is added) or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the whole URL) is set, and `OTEL_SDK_DISABLED` is not
`true`; off, nothing is imported, intercepted or exported. OpenTelemetry's other variables
apply as documented (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`, …).

The Temporal side is the SDK's `TracingInterceptor` on the client (and so on the worker that
uses it): workflow spans are the interceptor's, zero-length markers that are never made twice
on replay. Spans name routes and endpoints by their templates; no span carries a person's data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tapraise import ObservedRequest, RequestObserver

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from temporalio.client import Interceptor

logger = logging.getLogger(__name__)

ENDPOINT_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# What the spans are recorded by (the instrumentation scope).
SCOPE: Final = "tapraise_calls"


def tracing_wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment names a collector for traces (and does not disable the SDK)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


class Tracing:
    """A process's tracing: a tracer provider exporting to a collector, or none at all.

    Args:
        provider: The tracer provider; None: tracing is off.
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.tracer: trace.Tracer = (
            provider.get_tracer(SCOPE) if provider is not None else trace.NoOpTracer()
        )

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] = os.environ) -> Tracing:
        """Tracing as the environment asks for it: exporting over OTLP/HTTP, or off.

        Args:
            service: The service name, unless `OTEL_SERVICE_NAME` names another.
            environ: The environment (default: the process's).
        """
        if not tracing_wanted(environ):
            return cls()
        # Imported here: a process without a collector loads none of the SDK.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        named = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
        provider = TracerProvider(resource=Resource.create(named))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        where = next(environ[name] for name in ENDPOINT_VARIABLES if environ.get(name))
        logger.info("tracing: spans are exported over OTLP/HTTP to %s", where)
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def interceptors(self) -> list[Interceptor]:
        """The Temporal client's interceptors: the SDK's tracing one when tracing is on."""
        if not self.enabled:
            return []
        from temporalio.contrib.opentelemetry import TracingInterceptor

        return [TracingInterceptor(self.tracer)]

    def tapraise_observers(self) -> list[RequestObserver]:
        """The TapRaise client's observers: a client span per request when tracing is on."""
        return [TapRaiseSpans(self.tracer)] if self.enabled else []

    def flush(self) -> None:
        """Export the spans still buffered."""
        if self.provider is not None:
            self.provider.force_flush()

    def shutdown(self) -> None:
        """Export what is buffered and stop exporting (at the process's end)."""
        if self.provider is not None:
            self.provider.shutdown()


class TapRaiseSpans:
    """A client span around each TapRaise request, its trace context sent along (`traceparent`).

    The span is named by the method and the path's template, e.g.
    `PUT /api/v1/calls/{call_uuid}/actions/complete`; a status of 400 or more marks it failed.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    @contextmanager
    def observe(self, request: ObservedRequest) -> Iterator[None]:
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "url.template": request.template,
            "server.address": request.server,
            "tapraise.endpoint": request.endpoint.value,
        }
        with self._tracer.start_as_current_span(
            f"{request.method} {request.template}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            propagate.inject(request.headers)
            yield
            if request.status is not None:
                span.set_attribute("http.response.status_code", request.status)
                if request.status >= 400:
                    span.set_status(Status(StatusCode.ERROR))
