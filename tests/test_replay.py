"""Recorded histories of every lifecycle path, replayed against today's workflow code.

A change that would break a call already running (a non-deterministic edit) fails here. To
record anew after an intended change, run the workflow tests with RECORD_HISTORIES=1 and guard
the change with `workflow.patched` so that the old histories still replay.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from encryption.codec import encrypted_data_converter
from tests.keys_fixture import RUN_KEYS
from worker import sandbox_runner
from workflows.call import CallWorkflow
from workflows.follower import FollowerWorkflow

pytestmark = pytest.mark.timeout(60)

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
RECORDS = {path.stem: json.loads(path.read_text()) for path in HISTORIES}


def test_every_lifecycle_path_has_a_recorded_history() -> None:
    names = set(RECORDS)
    assert {
        "typical_path",
        "cancelled_while_waiting",
        "expired_by_attempts",
        "expired_by_deadline",
        "rescheduled",
        "adopted_completed",
        "failed_forbidden",
        "duplicates_and_malformed",
        "bare_start",
        "continued_as_new",
        "refused_completion",
        "tapraise_maximum",
        "retried_first_task",
        "outage_continued_as_new",
        "answered_in_own_task",
        # An update's own requests as activities, each answer given after one.
        "answered_after_own_activity",
        "adopted_unrecorded_attempt",
        # A run from before the patch asked for at start: it asks for its own where it adopts.
        "adopted_unrecorded_attempt_mid_run_patch",
        # Started by the follower with the call as TapRaise listed it, completed in the app.
        "adopted_listed_completed_in_app",
        # The follower itself: rounds, a pause, a resume and a round run at once.
        "follower_paused_resumed",
    } <= names


@pytest.mark.parametrize("name", sorted(RECORDS))
async def test_recorded_history_replays_without_nondeterminism(name: str) -> None:
    record = RECORDS[name]
    history = WorkflowHistory.from_json(record["workflowId"], record["history"])
    replayer = Replayer(
        workflows=[CallWorkflow, FollowerWorkflow],
        # Recorded before payloads were encrypted: the codec passes them through.
        data_converter=encrypted_data_converter(RUN_KEYS),
        workflow_runner=sandbox_runner(),
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
