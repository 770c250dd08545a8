"""The gateway's metrics, server spans and access log: one ASGI middleware in front of all else.

Every request, refused at the gate or answered by a route, is counted and timed by its route's
template (`/calls/{call_uuid}/complete`, never the path itself: a path holds a call's uuid and a
query a person's), its method and its status. With tracing on, it is one server span, continuing
the caller's trace when the request carries a `traceparent`; the Temporal client's spans (the
start, update or signal it sends) are its children.

The metrics are served by a listener of their own (`serve_metrics`, at
`GATEWAY_METRICS_ADDRESS`), never on the gateway's public port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Final

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telemetry.settings import ListenAddress

REQUESTS: Final = "tapraise_calls_gateway_requests_total"
REQUEST_DURATION: Final = "tapraise_calls_gateway_request_duration_seconds"
# The `route` of a request that matches no route (its path is never a label).
UNMATCHED: Final = "unmatched"
# Methods are labels as sent only when they are HTTP's own: any other word is `OTHER`.
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD: Final = "OTHER"
# From a refusal at the gate (well under a millisecond) to a batch of a thousand starts.
DURATION_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

access_log = logging.getLogger("gateway.access")


class GatewayMetrics:
    """The gateway's request counts and durations, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # prometheus_client adds the `_total` to a counter's name.
        self.requests = Counter(
            REQUESTS.removesuffix("_total"),
            "Requests the gateway answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            REQUEST_DURATION,
            "How long the gateway took to answer, by route template and method.",
            ["route", "method"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )


class MetricsListener:
    """The metrics' own HTTP listener (a thread), stopped with `close`."""

    def __init__(self, address: ListenAddress, metrics: GatewayMetrics) -> None:
        try:
            self._server, self._thread = start_http_server(
                address.port, address.host, registry=metrics.registry
            )
        except OSError as exc:
            raise RuntimeError(
                f"cannot serve metrics at GATEWAY_METRICS_ADDRESS={address}: {exc.strerror}. "
                "Choose another address, or set it empty to serve no metrics."
            ) from None
        self.url = address.url

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The template of the route a request goes to (as the router will find it), or
    `UNMATCHED`. A route that takes the path but not the method (405) is named too."""
    partial: str | None = None
    for route in routes:
        match, _child = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", UNMATCHED))
        if match is Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", UNMATCHED))
    return partial or UNMATCHED


class RequestTelemetry:
    """The ASGI middleware (see the module's docstring).

    Args:
        app: The application behind it (the gate, then the routes).
        routes: The application's routes, to name each request's route template.
        metrics: Where requests are counted.
        tracer: Makes the server spans; None: no spans.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        metrics: GatewayMetrics,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_template(self.routes, scope)
        method = scope["method"] if scope["method"] in METHODS else OTHER_METHOD
        status = 500  # unless a response starts: the application failed
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            with self._span(scope, method, route) as span:
                try:
                    await self.app(scope, receive, sending)
                finally:
                    if span is not None:
                        span.set_attribute("http.response.status_code", status)
                        if status >= 500:
                            span.set_status(Status(StatusCode.ERROR))
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.duration.labels(route, method).observe(elapsed)
            access_log.info("%s %s %d %.1f ms", method, route, status, elapsed * 1000)

    def _span(self, scope: Scope, method: str, route: str) -> Any:
        if self.tracer is None:
            return nullcontext(None)
        return self._server_span(self.tracer, scope, method, route)

    @staticmethod
    @contextmanager
    def _server_span(
        tracer: trace.Tracer, scope: Scope, method: str, route: str
    ) -> Iterator[trace.Span]:
        carrier = {key: value for key, value in Headers(scope=scope).items()}
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "http.route": route,
            "url.scheme": scope.get("scheme", "http"),
        }
        with tracer.start_as_current_span(
            f"{method} {route}",
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            yield span
