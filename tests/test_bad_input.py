"""Malformed data at every boundary, generated with Hypothesis.

Each boundary gets values that are wrong in one field at a time: the starter CLI (arguments and
files), the HTTP gateway (bodies and headers), signal and update payloads sent through the
Temporal client as raw JSON (as the plain `temporal` CLI sends them), a bare workflow start, and
the TapRaise sandbox's own API. Every refusal must name what is wrong; nothing may be started,
changed or sent to TapRaise; nothing may crash (no 500).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import string
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner

from sandbox.seed import DEMO_PERSON_UUIDS
from starter.cli import app as cli_app
from tapraise.auth import TokenSigner
from tests.chaos import chaos_policy
from tests.helpers import demo_account, effects, gateway_client
from tests.sandbox_fixture import SandboxServer
from tests.temporal_fixture import CallWorker
from workflows.call import CallWorkflow
from workflows.messages import (
    CALL_NOTES_MAX_LENGTH,
    EXTERNAL_ID_MAX_LENGTH,
    JSON_MAX_LENGTH,
    NOTE_MAX_LENGTH,
    RESULT_CODE_MAX_LENGTH,
    STATUS_DESCRIPTION_MAX_LENGTH,
    CallInput,
    CallPhase,
    CallSearchAttributes,
    CallState,
)
from workflows.policy import TIMEZONE_MAX_LENGTH

pytestmark = pytest.mark.timeout(120)

FEW = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SOME = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
PERSON = DEMO_PERSON_UUIDS[7]
TOKEN = "bad-input-gateway-token"
# No server listens here: a command that got past validation would fail to connect instead.
NOWHERE = {"TEMPORAL_ADDRESS": "127.0.0.1:1", "TEMPORAL_NAMESPACE": "default"}
runner = CliRunner()


# ── generated bad values ─────────────────────────────────────────────────────────────────────


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_zone(value: str) -> bool:
    try:
        ZoneInfo(value)
    except Exception:
        return False
    return True


_WORDS = st.text(alphabet=string.ascii_letters + " -_:", min_size=1, max_size=30)
NOT_A_UUID = st.one_of(
    _WORDS.filter(lambda s: not _is_uuid(s)),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
NOT_AN_AWARE_TIME = st.one_of(
    _WORDS,
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda d: d.isoformat()  # no offset: refused, a call's instants must be unambiguous
    ),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
NOT_A_STRING = st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2))
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
BAD_POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("policy.maxAttempts", {"maxAttempts": 0}),
    ("policy.deadline", {"deadline": -5}),
    ("policy.attemptWindow", {"attemptWindow": 0}),
    ("policy.windows", {"windows": {"mon": ["25:00-26:00"]}}),
    ("policy.windows", {"windows": {"funday": []}}),
    ("policy.retryDelays", {"retryDelays": {"no_answer": -1}}),
    ("policy.timezone", {"timezone": "Mars/Olympus_Mons"}),
    ("policy.holidaysEverywhere", {"holidaysEverywhere": True}),
]

# One field over its limit (the call is a verification call: it may carry externalMetadata).
_LONG_JSON: Final = {"crm": "x" * JSON_MAX_LENGTH}
OVERSIZED_CALL_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("timezone", {"timezone": "Europe/" + "x" * TIMEZONE_MAX_LENGTH}),
    ("externalMetadata.referenceId",
     {"externalMetadata": {"referenceId": "r" * (EXTERNAL_ID_MAX_LENGTH + 1)}}),
    ("externalMetadata.statusDescription",
     {"externalMetadata": {"statusDescription": "s" * (STATUS_DESCRIPTION_MAX_LENGTH + 1)}}),
    ("externalMetadata.additionalProperties",
     {"externalMetadata": {"additionalProperties": _LONG_JSON}}),
    ("externalMetadata.additionalProperties",
     {"externalMetadata": {"additionalProperties": json.dumps(_LONG_JSON)}}),
    ("policy", {"policy": {"blackoutDates": ["2030-01-01"] * (JSON_MAX_LENGTH // 10)}}),
]  # fmt: skip

CALL_FIELDS = set(CallInput.model_json_schema(by_alias=True)["properties"])


def _misspelt_field() -> st.SearchStrategy[str]:
    """A call field's name in another case or spelling (`PERSONUUID`, `person_uuid`)."""
    return st.sampled_from(sorted(CALL_FIELDS)).flatmap(
        lambda name: st.sampled_from(
            [name.upper(), re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() + "_"]
        ).filter(lambda spelt: spelt != name)
    )


def _unknown_key(known: set[str]) -> st.SearchStrategy[str]:
    return st.text(alphabet=string.ascii_letters, min_size=1, max_size=12).filter(
        lambda k: k not in known
    )


def bad_calls(
    *, keep_uuid: bool = False, in_batch: bool = False
) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """(the field named in the refusal, a call body wrong in exactly that field).

    A batch row may carry keys of the CRM's own: there, the extra key is a misspelt call field.
    """
    valid = {"uuid": str(uuid.uuid4()), "personUuid": PERSON, "type": "verification"}
    one_field = {
        "personUuid": NOT_A_UUID | st.none(),
        "type": st.one_of(
            _WORDS.filter(lambda t: t not in ("verification", "happy_call", "winback")),
            st.integers(),
            st.none(),
        ),
        "requestedAt": NOT_AN_AWARE_TIME,
        "relatedCaseUuid": NOT_A_UUID,
        "callingOrganizationUuid": NOT_A_UUID,
        "requestedByUserUuid": NOT_A_UUID,
        "timezone": st.text(alphabet=string.ascii_letters + "/_", min_size=1, max_size=20).filter(
            lambda z: not _is_zone(z)
        ),
        "notes": NOT_A_STRING | st.just("x" * (CALL_NOTES_MAX_LENGTH + 1)),
    }
    if not keep_uuid:
        one_field["uuid"] = NOT_A_UUID
    options = [
        st.tuples(st.just(name), values).map(lambda fv: (fv[0], {**valid, fv[0]: fv[1]}))
        for name, values in one_field.items()
    ]
    options.append(
        st.sampled_from(BAD_POLICIES).map(lambda fp: (fp[0], {**valid, "policy": fp[1]}))
    )
    options.append(
        st.sampled_from(OVERSIZED_CALL_FIELDS).map(lambda ff: (ff[0], {**valid, **ff[1]}))
    )
    extra_key = _misspelt_field() if in_batch else _unknown_key(CALL_FIELDS)
    options.append(st.tuples(extra_key, ANY_JSON).map(lambda kv: (kv[0], {**valid, kv[0]: kv[1]})))
    options.append(st.just(("personUuid", {k: v for k, v in valid.items() if k != "personUuid"})))
    return st.one_of(options).map(
        lambda fb: fb if fb[0] == "uuid" else (fb[0], {**fb[1], "uuid": str(uuid.uuid4())})
    )


def _future() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).isoformat()


_RESULT: Final = {"resultCode": "confirmed"}
_MESSAGE_FIELDS: Final = frozenset(
    {"outcome", "userUuid", "attemptAt", "result", "at", "notes", "cancelledAt", "reason"}
)


def bad_actions() -> st.SearchStrategy[tuple[str, str, Any]]:
    """(action, the field named in the refusal or "" for a non-object, payload)."""
    return st.one_of(_bad_fields() + _bad_shapes())


def _case(
    action: str, field: str, payloads: st.SearchStrategy[Any]
) -> st.SearchStrategy[tuple[str, str, Any]]:
    return st.tuples(st.just(action), st.just(field), payloads)


def _bad_fields() -> list[st.SearchStrategy[tuple[str, str, Any]]]:
    """Messages with one field wrong."""
    return [
        _case("attempt", "outcome", _WORDS.map(lambda w: {"outcome": w})),
        _case("attempt", "outcome", st.just({})),
        _case(
            "attempt",
            "attemptAt",
            NOT_AN_AWARE_TIME.map(lambda v: {"outcome": "busy", "attemptAt": v}),
        ),
        _case("attempt", "userUuid", NOT_A_UUID.map(lambda v: {"outcome": "busy", "userUuid": v})),
        _case("complete", "result", st.just({})),
        _case(
            "complete",
            "result.resultCode",
            st.one_of(st.just(""), st.just("c" * 65), st.integers()).map(
                lambda v: {"result": {"resultCode": v}}
            ),
        ),
        _case(
            "complete",
            "result.donorRetentionRating",
            st.one_of(st.integers(max_value=0), st.integers(min_value=11)).map(
                lambda v: {"result": {**_RESULT, "donorRetentionRating": v}}
            ),
        ),
        _case(
            "complete",
            "result.duration",
            st.floats(max_value=-0.001, allow_nan=False, allow_infinity=False).map(
                lambda v: {"result": {**_RESULT, "duration": v}}
            ),
        ),
        _case("reschedule", "at", NOT_AN_AWARE_TIME.map(lambda v: {"at": v})),
        _case("reschedule", "notes", NOT_A_STRING.map(lambda v: {"at": _future(), "notes": v})),
        _case("cancel", "cancelledAt", NOT_AN_AWARE_TIME.map(lambda v: {"cancelledAt": v})),
        _case("cancel", "reason", NOT_A_STRING.map(lambda v: {"reason": v})),
        # One field over its limit.
        _case(
            "reschedule",
            "notes",
            st.just("n" * (NOTE_MAX_LENGTH + 1)).map(lambda v: {"at": _future(), "notes": v}),
        ),
        _case(
            "complete",
            "result.notes",
            st.just({"result": {**_RESULT, "notes": "n" * (NOTE_MAX_LENGTH + 1)}}),
        ),
        _case("cancel", "reason", st.just({"reason": "r" * (NOTE_MAX_LENGTH + 1)})),
    ]


def _with_key(
    base: dict[str, Any],
) -> Callable[[tuple[str, str, Any]], tuple[str, str, Any]]:
    """(action, key, value) → (action, key, `base` with that key set to that value)."""
    return lambda case: (case[0], case[1], {**base, case[1]: case[2]})


def _bad_shapes() -> list[st.SearchStrategy[tuple[str, str, Any]]]:
    """Messages with a key no message has, and payloads that are no object at all."""
    cases: list[st.SearchStrategy[tuple[str, str, Any]]] = []
    for action, base in (
        ("attempt", {"outcome": "busy"}),
        ("complete", {"result": _RESULT}),
        ("reschedule", {"at": _future()}),
        ("cancel", {}),
    ):
        cases.append(
            st.tuples(st.just(action), _unknown_key(set(_MESSAGE_FIELDS)), ANY_JSON).map(
                _with_key(base)
            )
        )
        cases.append(
            _case(
                action,
                "",
                st.one_of(st.lists(st.integers(), max_size=2), st.integers(), st.text(max_size=5)),
            )
        )
    return cases


_PRINTABLE_ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
# Characters an idempotency key may not hold; the gateway's share is what HTTP can carry at all.
_NOT_KEY_CHARS = st.characters(codec="utf-8").filter(lambda c: not " " <= c <= "~")
_NOT_KEY_HEADER_CHARS = st.characters(min_codepoint=0x80, max_codepoint=0xFF)


def bad_request_ids(*, header: bool = False) -> st.SearchStrategy[str]:
    """Idempotency keys that are refused: blank, longer than 200, or with a non-printable or
    non-ASCII character inside."""
    odd = _NOT_KEY_HEADER_CHARS if header else _NOT_KEY_CHARS
    edge = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=10)
    # HTTP carries no spaces around a value: over the gateway, blank is empty.
    blank = st.just("") if header else st.text(alphabet=" ", max_size=3)
    long = st.text(alphabet=_PRINTABLE_ASCII, min_size=201, max_size=400)
    return st.one_of(
        blank,
        (long.map(str.strip) if header else long).filter(lambda k: len(k.strip()) > 200),
        st.tuples(edge, odd, edge).map("".join),
    )


# ── shared checks ────────────────────────────────────────────────────────────────────────────


async def _exists(client: Client, call_uuid: str) -> bool:
    try:
        await client.get_workflow_handle(f"call-{call_uuid}").describe()
    except RPCError as exc:
        assert exc.status == RPCStatusCode.NOT_FOUND
        return False
    return True


def _uuid_of(body: Any) -> str | None:
    value = body.get("uuid") if isinstance(body, dict) else None
    return value if isinstance(value, str) and _is_uuid(value) else None


# ── the starter CLI ──────────────────────────────────────────────────────────────────────────


@SOME
@given(case=bad_calls())
def test_cli_start_refuses_a_bad_call_file_naming_the_field_and_sends_nothing(
    case: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    field, body = case
    path = tmp_path / "call.json"
    path.write_text(json.dumps(body))
    result = runner.invoke(cli_app, ["start", "--file", str(path)], env=NOWHERE)
    assert result.exit_code == 2, result.output
    assert f"{field}" in result.stderr, (body, result.stderr)
    assert "nothing was sent to Temporal" in result.stderr
    assert "Traceback" not in result.output


@FEW
@given(text=st.text(max_size=200))
def test_cli_start_refuses_text_that_is_not_a_json_object(text: str, tmp_path: Path) -> None:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return
    path = tmp_path / "call.json"
    path.write_text(text)
    result = runner.invoke(cli_app, ["start", "--file", str(path), "--json"], env=NOWHERE)
    assert result.exit_code == 2, result.output
    answer = json.loads(result.stdout)
    assert answer["kind"] == "invalid" and str(path) in answer["error"]


@SOME
@given(case=bad_actions())
def test_cli_actions_refuse_bad_arguments_naming_the_field(case: tuple[str, str, Any]) -> None:
    action, field, payload = case
    if not isinstance(payload, dict) or not field or "." in field or field == "result":
        return  # the commands build objects from options; these shapes cannot be typed in
    options = {
        "outcome": "--outcome", "attemptAt": "--at", "userUuid": "--user", "at": "--at",
        "notes": "--notes", "cancelledAt": "--at", "reason": "--reason",
    }  # fmt: skip
    if field not in options or not isinstance(payload.get(field), str):
        return
    args = [action, str(uuid.uuid4()), options[field], payload[field]]
    if action == "attempt" and field != "outcome":
        args += ["--outcome", "busy"]
    if action == "reschedule" and field != "at":
        args += ["--at", _future()]
    result = runner.invoke(cli_app, args, env=NOWHERE)
    assert result.exit_code == 2, (args, result.output)
    assert field in result.stderr and "nothing was sent to Temporal" in result.stderr


@SOME
@given(
    key=bad_request_ids(),
    action=st.sampled_from([["attempt", "--outcome", "busy"], ["complete", "--result-code", "x"],
                            ["reschedule", "--at", "2030-01-07T10:00:00Z"], ["cancel"]]),
)  # fmt: skip
def test_cli_refuses_a_bad_request_id_naming_the_option(key: str, action: list[str]) -> None:
    args = [action[0], str(uuid.uuid4()), *action[1:], "--request-id", key]
    result = runner.invoke(cli_app, args, env=NOWHERE)
    assert result.exit_code == 2, (args, result.output)
    assert "--request-id: must" in result.stderr
    assert "nothing was sent to Temporal" in result.stderr


@FEW
@given(value=_WORDS.filter(lambda s: not _is_uuid(s.strip().removeprefix("call-"))))
def test_cli_refuses_a_call_uuid_that_is_not_a_uuid(value: str) -> None:
    result = runner.invoke(cli_app, ["cancel", "--", value], env=NOWHERE)
    assert result.exit_code == 2
    assert "call uuid" in result.stderr and "is not a UUID" in result.stderr


@FEW
@given(rows=st.lists(bad_calls(in_batch=True), min_size=1, max_size=4))
def test_cli_strict_batch_with_bad_rows_starts_nothing_and_names_line_and_field(
    rows: list[tuple[str, dict[str, Any]]], tmp_path: Path
) -> None:
    path = tmp_path / "calls.jsonl"
    good = {"uuid": str(uuid.uuid4()), "personUuid": PERSON, "type": "winback"}
    path.write_text("\n".join(json.dumps(b) for b in [good, *(body for _, body in rows)]) + "\n")
    result = runner.invoke(cli_app, ["start-batch", str(path), "--strict"], env=NOWHERE)
    assert result.exit_code == 2, result.output  # bad input, nothing sent
    assert "nothing started" in result.output + result.stderr
    for line, (field, _) in enumerate(rows, start=2):
        assert f"line {line}:" in result.output and field.split(".")[0] in result.output


# ── the HTTP gateway ─────────────────────────────────────────────────────────────────────────


@pytest_asyncio.fixture
async def gateway(call_worker: CallWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(call_worker.client, call_worker.task_queue, TOKEN) as http:
        yield http


@SOME
@given(case=bad_calls())
async def test_gateway_refuses_a_bad_call_naming_the_field_and_starts_nothing(
    gateway: httpx.AsyncClient, call_worker: CallWorker, case: tuple[str, dict[str, Any]]
) -> None:
    field, body = case
    response = await gateway.post("/calls", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["message"], (body, response.text)
    call_uuid = _uuid_of(body)
    if call_uuid:
        assert not await _exists(call_worker.client, call_uuid)


@FEW
@given(raw=st.binary(max_size=60), content_type=st.sampled_from(["application/json", "text/plain"]))
async def test_gateway_answers_garbage_bodies_with_4xx_never_500(
    gateway: httpx.AsyncClient, raw: bytes, content_type: str
) -> None:
    for path in ("/calls", "/calls/batch", f"/calls/{uuid.uuid4()}/attempts"):
        response = await gateway.post(path, content=raw, headers={"Content-Type": content_type})
        # 400: not JSON at all; 422: JSON of the wrong shape; 415: not even said to be JSON.
        # Never a 5xx.
        expected = (400, 422) if content_type == "application/json" else (415,)
        assert response.status_code in expected, (path, raw, response.text)
        assert response.json()["detail"]


@SOME
@given(
    header=st.text(alphabet=string.printable.strip("\r\n\x0b\x0c"), max_size=60)
    .map(str.strip)
    .filter(bool)
)
async def test_gateway_refuses_any_authorization_but_its_token_without_echoing_it(
    gateway: httpx.AsyncClient, header: str
) -> None:
    if header.strip() == f"Bearer {TOKEN}":
        return
    response = await gateway.post(
        "/calls",
        json={"personUuid": PERSON, "type": "verification"},
        headers={"Authorization": header},
    )
    assert response.status_code == 401, response.text
    token = header.partition(" ")[2].strip()
    assert len(token) < 4 or token not in response.text


@SOME
@given(case=bad_actions())
async def test_gateway_refuses_bad_action_bodies_and_the_call_is_unchanged(
    gateway: httpx.AsyncClient, call_worker: CallWorker, case: tuple[str, str, Any]
) -> None:
    action, field, payload = case
    call_uuid = await _shared_call("gateway", call_worker)
    paths = {"attempt": "attempts", "complete": "complete", "reschedule": "reschedule",
             "cancel": "cancel"}  # fmt: skip
    response = await gateway.post(f"/calls/{call_uuid}/{paths[action]}", json=payload)
    assert response.status_code == 422, response.text
    assert field in response.json()["message"], (payload, response.text)
    state = await _state(call_worker, call_uuid)
    assert state.phase in (CallPhase.SCHEDULED, CallPhase.DUE) and state.attempts == []


@SOME
@given(key=bad_request_ids(header=True), action=st.sampled_from(["attempts", "cancel"]))
async def test_gateway_refuses_a_bad_idempotency_key_and_the_call_is_unchanged(
    gateway: httpx.AsyncClient, call_worker: CallWorker, key: str, action: str
) -> None:
    call_uuid = await _shared_call("gateway-key", call_worker)
    body = {"outcome": "busy"} if action == "attempts" else {}
    response = await gateway.post(
        f"/calls/{call_uuid}/{action}",
        json=body,
        headers=[(b"Idempotency-Key", key.encode("latin-1"))],
    )
    assert response.status_code == 422, (key, response.text)
    assert response.json()["message"].startswith("Idempotency-Key: must"), response.text
    state = await _state(call_worker, call_uuid)
    assert state.phase in (CallPhase.SCHEDULED, CallPhase.DUE) and state.attempts == []


_SHARED_CALL: dict[str, str] = {}


async def _shared_call(key: str, worker: CallWorker) -> str:
    """One scheduled call per test, shared by its examples."""
    if key not in _SHARED_CALL:
        _SHARED_CALL[key] = await _scheduled_call(worker)
    return _SHARED_CALL[key]


async def _scheduled_call(worker: CallWorker) -> str:
    """A call that waits an hour for its first slot, so every example finds it unchanged."""
    policy = {**chaos_policy(7200, 5), "firstAttemptDelay": 3600}
    handle = await worker.start(person_uuid=uuid.UUID(PERSON), type="verification", policy=policy)
    for _ in range(200):
        state: CallState = await handle.query(CallWorkflow.state)
        if state.phase == CallPhase.SCHEDULED:
            return str(state.call_uuid)
        await asyncio.sleep(0.05)
    raise AssertionError("the call never got scheduled")


async def _state(worker: CallWorker, call_uuid: str) -> CallState:
    handle = worker.client.get_workflow_handle(f"call-{call_uuid}")
    state: CallState = await handle.query(CallWorkflow.state)
    return state


@pytest.fixture(autouse=True)
def _fresh_shared_call() -> None:
    # Each test gets its own worker (and task queue), so its own call.
    _SHARED_CALL.clear()


# ── signals and updates through the Temporal client ──────────────────────────────────────────


@SOME
@given(case=bad_actions())
async def test_raw_bad_update_is_rejected_naming_the_field_and_bad_signal_is_dropped(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, case: tuple[str, str, Any]
) -> None:
    action, field, payload = case
    call_uuid = await _shared_call("temporal", call_worker)
    handle: WorkflowHandle[Any, Any] = call_worker.client.get_workflow_handle(f"call-{call_uuid}")
    before = await _state(call_worker, call_uuid)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(action, payload)
    cause: BaseException | None = refused.value.cause
    assert isinstance(cause, ApplicationError), cause
    # The SDK refuses a payload that does not decode ("Failed decoding arguments"); the
    # validation error beneath it names the field.
    reasons = []
    while isinstance(cause, ApplicationError):
        reasons.append(cause.message)
        cause = cause.cause
    if field:
        assert field.split(".")[-1] in " | ".join(reasons), (payload, reasons)
    await handle.signal(action, payload)

    after = await _state(call_worker, call_uuid)
    assert after.model_dump(exclude={"events"}) == before.model_dump(exclude={"events"})
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    history = await handle.fetch_history()
    failed = [
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]
    assert failed == []
    assert lenient_sandbox.effects(call_uuid) == effects(create=1)


def _oversized_actions(callback: datetime) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(action, field, its limit, a payload over it), as a plain `temporal` client may send.

    Each would be carried out but for the one field (`callback`: a time the call accepts).
    """
    note = "n" * (NOTE_MAX_LENGTH + 1)
    at = callback.isoformat()
    return [
        ("reschedule", "notes", NOTE_MAX_LENGTH, {"at": at, "notes": note}),
        # Half of what Temporal takes in one payload (2 MB).
        ("reschedule", "notes", NOTE_MAX_LENGTH, {"at": at, "notes": "n" * 1_000_000}),
        ("complete", "result.notes", NOTE_MAX_LENGTH, {"result": {**_RESULT, "notes": note}}),
        ("complete", "result.resultCode", RESULT_CODE_MAX_LENGTH,
         {"result": {"resultCode": "c" * (RESULT_CODE_MAX_LENGTH + 1)}}),
        ("cancel", "reason", NOTE_MAX_LENGTH, {"reason": note}),
    ]  # fmt: skip


async def _signals_handled(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until a workflow task completed after the last signal: every signal was handled."""
    for _ in range(200):
        kinds = [event.event_type for event in (await handle.fetch_history()).events]
        last_signal = max(
            i for i, kind in enumerate(kinds)
            if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        )  # fmt: skip
        if EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in kinds[last_signal:]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the signals were never handled")


async def test_oversized_messages_are_refused_or_dropped_and_the_call_lives_on(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="temporalio.worker._workflow_instance")
    call_uuid = await _scheduled_call(call_worker)
    handle: WorkflowHandle[Any, Any] = call_worker.client.get_workflow_handle(f"call-{call_uuid}")
    before = await _state(call_worker, call_uuid)
    oversized = _oversized_actions(await call_worker.now(handle) + timedelta(minutes=30))
    for action, field, limit, payload in oversized:
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(action, payload)
        reasons = " | ".join(_reasons(refused.value.cause))
        assert field.split(".")[-1] in reasons, reasons
        assert f"at most {limit} characters" in reasons, reasons
        await handle.signal(action, payload)
    await _signals_handled(handle)

    after = await _state(call_worker, call_uuid)
    assert after == before  # not even an event: the signals never reached the workflow's code
    history = await handle.fetch_history()
    failed = [
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]
    assert failed == []
    # Each dropped signal is one warning line naming the field, never the value it carried.
    dropped = [
        r.getMessage() for r in caplog.records
        if r.getMessage().startswith("Failed deserializing signal")
    ]  # fmt: skip
    assert len(dropped) == len(oversized)
    for message, (_, field, limit, _) in zip(dropped, oversized, strict=True):
        assert f"{field}: String should have at most {limit} characters" in message, message
        assert len(message) < 1_000
    # The call lives on: the next message in bounds is carried out.
    accepted = await handle.execute_update("cancel", {"reason": "r" * NOTE_MAX_LENGTH})
    assert accepted["phase"] == "cancelled"
    assert lenient_sandbox.effects(call_uuid) == effects(create=1, cancel=1)


def _reasons(cause: BaseException | None) -> list[str]:
    """The messages of a failure and of the failures beneath it."""
    reasons = []
    while isinstance(cause, ApplicationError):
        reasons.append(cause.message)
        cause = cause.cause
    return reasons


@FEW
@given(case=bad_calls(keep_uuid=True))
async def test_bare_start_with_bad_json_fails_at_once_naming_the_field(
    call_worker: CallWorker, lenient_sandbox: SandboxServer, case: tuple[str, dict[str, Any]]
) -> None:
    field, body = case
    call_uuid = body["uuid"]
    handle = await call_worker.client.start_workflow(
        "CallWorkflow", body, id=f"call-{call_uuid}", task_queue=call_worker.task_queue
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), 20)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidCallInput"
    assert field in cause.message, (body, cause.message)
    assert lenient_sandbox.stored_call(call_uuid) is None
    # It publishes only what it did say: never a placeholder type or person a filter would match.
    published = (await handle.describe()).typed_search_attributes
    said_type = published.get(CallSearchAttributes.CALL_TYPE)
    said_person = published.get(CallSearchAttributes.PERSON_UUID)
    assert said_type == (None if field == "type" else body["type"])
    assert said_person == (None if field == "personUuid" else body["personUuid"])
    assert published.get(CallSearchAttributes.CALL_PHASE) == "failed"


# ── the TapRaise sandbox ─────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def tapraise_api(sandbox: SandboxServer) -> httpx.Client:
    account = demo_account(sandbox)
    token = TokenSigner(account).token()
    return httpx.Client(
        base_url=f"{sandbox.base_url}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def _sandbox_bad_bodies() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    valid = {"requestedAt": "2020-01-01T00:00:00.000Z", "personUuid": PERSON,
             "type": "verification"}  # fmt: skip
    one_field = {
        "personUuid": NOT_A_UUID,
        "type": _WORDS.filter(lambda t: t not in ("verification", "happy_call", "winback")),
        "requestedAt": NOT_AN_AWARE_TIME,
        "callingOrganizationUuid": NOT_A_UUID,
        "relatedCaseUuid": NOT_A_UUID,
        "notes": NOT_A_STRING,
        "status": _WORDS,
    }
    options = [
        st.tuples(st.just(name), values).map(lambda fv: (fv[0], {**valid, fv[0]: fv[1]}))
        for name, values in one_field.items()
    ]
    options.append(
        st.tuples(_unknown_key(set(valid) | {"uuid", "status", "notes"}), ANY_JSON).map(
            lambda kv: (kv[0], {**valid, kv[0]: kv[1]})
        )
    )
    return st.one_of(options)


@SOME
@given(case=_sandbox_bad_bodies())
def test_sandbox_refuses_a_bad_create_with_400_naming_the_field(
    tapraise_api: httpx.Client, sandbox: SandboxServer, case: tuple[str, dict[str, Any]]
) -> None:
    field, body = case
    call_uuid = str(uuid.uuid4())
    response = tapraise_api.post("/calls", json={**body, "uuid": call_uuid})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["statusCode"] == 400 and field in [e["field"] for e in error["errors"]], error
    assert sandbox.stored_call(call_uuid) is None


@SOME
@given(case=bad_actions())
def test_sandbox_refuses_bad_action_bodies_with_400_and_changes_nothing(
    tapraise_api: httpx.Client, sandbox: SandboxServer, case: tuple[str, str, Any]
) -> None:
    action, field, payload = case
    if action == "reschedule":
        return  # TapRaise has no reschedule: the workflow keeps callbacks to itself
    if field == "result.notes":
        return  # TapRaise publishes no limit of its notes: the bound is the workflow's own
    endpoint = {"attempt": "add-attempt", "complete": "complete", "cancel": "cancel"}[action]
    if action == "attempt" and isinstance(payload, dict):
        payload = {k: v for k, v in payload.items() if k != "outcome"}  # not a TapRaise field
        if not payload or field == "outcome":
            return
    if "sandbox" not in _SHARED_CALL:
        _SHARED_CALL["sandbox"] = _sandbox_call(tapraise_api)
    call_uuid = _SHARED_CALL["sandbox"]
    before = sandbox.stored_call(call_uuid)
    response = tapraise_api.put(f"/calls/{call_uuid}/actions/{endpoint}", json=payload)
    assert response.status_code == 400, (payload, response.text)
    error = response.json()
    if field:
        assert any(field in e["field"] for e in error["errors"]), (payload, error)
    assert sandbox.stored_call(call_uuid) == before


def _sandbox_call(api: httpx.Client) -> str:
    body = {"uuid": str(uuid.uuid4()), "requestedAt": "2020-01-01T00:00:00.000Z",
            "personUuid": PERSON, "type": "verification"}  # fmt: skip
    response = api.post("/calls", json=body)
    assert response.status_code == 201, response.text
    return body["uuid"]
