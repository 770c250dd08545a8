"""A synthetic tapraise-calls stack's metrics, served over HTTP as Prometheus scrapes them.

Two workers and a gateway export every series that the dashboard (ops/grafana/dashboards/) and
the alert rules (ops/prometheus/alerts.yml) read, under the names and labels the real processes
export, from a seeded simulation: calls started in a steady flow, attempts reported by the
dialers, calls closing, and, between two instants of the run, a TapRaise outage (a third of the
requests answered 503, slow answers, retries, calls piling up in `creating`, activities waiting
for a slot). No call is made anywhere. It serves to draw the dashboard (ops/render_dashboard.py)
and to check its queries against a real Prometheus (tests/test_monitoring.py).
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
TASK_QUEUE = "tapraise-calls"

# Upper bounds of the histograms' buckets, in seconds.
TAPRAISE_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GATEWAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SDK_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)

# Calls started a second, by type; the dialers' reports and the closes follow from them.
STARTS = {"verification": 0.9, "welcome": 0.4, "upgrade": 0.15}
OUTCOMES = {"no_answer": 0.55, "voicemail": 0.25, "busy": 0.15, "wrong_number": 0.05}
CLOSES = {
    ("completed", "result"): 0.45,
    ("expired", "attempts_exhausted"): 0.1,
    ("cancelled", "cancel"): 0.05,
    ("expired", "deadline_passed"): 0.04,
    ("expired", "wrong_number"): 0.02,
    ("failed", "create_refused"): 0.004,
}
CLOSE_ENDPOINT = {
    "completed": "complete_call",
    "cancelled": "cancel_call",
    "expired": "expire_call",
}
ACTION_ROUTES = {
    "attempts": 0.7,
    "complete": CLOSES["completed", "result"],
    "reschedule": 0.08,
    "cancel": CLOSES["cancelled", "cancel"],
}

# Messages the calls refuse, a second: (message, reason, rate).
REFUSALS = (
    ("complete", "final_phase", 0.012),
    ("attempt", "final_phase", 0.006),
    ("reschedule", "past_deadline", 0.004),
    ("attempt", "invalid", 0.002),
)
# The SDK's requests to Temporal that fail, a second and worker.
REQUEST_FAILURES = (("RespondWorkflowTaskCompleted", 0.003), ("PollActivityTaskQueue", 0.002))

Labels = tuple[tuple[str, str], ...]


def _labels(values: Mapping[str, str]) -> Labels:
    return tuple(sorted(values.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _series(name: str, labels: Labels, value: float) -> str:
    inner = ",".join(f'{key}="{_escape(text)}"' for key, text in labels)
    return f"{name}{{{inner}}} {value:.17g}" if inner else f"{name} {value:.17g}"


def _bound(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        self.counts[index] += 1
        self.total += value


@dataclass
class Registry:
    """The series one process exports: counters, gauges and histograms by name and labels."""

    counters: dict[tuple[str, Labels], float] = field(default_factory=lambda: defaultdict(float))
    gauges: dict[tuple[str, Labels], float] = field(default_factory=dict)
    histograms: dict[tuple[str, Labels], _Histogram] = field(default_factory=dict)

    def inc(self, name: str, labels: Mapping[str, str], by: float = 1.0) -> None:
        self.counters[name, _labels(labels)] += by

    def set(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self.gauges[name, _labels(labels)] = value

    def observe(
        self, name: str, labels: Mapping[str, str], value: float, bounds: tuple[float, ...]
    ) -> None:
        key = (name, _labels(labels))
        self.histograms.setdefault(key, _Histogram(bounds)).observe(value)

    def text(self) -> str:
        """Every series in Prometheus's text exposition format (version 0.0.4)."""
        lines: list[str] = []
        for kind, table in (("counter", self.counters), ("gauge", self.gauges)):
            for name in sorted({name for name, _ in table}):
                lines.append(f"# TYPE {name} {kind}")
                lines += [
                    _series(name, labels, table[n, labels])
                    for n, labels in sorted(table)
                    if n == name
                ]
        for name in sorted({name for name, _ in self.histograms}):
            lines.append(f"# TYPE {name} histogram")
            for key, labels in sorted(self.histograms):
                if key != name:
                    continue
                histogram = self.histograms[key, labels]
                cumulative = 0
                for bound, count in zip(
                    [*histogram.bounds, math.inf], histogram.counts, strict=True
                ):
                    cumulative += count
                    bucket = (*labels, ("le", _bound(bound)))
                    lines.append(_series(f"{name}_bucket", bucket, cumulative))
                lines.append(_series(f"{name}_sum", labels, histogram.total))
                lines.append(_series(f"{name}_count", labels, cumulative))
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Scenario:
    """What happens during a run of `length` seconds.

    Attributes:
        length: How long the run lasts, in seconds.
        outage: When TapRaise fails, as shares of the run (from, to).
        seed: The seed of every random draw: the same scenario gives the same series.
    """

    length: float
    outage: tuple[float, float] = (0.4, 0.65)
    seed: int = 7


@dataclass
class _Retry:
    due: float
    endpoint: str
    call_type: str


class SyntheticStack:
    """Two workers and a gateway whose metrics follow a `Scenario`, one simulated second at a time.

    The simulation advances to the present whenever a process is scraped, so the series are the
    same however often Prometheus reads them.
    """

    def __init__(self, scenario: Scenario, workers: int = 2) -> None:
        self.scenario = scenario
        self.workers = [Registry() for _ in range(workers)]
        self.gateway = Registry()
        self._random = random.Random(scenario.seed)
        self._lock = threading.Lock()
        self._began = time.monotonic()
        self._simulated = 0
        self._retries: list[_Retry] = []
        self._scheduled = 1800.0
        self._failed = 12.0
        self._zero()
        self._step(0)

    def processes(self) -> dict[str, Registry]:
        """Each process by the name its target gets: `worker-0`, `worker-1`, …, `gateway`."""
        named = {f"worker-{index}": registry for index, registry in enumerate(self.workers)}
        return {**named, "gateway": self.gateway}

    def scrape(self, process: str) -> str:
        """The exposition text of one process, the simulation brought up to now first."""
        with self._lock:
            elapsed = int(time.monotonic() - self._began)
            while self._simulated < elapsed:
                self._simulated += 1
                self._step(self._simulated)
            return self.processes()[process].text()

    @contextlib.contextmanager
    def serving(self) -> Iterator[dict[str, str]]:
        """Each process's `/metrics` on a loopback port of its own; yields name → host:port."""
        servers = {name: self._server(name) for name in self.processes()}
        threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers.values()]
        for thread in threads:
            thread.start()
        try:
            yield {name: f"{HOST}:{server.server_address[1]}" for name, server in servers.items()}
        finally:
            for server in servers.values():
                server.shutdown()
                server.server_close()

    def _server(self, process: str) -> ThreadingHTTPServer:
        stack = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = stack.scrape(process).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: Prometheus scrapes every few seconds."""

        return ThreadingHTTPServer((HOST, 0), Handler)

    # The simulation.

    def _zero(self) -> None:
        """Every counter at zero from the first scrape, as an exporter that knows its labels."""
        for registry in self.workers:
            for call_type in STARTS:
                registry.inc("tapraise_calls_started_total", {"call_type": call_type}, 0)
                for outcome in OUTCOMES:
                    labels = {"call_type": call_type, "outcome": outcome}
                    registry.inc("tapraise_calls_attempts_recorded_total", labels, 0)
                for phase, reason in CLOSES:
                    labels = {"call_type": call_type, "phase": phase, "reason": reason}
                    registry.inc("tapraise_calls_closed_total", labels, 0)
            for message, reason, _ in REFUSALS:
                labels = {"message": message, "reason": reason}
                registry.inc("tapraise_calls_messages_refused_total", labels, 0)
            for operation, _ in REQUEST_FAILURES:
                labels = {"namespace": "default", "task_queue": TASK_QUEUE, "operation": operation}
                registry.inc("temporal_request_failure", labels, 0)

    def _count(self, rate: float) -> int:
        """How many events of a Poisson process of `rate` a second happen in one second."""
        threshold, count, product = math.exp(-rate), 0, self._random.random()
        while product > threshold:
            count += 1
            product *= self._random.random()
        return count

    def _in_outage(self, second: float) -> bool:
        begin, end = self.scenario.outage
        return begin * self.scenario.length <= second < end * self.scenario.length

    def _worker(self) -> Registry:
        return self._random.choice(self.workers)

    def _step(self, second: int) -> None:
        outage = self._in_outage(second)
        # The day's rhythm: the flow swells and ebbs a little over the run.
        swell = 1 + 0.25 * math.sin(2 * math.pi * second / max(self.scenario.length, 1))
        actions: list[tuple[str, str]] = []
        started = closed = 0

        for call_type, rate in STARTS.items():
            for _ in range(self._count(rate * swell)):
                started += 1
                self._worker().inc("tapraise_calls_started_total", {"call_type": call_type})
                actions.append(("create_call", call_type))
                if self._random.random() < 0.6:  # the rest come from the CLI's batches
                    self._gateway_request("/calls", "POST", "202", 0.03)
        for outcome, share in OUTCOMES.items():
            for _ in range(self._count(ACTION_ROUTES["attempts"] * share * swell)):
                call_type = self._call_type()
                labels = {"call_type": call_type, "outcome": outcome}
                self._worker().inc("tapraise_calls_attempts_recorded_total", labels)
                actions.append(("add_attempt", call_type))
                self._gateway_request("/calls/{call_uuid}/attempts", "POST", "200", 0.06)
        for (phase, reason), rate in CLOSES.items():
            for _ in range(self._count(rate * swell)):
                closed += 1
                call_type = self._call_type()
                labels = {"call_type": call_type, "phase": phase, "reason": reason}
                self._worker().inc("tapraise_calls_closed_total", labels)
                if phase == "failed":
                    self._failed += 1
                else:
                    actions.append((CLOSE_ENDPOINT[phase], call_type))
                if phase == "completed":
                    self._gateway_request("/calls/{call_uuid}/complete", "POST", "200", 0.07)
                elif phase == "cancelled":
                    self._gateway_request("/calls/{call_uuid}/cancel", "POST", "200", 0.06)
        for _ in range(self._count(ACTION_ROUTES["reschedule"] * swell)):
            self._gateway_request("/calls/{call_uuid}/reschedule", "POST", "200", 0.06)
        for _ in range(self._count(0.4 * swell)):
            status = "404" if self._random.random() < 0.03 else "200"
            self._gateway_request("/calls/{call_uuid}", "GET", status, 0.02)
        for _ in range(self._count(0.03)):
            self._gateway_request("/calls", "GET", "200", 0.15)
        for _ in range(self._count(0.02)):  # the callers' mistakes: refused, not failed
            self._gateway_request("/calls", "POST", "422", 0.004)
        for message, reason, rate in REFUSALS:
            for _ in range(self._count(rate)):
                self._worker().inc(
                    "tapraise_calls_messages_refused_total", {"message": message, "reason": reason}
                )

        due = [retry for retry in self._retries if retry.due <= second]
        self._retries = [retry for retry in self._retries if retry.due > second]
        actions += [(retry.endpoint, retry.call_type) for retry in due]
        busy = sum(
            self._tapraise_request(endpoint, call_type, second, outage)
            for endpoint, call_type in actions
        )

        self._scheduled += started - closed
        creating = sum(1 for retry in self._retries if retry.endpoint == "create_call")
        creating += self._count(0.6)  # created within the second: seen only now and then
        phases = {
            "creating": creating,
            "scheduled": round(self._scheduled),
            "due": round(self._scheduled * 0.025 * (1 + 0.2 * self._random.uniform(-1, 1))),
            "failed": self._failed,
        }
        for registry in self.workers:  # one visibility count, exported by every worker
            for phase, count in phases.items():
                registry.set("tapraise_calls_in_phase", {"phase": phase}, count)
        self._sdk(second, outage, busy, len(actions))

    def _call_type(self) -> str:
        return self._random.choices(list(STARTS), weights=list(STARTS.values()))[0]

    def _gateway_request(self, route: str, method: str, status: str, median: float) -> None:
        if status.startswith("2") and self._random.random() < 0.001:
            status = "503"  # Temporal unreachable for a moment
        labels = {"route": route, "method": method, "status": status}
        self.gateway.inc("tapraise_calls_gateway_requests_total", labels)
        seconds = self._random.lognormvariate(math.log(median), 0.5)
        histogram = {"route": route, "method": method}
        self.gateway.observe(
            "tapraise_calls_gateway_request_duration_seconds", histogram, seconds, GATEWAY_BUCKETS
        )

    def _tapraise_request(self, endpoint: str, call_type: str, second: int, outage: bool) -> float:
        """One request to TapRaise, retried later if it fails; its duration in seconds."""
        draw = self._random.random()
        if outage:
            status = (
                "503" if draw < 0.33 else "timeout" if draw < 0.36 else "429" if draw < 0.38 else ""
            )
        else:
            status = "503" if draw < 0.004 else "429" if draw < 0.006 else ""
        if not status:  # answered: TapRaise's verdict
            verdict = self._random.random()
            if endpoint == "create_call":
                status = "409" if verdict < 0.01 else "201"
            else:
                status = "404" if verdict < 0.003 else "200"
        median = 0.7 if outage else 0.09
        seconds = (
            30.0 if status == "timeout" else self._random.lognormvariate(math.log(median), 0.6)
        )
        worker = self._worker()
        worker.inc(
            "tapraise_calls_tapraise_requests_total", {"endpoint": endpoint, "status": status}
        )
        worker.observe(
            "tapraise_calls_tapraise_request_duration_seconds",
            {"endpoint": endpoint},
            seconds,
            TAPRAISE_BUCKETS,
        )
        if status in {"503", "429", "timeout"}:
            worker.inc("tapraise_calls_tapraise_retries_total", {"endpoint": endpoint})
            delay = self._random.uniform(5, 60) if outage else self._random.uniform(1, 5)
            self._retries.append(_Retry(second + delay, endpoint, call_type))
        return seconds

    def _sdk(self, second: int, outage: bool, busy: float, activities: int) -> None:
        """The Temporal SDK's own series of each worker."""
        share = 1 / len(self.workers)
        for index, registry in enumerate(self.workers):
            base = {"namespace": "default", "task_queue": TASK_QUEUE}
            in_flight = min(100, round(busy * share + self._count(2)))
            slots = {
                "WorkflowWorker": 200 - self._count(4),
                "ActivityWorker": 100 - in_flight,
                "LocalActivityWorker": 100 - self._count(3),
            }
            for worker_type, free in slots.items():
                labels = {**base, "worker_type": worker_type}
                registry.set("temporal_worker_task_slots_available", labels, free)
            cached = min(400, 150 + second * 0.6 + 10 * index) + self._random.uniform(-5, 5)
            registry.set("temporal_sticky_cache_size", base, round(cached))
            for _ in range(self._count(6 * share)):
                registry.observe(
                    "temporal_workflow_task_schedule_to_start_latency",
                    base,
                    self._random.lognormvariate(math.log(0.012), 0.7),
                    SDK_BUCKETS,
                )
            median, spread = (0.35, 1.0) if outage else (0.02, 0.6)
            for _ in range(round(activities * share)):
                registry.observe(
                    "temporal_activity_schedule_to_start_latency",
                    base,
                    self._random.lognormvariate(math.log(median), spread),
                    SDK_BUCKETS,
                )
            for operation, rate in REQUEST_FAILURES:
                if self._count(rate):
                    registry.inc("temporal_request_failure", {**base, "operation": operation})
