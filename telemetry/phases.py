"""`tapraise_calls_in_phase{phase}`: how many calls Temporal's visibility holds in each phase.

Counted by the worker process, outside workflow code, every `WORKER_PHASE_COUNT_SECONDS` (30 s
by default): one count per phase (visibility groups by its own attributes only). Every worker of
the namespace counts the same calls, so a dashboard takes the largest value across workers, not
the sum. Closed calls count in their final phase for as long as the namespace retains them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from temporalio.client import Client
from temporalio.common import MetricMeter

from workflows.messages import WORKFLOW_TYPE, CallPhase, CallSearchAttributes

IN_PHASE: Final = "tapraise_calls_in_phase"

logger = logging.getLogger(__name__)


def phase_query(phase: CallPhase) -> str:
    """The visibility query of the calls in `phase`."""
    return (
        f"WorkflowType = '{WORKFLOW_TYPE}' AND "
        f"{CallSearchAttributes.CALL_PHASE.name} = '{phase.value}'"
    )


class PhaseGauge:
    """Sets `tapraise_calls_in_phase` from visibility counts, once now and then periodically.

    Args:
        client: The worker's Temporal client.
        meter: The worker's metric meter.
        interval: Seconds between two counts.
    """

    def __init__(self, client: Client, meter: MetricMeter, interval: float) -> None:
        self._client = client
        self._gauge = meter.create_gauge(
            IN_PHASE, "Calls per phase, as Temporal's visibility counts them."
        )
        self._interval = interval
        self._failing = False

    async def count_once(self) -> None:
        """Count every phase and set the gauge; a failure keeps the values and is logged once."""
        try:
            counts = {
                phase: (await self._client.count_workflows(phase_query(phase))).count
                for phase in CallPhase
            }
        except Exception as exc:  # visibility may be briefly away; the next round tries again
            if not self._failing:
                logger.warning("cannot count the calls per phase now: %s", exc)
            self._failing = True
            return
        if self._failing:
            logger.info("counting the calls per phase again")
        self._failing = False
        for phase, count in counts.items():
            self._gauge.set(count, {"phase": phase.value})

    async def run(self) -> None:
        """Count until cancelled."""
        while True:
            await self.count_once()
            await asyncio.sleep(self._interval)
