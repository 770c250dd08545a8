"""An empty activity: the workflow task its completion starts is where an update is answered.

The call workflow carries out TapRaise actions as local activities. An update waiting on one must
not be answered in the workflow task that resolves it: when a worker flushes such a task early (a
workflow task heartbeat, or a task retried while the local activity still ran) and the next task
is lost, a replay answers the update inside the flushed task, the SDK sends the answer's command
without its message, and the server refuses every later task of the call. The completion of a
regular activity is a history event of its own, so an answer given after it is given in the same
task live and on replay. A timer would do too, but a server fires a short timer up to a second
late; this takes a few tens of milliseconds.

Runs that send an update's own TapRaise requests as regular activities answer the update after
the last of them, and need this only for an update done without a request of its own (a
duplicate, a refusal) or answered "queued".
"""

from __future__ import annotations

from typing import Final

from temporalio import activity

ANSWER_TURN: Final = "answer_turn"


@activity.defn(name=ANSWER_TURN)
async def answer_turn() -> None:
    """Do nothing: the workflow answers its waiting updates once this has completed."""
