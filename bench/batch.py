"""Batch start: a CSV file through the starter's `start-batch` versus raw `start_workflow` calls.

A CSV file of `--n` rows (default 10,000; columns `uuid,personUuid,type`, every uuid distinct)
is started the way `python -m starter start-batch FILE` starts it: read and validate every row
(`starter.batch.read_batch`), then `CallService.start_many` at `--concurrency`, each result
classified (started, already started, refused). The baseline starts as many other calls with
plain concurrent `client.start_workflow` at the same concurrency, each with the very same start
request (`starter.service.start_options`: id and its policies, search attributes, the Web UI's
summary and details), so the ratio is what the batch path itself costs: reading, validating,
bounding and accounting. No worker runs: this measures starts only.

The raw starts run in two halves, before and after the batch (raw, batch, raw), so that a drift
of the machine or the growing database weighs on both alike. For scale, a quarter as many bare
starts (id and task queue only, no attributes or summary) show what a call's start request
itself adds.

    python -m bench.batch --n 10000 --concurrency 50
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from datetime import UTC, datetime
from typing import Any

from bench import lifecycle
from bench.report import Result, at_least, main, parser_for, per_second, progress, timed
from bench.stack import Stack
from starter.batch import BatchFormat, read_batch
from starter.service import CallService, StartStatus, start_options
from workflows.messages import WORKFLOW_TYPE, CallInput, workflow_id_for

GOAL = 0.9
DEFAULT_N = 10_000
DEFAULT_CONCURRENCY = 50
BATCH_TASK_QUEUE = "bench-batch"  # no worker polls it: the calls are started, never run


def make_csv(rows: int) -> str:
    """A CSV batch file with `rows` distinct calls."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["uuid", "personUuid", "type"])
    for i in range(rows):
        call = lifecycle.make_call(i)
        writer.writerow([call.uuid, call.person_uuid, call.type.value])
    return buffer.getvalue()


def make_calls(count: int) -> list[CallInput]:
    """`count` distinct calls, as `make_csv` writes them."""
    return [lifecycle.make_call(i) for i in range(count)]


async def raw_round(
    stack: Stack, calls: list[CallInput], concurrency: int, bare: bool = False
) -> float:
    """Start `calls` with plain `start_workflow`; returns the seconds it took.

    Each start request is the starter's own (`start_options`), or with `bare` only the id and
    task queue.
    """
    now = datetime.now(UTC)

    async def one(i: int) -> None:
        call = calls[i]
        assert call.uuid is not None
        options: dict[str, Any] = (
            {"id": workflow_id_for(call.uuid), "task_queue": BATCH_TASK_QUEUE}
            if bare
            else start_options(call, BATCH_TASK_QUEUE, now)
        )
        await stack.client.start_workflow(WORKFLOW_TYPE, call, **options)

    label = "bare start_workflow" if bare else "raw start_workflow"
    return await timed(label, len(calls), concurrency, one)


async def batch_round(stack: Stack, text: str, concurrency: int) -> tuple[float, int]:
    """Run a CSV file through the starter's batch path; returns seconds and calls started."""
    service = CallService(stack.client, task_queue=BATCH_TASK_QUEUE)
    began = time.perf_counter()
    batch = read_batch(text, BatchFormat.CSV)
    good = [row.call for row in batch.good if row.call is not None]
    if len(good) != len(batch.rows):
        raise AssertionError(f"{len(batch.rows) - len(good)} rows refused: {batch.bad[:3]}")
    with progress("start-batch", len(good)) as advance:
        results = await service.start_many(good, concurrency, lambda _c, _r: advance(1))
    seconds = time.perf_counter() - began
    started = sum(1 for r in results if r.status is StartStatus.STARTED)
    if started != len(good):
        problems = [r for r in results if r.status is not StartStatus.STARTED][:3]
        raise AssertionError(f"{len(good) - started} calls not started: {problems}")
    return seconds, started


async def measure(stack: Stack, n: int, concurrency: int) -> dict[str, Any]:
    """Raw and batch rounds, alternating, on a started stack (no worker needed)."""
    halves = (n // 2, n - n // 2)
    # Warm both paths (connections, imports) before timing.
    await raw_round(stack, make_calls(10), concurrency)
    await batch_round(stack, make_csv(10), concurrency)
    raw_seconds = await raw_round(stack, make_calls(halves[0]), concurrency)
    batch_seconds, batch_count = await batch_round(stack, make_csv(n), concurrency)
    raw_seconds += await raw_round(stack, make_calls(halves[1]), concurrency)
    bare_count = max(1, n // 4)
    bare_seconds = await raw_round(stack, make_calls(bare_count), concurrency, bare=True)
    return {
        "n": n,
        "concurrency": concurrency,
        "rawCount": n,
        "rawSeconds": raw_seconds,
        "batchCount": batch_count,
        "batchSeconds": batch_seconds,
        "bareCount": bare_count,
        "bareSeconds": bare_seconds,
    }


def result_of(figures: dict[str, Any]) -> Result:
    """The printed result of a `measure` run."""
    raw = per_second(figures["rawCount"], figures["rawSeconds"])
    batch = per_second(figures["batchCount"], figures["batchSeconds"])
    title = "starting calls from a CSV file (start-batch) vs raw start_workflow"
    result = Result("batch", title)
    result.figure("vs_raw_starts", batch / raw if raw else None, "x", at_least(GOAL))
    result.figure("batch_rows_per_second", batch, "rows/s", digits=0)
    result.figure("raw_starts_per_second", raw, "starts/s", digits=0)
    bare = per_second(figures["bareCount"], figures["bareSeconds"])
    result.figure("bare_starts_per_second", bare, "starts/s", digits=0)
    result.add(
        "rows started/s",
        f"{batch:.0f}",
        f"{raw:.0f}",
        f"{figures['n']:,} rows vs {figures['n']:,} raw starts, {figures['concurrency']} in flight",
    )
    result.add(
        "bare starts/s",
        "",
        f"{bare:.0f}",
        f"{figures['bareCount']:,} starts with no attributes or summary: the request's own cost",
    )
    result.add(
        "time",
        f"{figures['batchSeconds']:.1f} s",
        f"{figures['rawSeconds']:.1f} s",
        "batch includes reading and validating the CSV",
    )
    result.figures = {**figures, "batchPerSecond": batch, "rawPerSecond": raw}
    return result


async def run(n: int = DEFAULT_N, concurrency: int = DEFAULT_CONCURRENCY) -> Result:
    """Start a stack (server only), measure, stop it."""
    async with Stack(sandbox=False, worker=False) as stack:
        return result_of(await measure(stack, n, concurrency))


def _parser() -> argparse.ArgumentParser:
    parser = parser_for("bench.batch", __doc__)
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="Rows in the CSV file.")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    return parser


if __name__ == "__main__":
    main(_parser(), lambda a: run(a.n, a.concurrency))
