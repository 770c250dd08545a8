"""`python -m starter` (also `tapraise-calls`): start calls, report on them, drive them, list them.

Thin by design: each command turns its options into the contract's camelCase JSON, lets
`starter.service` validate and do the work, and prints the result (rich for people, `--json` for
scripts). Exit codes: 0 done, 1 refused or failed, 2 bad usage or input. An action's
`--request-id` becomes the update's id, so that a command retried with it changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Final, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from temporalio.client import Client

from devstack.options import stack_argv, stack_options
from starter.batch import (
    INVALID,
    MAX_LINE_BYTES,
    Batch,
    BatchError,
    BatchFormat,
    BatchResults,
    NotUtf8,
    batch_results,
    decode_text,
    load_batch,
    result_rows,
    start_rows,
    write_results,
)
from starter.connect import connect, load_env_file
from starter.follow import FollowerService
from starter.service import (
    DEFAULT_CONCURRENCY,
    DEFAULT_LIST_LIMIT,
    REQUEST_ID_MAX_LENGTH,
    REQUEST_ID_OPTION,
    CallsError,
    CallService,
    CallSummary,
    InvalidInput,
    ListFilters,
    StartResult,
    StartStatus,
    model_json,
    parse_action,
    parse_call,
    parse_call_uuid,
    parse_request_id,
)
from starter.settings import StarterSettings
from tapraise.models import CallType, format_timestamp
from workflows.following import (
    DEFAULT_INTERVAL,
    PAUSE,
    RESUME,
    RUN_NOW,
    FollowerStatus,
    FollowScope,
)
from workflows.messages import (
    ATTEMPT,
    CALL_NOTES_MAX_LENGTH,
    CANCEL,
    COMPLETE,
    NOTE_MAX_LENGTH,
    RESCHEDULE,
    TASK_QUEUE,
    CallInput,
    CallState,
    workflow_id_for,
)
from workflows.schedule import format_local

EXIT_FAILED = 1
EXIT_USAGE = 2

T = TypeVar("T")

app = typer.Typer(
    name="tapraise-calls",
    help="Start, drive and inspect TapRaise donor calls (one Temporal workflow per call).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@dataclass(frozen=True)
class Connection:
    """Where the commands send their requests."""

    task_queue: str
    address: str | None
    namespace: str | None


@app.callback()
def _options(
    ctx: typer.Context,
    task_queue: Annotated[
        str | None,
        typer.Option(
            "--task-queue",
            help=f"Task queue new calls run on (default: CALLS_TASK_QUEUE or {TASK_QUEUE}).",
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="Temporal host:port (default: TEMPORAL_ADDRESS or localhost:7233)."
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace", help="Temporal namespace (default: TEMPORAL_NAMESPACE or default)."
        ),
    ] = None,
) -> None:
    settings = StarterSettings(task_queue=task_queue) if task_queue else StarterSettings()
    ctx.obj = Connection(task_queue=settings.task_queue, address=address, namespace=namespace)


# ── plumbing ─────────────────────────────────────────────────────────────────────────────────


def _print_json(value: Any) -> None:
    # Plain stdout, not rich: scripts must get the JSON unwrapped and uncoloured.
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


# Every line for people is a rich `Text`, never a markup string: names and values from files,
# options and the workflow are shown as they are (a `[/x]` in a batch file would otherwise be
# read as a closing tag, and a `:smile:` as an emoji code). A plain string is plain text here.
_Part = str | tuple[str, str]
"""A piece of a line for people: plain text, or (text, style)."""


def _text(*parts: _Part) -> Text:
    """One line for people from plain text and (text, style) pieces."""
    return Text.assemble(*parts)


def _show(as_json: bool, data: Any, human: RenderableType, soft_wrap: bool = True) -> None:
    """The answer: `data` as JSON for scripts, else `human` for people."""
    if as_json:
        _print_json(data)
    else:
        out.print(human, soft_wrap=soft_wrap)


def _fail(message: str, as_json: bool, kind: str = "failed", **extra: Any) -> NoReturn:
    """End the command: exit 2 when the input is at fault (kind "invalid"), else 1."""
    if as_json:
        _print_json({"error": message, "kind": kind, **extra})
    else:
        err.print(_text(("error:", "red"), " ", message), soft_wrap=True)
    raise typer.Exit(EXIT_USAGE if kind == "invalid" else EXIT_FAILED)


def _invalid(exc: InvalidInput, as_json: bool) -> NoReturn:
    if not as_json:
        for problem in exc.problems:
            err.print(_text(("invalid:", "red"), " ", problem), soft_wrap=True)
        err.print("nothing was sent to Temporal")
        raise typer.Exit(EXIT_USAGE)
    _fail(str(exc), True, kind="invalid", problems=exc.problems)


def _run(ctx: typer.Context, work: Callable[[CallService], Awaitable[T]], as_json: bool) -> T:
    """Connect, run `work` against the calls service, and turn failures into exit codes."""
    conn: Connection = ctx.obj
    return _connected(ctx, lambda client: work(CallService(client, conn.task_queue)), as_json)


def _connected(ctx: typer.Context, work: Callable[[Client], Awaitable[T]], as_json: bool) -> T:
    """Connect, run `work` with the client, and turn failures into exit codes."""
    conn: Connection = ctx.obj

    async def go() -> T:
        return await work(await connect(conn.address, conn.namespace))

    try:
        return asyncio.run(go())
    except InvalidInput as exc:
        _invalid(exc, as_json)
    except CallsError as exc:
        _fail(str(exc), as_json, kind=exc.kind)
    except RuntimeError as exc:  # `connect()` explains an unreachable server this way
        _fail(str(exc), as_json, kind="unavailable")


def _load_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput([f"{what}: not valid JSON ({exc.msg} at line {exc.lineno})"]) from None
    except RecursionError:  # not a ValueError: it would escape as a crash
        raise InvalidInput([f"{what}: not valid JSON (nested too deeply)"]) from None
    if not isinstance(value, dict):
        raise InvalidInput([f"{what}: must be a JSON object"])
    return value


_RELATIVE = re.compile(r"(?P<sign>[+-])(?P<parts>(?:\d+[dhms])+)")
_UNITS: Final = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_WHEN = "ISO 8601 with offset, or from now: +2h, -10m, +1d12h"


def _moment(text: str | None) -> str | None:
    """A time option: ISO 8601 as given, or relative to now (`+2h`, `-10m`) made absolute (UTC).

    The relative form saves a shell's date arithmetic; anything else is checked where the
    message is validated, which names the field.
    """
    if text is None:
        return None
    relative = _RELATIVE.fullmatch(text.strip())
    if relative is None:
        return text
    delta = sum(
        (timedelta(**{_UNITS[unit]: int(n)}) for n, unit in re.findall(r"(\d+)([dhms])", text)),
        timedelta(),
    )
    return format_timestamp(datetime.now(UTC) + (delta if relative["sign"] == "+" else -delta))


def _given(**fields: Any) -> dict[str, Any]:
    """The fields that were given (not None), by their camelCase names."""
    return {key: value for key, value in fields.items() if value is not None}


def _write_results(name: str, rows: list[dict[str, str]]) -> None:
    """The batch's results CSV to a file, or to standard output when `name` is '-'."""
    if name == "-":
        write_results(sys.stdout, rows)
        sys.stdout.flush()
        return
    with Path(name).open("w", newline="", encoding="utf-8") as target:
        write_results(target, rows)


@contextlib.contextmanager
def _opened(name: str) -> Iterator[BinaryIO]:
    """A file's bytes, or standard input's when `name` is '-' (left open)."""
    if name == "-":
        yield sys.stdin.buffer
        return
    with Path(name).open("rb") as stream:
        yield stream


def _read_call_text(name: str) -> str:
    """The text of a call's JSON file, or of standard input when `name` is '-'.

    A call is one JSON object: it is read as far as a batch file's longest line, no further.

    Raises:
        InvalidInput: naming the file and what is wrong with it: too long, or not UTF-8 (naming
            the line).
        OSError: when the file cannot be read.
    """
    what = "stdin" if name == "-" else name
    with _opened(name) as stream:
        raw = stream.read(MAX_LINE_BYTES + 1)
    if len(raw) > MAX_LINE_BYTES:
        raise InvalidInput([f"{what}: longer than {MAX_LINE_BYTES} bytes, too long for a call"])
    try:
        return decode_text(raw)
    except NotUtf8 as exc:
        raise InvalidInput([f"{what}: {exc}"]) from None


# ── start ────────────────────────────────────────────────────────────────────────────────────


def _start_line(result: StartResult) -> Text:
    phase = f" (phase {result.phase.value})" if result.phase else ""
    if result.status is StartStatus.STARTED:
        return _text(("started", "green"), f" {result.workflow_id}")
    return _text(("already started", "yellow"), f" {result.workflow_id}{phase}")


# `start` reads the call as JSON from standard input or a file, or takes it from its options.
_CallSource = Annotated[
    str | None, typer.Argument(metavar="-", help="'-' reads the call as a JSON object from stdin.")
]
_CallFile = Annotated[
    str | None,
    typer.Option(
        "--file", "-f", metavar="FILE", help="Read the call from a JSON file ('-' = stdin)."
    ),
]


@app.command(
    epilog="Example: python -m starter start --person 0b0f…-uuid --type verification "
    '--org 3c1e…-uuid --notes \'new donor\'  ·  echo \'{"personUuid": "…", "type": '
    '"winback"}\' | python -m starter start -'
)
def start(
    ctx: typer.Context,
    source: _CallSource = None,
    file: _CallFile = None,
    person: Annotated[str | None, typer.Option("--person", help="personUuid of the donor.")] = None,
    call_type: Annotated[
        str | None, typer.Option("--type", help="verification, happy_call or winback.")
    ] = None,
    call_uuid: Annotated[
        str | None, typer.Option("--uuid", help="The call's uuid (version 4); made when absent.")
    ] = None,
    requested_at: Annotated[
        str | None,
        typer.Option("--requested-at", help=f"requestedAt: {_WHEN}."),
    ] = None,
    org: Annotated[str | None, typer.Option("--org", help="callingOrganizationUuid.")] = None,
    related_case: Annotated[
        str | None, typer.Option("--related-case", help="relatedCaseUuid.")
    ] = None,
    requested_by: Annotated[
        str | None, typer.Option("--requested-by", help="requestedByUserUuid.")
    ] = None,
    notes: Annotated[
        str | None,
        typer.Option(
            "--notes", help=f"Free text for the agent (at most {CALL_NOTES_MAX_LENGTH} characters)."
        ),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option("--timezone", help="The donor's IANA time zone (default Europe/Amsterdam)."),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option("--policy", help="Policy overrides as JSON, e.g. '{\"maxAttempts\": 3}'."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Start one call. A call that exists already is reported as "already started"."""
    fields = _given(
        personUuid=person,
        type=call_type,
        uuid=call_uuid,
        requestedAt=_moment(requested_at),
        callingOrganizationUuid=org,
        relatedCaseUuid=related_case,
        requestedByUserUuid=requested_by,
        notes=notes,
        timezone=timezone,
    )
    call = _call_from(source, file, fields, policy, as_json)
    result = _run(ctx, lambda service: service.start(call), as_json)
    _show(as_json, result.to_json(), _start_line(result))


def _call_from(
    source: str | None, file: str | None, fields: dict[str, Any], policy: str | None, as_json: bool
) -> CallInput:
    """The call `start` was given: JSON from stdin or a file, completed by the options."""
    try:
        if source is not None and source != "-":
            raise InvalidInput([f"unexpected argument {source!r}: use '-' or --file for JSON"])
        if source == "-" and file is not None:
            raise InvalidInput(["give the call either as '-' or with --file, not both"])
        data: dict[str, Any] = {}
        if file is not None or source == "-":
            name = file or "-"
            data = _load_json_object(_read_call_text(name), "stdin" if name == "-" else name)
        data.update(fields)
        if policy is not None:
            data["policy"] = _load_json_object(policy, "policy")
        return parse_call(data)
    except InvalidInput as exc:
        _invalid(exc, as_json)
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}", as_json, kind="invalid")


# ── start-batch ──────────────────────────────────────────────────────────────────────────────


@app.command(
    "start-batch",
    epilog="Example: python -m starter start-batch calls.csv --id-from crmId --results out.csv  "
    "·  CSV header: personUuid,type,uuid,requestedAt,callingOrganizationUuid,notes,… plus "
    "columns of your own, e.g. crmId",
)
def start_batch(
    ctx: typer.Context,
    path: Annotated[
        str, typer.Argument(metavar="FILE", help="A .csv or .jsonl file ('-' = stdin).")
    ],
    fmt: Annotated[BatchFormat | None, typer.Option("--format", help="csv or jsonl.")] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Start nothing if any row is invalid.")
    ] = False,
    id_from: Annotated[
        str | None,
        typer.Option(
            "--id-from",
            help="Column (or JSON path such as externalMetadata.referenceId) to derive call uuids "
            "from, so that re-running the file starts nothing twice; the results carry it.",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=500, help="Starts in flight at once.")
    ] = DEFAULT_CONCURRENCY,
    results: Annotated[
        str | None,
        typer.Option(
            "--results",
            metavar="FILE",
            help="Write row (and its --id-from value) → workflow id → outcome to this CSV file "
            "('-' = stdout, the report then goes to stderr).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print per-row results as JSON.")] = False,
) -> None:
    """Start many calls from a CSV or JSONL file ('-' = stdin), validating every row first.

    Columns (JSONL: keys) other than the call's fields are the CRM's own and are not sent; one
    that misspells a call field (personUUID, requested_at) refuses the file (JSONL: the row).
    Standard input without --format is JSONL when it opens with '{', else CSV.

    Exit 0 when every row was started (or already was), 1 when some rows were invalid or their
    start failed, 2 when bad input started nothing (a bad file, --strict with invalid rows, or
    no valid row at all).
    """
    _check_results_target(results, as_json)
    batch = _load_batch(path, fmt, id_from, as_json)
    # People read the report; with the results CSV on stdout it goes to stderr instead.
    report = err if as_json or results == "-" else out
    _report_rows(report, batch)
    if batch.bad and (strict or not batch.good):
        _refuse_file(batch, strict, results, as_json)
    outcome = _start_rows(ctx, batch, concurrency, as_json)
    rows = result_rows(outcome)
    counts = outcome.summary
    if results is not None:
        _save_results(results, rows, counts, as_json)
    if as_json:
        _print_json({"summary": counts, "rows": rows})
    else:
        _print_batch_report(report, outcome, results)
    if counts[INVALID] or counts[StartStatus.FAILED.value]:
        raise typer.Exit(EXIT_FAILED)


def _check_results_target(results: str | None, as_json: bool) -> None:
    """Refuse a results file that cannot be written before anything starts."""
    if results == "-" and as_json:
        _invalid(InvalidInput(["--results -: stdout carries the --json answer already"]), as_json)
    if results is not None and results != "-":
        problem = _unwritable(results)
        if problem is not None:
            _fail(f"--results {results}: {problem}", as_json, kind="invalid")


def _load_batch(path: str, fmt: BatchFormat | None, id_from: str | None, as_json: bool) -> Batch:
    """Read and validate the batch file; a file that cannot be used ends the command."""
    try:
        with _opened(path) as stream:
            return load_batch(stream, path, fmt, id_from)
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}", as_json, kind="invalid")
    except NotUtf8 as exc:
        _fail(f"cannot read {path}: {exc}; nothing started", as_json, kind="invalid")
    except BatchError as exc:
        _fail(f"{exc}; nothing started", as_json, kind="invalid")


def _report_rows(report: Console, batch: Batch) -> None:
    """Each bad and duplicate row, and a warning about rows that got a random uuid."""
    for row in batch.bad:
        line = _text((f"line {row.line}:", "red"), " ", "; ".join(row.problems))
        report.print(line, soft_wrap=True)
    for row in batch.duplicates:
        line = _text(
            (f"line {row.line}:", "yellow"),
            f" duplicate of line {row.duplicate_of} "
            f"(call {row.call.uuid if row.call else '?'}): started once",
        )
        report.print(line, soft_wrap=True)
    if batch.random_uuids:
        note = _text(
            ("note:", "yellow"),
            f" {batch.random_uuids} row(s) have no uuid and got a random one: running this file "
            "again would start them again (add a uuid column or --id-from)",
        )
        report.print(note, soft_wrap=True)


def _refuse_file(batch: Batch, strict: bool, results: str | None, as_json: bool) -> NoReturn:
    """Bad input and nothing sent: the whole file is refused, with each row's verdict."""
    refused = result_rows(batch_results(batch))
    if results is not None:
        _write_results(results, refused)
    why = "(--strict)" if strict else "and no good row"
    message = f"refused the whole file: {len(batch.bad)} invalid row(s) {why}; nothing started"
    _fail(message, as_json, kind="invalid", rows=refused)


def _start_rows(ctx: typer.Context, batch: Batch, concurrency: int, as_json: bool) -> BatchResults:
    """Start the good rows, with a progress bar for people."""
    if not batch.good:
        return batch_results(batch)

    async def work(service: CallService) -> BatchResults:
        with Progress(
            TextColumn("starting calls"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=as_json,
            transient=False,
        ) as progress:
            task = progress.add_task("start", total=len(batch.good))
            return await start_rows(service, batch, concurrency, lambda *_: progress.advance(task))

    return _run(ctx, work, as_json)


def _save_results(
    results: str, rows: list[dict[str, str]], counts: dict[str, int], as_json: bool
) -> None:
    """Write the results CSV once the rows were started."""
    try:
        _write_results(results, rows)
    except OSError as exc:  # checked before starting, yet the disk may fill up meanwhile
        message = f"cannot write {results}: {exc.strerror} (the good rows were started)"
        _fail(message, as_json, summary=counts)


def _print_batch_report(report: Console, outcome: BatchResults, results: str | None) -> None:
    """The failed starts and how many rows had each outcome, for people."""
    for failed in outcome.failed:
        report.print(_text(("failed", "red"), f" {failed.workflow_id}: {failed.detail}"))
    summary = Table(title="start-batch", show_header=False)
    for label, count in outcome.summary.items():
        summary.add_row(label, str(count))
    report.print(summary)
    if results is not None and results != "-":
        report.print(_text(f"results written to {results}"))


def _unwritable(name: str) -> str | None:
    """Why a results file cannot be written there, or None (checked before anything starts)."""
    target = Path(name)
    if target.is_dir():
        return "is a directory"
    if target.exists():
        return None if os.access(target, os.W_OK) else "not writable"
    parent = target.parent
    if not parent.is_dir():
        return f"no directory {str(parent)!r}"
    return None if os.access(parent, os.W_OK) else f"directory {str(parent)!r} is not writable"


# ── actions ──────────────────────────────────────────────────────────────────────────────────

_SIGNAL_HELP = "Send a fire-and-forget signal instead of an update (no answer, no reason)."
_REQUEST_ID_HELP = (
    "Idempotency key (the update's id): the same command sent again with the same key changes "
    f"nothing and gets the first answer. Printable ASCII, at most {REQUEST_ID_MAX_LENGTH} "
    "characters; a new one each time when absent."
)
RequestId = Annotated[
    str | None, typer.Option(REQUEST_ID_OPTION, metavar="KEY", help=_REQUEST_ID_HELP)
]
# The options every action command shares.
_CallUuid = Annotated[str, typer.Argument(metavar="UUID", help="The call's uuid.")]
_User = Annotated[str | None, typer.Option("--user", help="userUuid of the agent.")]
_Signal = Annotated[bool, typer.Option("--signal", help=_SIGNAL_HELP)]
_AnswerJson = Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")]


def _act(
    ctx: typer.Context,
    call_uuid: str,
    name: str,
    data: dict[str, Any],
    signal: bool,
    as_json: bool,
    request_id: str | None = None,
) -> None:
    """Validate an action locally, send it, and print the workflow's answer."""
    try:
        target = parse_call_uuid(call_uuid)
        message = parse_action(name, data)
        key = parse_request_id(request_id, REQUEST_ID_OPTION)
        if signal and key is not None:
            # Quietly dropping the key would promise a deduplication that signals cannot keep.
            raise InvalidInput(
                [f"{REQUEST_ID_OPTION}: a signal has no id to deduplicate by; send the action "
                 "as an update (without --signal) to use a request id"]
            )  # fmt: skip
    except InvalidInput as exc:
        _invalid(exc, as_json)
    workflow_id = workflow_id_for(target)
    if signal:
        sent = _run(ctx, lambda service: service.signal(target, name, message), as_json)
        human = _text(("sent", "green"), f" signal {name} to {workflow_id}")
        _show(as_json, sent.to_json(), human, soft_wrap=False)
        return
    answer = _run(ctx, lambda service: service.act(target, name, message, key), as_json)
    accepted = model_json(answer)
    detail = f": {accepted['detail']}" if accepted.get("detail") else ""
    human = _text(
        ("accepted", "green"), f" {name} on {workflow_id}{detail} (phase {accepted['phase']})"
    )
    _show(as_json, {"workflowId": workflow_id, **accepted}, human)


@app.command(
    epilog="Example: python -m starter attempt 5d1c…-uuid --outcome no_answer --user 9a7b…-uuid "
    "--request-id dialer-7f3a-try-1"
)
def attempt(
    ctx: typer.Context,
    call_uuid: _CallUuid,
    outcome: Annotated[
        str, typer.Option("--outcome", help="no_answer, busy, voicemail or wrong_number.")
    ],
    user: _User = None,
    at: Annotated[
        str | None, typer.Option("--at", help=f"attemptAt: {_WHEN} (default: now).")
    ] = None,
    request_id: RequestId = None,
    signal: _Signal = False,
    as_json: _AnswerJson = False,
) -> None:
    """Report an unsuccessful attempt to reach the donor."""
    data = _given(outcome=outcome, userUuid=user, attemptAt=_moment(at))
    _act(ctx, call_uuid, ATTEMPT, data, signal, as_json, request_id)


@app.command(
    epilog="Example: python -m starter complete 5d1c…-uuid --result-code confirmed --rating 8 "
    "--duration 184 --notes 'happy donor'"
)
def complete(
    ctx: typer.Context,
    call_uuid: _CallUuid,
    result_code: Annotated[str, typer.Option("--result-code", help="resultCode, e.g. confirmed.")],
    notes: Annotated[
        str | None,
        typer.Option(
            "--notes", help=f"Notes on the result (at most {NOTE_MAX_LENGTH} characters)."
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Seconds on the phone.")
    ] = None,
    rating: Annotated[
        int | None, typer.Option("--rating", help="donorRetentionRating, 1-10.")
    ] = None,
    user: _User = None,
    completed_at: Annotated[
        str | None, typer.Option("--completed-at", help=f"completedAt: {_WHEN} (default: now).")
    ] = None,
    request_id: RequestId = None,
    signal: _Signal = False,
    as_json: _AnswerJson = False,
) -> None:
    """Complete the call with its result."""
    result = _given(
        resultCode=result_code,
        notes=notes,
        duration=duration,
        donorRetentionRating=rating,
        completedAt=_moment(completed_at),
    )
    data = _given(result=result, userUuid=user)
    _act(ctx, call_uuid, COMPLETE, data, signal, as_json, request_id)


@app.command(
    epilog="Example: python -m starter reschedule 5d1c…-uuid --at 2026-11-30T18:30:00+01:00 "
    "--notes 'after dinner'  ·  python -m starter reschedule 5d1c…-uuid --at +2h"
)
def reschedule(
    ctx: typer.Context,
    call_uuid: _CallUuid,
    at: Annotated[str, typer.Option("--at", help=f"Callback time: {_WHEN}.")],
    notes: Annotated[
        str | None,
        typer.Option(
            "--notes", help=f"Why, or what the donor said (at most {NOTE_MAX_LENGTH} characters)."
        ),
    ] = None,
    user: _User = None,
    request_id: RequestId = None,
    signal: _Signal = False,
    as_json: _AnswerJson = False,
) -> None:
    """Ask for the next attempt at the time the donor named."""
    data = _given(at=_moment(at), notes=notes, userUuid=user)
    _act(ctx, call_uuid, RESCHEDULE, data, signal, as_json, request_id)


@app.command(epilog="Example: python -m starter cancel 5d1c…-uuid --reason 'donor moved abroad'")
def cancel(
    ctx: typer.Context,
    call_uuid: _CallUuid,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason", help=f"Why the call is not wanted (at most {NOTE_MAX_LENGTH} characters)."
        ),
    ] = None,
    at: Annotated[str | None, typer.Option("--at", help=f"cancelledAt: {_WHEN}.")] = None,
    request_id: RequestId = None,
    signal: _Signal = False,
    as_json: _AnswerJson = False,
) -> None:
    """Cancel the call."""
    data = _given(reason=reason, cancelledAt=_moment(at))
    _act(ctx, call_uuid, CANCEL, data, signal, as_json, request_id)


# ── status and list ──────────────────────────────────────────────────────────────────────────


def _state_panel(state: CallState) -> Panel:
    tz = state.timezone

    def local(t: Any) -> str:
        return format_local(t, tz) if t is not None else "—"

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()

    def fact(label: str, value: str | Text) -> None:
        # Values come from the call's messages (notes, reasons, codes): text, never markup.
        facts.add_row(Text(label), value if isinstance(value, Text) else Text(value))

    fact("phase", state.phase.value)
    fact("TapRaise status", state.status.value if state.status else "—")
    fact("type", state.type.value)
    fact("person", str(state.person_uuid))
    if state.calling_organization_uuid:
        fact("organization", str(state.calling_organization_uuid))
    fact("requested", local(state.requested_at))
    fact("deadline", local(state.deadline))
    limit = f" of {state.max_attempts}" if state.max_attempts else ""
    fact("attempts", f"{state.attempts_made}{limit} (missed slots {state.missed_slots})")
    for number, record in enumerate(state.attempts, start=1):
        fact(f"  #{number}", f"{local(record.attempt_at)} {record.outcome.value}")
    if state.next_slot_at:
        until = f" (due until {local(state.due_until)})" if state.due_until else ""
        fact("next slot", f"{local(state.next_slot_at)}{until}")
    if state.callback_at:
        fact("callback", local(state.callback_at))
    if state.result:
        r = state.result
        extras = [
            f"rating {r.donor_retention_rating}" if r.donor_retention_rating else "",
            f"{r.duration:g} s" if r.duration is not None else "",
            r.notes or "",
        ]
        fact("result", " · ".join([r.result_code, *filter(None, extras)]))
    if state.final_reason:
        fact("outcome", state.final_reason)
    if state.failure:
        fact("failure", Text(state.failure, style="red"))
    events = Table(title="last events", show_edge=False, title_justify="left")
    events.add_column("at")
    events.add_column("event")
    events.add_column("detail")
    for event in state.events[-8:]:
        events.add_row(Text(local(event.at)), Text(event.kind), Text(event.detail))
    return Panel(
        Group(facts, events),
        title=Text(f"call {state.call_uuid}"),
        subtitle=Text(state.workflow_id),
    )


@app.command(epilog="Example: python -m starter status 5d1c…-uuid --json")
def status(
    ctx: typer.Context,
    call_uuid: _CallUuid,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the state as camelCase JSON.")
    ] = False,
) -> None:
    """Show a call's state (the workflow's `state` query), also after it has finished."""
    try:
        target = parse_call_uuid(call_uuid)
    except InvalidInput as exc:
        _invalid(exc, as_json)
    state = _run(ctx, lambda service: service.state(target), as_json)
    _show(as_json, model_json(state), _state_panel(state), soft_wrap=False)


# Piped, `list` prints every field in full, tab-separated, under the `--json` names.
LIST_TSV_COLUMNS: Final = tuple(f.alias or name for name, f in CallSummary.model_fields.items())
_COLUMN_GAP: Final = "  "


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _calls_tsv(calls: list[CallSummary]) -> list[str]:
    """A header and one tab-separated line per call, every value in full (for cut and awk)."""

    def cell(value: Any) -> str:
        return "" if value is None else " ".join(str(value).split())  # no tab can split a cell

    lines = ["\t".join(LIST_TSV_COLUMNS)]
    for call in calls:
        data = call.to_json()
        lines.append("\t".join(cell(data[column]) for column in LIST_TSV_COLUMNS))
    return lines


def _width(header: str, cells: list[str]) -> int:
    """How wide a column is: its widest cell, or its header."""
    return max([len(header), *map(len, cells)])


def _calls_columns(calls: list[CallSummary], width: int) -> list[tuple[str, list[str]]]:
    """The table's columns (header, cells) that fit in `width` characters.

    The workflow id, what people copy into other commands, is always there and complete; when
    the table is too wide, the less important columns go first: the TapRaise status (the phase
    says nearly as much), the next attempt's year, the attempts, the type, the next attempt.
    """

    def when(call: CallSummary, fmt: str) -> str:
        return call.next_attempt_at.astimezone(UTC).strftime(fmt) if call.next_attempt_at else ""

    columns: dict[str, list[str]] = {
        "workflow id": [call.workflow_id for call in calls],
        "phase": [call.phase or "—" for call in calls],
        "status": [call.call_status or "—" for call in calls],
        "type": [call.type or "—" for call in calls],
        "attempts": ["" if call.attempts is None else str(call.attempts) for call in calls],
        "next (UTC)": [when(call, "%Y-%m-%d %H:%M") for call in calls],
    }

    def total() -> int:
        widths = [_width(header, cells) for header, cells in columns.items()]
        return sum(widths) + len(_COLUMN_GAP) * (len(widths) - 1)

    # Each step drops a column (None) or shortens its cells, until the table fits.
    steps: list[tuple[str, list[str] | None]] = [
        ("status", None),
        ("next (UTC)", [when(call, "%m-%d %H:%M") for call in calls]),
        ("attempts", None),
        ("type", None),
        ("next (UTC)", None),
        ("phase", None),
    ]
    for header, cells in steps:
        if total() <= width:
            break
        if cells is None:
            del columns[header]
        else:
            columns[header] = cells
    return list(columns.items())


def _calls_lines(calls: list[CallSummary], width: int) -> list[str]:
    """The calls as aligned columns for a terminal `width` characters wide (header first)."""
    columns = _calls_columns(calls, width)
    widths = [_width(header, cells) for header, cells in columns]
    rows = [[header for header, _ in columns]]
    rows += [[cells[i] for _, cells in columns] for i in range(len(calls))]
    gap = _COLUMN_GAP
    return [gap.join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]


@app.command(
    "list",
    epilog="Example: python -m starter list --phase scheduled --due-before "
    "2026-11-28T00:00:00Z --org 3c1e…-uuid --limit 20",
)
def list_calls(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option("--status", help="CallStatus: requested, completed, cancelled, expired."),
    ] = None,
    phase: Annotated[
        str | None,
        typer.Option(
            "--phase",
            help="CallPhase: creating, scheduled, due, completed, cancelled, expired, failed.",
        ),
    ] = None,
    call_type: Annotated[str | None, typer.Option("--type", help="CallType.")] = None,
    person: Annotated[str | None, typer.Option("--person", help="PersonUuid.")] = None,
    org: Annotated[str | None, typer.Option("--org", help="CallingOrganizationUuid.")] = None,
    due_before: Annotated[
        str | None,
        typer.Option("--due-before", help=f"NextAttemptAt before this time: {_WHEN}."),
    ] = None,
    due: Annotated[
        bool,
        typer.Option(
            "--due",
            help="The calls to dial now: their next slot has come (NextAttemptAt before now), "
            "whether or not their policy shows the phase `due`.",
        ),
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = DEFAULT_LIST_LIMIT,
    query: Annotated[
        str | None,
        typer.Option(
            "--query",
            help="A visibility query, ANDed with the filters: the call search attributes and "
            "WorkflowId, RunId, ExecutionStatus, StartTime, CloseTime, ExecutionTime, "
            "ExecutionDuration, HistoryLength, TaskQueue, with = != < <= > >= IN BETWEEN "
            "STARTS_WITH IS [NOT] NULL, AND, OR, NOT and parentheses.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the calls as JSON.")] = False,
) -> None:
    """List calls by their search attributes (Temporal visibility; lags by a second or so).

    On a terminal, a table that fits its width; piped, one tab-separated line per call under a
    header line, every value in full.
    """
    try:
        if due and due_before is not None:
            raise InvalidInput(["--due is --due-before now: give one of the two"])
        filters = ListFilters.parse(
            status=status,
            phase=phase,
            type=call_type,
            person=person,
            org=org,
            due_before=_moment("+0s" if due else due_before),
            query=query,
        )
    except InvalidInput as exc:
        _invalid(exc, as_json)
    used, calls = _run(ctx, lambda service: service.list(filters, limit), as_json)
    if as_json:
        _print_json({"query": used, "calls": [call.to_json() for call in calls]})
        return
    if not _stdout_is_terminal():
        for line in _calls_tsv(calls):
            typer.echo(line)
    elif calls:
        header, *lines = _calls_lines(calls, shutil.get_terminal_size().columns)
        out.print(Text(header, style="bold"), soft_wrap=True)
        for line in lines:
            out.print(Text(line), soft_wrap=True)
    err.print(_text(f"{len(calls)} call(s) · {used}"), soft_wrap=True)


# ── serve and dev ────────────────────────────────────────────────────────────────────────────


@app.command(
    epilog="Example: GATEWAY_TOKENS=s3cr3t python -m starter serve --port 8080  ·  "
    "then open http://127.0.0.1:8080/docs"
)
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="Bind address (GATEWAY_HOST).")] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port (GATEWAY_PORT, default 8080).")
    ] = None,
) -> None:
    """Run the HTTP gateway (webhooks for the CRM and the agent's tooling).

    Its metrics are served apart, at GATEWAY_METRICS_ADDRESS (loopback by default).
    """
    import uvicorn

    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from gateway.telemetry import GatewayMetrics, MetricsListener
    from gateway.temporal import temporal_client_provider
    from telemetry.logs import configure_logging
    from telemetry.runtime import temporal_runtime
    from telemetry.settings import LogFormat, TelemetrySettings
    from telemetry.tracing import Tracing

    conn: Connection = ctx.obj
    # The options go into the settings, so that the checks see the address actually bound.
    given: dict[str, Any] = {"host": host, "port": port}
    given = {name: value for name, value in given.items() if value is not None}
    try:
        settings = GatewaySettings(task_queue=conn.task_queue, **given)
        telemetry = TelemetrySettings()
        configure_logging(telemetry.log_level, telemetry.log_format)
        # With JSON lines, the Temporal core's own lines go through Python's logging too.
        json_lines = telemetry.log_format is LogFormat.JSON
        runtime = temporal_runtime(None, telemetry.log_format) if json_lines else None
        tracing = Tracing.from_env("tapraise-calls-gateway")
        metrics = GatewayMetrics()
        provider = temporal_client_provider(
            conn.address, conn.namespace, runtime=runtime, tracing=tracing
        )
        app_ = create_app(provider, settings, metrics=metrics, tracing=tracing)
        address = telemetry.gateway_metrics_address
        if address is not None and address.port == settings.port:
            raise ValueError(
                f"GATEWAY_METRICS_ADDRESS={address} is the gateway's own port: the metrics are "
                "served apart, never on the public port"
            )
        listener = MetricsListener(address, metrics) if address is not None else None
    except (ValueError, RuntimeError) as exc:  # a setting refused, or a port taken
        _fail(str(exc), False, kind="configuration")
    if listener is not None:
        logging.getLogger("gateway").info("metrics at %s", listener.url)
    try:
        # Logging is configured above (text or JSON); the access lines are the gateway's own,
        # which name the route's template, never a path that holds a uuid.
        uvicorn.run(app_, host=settings.host, port=settings.port, log_config=None, access_log=False)
    finally:
        if listener is not None:
            listener.close()
        tracing.shutdown()


@app.command(
    epilog="Example: python -m starter dev --demo  ·  make demo runs exactly this, make run "
    "runs it without --demo; then open http://localhost:8233 (the Web UI)"
)
@stack_options
def dev(**options: Any) -> None:
    """Run everything locally: dev server and Web UI, sandbox, worker, gateway. Ctrl-C stops it."""
    try:
        devstack = importlib.import_module("devstack.run")
    except ModuleNotFoundError as exc:
        # An installed package carries neither the sandbox nor the Temporal CLI.
        _fail(f"the dev stack runs from a clone of the project, with `make run` ({exc})", False)
    raise typer.Exit(int(devstack.main(stack_argv(options)) or 0))


def main(prog_name: str = "tapraise-calls") -> NoReturn:
    """Console-script entry point (`tapraise-calls`); reads `.env` first."""
    load_env_file()
    try:
        app(prog_name=prog_name)
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    _exit(code)


def _exit(code: int | str | None) -> NoReturn:
    """Flush and leave at once, skipping the interpreter's finalization.

    The Temporal client's native threads can still be winding down when Python finalizes, which
    sometimes aborts the process ("PyGILState_Release … finalizing") after all its work is
    done and printed. Nothing is left to clean up by then: the answer is out, children stopped.
    """
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be said
            pass
    logging.shutdown()
    os._exit(code or 0)


# ── following TapRaise ───────────────────────────────────────────────────────────────────────

sync_app = typer.Typer(
    name="sync",
    help="Follow TapRaise: adopt the calls requested there, and tell calls what changed there.",
    no_args_is_help=True,
)
app.add_typer(sync_app)


def _follower(
    ctx: typer.Context, work: Callable[[FollowerService], Awaitable[T]], as_json: bool
) -> T:
    conn: Connection = ctx.obj
    return _connected(ctx, lambda client: work(FollowerService(client, conn.task_queue)), as_json)


def _show_follower(status: FollowerStatus, as_json: bool, lead: str) -> None:
    watermark = status.watermark.isoformat() if status.watermark else "none yet"
    last = status.last_round_at.isoformat(timespec="seconds") if status.last_round_at else "none"
    lines = [
        _text(lead),
        _text(
            f"  every {status.interval.total_seconds():g} s", " (paused)" if status.paused else ""
        ),
        _text(f"  watermark  {watermark}"),
        _text(f"  last round {last}  (rounds {status.rounds}, failed {status.failed_rounds})"),
        _text(
            f"  adopted {status.adopted}  delivered {status.delivered}  ignored {status.ignored}"
            f"  TapRaise requests {status.requests}"
        ),
    ]
    if status.last_error:
        lines.append(_text(("  last error ", "yellow"), status.last_error))
    _show(as_json, status.model_dump(mode="json", by_alias=True), Text("\n").join(lines))


@sync_app.command(
    "start",
    epilog="Example: python -m starter sync start --interval 30 --type verification",
)
def sync_start(
    ctx: typer.Context,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between rounds (at least 1).")
    ] = DEFAULT_INTERVAL.total_seconds(),
    call_types: Annotated[
        list[CallType] | None,
        typer.Option("--type", help="Adopt only calls of this type (repeatable; default: all)."),
    ] = None,
    organizations: Annotated[
        list[str] | None,
        typer.Option(
            "--org",
            help="Adopt only calls of this calling organization (repeatable; default: all).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help=f"Follow changes after this time ({_WHEN}; default: from now on)."
        ),
    ] = None,
    as_json: _AnswerJson = False,
) -> None:
    """Switch following on (once: a second start changes nothing)."""
    try:
        scope = FollowScope.model_validate(
            {"callTypes": call_types or [], "organizationUuids": organizations or []}
        )
        moment = _moment(since)
        start_at = datetime.fromisoformat(moment) if moment else datetime.now(UTC)
        if start_at.tzinfo is None:
            raise ValueError("--since needs an offset (e.g. Z)")
    except (ValidationError, ValueError) as exc:
        _invalid(InvalidInput([f"{' '.join(str(exc).split())}"]), as_json)

    async def work(service: FollowerService) -> tuple[bool, FollowerStatus]:
        return await service.start(timedelta(seconds=interval), scope, start_at)

    started, status = _follower(ctx, work, as_json)
    lead = "following TapRaise: started" if started else "following TapRaise already: unchanged"
    _show_follower(status, as_json, lead)


@sync_app.command("status", epilog="Example: python -m starter sync status --json")
def sync_status(ctx: typer.Context, as_json: _AnswerJson = False) -> None:
    """How following stands: watermark, last round, calls adopted, changes delivered, errors."""
    _show_follower(_follower(ctx, lambda s: s.status(), as_json), as_json, "following TapRaise")


@sync_app.command("run-now")
def sync_run_now(ctx: typer.Context, as_json: _AnswerJson = False) -> None:
    """Run a round now, and show what it found."""
    status = _follower(ctx, lambda s: s.act(RUN_NOW), as_json)
    _show_follower(status, as_json, "round done")


@sync_app.command("pause")
def sync_pause(ctx: typer.Context, as_json: _AnswerJson = False) -> None:
    """Stop running rounds; what changes meanwhile is found after `resume`."""
    _show_follower(_follower(ctx, lambda s: s.act(PAUSE), as_json), as_json, "paused")


@sync_app.command("resume")
def sync_resume(ctx: typer.Context, as_json: _AnswerJson = False) -> None:
    """Run rounds again, the first one now."""
    _show_follower(_follower(ctx, lambda s: s.act(RESUME), as_json), as_json, "resumed")
