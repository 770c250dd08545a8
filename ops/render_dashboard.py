"""Draw the panels of the Grafana dashboard (grafana/dashboards/tapraise-calls.json) as a PNG.

Each panel's queries go to a Prometheus as Grafana sends them (its variables set to every value,
`$__rate_interval` by Grafana's rule), and the answers are drawn where the dashboard places the
panel on Grafana's 24-column grid, in Grafana's dark colours. It is a drawing of what the
dashboard shows, not a screenshot of Grafana. Two sources of data:

    # A demo run: a real Prometheus (Debian's `prometheus` package) scrapes the synthetic stack
    # of tests/synthetic_metrics.py for the minutes given, at the stack's scrape interval, with
    # the project's alert rules loaded; then the panels are drawn. docs/dashboard.png is made so.
    python ops/render_dashboard.py --demo-minutes 10 --out docs/dashboard.png

    # A Prometheus that scrapes a real stack, e.g. docker-compose.yml's:
    python ops/render_dashboard.py --prometheus http://localhost:9090 --last 6h --out now.png

Run it from a clone set up with `make setup` (which makes its folders importable). It needs
matplotlib (`pip install matplotlib`), which is no dependency of the project.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tests.prometheus_fixture import (
    ALERT_RULES,
    PrometheusApi,
    grafana_expr,
    grafana_interval,
    legend,
    load_dashboard,
    running_prometheus,
    scrape_config,
)
from tests.synthetic_metrics import Scenario, SyntheticStack

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch
    from matplotlib.ticker import FuncFormatter, MaxNLocator
except ImportError:  # said where it matters, in main()
    matplotlib = None

DATASOURCES = Path(__file__).resolve().parent / "grafana/provisioning/datasources/prometheus.yml"

# Grafana's dark theme and its classic palette, in the order it gives series their colours.
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e8e"
PALETTE = (
    "#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0",
    "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C", "#6D1F62", "#584477",
)  # fmt: skip
NAMED_COLOURS = {"green": "#73BF69", "orange": "#FF9830", "red": "#F2495C", "yellow": "#FADE2A"}

# The grid: 24 columns; a grid unit of height is 30 px where a column is about 75 px.
COLUMNS = 24
FIGURE_WIDTH = 20.0  # inches
UNIT_HEIGHT = FIGURE_WIDTH / COLUMNS * 0.4
HEADER = 0.7  # inches above the grid, for the title and what the data is


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not found:
        raise argparse.ArgumentTypeError(f"a duration such as 90s, 30m, 6h or 2d: {text!r}")
    return float(found[1]) * units[found[2]]


def stack_scrape_seconds() -> float:
    """The scrape interval Grafana's data source is told the stack's Prometheus scrapes at."""
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    return _seconds(source["jsonData"]["timeInterval"])


def format_value(value: float, unit: str, decimals: int | None = None) -> str:
    """A value as Grafana shows it in `unit` (the units the dashboard uses)."""
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "s":
        if value == 0:
            return "0 s"
        if abs(value) < 1:
            return f"{value * 1000:.{0 if decimals is None else max(decimals - 3, 0)}f} ms"
        if abs(value) >= 3600:
            return f"{value / 3600:.3g} h"
        if abs(value) >= 60:
            return f"{value / 60:.3g} min"
        return f"{value:.3g} s"
    suffix = {"reqps": " req/s"}.get(
        unit, unit.removeprefix("suffix:") if unit.startswith("suffix:") else ""
    )
    if decimals is not None:
        number = f"{value:.{decimals}f}"
    elif abs(value) >= 1000:
        number = f"{value / 1000:.1f}K"
    elif abs(value) >= 10 or value == int(value):
        number = f"{value:.0f}"
    else:
        number = f"{value:.2f}"
    return number + suffix


def _colour(name: str) -> str:
    return NAMED_COLOURS.get(name, name)


def _series(
    prometheus: PrometheusApi, panel: Mapping[str, Any], start: float, end: float, scrape: float
) -> list[tuple[str, str, list[float], list[float]]]:
    """(refId, legend, times, values) of every series of the panel's targets."""
    interval = grafana_interval(end - start, scrape)
    step = max(interval, 1.0)
    found = []
    for target in panel["targets"]:
        expr = grafana_expr(target["expr"], interval, scrape)
        for series in prometheus.query_range(expr, start, end, step):
            times = [float(t) for t, _ in series["values"]]
            values = [float(v) for _, v in series["values"]]
            name = legend(target.get("legendFormat", ""), series["metric"])
            found.append((target["refId"], name, times, values))
    return found


def _panel_box(figure: Figure, grid: Mapping[str, int], height_units: int) -> tuple[float, ...]:
    """The panel's rectangle in figure coordinates: left, bottom, width, height."""
    total_height = figure.get_figheight()
    gap = 0.06  # inches between panels
    left = grid["x"] / COLUMNS + gap / 2 / FIGURE_WIDTH
    width = grid["w"] / COLUMNS - gap / FIGURE_WIDTH
    top_in = HEADER + grid["y"] * UNIT_HEIGHT + gap / 2
    height_in = grid["h"] * UNIT_HEIGHT - gap
    return left, 1 - (top_in + height_in) / total_height, width, height_in / total_height


def _frame(figure: Figure, box: Sequence[float], title: str) -> None:
    left, bottom, width, height = box
    figure.patches.append(
        FancyBboxPatch(
            (left, bottom), width, height, boxstyle="round,pad=0,rounding_size=0.002",
            transform=figure.transFigure, facecolor=PANEL, edgecolor=BORDER, linewidth=0.8,
            zorder=-1,
        )
    )  # fmt: skip
    pad_x = 0.1 / FIGURE_WIDTH
    pad_y = 0.08 / figure.get_figheight()
    figure.text(
        left + pad_x, bottom + height - pad_y, title, color=TEXT, fontsize=9.5,
        fontweight="bold", va="top", ha="left",
    )  # fmt: skip


def _style(axes: Axes, unit: str, decimals: int | None) -> None:
    axes.set_facecolor(PANEL)
    for spine in axes.spines.values():
        spine.set_visible(False)
    axes.grid(True, color=BORDER, linewidth=0.6)
    axes.tick_params(colors=MUTED, labelsize=7, length=0)
    axes.yaxis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=2, integer=decimals == 0))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit, decimals)))
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))
    axes.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=4, maxticks=10, tz=UTC))


def _no_data(figure: Figure, box: Sequence[float]) -> None:
    left, bottom, width, height = box
    figure.text(
        left + width / 2, bottom + height / 2, "No data", color=MUTED, fontsize=11,
        ha="center", va="center",
    )  # fmt: skip


def _timeseries(
    figure: Figure,
    box: Sequence[float],
    panel: Mapping[str, Any],
    series: list[tuple[str, str, list[float], list[float]]],
    span: tuple[float, float],
) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    unit, decimals = defaults.get("unit", "short"), defaults.get("decimals")
    if not series:
        _no_data(figure, box)
        return
    left, bottom, width, height = box
    figure_height = figure.get_figheight()
    columns = max(1, int(width * FIGURE_WIDTH / 2.4))
    legend_lines = math.ceil(len(series) / columns)
    legend_in = 0.08 + 0.16 * legend_lines
    top_in, axis_in = 0.34, 0.2
    plot_bottom = bottom + (legend_in + axis_in) / figure_height
    plot_height = height - (top_in + legend_in + axis_in) / figure_height
    axes = figure.add_axes(
        (left + 0.55 / FIGURE_WIDTH, plot_bottom, width - 0.7 / FIGURE_WIDTH, plot_height)
    )
    _style(axes, unit, decimals)
    dashes = {
        override["matcher"]["options"]: prop["value"]["fill"]
        for override in panel["fieldConfig"].get("overrides", [])
        for prop in override["properties"]
        if prop["id"] == "custom.lineStyle"
    }
    styles = {"dash": (0, (6, 4)), "dot": (0, (1, 3))}
    fill = defaults.get("custom", {}).get("fillOpacity", 0) / 100
    handles = []
    for index, (ref, name, times, values) in enumerate(series):
        when = [datetime.fromtimestamp(t, UTC) for t in times]
        colour = PALETTE[index % len(PALETTE)]
        (line,) = axes.plot(
            when, values, color=colour, linewidth=1.1,
            linestyle=styles.get(dashes.get(ref, ""), "solid"), label=name,
        )  # fmt: skip
        if fill:
            axes.fill_between(when, values, color=colour, alpha=fill, linewidth=0)
        handles.append(line)
    steps = defaults.get("thresholds", {}).get("steps", [])
    if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode") in {"dashed", "line"}:
        for step in steps[1:]:
            axes.axhline(step["value"], color=_colour(step["color"]), linestyle=(0, (4, 3)), lw=1)
    axes.set_xlim(datetime.fromtimestamp(span[0], UTC), datetime.fromtimestamp(span[1], UTC))
    if defaults.get("min") == 0:
        top = max((v for *_, values in series for v in values if not math.isnan(v)), default=1)
        axes.set_ylim(0, max(top * 1.1, 1e-9 if unit == "s" else 1))
    figure.legend(
        handles=handles, loc="upper left", ncols=columns, frameon=False, fontsize=7,
        labelcolor=TEXT, handlelength=1.6, columnspacing=1.2, borderaxespad=0,
        bbox_to_anchor=(left + 0.1 / FIGURE_WIDTH, bottom + (legend_in - 0.02) / figure_height),
    )  # fmt: skip


def _stat(
    figure: Figure,
    box: Sequence[float],
    panel: Mapping[str, Any],
    series: list[tuple[str, str, list[float], list[float]]],
) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    points = [
        (t, v) for _, _, times, values in series[:1] for t, v in zip(times, values, strict=True)
    ]
    points = [(t, v) for t, v in points if not math.isnan(v)]
    if not points:
        _no_data(figure, box)
        return
    value = points[-1][1]
    colour = _colour(defaults["thresholds"]["steps"][0]["color"])
    for step in defaults["thresholds"]["steps"][1:]:
        if value >= step["value"]:
            colour = _colour(step["color"])
    left, bottom, width, height = box
    spark = figure.add_axes((left, bottom, width, height * 0.45))
    spark.set_axis_off()
    spark.fill_between(
        [t for t, _ in points], [v for _, v in points], color=colour, alpha=0.18, lw=0
    )
    spark.plot([t for t, _ in points], [v for _, v in points], color=colour, linewidth=1)
    spark.set_ylim(bottom=0)
    text = format_value(value, defaults.get("unit", "short"), defaults.get("decimals"))
    figure.text(
        left + width / 2, bottom + height * 0.47, text, color=colour, fontsize=24,
        fontweight="bold", ha="center", va="center",
    )  # fmt: skip


def render(
    prometheus: PrometheusApi,
    start: float,
    end: float,
    scrape: float,
    caption: str,
    out: Path,
) -> None:
    """Draw every panel of the dashboard from `prometheus` over [start, end] into `out`."""
    dashboard = load_dashboard()
    panels = dashboard["panels"]
    height_units = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = plt.figure(figsize=(FIGURE_WIDTH, HEADER + height_units * UNIT_HEIGHT + 0.1))
    figure.patch.set_facecolor(BACKGROUND)
    top = 1 - 0.12 / figure.get_figheight()
    figure.text(
        0.006, top, dashboard["title"], color=TEXT, fontsize=15, fontweight="bold", va="top"
    )
    figure.text(0.994, top, caption, color=MUTED, fontsize=9, va="top", ha="right")
    for panel in panels:
        box = _panel_box(figure, panel["gridPos"], height_units)
        if panel["type"] == "row":
            left, bottom, _, height = box
            figure.text(left, bottom + height / 2, panel["title"], color=TEXT, fontsize=11,
                        fontweight="bold", va="center")  # fmt: skip
            continue
        _frame(figure, box, panel["title"])
        series = _series(prometheus, panel, start, end, scrape)
        if panel["type"] == "stat":
            _stat(figure, box, panel, series)
        else:
            _timeseries(figure, box, panel, series, (start, end))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100, facecolor=BACKGROUND)
    plt.close(figure)


def demo(minutes: float, out: Path) -> None:
    """A real Prometheus scrapes the synthetic stack for `minutes`; then the panels are drawn."""
    scenario = Scenario(length=minutes * 60)
    stack = SyntheticStack(scenario)
    scrape = stack_scrape_seconds()  # the stack's own: Grafana's rate intervals come out the same
    with tempfile.TemporaryDirectory() as folder, stack.serving() as addresses:
        workers = [address for name, address in addresses.items() if name.startswith("worker")]
        jobs = [scrape_config("worker", workers), scrape_config("gateway", [addresses["gateway"]])]
        with running_prometheus(
            Path(folder),
            jobs,
            scrape_interval=f"{scrape:g}s",
            rule_files=[ALERT_RULES],
        ) as prometheus:
            start = time.time()
            end = start + scenario.length
            while (left := end - time.time()) > 0:
                print(f"scraping the synthetic stack: {left / 60:4.1f} min to go", flush=True)
                time.sleep(min(left, 60))
            time.sleep(scrape)  # the last scrape and rule evaluation
            outage = [f"{share * minutes:.1f}" for share in scenario.outage]
            caption = (
                "Demo run: a real Prometheus scraping synthetic metrics "
                f"(tests/synthetic_metrics.py) every {scrape:g} s "
                f"for {minutes:g} min; "
                f"TapRaise failing from minute {outage[0]} to {outage[1]}. "
                "Drawn from Prometheus's answers, not by Grafana."
            )
            render(prometheus, start, time.time(), scrape, caption, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--demo-minutes", type=float, help="run the synthetic demo this long")
    source.add_argument("--prometheus", help="the URL of a Prometheus that scrapes a stack")
    parser.add_argument(
        "--last", type=_seconds, default=_seconds("6h"), help="with --prometheus: the range drawn"
    )
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"), help="the PNG written")
    args = parser.parse_args(argv)
    if matplotlib is None:
        print("matplotlib is needed: pip install matplotlib", file=sys.stderr)
        return 2
    if args.demo_minutes is not None:
        demo(args.demo_minutes, args.out)
    else:
        end = time.time()
        caption = f"Prometheus at {args.prometheus}, the last {args.last / 3600:g} h"
        prometheus = PrometheusApi(args.prometheus.rstrip("/"))
        render(prometheus, end - args.last, end, stack_scrape_seconds(), caption, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
