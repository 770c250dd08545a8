"""The agents' scripts, the policy that makes calls progress in seconds, and their ledgers."""

from __future__ import annotations

import random
import uuid
from typing import Any, Final

from bench.lifecycle import ALWAYS_OPEN
from sandbox.seed import DEMO_ORGANIZATION_UUID, DEMO_PERSON_UUIDS
from tests.chaos.config import ChaosConfig
from tests.chaos.ledger import Ledger
from workflows.messages import CANCEL, COMPLETE, CallInput, CompleteSignal


def chaos_policy(
    deadline_seconds: float, max_attempts: int, result_codes: list[str] | None = None
) -> dict[str, Any]:
    """Policy overrides that make a call progress in seconds: windows always open, no holidays.

    With `result_codes` the policy lists the codes TapRaise accepts, and the workflow refuses
    any other before sending it.
    """
    policy: dict[str, Any] = {
        "windows": ALWAYS_OPEN,
        "blackoutDates": [],
        "holidayCountries": [],
        "firstAttemptDelay": 1,
        "retryDelays": {"no_answer": 2, "busy": 1, "voicemail": 3},
        "maxAttempts": max_attempts,
        "deadline": deadline_seconds,
        "attemptWindow": 8,
        "missedSlotDelay": 2,
        "timezone": "Europe/Amsterdam",
    }
    if result_codes is not None:
        policy["resultCodes"] = list(result_codes)
    return policy


PLANS: Final = (
    "two_unanswered_then_completed",
    "attempted_then_cancelled",
    "attempted_until_the_maximum_then_expired",
    "left_to_expire_at_its_deadline",
    "rescheduled_then_completed",
    "completion_races_cancellation",
    "completed_while_the_create_is_retried",
)
MESSAGE_PLANS: Final = frozenset(
    {"completion_races_cancellation", "completed_while_the_create_is_retried"}
)
MAX_ATTEMPTS_PLAN: Final = 3
# The final action (name, via, why) an agent of each plan may send first, knowing it must be
# refused: two ways per plan, one picked per call. `result code` is outside TapRaise's
# allow-list (refused by TapRaise, or by the workflow when the call's policy lists the codes);
# `dated` lies before the call was requested (refused by the workflow before sending).
REFUSALS: Final[dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]]] = {
    "two_unanswered_then_completed": (
        (COMPLETE, "update", "result code"),
        (COMPLETE, "update", "dated"),
    ),
    "attempted_then_cancelled": ((CANCEL, "update", "dated"), (CANCEL, "signal", "dated")),
    "rescheduled_then_completed": (
        (COMPLETE, "signal", "result code"),
        (COMPLETE, "signal", "dated"),
    ),
    "left_to_expire_at_its_deadline": (
        (COMPLETE, "update", "result code"),
        (CANCEL, "signal", "dated"),
    ),
}


# Calls requested in the TapRaise app (`follow`): what their agents do once the follower adopted
# them, and what users then change in the app. Their workflows run the worker's default policy
# (the follower starts them with what TapRaise holds), so each is closed by a final action of
# its agent or of the app, never left to the policy.
APP_PLANS: Final[dict[str, tuple[str, ...]]] = {
    "requested_in_app_then_completed": (),
    "requested_in_app_then_cancelled": (),
    "requested_in_app_then_completed_there": ("complete",),
    "requested_in_app_attempted_there_then_cancelled_there": ("add-attempt", "cancel"),
    "requested_in_app_then_expired_there": ("expire",),
}
# What users change in the app of a call the CRM started, while its agent works: taken in
# turn by the calls changed there. Attempts only where the plan leaves room below the maximum.
APP_CHANGES: Final = (
    ("complete",),
    ("add-attempt",),
    ("cancel",),
    ("add-attempt", "complete"),
    ("expire",),
    ("add-attempt", "add-attempt"),
    ("add-attempt", "cancel"),
)
# The plans whose agents report attempts up to the maximum: an attempt added in the app would
# make one of theirs refused.
NO_ROOM_FOR_APP_ATTEMPTS: Final = frozenset({"attempted_until_the_maximum_then_expired"})

AGENT_USER: Final = uuid.UUID("6f1d3a0e-2b4c-4d5e-8f90-a1b2c3d4e5f6")
# The TapRaise app's user who requests and changes calls there.
APP_USER: Final = uuid.UUID("0b4f5c43-6b1a-4f0e-9a43-5d0a3f7a2c11")


def complete_signal() -> CompleteSignal:
    return CompleteSignal.model_validate(
        {"result": {"resultCode": "confirmed", "duration": 42.5, "donorRetentionRating": 8}}
    )


def build_ledgers(config: ChaosConfig) -> list[Ledger]:
    """One ledger a call: its plan, and the variations drawn for it from the run's seed.

    With `follow`, an evenly spread share of the calls is requested in the TapRaise app instead
    (each app plan in turn), and a share of the CRM's calls drawn from the seed is also changed
    there (each change of `APP_CHANGES` in turn, attempts only where the plan has room).
    """
    plans = [p for p in PLANS if config.has("messages") or p not in MESSAGE_PLANS]
    follow = config.has("follow")
    ledgers: list[Ledger] = []
    in_app = changed = 0
    for index in range(config.calls):
        if follow and _picked(index, config.app_requested_share):
            plan = list(APP_PLANS)[in_app % len(APP_PLANS)]
            ledgers.append(_app_ledger(plan, index))
            in_app += 1
            continue
        ledger = _ledger(config, plans[index % len(plans)], index)
        # Drawn apart from the call's other variations, which stay what they were.
        changes = random.Random(config.seed * 104_729 + index)
        if follow and changes.random() < config.app_changed_share:
            ledger.app_plan = _app_change(changed, ledger.plan)
            changed += 1
        ledgers.append(ledger)
    return ledgers


def _picked(position: int, share: float) -> bool:
    """Whether the item at `position` is among an evenly spread `share` of a sequence."""
    return int((position + 1) * share) > int(position * share)


def _app_change(turn: int, plan: str) -> tuple[str, ...]:
    """The app changes of the `turn`-th CRM call changed there (the next that fits its plan)."""
    for step in range(len(APP_CHANGES)):
        change = APP_CHANGES[(turn + step) % len(APP_CHANGES)]
        if plan not in NO_ROOM_FOR_APP_ATTEMPTS or "add-attempt" not in change:
            return change
    raise AssertionError("APP_CHANGES lists final changes")


def _app_ledger(plan: str, index: int) -> Ledger:
    """A call a user requests in the TapRaise app: its uuid is the app's, chosen here."""
    call = CallInput(
        uuid=uuid.uuid4(),
        person_uuid=uuid.UUID(DEMO_PERSON_UUIDS[index % len(DEMO_PERSON_UUIDS)]),
        type="verification" if index % 3 else "happy_call",
        calling_organization_uuid=uuid.UUID(DEMO_ORGANIZATION_UUID),
        requested_by_user_uuid=APP_USER,
        notes=f"chaos call {index}, requested in the app",
    )
    return Ledger(index, call, plan, in_app=True, app_plan=APP_PLANS[plan])


def _ledger(config: ChaosConfig, plan: str, index: int) -> Ledger:
    # Each call's variations come from a generator of its own: the same for every run of a
    # seed, whatever the other calls do.
    variant = random.Random(config.seed * 7_919 + index)
    starts_bare = config.has("messages") or config.has("kills")
    bare = starts_bare and variant.random() < config.bare_share
    refuse: tuple[str, str, str] | None = None
    if config.has("messages") and plan in REFUSALS and variant.random() < config.refused_share:
        refuse = REFUSALS[plan][variant.random() < 0.5]
    same_id: str | None = None
    if config.has("messages") and variant.random() < config.same_id_share:
        same_id = "concurrent" if variant.random() < 1 / 3 else "sequential"
    lists_codes = refuse is not None and refuse[2] == "result code" and variant.random() < 0.5
    deadline = (
        config.deadline_seconds
        if plan == "left_to_expire_at_its_deadline"
        else config.time_budget + 120
    )
    max_attempts = MAX_ATTEMPTS_PLAN if "maximum" in plan else 5
    policy = chaos_policy(
        deadline, max_attempts, list(config.result_codes) if lists_codes else None
    )
    call = CallInput(
        uuid=uuid.uuid4(),
        person_uuid=uuid.UUID(DEMO_PERSON_UUIDS[index % len(DEMO_PERSON_UUIDS)]),
        type="verification" if index % 3 else "happy_call",
        notes=f"chaos call {index}",
        policy=policy,
    )
    return Ledger(index, call, plan, bare=bare, policy=policy, refuse=refuse, same_id=same_id)
