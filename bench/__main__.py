"""`python -m bench` (what `make bench` runs): all six benchmarks, then every figure in one block.

Each benchmark starts its own processes (dev server, sandbox, worker, gateway) on free loopback
ports in a temporary directory and stops them when done, Ctrl-C included. The defaults fit in
about fifteen minutes on a 2-core machine; `bench.scale` runs 2,000 calls here (its own default,
when run alone, is 10,000).

The output ends with the summary block: one line per figure of every benchmark run, each
`<benchmark>.<figure>: <value> <unit> (goal <goal>) met|missed`, or `(no goal)` for a figure
without one (see `bench.report`).

    python -m bench                 # everything, tables, then the summary block
    python -m bench --json          # everything, one JSON document (its `summary` too)
    python -m bench --only cost     # some of them (repeatable)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable

from bench import agent_latency, batch, cost, follower, sandbox_load, scale, throughput
from bench.report import Result, err, out, print_summary, show

NAMES = ("throughput", "cost", "scale", "batch", "sandbox_load", "agent_latency", "follower")
SCALE_N = 2_000


async def run_all(names: list[str], as_json: bool) -> list[Result]:
    """Run the chosen benchmarks in order; each result is printed as soon as it is known."""
    results: dict[str, Result] = {}

    async def sandbox_load_run() -> Result:
        measured = results.get("throughput")
        if measured is None:
            return await sandbox_load.run()
        return await sandbox_load.run(
            lifecycle_rate=measured.figures["requestsPerSecond"],
            lifecycle_requests=measured.figures["requestsPerLifecycle"],
        )

    runs: dict[str, Callable[[], Awaitable[Result]]] = {
        "throughput": throughput.run,
        "cost": cost.run,
        "scale": lambda: scale.run(n=SCALE_N),
        "batch": batch.run,
        "sandbox_load": sandbox_load_run,
        "agent_latency": agent_latency.run,
        "follower": follower.run,
    }
    for name in names:
        began = time.monotonic()
        err.print(f"[bold]{name}[/bold] …")
        results[name] = await runs[name]()
        err.print(f"[bold]{name}[/bold] done in {time.monotonic() - began:.0f} s")
        if not as_json:
            show(results[name])
    return [results[name] for name in names]


def machine() -> str:
    """The machine in one line: cores and load, which every figure here depends on."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores, load average {load} (1, 5, 15 min)"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="Print all results as JSON.")
    parser.add_argument(
        "--only", action="append", choices=NAMES, help="Run only this benchmark (repeatable)."
    )
    args = parser.parse_args()
    names = [name for name in NAMES if not args.only or name in args.only]
    began = time.monotonic()
    before = machine()
    try:
        results = asyncio.run(run_all(names, args.json))
    except KeyboardInterrupt:
        err.print("interrupted: stopped every process the benchmarks started")
        raise SystemExit(130) from None
    if args.json:
        document = {
            "machine": before,
            "results": [r.to_json() for r in results],
            "summary": [f.to_json() for r in results for f in r.summary],
        }
        print(json.dumps(document, indent=2))
    else:
        out.print(
            f"total {time.monotonic() - began:.0f} s; at start {before}; at end {machine()}",
            soft_wrap=True,
        )
        out.print()
        print_summary(results)


if __name__ == "__main__":
    main()
