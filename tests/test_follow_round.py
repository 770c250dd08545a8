"""One round of following, alone: `FollowerActivities.follow_once` against the sandbox over HTTP,
with a dispatcher that records what it is handed instead of starting workflows.

What the end-to-end tests (`tests/test_follower.py`) cannot pin down: every page is read and
every change handed over once, a round run again over the overlap hands nothing over twice,
and how soon a busy round is followed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.follow import (
    PAGE_SIZE,
    CallDispatcher,
    Delivery,
    FollowerActivities,
    FollowRequest,
    Known,
)
from sandbox.seed import DEMO_ORGANIZATION_UUID, DEMO_PERSON_UUIDS
from starter.follow import consumer_identifier
from tapraise import TapRaiseClient
from tapraise.models import Call
from tests.sandbox_fixture import SandboxServer
from workflows.follower import FollowerWorkflow
from workflows.following import BUSIEST_SHARE, BUSY_ROUND, FollowScope

pytestmark = pytest.mark.timeout(60)

APP_USER = "5f0c2a9e-3d41-4b7e-8f6a-1c2d3e4f5a6b"


class Recorder:
    """A dispatcher that starts nothing: it records each call handed to it."""

    def __init__(self) -> None:
        self.handed: list[tuple[uuid.UUID, bool]] = []

    async def known(self, call_uuids: list[uuid.UUID]) -> dict[uuid.UUID, Known]:
        return {}

    async def dispatch(self, call: Call, adopt: bool, task_queue: str) -> Delivery:
        self.handed.append((call.uuid, adopt))
        return Delivery.STARTED if adopt else Delivery.DELIVERED


def request_calls(sandbox: SandboxServer, count: int) -> list[uuid.UUID]:
    made = []
    for index in range(count):
        body: dict[str, Any] = {
            "personUuid": DEMO_PERSON_UUIDS[index % 10],
            "type": "happy_call",
            "requestedByUserUuid": APP_USER,
            "callingOrganizationUuid": DEMO_ORGANIZATION_UUID,
        }
        answer = sandbox.admin.post("/app/calls", json=body)
        assert answer.status_code == 201, answer.text
        made.append(uuid.UUID(answer.json()["uuid"]))
    return made


async def test_a_round_hands_every_change_over_once_and_a_rerun_over_the_overlap_none(
    lenient_sandbox: SandboxServer, tapraise_client: TapRaiseClient
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    made = request_calls(lenient_sandbox, PAGE_SIZE * 2 + 7)
    recorder = Recorder()
    dispatcher: CallDispatcher = recorder
    activities = FollowerActivities(tapraise_client, dispatcher, consumer_identifier)
    scope = FollowScope(organization_uuids=[uuid.UUID(DEMO_ORGANIZATION_UUID)])
    request = FollowRequest(updated_after=since, scope=scope, task_queue="q")
    first = await ActivityEnvironment().run(activities.follow_once, request)
    # Every page read (and one mark-processed), every call handed over once, to be adopted.
    # (Other tests' calls changed since may be on the pages too.)
    ours = set(made)
    assert sorted(h for h in recorder.handed if h[0] in ours) == sorted((c, True) for c in made)
    assert first.listed >= len(made) and first.adopted >= len(made)
    pages = -(-first.listed // PAGE_SIZE)
    assert pages >= 3 and first.requests == pages + 1 and first.marked >= len(made)
    assert first.newest is not None
    # Run again from the watermark less the overlap, as the next round asks: what the overlap
    # finds again was delivered already and is not handed over twice.
    recorder.handed.clear()
    again = FollowRequest(
        updated_after=first.newest - timedelta(seconds=5),
        scope=scope,
        recent=first.recent,
        task_queue="q",
    )
    await ActivityEnvironment().run(activities.follow_once, again)
    assert [h for h in recorder.handed if h[0] in ours] == []


def test_a_busy_round_is_followed_sooner_in_proportion_and_an_idle_one_an_interval_later() -> None:
    share = FollowerWorkflow._share
    assert share(0) == 1.0
    assert share(BUSY_ROUND) == 1.0
    assert share(BUSY_ROUND * 3) == pytest.approx(1 / 3)
    assert share(BUSY_ROUND * 100) == BUSIEST_SHARE
