"""What operations sees: the Temporal Web UI of the embedded stack, in headless Chromium.

A call is driven to `completed`; the workflow list filtered on the `CallStatus` search attribute
must show it, and its workflow page must show its static summary. Screenshots of both pages are
kept in `tests/artifacts/` for a person to look at.
"""

from __future__ import annotations

import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from devstack.demo import Agent, Scenario, run_demo
from sandbox.seed import DEMO_PERSON_UUIDS
from starter.connect import connect
from tapraise.models import CallType
from tests.test_stack import READY_TIMEOUT, StackProcess
from workflows.messages import CallPhase

pytestmark = pytest.mark.timeout(180)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
# Enough virtual time for the single-page app to load, query the server and render.
VIRTUAL_TIME_BUDGET_MS = 10_000

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is absent: install Debian's `chromium` package to check the Web UI",
        allow_module_level=True,
    )


async def _reached_when_due(agent: Agent) -> None:
    await agent.wait(CallPhase.DUE)
    await agent.complete("confirmed")


CALL = Scenario(
    label=f"web-ui-{uuid.uuid4().hex[:8]}",
    call_type=CallType.VERIFICATION,
    person_uuid=DEMO_PERSON_UUIDS[11],
    expect=CallPhase.COMPLETED,
    story="checked in the Web UI",
    play=_reached_when_due,
)
# A call that stays open: the list filtered on CallStatus="completed" must leave it out.
OPEN_CALL = Scenario(
    label=f"web-ui-open-{uuid.uuid4().hex[:8]}",
    call_type=CallType.HAPPY_CALL,
    person_uuid=DEMO_PERSON_UUIDS[12],
    expect=CallPhase.SCHEDULED,
    story="left open",
    policy={"first_attempt_delay": timedelta(minutes=15), "deadline": timedelta(hours=1)},
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    running = StackProcess(tmp_path_factory.mktemp("web-ui") / "data", "--no-gateway")
    running.start()
    try:
        running.wait_for("Ready in", READY_TIMEOUT)
        yield running
    finally:
        running.cleanup()


def chromium(url: str, user_data: Path, screenshot: Path) -> str:
    """Load `url` headless, save a screenshot, and return the rendered DOM."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={user_data}", "--window-size=1400,900",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", f"--screenshot={screenshot}",
        "--dump-dom", url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rendered(url: str, expected: str, user_data: Path, screenshot: Path) -> str:
    """The DOM of `url` once it holds `expected` (visibility may trail a moment), or the last."""
    dom = ""
    for _ in range(3):
        dom = urllib.parse.unquote(chromium(url, user_data, screenshot))
        if expected in dom:
            break
        time.sleep(1)
    return dom


async def test_completed_call_is_listed_by_call_status_and_shows_its_summary(
    stack: StackProcess, tmp_path: Path
) -> None:
    client = await connect(stack.temporal_address, "default")
    report = await run_demo(client, scenarios=[CALL, OPEN_CALL], progress=lambda line: None)
    assert report.ok, report.table()
    run_id = (await client.get_workflow_handle(CALL.workflow_id).describe()).run_id
    ui = f"http://127.0.0.1:{stack.ui_port}/namespaces/default/workflows"

    query = urllib.parse.quote('CallStatus="completed"')
    listed = rendered(
        f"{ui}?query={query}",
        CALL.workflow_id,
        tmp_path / "chromium",
        ARTIFACTS / "web-ui-completed-calls.png",
    )
    assert CALL.workflow_id in listed
    assert OPEN_CALL.workflow_id not in listed

    # The static summary the starter writes: "<type> call to person <uuid>, requested …".
    summary = f"{CALL.call_type.value} call to person {CALL.person_uuid}"
    page = rendered(
        f"{ui}/{CALL.workflow_id}/{run_id}/user-metadata",
        summary,
        tmp_path / "chromium",
        ARTIFACTS / "web-ui-call-summary.png",
    )
    assert summary in page
    # The current details the workflow publishes (markdown) are on the same page.
    assert "Phase: **completed**" in page
