"""What operations sees: the Temporal Web UI of the embedded stack, in headless Chromium.

A call is driven to `completed`; the workflow list filtered on the `CallStatus` search attribute
must show it, and its workflow page must show its static summary. Its input is encrypted in
Temporal: the UI shows it decrypted through the stack's codec server, while the plain `temporal`
CLI without the codec shows ciphertext. Screenshots of both pages are
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
from devstack.process import temporal_cli
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


async def _cancelled_when_scheduled(agent: Agent) -> None:
    await agent.wait(CallPhase.SCHEDULED, CallPhase.DUE)
    await agent.cancel("the donor asked us to stop")


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


# A call whose input carries notes: stored encrypted, shown decrypted.
SECRET = Scenario(
    label=f"web-ui-secret-{uuid.uuid4().hex[:8]}",
    call_type=CallType.WINBACK,
    person_uuid=DEMO_PERSON_UUIDS[13],
    expect=CallPhase.CANCELLED,
    story="donor asked for a call after the funeral",
    play=_cancelled_when_scheduled,
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
    client = await connect(stack.temporal_address, "default", stack.keys())
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


def temporal_show(stack: StackProcess, workflow_id: str, *codec: str) -> str:
    """`temporal workflow show --detailed` of a workflow, as an operator runs it."""
    command = [
        str(temporal_cli()), "workflow", "show", "--workflow-id", workflow_id,
        "--address", stack.temporal_address, "--detailed", *codec,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


async def test_the_ui_shows_the_input_decrypted_which_temporal_stores_encrypted(
    stack: StackProcess, tmp_path: Path
) -> None:
    client = await connect(stack.temporal_address, "default", stack.keys())
    report = await run_demo(client, scenarios=[SECRET], progress=lambda line: None)
    assert report.ok, report.table()
    notes = SECRET.call_input().notes
    assert notes is not None
    run_id = (await client.get_workflow_handle(SECRET.workflow_id).describe()).run_id

    stored = temporal_show(stack, SECRET.workflow_id)
    assert notes not in stored and "binary/encrypted" in stored, stored[-3000:]
    codec = f"http://127.0.0.1:{stack.codec_port}"
    decoded = temporal_show(stack, SECRET.workflow_id, "--codec-endpoint", codec)
    assert notes in decoded, decoded[-3000:]

    ui = f"http://127.0.0.1:{stack.ui_port}/namespaces/default/workflows"
    page = rendered(
        f"{ui}/{SECRET.workflow_id}/{run_id}/history",
        notes,
        tmp_path / "chromium",
        ARTIFACTS / "web-ui-decrypted-input.png",
    )
    assert notes in page
