"""The call workflow's metrics: calls started and closed, attempts recorded, messages refused.

Recorded through `workflow.metric_meter()`, which records nothing while a workflow replays: a
worker that replays a call's history (after a restart, or when the call left its cache) counts
nothing twice. Recording changes no command, so it needs no patch.

Every label is a bounded enum: a call type, a phase, a reason below, an attempt outcome, a
message name. Never a uuid, a note or anything else a person wrote. The SDK adds its own
labels (namespace, task queue, workflow type).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from temporalio import workflow

STARTED: Final = "tapraise_calls_started_total"
CLOSED: Final = "tapraise_calls_closed_total"
ATTEMPTS_RECORDED: Final = "tapraise_calls_attempts_recorded_total"
MESSAGES_REFUSED: Final = "tapraise_calls_messages_refused_total"

# The call type of a start whose input did not say a valid one.
UNKNOWN_TYPE: Final = "unknown"


class CloseReason(StrEnum):
    """Why a call reached its final phase (the `reason` label of `tapraise_calls_closed_total`)."""

    COMPLETED = "completed"  # the agent's tooling completed it
    CANCELLED = "cancelled"  # cancelled by a message
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # the policy's maximum of attempts was reached
    DEADLINE_PASSED = "deadline_passed"  # no slot was left before the call's deadline
    FINAL_OUTCOME = "final_outcome"  # an attempt outcome the policy ends calls on (wrong_number)
    FINAL_IN_TAPRAISE = "final_in_tapraise"  # TapRaise already held it completed/cancelled/expired
    CREATE_REFUSED = "create_refused"  # TapRaise refused the create (400/403/404): phase failed
    INVALID_INPUT = "invalid_input"  # the start's input or workflow id is not valid: phase failed
    INVALID_POLICY = "invalid_policy"  # the call's policy could not be resolved: phase failed


class RefusalReason(StrEnum):
    """Why a message changed nothing (`reason` of `tapraise_calls_messages_refused_total`).

    A malformed message is not among them: the SDK drops it before the workflow sees it (the
    gateway and the CLI refuse it before it is sent).
    """

    FINAL_PHASE = "final_phase"  # the call is completed, cancelled, expired or failed
    CLOSING = "closing"  # a completion, cancellation or expiry is being carried out
    TIME_IN_FUTURE = "time_in_future"  # the reported time lies ahead of the workflow's clock
    BEFORE_REQUESTED = "before_requested"  # the reported time lies before the call was requested
    MAX_ATTEMPTS = "max_attempts"  # the call has all the attempts it may have
    INVALID_RESULT_CODE = "invalid_result_code"  # a result code the policy does not list
    INVALID_CALLBACK = "invalid_callback"  # a callback time outside what the policy allows
    DUPLICATE = "duplicate"  # the same attempt delivered again: recorded once
    TAPRAISE_REFUSED = "tapraise_refused"  # TapRaise refused the action for good


def call_started(call_type: str) -> None:
    """Count a run that starts a call (not a run it continued into)."""
    counter = workflow.metric_meter().create_counter(STARTED, "Calls started.")
    counter.add(1, {"call_type": call_type})


def call_closed(call_type: str, phase: str, reason: CloseReason) -> None:
    """Count a call that reached its final phase."""
    counter = workflow.metric_meter().create_counter(
        CLOSED, "Calls that reached a final phase, by phase and reason."
    )
    counter.add(1, {"call_type": call_type, "phase": phase, "reason": reason.value})


def attempt_recorded(call_type: str, outcome: str) -> None:
    """Count an unsuccessful attempt that TapRaise recorded for a call."""
    counter = workflow.metric_meter().create_counter(
        ATTEMPTS_RECORDED, "Unsuccessful attempts recorded in TapRaise, by outcome."
    )
    counter.add(1, {"call_type": call_type, "outcome": outcome})


def message_refused(message: str, reason: RefusalReason) -> None:
    """Count a message (signal or update) that changed nothing, and why."""
    counter = workflow.metric_meter().create_counter(
        MESSAGES_REFUSED, "Messages to calls that changed nothing, by message and reason."
    )
    counter.add(1, {"message": message, "reason": reason.value})
