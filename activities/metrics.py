"""Metrics of the worker's TapRaise traffic: requests by endpoint and status, their durations,
and the activity tries that retried one.

Recorded on the worker's own metric meter (the Temporal runtime's, served with the SDK's metrics
on the worker's Prometheus port), with exactly the labels named here: an endpoint
(`tapraise.Endpoint`) and an HTTP status. Never a call's uuid or anything of its body.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from temporalio.common import MetricMeter

from tapraise import Endpoint, ObservedRequest

REQUESTS: Final = "tapraise_calls_tapraise_requests_total"
REQUEST_DURATION: Final = "tapraise_calls_tapraise_request_duration_seconds"
RETRIES: Final = "tapraise_calls_tapraise_retries_total"
# The `status` of a request that got no answer: a timeout, or no connection.
NO_ANSWER: Final = "error"
# From a quick list request to a slow answer near the client's 15 s read timeout.
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class TapRaiseMetrics:
    """Counts every TapRaise request the client sends, and every retried TapRaise activity try.

    It is the client's `RequestObserver` for the counts and durations, and the activities call
    `retried` for a try after the first.

    Args:
        meter: Where to record (default: nowhere).
    """

    def __init__(self, meter: MetricMeter = MetricMeter.noop) -> None:
        self._requests = meter.create_counter(
            REQUESTS, "Requests sent to TapRaise, by endpoint and HTTP status (error: no answer)."
        )
        self._duration = meter.create_histogram_float(
            REQUEST_DURATION, "How long TapRaise took to answer, by endpoint.", "s"
        )
        self._retries = meter.create_counter(
            RETRIES, "TapRaise activity tries after the first, by endpoint."
        )

    @contextmanager
    def observe(self, request: ObservedRequest) -> Iterator[None]:
        """Count one request and time it, whether or not it got an answer."""
        started = time.perf_counter()
        try:
            yield
        finally:
            status = NO_ANSWER if request.status is None else str(request.status)
            endpoint = request.endpoint.value
            self._requests.add(1, {"endpoint": endpoint, "status": status})
            self._duration.record(time.perf_counter() - started, {"endpoint": endpoint})

    def retried(self, endpoint: Endpoint) -> None:
        """Count a try of a TapRaise activity after its first."""
        self._retries.add(1, {"endpoint": endpoint.value})
