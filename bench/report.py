"""How benchmarks report: one `Result` each, printed as a table (or as JSON), and progress bars.

Every figure is a ratio against a baseline measured side by side in the same run, because
absolute times drift on a shared machine; the absolute numbers are printed too.

Each `Result` declares its figures (`Result.figure`: a name, a value, a unit and, when it has
one, a goal). `python -m bench` ends with all of them in one block, one line per figure, in a
format a script can read (`summary_line`, read back by `parse_summary_line`):

    <benchmark>.<figure>: <value> <unit> (goal <op> <bound> <unit>) met|missed
    <benchmark>.<figure>: <value> <unit> (no goal)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

# Wide enough for the tables when the output is a file or a pipe.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False)

SUMMARY_HEADER = "summary:"
# The line of one figure, as `summary_line` writes it.
_SUMMARY_LINE = re.compile(
    r"(?P<name>[a-z0-9_.]+): (?P<value>n/a|-?[0-9.]+) (?P<unit>\S+)"
    r" \((?:no goal|goal (?P<op><=|>=) (?P<bound>-?[0-9.e+-]+) (?P=unit))\)"
    r"(?: (?P<verdict>met|missed))?"
)


@dataclass(frozen=True)
class Goal:
    """A bound a figure should keep: `<= bound` or `>= bound`, in the figure's unit."""

    op: Literal["<=", ">="]
    bound: float

    def holds(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def text(self, unit: str) -> str:
        return f"{self.op} {self.bound:g} {unit}"


def at_most(bound: float) -> Goal:
    return Goal("<=", bound)


def at_least(bound: float) -> Goal:
    return Goal(">=", bound)


@dataclass(frozen=True)
class Figure:
    """One figure of a benchmark, as the summary block prints it.

    Attributes:
        name: `<benchmark>.<figure>`, lower case, digits, `_` and `.` only (no spaces, so that
            a script splits a line at its first `: `).
        value: The figure; None when it could not be measured (printed `n/a`, and a goal is
            then missed: nothing shows that it holds).
        unit: One word without spaces, e.g. `x` (a ratio), `ms`, `lifecycles/s`, `MB`.
        goal: The bound it should keep, or None.
        digits: Decimal places printed.
    """

    name: str
    value: float | None
    unit: str
    goal: Goal | None = None
    digits: int = 2

    @property
    def met(self) -> bool | None:
        """Whether the goal holds for the value as printed (so that a script reading the line
        comes to the same verdict); None without a goal, False when not measured."""
        if self.goal is None:
            return None
        return self.value is not None and self.goal.holds(round(self.value, self.digits))

    def value_text(self) -> str:
        return "n/a" if self.value is None else f"{self.value:.{self.digits}f}"

    def line(self) -> str:
        """The figure's summary line."""
        head = f"{self.name}: {self.value_text()} {self.unit}"
        if self.goal is None:
            return f"{head} (no goal)"
        return f"{head} (goal {self.goal.text(self.unit)}) {'met' if self.met else 'missed'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "goal": None if self.goal is None else self.goal.text(self.unit),
            "met": self.met,
        }


def summary_line(figure: Figure) -> str:
    """`<figure>: <value> <unit> (goal <goal>) met|missed`, or `… (no goal)`."""
    return figure.line()


def parse_summary_line(line: str) -> dict[str, Any] | None:
    """A summary line read back: name, value (None for `n/a`), unit, goal text, met; None when
    the line is not a figure's (e.g. the block's header)."""
    found = _SUMMARY_LINE.fullmatch(line.strip())
    if found is None:
        return None
    value = found["value"]
    op = found["op"]
    return {
        "name": found["name"],
        "value": None if value == "n/a" else float(value),
        "unit": found["unit"],
        "goal": None if op is None else f"{op} {found['bound']} {found['unit']}",
        "met": None if found["verdict"] is None else found["verdict"] == "met",
    }


def summary_lines(results: Iterable[Result]) -> list[str]:
    """Every figure of every result, one line each, in the order declared."""
    return [figure.line() for result in results for figure in result.summary]


def print_summary(results: Sequence[Result]) -> None:
    """The summary block: its header, then one line per figure."""
    out.print(SUMMARY_HEADER, markup=False, highlight=False)
    for line in summary_lines(results):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@dataclass
class Result:
    """What one benchmark found.

    Attributes:
        name: The module's name (`throughput`, `cost`, …).
        title: A one-line description of what was measured.
        rows: The table: (label, value, baseline, note) per line.
        figures: The raw numbers, for `--json`.
        notes: Lines printed under the table.
        summary: The declared figures (`figure`), the first one being the headline: the ratio
            against the benchmark's baseline.
    """

    name: str
    title: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    summary: list[Figure] = field(default_factory=list)

    def add(self, label: str, value: str, baseline: str = "", note: str = "") -> None:
        """Add a line to the table."""
        self.rows.append((label, value, baseline, note))

    def figure(
        self,
        key: str,
        value: float | None,
        unit: str,
        goal: Goal | None = None,
        digits: int = 2,
    ) -> Figure:
        """Declare a figure `<name>.<key>` for the summary (in the order printed)."""
        if value is not None and not math.isfinite(value):
            value = None
        declared = Figure(f"{self.name}.{key}", value, unit, goal, digits)
        self.summary.append(declared)
        return declared

    @property
    def headline(self) -> Figure | None:
        return self.summary[0] if self.summary else None

    @property
    def ratio(self) -> float | None:
        """The headline figure's value."""
        return None if self.headline is None else self.headline.value

    @property
    def met(self) -> bool | None:
        """Whether every goal holds (None when no figure has one)."""
        verdicts = [f.met for f in self.summary if f.goal is not None]
        return None if not verdicts else all(verdicts)

    def table(self) -> Table:
        """The result as a rich table, with its figures that have goals in its caption."""
        table = Table(title=f"{self.name}: {self.title}", title_justify="left")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_column("baseline", justify="right")
        table.add_column("note")
        for row in self.rows:
            table.add_row(*row)
        judged = [f for f in self.summary if f.goal is not None] or self.summary[:1]
        table.caption = "\n".join(_coloured(f) for f in judged)
        table.caption_justify = "left"
        return table

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON (`ratio`, `ratioLabel`, `goal`: the headline figure's)."""
        headline = self.headline
        return {
            "name": self.name,
            "title": self.title,
            "ratio": self.ratio,
            "ratioLabel": None if headline is None else headline.name,
            "goal": None
            if headline is None or headline.goal is None
            else headline.goal.text(headline.unit),
            "met": self.met,
            "summary": [f.to_json() for f in self.summary],
            "figures": self.figures,
            "notes": self.notes,
        }


def _coloured(figure: Figure) -> str:
    line = figure.line().replace("[", "\\[")
    if figure.met is None:
        return line
    colour = "green" if figure.met else "red"
    verdict = "met" if figure.met else "missed"
    return line.removesuffix(verdict) + f"[{colour}]{verdict}[/{colour}]"


def show(result: Result) -> None:
    """Print a result's table and notes."""
    out.print(result.table())
    for note in result.notes:
        out.print(f"  {note}", soft_wrap=True)
    out.print()


def percentile(values: Sequence[float], p: float) -> float:
    """The `p` quantile (0..1) of `values` by nearest rank; 0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


def per_second(count: float, seconds: float) -> float:
    """A rate, 0 when no time passed."""
    return count / seconds if seconds > 0 else 0.0


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr; yields `advance(n)`. Quiet when stderr is not a terminal."""
    quiet = not err.is_terminal or os.environ.get("BENCH_QUIET") == "1"
    with Progress(
        TextColumn(f"{description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=True,
    ) as bar:
        task: TaskID = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance


async def bounded(
    count: int,
    concurrency: int,
    work: Callable[[int], Awaitable[object]],
    advance: Callable[[int], None],
) -> None:
    """Run `work(i)` for each i < count, at most `concurrency` at once; an error stops all."""
    queue = iter(range(count))

    async def lane() -> None:
        for i in queue:
            await work(i)
            advance(1)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, count)):
            group.create_task(lane())


async def timed(
    description: str, count: int, concurrency: int, work: Callable[[int], Awaitable[object]]
) -> float:
    """`bounded` under a progress bar; returns the seconds it took."""
    with progress(description, count) as advance:
        began = time.perf_counter()
        await bounded(count, concurrency, work, advance)
        return time.perf_counter() - began


def parser_for(
    module: str, doc: str, bytecode_cache_option: bool = False
) -> argparse.ArgumentParser:
    """The command line of `python -m <module>`, described by the first paragraph of `doc`.

    With `bytecode_cache_option`, it offers `--no-bytecode-cache` (for benchmarks that start
    workers).
    """
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0])
    if bytecode_cache_option:
        parser.add_argument(
            "--no-bytecode-cache",
            action="store_true",
            help="Run the workers without cached bytecode (as with PYTHONDONTWRITEBYTECODE=1).",
        )
    return parser


def main(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, Result]],
) -> None:
    """The command line of one benchmark: parse, run, print the table and the summary block
    (or `--json`)."""
    parser.add_argument("--json", action="store_true", help="Print the result as JSON.")
    args = parser.parse_args()
    try:
        result = asyncio.run(run(args))
    except KeyboardInterrupt:
        err.print("interrupted: stopped every process this benchmark started")
        raise SystemExit(130) from None
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        show(result)
        print_summary([result])
    sys.exit(0)
