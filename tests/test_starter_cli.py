"""The starter CLI as a user drives it: a real dev server, a real worker, the sandbox.

Commands run in-process through Typer's runner (in a thread, so that the worker in this event
loop keeps working) and, for the entry point itself, as real subprocesses. Calls started here run
on real time: their first slot may be hours away, which is fine since every action is accepted
in any non-final phase.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
from rich.console import Console
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner, Result

import starter.cli
from sandbox.seed import DEMO_ORGANIZATION_UUID, DEMO_PERSON_UUIDS, FOREIGN_PERSON_UUID
from starter.cli import LIST_TSV_COLUMNS, _calls_lines, _calls_tsv, app
from starter.service import CallSummary
from tapraise.models import CallResult, CallType
from tests.sandbox_fixture import REPO_ROOT, SandboxServer
from tests.temporal_fixture import CallWorker
from workflows.messages import (
    CallEvent,
    CallPhase,
    CallSearchAttributes,
    CallState,
    workflow_id_for,
)

pytestmark = pytest.mark.timeout(120)

PERSON = DEMO_PERSON_UUIDS[1]
runner = CliRunner()


def cli_env(worker: CallWorker) -> dict[str, str]:
    return {
        "TEMPORAL_ADDRESS": worker.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": worker.client.namespace,
    }


async def cli(worker: CallWorker, *args: str, stdin: str | None = None) -> Result:
    """Run `python -m starter --task-queue <worker's> …` in-process, off the event loop."""
    argv = ["--task-queue", worker.task_queue, *args]
    env = cli_env(worker)
    return await asyncio.to_thread(lambda: runner.invoke(app, argv, input=stdin, env=env))


async def start_call(worker: CallWorker, **flags: str) -> str:
    call_uuid = str(uuid.uuid4())
    args = ["start", "--uuid", call_uuid, "--person", PERSON, "--type", "verification"]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", value]
    result = await cli(worker, *args, "--json")
    assert result.exit_code == 0, result.output
    return call_uuid


async def assert_not_started(worker: CallWorker, call_uuid: str) -> None:
    with pytest.raises(RPCError) as info:
        await worker.client.get_workflow_handle(workflow_id_for(call_uuid)).describe()
    assert info.value.status == RPCStatusCode.NOT_FOUND


async def effects(sandbox: SandboxServer, call_uuid: str) -> dict[str, int]:
    return await asyncio.to_thread(sandbox.effects, call_uuid)


async def wait_phase(worker: CallWorker, call_uuid: str, *phases: CallPhase) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for _ in range(100):
        result = await cli(worker, "status", call_uuid, "--json")
        assert result.exit_code == 0, result.output
        state = json.loads(result.stdout)
        if state["phase"] in phases:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"call stayed in {state.get('phase')}, wanted {phases}")


# ── help and entry points ────────────────────────────────────────────────────────────────────


async def test_python_dash_m_starter_shows_help_with_every_command() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starter", "--help",
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await process.communicate()
    assert process.returncode == 0
    text = stdout.decode()
    for command in ("start", "start-batch", "attempt", "complete", "reschedule", "cancel",
                    "status", "list", "serve", "dev"):  # fmt: skip
        assert command in text


COMMANDS = ["start", "start-batch", "attempt", "complete", "reschedule", "cancel", "status",
            "list", "serve", "dev"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
async def test_every_command_help_has_an_example(command: str) -> None:
    result = await asyncio.to_thread(runner.invoke, app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_the_same_layout(command: str) -> None:
    text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "100"}).stdout
    lines = [line.strip() for line in text.splitlines()]
    usage = next(line for line in lines if line)
    assert usage.startswith("Usage: ") and f" {command} [OPTIONS]" in usage, usage
    assert any(line.startswith("╭─ Options") for line in lines), text
    example = next(i for i, line in enumerate(lines) if line.startswith("Example: "))
    last_panel = max(i for i, line in enumerate(lines) if line.startswith("╰"))
    assert example > last_panel, "the example closes the help, after the options"


def test_dev_offers_every_option_of_the_stack_with_its_default() -> None:
    from devstack.options import build_parser

    command = typer.main.get_command(app).commands["dev"]  # type: ignore[attr-defined]
    offered = {opt: param for param in command.params for opt in param.opts + param.secondary_opts}
    for action in build_parser()._actions:
        if "--help" in action.option_strings:
            continue
        for opt in action.option_strings:
            assert opt in offered, f"dev does not offer {opt}"
        default = action.default
        if default not in (None, False):
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            help_text = offered[action.option_strings[0]].help or ""
            assert f"(default {shown})" in help_text, (action.option_strings, help_text)


def test_dev_passes_its_options_to_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    import devstack.run

    seen: list[list[str]] = []

    def main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    monkeypatch.setattr(devstack.run, "main", main)
    result = runner.invoke(app, ["dev", "--demo", "-f", "--ui-port", "9233", "--data-dir", "d"])
    assert result.exit_code == 3
    assert seen == [["--data-dir", "d", "--ui-port", "9233", "--follow", "--demo"]]
    unknown = runner.invoke(app, ["dev", "--dmeo"])
    assert unknown.exit_code == 2 and len(seen) == 1


def test_dev_from_an_installed_package_says_it_runs_from_a_clone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An installed package carries no sandbox: the stack's module cannot be imported.
    real_import = importlib.import_module

    def without_sandbox(name: str) -> Any:
        if name == "devstack.run":
            raise ModuleNotFoundError("No module named 'sandbox'", name="sandbox")
        return real_import(name)

    monkeypatch.setattr(importlib, "import_module", without_sandbox)
    result = runner.invoke(app, ["dev"])
    assert result.exit_code == 1
    assert "runs from a clone of the project, with `make run`" in result.output
    assert "No module named 'sandbox'" in result.output


# ── start ────────────────────────────────────────────────────────────────────────────────────


async def test_start_runs_the_call_with_search_attributes_summary_and_details(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = str(uuid.uuid4())
    result = await cli(
        call_worker, "start", "--uuid", call_uuid, "--person", PERSON, "--type", "verification",
        "--org", DEMO_ORGANIZATION_UUID, "--notes", "new donor",
        "--requested-at", "2026-11-27T10:00:00Z", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body == {
        "workflowId": f"call-{call_uuid}",
        "callUuid": call_uuid,
        "status": "started",
        "phase": "creating",
    }
    description = await call_worker.client.get_workflow_handle(f"call-{call_uuid}").describe()
    assert description.workflow_type == "CallWorkflow"
    assert description.task_queue == call_worker.task_queue
    sa = description.typed_search_attributes
    assert sa.get(CallSearchAttributes.CALL_TYPE) == "verification"
    assert sa.get(CallSearchAttributes.PERSON_UUID) == PERSON
    assert sa.get(CallSearchAttributes.CALLING_ORGANIZATION_UUID) == DEMO_ORGANIZATION_UUID
    assert await description.static_summary() == (
        f"verification call to person {PERSON}, requested 2026-11-27 10:00 UTC"
    )
    details = await description.static_details()
    assert details is not None and DEMO_ORGANIZATION_UUID in details
    # The notes stay in the encrypted input: the details only say that there are some.
    assert "new donor" not in details and "**Notes:** yes (in the input)" in details
    state = await wait_phase(call_worker, call_uuid, CallPhase.SCHEDULED, CallPhase.DUE)
    assert state["callUuid"] == call_uuid
    assert (await effects(lenient_sandbox, call_uuid))["create"] == 1


async def test_second_start_of_the_same_call_reports_already_started(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = await start_call(call_worker)
    await wait_phase(call_worker, call_uuid, CallPhase.SCHEDULED, CallPhase.DUE)
    first = await call_worker.client.get_workflow_handle(f"call-{call_uuid}").describe()

    again = await cli(
        call_worker, "start", "--uuid", call_uuid, "--person", PERSON, "--type", "verification"
    )
    assert again.exit_code == 0, again.output
    assert f"already started call-{call_uuid} (phase scheduled" in again.stdout or (
        f"already started call-{call_uuid} (phase due" in again.stdout
    )
    second = await call_worker.client.get_workflow_handle(f"call-{call_uuid}").describe()
    assert second.run_id == first.run_id
    assert (await effects(lenient_sandbox, call_uuid))["create"] == 1


@pytest.mark.parametrize(
    ("action", "phase"),
    [(["cancel", "--reason", "test"], "cancelled"),
     (["complete", "--result-code", "confirmed"], "completed")],
)  # fmt: skip
async def test_start_of_a_finished_call_reports_already_started_not_a_new_run(
    call_worker: CallWorker, action: list[str], phase: str
) -> None:
    call_uuid = await start_call(call_worker)
    await wait_phase(call_worker, call_uuid, CallPhase.SCHEDULED, CallPhase.DUE)
    finished = await cli(call_worker, action[0], call_uuid, *action[1:])
    assert finished.exit_code == 0, finished.output
    handle = call_worker.client.get_workflow_handle(f"call-{call_uuid}")
    await handle.result()
    closed = await handle.describe()

    again = await cli(
        call_worker, "start", "--uuid", call_uuid, "--person", PERSON, "--type", "verification",
        "--json",
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    body = json.loads(again.stdout)
    assert body["status"] == "already started"
    assert body["phase"] == phase
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    assert description.run_id == closed.run_id


async def test_a_failed_call_started_again_runs_a_new_run(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    # TapRaise refuses the create (a person outside the account's organizations): the run fails.
    call_uuid = str(uuid.uuid4())
    refused = await cli(call_worker, "start", "--uuid", call_uuid, "--person",
                        FOREIGN_PERSON_UUID, "--type", "verification")  # fmt: skip
    assert refused.exit_code == 0, refused.output
    handle = call_worker.client.get_workflow_handle(f"call-{call_uuid}")
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), 30)
    failed = await handle.describe()
    assert failed.status == WorkflowExecutionStatus.FAILED
    assert (await wait_phase(call_worker, call_uuid, CallPhase.FAILED))["failure"]

    # The CRM corrects the person and starts the same call again: a new run, which creates it.
    again = await cli(call_worker, "start", "--uuid", call_uuid, "--person", PERSON, "--type",
                      "verification", "--json")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["status"] == "started"
    second = await handle.describe()
    assert second.run_id != failed.run_id
    assert second.status == WorkflowExecutionStatus.RUNNING
    state = await wait_phase(call_worker, call_uuid, CallPhase.SCHEDULED, CallPhase.DUE)
    assert state["personUuid"] == PERSON
    assert (await effects(lenient_sandbox, call_uuid))["create"] == 1

    # Running again, the call is "already started" as any running call is.
    third = await cli(call_worker, "start", "--uuid", call_uuid, "--person", PERSON, "--type",
                      "verification", "--json")  # fmt: skip
    assert json.loads(third.stdout)["status"] == "already started"
    assert (await handle.describe()).run_id == second.run_id


async def test_start_reads_a_json_object_from_stdin_in_a_real_subprocess(
    call_worker: CallWorker,
) -> None:
    call_uuid = str(uuid.uuid4())
    call = {"uuid": call_uuid, "personUuid": PERSON, "type": "happy_call", "notes": "from CRM"}
    env = {**os.environ, **cli_env(call_worker), "CALLS_TASK_QUEUE": call_worker.task_queue}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starter", "start", "-", "--json",
        cwd=REPO_ROOT, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate(json.dumps(call).encode())
    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout)["status"] == "started"
    description = await call_worker.client.get_workflow_handle(f"call-{call_uuid}").describe()
    assert description.typed_search_attributes.get(CallSearchAttributes.CALL_TYPE) == "happy_call"


async def test_start_file_dash_reads_standard_input_in_a_real_subprocess(
    call_worker: CallWorker, tmp_path: Any
) -> None:
    call_uuid = str(uuid.uuid4())
    call = {"uuid": call_uuid, "personUuid": PERSON, "type": "winback"}
    env = {**os.environ, **cli_env(call_worker), "CALLS_TASK_QUEUE": call_worker.task_queue}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starter", "start", "--file", "-", "--json",
        cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO_ROOT)}, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate(json.dumps(call).encode())
    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout)["status"] == "started"
    assert not (tmp_path / "-").exists()
    description = await call_worker.client.get_workflow_handle(f"call-{call_uuid}").describe()
    assert description.typed_search_attributes.get(CallSearchAttributes.CALL_TYPE) == "winback"


async def test_start_takes_the_call_from_one_place_only(call_worker: CallWorker) -> None:
    both = await cli(call_worker, "start", "-", "--file", "-", stdin="{}")
    assert both.exit_code == 2
    assert "either as '-' or with --file, not both" in both.stderr
    stray = await cli(call_worker, "start", "call.json")
    assert stray.exit_code == 2
    assert "unexpected argument 'call.json'" in stray.stderr


async def test_start_without_uuid_makes_a_version_4_uuid(call_worker: CallWorker) -> None:
    result = await cli(call_worker, "start", "--person", PERSON, "--type", "winback", "--json")
    assert result.exit_code == 0, result.output
    made = uuid.UUID(json.loads(result.stdout)["callUuid"])
    assert made.version == 4
    await call_worker.client.get_workflow_handle(f"call-{made}").describe()


@pytest.mark.parametrize(
    ("flags", "field", "message"),
    [
        (["--person", "not-a-uuid", "--type", "verification"], "personUuid", "valid UUID"),
        (["--person", PERSON, "--type", "robocall"], "type", "verification"),
        (["--person", PERSON], "type", "required"),
        (["--person", PERSON, "--type", "verification", "--requested-at", "2026-11-27T10:00"],
         "requestedAt", "timezone"),
        (["--person", PERSON, "--type", "verification", "--timezone", "Mars/Olympus"],
         "timezone", "unknown IANA time zone"),
        (["--person", PERSON, "--type", "verification", "--policy", '{"maxAttempts": 0}'],
         "policy.maxAttempts", "greater than or equal to 1"),
        (["--person", PERSON, "--type", "verification", "--policy", "{not json"],
         "policy", "not valid JSON"),
    ],
)  # fmt: skip
async def test_start_refuses_bad_input_naming_the_field_and_starts_nothing(
    call_worker: CallWorker, flags: list[str], field: str, message: str
) -> None:
    call_uuid = str(uuid.uuid4())
    result = await cli(call_worker, "start", "--uuid", call_uuid, *flags)
    assert result.exit_code == 2, result.output
    assert f"{field}: " in result.stderr
    assert message in result.stderr
    assert "nothing was sent" in result.stderr
    await assert_not_started(call_worker, call_uuid)


async def test_start_refuses_unknown_fields_and_non_v4_uuids_in_json(
    call_worker: CallWorker, tmp_path: Any
) -> None:
    call_uuid = str(uuid.uuid4())
    path = tmp_path / "call.json"
    path.write_text(json.dumps({"uuid": call_uuid, "personUuid": PERSON, "type": "verification",
                                "priority": "high"}))  # fmt: skip
    result = await cli(call_worker, "start", "--file", str(path), "--json")
    assert result.exit_code == 2
    body = json.loads(result.stdout)
    assert body["kind"] == "invalid"
    assert body["problems"] == ["priority: unknown field"]
    await assert_not_started(call_worker, call_uuid)

    v1 = "6fa459ea-ee8a-11ea-b439-0242ac130003"  # a time-based (version 1) uuid
    result = await cli(call_worker, "start", "--uuid", v1, "--person", PERSON, "--type", "winback")
    assert result.exit_code == 2
    assert "uuid: TapRaise accepts only version-4 UUIDs" in result.stderr
    await assert_not_started(call_worker, v1)


# ── actions ──────────────────────────────────────────────────────────────────────────────────


async def test_attempt_reschedule_complete_by_update_then_final_call_refuses(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = await start_call(call_worker)
    await wait_phase(call_worker, call_uuid, CallPhase.SCHEDULED, CallPhase.DUE)

    attempted = await cli(call_worker, "attempt", call_uuid, "--outcome", "no_answer", "--json")
    assert attempted.exit_code == 0, attempted.output
    body = json.loads(attempted.stdout)
    assert body["accepted"] is True and body["phase"] == "scheduled"
    assert "attempt 1 recorded (no_answer)" in body["detail"]

    callback = (datetime.now(UTC) + timedelta(days=1)).replace(hour=10, minute=0, second=0)
    rescheduled = await cli(call_worker, "reschedule", call_uuid, "--at", callback.isoformat())
    assert rescheduled.exit_code == 0, rescheduled.output
    assert "accepted reschedule" in rescheduled.stdout

    completed = await cli(
        call_worker, "complete", call_uuid, "--result-code", "confirmed", "--rating", "8",
        "--duration", "184", "--notes", "happy donor",
    )  # fmt: skip
    assert completed.exit_code == 0, completed.output
    assert "accepted complete" in completed.stdout and "phase completed" in completed.stdout

    counts = await effects(lenient_sandbox, call_uuid)
    assert counts["add-attempt"] == 1 and counts["complete"] == 1

    again = await cli(call_worker, "complete", call_uuid, "--result-code", "confirmed")
    assert again.exit_code == 1
    assert "call is already completed" in again.stderr
    late = await cli(call_worker, "attempt", call_uuid, "--outcome", "busy", "--json")
    assert late.exit_code == 1
    assert json.loads(late.stdout)["kind"] == "rejected"
    assert (await effects(lenient_sandbox, call_uuid)) == counts

    status = await cli(call_worker, "status", call_uuid)
    assert status.exit_code == 0, status.output
    for text in ("completed", "confirmed", "rating 8", "no_answer", "last events"):
        assert text in status.stdout
    state = json.loads((await cli(call_worker, "status", call_uuid, "--json")).stdout)
    assert state["phase"] == "completed"
    assert state["result"]["donorRetentionRating"] == 8
    assert state["attempts"][0]["outcome"] == "no_answer"


async def test_bad_action_payloads_are_refused_locally_and_change_nothing(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = await start_call(call_worker)
    await wait_phase(call_worker, call_uuid, CallPhase.SCHEDULED, CallPhase.DUE)
    before = await effects(lenient_sandbox, call_uuid)

    rating = await cli(call_worker, "complete", call_uuid, "--result-code", "x", "--rating", "11")
    assert rating.exit_code == 2
    assert "result.donorRetentionRating: Input should be less than or equal to 10" in rating.stderr

    naive = await cli(call_worker, "attempt", call_uuid, "--outcome", "busy", "--at",
                      "2026-11-27T10:00:00")  # fmt: skip
    assert naive.exit_code == 2
    assert "attemptAt: " in naive.stderr and "timezone" in naive.stderr

    outcome = await cli(call_worker, "attempt", call_uuid, "--outcome", "hung_up")
    assert outcome.exit_code == 2
    assert "outcome: " in outcome.stderr

    missing = await cli(call_worker, "complete", call_uuid)
    assert missing.exit_code == 2
    assert "--result-code" in missing.stderr

    bad_uuid = await cli(call_worker, "cancel", "12345")
    assert bad_uuid.exit_code == 2
    assert "is not a UUID" in bad_uuid.stderr

    state = await wait_phase(call_worker, call_uuid, CallPhase.SCHEDULED, CallPhase.DUE)
    assert state["attempts"] == []
    assert (await effects(lenient_sandbox, call_uuid)) == before


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "--request-id: must not be empty"),
        ("   ", "--request-id: must not be empty"),
        ("k" * 201, "--request-id: must be at most 200 characters, not 201"),
        ("tab\there", "--request-id: must be printable ASCII"),
        ("clé-1", "--request-id: must be printable ASCII"),
    ],
)
async def test_bad_request_ids_are_refused_and_change_nothing(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, key: str, message: str
) -> None:
    call_uuid = await start_call(call_worker)
    await wait_phase(call_worker, call_uuid, CallPhase.SCHEDULED, CallPhase.DUE)
    for args in (["attempt", call_uuid, "--outcome", "busy"],
                 ["complete", call_uuid, "--result-code", "confirmed"],
                 ["reschedule", call_uuid, "--at", "2030-01-07T10:00:00+01:00"],
                 ["cancel", call_uuid]):  # fmt: skip
        result = await cli(call_worker, *args, "--request-id", key)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr
        assert "nothing was sent to Temporal" in result.stderr
    as_json = await cli(call_worker, "cancel", call_uuid, "--request-id", key, "--json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["kind"] == "invalid"
    state = await wait_phase(call_worker, call_uuid, CallPhase.SCHEDULED, CallPhase.DUE)
    assert state["attempts"] == [] and state["callbackAt"] is None
    counts = await effects(lenient_sandbox, call_uuid)
    assert counts["add-attempt"] == counts["complete"] == counts["cancel"] == 0


async def test_a_request_id_needs_an_update_not_a_signal(call_worker: CallWorker) -> None:
    call_uuid = await start_call(call_worker)
    result = await cli(call_worker, "cancel", call_uuid, "--signal", "--request-id", "k-1")
    assert result.exit_code == 2, result.output
    assert "--request-id: a signal has no id to deduplicate by" in result.stderr
    state = await wait_phase(call_worker, call_uuid, CallPhase.SCHEDULED, CallPhase.DUE)
    assert state["phase"] != "cancelled"


async def test_workflow_refusal_is_reported_with_its_reason(call_worker: CallWorker) -> None:
    call_uuid = await start_call(call_worker)
    await wait_phase(call_worker, call_uuid, CallPhase.SCHEDULED, CallPhase.DUE)
    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    result = await cli(call_worker, "attempt", call_uuid, "--outcome", "busy", "--at", future)
    assert result.exit_code == 1
    assert "attemptAt is in the future" in result.stderr


async def test_actions_on_an_unknown_call_say_no_call(call_worker: CallWorker) -> None:
    unknown = str(uuid.uuid4())
    for args in (
        ["attempt", unknown, "--outcome", "no_answer"],
        ["complete", unknown, "--result-code", "confirmed"],
        ["cancel", unknown, "--signal"],
        ["status", unknown],
    ):
        result = await cli(call_worker, *args)
        assert result.exit_code == 1, (args, result.output)
        assert f"no call {unknown}" in result.stderr
    await assert_not_started(call_worker, unknown)


async def test_cancel_as_a_signal_is_fire_and_forget(
    call_worker: CallWorker, lenient_sandbox: SandboxServer
) -> None:
    call_uuid = await start_call(call_worker)
    sent = await cli(call_worker, "cancel", call_uuid, "--signal", "--reason", "moved", "--json")
    assert sent.exit_code == 0, sent.output
    assert json.loads(sent.stdout) == {
        "workflowId": f"call-{call_uuid}",
        "callUuid": call_uuid,
        "signal": "cancel",
        "sent": True,
    }
    state = await wait_phase(call_worker, call_uuid, CallPhase.CANCELLED)
    assert state["finalReason"] == "cancelled: moved"
    assert (await effects(lenient_sandbox, call_uuid))["cancel"] == 1


# ── list ─────────────────────────────────────────────────────────────────────────────────────


async def test_list_filters_by_search_attributes(
    call_worker: CallWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    person = DEMO_PERSON_UUIDS[7]
    call_uuid = str(uuid.uuid4())
    started = await cli(call_worker, "start", "--uuid", call_uuid, "--person", person, "--type",
                        "winback")  # fmt: skip
    assert started.exit_code == 0, started.output
    query = f"TaskQueue = '{call_worker.task_queue}'"
    body: dict[str, Any] = {}
    for _ in range(100):  # visibility is eventually consistent
        listed = await cli(call_worker, "list", "--person", person, "--type", "winback",
                           "--query", query, "--json")  # fmt: skip
        assert listed.exit_code == 0, listed.output
        body = json.loads(listed.stdout)
        if body["calls"] and body["calls"][0]["phase"] in ("scheduled", "due"):
            break
        await asyncio.sleep(0.1)
    assert [c["workflowId"] for c in body["calls"]] == [f"call-{call_uuid}"]
    assert body["query"].startswith("WorkflowType = 'CallWorkflow' AND CallType = 'winback'")
    assert body["calls"][0]["type"] == "winback"

    # Piped (as here): a header and one tab-separated line per call, every value in full.
    piped = await cli(call_worker, "list", "--person", person, "--query", query)
    assert piped.exit_code == 0
    header, *lines = piped.stdout.splitlines()
    assert header.split("\t") == list(LIST_TSV_COLUMNS)
    assert [line.split("\t")[:2] for line in lines] == [[f"call-{call_uuid}", "running"]]
    fields = dict(zip(header.split("\t"), lines[0].split("\t"), strict=True))
    assert fields["personUuid"] == person and fields["type"] == "winback"
    assert fields["nextAttemptAt"].endswith("Z")

    # On a terminal 80 columns wide: a table that fits, the workflow id complete.
    monkeypatch.setattr(starter.cli, "_stdout_is_terminal", lambda: True)
    env = {**cli_env(call_worker), "COLUMNS": "80"}
    argv = ["--task-queue", call_worker.task_queue, "list", "--person", person, "--query", query]
    table = await asyncio.to_thread(runner.invoke, app, argv, env=env)
    assert table.exit_code == 0, table.output
    headers = table.stdout.splitlines()[0].split()
    assert headers[:3] == ["workflow", "id", "phase"] and "type" in headers
    assert f"call-{call_uuid}" in table.stdout
    assert max(map(len, table.stdout.splitlines())) <= 80

    none = await cli(call_worker, "list", "--person", person, "--phase", "completed", "--query",
                     query, "--json")  # fmt: skip
    assert json.loads(none.stdout)["calls"] == []


def summaries(count: int) -> list[CallSummary]:
    """Calls as visibility lists them, each column at its widest."""
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    return [
        CallSummary(
            workflow_id=workflow_id_for(uuid.uuid4()), execution_status="running",
            phase="scheduled", call_status="requested", type="verification",
            person_uuid=str(uuid.uuid4()), organization_uuid=None, attempts=12,
            next_attempt_at=now + timedelta(days=3), started_at=now, closed_at=None,
        )
        for _ in range(count)
    ]  # fmt: skip


@pytest.mark.parametrize("width", [200, 120, 100, 80, 72, 60, 40])
def test_the_calls_table_fits_the_terminal_and_keeps_the_workflow_id_whole(width: int) -> None:
    calls = summaries(3)
    lines = _calls_lines(calls, width)
    assert len(lines) == 4
    if width >= 41:  # the id alone is 41 characters: never shortened, even when it overflows
        assert max(map(len, lines)) <= width, lines
    for call, line in zip(calls, lines[1:], strict=True):
        assert line.split()[0] == call.workflow_id
    headers = lines[0]
    assert "phase" in headers or width < 52
    if width >= 105:
        assert headers.split() == ["workflow", "id", "phase", "status", "type", "attempts",
                                   "next", "(UTC)"]  # fmt: skip
        assert lines[1].endswith("2026-11-30 10:00")
    if width == 80:
        assert headers.split() == ["workflow", "id", "phase", "type", "next", "(UTC)"]
        assert lines[1].endswith("11-30 10:00")


def test_status_shows_what_the_call_was_told_as_text_never_as_markup() -> None:
    now = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    told = "[/x] [bold]loud[/bold] :smile:"
    state = CallState(
        call_uuid=uuid.uuid4(), requested_at=now, workflow_id="call-x", type=CallType.WINBACK,
        person_uuid=uuid.UUID(PERSON), phase=CallPhase.CANCELLED,
        final_reason=f"cancelled: {told}", result=CallResult(result_code=told, notes=told),
        events=[CallEvent(at=now, kind="ignored", detail=f"reschedule: {told}")],
    )  # fmt: skip
    console = Console(record=True, width=200)
    console.print(starter.cli._state_panel(state))
    shown = console.export_text()
    assert f"cancelled: {told}" in shown and f"reschedule: {told}" in shown
    assert f"{told} · {told}" in shown


def test_piped_calls_are_tab_separated_in_full() -> None:
    calls = summaries(2)
    header, *lines = _calls_tsv(calls)
    assert header.split("\t") == list(calls[0].to_json()) == list(LIST_TSV_COLUMNS)
    for call, line in zip(calls, lines, strict=True):
        cells = line.split("\t")
        assert len(cells) == len(LIST_TSV_COLUMNS)
        assert cells[0] == call.workflow_id and cells[5] == call.person_uuid
        assert cells[6] == "" and cells[8] == "2026-11-30T10:00:00Z"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--phase", "ringing"], "phase: 'ringing' is not one of creating"),
        (["--person", "x' OR '1'='1"], "person: "),
        (["--due-before", "2026-11-27T10:00"], "due-before: '2026-11-27T10:00' has no time zone"),
        (["--query", "NoSuchAttribute = 'x'"], "query: "),
    ],
)
async def test_list_refuses_bad_filters(
    call_worker: CallWorker, flags: list[str], message: str
) -> None:
    result = await cli(call_worker, "list", *flags)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


async def test_unreachable_temporal_is_a_clear_failure(call_worker: CallWorker) -> None:
    result = await asyncio.to_thread(
        runner.invoke, app, ["status", str(uuid.uuid4())],
        env={"TEMPORAL_ADDRESS": "127.0.0.1:1"},
    )  # fmt: skip
    assert result.exit_code == 1
    assert "cannot reach Temporal at 127.0.0.1:1" in result.stderr


@pytest.mark.parametrize(
    ("given", "offset"),
    [
        ("+2h", timedelta(hours=2)),
        ("-10m", -timedelta(minutes=10)),
        ("+1d12h", timedelta(days=1, hours=12)),
        ("+90s", timedelta(seconds=90)),
    ],
)
def test_time_options_take_a_time_relative_to_now(given: str, offset: timedelta) -> None:
    before = datetime.now(UTC)
    moment = starter.cli._moment(given)
    assert moment is not None and moment.endswith("Z")
    at = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    assert before + offset - timedelta(seconds=1) <= at <= datetime.now(UTC) + offset


@pytest.mark.parametrize("given", ["2026-11-30T18:30:00+01:00", "tomorrow", "+2x", "2h", ""])
def test_time_options_pass_anything_else_on_to_be_validated(given: str) -> None:
    assert starter.cli._moment(given) == given
