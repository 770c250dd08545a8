"""The floor: a workflow with the typical call's shape and nothing else.

`FloorWorkflow` exchanges the same messages with Temporal as a call on its typical path (create,
two unanswered attempts, completion) when every wait is cut short by the next message: two local
activities at the start, then one durable timer per wait, and per update one local activity.
The activities do nothing; there is no TapRaise, no policy, no scheduling rule, no search
attribute. Whatever a real call costs beyond this floor is the project's own overhead.

Run its worker with `python -m bench.floor --address HOST:PORT --task-queue QUEUE`; it uses the
same client factory (data converter), workflow sandbox, event loop and default worker options as
`worker.py`. When TapRaise is configured (`TAPRAISE_BASE_URL` and the credentials, as for the
worker), the same worker also runs the fair floor (`bench.fair_floor.FairFloorWorkflow`).

Updates:
    attempt   {...}   one no-op local activity, then wait again
    complete  {...}   one no-op local activity, then the workflow returns
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

FLOOR_WORKFLOW_TYPE = "FloorWorkflow"
ATTEMPT = "attempt"
COMPLETE = "complete"
# As long as the real call's attempt window in the throughput run: the timer never fires there.
WAIT = timedelta(hours=1)


@activity.defn(name="floor_noop")
async def noop(data: dict[str, Any]) -> dict[str, Any]:
    """Return at once: stands in for a TapRaise request (or the policy resolution)."""
    return data


@workflow.defn(name=FLOOR_WORKFLOW_TYPE)
class FloorWorkflow:
    """Two local activities, then per message: cancel the wait, one local activity, wait again."""

    def __init__(self) -> None:
        self._inbox: list[str] = []
        self._done: set[int] = set()
        self._received = 0
        self._handled = 0
        self._finished = False

    @workflow.run
    async def run(self, input: dict[str, Any]) -> dict[str, Any]:
        await self._noop({"step": "policy"})
        await self._noop({"step": "create"})
        while not self._finished:
            if self._handled == self._received:
                try:
                    await workflow.wait_condition(
                        lambda: self._received > self._handled,
                        timeout=WAIT,
                        timeout_summary="wait",
                    )
                except TimeoutError:
                    continue
            kind = self._inbox[self._handled]
            await self._noop({"step": kind})
            self._handled += 1
            self._done.add(self._handled)
            self._finished = kind == COMPLETE
        await workflow.wait_condition(workflow.all_handlers_finished)
        return {"messages": self._handled}

    async def _noop(self, data: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await workflow.execute_local_activity(
            noop, data, start_to_close_timeout=timedelta(seconds=10)
        )
        return result

    async def _answer(self, kind: str) -> dict[str, Any]:
        self._inbox.append(kind)
        self._received += 1
        number = self._received
        await workflow.wait_condition(lambda: number in self._done)
        return {"accepted": True}

    @workflow.update(name=ATTEMPT)
    async def attempt(self, message: dict[str, Any]) -> dict[str, Any]:
        return await self._answer(ATTEMPT)

    @workflow.update(name=COMPLETE)
    async def complete(self, message: dict[str, Any]) -> dict[str, Any]:
        return await self._answer(COMPLETE)


async def serve(address: str, task_queue: str) -> None:
    """Run the floor worker (and the fair floor, when TapRaise is configured) until
    SIGINT/SIGTERM."""
    from temporalio.worker import Worker

    from bench.fair_floor import FairFloorActivities, FairFloorWorkflow
    from starter.connect import connect
    from tapraise import TapRaiseSettings
    from worker import sandbox_runner

    client = await connect(address, "default")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    settings = TapRaiseSettings()
    async with contextlib.AsyncExitStack() as resources:
        workflows: list[type] = [FloorWorkflow]
        activities: list[Any] = [noop]
        if settings.api_base_url is not None:
            tapraise = await resources.enter_async_context(settings.make_client())
            workflows.append(FairFloorWorkflow)
            activities.extend(FairFloorActivities(tapraise).all())
        worker = Worker(
            client,
            task_queue=task_queue,
            workflows=workflows,
            activities=activities,
            workflow_runner=sandbox_runner(),
        )
        async with worker:
            await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--address", required=True, help="Temporal host:port")
    parser.add_argument("--task-queue", required=True)
    args = parser.parse_args()
    from worker import run_event_loop

    run_event_loop(serve(args.address, args.task_queue))


if __name__ == "__main__":
    main()
