"""Batches of calls: parsing and validation of CSV/JSONL files, and `start-batch` end to end.

The end-to-end tests count workflows on the worker's own task queue, so "starts nothing twice"
is asserted against Temporal itself, not against what the CLI says.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from starter.batch import BatchError, BatchFormat, detect_format, read_batch
from starter.calls import derive_call_uuid
from starter.cli import app
from tapraise.sandbox.seed import DEMO_PERSON_UUIDS
from tests.sandbox_fixture import REPO_ROOT
from tests.temporal_fixture import CallWorker

pytestmark = pytest.mark.timeout(120)

runner = CliRunner()
HEADER = "uuid,personUuid,type,notes,callingOrganizationUuid,externalMetadata"


def csv_file(path: Path, rows: int, bad_line: int | None = None) -> list[str]:
    """A CSV of `rows` calls (lines 2…rows+1); the row on `bad_line` has a broken personUuid."""
    uuids = []
    lines = [HEADER]
    for i in range(rows):
        line = i + 2
        call_uuid = str(uuid.uuid4())
        uuids.append(call_uuid)
        person = "not-a-uuid" if line == bad_line else DEMO_PERSON_UUIDS[i % 5]
        lines.append(f'{call_uuid},{person},verification,"row {line}, from CRM",,')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return uuids


async def cli(worker: CallWorker, *args: str) -> Result:
    env = {"TEMPORAL_ADDRESS": worker.client.service_client.config.target_host}
    argv = ["--task-queue", worker.task_queue, *args]
    return await asyncio.to_thread(lambda: runner.invoke(app, argv, env=env))


async def workflow_count(worker: CallWorker, expected: int) -> int:
    """Workflows on the worker's task queue, polled until visibility shows `expected` (or 3 s)."""
    count = -1
    for _ in range(60):
        count = (await worker.client.count_workflows(f"TaskQueue = '{worker.task_queue}'")).count
        if count == expected:
            # Hold on a moment: a count that is still growing would exceed it.
            await asyncio.sleep(0.3)
            return (await worker.client.count_workflows(f"TaskQueue = '{worker.task_queue}'")).count
        await asyncio.sleep(0.05)
    return count


# ── parsing (no Temporal) ────────────────────────────────────────────────────────────────────


def test_derived_call_uuids_are_stable_version_4_uuids() -> None:
    first = derive_call_uuid("CRM-00042")
    assert first == derive_call_uuid(" CRM-00042 ")
    assert first != derive_call_uuid("CRM-00043")
    assert first.version == 4 and first.variant == uuid.RFC_4122


def test_every_bad_row_of_a_csv_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    csv_file(path, 60, bad_line=57)
    batch = read_batch(path.read_text(), BatchFormat.CSV)
    assert len(batch.rows) == 60
    assert [row.line for row in batch.bad] == [57]
    assert batch.bad[0].problems[0].startswith("personUuid: Input should be a valid UUID")
    assert len(batch.good) == 59
    assert batch.good[0].call is not None and batch.good[0].call.notes == "row 2, from CRM"


def test_csv_cells_json_columns_and_empty_cells(tmp_path: Path) -> None:
    text = (
        "personUuid,type,externalMetadata,policy,timezone\n"
        f'{DEMO_PERSON_UUIDS[0]},verification,"{{""referenceId"": ""R-1""}}",'
        f'"{{""maxAttempts"": 2}}",\n'
        f"{DEMO_PERSON_UUIDS[0]},verification,{{broken,,\n"
        f"{DEMO_PERSON_UUIDS[0]},winback,,,Europe/Brussels\n"
    )
    batch = read_batch(text, BatchFormat.CSV, id_from="externalMetadata.referenceId")
    first = batch.rows[0].call
    assert first is not None and first.timezone is None
    assert first.external_metadata is not None and first.external_metadata.reference_id == "R-1"
    assert first.policy is not None and first.policy.max_attempts == 2
    assert first.uuid == derive_call_uuid("R-1")
    assert batch.rows[1].problems == ("externalMetadata: not valid JSON (Expecting property name "
                                      "enclosed in double quotes)",)  # fmt: skip
    assert batch.rows[2].problems == (
        "externalMetadata.referenceId: no value to derive the call uuid from",
    )


def test_duplicate_rows_are_reported_and_kept_once(tmp_path: Path) -> None:
    same = str(uuid.uuid4())
    text = "\n".join(
        [
            json.dumps({"uuid": same, "personUuid": DEMO_PERSON_UUIDS[0], "type": "winback"}),
            "",
            json.dumps({"crmId": "A-1", "personUuid": DEMO_PERSON_UUIDS[0], "type": "winback"}),
            json.dumps({"uuid": same, "personUuid": DEMO_PERSON_UUIDS[1], "type": "winback"}),
            json.dumps({"crmId": "A-1", "personUuid": DEMO_PERSON_UUIDS[0], "type": "winback"}),
            "[1, 2]",
            json.dumps({"crmId": "A-2", "personUuid": DEMO_PERSON_UUIDS[0], "type": "winback",
                        "priority": 1}),
        ]
    )  # fmt: skip
    batch = read_batch(text, BatchFormat.JSONL, id_from="crmId")
    assert [row.line for row in batch.good] == [1, 3]
    assert [(row.line, row.duplicate_of) for row in batch.duplicates] == [(4, 1), (5, 3)]
    assert [(row.line, row.problems) for row in batch.bad] == [
        (6, ("a line must hold one JSON object",)),
        (7, ("priority: unknown field",)),
    ]


def test_file_level_problems_refuse_the_file() -> None:
    with pytest.raises(BatchError, match="no rows"):
        read_batch("", BatchFormat.CSV)
    with pytest.raises(BatchError, match="no rows"):
        read_batch(HEADER + "\n", BatchFormat.CSV)
    with pytest.raises(BatchError, match="no rows"):
        read_batch("\n\n", BatchFormat.JSONL)
    with pytest.raises(BatchError, match=r"unknown column.*personUUID"):
        read_batch("personUUID,type\nx,verification\n", BatchFormat.CSV)
    with pytest.raises(BatchError, match="--format"):
        detect_format("calls.txt")
    assert detect_format("a.CSV") is BatchFormat.CSV
    assert detect_format("a.ndjson") is BatchFormat.JSONL
    assert detect_format("-", BatchFormat.JSONL) is BatchFormat.JSONL


def test_standard_input_without_format_is_told_by_its_first_character() -> None:
    assert detect_format("-", text='\ufeff\n {"personUuid": "x"}\n') is BatchFormat.JSONL
    assert detect_format("-", text="personUuid,type\n") is BatchFormat.CSV
    assert detect_format("-", text="") is BatchFormat.CSV  # then refused: no rows
    with pytest.raises(BatchError, match="--format"):
        detect_format("-")


# ── start-batch against Temporal ─────────────────────────────────────────────────────────────


async def test_start_batch_starts_good_rows_reports_bad_and_rerun_starts_nothing(
    call_worker: CallWorker, tmp_path: Path
) -> None:
    path = tmp_path / "calls.csv"
    uuids = csv_file(path, 60, bad_line=57)

    strict = await cli(call_worker, "start-batch", str(path), "--strict")
    assert strict.exit_code == 1
    assert "line 57: personUuid: Input should be a valid UUID" in strict.stdout
    assert "refused the whole file: 1 bad row(s)" in strict.stderr
    assert await workflow_count(call_worker, 0) == 0

    results = tmp_path / "results.csv"
    first = await cli(call_worker, "start-batch", str(path), "--results", str(results),
                      "--concurrency", "8")  # fmt: skip
    assert first.exit_code == 1, first.output  # one row refused
    assert "line 57: personUuid" in first.stdout
    rows = list(csv.DictReader(results.open()))
    assert len(rows) == 60
    by_line = {row["line"]: row for row in rows}
    assert by_line["57"]["outcome"] == "refused" and "personUuid" in by_line["57"]["detail"]
    assert by_line["2"] == {
        "line": "2", "callUuid": uuids[0], "workflowId": f"call-{uuids[0]}",
        "outcome": "started", "phase": "creating", "detail": "",
    }  # fmt: skip
    assert sum(row["outcome"] == "started" for row in rows) == 59
    assert await workflow_count(call_worker, 59) == 59

    second = await cli(call_worker, "start-batch", str(path), "--json")
    assert second.exit_code == 1
    body = json.loads(second.stdout)
    assert body["summary"] == {"started": 0, "already started": 59, "duplicate": 0,
                               "refused": 1, "failed": 0}  # fmt: skip
    assert await workflow_count(call_worker, 59) == 59


async def test_start_batch_with_id_from_derives_uuids_and_is_idempotent(
    call_worker: CallWorker, tmp_path: Path
) -> None:
    path = tmp_path / "export.jsonl"
    tag = uuid.uuid4().hex[:8]
    lines = [
        {"crmId": f"{tag}-{i}", "personUuid": DEMO_PERSON_UUIDS[i], "type": "happy_call"}
        for i in range(4)
    ]
    lines.append(lines[1])  # the CRM exported one request twice
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    first = await cli(call_worker, "start-batch", str(path), "--id-from", "crmId", "--json")
    assert first.exit_code == 0, first.output
    body = json.loads(first.stdout)
    assert body["summary"]["started"] == 4 and body["summary"]["duplicate"] == 1
    assert body["rows"][4]["outcome"] == "duplicate"
    expected = {str(derive_call_uuid(f"{tag}-{i}")) for i in range(4)}
    assert {row["callUuid"] for row in body["rows"]} == expected

    second = await cli(call_worker, "start-batch", str(path), "--id-from", "crmId")
    assert second.exit_code == 0, second.output
    assert "already started │ 4" in second.stdout or "already started  4" in second.stdout
    assert await workflow_count(call_worker, 4) == 4


async def test_start_batch_refuses_an_empty_file(call_worker: CallWorker, tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    result = await cli(call_worker, "start-batch", str(path))
    assert result.exit_code == 1
    assert "the file has no rows: nothing to start" in result.stderr
    assert await workflow_count(call_worker, 0) == 0


async def start_batch_subprocess(
    worker: CallWorker, stdin: str, *args: str, cwd: Path
) -> tuple[int, str, str]:
    """`python -m starter start-batch … -` in a real process, `stdin` piped in."""
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": worker.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": worker.client.namespace,
        "CALLS_TASK_QUEUE": worker.task_queue,
        "PYTHONPATH": str(REPO_ROOT),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starter", "start-batch", "-", *args,
        cwd=cwd, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate(stdin.encode())
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_start_batch_reads_csv_from_standard_input(
    call_worker: CallWorker, tmp_path: Path
) -> None:
    uuids = csv_file(tmp_path / "calls.csv", 3)
    code, stdout, stderr = await start_batch_subprocess(
        call_worker, (tmp_path / "calls.csv").read_text(), "--json", cwd=tmp_path
    )
    assert code == 0, stderr
    body = json.loads(stdout)
    assert body["summary"]["started"] == 3
    assert [row["callUuid"] for row in body["rows"]] == uuids
    assert not (tmp_path / "-").exists()
    assert await workflow_count(call_worker, 3) == 3


async def test_start_batch_reads_jsonl_from_standard_input_and_writes_results_to_stdout(
    call_worker: CallWorker, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    lines = [
        {"crmId": f"{tag}-{i}", "personUuid": DEMO_PERSON_UUIDS[i], "type": "winback"}
        for i in range(2)
    ]
    code, stdout, stderr = await start_batch_subprocess(
        call_worker, "\n".join(json.dumps(line) for line in lines) + "\n",
        "--id-from", "crmId", "--results", "-", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert [row["callUuid"] for row in rows] == [
        str(derive_call_uuid(f"{tag}-{i}")) for i in range(2)
    ]
    assert [row["outcome"] for row in rows] == ["started", "started"]
    assert "start-batch" in stderr  # the people's report went to stderr
    assert not (tmp_path / "-").exists()
    assert await workflow_count(call_worker, 2) == 2


async def test_results_on_stdout_and_json_exclude_each_other(
    call_worker: CallWorker, tmp_path: Path
) -> None:
    csv_file(tmp_path / "calls.csv", 1)
    result = await cli(
        call_worker, "start-batch", str(tmp_path / "calls.csv"), "--results", "-", "--json"
    )
    assert result.exit_code == 2
    assert "--results -: stdout carries the --json answer already" in result.stdout
    assert await workflow_count(call_worker, 0) == 0
