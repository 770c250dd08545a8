"""Message types of the TapRaise follower: its settings, its state, and what one round reports.

The follower is one long-running workflow (`FOLLOWER_WORKFLOW_ID`) that asks TapRaise every
`interval` for the calls changed since its watermark, adopts the calls requested in TapRaise that
no workflow drives, and tells running call workflows what TapRaise now holds (`sync`). Like the
call's messages these are camelCase on the wire, and new fields always get defaults.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final
from uuid import UUID

from pydantic import AwareDatetime, Field
from temporalio import workflow

from tapraise.models import CamelModel

with workflow.unsafe.imports_passed_through():
    from activities.follow import (
        MAX_ERRORS,
        OVERLAP,
        FollowOutcome,
        FollowRequest,
        FollowScope,
        Seen,
    )

__all__ = [
    "FOLLOWER_WORKFLOW_ID",
    "FOLLOWER_WORKFLOW_TYPE",
    "MAX_ERRORS",
    "OVERLAP",
    "FollowOutcome",
    "FollowRequest",
    "FollowScope",
    "FollowerInput",
    "FollowerState",
    "FollowerStatus",
    "Seen",
]

FOLLOWER_WORKFLOW_TYPE: Final = "TapRaiseFollowerWorkflow"
FOLLOWER_WORKFLOW_ID: Final = "tapraise-follower"
# Updates and the query of the follower (the CLI's `sync pause|resume|run-now|status`).
PAUSE: Final = "pause"
RESUME: Final = "resume"
RUN_NOW: Final = "run_now"
STATUS: Final = "status"

DEFAULT_INTERVAL: Final = timedelta(seconds=30)
MIN_INTERVAL: Final = timedelta(seconds=1)
BUSY_ROUND: Final = 100
"""Changes a round may find and still be followed a whole interval later. A busier round is
followed sooner, in proportion (a round that found 300 changes, after a third of the interval):
a burst is taken in smaller rounds, each handed over sooner, instead of one large round an
interval late. A round that finds nothing waits the whole interval, as idle following costs."""
BUSIEST_SHARE: Final = 1 / 6
"""However busy, a round waits at least this share of the interval for the next."""
MAX_RECENT: Final = 2_000
"""Changes remembered as delivered within the overlap; more in five seconds are delivered again,
which only costs a signal (a call applies what TapRaise holds, however often it is told)."""
MAX_UNMARKED: Final = 1_000
"""Calls whose mark-processed failed, kept to retry; beyond this the oldest are let go (the mark
is what TapRaise shows, not what makes the call run)."""


class _Message(CamelModel):
    """Base of the follower's messages: camelCase on the wire."""


class FollowerState(_Message):
    """The follower's state: carried whole into a continued run.

    Attributes:
        watermark: The newest `lastUpdatedAt` seen; the next round asks for what changed after
            it (less the overlap). None before the first round: it then starts from `since`.
        recent: Changes delivered within the overlap below the watermark.
        unmarked: Adopted calls whose mark-processed is still to be retried.
        paused: A paused follower runs no round; its watermark waits, so nothing is lost.
        last_listed: The changes the last round found (a busy round is followed sooner).
    """

    watermark: AwareDatetime | None = None
    recent: list[Seen] = Field(default_factory=list)
    unmarked: list[UUID] = Field(default_factory=list)
    paused: bool = False
    rounds: int = 0
    adopted: int = 0
    delivered: int = 0
    ignored: int = 0
    requests: int = 0
    failed_rounds: int = 0
    last_round_at: datetime | None = None
    last_listed: int = 0
    last_error: str | None = None
    errors: list[str] = Field(default_factory=list)


class FollowerInput(_Message):
    """The follower's input: how it follows, and (in a continued run) where it was."""

    interval: timedelta = DEFAULT_INTERVAL
    since: AwareDatetime | None = None
    scope: FollowScope = Field(default_factory=FollowScope)
    task_queue: str | None = None
    state: FollowerState | None = None


class FollowerStatus(FollowerState):
    """The `status` query's answer: the state and the settings it follows with."""

    interval: timedelta
    scope: FollowScope
    next_round_at: datetime | None = None
