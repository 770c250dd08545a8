"""Batches of calls from CSV or JSONL files (a CRM export), validated row by row before anything
is started.

CSV: the header holds `CallInput`'s camelCase field names; the `policy` and `externalMetadata`
cells hold JSON; empty cells are absent. JSONL: one JSON object per line, as `POST /calls` takes
it. Every row gets its call uuid before starting — from its `uuid`, derived from an id column
(`id_from`), or made at random — so that duplicates inside the file are found and a re-run of
the same file starts nothing twice (given a uuid or an id column).
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TextIO

from starter.calls import InvalidInput, StartResult, derive_call_uuid, parse_call
from workflows.messages import CallInput, workflow_id_for

# CSV columns whose cells are JSON objects rather than plain values.
JSON_COLUMNS: Final = frozenset({"policy", "externalMetadata"})
CALL_FIELDS: Final = tuple(f.alias or name for name, f in CallInput.model_fields.items())


class BatchFormat(StrEnum):
    """How a batch file is written."""

    CSV = "csv"
    JSONL = "jsonl"


class BatchError(Exception):
    """The file as a whole cannot be used (empty, unreadable, unknown columns)."""


@dataclass(frozen=True)
class BatchRow:
    """One row of the file and what validation made of it.

    Attributes:
        line: The row's line number in the file (1 is a CSV's header), or its index in a list.
        call: The validated call, its uuid set; None when the row is bad.
        problems: Why the row is bad (each naming its field); empty when it is good.
        duplicate_of: The line of an earlier row with the same call uuid, if any.
    """

    line: int
    call: CallInput | None
    problems: tuple[str, ...] = ()
    duplicate_of: int | None = None

    @property
    def is_good(self) -> bool:
        return self.call is not None and not self.problems and self.duplicate_of is None


@dataclass
class Batch:
    """Every row of a batch, good and bad, in file order.

    Attributes:
        rows: All rows.
        random_uuids: How many rows got a random call uuid (those would start again on a re-run).
    """

    rows: list[BatchRow] = field(default_factory=list)
    random_uuids: int = 0

    @property
    def good(self) -> list[BatchRow]:
        return [row for row in self.rows if row.is_good]

    @property
    def bad(self) -> list[BatchRow]:
        return [row for row in self.rows if row.problems]

    @property
    def duplicates(self) -> list[BatchRow]:
        return [row for row in self.rows if row.duplicate_of is not None]


def detect_format(
    name: str, explicit: BatchFormat | None = None, text: str | None = None
) -> BatchFormat:
    """The format of a batch file: `explicit`, else from the file name's extension.

    Standard input (`name` '-') has no extension: given its `text`, it is JSONL when the first
    thing in it is a JSON object, else CSV (a header line never opens with '{').

    Raises:
        BatchError: when nothing says (a name without a known extension).
    """
    if explicit is not None:
        return explicit
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        return BatchFormat.CSV
    if suffix in (".jsonl", ".ndjson"):
        return BatchFormat.JSONL
    if name == "-" and text is not None:
        opening = text.lstrip("\ufeff \t\r\n")[:1]
        return BatchFormat.JSONL if opening == "{" else BatchFormat.CSV
    raise BatchError(
        f"cannot tell the format of {name!r}: name it .csv or .jsonl, or pass --format"
    )


def read_batch(text: str, fmt: BatchFormat, id_from: str | None = None) -> Batch:
    """Parse and validate every row of a batch file.

    Args:
        text: The file's content.
        fmt: CSV or JSONL.
        id_from: A column (CSV) or key (JSONL) holding an external id to derive the call uuid
            from; a dotted path reaches into a JSON cell (`externalMetadata.referenceId`).

    Returns:
        Every row with its verdict; bad rows do not stop the others from being validated.

    Raises:
        BatchError: when the file has no rows or its header names unknown columns.
    """
    text = text.removeprefix("\ufeff")
    records = _csv_records(text, id_from) if fmt is BatchFormat.CSV else _jsonl_records(text)
    if not records:
        raise BatchError("the file has no rows: nothing to start")
    return validate_records(records, id_from)


def validate_records(
    records: Sequence[tuple[int, dict[str, Any] | str]], id_from: str | None = None
) -> Batch:
    """Validate raw records (`(line, object)`, or `(line, problem)` for unparsable ones).

    Also used by the gateway's batch endpoint, with list indexes as line numbers.
    """
    batch = Batch()
    seen: dict[uuid.UUID, int] = {}
    for line, record in records:
        if isinstance(record, str):
            batch.rows.append(BatchRow(line, None, (record,)))
            continue
        try:
            call, random = _row_call(record, id_from)
        except InvalidInput as exc:
            batch.rows.append(BatchRow(line, None, tuple(exc.problems)))
            continue
        assert call.uuid is not None
        batch.random_uuids += random
        first = seen.setdefault(call.uuid, line)
        batch.rows.append(BatchRow(line, call, duplicate_of=None if first == line else first))
    return batch


def _row_call(record: dict[str, Any], id_from: str | None) -> tuple[CallInput, bool]:
    """The validated call of one record, with its uuid; True when that uuid is random."""
    data = dict(record)
    external_id = _lookup(data, id_from) if id_from else None
    if id_from and "." not in id_from and id_from not in CALL_FIELDS:
        data.pop(id_from, None)  # a CRM column of its own, not a call field
    call = parse_call(data)
    if call.uuid is not None:
        return call, False
    if id_from:
        if external_id is None or not str(external_id).strip():
            raise InvalidInput([f"{id_from}: no value to derive the call uuid from"])
        return call.model_copy(update={"uuid": derive_call_uuid(str(external_id))}), False
    return call.model_copy(update={"uuid": uuid.uuid4()}), True


def _lookup(data: dict[str, Any], path: str) -> Any:
    if path in data:
        return data[path]
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _csv_records(text: str, id_from: str | None) -> list[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    if not header:
        return []
    reader.fieldnames = header
    allowed = set(CALL_FIELDS) | ({id_from} if id_from else set())
    unknown = [name for name in header if name and name not in allowed]
    if unknown:
        raise BatchError(
            f"unknown column(s) {', '.join(unknown)}: the header holds the call's field names "
            f"({', '.join(CALL_FIELDS)}), plus the --id-from column"
        )
    records: list[tuple[int, dict[str, Any] | str]] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            records.append((line, f"more cells than the header's {len(header)} columns"))
            continue
        record: dict[str, Any] = {}
        problems: list[str] = []
        for name, cell in row.items():
            value = (cell or "").strip()
            if not name or not value:
                continue  # empty cells are absent fields
            if name in JSON_COLUMNS:
                try:
                    record[name] = json.loads(value)
                except json.JSONDecodeError as exc:
                    problems.append(f"{name}: not valid JSON ({exc.msg})")
                    continue
            else:
                record[name] = value
        records.append((line, "; ".join(problems) if problems else record))
    return records


def _jsonl_records(text: str) -> list[tuple[int, dict[str, Any] | str]]:
    records: list[tuple[int, dict[str, Any] | str]] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            records.append((line, f"not valid JSON ({exc.msg})"))
            continue
        if not isinstance(value, dict):
            records.append((line, "a line must hold one JSON object"))
            continue
        records.append((line, value))
    return records


RESULT_COLUMNS: Final = ("line", "callUuid", "workflowId", "outcome", "phase", "detail")


def result_rows(
    batch: Batch, started: Iterable[tuple[BatchRow, StartResult]]
) -> list[dict[str, str]]:
    """One result line per row of the file: row → workflow id → outcome.

    Args:
        batch: The validated batch.
        started: The good rows with what became of them.
    """
    outcomes = {row.line: result for row, result in started}
    lines = []
    for row in batch.rows:
        call_uuid = row.call.uuid if row.call else None
        result = outcomes.get(row.line)
        if result is not None:
            outcome, phase, detail = (
                result.status.value,
                result.phase.value if result.phase else "",
                result.detail,
            )
        elif row.problems:
            outcome, phase, detail = "refused", "", "; ".join(row.problems)
        elif row.duplicate_of is not None:
            outcome, phase, detail = "duplicate", "", f"same call as line {row.duplicate_of}"
        else:
            outcome, phase, detail = "not started", "", "the file was refused"
        lines.append(
            {
                "line": str(row.line),
                "callUuid": str(call_uuid) if call_uuid else "",
                "workflowId": workflow_id_for(call_uuid) if call_uuid else "",
                "outcome": outcome,
                "phase": phase,
                "detail": detail,
            }
        )
    return lines


def write_results(target: TextIO, rows: list[dict[str, str]]) -> None:
    """Write `result_rows` as CSV to `target` (a file opened with `newline=""`, or stdout)."""
    writer = csv.DictWriter(target, fieldnames=RESULT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
