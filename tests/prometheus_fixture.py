"""A real Prometheus on loopback, and the dashboard's queries as Grafana sends them to it.

The server and `promtool` are Debian's `prometheus` package (.ci/run installs it). The server
runs on a configuration of the caller's (its targets, the project's rule files) with its data
in a folder of the caller's, started and stopped as every child process of the project is
(devstack/process.py). Used by the monitoring tests and by ops/render_dashboard.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import yaml

from devstack.process import HOST, Child, free_port, wait_ready_blocking

ROOT: Final = Path(__file__).resolve().parents[1]
DASHBOARD: Final = ROOT / "ops/grafana/dashboards/tapraise-calls.json"
ALERT_RULES: Final = ROOT / "ops/prometheus/alerts.yml"

PROMETHEUS: Final = shutil.which("prometheus")
PROMTOOL: Final = shutil.which("promtool")
INSTALL_HINT: Final = "Debian's `prometheus` package (apt-get install prometheus) brings it"


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def query_panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's panels that query (rows only group them)."""
    return [panel for panel in dashboard["panels"] if panel.get("type") != "row"]


def grafana_interval(range_seconds: float, scrape_seconds: float, points: int = 300) -> float:
    """Grafana's `$__interval`: the range over the points a panel draws, at least one scrape."""
    return max(range_seconds / points, scrape_seconds)


def grafana_expr(expr: str, interval_seconds: float, scrape_seconds: float) -> str:
    """A panel's query as Grafana sends it: its variables replaced (every option: `.*`).

    `$__rate_interval` is Grafana's own rule: the interval plus one scrape, and four scrapes at
    least, so that a rate always spans samples enough.
    """
    rate = max(interval_seconds + scrape_seconds, 4 * scrape_seconds)
    expr = expr.replace("$__rate_interval", f"{round(rate)}s")
    expr = expr.replace("$__interval", f"{round(interval_seconds)}s")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def legend(template: str, labels: Mapping[str, str]) -> str:
    """A series' name in the legend, from the target's `legendFormat` as Grafana fills it."""
    if not template:
        inner = ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        return f"{{{inner}}}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda match: labels.get(match[1], ""), template)


class PrometheusError(RuntimeError):
    """Prometheus refused a query; the message is its own."""


@dataclass(frozen=True)
class PrometheusApi:
    """The parts of Prometheus's HTTP API the tests and the picture need."""

    url: str

    def _data(self, path: str, params: Mapping[str, str | float]) -> Any:
        answer = httpx.post(f"{self.url}{path}", data=dict(params), timeout=30)
        body = answer.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{params.get('query')}: {body.get('error', answer.text)}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector `expr` gives now (or at `at`, a Unix time)."""
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        result: list[dict[str, Any]] = self._data("/api/v1/query", params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Each series `expr` gives from `start` to `end`, every `step` seconds."""
        params: dict[str, str | float] = {"query": expr, "start": start, "end": end, "step": step}
        result: list[dict[str, Any]] = self._data("/api/v1/query_range", params)["result"]
        return result

    def targets_up(self) -> dict[str, float]:
        """`up` of each target, by its `job` and `instance`."""
        return {
            f"{s['metric']['job']}/{s['metric']['instance']}": float(s["value"][1])
            for s in self.query("up")
        }


def scrape_config(job: str, targets: Sequence[str]) -> dict[str, Any]:
    return {"job_name": job, "static_configs": [{"targets": list(targets)}]}


@contextlib.contextmanager
def running_prometheus(
    folder: Path,
    scrape_configs: Sequence[Mapping[str, Any]],
    *,
    scrape_interval: str = "15s",
    rule_files: Sequence[Path] = (),
) -> Iterator[PrometheusApi]:
    """Prometheus on a free loopback port, scraping `scrape_configs` and evaluating `rule_files`.

    Its configuration, data and log stay in `folder`; it is stopped on leaving.
    """
    if PROMETHEUS is None:
        raise FileNotFoundError(f"no prometheus server: {INSTALL_HINT}")
    folder.mkdir(parents=True, exist_ok=True)
    for rule_file in rule_files:
        shutil.copy(rule_file, folder / rule_file.name)
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [rule_file.name for rule_file in rule_files],
        "scrape_configs": [dict(job) for job in scrape_configs],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    url = f"http://{HOST}:{free_port()}"
    child = Child(
        "prometheus",
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
            "--log.level=warn",
        ],
        log_path=folder / "prometheus.log",
    )
    child.start()
    try:

        def ready() -> bool:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200

        wait_ready_blocking(child, ready, "ready", within=60, interval=0.2)
        yield PrometheusApi(url)
    finally:
        child.stop()
