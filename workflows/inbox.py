"""The call workflow's inbox: messages accepted by a handler, waiting to be carried out.

They live apart from `workflows.call` because the workflow sandbox imports the workflow's own
module afresh for every workflow it loads, while this module passes through (imported once):
building these classes once per worker, not once per call, is measurably cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from workflows.messages import (
    AttemptSignal,
    CancelSignal,
    CompleteSignal,
    RescheduleSignal,
    SyncSignal,
)


@dataclass
class Action:
    """A message accepted by a handler, waiting for the main loop to carry it out."""

    kind: str
    message: AttemptSignal | CompleteSignal | RescheduleSignal | CancelSignal | SyncSignal
    received_at: datetime
    done: bool = False
    detail: str = ""
    refusal: str | None = None  # set when it could not be carried out after all
    # Answered "queued" before it was carried out: TapRaise is down, or the call continues as
    # new and carries it over. An update waiting for it returns at once.
    queued: bool = False
    # Accepted by an update, which waits for the answer.
    by_update: bool = False
    # Its last TapRaise request ran as a regular activity (an update's own action, in runs that
    # do so): the task that activity's completion starts resolves no local activity, so the
    # update is answered there.
    last_by_activity: bool = False
