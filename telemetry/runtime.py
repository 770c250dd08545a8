"""The worker's Temporal runtime: Prometheus metrics on the worker's listener, core logs routed
through Python's logging when lines are JSON.

The SDK's own metrics (`temporal_…`: task slots, schedule-to-start latencies, sticky cache, …)
and the project's (`tapraise_calls_…`, recorded on this runtime's meter, in workflows through
`workflow.metric_meter()`) are served together at `http://<WORKER_METRICS_ADDRESS>/metrics`.
Durations are in seconds, as Prometheus has them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from telemetry.settings import ListenAddress, LogFormat

# The Temporal core's own log lines, when they go through Python's logging.
CORE_LOGGER = "temporalio.core"


class MetricsListenerError(RuntimeError):
    """The metrics listener cannot bind its address; the message says which and what to do."""


def temporal_runtime(
    metrics_address: ListenAddress | None,
    log_format: LogFormat,
    *,
    histogram_buckets: Mapping[str, Sequence[float]] | None = None,
) -> Runtime:
    """A Temporal runtime for the worker (or the gateway's client).

    Args:
        metrics_address: Where to serve Prometheus metrics; None: no metrics.
        log_format: With JSON, the core's log lines are forwarded to the `temporalio.core`
            logger (and so written as JSON too) instead of to standard error in its own format.
        histogram_buckets: Bucket boundaries (seconds) per histogram name.

    Raises:
        MetricsListenerError: the address cannot be bound (in use, or not this machine's).
    """
    logs = LoggingConfig.default
    if log_format is LogFormat.JSON:
        logs = LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
            forwarding=LogForwardingConfig(logger=logging.getLogger(CORE_LOGGER)),
        )
    metrics = None
    if metrics_address is not None:
        metrics = PrometheusConfig(
            bind_address=str(metrics_address),
            durations_as_seconds=True,
            histogram_bucket_overrides=dict(histogram_buckets or {}),
        )
    try:
        return Runtime(telemetry=TelemetryConfig(logging=logs, metrics=metrics))
    except ValueError as exc:  # the SDK's words for a listener that failed to start
        raise MetricsListenerError(
            f"cannot serve metrics at WORKER_METRICS_ADDRESS={metrics_address}: {exc}. Choose "
            "another address, or set it empty to serve no metrics."
        ) from None
