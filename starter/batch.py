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

A file is UTF-8 text (a byte-order mark is fine), read one line at a time and no line further
than `MAX_LINE_BYTES`: another encoding is refused naming its first bad line, an oversized field
naming its line and field. The results CSV is written to be opened in a spreadsheet: no cell of
it can run as a formula.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, Final, TextIO

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

    Standard input (`name` '-') has no extension: given its `text` (its first line will do),
    it is JSONL when the first thing in it is a JSON object, else CSV (a header line never opens
    with '{').

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
    """Parse and validate every row of a batch file given as text (see `load_batch`)."""
    return _read(_Lines(io.BytesIO(text.encode("utf-8", "surrogatepass"))), fmt, id_from)


def load_batch(
    stream: BinaryIO, name: str, fmt: BatchFormat | None = None, id_from: str | None = None
) -> Batch:
    """Read, parse and validate every row of a batch file, one line at a time.

    Args:
        stream: The file's bytes (UTF-8, with or without a byte-order mark).
        name: The file's name, '-' for standard input (its format is then told by its first
            line when `fmt` is None).
        fmt: CSV or JSONL; None tells it by `name` (see `detect_format`).
        id_from: A column (CSV) or key (JSONL) holding an external id to derive the call uuid
            from; a dotted path reaches into a JSON cell (`externalMetadata.referenceId`).

    Returns:
        Every row with its verdict; bad rows do not stop the others from being validated. A
        JSONL line longer than `MAX_LINE_BYTES` is a bad row, never read whole.

    Raises:
        BatchError: when the file has no rows, its header has a column that misspells a call
            field, a CSV header lacks the `id_from` column, a CSV row is longer than
            `MAX_LINE_BYTES` or is not CSV at all.
        NotUtf8: naming the first line that is not UTF-8 text.
    """
    lines = _Lines(stream)
    return _read(lines, detect_format(name, fmt, lines.opening()), id_from)


def _read(lines: _Lines, fmt: BatchFormat, id_from: str | None) -> Batch:
    lines.opening()  # passes over the blank lines a file may open with
    if fmt is BatchFormat.CSV:
        records = _csv_records(lines, id_from)
    else:
        records = _jsonl_records(lines)
    if not records:
        raise BatchError("the file has no rows: nothing to start")
    return _validate(records, id_from)


MAX_LINE_BYTES: Final = 1 << 20
"""The longest line, and the longest CSV row, a batch file may hold (1 MiB, UTF-8 bytes).

A row holds one call: with every field at its limit that is some 35,000 characters (140 KiB
at four bytes each), so no export comes near. A file is read one bounded line at a time, so
that one without line breaks (or with an unclosed quote) is refused instead of held whole.
"""
CSV_CELL_MAX_LENGTH: Final = 131_072
"""The longest CSV cell, in characters: the `csv` module's own default limit, which is higher
than any call field's. Checked here rather than by the module, so that a refusal names the
column."""

# Byte-order marks of the encodings a spreadsheet saves "Unicode text" in, for a clear refusal.
_FOREIGN_BOMS: Final = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


class NotUtf8(BatchError):
    """A file (or one of its lines) is not UTF-8 text; the message names the line."""


def decode_text(raw: bytes, first_line: int = 1) -> str:
    """`raw` (the whole of a file, or one of its lines) as UTF-8 text.

    A UTF-8 byte-order mark opening a file is dropped.

    Args:
        raw: The bytes.
        first_line: The line `raw` begins on; 1 is the start of the file.

    Raises:
        NotUtf8: naming the line (and the column) of the first byte that is not UTF-8, or the
            file's foreign byte-order mark, or a NUL character (what UTF-16 text without a
            byte-order mark looks like as UTF-8).
    """
    save = "save the file as UTF-8"
    if first_line == 1:
        for mark, encoding in _FOREIGN_BOMS:
            if raw.startswith(mark):
                raise NotUtf8(f"line 1 is not UTF-8: the file is {encoding} text; {save}")
        raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        begins = raw.rfind(b"\n", 0, exc.start) + 1
        line = first_line + raw.count(b"\n", 0, exc.start)
        column = len(raw[begins : exc.start].decode("utf-8")) + 1
        raise NotUtf8(
            f"line {line} is not UTF-8: byte 0x{raw[exc.start]:02x} at column {column} "
            f"({exc.reason}); {save}"
        ) from None
    if "\0" in text:
        line = first_line + text.count("\n", 0, text.index("\0"))
        raise NotUtf8(f"line {line} is not UTF-8 text: it holds NUL characters; {save}")
    return text


@dataclass(frozen=True)
class _Line:
    """One line of a file: its number, its text (with its line break) and its size in bytes; or
    the first `MAX_LINE_BYTES` of it when it is longer (`too_long`: the rest was skipped)."""

    number: int
    text: str
    size: int
    too_long: bool = False


class _Lines:
    """The lines of a file, read and decoded one at a time, none read further than its bound."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._number = 0
        self._ahead: _Line | None = None

    def opening(self) -> str:
        """The first line that is not blank ('' when none), read ahead: it is still to come.

        The blank lines before it are passed over: they hold no row in either format.
        """
        if self._ahead is None and self._number == 0:
            while (line := self._next()) is not None:
                if line.too_long or line.text.strip():
                    self._ahead = line
                    break
        return self._ahead.text if self._ahead is not None else ""

    def __iter__(self) -> Iterator[_Line]:
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            yield ahead
        while (line := self._next()) is not None:
            yield line

    def _next(self) -> _Line | None:
        raw = self._stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return None
        self._number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := self._stream.readline(64 * 1024)) and not rest.endswith(b"\n"):
                pass  # skipped: the line is refused, so holding it would only cost memory
            # Kept as far as it was read, to tell where it ran out of bounds.
            text = raw[:MAX_LINE_BYTES].decode("utf-8", "ignore")
            return _Line(self._number, text, MAX_LINE_BYTES, too_long=True)
        return _Line(self._number, decode_text(raw, self._number), len(raw))


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


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    """The `csv` module's (process-wide) field limit raised while a file is read: rows are
    bounded by `_RowFeed`, cells by `CSV_CELL_MAX_LENGTH` with a refusal naming the column."""
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


class _RowFeed:
    """The lines of a CSV file as its reader takes them, each row bounded by `MAX_LINE_BYTES`.

    Knows the line the row being read began on, and refuses a row that grows past the bound
    (a line without a break, or a quote left open) before it is held whole.
    """

    def __init__(self, lines: Iterable[_Line]) -> None:
        self._lines = iter(lines)
        self.header: list[str] = []
        self.first = 0  # the line the row being read began on
        self._row: list[str] = []  # its text so far
        self._size = 0  # and its size in bytes

    def next_row(self) -> None:
        """The reader is about to read a new row."""
        self.first, self._row, self._size = 0, [], 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.first = self.first or line.number
        self._size += line.size
        if line.too_long or self._size > MAX_LINE_BYTES:
            # What the bound let in is enough to tell the column (and within the field limit).
            where = self._column(("".join(self._row) + line.text)[:MAX_LINE_BYTES])
            if line.number == self.first:
                raise BatchError(f"line {line.number} is longer than {MAX_LINE_BYTES} bytes{where}")
            raise BatchError(
                f"the row from line {self.first} runs on past {MAX_LINE_BYTES} bytes, to line "
                f"{line.number}{where}: is a quote left open?"
            )
        self._row.append(line.text)
        return line.text

    def _column(self, text: str) -> str:
        """Where the row's text runs out of bounds: ' (in column <name>)' when known."""
        with contextlib.suppress(csv.Error, StopIteration):
            cells = next(csv.reader([text]))
            if 0 < len(cells) <= len(self.header):
                return f" (in column {self.header[len(cells) - 1]})"
        return ""


def _csv_records(lines: Iterable[_Line], id_from: str | None) -> list[_Record]:
    feed = _RowFeed(lines)
    with _csv_field_limit(MAX_LINE_BYTES):
        reader = csv.reader(feed)
        header = [name.strip() for name in _next_row(reader, feed) or []]
        if not header:
            return []
        feed.header = header
        _check_header(header, id_from)
        records: list[_Record] = []
        while (row := _next_row(reader, feed)) is not None:
            if row:  # a blank line holds no row
                records.append(_csv_record(feed.first, header, row))
    return records


def _next_row(reader: Iterator[list[str]], feed: _RowFeed) -> list[str] | None:
    feed.next_row()
    try:
        return next(reader, None)
    except csv.Error as exc:
        raise BatchError(f"line {feed.first} is not valid CSV: {exc}") from None


def _csv_record(line: int, header: list[str], row: list[str]) -> _Record:
    if len(row) > len(header):
        return _Record(line, f"more cells than the header's {len(header)} columns")
    record: dict[str, Any] = {}
    problems: list[str] = []
    for name, cell in zip(header, row, strict=False):
        value = cell.strip()
        if not name or not value:
            continue  # empty cells are absent fields
        if len(value) > CSV_CELL_MAX_LENGTH:
            problems.append(
                f"{name}: {len(value)} characters, more than a cell may hold "
                f"({CSV_CELL_MAX_LENGTH})"
            )
        elif name in JSON_COLUMNS:
            try:
                record[name] = _json(value)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        else:
            record[name] = value
    return _Record(line, record, tuple(problems))


def _json(text: str) -> Any:
    """A JSON value, or ValueError saying why `text` is none."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    except RecursionError:  # not a ValueError: it would escape as a crash
        raise ValueError("not valid JSON (nested too deeply)") from None


def _jsonl_records(lines: Iterable[_Line]) -> list[_Record]:
    records: list[_Record] = []
    for line in lines:
        if line.too_long:
            problem = f"the line is longer than {MAX_LINE_BYTES} bytes: not read"
            records.append(_Record(line.number, problem))
            continue
        if not line.text.strip():
            continue
        try:
            value = _json(line.text)
        except ValueError as exc:
            records.append(_Record(line.number, str(exc)))
            continue
        if not isinstance(value, dict):
            records.append(_Record(line.number, "a line must hold one JSON object"))
            continue
        records.append(_Record(line.number, value))
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


# What opens a formula in a spreadsheet (OWASP's list for CSV injection): a cell opening with one
# would be run, not shown, when the results file is opened in Excel, LibreOffice or Sheets.
_FORMULA_OPENERS: Final = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: str) -> str:
    """`value` as a spreadsheet shows it and never runs it: with a leading `'` when it opens with
    a formula character (the spreadsheet hides the quote)."""
    return f"'{value}" if value.startswith(_FORMULA_OPENERS) else value


def write_results(target: TextIO, rows: list[dict[str, str]]) -> None:
    """Write `result_rows` as CSV to `target` (a file opened with `newline=""`, or stdout).

    Every cell, the header's too, goes through `spreadsheet_cell`: ids and details come from the
    batch file, and the results file is made to be opened in a spreadsheet.
    """
    columns = list(rows[0]) if rows else list(RESULT_COLUMNS)
    writer = csv.writer(target)
    writer.writerow([spreadsheet_cell(name) for name in columns])
    writer.writerows([spreadsheet_cell(row[name]) for name in columns] for row in rows)
