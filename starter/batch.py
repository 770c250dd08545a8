"""Batches of calls from CSV or JSONL files (a CRM export), validated row by row before anything
is started.

CSV: the header holds `CallInput`'s camelCase field names plus any columns of the CRM's own; the
`policy` and `externalMetadata` cells hold JSON; empty cells are absent. JSONL: one JSON object
per line, as `POST /calls` takes it plus any keys of the CRM's own. Own columns and keys are not
sent to the workflow, but one that is evidently a misspelt call field (`personUUID`,
`requested_at`) is refused rather than silently dropped. Every row gets its call uuid before
starting — from its `uuid`, derived from an id column (`id_from`), or made at random — so that
duplicates inside the file are found and a re-run of the same file starts nothing twice (given a
uuid or an id column).
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TextIO

from starter.service import (
    DEFAULT_CONCURRENCY,
    CallService,
    InvalidInput,
    StartResult,
    StartStatus,
    derive_call_uuid,
    parse_call,
)
from workflows.messages import CallInput, CallPhase, workflow_id_for

# CSV columns whose cells are JSON objects rather than plain values.
JSON_COLUMNS: Final = frozenset({"policy", "externalMetadata"})
CALL_FIELDS: Final = tuple(f.alias or name for name, f in CallInput.model_fields.items())
# The fields a CRM fills in (`resume` is the workflow's own, for its continue-as-new).
_CRM_FIELDS: Final = tuple(name for name in CALL_FIELDS if name != "resume")

INVALID: Final = "invalid"
"""The outcome of a row that failed validation: nothing was sent for it."""
OUTCOMES: Final = (
    StartStatus.STARTED.value,
    StartStatus.ALREADY_STARTED.value,
    StartStatus.DUPLICATE.value,
    INVALID,
    StartStatus.FAILED.value,
)
"""Every outcome a row of a batch can have, in the order summaries count them."""


def _folded(name: str) -> str:
    return name.casefold().replace("_", "").replace("-", "")


_FOLDED_FIELDS: Final = {_folded(name): name for name in CALL_FIELDS}


def misspelt_field(name: str) -> str | None:
    """The call field that `name` evidently misspells, or None.

    A name is a misspelling when it equals a call field ignoring case, '_' and '-'
    (`personUUID`, `person_uuid`, `requested-at`) without being that field.
    """
    field_name = _FOLDED_FIELDS.get(_folded(name))
    return field_name if field_name is not None and field_name != name else None


def misspelling_problem(name: str, field_name: str) -> str:
    """The problem reported for a column or key that misspells a call field."""
    return f"{name}: misspelt call field, did you mean {field_name}?"


def _misspellings(names: Iterable[str], id_from: str | None) -> list[tuple[str, str]]:
    """The names that misspell a call field (the `id_from` one excepted), each with its field."""
    meant = [(name, misspelt_field(name)) for name in names if name != id_from]
    return [(name, field_name) for name, field_name in meant if field_name is not None]


def outcome_of(result: StartResult) -> str:
    """A started row's outcome; a start refused by local validation counts as invalid."""
    return INVALID if result.status is StartStatus.REFUSED else result.status.value


class BatchFormat(StrEnum):
    """How a batch file is written."""

    CSV = "csv"
    JSONL = "jsonl"


class BatchError(Exception):
    """The file as a whole cannot be used (no rows, misspelt columns, no id column)."""


@dataclass(frozen=True)
class BatchRow:
    """One row of the file and what validation made of it.

    Attributes:
        line: The row's line number in the file (1 is a CSV's header), or its index in a list.
        call: The validated call, its uuid set; None when the row is bad.
        problems: Why the row is bad (each naming its field); empty when it is good.
        duplicate_of: The line of an earlier row with the same call uuid, if any.
        external_id: The row's value of the `id_from` column or key, as given (also for a bad
            row, when it could be read); None when there is no `id_from` or no value.
    """

    line: int
    call: CallInput | None
    problems: tuple[str, ...] = ()
    duplicate_of: int | None = None
    external_id: str | None = None

    @property
    def is_good(self) -> bool:
        return self.call is not None and not self.problems and self.duplicate_of is None


@dataclass
class Batch:
    """Every row of a batch, good and bad, in file order.

    Attributes:
        rows: All rows.
        random_uuids: How many rows got a random call uuid (those would start again on a re-run).
        id_from: The column or key the call uuids were derived from, if any.
    """

    rows: list[BatchRow] = field(default_factory=list)
    random_uuids: int = 0
    id_from: str | None = None

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
        BatchError: when the file has no rows, its header has a column that misspells a call
            field, or a CSV header lacks the `id_from` column.
    """
    text = text.removeprefix("\ufeff")
    if fmt is BatchFormat.CSV:
        records = _csv_records(text, id_from)
    else:
        records = [_Record(line, value) for line, value in _jsonl_records(text)]
    if not records:
        raise BatchError("the file has no rows: nothing to start")
    return _validate(records, id_from)


@dataclass(frozen=True)
class _Record:
    """One raw row: its fields by name, or why they could not be read (`data` then partial)."""

    line: int
    data: dict[str, Any] | str
    problems: tuple[str, ...] = ()


def validate_records(
    records: Sequence[tuple[int, dict[str, Any] | str]], id_from: str | None = None
) -> Batch:
    """Validate raw records (`(line, object)`, or `(line, problem)` for unparsable ones).

    Keys of the record's own (not call fields) are allowed and not sent; a key that misspells a
    call field makes the row bad. Also used by the gateway's batch endpoint, with list indexes
    as line numbers.
    """
    return _validate([_Record(line, record) for line, record in records], id_from)


def _validate(records: Iterable[_Record], id_from: str | None) -> Batch:
    batch = Batch(id_from=id_from)
    seen: dict[uuid.UUID, int] = {}
    for record in records:
        line, data = record.line, record.data
        if isinstance(data, str):
            batch.rows.append(BatchRow(line, None, (data,)))
            continue
        external_id = _external_id(data, id_from)
        if record.problems:
            batch.rows.append(BatchRow(line, None, record.problems, external_id=external_id))
            continue
        try:
            call, random = _row_call(data, id_from, external_id)
        except InvalidInput as exc:
            batch.rows.append(BatchRow(line, None, tuple(exc.problems), external_id=external_id))
            continue
        assert call.uuid is not None
        batch.random_uuids += random
        first = seen.setdefault(call.uuid, line)
        duplicate_of = None if first == line else first
        batch.rows.append(BatchRow(line, call, (), duplicate_of, external_id))
    return batch


def _external_id(data: dict[str, Any], id_from: str | None) -> str | None:
    if not id_from:
        return None
    value = _lookup(data, id_from)
    if value is None or isinstance(value, dict | list) or not str(value).strip():
        return None
    return str(value)


def _row_call(
    record: dict[str, Any], id_from: str | None, external_id: str | None
) -> tuple[CallInput, bool]:
    """The validated call of one record, with its uuid; True when that uuid is random.

    Only the record's call fields are validated and sent; its other keys are the CRM's own.
    """
    misspelt = _misspellings(record, id_from)
    data = {name: value for name, value in record.items() if name in CALL_FIELDS}
    problems = [misspelling_problem(name, field_name) for name, field_name in misspelt]
    try:
        call = parse_call(data)
    except InvalidInput as exc:
        # A field reported missing because it was misspelt is said once, as the misspelling.
        meant = {f"{field_name}: required" for _, field_name in misspelt}
        problems += [problem for problem in exc.problems if problem not in meant]
    if problems:
        raise InvalidInput(problems)
    if call.uuid is not None:
        return call, False
    if id_from:
        if external_id is None:
            raise InvalidInput([f"{id_from}: no value to derive the call uuid from"])
        return call.model_copy(update={"uuid": derive_call_uuid(external_id)}), False
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


def _check_header(header: list[str], id_from: str | None) -> None:
    misspelt = [misspelling_problem(n, f) for n, f in _misspellings(header, id_from)]
    if misspelt:
        raise BatchError(
            f"column {'; column '.join(misspelt)} (the header spells the call's fields exactly: "
            f"{', '.join(_CRM_FIELDS)}; other columns are the CRM's own and are not sent)"
        )
    if id_from and id_from not in header and id_from.split(".")[0] not in header:
        raise BatchError(f"--id-from {id_from}: the header has no such column")


def _csv_records(text: str, id_from: str | None) -> list[_Record]:
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    if not header:
        return []
    reader.fieldnames = header
    _check_header(header, id_from)
    records: list[_Record] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            records.append(_Record(line, f"more cells than the header's {len(header)} columns"))
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
        records.append(_Record(line, record, tuple(problems)))
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
NOT_STARTED: Final = "not started"
"""The outcome of a good row of a file refused as a whole."""


@dataclass(frozen=True)
class RowResult:
    """What became of one row of a batch.

    Attributes:
        row: The row as validated.
        outcome: One of `OUTCOMES`, or `NOT_STARTED`.
        start: The answer to the row's start request; None when nothing was sent for it.
    """

    row: BatchRow
    outcome: str
    start: StartResult | None = None

    @property
    def call_uuid(self) -> uuid.UUID | None:
        return self.row.call.uuid if self.row.call else None

    @property
    def workflow_id(self) -> str | None:
        return workflow_id_for(self.call_uuid) if self.call_uuid else None

    @property
    def phase(self) -> CallPhase | None:
        return self.start.phase if self.start else None

    def detail(self, unit: str = "line") -> str:
        """Why the row ended as it did; `unit` is what rows are called (line, item)."""
        if self.start is not None:
            return self.start.detail
        if self.row.problems:
            return "; ".join(self.row.problems)
        if self.row.duplicate_of is not None:
            return f"same call as {unit} {self.row.duplicate_of}"
        return "the file was refused"


@dataclass(frozen=True)
class BatchResults:
    """Every row of a batch with its outcome, in file order."""

    batch: Batch
    rows: list[RowResult]

    @property
    def summary(self) -> dict[str, int]:
        """How many rows had each outcome (see `summarize`)."""
        return summarize(result.outcome for result in self.rows)

    @property
    def failed(self) -> list[StartResult]:
        """The starts Temporal did not take."""
        return [r.start for r in self.rows if r.start and r.start.status is StartStatus.FAILED]


def batch_results(
    batch: Batch, started: Iterable[tuple[BatchRow, StartResult]] = ()
) -> BatchResults:
    """Each row's outcome: started, already started, duplicate (of an earlier row), invalid (the
    row failed validation: nothing was sent for it), failed (Temporal did not take the start),
    and "not started" for good rows of a file refused as a whole.

    Args:
        batch: The validated batch.
        started: The good rows with what became of them (none when the file was refused).
    """
    answers = {row.line: result for row, result in started}
    rows = []
    for row in batch.rows:
        answer = answers.get(row.line)
        if answer is not None:
            outcome = outcome_of(answer)
        elif row.problems:
            outcome = INVALID
        elif row.duplicate_of is not None:
            outcome = StartStatus.DUPLICATE.value
        else:
            outcome = NOT_STARTED
        rows.append(RowResult(row, outcome, answer))
    return BatchResults(batch, rows)


async def start_rows(
    service: CallService,
    batch: Batch,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_result: Callable[[CallInput, StartResult], None] | None = None,
) -> BatchResults:
    """Start the batch's good rows (a duplicate only once) and tell every row's outcome."""
    good = batch.good
    started = await service.start_many(
        [row.call for row in good if row.call is not None], concurrency, on_result
    )
    return batch_results(batch, zip(good, started, strict=True))


def result_columns(id_from: str | None) -> tuple[str, ...]:
    """The results CSV's columns: with an id column, its name follows `line` (for a join)."""
    if not id_from or id_from in RESULT_COLUMNS:
        return RESULT_COLUMNS
    return (RESULT_COLUMNS[0], id_from, *RESULT_COLUMNS[1:])


def result_rows(results: BatchResults) -> list[dict[str, str]]:
    """One results CSV line per row of the file: row (and its id) → workflow id → outcome."""
    id_from = results.batch.id_from
    columns = result_columns(id_from)
    lines = []
    for result in results.rows:
        values = {
            "line": str(result.row.line),
            "callUuid": str(result.call_uuid) if result.call_uuid else "",
            "workflowId": result.workflow_id or "",
            "outcome": result.outcome,
            "phase": result.phase.value if result.phase else "",
            "detail": result.detail("line"),
        }
        if id_from:
            values.setdefault(id_from, result.row.external_id or "")
        lines.append({column: values[column] for column in columns})
    return lines


def summarize(outcomes: Iterable[str]) -> dict[str, int]:
    """How many rows had each of `OUTCOMES` (every one present, zero or not)."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for outcome in outcomes:
        if outcome in counts:
            counts[outcome] += 1
    return counts


def write_results(target: TextIO, rows: list[dict[str, str]]) -> None:
    """Write `result_rows` as CSV to `target` (a file opened with `newline=""`, or stdout)."""
    writer = csv.DictWriter(target, fieldnames=list(rows[0]) if rows else RESULT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
