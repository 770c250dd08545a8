"""How benchmarks report: one `Result` each, printed as a table (or as JSON), and progress bars.

Every figure is a ratio against a baseline measured side by side in the same run, because
absolute times drift on a shared machine; the absolute numbers are printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class Result:
    """What one benchmark found.

    Attributes:
        name: The module's name (`throughput`, `cost`, …).
        title: A one-line description of what was measured.
        ratio: The headline figure as a ratio against its baseline (None when not measured).
        ratio_label: What the ratio compares, e.g. "calls / floor".
        goal: The goal in words, e.g. ">= 0.8x".
        met: Whether the goal is met (None when not measured).
        rows: The table: (label, value, baseline, note) per line.
        figures: The raw numbers, for `--json`.
        notes: Lines printed under the table.
    """

    name: str
    title: str
    ratio: float | None
    ratio_label: str
    goal: str
    met: bool | None
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, value: str, baseline: str = "", note: str = "") -> None:
        """Add a line to the table."""
        self.rows.append((label, value, baseline, note))

    def table(self) -> Table:
        """The result as a rich table, with the ratio and the goal in its caption."""
        table = Table(title=f"{self.name}: {self.title}", title_justify="left")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_column("baseline", justify="right")
        table.add_column("note")
        for row in self.rows:
            table.add_row(*row)
        table.caption = (
            f"{self.ratio_label}: {ratio_text(self.ratio)}  goal {self.goal}  {verdict(self.met)}"
        )
        table.caption_justify = "left"
        return table

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON."""
        return {
            "name": self.name,
            "title": self.title,
            "ratio": self.ratio,
            "ratioLabel": self.ratio_label,
            "goal": self.goal,
            "met": self.met,
            "figures": self.figures,
            "notes": self.notes,
        }


def at_least(name: str, title: str, ratio: float | None, ratio_label: str, goal: float) -> Result:
    """A result whose goal is a ratio of at least `goal` (not measured without a ratio)."""
    met = None if ratio is None else ratio >= goal
    return Result(name, title, ratio, ratio_label, f">= {goal:g}x", met)


def ratio_text(ratio: float | None) -> str:
    """A ratio as printed: `0.93x`, or `n/a`."""
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def verdict(met: bool | None) -> str:
    """`met`, `MISSED`, or `not measured`."""
    if met is None:
        return "[yellow]not measured[/yellow]"
    return "[green]met[/green]" if met else "[red]MISSED[/red]"


def show(result: Result) -> None:
    """Print a result's table and notes."""
    out.print(result.table())
    for note in result.notes:
        out.print(f"  {note}", soft_wrap=True)
    out.print()


def summary(results: list[Result]) -> Table:
    """One line per benchmark: its ratio and whether it meets its goal."""
    table = Table(title="summary", title_justify="left")
    for column in ("benchmark", "ratio", "against", "goal", "verdict"):
        table.add_column(column)
    for r in results:
        table.add_row(r.name, ratio_text(r.ratio), r.ratio_label, r.goal, verdict(r.met))
    return table


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
    """The command line of one benchmark: parse, run, print the table (or `--json`)."""
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
    sys.exit(0)
