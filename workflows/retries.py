"""How the call workflow retries TapRaise: the local activity's tries, and the waits between them.

A module of its own, passed through the workflow sandbox, so that one place states the numbers
(and a test can shorten them). None of them is recorded in a history: changing them never breaks
a replay.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from workflows import errors

# One try of a TapRaise action: a look-up and a request, each within the client's timeouts, plus
# the wait after a timed-out add-attempt (see `TapRaiseActivities.add_attempt`).
TAPRAISE_TRY = timedelta(seconds=30)
# One round: five tries inside the local activity, a second apart and doubling (about fifteen
# seconds of waits). A round is bounded by its count of tries: a local activity's
# schedule-to-close timeout is not enforced across its retries. Past a round, the workflow waits
# with a durable timer and starts another, for as long as TapRaise needs: no transient failure
# ends a call. Rounds are short because a local activity running longer than a workflow task's
# timeout keeps that task alive by heartbeats, three history events every eight seconds or so.
TAPRAISE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=sorted(errors.NON_RETRYABLE),
)
# Between two rounds: doubling from one minute, capped at fifteen. A round and its wait add about
# fifteen history events, so a long outage adds about 1,500 a day, and the call continues as new
# whenever its history outgrows the policy's bound (10,000 events by default).
OUTAGE_FIRST_WAIT = timedelta(minutes=1)
OUTAGE_LONGEST_WAIT = timedelta(minutes=15)
# The policy comes from a file on the worker: an unexpected failure is not retried for ever.
POLICY_RETRY = RetryPolicy(maximum_attempts=3)
# The empty activity before an update's answer (`activities.turn`): retried until a worker runs
# it, which a live worker does at once.
ANSWER_TURN_TIMEOUT = timedelta(seconds=10)
ANSWER_TURN_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
)
