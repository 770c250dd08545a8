"""The monitoring files of ops/: Prometheus's configuration, the alert rules, Grafana's dashboard.

`promtool` (Debian's `prometheus` package) checks the configuration and the rules, and runs the
rules' unit tests (ops/prometheus/alerts_test.yml), in which each alert fires on its series and
stays silent on their look-alikes. The dashboard is checked as Grafana's provisioning reads it:
its data source, its ids and layout, and every query reading only metrics the worker, the
gateway, the Temporal SDK or Prometheus itself export. Finally a real Prometheus scrapes a
synthetic stack (tests/synthetic_metrics.py) and every panel's queries must draw data from it.
Without the package those tests are skipped, saying so.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus_fixture import (
    ALERT_RULES,
    INSTALL_HINT,
    PROMETHEUS,
    PROMTOOL,
    ROOT,
    PrometheusApi,
    grafana_expr,
    load_dashboard,
    query_panels,
    running_prometheus,
    scrape_config,
)
from tests.synthetic_metrics import Scenario, SyntheticStack

PROMETHEUS_DIR = ROOT / "ops/prometheus"
DATASOURCES = ROOT / "ops/grafana/provisioning/datasources/prometheus.yml"

# What the worker exports (besides the Temporal SDK's own series), and the gateway.
WORKER_METRICS = {
    "tapraise_calls_started_total",
    "tapraise_calls_closed_total",
    "tapraise_calls_attempts_recorded_total",
    "tapraise_calls_messages_refused_total",
    "tapraise_calls_tapraise_requests_total",
    "tapraise_calls_tapraise_request_duration_seconds_bucket",
    "tapraise_calls_tapraise_retries_total",
    "tapraise_calls_in_phase",
}
GATEWAY_METRICS = {
    "tapraise_calls_gateway_requests_total",
    "tapraise_calls_gateway_request_duration_seconds_bucket",
}
# The Temporal SDK's, as the worker's Prometheus exporter names them: `_total` on counters,
# durations in seconds with the unit in the name.
SDK_METRICS = {
    "temporal_worker_task_slots_available",
    "temporal_workflow_task_schedule_to_start_latency_bucket",
    "temporal_activity_schedule_to_start_latency_bucket",
    "temporal_sticky_cache_size",
    "temporal_request_failure",
}
# Prometheus's own: whether a target answered, and since when each alert holds.
PROMETHEUS_METRICS = {"up", "ALERTS_FOR_STATE"}
KNOWN_METRICS = WORKER_METRICS | GATEWAY_METRICS | SDK_METRICS | PROMETHEUS_METRICS

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip
ACTION_ROUTES = ("attempts", "complete", "reschedule", "cancel")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # matchers, ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set(re.findall(r"(?<![\w.$])([A-Za-z_:][\w:]*)\b(?!\s*\()", expr))
    return {name for name in names if name.lower() not in PROMQL_WORDS}


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL query of the dashboard: its panels' targets and its variables'."""
    queries = [target["expr"] for panel in query_panels(dashboard) for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        found = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["definition"])
        assert found, variable["definition"]
        queries.append(found[1])
    return queries


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        pytest.skip(f"promtool is not installed: {INSTALL_HINT}")
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_dashboard_is_one_grafana_provisioning_can_load(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "tapraise-calls"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    # Every query names the provisioned data source, by its uid.
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    expected = {"type": source["type"], "uid": source["uid"]}
    for panel in query_panels(dashboard):
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == expected, variable["name"]


def test_dashboard_panels_tile_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[x, y]}"
                taken[x, y] = panel["title"]


def test_dashboard_reads_every_metric_of_ours_and_no_unknown_one(
    dashboard: dict[str, Any],
) -> None:
    read: set[str] = set()
    for query in dashboard_queries(dashboard):
        names = metric_names(query)
        assert names, f"no metric in {query}"
        assert names <= KNOWN_METRICS, f"unknown metrics {sorted(names - KNOWN_METRICS)}: {query}"
        read |= names
    missing = (WORKER_METRICS | GATEWAY_METRICS) - read
    assert not missing, f"no panel shows {sorted(missing)}"


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (endpoint, le) (rate(a_bucket{route=~"/x/{id}", '
        's!~"2.."}[$__rate_interval]))) / on (job) group_left (instance) max(up) or vector(0)'
    )
    assert metric_names(expr) == {"a_bucket", "up"}


def test_update_latency_is_measured_on_the_agents_actions_only(
    dashboard: dict[str, Any],
) -> None:
    # The gateway labels requests with its route templates; the actions are Temporal updates.
    (panel,) = [p for p in query_panels(dashboard) if p["title"].startswith("Update latency at")]
    for target in panel["targets"]:
        pattern = re.search(r'route=~"([^"]+)"', target["expr"])
        assert pattern and 'method="POST"' in target["expr"]
        for action in ACTION_ROUTES:
            assert re.fullmatch(pattern[1], f"/calls/{{call_uuid}}/{action}"), action
        for other in ("/calls", "/calls/{call_uuid}", "/persons/{person_uuid}/objection"):
            assert not re.fullmatch(pattern[1], other), other


def test_alert_rules_read_known_metrics_and_carry_a_summary_and_a_description() -> None:
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= KNOWN_METRICS, f"{rule['alert']}: {sorted(names)}"
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        assert summary.strip() and len(description) > len(summary), rule["alert"]


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_silent() -> None:
    cases = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert fires == alerts, f"never seen firing: {sorted(alerts - fires)}"
    assert silent == alerts, f"never seen silent: {sorted(alerts - silent)}"


def test_prometheus_configuration_is_valid() -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_rules_are_valid() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alerts_fire_on_their_series_and_stay_silent_otherwise() -> None:
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_dashboard_queries_are_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    # promtool has no PromQL checker of its own: each query becomes a recording rule.
    rules = [
        {"record": f"dashboard:query_{index}", "expr": grafana_expr(expr, 15, 15)}
        for index, expr in enumerate(dashboard_queries(dashboard))
    ]
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    checked = promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture(scope="module")
def scraped_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusApi]:
    """A real Prometheus scraping a synthetic stack every second, TapRaise failing throughout."""
    if PROMETHEUS is None:
        pytest.skip(f"the prometheus server is not installed: {INSTALL_HINT}")
    stack = SyntheticStack(Scenario(length=60, outage=(0.0, 1.0)))
    with stack.serving() as addresses:
        workers = [address for name, address in addresses.items() if name.startswith("worker")]
        jobs = [scrape_config("worker", workers), scrape_config("gateway", [addresses["gateway"]])]
        folder = tmp_path_factory.mktemp("prometheus")
        with running_prometheus(
            folder, jobs, scrape_interval="1s", rule_files=[ALERT_RULES]
        ) as prometheus:
            yield prometheus


@pytest.mark.timeout(90)
def test_every_panel_draws_data_from_a_real_prometheus(
    dashboard: dict[str, Any], scraped_stack: PrometheusApi
) -> None:
    # Rates over four scrapes, as Grafana's $__rate_interval would be at this scrape interval.
    queries = {
        f"{panel['title']} ({target['refId']})": grafana_expr(target["expr"], 1, 1)
        for panel in query_panels(dashboard)
        for target in panel["targets"]
    }
    empty = dict(queries)
    deadline = time.monotonic() + 60
    while empty and time.monotonic() < deadline:
        time.sleep(1)
        empty = {name: expr for name, expr in empty.items() if not scraped_stack.query(expr)}
    assert not empty, f"no data for {sorted(empty)}"
    assert sum(scraped_stack.targets_up().values()) == 3
