"""Observability of the worker and the gateway: metrics, traces and log lines.

`settings` reads what is configurable, `runtime` makes the worker's Temporal runtime with its
Prometheus listener, `phases` counts the calls per phase, `tracing` exports spans over
OTLP/HTTP when a collector is named, and `logs` writes text or JSON lines. The metrics
themselves are recorded where they happen: `workflows.metrics` in the workflow,
`activities.metrics` around TapRaise requests, `gateway.telemetry` in the gateway.
"""
