"""Batches of calls: parsing and validation of CSV/JSONL files, and `start-batch` end to end.

The end-to-end tests count workflows on the worker's own task queue, so "starts nothing twice"
is asserted against Temporal itself, not against what the CLI says.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import json
import os
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from encryption.codec import EncryptionCodec
from sandbox.seed import DEMO_PERSON_UUIDS
from starter.batch import (
    CSV_CELL_MAX_LENGTH,
    MAX_LINE_BYTES,
    BatchError,
    BatchFormat,
    NotUtf8,
    batch_results,
    detect_format,
    load_batch,
    read_batch,
    result_rows,
    write_results,
)
from starter.cli import app
from starter.service import derive_call_uuid
from tests.keys_fixture import RUN_KEYS
from tests.sandbox_fixture import REPO_ROOT
from tests.temporal_fixture import CallWorker
from workflows.messages import CALL_NOTES_MAX_LENGTH, JSON_MAX_LENGTH

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
                        "Type": "winback"}),
        ]
    )  # fmt: skip
    batch = read_batch(text, BatchFormat.JSONL, id_from="crmId")
    assert [row.line for row in batch.good] == [1, 3]
    assert [(row.line, row.duplicate_of) for row in batch.duplicates] == [(4, 1), (5, 3)]
    assert [(row.line, row.problems) for row in batch.bad] == [
        (6, ("a line must hold one JSON object",)),
        (7, ("Type: misspelt call field, did you mean type?",)),
    ]


def test_file_level_problems_refuse_the_file() -> None:
    with pytest.raises(BatchError, match="no rows"):
        read_batch("", BatchFormat.CSV)
    with pytest.raises(BatchError, match="no rows"):
        read_batch(HEADER + "\n", BatchFormat.CSV)
    with pytest.raises(BatchError, match="no rows"):
        read_batch("\n\n", BatchFormat.JSONL)
    with pytest.raises(
        BatchError, match="personUUID: misspelt call field, did you mean personUuid"
    ):
        read_batch("personUUID,type\nx,verification\n", BatchFormat.CSV)
    with pytest.raises(BatchError, match="--id-from crmId: the header has no such column"):
        read_batch(f"personUuid,type,crm_id\n{DEMO_PERSON_UUIDS[0]},winback,A\n", BatchFormat.CSV,
                   id_from="crmId")  # fmt: skip
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


def test_csv_columns_of_the_crms_own_are_accepted_and_not_sent() -> None:
    text = (
        "crmId,personUuid,type,region,notes,Owner Name\n"
        f"C-1,{DEMO_PERSON_UUIDS[0]},verification,north,new donor,Ann\n"
        f"C-2,{DEMO_PERSON_UUIDS[1]},winback,,,\n"
    )
    batch = read_batch(text, BatchFormat.CSV, id_from="crmId")
    assert not batch.bad and len(batch.good) == 2
    first = batch.rows[0].call
    assert first is not None and first.uuid == derive_call_uuid("C-1")
    assert first.notes == "new donor"
    sent = first.model_dump(by_alias=True)
    assert "region" not in sent and "crmId" not in sent and "Owner Name" not in sent
    assert [row.external_id for row in batch.rows] == ["C-1", "C-2"]


@pytest.mark.parametrize(
    ("column", "field"),
    [("personUUID", "personUuid"), ("person_uuid", "personUuid"), ("PersonUuid", "personUuid"),
     ("requested_at", "requestedAt"), ("requested-at", "requestedAt"), ("TYPE", "type"),
     ("external_metadata", "externalMetadata"), ("calling_organization_uuid",
                                                 "callingOrganizationUuid")],
)  # fmt: skip
def test_csv_column_that_misspells_a_call_field_refuses_the_file(column: str, field: str) -> None:
    text = f"personUuid,type,{column}\n{DEMO_PERSON_UUIDS[0]},verification,x\n"
    with pytest.raises(BatchError) as info:
        read_batch(text, BatchFormat.CSV)
    assert f"column {column}: misspelt call field, did you mean {field}?" in str(info.value)


def test_jsonl_keys_of_the_crms_own_are_ignored_misspelt_call_fields_refused_per_row() -> None:
    person = DEMO_PERSON_UUIDS[0]
    lines = [
        {"crmId": "J-1", "personUuid": person, "type": "winback", "region": "north",
         "crm": {"owner": "Ann"}},
        {"crmId": "J-2", "personUUID": person, "type": "winback"},
        {"crmId": "J-3", "person_uuid": person, "type": "winback", "requested_at": "x"},
        {"crmId": "J-4", "personUuid": person, "type": "robocall", "Notes": "hi"},
    ]  # fmt: skip
    batch = read_batch("\n".join(json.dumps(line) for line in lines), BatchFormat.JSONL, "crmId")
    assert [row.line for row in batch.good] == [1]
    good = batch.rows[0].call
    assert good is not None and good.uuid == derive_call_uuid("J-1")
    assert [(row.line, row.problems) for row in batch.bad] == [
        (2, ("personUUID: misspelt call field, did you mean personUuid?",)),
        (3, ("person_uuid: misspelt call field, did you mean personUuid?",
             "requested_at: misspelt call field, did you mean requestedAt?")),
        (4, ("Notes: misspelt call field, did you mean notes?",
             "type: Input should be 'verification', 'happy_call' or 'winback'")),
    ]  # fmt: skip
    assert [row.external_id for row in batch.rows] == ["J-1", "J-2", "J-3", "J-4"]


def test_results_carry_the_id_column_after_line_and_call_bad_rows_invalid() -> None:
    text = (
        "crmId,personUuid,type,region\n"
        f"K-1,{DEMO_PERSON_UUIDS[0]},verification,north\n"
        "K-2,not-a-uuid,verification,south\n"
        f"K-1,{DEMO_PERSON_UUIDS[0]},verification,north\n"
    )
    batch = read_batch(text, BatchFormat.CSV, id_from="crmId")
    rows = result_rows(batch_results(batch))
    buffer = io.StringIO()
    write_results(buffer, rows)
    written = list(csv.reader(io.StringIO(buffer.getvalue())))
    assert written[0] == ["line", "crmId", "callUuid", "workflowId", "outcome", "phase", "detail"]
    assert [(row["line"], row["crmId"], row["outcome"]) for row in rows] == [
        ("2", "K-1", "not started"), ("3", "K-2", "invalid"), ("4", "K-1", "duplicate"),
    ]  # fmt: skip
    assert rows[1]["detail"].startswith("personUuid: Input should be a valid UUID")
    assert rows[0]["callUuid"] == str(derive_call_uuid("K-1"))

    plain = result_rows(batch_results(read_batch(
        f"personUuid,type\n{DEMO_PERSON_UUIDS[0]},winback\n", BatchFormat.CSV)))  # fmt: skip
    assert list(plain[0]) == ["line", "callUuid", "workflowId", "outcome", "phase", "detail"]
    dotted = read_batch(
        'personUuid,type,externalMetadata\n'
        f'{DEMO_PERSON_UUIDS[0]},verification,"{{""referenceId"": ""R-9""}}"\n',
        BatchFormat.CSV, id_from="externalMetadata.referenceId",
    )  # fmt: skip
    assert result_rows(batch_results(dotted))[0]["externalMetadata.referenceId"] == "R-9"


# ── what a file holds: encodings, sizes, spreadsheet formulas (no Temporal) ──────────────────

PERSON = DEMO_PERSON_UUIDS[0]
# No server listens here: a command that got past validation would fail to connect instead.
NOWHERE = {"TEMPORAL_ADDRESS": "127.0.0.1:1", "TEMPORAL_NAMESPACE": "default"}
LATIN_1 = f"personUuid,type,notes\n{PERSON},verification,ok\n{PERSON},verification,Jos\xe9\n"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (LATIN_1.encode("latin-1"),
         "line 3 is not UTF-8: byte 0xe9 at column 54 (invalid continuation byte); "
         "save the file as UTF-8"),
        (f"personUuid,type\n{PERSON},winback\n".encode("utf-16"),
         "line 1 is not UTF-8: the file is UTF-16 text; save the file as UTF-8"),
        (f"personUuid,type\n{PERSON},winback\n".encode("utf-32"),
         "line 1 is not UTF-8: the file is UTF-32 text; save the file as UTF-8"),
        (f"personUuid,type\n{PERSON},winback\n".encode("utf-16-le"),
         "line 1 is not UTF-8 text: it holds NUL characters; save the file as UTF-8"),
    ],
    ids=["latin-1", "utf-16", "utf-32", "utf-16 without byte-order mark"],
)  # fmt: skip
def test_a_file_in_another_encoding_is_refused_naming_its_first_bad_line(
    data: bytes, message: str
) -> None:
    for name in ("calls.csv", "-"):
        with pytest.raises(NotUtf8) as refused:
            load_batch(io.BytesIO(data), name)
        assert str(refused.value) == message


def test_a_utf8_byte_order_mark_is_accepted_in_either_format() -> None:
    call = {"personUuid": PERSON, "type": "winback"}
    for text, name in (
        (f"personUuid,type\n{PERSON},winback\n", "calls.csv"),
        (json.dumps(call) + "\n", "calls.jsonl"),
        (json.dumps(call), "-"),
    ):
        batch = load_batch(io.BytesIO(codecs.BOM_UTF8 + text.encode()), name)
        assert [row.line for row in batch.good] == [2 if name.endswith(".csv") else 1]  # fmt: skip


def test_an_oversized_field_is_refused_naming_its_line_and_field() -> None:
    notes = "n" * (CALL_NOTES_MAX_LENGTH + 1)
    metadata = json.dumps({"referenceId": "r" * 256})
    buffer = io.StringIO()
    csv.writer(buffer).writerows([
        ["crmId", "personUuid", "type", "notes", "externalMetadata", "region"],
        ["C-1", PERSON, "verification", notes, "", "north"],
        ["C-2", PERSON, "verification", "ok", "", "h" * (CSV_CELL_MAX_LENGTH + 1)],
        ["C-3", PERSON, "verification", "ok", metadata, "north"],
        ["C-4", PERSON, "verification", "ok", "", "north"],
    ])  # fmt: skip
    text = buffer.getvalue()
    batch = read_batch(text, BatchFormat.CSV, id_from="crmId")
    assert [(row.line, row.problems) for row in batch.bad] == [
        (2, ("notes: String should have at most 10000 characters",)),
        (3, ("region: 131073 characters, more than a cell may hold (131072)",)),
        (4, ("externalMetadata.referenceId: String should have at most 255 characters",)),
    ]
    assert [(row.line, row.external_id) for row in batch.good] == [(5, "C-4")]

    lines = [
        {"personUuid": PERSON, "type": "winback", "notes": notes},
        {
            "personUuid": PERSON,
            "type": "verification",
            "externalMetadata": {"additionalProperties": {"k": "v" * JSON_MAX_LENGTH}},
        },
    ]
    jsonl = read_batch("\n".join(map(json.dumps, lines)), BatchFormat.JSONL)
    assert [(row.line, row.problems) for row in jsonl.bad] == [
        (1, ("notes: String should have at most 10000 characters",)),
        (2, ("externalMetadata.additionalProperties: must be at most 10000 characters as "
             "compact JSON, not 10008",)),
    ]  # fmt: skip


class _Endless(io.RawIOBase):
    """`head`, then `size` bytes of 'x' without a line break, then `tail`: made as read."""

    def __init__(self, head: bytes, size: int, tail: bytes) -> None:
        self._parts = [head, b"", tail]
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._parts[0]:
            chunk, self._parts[0] = self._parts[0][: len(view)], self._parts[0][len(view) :]
        elif self._left:
            chunk = b"x" * min(len(view), self._left)
            self._left -= len(chunk)
        else:
            chunk, self._parts[2] = self._parts[2][: len(view)], self._parts[2][len(view) :]
        view[: len(chunk)] = chunk
        return len(chunk)


def _peak_bytes(work: Callable[[], Any]) -> tuple[Any, int]:
    """What `work` returns, and the most memory it held at once."""
    tracemalloc.start()
    try:
        return work(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


ENDLESS = 64 * MAX_LINE_BYTES  # 64 MiB on one line


def test_an_endless_jsonl_line_is_a_bad_row_never_held_in_memory() -> None:
    good = json.dumps({"personUuid": PERSON, "type": "winback"}).encode()
    stream = io.BufferedReader(_Endless(b'{"notes": "', ENDLESS, b'"}\n' + good + b"\n"))
    batch, peak = _peak_bytes(lambda: load_batch(stream, "calls.jsonl"))
    assert [(row.line, row.problems) for row in batch.bad] == [
        (1, ("the line is longer than 1048576 bytes: not read",))
    ]
    assert [row.line for row in batch.good] == [2]
    assert peak < 4 * MAX_LINE_BYTES


def test_an_endless_csv_row_refuses_the_file_naming_its_line_and_column() -> None:
    head = f"personUuid,type,notes,region\n{PERSON},winback,".encode()
    stream = io.BufferedReader(_Endless(head, ENDLESS, b",north\n"))
    with pytest.raises(BatchError) as refused:
        _peak_bytes(lambda: load_batch(stream, "calls.csv"))
    assert str(refused.value) == "line 2 is longer than 1048576 bytes (in column notes)"

    unclosed = f'personUuid,type,notes\n{PERSON},winback,"open\n' + ("m" * 999 + "\n") * 1100
    with pytest.raises(BatchError) as open_quote:
        read_batch(unclosed, BatchFormat.CSV)
    assert str(open_quote.value).startswith(
        "the row from line 2 runs on past 1048576 bytes, to line "
    )
    assert str(open_quote.value).endswith("(in column notes): is a quote left open?")


def test_results_csv_defuses_cells_a_spreadsheet_would_run_and_json_stays_exact() -> None:
    ids = ['=HYPERLINK("http://example.com")', "+1", "-2", "@SUM(A1)", "\tx", "\rx", "plain",
           "a=b"]  # fmt: skip
    text = "\n".join(
        json.dumps({"=crm": crm_id, "personUuid": PERSON, "type": "winback"}) for crm_id in ids
    )
    rows = result_rows(batch_results(read_batch(text, BatchFormat.JSONL, id_from="=crm")))
    assert [row["=crm"] for row in rows] == ids  # as `--json` and the gateway give them
    buffer = io.StringIO()
    write_results(buffer, rows)
    written = list(csv.reader(io.StringIO(buffer.getvalue())))
    assert written[0][:3] == ["line", "'=crm", "callUuid"]
    assert [row[1] for row in written[1:]] == [
        "'=HYPERLINK(\"http://example.com\")", "'+1", "'-2", "'@SUM(A1)", "'\tx", "'\rx",
        "plain", "a=b",
    ]  # fmt: skip


def test_start_batch_prints_names_and_values_from_the_file_as_text(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    lines = [
        {"personUuid": PERSON, "type": "verification", "timezone": "[/x]"},
        {"personUuid": PERSON, "type": "verification", "policy": {"[/x]": 1, "[bold]b": 2}},
        {"personUuid": PERSON, "type": "verification", "timezone": "Europe/:smile:"},
    ]
    path.write_text("\n".join(map(json.dumps, lines)) + "\n")
    result = runner.invoke(app, ["start-batch", str(path)], env=NOWHERE)
    assert result.exit_code == 2, result.output
    assert "line 1: timezone: unknown IANA time zone '[/x]'" in result.stdout
    assert "line 2: policy.[/x]: unknown field; policy.[bold]b: unknown field" in result.stdout
    assert "line 3: timezone: unknown IANA time zone 'Europe/:smile:'" in result.stdout
    assert "refused the whole file: 3 invalid row(s)" in result.stderr


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (LATIN_1.encode("latin-1"), "line 3 is not UTF-8: byte 0xe9 at column 54"),
        (f"personUuid,type\n{PERSON},winback\n".encode("utf-16"),
         "line 1 is not UTF-8: the file is UTF-16 text"),
        (f"personUuid,type,region\n{PERSON},winback,{'h' * (CSV_CELL_MAX_LENGTH + 1)}\n".encode(),
         "line 2: region: 131073 characters, more than a cell may hold (131072)"),
    ],
    ids=["latin-1", "utf-16", "oversized cell"],
)  # fmt: skip
def test_start_batch_refuses_what_it_cannot_read_naming_the_line(
    tmp_path: Path, data: bytes, message: str
) -> None:
    path = tmp_path / "calls.csv"
    path.write_bytes(data)
    result = runner.invoke(app, ["start-batch", str(path)], env=NOWHERE)
    assert result.exit_code == 2, result.output
    assert message in result.output + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_start_file_in_another_encoding_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "call.json"
    path.write_bytes(f'{{"personUuid": "{PERSON}",\n "notes": "Jos\xe9"}}'.encode("latin-1"))
    result = runner.invoke(app, ["start", "--file", str(path), "--type", "winback"], env=NOWHERE)
    assert result.exit_code == 2, result.output
    assert f"invalid: {path}: line 2 is not UTF-8: byte 0xe9 at column 15" in result.stderr
    assert "nothing was sent to Temporal" in result.stderr


def test_start_batch_in_a_real_process_reports_encoding_and_writes_defused_results(
    tmp_path: Path,
) -> None:
    env = {**os.environ, **NOWHERE, "PYTHONPATH": str(REPO_ROOT)}
    starter = [sys.executable, "-m", "starter", "start-batch", "-", "--format", "csv"]
    latin = subprocess.run(
        [*starter, "--json"], input=LATIN_1.encode("latin-1"), capture_output=True, env=env,
        cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert latin.returncode == 2, latin.stderr
    answer = json.loads(latin.stdout)
    assert answer["kind"] == "invalid"
    assert answer["error"] == (
        "cannot read -: line 3 is not UTF-8: byte 0xe9 at column 54 (invalid continuation "
        "byte); save the file as UTF-8; nothing started"
    )
    # Every row bad: nothing starts, and the results say why, row by row.
    text = "crmId,personUuid,type\n=1+1,not-a-uuid,winback\n"
    refused = subprocess.run(
        [*starter, "--id-from", "crmId", "--results", "out.csv"], input=text.encode(),
        capture_output=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert b"Traceback" not in refused.stderr
    with (tmp_path / "out.csv").open(newline="") as file:
        [row] = list(csv.DictReader(file))
    assert row["crmId"] == "'=1+1" and row["outcome"] == "invalid"


# ── start-batch against Temporal ─────────────────────────────────────────────────────────────


async def test_start_batch_starts_good_rows_reports_bad_and_rerun_starts_nothing(
    call_worker: CallWorker, tmp_path: Path
) -> None:
    path = tmp_path / "calls.csv"
    uuids = csv_file(path, 60, bad_line=57)

    strict = await cli(call_worker, "start-batch", str(path), "--strict")
    assert strict.exit_code == 2  # bad input, nothing sent
    assert "line 57: personUuid: Input should be a valid UUID" in strict.stdout
    assert "refused the whole file: 1 invalid row(s) (--strict); nothing started" in strict.stderr
    assert await workflow_count(call_worker, 0) == 0

    results = tmp_path / "results.csv"
    first = await cli(call_worker, "start-batch", str(path), "--results", str(results),
                      "--concurrency", "8")  # fmt: skip
    assert first.exit_code == 1, first.output  # one row invalid, the others started
    assert "line 57: personUuid" in first.stdout
    rows = list(csv.DictReader(results.open()))
    assert len(rows) == 60
    by_line = {row["line"]: row for row in rows}
    assert by_line["57"]["outcome"] == "invalid" and "personUuid" in by_line["57"]["detail"]
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
                               "invalid": 1, "failed": 0}  # fmt: skip
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
    assert result.exit_code == 2
    assert "the file has no rows: nothing to start" in result.stderr
    assert await workflow_count(call_worker, 0) == 0


async def test_start_batch_with_own_columns_writes_results_a_crm_can_join_back(
    call_worker: CallWorker, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "crm-export.csv"
    path.write_text(
        "crmId,personUuid,type,region,notes\n"
        f"{tag}-1,{DEMO_PERSON_UUIDS[0]},verification,north,new donor\n"
        f"{tag}-2,{DEMO_PERSON_UUIDS[1]},winback,south,\n"
    )
    results = tmp_path / "results.csv"
    args = ("start-batch", str(path), "--id-from", "crmId", "--results", str(results))
    first = await cli(call_worker, *args)
    assert first.exit_code == 0, first.output
    with results.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["line", "crmId", "callUuid", "workflowId", "outcome", "phase",
                             "detail"]  # fmt: skip
    assert [(row["crmId"], row["callUuid"], row["outcome"]) for row in rows] == [
        (f"{tag}-{i}", str(derive_call_uuid(f"{tag}-{i}")), "started") for i in (1, 2)
    ]
    handle = call_worker.client.get_workflow_handle(rows[0]["workflowId"])
    sent = (await handle.fetch_history()).events[0].workflow_execution_started_event_attributes
    # Encrypted in the history; decrypted, it holds the call's fields only.
    stored = sent.input.payloads[0]
    assert stored.metadata["encoding"] == b"binary/encrypted"
    payload = json.loads(EncryptionCodec(RUN_KEYS).decrypt(stored).data)
    assert "region" not in payload and "crmId" not in payload
    assert payload["notes"] == "new donor"
    assert await workflow_count(call_worker, 2) == 2


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("personUUID,type\nx,winback\n", (),
         "column personUUID: misspelt call field, did you mean personUuid?"),
        ("personUuid,type\nx,winback\ny,happy_call\n", (),
         "refused the whole file: 2 invalid row(s) and no good row; nothing started"),
        (f"personUuid,type\n{DEMO_PERSON_UUIDS[0]},winback\n", ("--id-from", "crmId"),
         "--id-from crmId: the header has no such column"),
        (f"personUuid,type\n{DEMO_PERSON_UUIDS[0]},winback\n", ("--results", "no/such/dir.csv"),
         "--results no/such/dir.csv: no directory 'no/such'"),
    ],
)  # fmt: skip
async def test_start_batch_bad_input_exits_2_and_starts_nothing(
    call_worker: CallWorker, tmp_path: Path, text: str, args: tuple[str, ...], message: str
) -> None:
    path = tmp_path / "calls.csv"
    path.write_text(text)
    result = await cli(call_worker, "start-batch", str(path), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    as_json = await cli(call_worker, "start-batch", str(path), *args, "--json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["kind"] == "invalid"
    missing = await cli(call_worker, "start-batch", str(tmp_path / "absent.csv"))
    assert missing.exit_code == 2
    assert "cannot read" in missing.stderr
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
